//! A checker for recorded client histories against a Starling cluster, in the spirit of a
//! linearizability checker but specialised to what Starling promises about a model.
//!
//! A [`History`] is the list of operations ([`Op`]) that clients, observers and the migration
//! driver performed, each with the time it was invoked and the time it completed, both read from
//! one monotonic clock by the recorder. Each model is treated as an append-only list of unique
//! values that is owned, at any moment, by one controller at one ownership epoch; models move
//! between controllers by migration.
//!
//! [`check`] validates the history (see [`MalformedKind`]) and then, model by model, applies the
//! rules named by [`Rule`]; it stops at the first broken rule and returns a [`Violation`] whose
//! witness is a small set of operations (one to three) that shows the conflict on its own.
//!
//! # Time
//!
//! Operation A *precedes* operation B when A completed strictly before B was invoked
//! (`A.complete < B.invoke`). Operations that do not precede one another either way are
//! concurrent, and the checker then allows either order. An operation that never completed
//! (`complete == None`) precedes nothing.
//!
//! # What counts
//!
//! * Only [`Outcome::Ok`] reads and ownership observations are evidence; failed or unknown ones
//!   are ignored.
//! * An append with [`Outcome::Ok`] took effect before it completed; one with
//!   [`Outcome::Fail`] never took effect; one with [`Outcome::Unknown`] may have taken effect at
//!   any point after its invocation.
//! * An ownership *claim* is an Ok observation of [`Ownership::Active`] or
//!   [`Ownership::Locked`]: the observed controller holds the model at that epoch (serving, or
//!   frozen for a migration).
//! * Migration operations are recorded for context (they show up in saved histories and are
//!   counted in the [`Summary`]) but no rule reads them.
//! * Access changes ([`OpKind::Access`]): a revocation counts from when it returned Ok (it had
//!   committed) until the next grant of the same user on the same model was invoked; a write of
//!   that user invoked after the first and completed before the second must not be
//!   acknowledged.
//! * The model log is a second list per model, of records named by the agent that wrote them
//!   and its report number (so a record re-sent after a lost acknowledgement has the same
//!   name). A record acknowledged ([`OpKind::AppendLog`] Ok) or listed by an Ok log read
//!   ([`OpKind::ReadLog`]) is kept: every Ok log read invoked after that completed lists it,
//!   exactly once, wherever the model lives by then (migrations carry the log).
//!
//! # Recording
//!
//! [`HistoryBuilder`] assembles a history from explicit times (handy for hand-written tests);
//! [`Recorder`] is its thread-safe sibling that stamps each call with a reading of a monotonic
//! clock. [`History::to_json`] and [`History::from_json`] save a failing history and load it
//! again for replay.

mod builder;
mod check;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use builder::{HistoryBuilder, Recorder};
pub use check::{check, CheckError, Malformed, MalformedKind, Rule, Summary, Violation};

/// The identifier of one operation; unique within a history.
pub type OpId = u64;

/// How an operation ended, as far as the client could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The operation definitely took effect (and, for reads and observations, its result is
    /// meaningful).
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The operation may or may not have taken effect (a timeout, a lost connection, or it never
    /// completed at all).
    Unknown,
}

/// What a controller answered when asked who owns a model.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Ownership {
    /// The controller owns the model at `epoch` and serves it.
    Active {
        /// The ownership epoch.
        epoch: u64,
    },
    /// The controller owns the model at `epoch` but has frozen it for a migration.
    Locked {
        /// The ownership epoch.
        epoch: u64,
    },
    /// The controller holds an import of the model that is not active yet.
    Importing,
    /// The controller gave the model away to `controller`.
    MigratedTo {
        /// The controller the model was migrated to.
        controller: String,
    },
    /// The controller knows nothing of the model.
    Absent,
}

