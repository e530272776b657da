//! `ctl`: parses the command line, runs the command and prints its output, or one `ERROR <message>`
//! line on stderr with exit status 1 (usage errors: clap's message, exit status 2). An error that
//! lists details (failed prechecks) adds one `  - <detail>` line for each.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use starling_cli::{Cli, DetailedError, UsageError};

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "ERROR {}", one_line(message));
    ExitCode::from(1)
}

/// `ERROR <message>` and one `  - <detail>` line per detail, each kept to one line.
fn fail_with_details(error: &DetailedError) -> ExitCode {
    let mut text = format!("ERROR {}\n", one_line(&error.message));
    for detail in &error.details {
        text.push_str(&format!("  - {}\n", one_line(detail)));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
    ExitCode::from(1)
}

fn main() -> ExitCode {
    // A bug must still end in one ERROR line, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(
            std::io::stderr(),
            "ERROR internal error: {}",
            one_line(&info.to_string())
        );
    }));
    let cli = Cli::parse();
    let output_file = cli.output.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(starling_cli::run(cli))
    }));
    let output = match result {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            if let Some(usage) = e.downcast_ref::<UsageError>() {
                Cli::command()
                    .error(clap::error::ErrorKind::ValueValidation, &usage.0)
                    .exit();
            }
            if let Some(detailed) = e.downcast_ref::<DetailedError>() {
                return fail_with_details(detailed);
            }
            return fail(&format!("{e:#}"));
        }
        Err(_) => return ExitCode::from(1),
    };
    if !output.stderr.is_empty() {
        let _ = std::io::stderr().write_all(output.stderr.as_bytes());
    }
    match output_file {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, output.stdout.as_bytes()) {
                return fail(&format!("cannot write {}: {e}", path.display()));
            }
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`ctl ... | head`) is not an error worth reporting.
            if let Err(e) = stdout
                .write_all(output.stdout.as_bytes())
                .and_then(|()| stdout.flush())
            {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return fail(&format!("cannot write output: {e}"));
                }
            }
        }
    }
    ExitCode::SUCCESS
}
