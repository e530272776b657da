//! Starling's daemons. `ctld` is a controller node: storage and Raft (via `starling-raft`), the
//! gRPC services on one TLS port (`Raft` for peers, `Controller` for clients, health and
//! reflection) and an HTTPS side port for metrics and health. `agentd` (the machine agent) lands
//! with the agents issue.

pub mod agent_config;
pub mod agent_service;
pub mod auth;
pub mod backup_service;
pub mod controller_service;
pub mod daemon;
pub mod http;
pub mod identity;
pub mod init;
pub mod machine;
pub mod migration;
pub mod model_service;
pub mod node;
pub mod pki;
pub mod presence;
