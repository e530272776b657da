//! The machine agent (`agentd`): follows its machine's desired state from the controller and
//! runs the units' workloads as real processes that outlive the agent.
//!
//! Layers, each one sentence: `Session` turns the controller connection into a stream of
//! `AgentUpdate`s and delivers the `ReportBuffer`; `MachineAgent` turns an update into one
//! `UnitRunner` per unit (`reconcile`); a `UnitRunner` turns a `UnitSpec` into charm downloads
//! (`CharmStore`), hooks and a supervised `Workload` (`plan_unit`); `AgentState` remembers what
//! was done, so a restarted agent neither re-runs `install` nor starts duplicate workloads;
//! `migration` is the agent's part in moving its model to another controller (validate against
//! the target while the model is still writable, switch without touching the workloads).

pub mod backoff;
pub mod charms;
pub mod context;
pub mod migration;
pub mod reports;
pub mod runtime;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod units;

pub use runtime::{AgentExit, MachineAgent, MachineOptions};
