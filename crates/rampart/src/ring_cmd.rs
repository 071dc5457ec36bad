//! `rampart ring ...`: the placement report.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rampart_ring::{compare, PlacementConfig, Scenario, ScenarioChange, Stats};

#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// Balance and movement of every placement algorithm for a synthetic node set.
    ///
    /// Nodes are named n001, n002, ... and spread round-robin over zones z0, z1, ... For every algorithm it
    /// prints the busiest node's load over its fair share (max/mean, 1.00 is perfect) and the coefficient of
    /// variation; with --add or --remove, also the share of partition replicas that moved against the optimum
    /// (the joiners' or leavers' share) and whether only necessary replicas moved.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Number of nodes (1 to 10000).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Virtual nodes per ordinary node (1 to 10000).
    #[arg(long, default_value_t = 160)]
    vnodes: u32,
    /// Partitions (1 to 65536).
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Replicas per partition (1 to 7).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Zones the nodes are spread over, round-robin (1 to the number of nodes).
    #[arg(long, default_value_t = 1)]
    zones: usize,
    /// Comma-separated node weights (100 is an ordinary node), one per node; missing ones are 100.
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<u32>>,
    /// Add K nodes and report the movement.
    #[arg(long, value_name = "K", conflicts_with = "remove")]
    add: Option<usize>,
    /// Remove the K most recently added nodes and report the movement.
    #[arg(long, value_name = "K")]
    remove: Option<usize>,
    /// One JSON object per algorithm, one per line.
    #[arg(long)]
    json: bool,
}

const MAX_NODES: usize = 10_000;

pub fn run(command: RingCommand) -> anyhow::Result<ExitCode> {
    match command {
        RingCommand::Report(args) => report(args),
    }
}

fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes {}: use 1 to {MAX_NODES}", args.nodes);
    }
    // The assignment's work grows with nodes x partitions; keep a report to seconds and memory to megabytes.
    if args.nodes as u64 * u64::from(args.partitions) > 4_000_000 {
        bail!(
            "--nodes x --partitions is {}: at most 4000000 for a report",
            args.nodes as u64 * u64::from(args.partitions)
        );
    }
    if args.zones == 0 || args.zones > args.nodes {
        bail!("--zones {}: use 1 to the number of nodes ({})", args.zones, args.nodes);
    }
    if let Some(w) = &args.weights {
        if w.len() > args.nodes {
            bail!("--weights has {} entries for {} nodes", w.len(), args.nodes);
        }
    }
    let change = match (args.add, args.remove) {
        (Some(k), _) if k == 0 || args.nodes + k > MAX_NODES => {
            bail!("--add {k}: use 1 to {}", MAX_NODES - args.nodes)
        }
        (_, Some(k)) if k == 0 || k >= args.nodes => {
            bail!("--remove {k}: use 1 to {} (at least one node must stay)", args.nodes - 1)
        }
        (Some(k), _) => ScenarioChange::Add(k),
        (_, Some(k)) => ScenarioChange::Remove(k),
        (None, None) => ScenarioChange::None,
    };
    let scenario = Scenario {
        nodes: args.nodes,
        config: PlacementConfig { partitions: args.partitions, replicas: args.replicas, vnodes: args.vnodes },
        zones: args.zones,
        weights: args.weights,
        change,
    };
    let stats = compare(&scenario).context("cannot build the placement")?;
    let mut out = String::new();
    if args.json {
        for s in &stats {
            writeln!(out, "{}", json(&scenario, s))?;
        }
    } else {
        table(&mut out, &scenario, &stats)?;
    }
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn json(scenario: &Scenario, s: &Stats) -> serde_json::Value {
    let change = match scenario.change {
        ScenarioChange::None => serde_json::json!(null),
        ScenarioChange::Add(k) => serde_json::json!({ "add": k }),
        ScenarioChange::Remove(k) => serde_json::json!({ "remove": k }),
    };
    serde_json::json!({
        "algorithm": s.algorithm,
        "nodes": scenario.nodes,
        "vnodes": scenario.config.vnodes,
        "partitions": scenario.config.partitions,
        "replicas": scenario.config.replicas,
        "zones": scenario.zones,
        "change": change,
        "max_over_mean": round4(s.max_over_mean),
        "cv": round4(s.cv),
        "max_over_mean_after": round4(s.max_over_mean_after),
        "moved_fraction": round4(s.moved_fraction),
        "optimal_fraction": round4(s.optimal_fraction),
        "moved_over_optimal": if s.optimal_fraction > 0.0 { Some(round4(s.moved_fraction / s.optimal_fraction)) } else { None },
        "only_necessary_moves": s.only_necessary_moves,
        "zone_violations": s.zone_violations,
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn table(out: &mut String, scenario: &Scenario, stats: &[Stats]) -> std::fmt::Result {
    let c = &scenario.config;
    let change = match scenario.change {
        ScenarioChange::None => String::new(),
        ScenarioChange::Add(k) => format!(", then {k} added"),
        ScenarioChange::Remove(k) => format!(", then {k} removed"),
    };
    writeln!(
        out,
        "{} nodes in {} zone(s), {} vnodes, {} partitions x {} replicas{change}",
        scenario.nodes, scenario.zones, c.vnodes, c.partitions, c.replicas
    )?;
    writeln!(
        out,
        "{:<13} {:>9} {:>7} {:>11} {:>8} {:>8} {:>9} {:>10} {:>10}",
        "algorithm", "max/mean", "cv", "after", "moved", "optimal", "x optimal", "necessary", "zone-viol"
    )?;
    for s in stats {
        let ratio =
            if s.optimal_fraction > 0.0 { format!("{:.3}", s.moved_fraction / s.optimal_fraction) } else { "-".into() };
        writeln!(
            out,
            "{:<13} {:>9.3} {:>7.3} {:>11.3} {:>8.4} {:>8.4} {:>9} {:>10} {:>10}",
            s.algorithm,
            s.max_over_mean,
            s.cv,
            s.max_over_mean_after,
            s.moved_fraction,
            s.optimal_fraction,
            ratio,
            if s.only_necessary_moves { "yes" } else { "no" },
            s.zone_violations
        )?;
    }
    Ok(())
}
