//! `rampart up`: a local cluster in the foreground until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rampart_client::{Client, Retry};

use crate::local::LocalCluster;

/// Starts --nodes `rampart serve` processes on loopback (node i: HTTP on 7100+i, peers on 7200+i unless
/// --http-base/--peer-base say otherwise), prints their URLs, and stops them cleanly on Ctrl-C.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the nodes keep their data (one directory per node); a temporary directory, removed on exit, if
    /// not given. A cluster started again on the same directory finds its data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Partitions (fixed when the cluster is created).
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Node i serves HTTP on this port + i.
    #[arg(long, default_value_t = 7100)]
    http_base: u16,
    /// Node i serves peers (TCP and UDP) on this port + i.
    #[arg(long, default_value_t = 7200)]
    peer_base: u16,
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("rampart-up-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let extra = vec!["--partitions".to_owned(), args.partitions.to_string()];
    let mut cluster = LocalCluster::start(args.nodes, &dir, Some((args.http_base, args.peer_base)), &extra)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = Client::new(cluster.http_urls(), Retry::default())?;
    let started = Instant::now();
    runtime
        .block_on(crate::local::wait_ready(&client, args.nodes, Duration::from_secs(60)))
        .with_context(|| format!("logs are in {}", dir.display()))?;
    println!(
        "rampart: {} nodes ready in {:.1} s (data and logs in {})",
        args.nodes,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    for (node, url) in cluster.nodes.iter().zip(cluster.http_urls()) {
        println!("  {}  {url}  (cluster view: {url}/v1/cluster, API: {url}/openapi.json)", node.id);
    }
    println!("Ctrl-C stops the cluster.");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    eprintln!("stopping...");
    cluster.stop();
    Ok(ExitCode::SUCCESS)
}
