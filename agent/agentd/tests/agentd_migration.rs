//! The real `agentd` binary through a live model migration, between two fake controllers with
//! their own CAs: on the source's CATCHUP notice it validates its own credential against the
//! target and keeps reporting to the source (its workload untouched); the fence asks nothing of
//! it; it follows the redirect (config rewritten, the target retried while it is not active yet,
//! the reports queued meanwhile delivered there in seq order, the same workload process
//! throughout). After an abort it carries on with the source; a refused validation is reported
//! with its reason; an agent that missed the switch follows the source's redirect when it
//! starts.

#[path = "support/fake_controller.rs"]
mod fake_controller;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fake_controller::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use starling_ctld::pki;
use starling_proto::agent::{AgentUpdate, MigrationNotice, Redirect, StatusReport};
use tonic::Code;

const MIGRATION_ID: &str = "6f1c1a9e-0000-4000-8000-000000000001:1";
const TARGET_NAME: &str = "target";
const TARGET_UUID: &str = "7a7a7a7a-0000-4000-8000-000000000000";
/// How long the agent gets to (wrongly) send something it must not.
const QUIET_WINDOW: Duration = Duration::from_millis(2500);

/// A controller: its CA, its node certificate, its state and its server.
struct Controller {
    ca: pki::CertKeyPem,
    state: Arc<FakeState>,
    server: Option<FakeServer>,
    node: pki::CertKeyPem,
}

impl Controller {
    fn start(name: &str, uuid: &str) -> Self {
        let ca = pki::new_ca(name, uuid).unwrap();
        let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
        let state = FakeState::new(CREDENTIAL);
        let server = FakeServer::start(&state, &node, None);
        Self {
            ca,
            state,
            server: Some(server),
            node,
        }
    }

    fn endpoint(&self) -> String {
        self.server.as_ref().unwrap().addr.to_string()
    }

    /// Where an agent is sent to reach this controller.
    fn redirect(&self, name: &str, uuid: &str) -> Redirect {
        Redirect {
            controller_name: name.into(),
            controller_uuid: uuid.into(),
            api_endpoints: vec![self.endpoint()],
            ca_cert: self.ca.cert.clone(),
        }
    }

    /// Stops serving and serves again on the same address (drops every connection).
    fn restart(&mut self) {
        let addr = self.server.take().unwrap().addr;
        self.server = Some(FakeServer::start(&self.state, &self.node, Some(addr)));
    }
}

/// A migration notice naming `target`.
fn notice(phase: &str, target: &Redirect) -> MigrationNotice {
    MigrationNotice {
        migration_id: MIGRATION_ID.into(),
        phase: phase.into(),
        target: Some(target.clone()),
    }
}

/// Sets `controller`'s desired update to the counter unit at `revision`, with `migration`.
fn publish(
    state: &FakeState,
    digest: &str,
    revision: u64,
    migration: Option<MigrationNotice>,
    redirect: Option<Redirect>,
) {
    state.desired.send_replace(AgentUpdate {
        revision,
        units: vec![counter_spec(digest)],
        heartbeat_interval_ms: 200,
        redirect,
        migration,
        ..AgentUpdate::default()
    });
}

/// A running agent with the counter unit deployed through `source`.
struct Deployed {
    fx: Fixture,
    guard: ProcessGuard,
    digest: String,
    data: PathBuf,
    unit_dir: PathBuf,
    pid: u32,
}

/// Deploys counter/0 through `source` (the charm is also offered by `also`) and starts agentd;
/// returns once the workload is reported active.
fn deploy(source: &Controller, also: &[&Controller]) -> Deployed {
    let fx = fixture(&[source.endpoint()], &source.ca, source.node.clone());
    let data = fx.root.join("machine-0-data");
    let unit_dir = data.join("units/counter-0");
    let (charm, digest) = counter_charm();
    for controller in std::iter::once(source).chain(also.iter().copied()) {
        controller
            .state
            .charms
            .lock()
            .unwrap()
            .insert(digest.clone(), charm.clone());
    }
    publish(&source.state, &digest, 1, None, None);
    let guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: Some(spawn_agentd(&fx.root, &fx.config)),
    };
    wait_for("the workload to be reported active", || {
        statuses_of(&source.state.reports(), "unit-counter-0", "workload").last()
            == Some(&"active".to_string())
    });
    wait_for("counter.log to grow", || {
        lines(&unit_dir.join("counter.log")) >= 1
    });
    let pid = workload_pid(&data).expect("workload pid persisted");
    assert!(alive(pid));
    Deployed {
        fx,
        guard,
        digest,
        data,
        unit_dir,
        pid,
    }
}

