//! Measures this disk's single-writer fdatasync rate: appends a small record to a file in `--dir`
//! and fdatasyncs it, one after the other, for `--seconds`. The benchmark divides Starling's
//! 1-writer commit rate by this figure. Prints one JSON line.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

/// Single-writer fdatasync rate of a directory's file system.
#[derive(Parser, Debug)]
struct Args {
    /// Directory to write the probe file in (removed afterwards).
    #[arg(long)]
    dir: PathBuf,
    /// How long to measure.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes appended before each fdatasync.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let file = tempfile::Builder::new()
        .prefix("fsync-probe-")
        .tempfile_in(&args.dir)
        .with_context(|| format!("creating a file in {}", args.dir.display()))?;
    let mut handle = OpenOptions::new().append(true).open(file.path())?;
    let record = vec![b'x'; args.record_bytes];
    let duration = Duration::from_secs_f64(args.seconds);
    let mut latencies_us = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        handle.write_all(&record)?;
        handle.sync_data()?;
        latencies_us.push(t.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies_us.is_empty() {
            return 0;
        }
        let idx = ((latencies_us.len() as f64 * p).ceil() as usize).clamp(1, latencies_us.len());
        latencies_us[idx - 1]
    };
    println!(
        "{}",
        serde_json::json!({
            "fsyncs": latencies_us.len(),
            "seconds": elapsed,
            "fsyncs_per_s": latencies_us.len() as f64 / elapsed,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "record_bytes": args.record_bytes,
            "dir": args.dir,
        })
    );
    Ok(())
}