impl Ownership {
    /// The epoch the controller claims to hold the model at: `Some` for
    /// [`Active`](Ownership::Active) and [`Locked`](Ownership::Locked), `None` otherwise.
    pub fn claimed_epoch(&self) -> Option<u64> {
        match self {
            Ownership::Active { epoch } | Ownership::Locked { epoch } => Some(*epoch),
            Ownership::Importing | Ownership::MigratedTo { .. } | Ownership::Absent => None,
        }
    }
}

impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ownership::Active { epoch } => write!(f, "active at epoch {epoch}"),
            Ownership::Locked { epoch } => write!(f, "locked at epoch {epoch}"),
            Ownership::Importing => f.write_str("importing"),
            Ownership::MigratedTo { controller } => write!(f, "migrated to {controller}"),
            Ownership::Absent => f.write_str("absent"),
        }
    }
}

/// How a migration ended, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationResult {
    /// The model moved to the target.
    Done,
    /// The migration was aborted and the source kept the model.
    AbortDone,
    /// The driver does not know how the migration ended.
    Unknown,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// A client appended `value` to the model's list through `controller`. Values are unique
    /// across a whole history.
    Append {
        /// The model appended to.
        model: String,
        /// The appended value.
        value: String,
        /// The controller that served the append (and acknowledged it, when Ok).
        controller: String,
        /// The user whose credentials made the write, when the history tracks that user's
        /// access ([`OpKind::Access`]); `None` for writes of the harness's own clients.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// A change of `user`'s write access to the model, asked of `controller`: Ok when the
    /// change committed before the call returned. [`Rule::WriteAfterRevoke`] reads them.
    ///
    /// [`Rule::WriteAfterRevoke`]: check::Rule::WriteAfterRevoke
    Access {
        /// The model whose access changed.
        model: String,
        /// The user.
        user: String,
        /// The controller asked.
        controller: String,
        /// A grant (`true`) or a revocation (`false`).
        granted: bool,
    },
    /// A model-log record (an agent's, named `entity#agent_seq`) written to the model through
    /// `controller`: Ok when acknowledged.
    AppendLog {
        /// The model.
        model: String,
        /// The record's name, unique in the model.
        record: String,
        /// The controller that acknowledged it.
        controller: String,
    },
    /// A read of the model's whole log from `controller`: the names of the records it lists,
    /// oldest first; only meaningful when the outcome is Ok. [`Rule::LogRecordLost`] and
    /// [`Rule::LogRecordDuplicated`] read them.
    ///
    /// [`Rule::LogRecordLost`]: check::Rule::LogRecordLost
    /// [`Rule::LogRecordDuplicated`]: check::Rule::LogRecordDuplicated
    ReadLog {
        /// The model read.
        model: String,
        /// The controller that served the read.
        controller: String,
        /// The records listed.
        records: Vec<String>,
    },
    /// A linearizable read of the model's whole list, served by `controller`; `values` is only
    /// meaningful when the outcome is Ok.
    Read {
        /// The model read.
        model: String,
        /// The controller that served the read.
        controller: String,
        /// The list as read, oldest value first.
        values: Vec<String>,
    },
    /// A linearizable read of the model's whole *set* of values (e.g. the unique keys of its
    /// config map), served by `controller`; `values` is only meaningful when the outcome is Ok
    /// and its order carries no meaning. The list-order rules ([`Rule::ReadsDiverge`],
    /// [`Rule::ReadOrder`]) do not apply to set reads; instead any two Ok set reads must be
    /// ordered by inclusion ([`Rule::SetsDiverge`]) and a set read invoked after another
    /// completed must contain it ([`Rule::ReadRegressed`]). The content rules and
    /// [`Rule::LostWrite`] apply as to list reads.
    ReadSet {
        /// The model read.
        model: String,
        /// The controller that served the read.
        controller: String,
        /// The set as read, in any order.
        values: Vec<String>,
    },
    /// An observer asked `controller` who owns `model`; `observed` is only meaningful when the
    /// outcome is Ok.
    Ownership {
        /// The model asked about.
        model: String,
        /// The controller asked.
        controller: String,
        /// Its answer.
        observed: Ownership,
    },
    /// A migration of `model` from controller `from` to controller `to`, from the driver's
    /// start to its end.
    Migration {
        /// The model migrated.
        model: String,
        /// The migration's id.
        id: String,
        /// The source controller.
        from: String,
        /// The target controller.
        to: String,
        /// How it ended.
        result: MigrationResult,
    },
}

