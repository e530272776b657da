//! `ctld`, a Starling controller node: storage and Raft (through `starling-raft`), the gRPC
//! services on one TLS port (`Raft` for peers, `Controller` for clients, `Agent` for machine
//! agents, `Migration` for peer controllers, health and reflection) and an HTTPS side port for
//! metrics and health.
//!
//! Layers, bottom up (`scripts/check.sh` refuses an import cycle between these modules):
//! - node files and trust: `identity` (the data dir), `pki`, `auth`, `init` (`ctld init`);
//! - `plumbing`: what every service uses and which imports none of them (clock, errors as
//!   statuses, propose-and-wait, blobs, failpoints); `load`: per-model load measured where it
//!   happens; `staging`: the node's staging area for bulk imports and the `Staging` peer service;
//!   `context`: the `NodeContext` every service is built from;
//! - `presence`: agents' heartbeats, renewed as one replicated record per node;
//! - `migration`: the master, the target's peer service, prechecks, leftovers, the peer client;
//! - the APIs: `client_api` (what `ctl` calls, by topic) and `agent_api` (what `agentd` calls);
//! - `http` (the side port) and `node`, the wiring: the only module that sees every service.

pub mod agent_api;
pub mod auth;
pub mod client_api;
pub mod context;
pub mod http;
pub mod identity;
pub mod init;
pub mod load;
pub mod migration;
pub mod node;
pub mod pki;
pub mod plumbing;
pub mod presence;
pub mod staging;
