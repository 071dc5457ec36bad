//! `rampart detect ...`: the failure-detection simulator.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use rampart_detect_sim::{run as simulate, Kind, Partition, Report, SimConfig};

#[derive(Debug, Subcommand)]
pub enum DetectCommand {
    /// Runs failure detectors side by side on a simulated network and reports detection time, false
    /// positives and bandwidth.
    ///
    /// Deterministic: the same flags and --seed give the same figures. Every --crash-every-s, --crash members
    /// are killed and come back --restart-after-s later; every --pause-every-s one member is frozen for
    /// --pause-ms. Detection time is measured until *every* live member has declared the crashed one dead.
    Simulate(SimulateArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    Rampart,
    Foca,
    Naive,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Cluster size (2 to 1000).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Datagram loss probability (0 to 0.5).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Base one-way latency in microseconds.
    #[arg(long, default_value_t = 200)]
    latency_us: u64,
    /// Extra one-way delay, uniform from 0 to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Length of the periodic freezes, in milliseconds (0 for none).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Seconds between periodic freezes.
    #[arg(long, default_value_t = 10)]
    pause_every_s: u64,
    /// Members crashed at once per crash cycle (0 for none).
    #[arg(long, default_value_t = 1)]
    crash: usize,
    /// Seconds between crash cycles.
    #[arg(long, default_value_t = 30)]
    crash_every_s: u64,
    /// Seconds until a crashed member restarts.
    #[arg(long, default_value_t = 15)]
    restart_after_s: u64,
    /// Freeze one member once for this many milliseconds (reported separately).
    #[arg(long)]
    long_pause_ms: Option<u64>,
    /// When the long freeze starts, seconds after the warm-up.
    #[arg(long, default_value_t = 20)]
    long_pause_at_s: u64,
    /// Cut the cluster in two halves at this second (after the warm-up).
    #[arg(long)]
    partition_at_s: Option<u64>,
    /// How long the partition lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    partition_for_s: u64,
    /// Make the partition one-way (first half cannot reach the second).
    #[arg(long)]
    one_way: bool,
    /// Simulated seconds measured (after a 10 s warm-up).
    #[arg(long, default_value_t = 300)]
    duration_s: u64,
    /// Seed of every random choice: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which detectors to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    detector: Which,
    /// One JSON object per detector, one per line.
    #[arg(long)]
    json: bool,
}

pub fn run(command: DetectCommand) -> anyhow::Result<ExitCode> {
    match command {
        DetectCommand::Simulate(args) => run_simulation(args),
    }
}

fn run_simulation(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if args.loss.is_nan() {
        bail!("--loss must be a number from 0 to 0.5");
    }
    let cfg = SimConfig {
        nodes: args.nodes,
        loss: args.loss,
        latency: Duration::from_micros(args.latency_us),
        jitter: Duration::from_millis(args.jitter_ms),
        pause: Duration::from_millis(args.pause_ms),
        pause_every: Duration::from_secs(args.pause_every_s),
        long_pause: args.long_pause_ms.map(|ms| (Duration::from_secs(args.long_pause_at_s), Duration::from_millis(ms))),
        crash: args.crash,
        crash_every: Duration::from_secs(args.crash_every_s),
        restart_after: Duration::from_secs(args.restart_after_s),
        partition: args.partition_at_s.map(|at| Partition {
            at: Duration::from_secs(at),
            duration: Duration::from_secs(args.partition_for_s),
            one_way: args.one_way,
        }),
        warmup: Duration::from_secs(10),
        duration: Duration::from_secs(args.duration_s),
        seed: args.seed,
    };
    if let Err(e) = cfg.validate() {
        bail!("{e}");
    }
    let kinds: Vec<Kind> = match args.detector {
        Which::All => Kind::ALL.to_vec(),
        Which::Rampart => vec![Kind::Rampart],
        Which::Foca => vec![Kind::Foca],
        Which::Naive => vec![Kind::Naive],
    };
    // The detectors are independent: run them on separate threads.
    let reports: Vec<Report> = std::thread::scope(|s| {
        let cfg = &cfg;
        let handles: Vec<_> = kinds.iter().map(|&k| s.spawn(move || simulate(k, cfg))).collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    if reports.len() != kinds.len() {
        bail!("a simulation thread failed");
    }
    let mut out = String::new();
    if args.json {
        for r in &reports {
            writeln!(out, "{}", json(r, &args))?;
        }
    } else {
        table(&mut out, &reports, &args)?;
    }
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 100_000.0).round() / 100.0)
}

fn json(r: &Report, args: &SimulateArgs) -> serde_json::Value {
    serde_json::json!({
        "detector": r.detector,
        "nodes": args.nodes,
        "loss": args.loss,
        "jitter_ms": args.jitter_ms,
        "pause_ms": args.pause_ms,
        "duration_s": args.duration_s,
        "seed": args.seed,
        "crashes_detected": r.detections.len(),
        "detect_median_ms": ms(r.median()),
        "detect_max_ms": ms(r.max()),
        "undetected": r.undetected,
        "false_positives": r.false_positives,
        "packets_per_member_per_s": (r.packets_per_member_per_s * 10.0).round() / 10.0,
        "bytes_per_member_per_s": r.bytes_per_member_per_s.round(),
        "partition_healed_after_ms": ms(r.partition_healed_after),
        "long_pause": r.long_pause.as_ref().map(|l| serde_json::json!({
            "declared_dead_by": l.declared_dead_by,
            "back_alive_after_ms": ms(l.back_alive_after),
            "accusations_after_wake": l.accusations_after_wake,
        })),
    })
}

fn table(out: &mut String, reports: &[Report], args: &SimulateArgs) -> std::fmt::Result {
    writeln!(
        out,
        "{} members, loss {}, jitter {} ms, pauses {} ms every {} s, {} crash(es) every {} s, {} s simulated, seed {}",
        args.nodes,
        args.loss,
        args.jitter_ms,
        args.pause_ms,
        args.pause_every_s,
        args.crash,
        args.crash_every_s,
        args.duration_s,
        args.seed
    )?;
    writeln!(
        out,
        "{:<9} {:>8} {:>11} {:>9} {:>11} {:>9} {:>12} {:>13}",
        "detector", "crashes", "median ms", "max ms", "undetected", "false+", "pkts/memb/s", "bytes/memb/s"
    )?;
    let fmt = |d: Option<f64>| d.map_or("-".to_owned(), |v| format!("{v:.0}"));
    for r in reports {
        writeln!(
            out,
            "{:<9} {:>8} {:>11} {:>9} {:>11} {:>9} {:>12.1} {:>13.0}",
            r.detector,
            r.detections.len(),
            fmt(ms(r.median())),
            fmt(ms(r.max())),
            r.undetected,
            r.false_positives,
            r.packets_per_member_per_s,
            r.bytes_per_member_per_s
        )?;
    }
    for r in reports.iter().filter(|_| args.partition_at_s.is_some()) {
        let healed =
            r.partition_healed_after.map_or("never".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
        writeln!(out, "partition ({}): every member saw every other alive again {healed} after it ended", r.detector)?;
    }
    for r in reports {
        if let Some(l) = &r.long_pause {
            writeln!(
                out,
                "long pause ({}): declared dead by {} member(s); all saw it alive again {} after it woke; it accused {} member(s) after waking",
                r.detector,
                l.declared_dead_by,
                l.back_alive_after.map_or("never".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)),
                l.accusations_after_wake
            )?;
        }
    }
    Ok(())
}