impl OpKind {
    /// An append of `value` to `model` through `controller`.
    pub fn append(
        model: impl Into<String>,
        value: impl Into<String>,
        controller: impl Into<String>,
    ) -> Self {
        OpKind::Append {
            model: model.into(),
            value: value.into(),
            controller: controller.into(),
            user: None,
        }
    }

    /// An append of `value` to `model` through `controller` made with `user`'s credentials.
    pub fn append_by(
        model: impl Into<String>,
        value: impl Into<String>,
        controller: impl Into<String>,
        user: impl Into<String>,
    ) -> Self {
        OpKind::Append {
            model: model.into(),
            value: value.into(),
            controller: controller.into(),
            user: Some(user.into()),
        }
    }

    /// A grant (`granted`) or revocation of `user`'s write access to `model` on `controller`.
    pub fn access(
        model: impl Into<String>,
        user: impl Into<String>,
        controller: impl Into<String>,
        granted: bool,
    ) -> Self {
        OpKind::Access {
            model: model.into(),
            user: user.into(),
            controller: controller.into(),
            granted,
        }
    }

    /// A model-log record `record` written to `model` through `controller`.
    pub fn append_log(
        model: impl Into<String>,
        record: impl Into<String>,
        controller: impl Into<String>,
    ) -> Self {
        OpKind::AppendLog {
            model: model.into(),
            record: record.into(),
            controller: controller.into(),
        }
    }

    /// A read of `model`'s log from `controller` that listed `records`.
    pub fn read_log<S: Into<String>>(
        model: impl Into<String>,
        controller: impl Into<String>,
        records: impl IntoIterator<Item = S>,
    ) -> Self {
        OpKind::ReadLog {
            model: model.into(),
            controller: controller.into(),
            records: records.into_iter().map(Into::into).collect(),
        }
    }

    /// A read of `model` from `controller`, with no values yet (they are filled in on
    /// completion).
    pub fn read(model: impl Into<String>, controller: impl Into<String>) -> Self {
        OpKind::Read {
            model: model.into(),
            controller: controller.into(),
            values: Vec::new(),
        }
    }

