//! A command carries the authority its proposer checked (`Command.authority`) and applying
//! checks it again, so a write authorized on a node that had not applied a revocation yet (a
//! lagging follower) is refused once the revocation applied first, on every node alike.

use starling_proto::command::{self as cmd, authority::Kind, command::Op, command_error::Code};
use starling_proto::model::Access;
use starling_storage::StateBackend;

mod support;

use support::{Harness, UUID};

/// A model owned by alice, user bob with write access to it, machines 0 and 1.
fn shared_model() -> Harness {
    let mut h = Harness::new();
    h.ok(Op::AddModel(cmd::AddModel {
        uuid: UUID.into(),
        name: "m".into(),
        owner: "alice".into(),
        ..Default::default()
    }));
    h.ok(Op::AddUser(cmd::AddUser {
        name: "bob".into(),
        token_sha256: "cd".repeat(32),
        controller_access: "login".into(),
    }));
    h.ok(Op::SetModelAccess(cmd::SetModelAccess {
        model_uuid: UUID.into(),
        user: "bob".into(),
        access: Access::Write as i32,
        revoke: false,
    }));
    for _ in 0..2 {
        h.ok(Op::AddMachine(cmd::AddMachine {
            model_uuid: UUID.into(),
            credential_sha256: "ab".repeat(32),
        }));
    }
    h
}

/// What a node that found bob with write access puts in his command.
fn bob_may_write() -> Option<cmd::Authority> {
    Some(cmd::Authority {
        kind: Kind::User as i32,
        model_uuid: UUID.into(),
        model_access: Access::Write as i32,
        what: "change its config".into(),
        ..Default::default()
    })
}

fn set_config() -> Op {
    Op::SetModelConfig(cmd::SetModelConfig {
        model_uuid: UUID.into(),
        values: [("logging-level".to_string(), "debug".to_string())].into(),
    })
}

fn refused_as(h: &mut Harness, caller: &str, authority: Option<cmd::Authority>, op: Op) -> String {
    let before = h.store.export_state().expect("exports").entries;
    match h.apply_as(caller, authority, op) {
        cmd::command_result::Result::Error(e) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{}", e.message);
            assert_eq!(
                h.store.export_state().expect("exports").entries,
                before,
                "a refusal wrote something"
            );
            e.message
        }
        cmd::command_result::Result::Ok(ok) => panic!("accepted: {ok:?}"),
    }
}

#[test]
fn a_write_authorized_before_a_revocation_is_refused_after_it() {
    let mut h = shared_model();
    assert!(matches!(
        h.apply_as("bob", bob_may_write(), set_config()),
        cmd::command_result::Result::Ok(_)
    ));
    // Alice takes write away; bob's next write was authorized by a node that had not applied
    // that yet, and reaches the log after it.
    h.ok(Op::SetModelAccess(cmd::SetModelAccess {
        model_uuid: UUID.into(),
        user: "bob".into(),
        access: Access::Write as i32,
        revoke: true,
    }));
    let message = refused_as(&mut h, "bob", bob_may_write(), set_config());
    assert_eq!(
        message,
        "user \"bob\" has read access to model \"m\" and may not change its config \
         (write access needed)"
    );
    // Read access is still enough for what needs read.
    let read = cmd::Authority {
        model_access: Access::Read as i32,
        ..bob_may_write().expect("authority")
    };
    assert!(matches!(
        h.apply_as("bob", Some(read), set_config()),
        cmd::command_result::Result::Ok(_)
    ));
}

#[test]
fn a_user_unknown_to_the_state_or_no_longer_superuser_is_refused() {
    let mut h = shared_model();
    let message = refused_as(&mut h, "carol", bob_may_write(), set_config());
    assert_eq!(
        message,
        "user \"carol\" may no longer change its config: the user no longer exists"
    );
    let superuser = cmd::Authority {
        kind: Kind::User as i32,
        superuser: true,
        what: "add models".into(),
        ..Default::default()
    };
    let message = refused_as(&mut h, "bob", Some(superuser.clone()), set_config());
    assert_eq!(
        message,
        "user \"bob\" may no longer add models: the user is no longer a controller superuser"
    );
    // A bootstrap user is not in the replicated state: nothing there revokes it.
    let bootstrap = cmd::Authority {
        kind: Kind::Bootstrap as i32,
        ..superuser
    };
    assert!(matches!(
        h.apply_as("admin", Some(bootstrap), set_config()),
        cmd::command_result::Result::Ok(_)
    ));
}

#[test]
fn an_agent_of_a_removed_machine_may_not_report() {
    let mut h = shared_model();
    let agent = |machine: &str| {
        Some(cmd::Authority {
            kind: Kind::Agent as i32,
            model_uuid: UUID.into(),
            machine_id: machine.into(),
            what: "report".into(),
            ..Default::default()
        })
    };
    let report = |machine: &str| {
        Op::AgentReport(cmd::AgentReport {
            model_uuid: UUID.into(),
            machine_id: machine.into(),
            reports: Vec::new(),
            logs: vec![starling_proto::model::LogRecord {
                entity: format!("machine-{machine}"),
                message: "hello".into(),
                ..Default::default()
            }],
        })
    };
    assert!(matches!(
        h.apply_as("machine-1", agent("1"), report("1")),
        cmd::command_result::Result::Ok(_)
    ));
    h.ok(Op::RemoveMachine(cmd::RemoveMachine {
        model_uuid: UUID.into(),
        machine_id: "1".into(),
        force: true,
    }));
    // The removal applied first: the agent's report, authorized before it, is refused.
    let message = refused_as(&mut h, "machine-1", agent("1"), report("1"));
    assert_eq!(
        message,
        format!("the agent of machine 1 may no longer report: the machine was removed from model {UUID}")
    );
    // The same check covers what an agent reports about a migration.
    let progress = Op::MigrationProgress(cmd::MigrationProgress {
        migration_id: format!("{UUID}:1"),
        fact: Some(cmd::migration_progress::Fact::AgentAcked("1".into())),
    });
    refused_as(&mut h, "machine-1", agent("1"), progress);
}
