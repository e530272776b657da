//! The real `ctl` binary against a real 3-node controller (issue "Models"): every model command,
//! every output format of the listing and status commands (insta snapshots with uuids, times,
//! ports, digests, tokens and Raft counters redacted, plus explicit checks of the JSON contract of
//! docs/ctl.md), errors and exit codes, a read-only user's refused writes, and the same model
//! state on every node after the leader is SIGKILLed.
//!
//! One controller is shared by the phases of one test (named with `info!("--- ...")`), so the
//! file runs in well under a minute on two cores. Every `ctl` runs with its own `CTL_DATA`, stdin
//! not a terminal and a deadline; every wait polls a condition with a deadline.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use starling_cluster_tests::init_tracing;
use starling_cluster_tests::{ClusterOptions, LocalCluster};
use tracing::info;

/// Deadline of one `ctl` run (a failover retry included).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the conditions the test waits for (leader, agent log records).
const CONDITION_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// What one `ctl` run printed.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The `ctl` binary with one client store (`CTL_DATA`) and nothing from the caller's
/// environment that selects a controller, model or token.
#[derive(Clone, Debug)]
struct Ctl {
    bin: PathBuf,
    data: PathBuf,
    env: Vec<(String, String)>,
}

impl Ctl {
    fn new(bin: &Path, data: &Path) -> Self {
        Self {
            bin: bin.to_path_buf(),
            data: data.to_path_buf(),
            env: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("CTL_DATA", &self.data)
            .env_remove("CTL_CONTROLLER")
            .env_remove("CTL_MODEL")
            .env_remove("CTL_TOKEN")
            .env_remove("XDG_DATA_HOME")
            .env("NO_COLOR", "1")
            .timeout(CTL_TIMEOUT);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs `ctl ARGS` and returns what it printed, whatever its exit status.
    fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctl {args:?}: {e}"));
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        info!(?args, code = run.code, stderr = %run.stderr.trim_end(), "ctl");
        run
    }

    /// `ctl ARGS` must succeed; returns its stdout and stderr.
    fn ok_both(&self, args: &[&str]) -> (String, String) {
        let assert = self.command(args).assert().success();
        let output = assert.get_output();
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `ctl ARGS` must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_both(args).0
    }

    /// `ctl ARGS` must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("ctl {args:?} printed no JSON ({e}):\n{stdout}"))
    }

    /// `ctl ARGS` must fail with exit status 1 and exactly `line` (`ERROR ...`) on stderr,
    /// printing nothing on stdout.
    fn error(&self, args: &[&str], line: &str) {
        self.command(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(format!("{line}\n"));
    }

    /// `ctl ARGS` must fail with exit status 1 and one `ERROR` line containing every `part`.
    fn error_containing(&self, args: &[&str], parts: &[&str]) -> String {
        let mut predicate = predicate::str::starts_with("ERROR ").boxed();
        for part in parts {
            predicate = predicate.and(predicate::str::contains(*part)).boxed();
        }
        let assert = self
            .command(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(predicate);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "one ERROR line: {stderr}");
        info!(?args, stderr = %stderr.trim_end(), "refused as expected");
        stderr
    }

    /// `ctl ARGS` must be a usage error: exit status 2, clap's message on stderr.
    fn usage_error(&self, args: &[&str], part: &str) {
        self.command(args)
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::contains(part));
    }

    /// The model status as JSON with what legitimately differs between two reads removed
    /// (the time of the read; the controller's name in the client store).
    fn state(&self, model: &str) -> Value {
        normalized_status(self.json(&["status", "-m", model, "--format", "json"]))
    }
}

fn normalized_status(mut status: Value) -> Value {
    let model = status["model"]
        .as_object_mut()
        .expect("status has a model object");
    model.remove("timestamp");
    model.remove("controller");
    status
}

