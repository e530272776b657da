//! `ctl balance` between real controllers: three single-node controllers, six models written to
//! at uneven rates by clients that follow each model wherever it goes (as the load generator
//! and agents do). `--dry-run` changes nothing; `--wait` runs the plan through real migrations;
//! afterwards the controllers report write loads within the tolerance, with as few moves as the
//! optimum for the loads they measured, and no write was refused (a write held by a move's
//! fence is retried on the target under the same request id).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use starling_cli::balance::{controller_loads, optimal_moves, spread, PlanModel};
use starling_cluster_tests::chaos::redirect_target;
use starling_cluster_tests::fleet::{wait_for, Ctl};
use starling_cluster_tests::{init_tracing, ClusterOptions, LocalCluster};
use starling_proto::controller::{ModelRef, SetModelConfigRequest};
use tokio::runtime::Runtime;
use tracing::info;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `ctl balance --wait` may take (two migrations on a loaded 2-core machine).
const BALANCE_WAIT: Duration = Duration::from_secs(300);
/// Long enough for the decayed rates to reflect the writers (they are bias-corrected for a
/// short watch, but at least 5 s of it).
const MEASURE_AFTER: Duration = Duration::from_secs(12);
const CONTROLLERS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The models, where they start, and their writes per second: alpha 50, beta 10, gamma 0; the
/// fewest moves within 25% are two (a 20 to gamma, a 10 to beta: 20/20/20).
const MODELS: [(&str, &str, u32); 6] = [
    ("hot", "alpha", 20),
    ("warm1", "alpha", 10),
    ("warm2", "alpha", 10),
    ("warm3", "alpha", 10),
    ("cool", "beta", 10),
    ("idle", "gamma", 0),
];