    /// A read of `model` from `controller` that returned `values`.
    pub fn read_values<S: Into<String>>(
        model: impl Into<String>,
        controller: impl Into<String>,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        OpKind::Read {
            model: model.into(),
            controller: controller.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// A set read of `model` from `controller`, with no values yet (they are filled in on
    /// completion by [`Recorder::complete_read`] / [`HistoryBuilder::complete_read`]).
    pub fn read_set(model: impl Into<String>, controller: impl Into<String>) -> Self {
        OpKind::ReadSet {
            model: model.into(),
            controller: controller.into(),
            values: Vec::new(),
        }
    }

    /// A set read of `model` from `controller` that returned `values`.
    pub fn read_set_values<S: Into<String>>(
        model: impl Into<String>,
        controller: impl Into<String>,
        values: impl IntoIterator<Item = S>,
    ) -> Self {
        OpKind::ReadSet {
            model: model.into(),
            controller: controller.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// An ownership question about `model` to `controller`, with a placeholder answer
    /// ([`Ownership::Absent`]) until it completes.
    pub fn ownership(model: impl Into<String>, controller: impl Into<String>) -> Self {
        Self::observed(model, controller, Ownership::Absent)
    }

    /// An ownership question about `model` to `controller` that was answered `observed`.
    pub fn observed(
        model: impl Into<String>,
        controller: impl Into<String>,
        observed: Ownership,
    ) -> Self {
        OpKind::Ownership {
            model: model.into(),
            controller: controller.into(),
            observed,
        }
    }

    /// A migration of `model` (migration id `id`) from `from` to `to`, with result
    /// [`MigrationResult::Unknown`] until it completes.
    pub fn migration(
        model: impl Into<String>,
        id: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Self {
        OpKind::Migration {
            model: model.into(),
            id: id.into(),
            from: from.into(),
            to: to.into(),
            result: MigrationResult::Unknown,
        }
    }

    /// The model the operation is about.
    pub fn model(&self) -> &str {
        match self {
            OpKind::Append { model, .. }
            | OpKind::Access { model, .. }
            | OpKind::AppendLog { model, .. }
            | OpKind::ReadLog { model, .. }
            | OpKind::Read { model, .. }
            | OpKind::ReadSet { model, .. }
            | OpKind::Ownership { model, .. }
            | OpKind::Migration { model, .. } => model,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::Append {
                model,
                value,
                controller,
                user: None,
            } => write!(f, "append {value:?} to {model:?} via {controller}"),
            OpKind::Append {
                model,
                value,
                controller,
                user: Some(user),
            } => write!(
                f,
                "append {value:?} to {model:?} via {controller} as {user}"
            ),
            OpKind::Access {
                model,
                user,
                controller,
                granted,
            } => {
                let change = if *granted { "grant" } else { "revoke" };
                write!(f, "{change} {user}'s write on {model:?} via {controller}")
            }
            OpKind::AppendLog {
                model,
                record,
                controller,
            } => write!(f, "log {record:?} to {model:?} via {controller}"),
            OpKind::ReadLog {
                model,
                controller,
                records,
            } => write!(
                f,
                "read the log of {model:?} via {controller} -> {records:?}"
            ),
            OpKind::Read {
                model,
                controller,
                values,
            } => write!(f, "read {model:?} via {controller} -> {values:?}"),
            OpKind::ReadSet {
                model,
                controller,
                values,
            } => write!(f, "read set {model:?} via {controller} -> {values:?}"),
            OpKind::Ownership {
                model,
                controller,
                observed,
            } => write!(f, "ask {controller} about {model:?} -> {observed}"),
            OpKind::Migration {
                model,
                id,
                from,
                to,
                result,
            } => write!(f, "migrate {model:?} ({id}) {from} -> {to}: {result:?}"),
        }
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history.
    pub id: OpId,
    /// The client or process that performed it.
    pub process: u64,
    /// When it was invoked.
    pub invoke: u64,
    /// When it completed; `None` if it never did.
    pub complete: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// What it did.
    pub kind: OpKind,
}

impl Op {
    /// Whether this operation completed strictly before `other` was invoked (real-time order).
    pub fn precedes(&self, other: &Op) -> bool {
        matches!(self.complete, Some(done) if done < other.invoke)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "op {} (process {}) [{}, ",
            self.id, self.process, self.invoke
        )?;
        match self.complete {
            Some(done) => write!(f, "{done}]")?,
            None => f.write_str("never]")?,
        }
        write!(f, " {:?}: {}", self.outcome, self.kind)
    }
}

/// A recorded history: every operation, in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations.
    pub ops: Vec<Op>,
}

impl History {
    /// A history of `ops`.
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks the history; see [`check`].
    pub fn check(&self) -> Result<Summary, CheckError> {
        check(self)
    }

    /// The history as pretty-printed JSON, for saving a failing run.
    pub fn to_json(&self) -> String {
        // A history is plain data with string keys only, so serialization cannot fail.
        serde_json::to_string_pretty(self).expect("a history always serializes to JSON")
    }

    /// Loads a history saved by [`History::to_json`].
    pub fn from_json(json: &str) -> Result<History, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod access_log_tests;
#[cfg(test)]
mod set_tests;
