//! The status page of a real `ctld` in a real browser: Debian's headless chromium driven
//! through chromedriver (WebDriver). Two single-node controllers; the page of the source signs
//! in with the admin's token, shows its models, and follows a migration started with `ctl
//! migrate` until it reads DONE; a user with read access to one model sees that model only; a
//! bad token is refused. Then, with 1,000 models on the controller, it prints the page's first
//! paint and first full render (Performance API) and the node's CPU time with the page polling
//! once a second against without it. Figures are printed, not asserted.
//!
//! Needs `chromium` and `chromedriver` on the PATH (CI installs them); locally,
//! `STARLING_SKIP_BROWSER=1` skips it when they are missing. `STARLING_STATUS_SCREENSHOT=PATH`
//! saves the screenshot of the page during the migration there (how `docs/status-page.png` is
//! made).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::Value;
use starling_cluster_tests::fleet::Ctl;
use starling_cluster_tests::webdriver::{browser_tools, Browser};
use starling_cluster_tests::{init_tracing, ClusterOptions, LocalCluster};
use starling_proto::controller::{
    AddModelRequest, AddUserRequest, ModelRef, SetModelAccessRequest, SetModelConfigRequest,
};
use starling_proto::model::Access;
use tracing::info;

const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the page may take to show what the test waits for (a migration included).
const PAGE_WAIT: Duration = Duration::from_secs(300);
/// Models on the controller for the first-paint figure.
const MANY_MODELS: usize = 1000;
/// How long each CPU measurement lasts.
const CPU_WINDOW: Duration = Duration::from_secs(20);

/// The rows of table `id` on the page: each row's `data-model` (or `data-node`) and cell texts.
fn rows(browser: &Browser, id: &str) -> Result<Vec<(String, Vec<String>)>> {
    let value = browser.execute(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')].map(r => \
         [r.dataset.model || r.dataset.node || '', [...r.cells].map(c => c.textContent)]);",
        &[Value::from(id)],
    )?;
    Ok(serde_json::from_value(value)?)
}

