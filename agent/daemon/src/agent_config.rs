//! The machine agent's config file: which controller to reach (every endpoint and its CA), which
//! model and machine it is, and its own credential. `ctl add-machine` writes it; `agentd` reads
//! it and rewrites it atomically when its model moves to another controller.

use serde::{Deserialize, Serialize};

/// `agentd --config FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentConfig {
    /// The controller the model lives on.
    pub controller_name: String,
    /// Its uuid.
    pub controller_uuid: String,
    /// gRPC endpoints (host:port) of every node.
    pub api_endpoints: Vec<String>,
    /// The controller's CA certificate (PEM).
    pub ca_cert: String,
    /// The model's uuid.
    pub model_uuid: String,
    /// The model's name.
    pub model_name: String,
    /// This machine's id.
    pub machine_id: String,
    /// The agent's own credential (the controller keeps only its hash).
    pub credential: String,
}
