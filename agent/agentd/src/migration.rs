//! The machine agent's part in a live model migration (`docs/migration.md`).
//!
//! While the controller's updates carry a `MigrationNotice` (phases CATCHUP and QUIESCE) the
//! model is on its way to another controller. The agent keeps working and reporting: the
//! model stays writable until the fence, and a report that meets the fence is held by the
//! controller (answered after the fence, or with the redirect the agent then follows and sends
//! it to the target). Workloads are not touched. In CATCHUP the agent proves that its own
//! credential works on the target (`ValidateLogin`) and reports the outcome
//! (`MigrationReport`), so no agent round trip is needed while writes are stopped. An update
//! without a notice means the migration was aborted; a redirect (SUCCESS) moves the agent and
//! its outbox to the target.
//!
//! [`MigrationTracker`] is the pure part (what a notice changes); [`run_duties`] sends the
//! validation, once per migration id on each controller connection.

use std::collections::HashSet;
use std::time::Duration;

use starling_proto::agent::agent_client::AgentClient;
use starling_proto::agent::{MigrationNotice, MigrationReportRequest, ValidateLoginRequest};
use starling_proto::phase::Phase;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::session::{connect, AuthMetadata, ControllerCaller, RPC_TIMEOUT};

/// How long the agent keeps trying to reach the target before it reports a failed validation.
pub const VALIDATION_WINDOW: Duration = Duration::from_secs(10);
/// Retry bounds of a `MigrationReport` that failed (it is repeated until the notice changes).
const REPORT_RETRY_MIN: Duration = Duration::from_millis(200);
const REPORT_RETRY_MAX: Duration = Duration::from_secs(5);
/// Retry bounds of a failed dial of the target within [`VALIDATION_WINDOW`].
const DIAL_RETRY_MIN: Duration = Duration::from_millis(250);
const DIAL_RETRY_MAX: Duration = Duration::from_secs(2);

/// The migration under way, as the agent last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveMigration {
    /// The migration id (`<model-uuid>:<attempt>`).
    pub id: String,
    /// The phase of the last notice.
    pub phase: String,
}

/// What an update's notice (or its absence) changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationChange {
    /// Nothing: no migration, or the same migration in the same phase.
    Unchanged,
    /// A migration began (or was first seen).
    Began(ActiveMigration),
    /// The same migration moved to another phase.
    Phase {
        /// The migration, in its new phase.
        migration: ActiveMigration,
        /// The phase before.
        from: String,
    },
    /// The migration the agent knew of is gone and another one is running: the old one was
    /// aborted.
    Replaced {
        /// The aborted migration's id.
        aborted: String,
        /// The new migration.
        migration: ActiveMigration,
    },
    /// The notice is gone: the migration was aborted; the model stays here.
    Resumed {
        /// The aborted migration's id.
        aborted: String,
    },
}

/// Which migration the model is in, if any. Survives reconnects: only an update (or a
/// redirect) changes it.
#[derive(Clone, Debug, Default)]
pub struct MigrationTracker {
    current: Option<ActiveMigration>,
}

impl MigrationTracker {
    /// Takes in the notice of an update (`None` when the update had none).
    pub fn observe(&mut self, notice: Option<&MigrationNotice>) -> MigrationChange {
        let next = notice
            .filter(|n| !n.migration_id.is_empty())
            .map(|n| ActiveMigration {
                id: n.migration_id.clone(),
                phase: n.phase.clone(),
            });
        let change = match (&self.current, &next) {
            (None, None) => MigrationChange::Unchanged,
            (None, Some(new)) => MigrationChange::Began(new.clone()),
            (Some(old), None) => MigrationChange::Resumed {
                aborted: old.id.clone(),
            },
            (Some(old), Some(new)) if old.id != new.id => MigrationChange::Replaced {
                aborted: old.id.clone(),
                migration: new.clone(),
            },
            (Some(old), Some(new)) if old.phase != new.phase => MigrationChange::Phase {
                migration: new.clone(),
                from: old.phase.clone(),
            },
            (Some(_), Some(_)) => MigrationChange::Unchanged,
        };
        self.current = next;
        change
    }

