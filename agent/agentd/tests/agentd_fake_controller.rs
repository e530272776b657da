//! The real `agentd` binary against an in-process fake `Agent` server (TLS, rcgen certs): a
//! unit's workload runs, survives the controller going away and the agent being SIGKILLed
//! (adopted, not duplicated, install not re-run), status reports queued meanwhile arrive in
//! order, a removed unit's workload is stopped; a refused credential is fatal.

#[path = "support/fake_controller.rs"]
mod fake_controller;

use std::collections::BTreeSet;

use fake_controller::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use starling_ctld::pki;
use starling_daemon::agent_config::AgentConfig;
use starling_proto::agent::AgentUpdate;

// ---------------------------------------------------------------- tests

#[test]
fn workload_survives_controller_loss_and_agent_restart() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let state = FakeState::new(CREDENTIAL);
    let server = FakeServer::start(&state, &node, None);
    let addr = server.addr;
    let fx = fixture(&[addr.to_string()], &ca, node);
    let data = fx.root.join("machine-0-data");
    let unit_dir = data.join("units/counter-0");
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: None,
    };

    eprintln!("--- deploy the counter charm to counter/0");
    let (charm, digest) = counter_charm();
    state.charms.lock().unwrap().insert(digest.clone(), charm);
    state.desired.send_replace(AgentUpdate {
        revision: 1,
        units: vec![counter_spec(&digest)],
        heartbeat_interval_ms: 200,
        ..AgentUpdate::default()
    });
    guard.agentd = Some(spawn_agentd(&fx.root, &fx.config));
    wait_for("counter.log to grow", || {
        lines(&unit_dir.join("counter.log")) >= 2
    });
    wait_for("the workload to be reported active", || {
        statuses_of(&state.reports(), "unit-counter-0", "workload").last()
            == Some(&"active".to_string())
    });
    let reports = state.reports();
    assert_in_order(&reports);
    assert!(statuses_of(&reports, "machine-0", "agent").contains(&"started".to_string()));
    let workload = statuses_of(&reports, "unit-counter-0", "workload");
    assert!(
        workload.contains(&"maintenance".to_string()),
        "{workload:?}"
    );
    let pid = workload_pid(&data).expect("workload pid persisted");
    assert!(alive(pid));
    assert_eq!(counter_workloads(&fx.root).len(), 1);

    eprintln!("--- the controller goes away: the workload keeps running");
    drop(server);
    let seen = state.applied_seq();
    let before = lines(&unit_dir.join("counter.log"));
    wait_for("counter.log to keep growing", || {
        lines(&unit_dir.join("counter.log")) >= before + 2
    });
    assert_eq!(workload_pid(&data), Some(pid));
    assert!(alive(pid));

    eprintln!("--- the workload dies while the controller is away: restarted, reports queued");
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_for("a new workload", || {
        workload_pid(&data).is_some_and(|p| p != pid && alive(p))
    });
    let pid = workload_pid(&data).unwrap();
    assert_eq!(
        state.applied_seq(),
        seen,
        "nothing reached the absent controller"
    );

    eprintln!("--- the controller returns: queued reports arrive in order");
    let server = FakeServer::start(&state, &fx.node, Some(addr));
    wait_for("the queued reports", || {
        let reports = state.reports();
        let after: Vec<_> = reports.iter().filter(|r| r.seq > seen).cloned().collect();
        let workload = statuses_of(&after, "unit-counter-0", "workload");
        workload.contains(&"error".to_string()) && workload.last() == Some(&"active".to_string())
    });
    let reports = state.reports();
    assert_in_order(&reports);
    let after: Vec<_> = reports.iter().filter(|r| r.seq > seen).cloned().collect();
    let workload = statuses_of(&after, "unit-counter-0", "workload");
    let error_at = workload.iter().position(|s| s == "error").unwrap();
    let active_at = workload.iter().rposition(|s| s == "active").unwrap();
    assert!(error_at < active_at, "{workload:?}");

    eprintln!("--- SIGKILL agentd and start it again: the workload is adopted");
    let mut agentd = guard.agentd.take().unwrap();
    agentd.kill().unwrap();
    agentd.wait().unwrap();
    assert!(alive(pid));
    let seen = state.applied_seq();
    guard.agentd = Some(spawn_agentd(&fx.root, &fx.config));
    wait_for("the restarted agent to report", || {
        let reports = state.reports();
        statuses_of(
            &reports
                .into_iter()
                .filter(|r| r.seq > seen)
                .collect::<Vec<_>>(),
            "machine-0",
            "agent",
        )
        .contains(&"started".to_string())
    });
    let before = lines(&unit_dir.join("counter.log"));
    wait_for("counter.log to keep growing", || {
        lines(&unit_dir.join("counter.log")) >= before + 2
    });
    assert_eq!(workload_pid(&data), Some(pid));
    assert!(alive(pid));
    assert_eq!(
        counter_workloads(&fx.root),
        BTreeSet::from([pid]),
        "exactly the adopted workload runs"
    );
    let hooks = std::fs::read_to_string(unit_dir.join("hooks.log")).unwrap();
    assert_eq!(
        hooks.lines().filter(|l| l.contains(" install ")).count(),
        1,
        "{hooks}"
    );
    assert_eq!(
        hooks.lines().filter(|l| l.contains(" start ")).count(),
        1,
        "{hooks}"
    );

    eprintln!("--- the unit is removed: its workload stops");
    state.desired.send_replace(AgentUpdate {
        revision: 2,
        units: vec![],
        heartbeat_interval_ms: 200,
        ..AgentUpdate::default()
    });
    wait_for("the workload to stop", || {
        !alive(pid) && counter_workloads(&fx.root).is_empty()
    });
    wait_for("the unit dir to go", || !unit_dir.exists());

    eprintln!("--- the machine is removed: agentd exits 0");
    state.desired.send_replace(AgentUpdate {
        revision: 3,
        machine_removed: true,
        ..AgentUpdate::default()
    });
    let mut agentd = guard.agentd.take().unwrap();
    let status = wait_exit(&mut agentd);
    assert!(status.success(), "{status}");
    drop(server);
}