/// Kills the workload and waits for the agent to restart it: a status change (error, then
/// active) and a log record the agent must queue. Returns the new pid.
fn crash_workload(deployed: &Deployed, pid: u32) -> u32 {
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_for("the agent to restart the workload", || {
        workload_pid(&deployed.data).is_some_and(|p| p != pid && alive(p))
    });
    workload_pid(&deployed.data).unwrap()
}

/// Asserts the counter keeps counting (the workload runs).
fn assert_counting(unit_dir: &Path) {
    let before = lines(&unit_dir.join("counter.log"));
    wait_for("counter.log to keep growing", || {
        lines(&unit_dir.join("counter.log")) >= before + 2
    });
}

/// Asserts numbers `after + 1, after + 2, ...` with no gap over the status reports and the log
/// records (one counter numbers both): nothing was dropped, reordered or sent twice.
fn assert_contiguous_from(
    reports: &[StatusReport],
    logs: &[starling_proto::model::LogRecord],
    after: u64,
) {
    let report_seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
    assert!(
        report_seqs.windows(2).all(|w| w[0] < w[1]),
        "reports out of order: {report_seqs:?}"
    );
    let mut seqs: Vec<u64> = report_seqs
        .into_iter()
        .chain(logs.iter().map(|l| l.agent_seq))
        .filter(|seq| *seq > after)
        .collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (after + 1..after + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "reports or log records lost or sent twice");
}

fn agentd_log(root: &Path) -> String {
    std::fs::read_to_string(root.join("agentd.stderr")).unwrap_or_default()
}

fn hook_runs(unit_dir: &Path) -> usize {
    lines(&unit_dir.join("hooks.log"))
}

#[test]
fn migration_validates_in_catchup_keeps_reporting_and_switches_without_restarting_the_workload() {
    let source = Controller::start("source", "50505050");
    let target = Controller::start(TARGET_NAME, "7a7a7a7a");
    // The target holds the model as an import until the source's SUCCESS: not active yet.
    target.state.inactive.store(true, Ordering::SeqCst);
    let to_target = target.redirect(TARGET_NAME, TARGET_UUID);
    let mut deployed = deploy(&source, &[&target]);
    let root = deployed.fx.root.clone();
    let digest = deployed.digest.clone();

    eprintln!("--- CATCHUP: the agent logs in to the target and reports ok");
    publish(
        &source.state,
        &digest,
        2,
        Some(notice("CATCHUP", &to_target)),
        None,
    );
    wait_for("the validation report", || {
        !source
            .state
            .migration_reports_for(MIGRATION_ID, "CATCHUP")
            .is_empty()
    });
    let validation = &source.state.migration_reports_for(MIGRATION_ID, "CATCHUP")[0];
    assert!(validation.ok, "{validation:?}");
    assert_eq!(
        *target.state.validations.lock().unwrap(),
        vec![MIGRATION_ID.to_string()],
        "ValidateLogin with the agent's own credential, on the target"
    );
    assert!(target.state.reports().is_empty());

    eprintln!("--- statuses change while the model migrates: they reach the source as usual");
    let seen = source.state.applied_seq();
    let pid = crash_workload(&deployed, deployed.pid);
    assert_counting(&deployed.unit_dir);
    wait_for("the workload's new status on the source", || {
        statuses_of(
            &source.state.reports_after(seen),
            "unit-counter-0",
            "workload",
        )
        .contains(&"active".to_string())
    });

    eprintln!("--- QUIESCE (the fence): nothing more to report about the migration");
    publish(
        &source.state,
        &digest,
        3,
        Some(notice("QUIESCE", &to_target)),
        None,
    );
    std::thread::sleep(QUIET_WINDOW);
    assert_eq!(source.state.migration_reports().len(), 1);

    eprintln!("--- SUCCESS: the source redirects; the target refuses until it activates");
    let source_seq = source.state.applied_seq();
    let source_calls = source.state.report_calls();
    let hooks_before = hook_runs(&deployed.unit_dir);
    publish(&source.state, &digest, 4, None, Some(to_target.clone()));
    wait_for("the agent config to name the target", || {
        read_agent_config(&deployed.fx.config).controller_name == TARGET_NAME
    });
    let config = read_agent_config(&deployed.fx.config);
    assert_eq!(config.controller_uuid, TARGET_UUID);
    assert_eq!(config.api_endpoints, vec![target.endpoint()]);
    assert_eq!(config.ca_cert, target.ca.cert);
    assert_eq!(config.credential, CREDENTIAL);
    assert_eq!(config.model_uuid, MODEL_UUID);
    wait_for(
        "the agent to retry the target that is not active yet",
        || target.state.refused_watches.load(Ordering::SeqCst) >= 3,
    );
    // A status change while the target is not active yet waits in the outbox.
    let pid = crash_workload(&deployed, pid);
    assert!(target.state.reports().is_empty());

    eprintln!("--- the target activates the model: the queued reports arrive there");
    publish(&target.state, &digest, 1, None, None);
    target.state.inactive.store(false, Ordering::SeqCst);
    wait_for("the queued reports on the target", || {
        let reports = target.state.reports();
        statuses_of(&reports, "unit-counter-0", "workload").contains(&"active".to_string())
    });
    let delivered = target.state.reports();
    assert_contiguous_from(&delivered, &target.state.logs(), source_seq);
    assert!(
        target
            .state
            .logs()
            .iter()
            .any(|l| l.message.contains("workload exited")),
        "the log record queued while the target was not active reached it"
    );
    assert_eq!(
        source.state.report_calls(),
        source_calls,
        "Report on the source after the redirect"
    );
    assert_eq!(source.state.applied_seq(), source_seq);

    eprintln!("--- the same workload process throughout; no hook ran again");
    assert_eq!(workload_pid(&deployed.data), Some(pid));
    assert!(alive(pid));
    assert_counting(&deployed.unit_dir);
    assert_eq!(counter_workloads(&root), BTreeSet::from([pid]));
    assert_eq!(hook_runs(&deployed.unit_dir), hooks_before);
    // The validation once for this migration id.
    assert_eq!(source.state.migration_reports().len(), 1);

    let log = agentd_log(&root);
    for step in [
        format!("migration {MIGRATION_ID}: the model is moving"),
        format!("migration {MIGRATION_ID}: validated against {TARGET_NAME}"),
        format!("migration {MIGRATION_ID}: switching to controller {TARGET_NAME}"),
        format!("migration {MIGRATION_ID}: switched to controller {TARGET_NAME}"),
    ] {
        assert!(log.contains(&step), "agentd did not log \"{step}\":\n{log}");
    }
    assert!(alive(pid));
    deployed.guard.sweep();
}