    /// Whether a migration is under way on the current controller.
    pub fn migrating(&self) -> bool {
        self.current.is_some()
    }

    /// The migration under way.
    pub fn current(&self) -> Option<&ActiveMigration> {
        self.current.as_ref()
    }

    /// The model moved (SUCCESS): the queued reports go to the new controller. Returns the
    /// migration that moved it, if one was seen.
    pub fn switched(&mut self) -> Option<ActiveMigration> {
        self.current.take()
    }
}

/// What the agent owes the controller for a notice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Duty {
    /// `ValidateLogin` on the target, then `MigrationReport` with the notice's phase.
    Validate(String),
}

/// The duty a notice calls for that is not in `done` yet.
pub fn next_duty(notice: &MigrationNotice, done: &HashSet<Duty>) -> Option<Duty> {
    let id = notice.migration_id.clone();
    if id.is_empty() {
        return None;
    }
    let duty = match Phase::parse(&notice.phase) {
        Some(phase) if phase.agents_validate() => Duty::Validate(id),
        // The fence (QUIESCE) asks nothing of the agents: they validated before it.
        _ => return None,
    };
    (!done.contains(&duty)).then_some(duty)
}

/// Performs the duties the notices on `notices` call for, on one controller connection: each
/// at most once per migration id (a new connection starts afresh, which the controller treats
/// idempotently). A duty is abandoned when the notice changes; a failed report is repeated
/// until it gets through.
pub async fn run_duties(
    caller: ControllerCaller,
    controller: String,
    mut notices: watch::Receiver<Option<MigrationNotice>>,
) {
    let mut done: HashSet<Duty> = HashSet::new();
    loop {
        let notice = notices.borrow_and_update().clone();
        if let Some(notice) = notice {
            if let Some(duty) = next_duty(&notice, &done) {
                let work = perform(&caller, &controller, &notice, &duty);
                tokio::select! {
                    () = work => {
                        done.insert(duty);
                        continue;
                    }
                    changed = notices.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        }
        if notices.changed().await.is_err() {
            return;
        }
    }
}

async fn perform(
    caller: &ControllerCaller,
    controller: &str,
    notice: &MigrationNotice,
    duty: &Duty,
) {
    let id = &notice.migration_id;
    match duty {
        Duty::Validate(_) => {
            let target = notice
                .target
                .as_ref()
                .map(|t| t.controller_name.clone())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "the target".to_string());
            info!(migration = %id, %target, "migration {id}: validating the agent's login against {target}");
            let outcome = validate_login(notice, caller.auth(), VALIDATION_WINDOW).await;
            let (ok, reason) = match outcome {
                Ok(model_name) => {
                    info!(
                        migration = %id,
                        %target,
                        model = %model_name,
                        "migration {id}: validated against {target}"
                    );
                    (true, String::new())
                }
                Err(reason) => {
                    warn!(
                        migration = %id,
                        %target,
                        %reason,
                        "migration {id}: validation against {target} failed"
                    );
                    (false, reason)
                }
            };
            let report = MigrationReportRequest {
                migration_id: id.clone(),
                phase: notice.phase.clone(),
                ok,
                reason,
            };
            send_report(caller, report).await;
            info!(
                migration = %id,
                %controller,
                ok,
                "migration {id}: validation reported to controller {controller}"
            );
        }
    }
}

/// Sends `report` until the controller takes it (each attempt bounded by [`RPC_TIMEOUT`]).
async fn send_report(caller: &ControllerCaller, report: MigrationReportRequest) {
    let mut backoff = Backoff::new(REPORT_RETRY_MIN, REPORT_RETRY_MAX);
    loop {
        let mut client = caller.client();
        let call = client.migration_report(caller.request(report.clone()));
        let reason = match tokio::time::timeout(RPC_TIMEOUT, call).await {
            Ok(Ok(_)) => return,
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => "timed out".to_string(),
        };
        let delay = backoff.next_delay();
        warn!(
            migration = %report.migration_id,
            phase = %report.phase,
            %reason,
            retry_in_ms = delay.as_millis() as u64,
            "MigrationReport failed; repeating it"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Dials the target the notice names (its endpoints in turn, trusting its CA) and calls
/// `ValidateLogin` with the agent's own credential. Connection trouble and `Unavailable` are
/// retried until `window` has passed; any other answer is final. Returns the model's name on
/// the target, or why the login failed.
pub async fn validate_login(
    notice: &MigrationNotice,
    auth: &AuthMetadata,
    window: Duration,
) -> Result<String, String> {
    let Some(target) = notice.target.as_ref() else {
        return Err("the migration notice names no target controller".to_string());
    };
    if target.api_endpoints.is_empty() {
        return Err(format!(
            "the migration notice names no endpoint of controller \"{}\"",
            target.controller_name
        ));
    }
    if target.ca_cert.trim().is_empty() {
        return Err(format!(
            "the migration notice has no CA certificate for controller \"{}\"",
            target.controller_name
        ));
    }
    let deadline = Instant::now() + window;
    let mut backoff = Backoff::new(DIAL_RETRY_MIN, DIAL_RETRY_MAX);
    // The node this agent will use after the switch: validations spread over the nodes too.
    let mut attempt = auth.first_endpoint(target.api_endpoints.len());
    loop {
        let endpoint = &target.api_endpoints[attempt % target.api_endpoints.len()];
        attempt += 1;
        let last_error = match connect(endpoint, &target.ca_cert).await {
            Err(reason) => format!("cannot reach {endpoint}: {reason}"),
            Ok(channel) => {
                let mut client = AgentClient::new(channel);
                let mut request = tonic::Request::new(ValidateLoginRequest {
                    migration_id: notice.migration_id.clone(),
                });
                auth.apply(request.metadata_mut());
                match tokio::time::timeout(RPC_TIMEOUT, client.validate_login(request)).await {
                    Ok(Ok(response)) => return Ok(response.into_inner().model_name),
                    Ok(Err(status)) if retryable(status.code()) => format!(
                        "ValidateLogin on {endpoint}: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                    Ok(Err(status)) => {
                        return Err(format!(
                            "controller \"{}\" refused the agent's login ({endpoint}): {:?}: {}",
                            target.controller_name,
                            status.code(),
                            status.message()
                        ))
                    }
                    Err(_) => format!("ValidateLogin on {endpoint} timed out"),
                }
            }
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(format!(
                "cannot log in to controller \"{}\" after {attempt} attempt(s): {last_error}",
                target.controller_name
            ));
        }
        warn!(
            migration = %notice.migration_id,
            reason = %last_error,
            retry_in_ms = delay.as_millis() as u64,
            "validation login to the target failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Answers worth another try within the validation window.
fn retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::agent::Redirect;

    fn notice(id: &str, phase: &str) -> MigrationNotice {
        MigrationNotice {
            migration_id: id.into(),
            phase: phase.into(),
            target: None,
        }
    }

    fn active(id: &str, phase: &str) -> ActiveMigration {
        ActiveMigration {
            id: id.into(),
            phase: phase.into(),
        }
    }

    #[test]
    fn a_notice_is_tracked_until_it_goes_away() {
        let mut tracker = MigrationTracker::default();
        assert_eq!(tracker.observe(None), MigrationChange::Unchanged);
        assert!(!tracker.migrating());
        assert_eq!(
            tracker.observe(Some(&notice("m:1", Phase::Catchup.as_str()))),
            MigrationChange::Began(active("m:1", Phase::Catchup.as_str()))
        );
        assert!(tracker.migrating());
        assert_eq!(
            tracker.observe(Some(&notice("m:1", Phase::Catchup.as_str()))),
            MigrationChange::Unchanged
        );
        assert_eq!(
            tracker.observe(Some(&notice("m:1", Phase::Quiesce.as_str()))),
            MigrationChange::Phase {
                migration: active("m:1", Phase::Quiesce.as_str()),
                from: Phase::Catchup.as_str().into()
            }
        );
        assert!(tracker.migrating());
        assert_eq!(
            tracker.observe(None),
            MigrationChange::Resumed {
                aborted: "m:1".into()
            }
        );
        assert!(!tracker.migrating());
    }

    #[test]
    fn another_migration_id_aborts_the_old_one() {
        let mut tracker = MigrationTracker::default();
        tracker.observe(Some(&notice("m:1", Phase::Catchup.as_str())));
        assert_eq!(
            tracker.observe(Some(&notice("m:2", Phase::Quiesce.as_str()))),
            MigrationChange::Replaced {
                aborted: "m:1".into(),
                migration: active("m:2", Phase::Quiesce.as_str())
            }
        );
        assert!(tracker.migrating());
        assert_eq!(
            tracker.current(),
            Some(&active("m:2", Phase::Quiesce.as_str()))
        );
    }

    #[test]
    fn an_unknown_phase_is_still_a_migration_and_a_redirect_ends_it() {
        let mut tracker = MigrationTracker::default();
        tracker.observe(Some(&notice("m:1", "SOMETHING-NEW")));
        assert!(tracker.migrating());
        assert_eq!(tracker.switched(), Some(active("m:1", "SOMETHING-NEW")));
        assert!(!tracker.migrating());
        assert_eq!(tracker.switched(), None);
    }

    #[test]
    fn a_notice_without_an_id_is_no_migration() {
        let mut tracker = MigrationTracker::default();
        assert_eq!(
            tracker.observe(Some(&notice("", Phase::Quiesce.as_str()))),
            MigrationChange::Unchanged
        );
        assert!(!tracker.migrating());
    }

    #[test]
    fn validation_is_owed_once_per_id_in_catchup_and_nothing_in_the_fence() {
        let mut done = HashSet::new();
        assert_eq!(
            next_duty(&notice("m:1", Phase::Quiesce.as_str()), &done),
            None
        );
        assert_eq!(
            next_duty(&notice("m:1", Phase::Catchup.as_str()), &done),
            Some(Duty::Validate("m:1".into()))
        );
        done.insert(Duty::Validate("m:1".into()));
        assert_eq!(
            next_duty(&notice("m:1", Phase::Catchup.as_str()), &done),
            None
        );
        assert_eq!(
            next_duty(&notice("m:2", Phase::Catchup.as_str()), &done),
            Some(Duty::Validate("m:2".into()))
        );
        assert_eq!(next_duty(&notice("", Phase::Catchup.as_str()), &done), None);
    }

    fn auth() -> AuthMetadata {
        AuthMetadata::new(&starling_daemon::agent_config::AgentConfig {
            controller_name: "a".into(),
            controller_uuid: "u".into(),
            api_endpoints: vec!["127.0.0.1:1".into()],
            ca_cert: String::new(),
            model_uuid: "m".into(),
            model_name: "default".into(),
            machine_id: "0".into(),
            credential: "secret".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn validation_without_a_target_fails_with_a_reason() {
        let err = validate_login(
            &notice("m:1", Phase::Catchup.as_str()),
            &auth(),
            VALIDATION_WINDOW,
        )
        .await
        .unwrap_err();
        assert!(err.contains("no target"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_target_fails_within_the_window() {
        let ca = starling_ctld::pki::new_ca("blue", "b1").unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut unreachable = notice("m:1", Phase::Catchup.as_str());
        unreachable.target = Some(Redirect {
            controller_name: "blue".into(),
            controller_uuid: "b1".into(),
            api_endpoints: vec![format!("127.0.0.1:{port}")],
            ca_cert: ca.cert,
        });
        let started = std::time::Instant::now();
        let err = validate_login(&unreachable, &auth(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            err.contains("blue") && err.contains("cannot reach"),
            "{err}"
        );
    }
}