#[test]
fn refused_credential_exits_1() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let state = FakeState::new("another-credential");
    let server = FakeServer::start(&state, &node, None);
    let fx = fixture(&[server.addr.to_string()], &ca, node);
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: None,
    };
    let mut agentd = spawn_agentd(&fx.root, &fx.config);
    let status = wait_exit(&mut agentd);
    guard.agentd = None;
    assert_eq!(status.code(), Some(1));
    let stderr = std::fs::read_to_string(fx.root.join("agentd.stderr")).unwrap();
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("ERROR ") && last.contains("refused the agent's credential"),
        "{stderr}"
    );
    guard.sweep();
}

#[test]
fn unreadable_ca_exits_1() {
    let ca = pki::new_ca("fake", "c0ffee00").unwrap();
    let node = pki::new_node_cert(&ca, 1, &["127.0.0.1"]).unwrap();
    let fx = fixture(&["127.0.0.1:1".to_string()], &ca, node);
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let mut config: AgentConfig = serde_saphyr::from_str(&text).unwrap();
    config.ca_cert = "not a certificate".into();
    std::fs::write(&fx.config, serde_saphyr::to_string(&config).unwrap()).unwrap();
    let mut guard = ProcessGuard {
        root: fx.root.clone(),
        agentd: Some(spawn_agentd(&fx.root, &fx.config)),
    };
    let status = wait_exit(guard.agentd.as_mut().unwrap());
    assert_eq!(status.code(), Some(1));
    let stderr = std::fs::read_to_string(fx.root.join("agentd.stderr")).unwrap();
    assert!(
        stderr.contains("ERROR ") && stderr.contains("ca-cert"),
        "{stderr}"
    );
}