/// The redactions every snapshot gets: what changes from run to run. Tables keep their shape
/// because the redacted values have a fixed width (times to the millisecond; loopback ports from
/// the ephemeral range, five digits).
const REDACTIONS: &[(&str, &str)] = &[
    (
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    ),
    (r"(only this once: |--token )[0-9a-f]{64}", "${1}[token]"),
    (r"[0-9a-f]{64}", "[sha256]"),
    (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "[time]"),
    (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
];

/// What `show-controller` reports about the Raft group, which depends on which node won which
/// election and how many entries were applied when the command ran.
const RAFT_REDACTIONS: &[(&str, &str)] = &[
    // yaml and json; only the leader knows how far each member's log matches its own, so
    // `matched-index` is there or not depending on which node answered.
    (r#",\n\s*"matched-index": \d+"#, ""),
    (r"\n\s*matched-index: \d+", ""),
    (r#"("?(?:leader|term|applied-index)"?): \d+"#, "$1: [n]"),
    (
        r#"("?state"?): "?(?:leader|follower|candidate|learner)"?"#,
        "$1: [state]",
    ),
    // tabular: the controller line, then one line per member
    (
        r"(?m)^(\S+\s+\[uuid\]\s+\S+\s+\S+\s+)\d+\s+\d+$",
        "${1}[leader] [term]",
    ),
    (
        r"(?m)^(\d+\s+127\.0\.0\.1:\[port\]\s+\w+\s+)(?:leader|follower|candidate|learner)\s+\d+\s+\d+(\s+\d+)\s+(?:-|[\d.]+ [kMG]?B)$",
        "${1}[state] [term] [applied]${2} [disk]",
    ),
];

/// What the load columns and keys report: rates and sizes measured as the test ran. Table
/// columns are first cut to two spaces apart (the measured values change their widths), then
/// the values are redacted.
const LOAD_REDACTIONS: &[(&str, &str)] = &[
    (r"(\S)[ ]{2,}", "${1}  "),
    (
        r#"("?(?:writes-per-second|agent-reports-per-second|reads-per-second|size-bytes|records|log-records|disk-bytes|models-bytes|logs-bytes)"?): [\d.]+"#,
        "$1: [n]",
    ),
    // `ctl models`: Writes/s, Agents and Size after Machines and Units.
    (
        r"(?m)^(\S+  \S+  \S+  \S+  \S+)  [\d.]+  (\S+)  [\d.]+ [kMG]?B  ",
        "${1}  [writes]  ${2}  [size]  ",
    ),
    // `ctl show-controller`: the totals under their header.
    (
        r"(?m)^(Models  Machines  Units  Agents  Writes/s  Reads/s  Model data  Disk  Migrating\n)\s*(\d+)  (\d+)  (\d+)  (\d+)  .*  (\d+)$",
        "${1}${2}  ${3}  ${4}  ${5}  [writes]  [reads]  [size]  [disk]  ${6}",
    ),
];

/// Snapshots `text` under `name` with [`REDACTIONS`] (and `extra`) applied.
fn snapshot(name: &str, text: &str, extra: &[(&str, &str)]) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(true);
    settings.set_omit_expression(true);
    for (pattern, replacement) in REDACTIONS.iter().chain(extra) {
        settings.add_filter(pattern, *replacement);
    }
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// Every dotted `path` (`a.b.c`, `[]` for "each element") must exist in `value`.
fn check_keys(what: &str, value: &Value, paths: &[&str]) {
    for path in paths {
        let mut nodes = vec![value];
        for key in path.split('.') {
            let mut next = Vec::new();
            for node in nodes {
                if let Some(key) = key.strip_suffix("[]") {
                    let list = node
                        .get(key)
                        .and_then(Value::as_array)
                        .unwrap_or_else(|| panic!("{what}: `{path}`: no list `{key}` in {node}"));
                    assert!(!list.is_empty(), "{what}: `{path}`: `{key}` is empty");
                    next.extend(list.iter());
                } else {
                    let child = node.get(key).unwrap_or_else(|| {
                        panic!("{what}: no `{path}` (`{key}` missing in {node})")
                    });
                    next.push(child);
                }
            }
            nodes = next;
        }
    }
}

/// The file's mode bits.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Writes a charm directory with `metadata` (and nothing else) under `dir`.
fn write_charm(dir: &Path, name: &str, metadata: &str) -> Result<PathBuf> {
    let charm = dir.join(name);
    std::fs::create_dir_all(&charm)?;
    std::fs::write(charm.join("metadata.yaml"), metadata)?;
    Ok(charm)
}

/// Copies the files of client store `from` into a new store `to` (same modes).
fn copy_store(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for name in ["controllers.yaml", "models.yaml", "accounts.yaml"] {
        std::fs::copy(from.join(name), to.join(name)).with_context(|| format!("copying {name}"))?;
    }
    Ok(())
}

/// A registration file for the same controller with only node `id`'s endpoint, so `ctl` asks
/// that node and no other. JSON is YAML, which `ctl register` reads.
fn single_node_registration(cluster: &LocalCluster, id: u64, path: &Path) -> Result<()> {
    let registration = cluster.registration();
    let file = serde_json::json!({
        "name": registration.name,
        "uuid": registration.uuid,
        "api-endpoints": [cluster.grpc_addr(id)],
        "ca-cert": registration.ca_cert,
        "cloud": registration.cloud,
        "region": registration.region,
        "version": registration.version,
        "user": registration.user,
        "token": registration.token,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&file)?)?;
    Ok(())
}

/// A running `agentd`, SIGKILLed and reaped when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Polls `ctl debug-log` until a record containing `needle` shows up.
fn wait_for_log(ctl: &Ctl, model: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + CONDITION_WAIT;
    loop {
        let log = ctl.ok(&["debug-log", "-m", model, "--replay", "--no-tail"]);
        if log.contains(needle) {
            return Ok(log);
        }
        if Instant::now() >= deadline {
            bail!("no log record containing {needle:?} within {CONDITION_WAIT:?}; log:\n{log}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `ctl status -m MODEL` until it answers (a restarted node may still be catching up).
fn wait_for_status(ctl: &Ctl, model: &str) -> Result<Value> {
    let deadline = Instant::now() + CONDITION_WAIT;
    loop {
        let run = ctl.run(&["status", "-m", model, "--format", "json"]);
        if run.code == 0 {
            return Ok(normalized_status(serde_json::from_str(&run.stdout)?));
        }
        if Instant::now() >= deadline {
            bail!("ctl status -m {model} kept failing: {}", run.stderr);
        }
        std::thread::sleep(POLL);
    }
}

/// What the phases share: the controller, the admin's `ctl`, a scratch dir and the example
/// charms.
struct Fixture {
    cluster: LocalCluster,
    ctl: Ctl,
    work: tempfile::TempDir,
    charms: PathBuf,
    registration: String,
}

impl Fixture {
    /// The path of example charm `name` (scripts/charms).
    fn charm(&self, name: &str) -> String {
        self.charms.join(name).to_string_lossy().into_owned()
    }
}

/// Registers the controller; the client store and `ctl controllers`.
fn register(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let cluster = &f.cluster;
    let registration = f.registration.as_str();
    info!("--- register the controller");
    let (stdout, _) = ctl.ok_both(&["register", registration]);
    info!(stdout, "registered");
    for file in ["controllers.yaml", "models.yaml", "accounts.yaml"] {
        assert_eq!(mode(&ctl.data.join(file)), 0o600, "{file}");
    }
    let controllers = ctl.json(&["controllers", "--format", "json"]);
    assert_eq!(controllers["current-controller"], "alpha");
    assert_eq!(
        controllers["controllers"]["alpha"]["uuid"],
        cluster.registration().uuid.as_str()
    );
    snapshot("controllers_tabular", &ctl.ok(&["controllers"]), &[]);
    snapshot(
        "controllers_yaml",
        &ctl.ok(&["controllers", "--format", "yaml"]),
        &[],
    );
    assert_eq!(ctl.ok(&["switch"]), "alpha:admin/controller\n");
    // Every controller has a model named `controller` (docs/concepts.md); the bootstrap nodes
    // create it once the group has a leader, so wait for it rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let output = ctl.run(&["status", "--format", "json"]);
        if output.code == 0 {
            let status: Value = serde_json::from_str(&output.stdout)?;
            assert_eq!(status["model"]["name"], "controller");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the controller model never appeared: {}",
            output.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

/// `show-controller` and `controller-config` in every format; get and set one key.
fn controller_views(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let cluster = &f.cluster;
    info!("--- show-controller and controller-config, every format");
    let shown = ctl.json(&["show-controller", "--format", "json"]);
    check_keys(
        "show-controller",
        &shown,
        &[
            "alpha.uuid",
            "alpha.version",
            "alpha.cloud",
            "alpha.region",
            "alpha.api-endpoints",
            "alpha.leader",
            "alpha.members[].id",
            "alpha.members[].address",
            "alpha.members[].role",
            "alpha.members[].term",
            "alpha.members[].applied-index",
        ],
    );
    assert_eq!(shown["alpha"]["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        shown["alpha"]["api-endpoints"],
        serde_json::json!(cluster.registration().api_endpoints)
    );
    for format in ["tabular", "yaml", "json"] {
        let text = ctl.ok(&["show-controller", "alpha", "--format", format]);
        let redactions: Vec<_> = LOAD_REDACTIONS
            .iter()
            .chain(RAFT_REDACTIONS)
            .copied()
            .collect();
        snapshot(&format!("show_controller_{format}"), &text, &redactions);
    }
    // yaml is show-controller's default.
    assert_eq!(ctl.ok(&["show-controller"]).lines().next(), Some("alpha:"));
    for format in ["tabular", "yaml", "json"] {
        let text = ctl.ok(&["controller-config", "-c", "alpha", "--format", format]);
        snapshot(&format!("controller_config_{format}"), &text, &[]);
    }
    assert_eq!(
        ctl.ok(&["controller-config", "-c", "alpha", "backups-to-keep"]),
        "5\n"
    );
    assert_eq!(ctl.ok(&["controller-config", "custom.owner=ops-team"]), "");
    assert_eq!(ctl.ok(&["controller-config", "custom.owner"]), "ops-team\n");
    Ok(())
}

/// `add-model`, `models` and `show-model` in every format; returns demo's uuid.
fn models(f: &Fixture) -> Result<String> {
    let ctl = &f.ctl;
    let cluster = &f.cluster;
    info!("--- add-model, models, show-model");
    let (stdout, stderr) = ctl.ok_both(&["add-model", "demo"]);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "Added 'demo' model on {}/{} for user 'admin'\n",
            cluster.registration().cloud,
            cluster.registration().region
        )
    );
    assert_eq!(ctl.ok(&["switch"]), "alpha:admin/demo\n");
    ctl.error(
        &["add-model", "demo"],
        "ERROR model \"admin/demo\" already exists",
    );
    let models = ctl.json(&["models", "--format", "json"]);
    check_keys(
        "models",
        &models,
        &[
            "models[].name",
            "models[].short-name",
            "models[].model-uuid",
            "models[].controller-name",
            "models[].life",
            "models[].status.current",
            "models[].status.migration",
            "models[].status.migration-start",
            "models[].status.migration-end",
            "current-model",
        ],
    );
    let demo = models["models"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["short-name"] == "demo"))
        .context("demo listed")?
        .clone();
    assert_eq!(demo["name"], "admin/demo");
    assert_eq!(demo["controller-name"], "alpha");
    assert_eq!(demo["life"], "alive");
    assert_eq!(demo["status"]["current"], "available");
    assert_eq!(models["current-model"], "demo");
    let demo_uuid = demo["model-uuid"].as_str().context("uuid")?.to_string();
    for format in ["tabular", "yaml", "json"] {
        let text = ctl.ok(&["models", "--format", format]);
        snapshot(&format!("models_{format}"), &text, LOAD_REDACTIONS);
    }
    let show = ctl.json(&["show-model", "demo", "--format", "json"]);
    check_keys(
        "show-model",
        &show,
        &[
            "demo.name",
            "demo.short-name",
            "demo.model-uuid",
            "demo.controller-uuid",
            "demo.controller-name",
            "demo.cloud",
            "demo.region",
            "demo.life",
            "demo.agent-version",
            "demo.ownership-epoch",
            "demo.status.current",
            "demo.status.message",
            "demo.status.since",
            "demo.status.migration",
            "demo.status.migration-start",
            "demo.status.migration-end",
        ],
    );
    assert_eq!(show["demo"]["model-uuid"], demo_uuid.as_str());
    assert_eq!(
        show["demo"]["controller-uuid"],
        cluster.registration().uuid.as_str()
    );
    assert_eq!(show["demo"]["ownership-epoch"], 0);
    for format in ["tabular", "yaml", "json"] {
        let text = ctl.ok(&["show-model", "demo", "--format", format]);
        snapshot(&format!("show_model_{format}"), &text, LOAD_REDACTIONS);
    }
    // yaml is show-model's default; -m names the model as well as NAME does (the load, last,
    // moves between two calls: the first call is a read of the model).
    let without_load = |text: String| text.split("\n  load:\n").next().map(str::to_owned);
    assert_eq!(
        without_load(ctl.ok(&["show-model"])),
        without_load(ctl.ok(&["show-model", "-m", "alpha:demo", "--format", "yaml"]))
    );
    Ok(demo_uuid)
}

/// Every form of `ctl switch`.
fn switch(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let registration = f.registration.as_str();
    info!("--- switch, every form");
    ctl.ok_both(&["add-model", "other"]);
    assert_eq!(ctl.ok(&["switch"]), "alpha:admin/other\n");
    let switch = |target: &str| -> String {
        let (stdout, stderr) = ctl.ok_both(&["switch", target]);
        assert_eq!(stdout, "", "switch {target} prints on stderr only");
        stderr
    };
    assert_eq!(switch("demo"), "alpha:admin/other -> alpha:admin/demo\n");
    assert_eq!(switch(":other"), "alpha:admin/demo -> alpha:admin/other\n");
    assert_eq!(
        switch("alpha:demo"),
        "alpha:admin/other -> alpha:admin/demo\n"
    );
    assert_eq!(switch("alpha"), "alpha:admin/demo (no change)\n");
    assert_eq!(switch("alpha:"), "alpha:admin/demo (no change)\n");
    assert_eq!(
        switch("admin/other"),
        "alpha:admin/demo -> alpha:admin/other\n"
    );
    // A second name for the same controller (registering makes it current) keeps its own
    // current model.
    ctl.ok_both(&["register", registration, "--name", "beta"]);
    assert_eq!(ctl.ok(&["switch"]), "beta:admin/controller\n");
    assert_eq!(
        switch("alpha"),
        "beta:admin/controller -> alpha:admin/other\n"
    );
    assert_eq!(
        switch("beta"),
        "alpha:admin/other -> beta:admin/controller\n"
    );
    assert_eq!(
        switch("alpha"),
        "beta:admin/controller -> alpha:admin/other\n"
    );
    assert_eq!(
        switch("beta:"),
        "alpha:admin/other -> beta:admin/controller\n"
    );
    assert_eq!(
        switch("alpha:demo"),
        "beta:admin/controller -> alpha:admin/demo\n"
    );
    ctl.ok_both(&["unregister", "beta"]);
    ctl.error(
        &["switch", "nope"],
        "ERROR \"nope\" is not the name of a model or controller",
    );
    ctl.error(
        &["switch", "gamma:"],
        "ERROR controller \"gamma\" not found",
    );
    ctl.error(
        &["switch", ":nope"],
        "ERROR model \"alpha:admin/nope\" not found",
    );
    assert_eq!(ctl.ok(&["switch"]), "alpha:admin/demo\n");
    Ok(())
}

/// Machines 0, 1 (default agent config path) and 2 (`--agent-config`).
fn add_machines(f: &Fixture, demo_uuid: &str) -> Result<()> {
    let ctl = &f.ctl;
    let work = &f.work;
    info!("--- add-machine");
    let (stdout, stderr) = ctl.ok_both(&["add-machine"]);
    assert_eq!(stdout, "0\n");
    let default_path = ctl
        .data
        .join("agents/alpha")
        .join(demo_uuid)
        .join("machine-0.yaml");
    assert_eq!(
        stderr,
        format!("agent config written to {}\n", default_path.display())
    );
    assert_eq!(mode(&default_path), 0o600);
    let agent_config = std::fs::read_to_string(&default_path)?;
    assert!(
        agent_config.contains(demo_uuid),
        "the agent config names its model:\n{agent_config}"
    );
    let (stdout, _) = ctl.ok_both(&["add-machine", "-m", "alpha:admin/demo"]);
    assert_eq!(stdout, "1\n");
    let machine_2 = work.path().join("machine-2.yaml");
    let (stdout, stderr) = ctl.ok_both(&[
        "add-machine",
        "--agent-config",
        machine_2.to_str().context("utf-8 path")?,
    ]);
    assert_eq!(stdout, "2\n");
    assert_eq!(
        stderr,
        format!("agent config written to {}\n", machine_2.display())
    );
    assert_eq!(mode(&machine_2), 0o600);
    Ok(())
}

/// Deploy counter, web and db; units, relations and config.
fn applications(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let charm = |name: &str| f.charm(name);
    info!("--- deploy, add-unit, remove-unit, integrate, remove-relation, config");
    assert_eq!(ctl.ok(&["deploy", &charm("counter"), "--to", "0,1"]), "");
    ctl.ok(&["deploy", &charm("web"), "--to", "0"]);
    ctl.ok(&["deploy", &charm("db"), "--to", "1"]);
    ctl.ok(&["add-unit", "web", "--to", "1"]);
    let status = ctl.json(&["status", "--format", "json"]);
    assert_eq!(status["applications"]["web"]["scale"], 2);
    assert_eq!(
        status["applications"]["web"]["units"]["web/1"]["machine"],
        "1"
    );
    ctl.ok(&["remove-unit", "web/1"]);
    let status = ctl.json(&["status", "--format", "json"]);
    assert_eq!(status["applications"]["web"]["scale"], 1);
    assert!(status["applications"]["web"]["units"]
        .get("web/1")
        .is_none());
    // Without --to the controller spreads units: machines 0 and 1 hold two units each, 2 none,
    // so both new units go to machine 2 (after the first it still has the fewest).
    ctl.ok(&["add-unit", "web", "-n", "2"]);
    let status = ctl.json(&["status", "--format", "json"]);
    for unit in ["web/2", "web/3"] {
        assert_eq!(
            status["applications"]["web"]["units"][unit]["machine"], "2",
            "{unit} placed on the emptiest machine: {status}"
        );
    }
    ctl.ok(&["remove-unit", "web/2", "web/3"]);
    ctl.ok(&["integrate", "web", "db"]);
    let relations = &ctl.json(&["status", "--format", "json"])["relations"];
    assert_eq!(
        relations,
        &serde_json::json!([{
            "provider": "db:db", "requirer": "web:db", "interface": "pgsql", "type": "regular"
        }])
    );
    ctl.error(
        &["integrate", "web:db", "db:db"],
        "ERROR relation \"web:db db:db\" already exists",
    );
    ctl.ok(&["remove-relation", "web", "db"]);
    assert_eq!(
        ctl.json(&["status", "--format", "json"])["relations"],
        serde_json::json!([])
    );
    ctl.ok(&["integrate", "web:db", "db:db"]);
    snapshot(
        "config_counter_tabular",
        &ctl.ok(&["config", "counter"]),
        &[],
    );
    assert_eq!(ctl.ok(&["config", "counter", "interval"]), "1\n");
    assert_eq!(ctl.ok(&["config", "counter", "interval=2"]), "");
    assert_eq!(ctl.ok(&["config", "counter", "interval"]), "2\n");
    let config = ctl.json(&["config", "counter", "--format", "json"]);
    assert_eq!(config["settings"]["interval"]["value"], "2");
    assert_eq!(config["settings"]["interval"]["source"], "user");
    Ok(())
}

/// `ctl status` in every format and its JSON contract.
fn status_formats(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    info!("--- status, every format");
    let status = ctl.json(&["status", "--format", "json"]);
    check_keys(
        "status",
        &status,
        &[
            "model.name",
            "model.controller",
            "model.cloud",
            "model.region",
            "model.version",
            "model.model-status.current",
            "model.model-status.message",
            "machines.0.agent-status.current",
            "machines.1.agent-status.current",
            "machines.2.agent-status.current",
            "relations",
        ],
    );
    for (app, units) in [
        ("counter", &["counter/0", "counter/1"][..]),
        ("web", &["web/0"][..]),
        ("db", &["db/0"][..]),
    ] {
        let app_status = &status["applications"][app];
        check_keys(
            app,
            app_status,
            &["charm", "scale", "application-status.current", "units"],
        );
        assert_eq!(app_status["charm"], app);
        assert_eq!(app_status["scale"], units.len());
        for unit in units {
            check_keys(
                unit,
                &app_status["units"][*unit],
                &[
                    "machine",
                    "workload-status.current",
                    "workload-status.message",
                    "agent-status.current",
                ],
            );
        }
    }
    assert_eq!(status["model"]["name"], "demo");
    assert_eq!(status["model"]["controller"], "alpha");
    for format in ["tabular", "yaml", "json"] {
        let text = ctl.ok(&["status", "--format", format]);
        snapshot(&format!("status_{format}"), &text, &[]);
    }
    let tabular = ctl.ok(&["status"]);
    assert!(
        tabular.starts_with("Model  Controller  Cloud/Region  ")
            && tabular.lines().next().is_some_and(|l| {
                l.split_whitespace().collect::<Vec<_>>()
                    == [
                        "Model",
                        "Controller",
                        "Cloud/Region",
                        "Version",
                        "Timestamp",
                        "Notes",
                    ]
            }),
        "status header:\n{tabular}"
    );
    Ok(())
}

/// Usage errors exit 2.
fn usage_errors(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let charm = |name: &str| f.charm(name);
    info!("--- refusals: usage errors exit 2");
    ctl.usage_error(&["bogus"], "unrecognized subcommand 'bogus'");
    ctl.usage_error(&["status", "--format", "xml"], "invalid value 'xml'");
    ctl.usage_error(&["remove-unit", "web"], "invalid unit name \"web\"");
    ctl.error_containing(
        &[
            "deploy",
            "/nonexistent/charm",
            "c2",
            "-n",
            "3",
            "--to",
            "0,1",
        ],
        &["is not a directory"],
    );
    ctl.usage_error(
        &["deploy", &charm("counter"), "c2", "-n", "3", "--to", "0,1"],
        "-n 3 needs 3 machines in --to, got 2",
    );
    ctl.usage_error(&["config", "counter", "=2"], "missing key in \"=2\"");
    ctl.usage_error(&["add-unit", "web", "-n", "0"], "-n must be at least 1");
    ctl.usage_error(&["remove-machine"], "required");
    ctl.usage_error(&["integrate", "web:", "db"], "invalid endpoint \"web:\"");
    Ok(())
}

/// Unknown names, impossible relations and missing machines: exit 1, one `ERROR` line, nothing changed.
fn refused_writes(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let charm = |name: &str| f.charm(name);
    info!("--- refusals: unknown names, impossible relations, missing machines (exit 1)");
    let before = ctl.state("demo");
    ctl.error(&["config", "nope"], "ERROR application \"nope\" not found");
    ctl.error(
        &["config", "nope", "a=b"],
        "ERROR application \"nope\" not found",
    );
    ctl.error(
        &["config", "counter", "nokey"],
        "ERROR key \"nokey\" not found in the config of application \"counter\"",
    );
    ctl.error(
        &["add-unit", "nope", "--to", "0"],
        "ERROR application \"nope\" not found",
    );
    ctl.error(&["remove-unit", "web/9"], "ERROR unit \"web/9\" not found");
    ctl.error(
        &["remove-unit", "nope/0"],
        "ERROR unit \"nope/0\" not found",
    );
    ctl.error(
        &["status", "-m", "nope"],
        "ERROR model \"admin/nope\" not found",
    );
    ctl.error(
        &["show-model", "nope"],
        "ERROR model \"admin/nope\" not found",
    );
    ctl.error(
        &["add-machine", "-m", "nope"],
        "ERROR model \"admin/nope\" not found",
    );
    ctl.error_containing(
        &["integrate", "nope", "db"],
        &["application \"nope\" not found"],
    );
    ctl.error_containing(
        &["integrate", "web", "counter"],
        &["no relation can be made between \"web\" and \"counter\""],
    );
    ctl.error_containing(
        &["integrate", "web:website", "db:db"],
        &[
            "no relation can be made between \"web:website\" and \"db:db\"",
            "http",
            "pgsql",
        ],
    );
    ctl.error(
        &["remove-relation", "web", "counter"],
        "ERROR no relation between \"web\" and \"counter\"",
    );
    ctl.error(
        &["deploy", &charm("counter"), "c2", "--to", "7"],
        "ERROR machine 7 not found",
    );
    ctl.error(
        &["add-unit", "counter", "--to", "9"],
        "ERROR machine 9 not found",
    );
    ctl.error(&["remove-machine", "9"], "ERROR machine 9 not found");
    ctl.error(
        &["remove-machine", "1"],
        "ERROR machine 1 still hosts unit(s) counter/1, db/0; remove them first or remove the machine with --force",
    );
    assert_eq!(ctl.state("demo"), before, "refused writes changed nothing");
    Ok(())
}

/// An ambiguous relation is refused until the endpoints are named.
fn ambiguous_relation(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let work = &f.work;
    info!("--- an ambiguous relation");
    let pg2 = write_charm(
        work.path(),
        "pg2",
        "name: pg2\ncommand: \"true\"\nprovides:\n  db:\n    interface: pgsql\n  replica:\n    interface: pgsql\n",
    )?;
    ctl.ok(&["deploy", pg2.to_str().context("utf-8")?, "-n", "0"]);
    let before = ctl.state("demo");
    ctl.error_containing(&["integrate", "web", "pg2"], &["ambiguous relation", "pg2"]);
    assert_eq!(
        ctl.state("demo"),
        before,
        "the refused integrate changed nothing"
    );
    ctl.ok(&["integrate", "web", "pg2:replica"]);
    ctl.ok(&["remove-relation", "web", "pg2:replica"]);

    info!("--- remove-application takes the units and relations with it");
    ctl.ok(&["integrate", "web", "pg2:replica"]);
    ctl.ok(&["add-unit", "pg2", "--to", "1"]);
    let before = ctl.state("demo");
    ctl.error(
        &["remove-application", "pg2"],
        "ERROR removing application \"pg2\" needs confirmation: pass -y (--no-prompt) when \
         stdin is not a terminal",
    );
    assert_eq!(
        ctl.state("demo"),
        before,
        "an unconfirmed removal changed something"
    );
    ctl.ok(&["remove-application", "pg2", "-y"]);
    let status = ctl.json(&["status", "--format", "json"]);
    assert!(status["applications"].get("pg2").is_none(), "{status}");
    assert!(
        !status["relations"].to_string().contains("pg2"),
        "a relation of pg2 is left: {}",
        status["relations"]
    );
    assert!(
        status["applications"]["web"]["units"].is_object(),
        "web lost its units: {status}"
    );
    ctl.error(
        &["remove-application", "pg2", "-y"],
        "ERROR application \"pg2\" not found",
    );
    Ok(())
}

/// An empty machine is removed without `--force`.
fn remove_empty_machine(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    info!("--- remove-machine");
    ctl.ok(&["remove-machine", "2"]);
    let status = ctl.json(&["status", "--format", "json"]);
    assert!(status["machines"].get("2").is_none(), "machine 2 is gone");
    Ok(())
}

/// `ctl debug-log` shows what a real `agentd` reported.
fn debug_log(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let cluster = &f.cluster;
    let work = &f.work;
    info!("--- debug-log with a real agent");
    assert_eq!(
        ctl.ok(&["debug-log", "--replay", "--no-tail"]),
        "",
        "no agent has reported for demo"
    );
    ctl.ok_both(&["add-model", "logs"]);
    let logs_machine = work.path().join("logs-machine-0.yaml");
    ctl.ok_both(&[
        "add-machine",
        "--agent-config",
        logs_machine.to_str().context("utf-8")?,
    ]);
    // A workload that exits at once: nothing outlives the agent.
    let echo = write_charm(
        work.path(),
        "echo",
        "name: echo\ncommand: \"true\"\nhooks:\n  install: echo hello from install\n",
    )?;
    ctl.ok(&["deploy", echo.to_str().context("utf-8")?, "--to", "0"]);
    let agent_log = std::fs::File::create(work.path().join("agentd.log"))?;
    let agent = Agent(
        StdCommand::new(cluster.bins().dir.join("agentd"))
            .arg("--config")
            .arg(&logs_machine)
            .stdin(Stdio::null())
            .stdout(agent_log.try_clone()?)
            .stderr(agent_log)
            .spawn()
            .context("spawning agentd")?,
    );
    let log = wait_for_log(ctl, "logs", "hello from install")?;
    let line = log
        .lines()
        .find(|l| l.contains("hello from install"))
        .context("the line")?;
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(fields.len(), 5, "ENTITY: TIME LEVEL MODULE MESSAGE: {line}");
    assert_eq!(fields[0], "unit-echo-0:", "{line}");
    assert_eq!(fields[2], "INFO", "{line}");
    assert_eq!(fields[3], "unit.echo.install", "{line}");
    assert_eq!(fields[4], "hello from install", "{line}");
    let only_machine = ctl.ok(&[
        "debug-log",
        "-m",
        "logs",
        "--replay",
        "--no-tail",
        "--include",
        "0",
    ]);
    assert!(
        !only_machine.contains("hello from install"),
        "--include 0 keeps only machine-0's records:\n{only_machine}"
    );
    // The unit's status history as the agent reported it, merged oldest first: its agent ran
    // the install hook (executing, then idle) and its workload has a status; the machine's
    // agent started.
    let deadline = Instant::now() + CONDITION_WAIT;
    let unit_log = loop {
        let log = ctl.json(&[
            "show-status-log",
            "echo/0",
            "-m",
            "logs",
            "--format",
            "json",
        ]);
        let has = |kind: &str, status: &str| {
            log.as_array()
                .into_iter()
                .flatten()
                .any(|e| e["type"] == kind && (status.is_empty() || e["status"] == status))
        };
        if has("juju-unit", "executing") && has("juju-unit", "idle") && has("workload", "") {
            break log;
        }
        if Instant::now() >= deadline {
            bail!("echo/0's status log is incomplete after {CONDITION_WAIT:?}: {log}");
        }
        std::thread::sleep(POLL);
    };
    let times: Vec<&str> = unit_log
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["time"].as_str())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not oldest first: {times:?}"
    );
    let table = ctl.ok(&["show-status-log", "echo/0", "-m", "logs", "-n", "2"]);
    assert_eq!(
        table.lines().count(),
        3,
        "a header and the last 2 entries:\n{table}"
    );
    assert!(table.starts_with("Time"), "{table}");
    let machine_log = ctl.json(&["show-status-log", "0", "-m", "logs", "--format", "json"]);
    assert!(
        machine_log
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "juju-machine" && e["status"] == "started"),
        "{machine_log}"
    );
    ctl.error(
        &["show-status-log", "echo/7", "-m", "logs"],
        "ERROR echo/7 not found",
    );
    // SIGKILL and reap it.
    drop(agent);
    ctl.ok(&["destroy-model", "logs", "-y", "--force"]);
    ctl.ok_both(&["switch", "demo"]);
    Ok(())
}

/// A user with read access reads the model and is refused every write.
fn read_only_user(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let work = &f.work;
    let charm = |name: &str| f.charm(name);
    info!("--- a read-only user");
    let added = ctl.ok(&["add-user", "bob"]);
    let token = added
        .lines()
        .find_map(|l| l.strip_prefix("Its token is shown only this once: "))
        .context("add-user prints the token")?
        .to_string();
    snapshot("add_user", &added, &[]);
    ctl.ok(&["grant", "bob", "read", "demo"]);
    let bob_data = work.path().join("bob");
    copy_store(&ctl.data, &bob_data)?;
    let bob = Ctl::new(&ctl.bin, &bob_data);
    bob.error_containing(
        &[
            "login",
            "-c",
            "alpha",
            "--user",
            "bob",
            "--token",
            "not-a-token",
        ],
        &[],
    );
    let mut bob_env = bob.clone();
    bob_env.env.push(("CTL_TOKEN".into(), token.clone()));
    assert_eq!(
        bob_env.ok(&["login", "-c", "alpha", "--user", "bob"]),
        "Logged in to controller \"alpha\" as \"bob\".\n"
    );
    let before = ctl.state("demo");
    assert_eq!(
        bob.state("alpha:admin/demo"),
        before,
        "bob reads what admin reads"
    );
    let refused = "ERROR permission denied on controller \"alpha\": user \"bob\" has read access to model \"demo\"";
    bob.error(
        &["add-machine", "-m", "admin/demo"],
        &format!("{refused} and may not add machines (write access needed)"),
    );
    bob.error(
        &["config", "-m", "admin/demo", "counter", "interval=9"],
        &format!("{refused} and may not change application config (write access needed)"),
    );
    bob.error_containing(
        &["deploy", "-m", "admin/demo", &charm("db"), "db2", "-n", "0"],
        &["permission denied", "\"bob\"", "may not deploy"],
    );
    bob.error_containing(
        &["remove-unit", "-m", "admin/demo", "counter/0"],
        &["permission denied", "\"bob\"", "write access needed"],
    );
    bob.error_containing(
        &["grant", "bob", "write", "admin/demo"],
        &["permission denied", "\"bob\"", "admin access needed"],
    );
    bob.error_containing(
        &["destroy-model", "admin/demo", "-y", "--force"],
        &["permission denied", "\"bob\""],
    );
    assert_eq!(
        bob.ok(&["config", "-m", "admin/demo", "counter", "interval"]),
        "2\n"
    );
    assert_eq!(
        ctl.state("demo"),
        before,
        "bob's refused writes changed nothing"
    );
    Ok(())
}

/// The same model state on every node before and after the leader is SIGKILLed.
async fn leader_killed(f: &mut Fixture) -> Result<()> {
    let ctl = &f.ctl;
    let work = &f.work;
    let cluster = &mut f.cluster;
    info!("--- kill the leader: the same state on every node");
    let before = ctl.state("demo");
    // The model as shown, but for its load (rates move, and reading counts as a read).
    let shown_model = |model: &str| {
        let mut shown = ctl.json(&["show-model", model, "--format", "json"]);
        if let Some(item) = shown["demo"].as_object_mut() {
            item.remove("load");
        }
        shown
    };
    let show_before = shown_model("demo");
    let mut per_node = BTreeMap::new();
    for id in cluster.node_ids() {
        let name = format!("alpha-n{id}");
        let file = work.path().join(format!("{name}.json"));
        single_node_registration(cluster, id, &file)?;
        ctl.ok_both(&["register", file.to_str().context("utf-8")?, "--name", &name]);
        per_node.insert(id, format!("{name}:admin/demo"));
    }
    // Registering made the last one current.
    ctl.ok_both(&["switch", "alpha:demo"]);
    for (id, model) in &per_node {
        assert_eq!(ctl.state(model), before, "node {id} before the kill");
    }
    let old_leader = cluster.wait_for_leader(CONDITION_WAIT).await?;
    cluster.kill(old_leader)?;
    let new_leader = cluster
        .wait_for_leader_other_than(Some(old_leader), CONDITION_WAIT)
        .await?;
    info!(old_leader, new_leader, "leader replaced");
    assert_eq!(
        ctl.state("alpha:demo"),
        before,
        "through the failover client"
    );
    let shown = ctl.json(&["show-controller", "--format", "json"]);
    assert_eq!(
        shown["alpha"]["leader"], new_leader,
        "show-controller names the new leader"
    );
    assert_eq!(shown_model("alpha:demo"), show_before);
    for (id, model) in &per_node {
        if *id != old_leader {
            assert_eq!(ctl.state(model), before, "node {id} after the kill");
        }
    }
    cluster.start_node(old_leader)?;
    let restarted = wait_for_status(ctl, &per_node[&old_leader])?;
    assert_eq!(
        restarted, before,
        "the restarted old leader (node {old_leader})"
    );
    // Writes still work after the failover.
    ctl.ok(&["config", "counter", "interval=3"]);
    assert_eq!(ctl.ok(&["config", "counter", "interval"]), "3\n");
    Ok(())
}

/// `remove-machine --force` and `destroy-model`.
fn destroy(f: &Fixture) -> Result<()> {
    let ctl = &f.ctl;
    info!("--- remove-machine --force, destroy-model");
    ctl.error(
        &["destroy-model", "demo"],
        "ERROR destroying model \"alpha:admin/demo\" needs confirmation: pass -y (--no-prompt) when stdin is not a terminal",
    );
    ctl.error(
        &["destroy-model", "demo", "-y"],
        "ERROR model \"demo\" still has 2 machine(s) (0, 1); remove them first or destroy with --force",
    );
    ctl.ok(&["remove-machine", "1", "--force"]);
    let status = ctl.json(&["status", "--format", "json"]);
    assert!(status["machines"].get("1").is_none());
    assert!(status["applications"]["counter"]["units"]
        .get("counter/1")
        .is_none());
    assert!(status["applications"]["db"]["units"].get("db/0").is_none());
    assert_eq!(status["applications"]["counter"]["scale"], 1);
    ctl.error(
        &["destroy-model", "demo", "-y"],
        "ERROR model \"demo\" still has 1 machine(s) (0); remove them first or destroy with --force",
    );
    assert_eq!(ctl.ok(&["destroy-model", "demo", "-y", "--force"]), "");
    ctl.error(
        &["show-model", "demo"],
        "ERROR model \"admin/demo\" not found",
    );
    let models = ctl.json(&["models", "--format", "json"]);
    let names: Vec<&str> = models["models"]
        .as_array()
        .context("models")?
        .iter()
        .filter_map(|m| m["short-name"].as_str())
        .collect();
    assert_eq!(names, ["controller", "other"], "demo and logs are gone");
    // Destroying the current model leaves its controller selected, without a model.
    assert_eq!(models["current-model"], Value::Null);
    assert_eq!(ctl.ok(&["switch"]), "alpha\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_models_on_a_real_controller() -> Result<()> {
    init_tracing();
    let cluster = LocalCluster::start(ClusterOptions::new("alpha", 3)).await?;
    let work = tempfile::tempdir()?;
    let charms = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/charms")
        .canonicalize()?;
    let registration = cluster.root().join("registration.yaml");
    let mut f = Fixture {
        ctl: Ctl::new(&cluster.bins().ctl, &work.path().join("admin")),
        registration: registration.to_str().context("utf-8 path")?.to_string(),
        cluster,
        work,
        charms,
    };
    register(&f)?;
    controller_views(&f)?;
    let demo_uuid = models(&f)?;
    switch(&f)?;
    add_machines(&f, &demo_uuid)?;
    applications(&f)?;
    status_formats(&f)?;
    usage_errors(&f)?;
    refused_writes(&f)?;
    ambiguous_relation(&f)?;
    remove_empty_machine(&f)?;
    debug_log(&f)?;
    read_only_user(&f)?;
    leader_killed(&mut f).await?;
    destroy(&f)
}