/// A client writing to one model at a fixed rate on whichever controller holds it, following
/// its redirect; it keeps the refusals that were not redirects.
struct Writer {
    stop: Arc<AtomicBool>,
    refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_writer(
    rt: &Runtime,
    clusters: &BTreeMap<String, LocalCluster>,
    model: &str,
    first: &str,
    per_second: u32,
) -> Result<Writer> {
    let mut clients = BTreeMap::new();
    for (name, cluster) in clusters {
        let _guard = rt.enter();
        let token = cluster.registration().token.clone();
        clients.insert(
            name.clone(),
            cluster.client_with(1, Some(&token), RPC_TIMEOUT)?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let task = rt.spawn({
        let (stop, refused) = (stop.clone(), refused.clone());
        let (model, mut current) = (model.to_owned(), first.to_owned());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let request = SetModelConfigRequest {
                    model: Some(ModelRef {
                        name: model.clone(),
                        uuid: String::new(),
                    }),
                    // A bounded set of keys: the model's size stays the same.
                    values: [(format!("k{}", n % 16), n.to_string())].into(),
                    request_id: format!("{model}-{n}"),
                };
                // A write held by a move's fence is answered with the redirect once the move
                // succeeded: sent again to the target under the same request id, as `ctl` does.
                for attempt in 0..2 {
                    let client = clients.get_mut(&current).expect("known controller");
                    let Err(status) = client.set_model_config(request.clone()).await else {
                        break;
                    };
                    match redirect_target(&status) {
                        Some(target) if attempt == 0 => current = target,
                        _ => {
                            refused
                                .lock()
                                .expect("lock")
                                .push(status.message().to_owned());
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(Writer {
        stop,
        refused,
        task,
    })
}

/// Each model's controller and write load, as `ctl models` reports them.
fn measured(ctl: &Ctl) -> Result<Vec<PlanModel>> {
    let mut models = Vec::new();
    for controller in CONTROLLERS {
        let listed: Value =
            serde_json::from_str(&ctl.ok(&["models", "-c", controller, "--format", "json"])?)?;
        for model in listed["models"].as_array().context("models")? {
            let uuid = model["model-uuid"].as_str().context("uuid")?.to_owned();
            let controller_model = model["controller-uuid"].as_str() == Some(uuid.as_str());
            models.push(PlanModel {
                pinned: controller_model.then(|| "the controller model".into()),
                name: model["name"].as_str().context("name")?.to_owned(),
                uuid,
                controller: controller.to_owned(),
                load: model["writes-per-second"].as_f64().context("writes")?,
            });
        }
    }
    Ok(models)
}

fn loads(models: &[PlanModel]) -> BTreeMap<String, f64> {
    let names: Vec<String> = CONTROLLERS.iter().map(|c| (*c).to_owned()).collect();
    controller_loads(&names, models)
}

#[test]
fn balance_evens_out_three_controllers_with_the_fewest_moves() -> Result<()> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut clusters = BTreeMap::new();
    for name in CONTROLLERS {
        clusters.insert(
            name.to_owned(),
            rt.block_on(LocalCluster::start(ClusterOptions::new(name, 1)))?,
        );
    }
    let work = tempfile::tempdir()?;
    let ctl = Ctl::new(clusters["alpha"].bins(), work.path());
    for cluster in clusters.values() {
        let registration = cluster.root().join("registration.yaml");
        ctl.ok(&["register", registration.to_str().context("path")?])?;
    }
    let mut writers = Vec::new();
    for (model, controller, rate) in MODELS {
        ctl.ok(&["add-model", model, "-c", controller])?;
        if rate > 0 {
            writers.push(start_writer(&rt, &clusters, model, controller, rate)?);
        }
    }
    let result = (|| -> Result<()> {
        std::thread::sleep(MEASURE_AFTER);
        let before = measured(&ctl)?;
        info!(loads = ?loads(&before), "before");

        let dry = ctl.ok(&["balance", "--dry-run"])?;
        info!("ctl balance --dry-run:\n{dry}");
        ensure!(dry.contains("Nothing was changed (--dry-run)."), "{dry}");
        let unchanged = measured(&ctl)?;
        for model in &before {
            let now = unchanged.iter().find(|m| m.uuid == model.uuid);
            ensure!(
                now.is_some_and(|m| m.controller == model.controller),
                "--dry-run moved {}",
                model.name
            );
        }

        let run = ctl.run_for(&["balance", "--wait", "--timeout", "4m"], BALANCE_WAIT)?;
        info!("ctl balance --wait:\n{}\n{}", run.stdout, run.stderr);
        ensure!(
            run.code == 0,
            "balance failed: {}\n{}",
            run.stdout,
            run.stderr
        );
        let moves = run
            .stdout
            .lines()
            .filter(|l| l.starts_with("Moved "))
            .count();
        // The optimum for the loads the plan saw (measured again just before it: the same
        // writers, so the same optimum as for `before`).
        let optimum = optimal_moves(
            &CONTROLLERS
                .iter()
                .map(|c| (*c).to_owned())
                .collect::<Vec<_>>(),
            &before,
            &Default::default(),
            0.25,
        )
        .context("no balanced placement exists for the measured loads")?;
        println!(
            "BALANCE moves={moves} optimum={optimum} spread_before={:.2}",
            spread(&loads(&before))
        );
        ensure!(moves == optimum, "{moves} moves, the optimum is {optimum}");

        let after = wait_for(
            "the moved models' rates measured on their new controllers",
            || {
                std::thread::sleep(MEASURE_AFTER);
                let after = measured(&ctl)?;
                let ratio = spread(&loads(&after));
                ensure!(ratio <= 1.25, "spread {ratio:.2}: {:?}", loads(&after));
                Ok(after)
            },
        )?;
        let ratio = spread(&loads(&after));
        println!(
            "BALANCE spread_after={ratio:.3} loads_after={:?}",
            loads(&after)
        );
        Ok(())
    })();
    let mut refused = Vec::new();
    for writer in writers {
        writer.stop.store(true, Ordering::Relaxed);
        let _ = rt.block_on(writer.task);
        refused.extend(writer.refused.lock().expect("lock").clone());
    }
    if result.is_err() {
        for cluster in clusters.values() {
            cluster.dump_log_tails(40);
        }
    }
    result?;
    // A move copies its model while it stays writable and holds writes only for its fence, so
    // no write is refused: held writes are answered with the redirect and applied on the target.
    println!("BALANCE refused_writes={}", refused.len());
    ensure!(
        refused.is_empty(),
        "writes refused while balancing: {refused:?}"
    );
    Ok(())
}