fn text_of(browser: &Browser, id: &str) -> Result<String> {
    let value = browser.execute(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        &[Value::from(id)],
    )?;
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no element #{id}"))
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `PAGE_WAIT`.
fn until<T>(what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        if let Some(found) = probe()? {
            return Ok(found);
        }
        ensure!(
            Instant::now() < deadline,
            "the page did not show {what} within {PAGE_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sign_in(browser: &Browser, token: &str) -> Result<()> {
    until("the sign-in form", || {
        Ok((text_of(browser, "login-error").is_ok()
            && browser
                .execute("return !document.getElementById('login').hidden;", &[])?
                .as_bool()
                == Some(true))
        .then_some(()))
    })?;
    browser.type_into("#token", token)?;
    browser.click("#signin")
}

fn sign_out(browser: &Browser) -> Result<()> {
    browser.click("#signout")
}

/// The model names the page lists once it shows at least `at_least` of them.
fn listed_models(browser: &Browser, at_least: usize) -> Result<BTreeSet<String>> {
    until(&format!("{at_least} models"), || {
        let names: BTreeSet<String> = rows(browser, "models")?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        Ok((names.len() >= at_least).then_some(names))
    })
}

/// Whether the activity text shown with `phase` belongs to that phase: the master's words name
/// the phase they were said in (PRECOPY, CATCHUP; FENCE while it locks in CATCHUP and once
/// QUIESCE holds); the generic texts fit any phase.
fn activity_fits(phase: &str, activity: &str) -> bool {
    if activity.starts_with("PRECOPY") {
        phase == "PRECOPY"
    } else if activity.starts_with("CATCHUP") {
        phase == "CATCHUP"
    } else if activity.starts_with("FENCE") {
        phase == "CATCHUP" || phase == "QUIESCE"
    } else {
        true
    }
}

/// utime + stime of process `pid` in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// The node's CPU milliseconds per second over `CPU_WINDOW`.
fn cpu_ms_per_second(pid: u32) -> Result<f64> {
    let (start, ticks) = (Instant::now(), cpu_ticks(pid)?);
    std::thread::sleep(CPU_WINDOW);
    let used = cpu_ticks(pid)? - ticks;
    Ok(used as f64 * 10.0 / start.elapsed().as_secs_f64())
}

#[test]
fn the_status_page_follows_a_migration_and_shows_only_readable_models() -> Result<()> {
    init_tracing();
    let Some(tools) = browser_tools()? else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Every step of the source's migration master waits 2 s (a failpoint of the daemons the
    // tests build), so the page has each phase on show for a few refreshes.
    let mut options = ClusterOptions::new("source", 1);
    options.env = vec![(
        "FAILPOINTS".into(),
        "migration.source.step=return(2000)".into(),
    )];
    let mut source = rt.block_on(LocalCluster::start(options))?;
    let target = rt.block_on(LocalCluster::start(ClusterOptions::new("target", 1)))?;
    let result = (|| -> Result<()> {
        let work = tempfile::tempdir()?;
        let ctl = Ctl::new(source.bins(), work.path());
        for cluster in [&source, &target] {
            let registration = cluster.root().join("registration.yaml");
            ctl.ok(&["register", registration.to_str().context("path")?])?;
        }
        for model in ["moving", "secret", "shared"] {
            ctl.ok(&["add-model", model, "-c", "source"])?;
        }
        let admin_token = source.registration().token.clone();
        let admin_user = source.registration().user.clone();
        let mut admin = {
            let _guard = rt.enter();
            source.client_with(1, Some(&admin_token), RPC_TIMEOUT)?
        };
        let reader_token = rt
            .block_on(admin.add_user(AddUserRequest {
                name: "reader".into(),
                controller_access: "login".into(),
                request_id: String::new(),
            }))?
            .into_inner()
            .token;
        rt.block_on(admin.set_model_access(SetModelAccessRequest {
            model: Some(ModelRef {
                name: "shared".into(),
                uuid: String::new(),
            }),
            user: "reader".into(),
            access: Access::Read as i32,
            request_id: String::new(),
            revoke: false,
        }))?;
        // Some writes, so the page has a load to show.
        for n in 0..30 {
            rt.block_on(admin.set_model_config(SetModelConfigRequest {
                model: Some(ModelRef {
                    name: "shared".into(),
                    uuid: String::new(),
                }),
                values: [(format!("k{}", n % 4), n.to_string())].into(),
                request_id: String::new(),
            }))?;
        }

        let browser = Browser::launch(&tools, work.path())?;
        let url = format!("https://{}/", source.http_addr(1));
        browser.goto(&url)?;

        info!("--- a bad token is refused, the admin's is accepted");
        sign_in(&browser, "not-a-token")?;
        let refusal = until("the refusal of a bad token", || {
            let text = text_of(&browser, "login-error")?;
            Ok(text.contains("refused").then_some(text))
        })?;
        info!(%refusal, "refused");
        sign_in(&browser, &admin_token)?;
        let names = listed_models(&browser, 3)?;
        for model in ["moving", "secret", "shared"] {
            let name = format!("{admin_user}/{model}");
            ensure!(
                names.contains(&name),
                "the admin's page lacks {name}: {names:?}"
            );
        }
        let summary = text_of(&browser, "summary")?;
        ensure!(
            summary.contains("leader 1") && summary.contains(&format!("signed in as {admin_user}")),
            "summary: {summary}"
        );
        let members = rows(&browser, "members")?;
        // Node, address, role, leader, reachable, then the member's own state, term, applied.
        ensure!(
            members.len() == 1
                && members[0].1.get(3).map(String::as_str) == Some("leader")
                && members[0].1.get(5).map(String::as_str) == Some("leader"),
            "members: {members:?}"
        );

        info!("--- a migration, followed on the page until DONE");
        let moving = format!("{admin_user}/moving");
        ctl.ok(&["migrate", "source:moving", "target"])?;
        let mut phases: Vec<String> = Vec::new();
        let mut shot = None;
        let mut lag_seen = false;
        until("the migration DONE", || {
            let row = rows(&browser, "migrations")?
                .into_iter()
                .find(|(model, _)| *model == moving);
            let Some((_, cells)) = row else {
                return Ok(None);
            };
            let phase = cells.get(2).cloned().unwrap_or_default();
            if phases.last() != Some(&phase) {
                info!(%phase, activity = cells.get(3).map(String::as_str).unwrap_or(""), "page shows");
                phases.push(phase.clone());
            }
            ensure!(
                !phase.starts_with("ABORT"),
                "the migration aborted: {cells:?}"
            );
            // Model, target, phase, activity, bytes, lag, ...: the activity is the current
            // phase's, never the words of a phase the record has left.
            let activity = cells.get(3).cloned().unwrap_or_default();
            ensure!(
                activity_fits(&phase, &activity),
                "the page shows activity {activity:?} in phase {phase}: {cells:?}"
            );
            let lag = cells.get(5).cloned().unwrap_or_default();
            if phase == "CATCHUP" || phase == "QUIESCE" {
                if let Some(count) = lag.split(' ').next().filter(|c| !c.is_empty()) {
                    count
                        .parse::<u64>()
                        .with_context(|| format!("lag cell {lag:?}"))?;
                    lag_seen = true;
                }
            } else {
                ensure!(lag.is_empty(), "a lag in phase {phase}: {cells:?}");
            }
            if shot.is_none() && phase == "CATCHUP" {
                shot = Some(browser.screenshot()?);
            }
            Ok((phase == "DONE").then_some(()))
        })?;
        println!(
            "STATUS_PAGE migration phases seen on the page: {}",
            phases.join(" -> ")
        );
        ensure!(
            phases.len() >= 2,
            "the page never showed the migration in flight: {phases:?}"
        );
        // Each step of the master waits 2 s, so CATCHUP is on show for several refreshes.
        ensure!(
            lag_seen,
            "the page never showed the catch-up lag: {phases:?}"
        );
        until("the migrated model leave the model list", || {
            let names: BTreeSet<String> = rows(&browser, "models")?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            Ok((!names.contains(&moving) && names.len() >= 2).then_some(()))
        })?;
        // The page mid-migration (or now, if CATCHUP went by between two refreshes).
        let screenshot = match shot {
            Some(png) => png,
            None => browser.screenshot()?,
        };
        ensure!(
            screenshot.starts_with(b"\x89PNG"),
            "the screenshot is not a PNG"
        );
        let shot = std::env::var_os("STARLING_STATUS_SCREENSHOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| work.path().join("status-page.png"));
        std::fs::write(&shot, &screenshot)?;
        println!(
            "STATUS_PAGE screenshot: {} ({} bytes)",
            shot.display(),
            screenshot.len()
        );

        info!("--- a user with read access to one model sees that model only");
        sign_out(&browser)?;
        sign_in(&browser, &reader_token)?;
        until("the reader's view", || {
            Ok(text_of(&browser, "summary")?
                .contains("signed in as reader")
                .then_some(()))
        })?;
        let names = listed_models(&browser, 1)?;
        let expected: BTreeSet<String> = [format!("{admin_user}/shared")].into();
        ensure!(names == expected, "the reader sees {names:?}");
        let migrations = rows(&browser, "migrations")?;
        ensure!(
            migrations.is_empty(),
            "the reader sees migrations of models it cannot read: {migrations:?}"
        );

        info!("--- {MANY_MODELS} models: first paint and CPU at one refresh per second");
        rt.block_on(async {
            let adds = futures::stream::iter(0..MANY_MODELS)
                .map(|n| {
                    let mut client = admin.clone();
                    async move {
                        client
                            .add_model(AddModelRequest {
                                name: format!("bulk-{n:04}"),
                                ..Default::default()
                            })
                            .await
                    }
                })
                .buffer_unordered(16);
            futures::pin_mut!(adds);
            while let Some(added) = adds.next().await {
                added?;
            }
            Ok::<_, tonic::Status>(())
        })?;
        sign_out(&browser)?;
        sign_in(&browser, &admin_token)?;
        listed_models(&browser, MANY_MODELS + 2)?;
        // A fresh load of the page with the token already in the tab's session storage.
        browser.goto(&url)?;
        let total = listed_models(&browser, MANY_MODELS + 2)?.len();
        let timing = browser.execute(
            "const paint = Object.fromEntries(performance.getEntriesByType('paint')\
               .map(e => [e.name, e.startTime]));\
             const render = performance.getEntriesByName('starling-first-render')[0];\
             const json = performance.getEntriesByType('resource')\
               .filter(e => e.name.endsWith('/status.json'));\
             return { paint, render: render ? render.startTime : null,\
               json_bytes: json.length ? json[0].encodedBodySize : null,\
               json_ms: json.length ? json[0].duration : null };",
            &[],
        )?;
        println!(
            "STATUS_PAGE models={total} first_paint_ms={} first_contentful_paint_ms={} \
             first_full_render_ms={} status_json_bytes={} status_json_fetch_ms={}",
            timing["paint"]["first-paint"],
            timing["paint"]["first-contentful-paint"],
            timing["render"],
            timing["json_bytes"],
            timing["json_ms"],
        );
        ensure!(
            timing["render"].is_number(),
            "the page never marked its first render: {timing}"
        );
        let pid = source.pid(1).context("the source node's pid")?;
        let polling = cpu_ms_per_second(pid)?;
        browser.goto("about:blank")?;
        let idle = cpu_ms_per_second(pid)?;
        println!(
            "STATUS_PAGE ctld_cpu_ms_per_s polling={polling:.1} idle={idle:.1} \
             page_cost={:.1} (models={total}, one refresh per second, {CPU_WINDOW:?} each)",
            polling - idle
        );
        Ok(())
    })();
    if result.is_err() {
        source.dump_log_tails(40);
        target.dump_log_tails(40);
    }
    result
}
