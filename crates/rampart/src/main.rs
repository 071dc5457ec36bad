//! `rampart`: the command-line tool and the node.
//!
//! The binary is thin: it parses flags into validated settings and calls the library crates. Only it knows the
//! output formats (tables for people, JSON lines for machines).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_cmd;
mod cluster_cmd;
mod demo_cmd;
mod detect_cmd;
mod local;
mod output;
mod ring_cmd;
mod serve_cmd;
mod up_cmd;

/// mimalloc rather than the system allocator: the nodes allocate per message and per request on every thread,
/// and it costs them less CPU per write (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rampart: a highly available, disaster-tolerant trading core.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: a flash sale on a temporary 3-node cluster, a node killed mid-sale, then every promise checked.
    Demo(demo_cmd::DemoArgs),
    /// Starts a local cluster in the foreground and prints its URLs; Ctrl-C stops it.
    Up(up_cmd::UpArgs),
    /// Cluster status: nodes and health, partitions and leaders, ring epoch.
    Status(cluster_cmd::StatusArgs),
    /// Cluster membership: status, add a node, decommission a node.
    Cluster {
        #[command(subcommand)]
        command: cluster_cmd::ClusterCommand,
    },
    /// Placement tools: balance and movement of the ring's algorithms.
    Ring {
        #[command(subcommand)]
        command: ring_cmd::RingCommand,
    },
    /// Load generator: concurrent clients against a running cluster, with throughput and latency percentiles.
    Bench(bench_cmd::BenchArgs),
    /// Runs one node: the HTTP API on --http, Raft and internal RPC on --peer.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Failure-detection tools: the deterministic detector simulator.
    Detect {
        #[command(subcommand)]
        command: detect_cmd::DetectCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo_cmd::run(args),
        Command::Up(args) => up_cmd::run(args),
        Command::Status(args) => cluster_cmd::run(cluster_cmd::ClusterCommand::Status(args)),
        Command::Cluster { command } => cluster_cmd::run(command),
        Command::Ring { command } => ring_cmd::run(command),
        Command::Detect { command } => detect_cmd::run(command),
        Command::Serve(args) => serve_cmd::run(*args),
        Command::Bench(args) => bench_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