#[test]
fn an_aborted_migration_leaves_the_agent_with_the_source() {
    let mut source = Controller::start("source", "50505050");
    let target = Controller::start(TARGET_NAME, "7a7a7a7a");
    let to_target = target.redirect(TARGET_NAME, TARGET_UUID);
    let mut deployed = deploy(&source, &[]);
    let digest = deployed.digest.clone();

    eprintln!("--- CATCHUP: validated once");
    publish(
        &source.state,
        &digest,
        2,
        Some(notice("CATCHUP", &to_target)),
        None,
    );
    wait_for("the validation report", || {
        !source
            .state
            .migration_reports_for(MIGRATION_ID, "CATCHUP")
            .is_empty()
    });

    eprintln!("--- the connection drops: the validation is repeated on the new connection");
    let watches = source.state.watch_calls.load(Ordering::SeqCst);
    source.restart();
    wait_for("the agent to reconnect", || {
        source.state.watch_calls.load(Ordering::SeqCst) > watches
    });
    wait_for("the validation on the new connection", || {
        source
            .state
            .migration_reports_for(MIGRATION_ID, "CATCHUP")
            .len()
            >= 2
    });

    eprintln!("--- abort: the next update has no notice; the agent carries on with the source");
    publish(&source.state, &digest, 3, None, None);
    let seen = source.state.applied_seq();
    let pid = crash_workload(&deployed, deployed.pid);
    wait_for("the new status on the source", || {
        let after = source.state.reports_after(seen);
        statuses_of(&after, "unit-counter-0", "workload") == ["error", "active"]
    });
    assert_contiguous_from(
        &source.state.reports_after(seen),
        &source.state.logs(),
        seen,
    );
    assert!(source
        .state
        .logs()
        .iter()
        .any(|l| l.message.contains("workload exited")));
    assert!(target.state.reports().is_empty());
    assert_eq!(workload_pid(&deployed.data), Some(pid));
    assert!(alive(pid));
    assert_eq!(
        read_agent_config(&deployed.fx.config).controller_name,
        "fake"
    );
    let log = agentd_log(&deployed.fx.root);
    assert!(
        log.contains(&format!(
            "migration {MIGRATION_ID}: aborted; the model stays with controller"
        )),
        "{log}"
    );
    deployed.guard.sweep();
}

