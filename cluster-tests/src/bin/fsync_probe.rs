//! Measures the two physical limits of a commit on this machine: the disk's single-writer
//! fdatasync rate and latency (appends a small record to a file in `--dir` and fdatasyncs it, one
//! after the other, for `--seconds`) and the loopback TCP round trip (a 64-byte ping-pong with
//! TCP_NODELAY between two threads on 127.0.0.1, for `--rtt-seconds`). The benchmark compares a
//! single writer's commit latency with 2 fdatasyncs + 1 round trip. Prints one JSON line.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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
    /// How long to measure the loopback round trip.
    #[arg(long, default_value_t = 1.0)]
    rtt_seconds: f64,
}

/// Microseconds at percentile `p` of sorted samples.
fn pct(sorted_us: &[u64], p: f64) -> u64 {
    if sorted_us.is_empty() {
        return 0;
    }
    let idx = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[idx - 1]
}

/// Round trips of a 64-byte message over loopback TCP, for `duration`.
fn loopback_rtts_us(duration: Duration) -> Result<Vec<u64>> {
    const MESSAGE: usize = 64;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = [0u8; MESSAGE];
        // Ends when the client closes its side.
        while stream.read_exact(&mut buf).is_ok() {
            stream.write_all(&buf)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut buf = [7u8; MESSAGE];
    let mut rtts = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        rtts.push(t.elapsed().as_micros() as u64);
    }
    drop(stream);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    rtts.sort_unstable();
    Ok(rtts)
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
    let rtts = loopback_rtts_us(Duration::from_secs_f64(args.rtt_seconds))?;
    println!(
        "{}",
        serde_json::json!({
            "fsyncs": latencies_us.len(),
            "seconds": elapsed,
            "fsyncs_per_s": latencies_us.len() as f64 / elapsed,
            "p50_us": pct(&latencies_us, 0.50),
            "p99_us": pct(&latencies_us, 0.99),
            "p999_us": pct(&latencies_us, 0.999),
            "loopback_rtt_p50_us": pct(&rtts, 0.50),
            "loopback_rtt_p99_us": pct(&rtts, 0.99),
            "loopback_round_trips": rtts.len(),
            "record_bytes": args.record_bytes,
            "dir": args.dir,
        })
    );
    Ok(())
}
