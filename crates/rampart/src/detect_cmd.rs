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
    /// Measures crash detection on real sockets: N members on 127.0.0.1 (UDP and TCP), one killed without
    /// leaving, timed until every survivor has declared it dead. Repeated --trials times on fresh clusters.
    Live(LiveArgs),
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Cluster size (2 to 64).
    #[arg(long, default_value_t = 5)]
    nodes: u16,
    /// Kills to measure, each on a fresh cluster (1 to 100).
    #[arg(long, default_value_t = 3)]
    trials: u16,
    /// First port; member i of trial t uses port + t × nodes + i.
    #[arg(long, default_value_t = 37_946)]
    port: u16,
    /// One JSON object.
    #[arg(long)]
    json: bool,
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
        DetectCommand::Live(args) => run_live(args),
    }
}

fn run_live(args: LiveArgs) -> anyhow::Result<ExitCode> {
    if !(2..=64).contains(&args.nodes) || !(1..=100).contains(&args.trials) {
        bail!("--nodes: use 2 to 64; --trials: use 1 to 100");
    }
    let span = u32::from(args.nodes) * u32::from(args.trials);
    if u32::from(args.port) + span > 65_535 || args.port < 1024 {
        bail!("--port {}: the {span} ports from it must lie within 1024..65535", args.port);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut trials = Vec::new();
    for t in 0..args.trials {
        let base = args.port + t * args.nodes;
        let d = runtime.block_on(live_trial(args.nodes, base))?;
        trials.push(d.as_secs_f64() * 1000.0);
    }
    let mut sorted = trials.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    let out = if args.json {
        format!(
            "{}\n",
            serde_json::json!({"detector": "rampart", "nodes": args.nodes, "trials_ms": trials, "detect_median_ms": median, "detect_max_ms": max})
        )
    } else {
        let list: Vec<String> = trials.iter().map(|t| format!("{t:.0}")).collect();
        format!(
            "rampart  nodes={}  cluster-wide detection per kill (ms): [{}]  median {median:.0}  max {max:.0}\n",
            args.nodes,
            list.join(" ")
        )
    };
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// One cluster on 127.0.0.1, ports `base..base + n`: form, settle, kill the last member, time the verdicts.
async fn live_trial(n: u16, base: u16) -> anyhow::Result<Duration> {
    use rampart_membership::{Config, Event, Meta, Profile, State};
    use rampart_membership_net::Membership;
    use std::net::SocketAddr;
    use std::time::Instant;

    let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], base + i));
    let mut members = Vec::new();
    for i in 0..n {
        let cfg = Config { seed: u64::from(base) << 8 | u64::from(i), ..Config::profile(Profile::Lan) };
        let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
        members.push(Membership::start(cfg, format!("m{i}"), addr(i), Meta::default(), seeds).await?);
    }
    let formed = Instant::now() + Duration::from_secs(10);
    while !members
        .iter()
        .all(|m| m.members().iter().filter(|(x, _)| x.state == State::Alive).count() == usize::from(n) - 1)
    {
        if Instant::now() > formed {
            bail!("the cluster on ports {base}.. did not form in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the cluster settle, as the memberlist harness does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim_id = format!("m{}", n - 1);
    let mut subs: Vec<_> = members[..usize::from(n) - 1].iter().map(Membership::subscribe).collect();
    let victim = members.pop().ok_or_else(|| anyhow::anyhow!("no members"))?;
    let killed = Instant::now();
    victim.kill();
    let mut worst = Duration::ZERO;
    for sub in &mut subs {
        let wait = async {
            loop {
                match sub.recv().await {
                    Ok(Event::Dead(m)) if m.id == victim_id => return Ok(Instant::now()),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => return Err(anyhow::anyhow!("event stream closed: {e}")),
                }
            }
        };
        let at = tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .map_err(|_| anyhow::anyhow!("not detected in 60 s"))??;
        worst = worst.max(at - killed);
    }
    for m in members {
        m.leave().await;
    }
    Ok(worst)
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