#[test]
fn a_validation_refused_by_the_target_is_reported_with_its_reason() {
    let source = Controller::start("source", "50505050");
    let target = Controller::start(TARGET_NAME, "7a7a7a7a");
    *target.state.refuse_validation.lock().unwrap() = Some((
        Code::PermissionDenied,
        "model 6f1c1a9e is not being imported here".into(),
    ));
    let to_target = target.redirect(TARGET_NAME, TARGET_UUID);
    let mut deployed = deploy(&source, &[]);
    let digest = deployed.digest.clone();

    publish(
        &source.state,
        &digest,
        2,
        Some(notice("CATCHUP", &to_target)),
        None,
    );
    wait_for("the validation report", || {
        !source
            .state
            .migration_reports_for(MIGRATION_ID, "CATCHUP")
            .is_empty()
    });
    let report = source.state.migration_reports_for(MIGRATION_ID, "CATCHUP")[0].clone();
    assert!(!report.ok, "{report:?}");
    assert!(
        report.reason.contains("PermissionDenied") && report.reason.contains("not being imported"),
        "{report:?}"
    );
    // A refusal is an answer: not retried.
    assert_eq!(target.state.validate_calls.load(Ordering::SeqCst), 1);
    assert!(target.state.validations.lock().unwrap().is_empty());
    assert_eq!(workload_pid(&deployed.data), Some(deployed.pid));
    assert!(alive(deployed.pid));
    deployed.guard.sweep();
}

#[test]
fn an_agent_that_missed_the_switch_follows_the_source_redirect_when_it_starts() {
    let source = Controller::start("source", "50505050");
    let target = Controller::start(TARGET_NAME, "7a7a7a7a");
    let to_target = target.redirect(TARGET_NAME, TARGET_UUID);
    let mut deployed = deploy(&source, &[&target]);
    let digest = deployed.digest.clone();
    let pid = deployed.pid;
    let hooks_before = hook_runs(&deployed.unit_dir);

    eprintln!("--- the agent is down while the model migrates");
    let mut agentd = deployed.guard.agentd.take().unwrap();
    agentd.kill().unwrap();
    agentd.wait().unwrap();
    let source_seq = source.state.applied_seq();
    let source_calls = source.state.report_calls();
    // After SUCCESS (and REAP) the source only redirects: the model is gone there.
    source.state.desired.send_replace(AgentUpdate {
        revision: 9,
        redirect: Some(to_target.clone()),
        machine_removed: true,
        ..AgentUpdate::default()
    });
    publish(&target.state, &digest, 1, None, None);
    // The import carries the source's last applied number: a batch whose acknowledgement the
    // kill lost is sent again to the target, which skips it as the controller does.
    target
        .state
        .imported_seq
        .store(source_seq, Ordering::SeqCst);

    eprintln!("--- it starts against the source and follows the redirect");
    deployed.guard.agentd = Some(spawn_agentd(&deployed.fx.root, &deployed.fx.config));
    wait_for("the agent to report to the target", || {
        statuses_of(&target.state.reports(), "machine-0", "agent").contains(&"started".to_string())
    });
    let config = read_agent_config(&deployed.fx.config);
    assert_eq!(config.controller_name, TARGET_NAME);
    assert_eq!(config.api_endpoints, vec![target.endpoint()]);
    assert_eq!(config.ca_cert, target.ca.cert);
    assert_eq!(source.state.report_calls(), source_calls);
    assert_eq!(source.state.applied_seq(), source_seq);
    assert!(
        target.state.reports().iter().all(|r| r.seq > source_seq),
        "seqs keep growing across the switch"
    );
    assert!(
        deployed
            .guard
            .agentd
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "a redirect is not a machine removal"
    );
    assert_eq!(workload_pid(&deployed.data), Some(pid));
    assert!(alive(pid));
    assert_counting(&deployed.unit_dir);
    assert_eq!(counter_workloads(&deployed.fx.root), BTreeSet::from([pid]));
    assert_eq!(hook_runs(&deployed.unit_dir), hooks_before);

    eprintln!("--- a restart now goes straight to the target");
    let mut agentd = deployed.guard.agentd.take().unwrap();
    agentd.kill().unwrap();
    agentd.wait().unwrap();
    let watches = source.state.watch_calls.load(Ordering::SeqCst);
    let seen = target.state.applied_seq();
    deployed.guard.agentd = Some(spawn_agentd(&deployed.fx.root, &deployed.fx.config));
    wait_for("the restarted agent to report to the target", || {
        statuses_of(&target.state.reports_after(seen), "machine-0", "agent")
            .contains(&"started".to_string())
    });
    assert_eq!(source.state.watch_calls.load(Ordering::SeqCst), watches);
    assert_eq!(workload_pid(&deployed.data), Some(pid));
    deployed.guard.sweep();
}
