//! `rampart serve`: one node, in the foreground, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rampart_node::config::{ClusterToken, NodeConfig, RawConfig};

/// Settings from flags or `RAMPART_*` environment variables; `--config FILE` supplies the rest (TOML with the
/// same names in snake case). A flag beats the environment, which beats the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This node's id, e.g. n1.
    #[arg(long, env = "RAMPART_ID")]
    id: Option<String>,
    /// HTTP API address, e.g. 127.0.0.1:7101.
    #[arg(long, env = "RAMPART_HTTP")]
    http: Option<String>,
    /// Raft and internal RPC address (TCP), e.g. 127.0.0.1:7201.
    #[arg(long, env = "RAMPART_PEER")]
    peer: Option<String>,
    /// Where the node keeps its data.
    #[arg(long, env = "RAMPART_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The founding members: n1=127.0.0.1:7201,n2=127.0.0.1:7202,... Each may name its zone and weight,
    /// n1=10.0.1.1:7201@site-a or n1=10.0.1.1:7201@site-a:200 (the same list on every founder).
    #[arg(long, env = "RAMPART_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Join a running cluster through this member's peer address (instead of --initial-cluster).
    #[arg(long, env = "RAMPART_JOIN")]
    join: Option<String>,
    /// Failure domain of a node that joins (a founder's is given in --initial-cluster; this may only repeat it).
    #[arg(long, env = "RAMPART_ZONE")]
    zone: Option<String>,
    /// Weight of a node that joins: its share of the replicas against the others' (1 to 100000, default 100; a
    /// founder's is given in --initial-cluster; this may only repeat it).
    #[arg(long, env = "RAMPART_WEIGHT")]
    weight: Option<u32>,
    /// Partitions (fixed at cluster creation; 1 to 4096, default 64).
    #[arg(long, env = "RAMPART_PARTITIONS")]
    partitions: Option<u32>,
    /// Replicas per partition (1 to 7, default 3).
    #[arg(long, env = "RAMPART_REPLICAS")]
    replicas: Option<u32>,
    /// Raft heartbeat interval in ms (default 40).
    #[arg(long, env = "RAMPART_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Raft election timeout in ms (default 120): a follower that hears nothing from its leader for 1.5 to 1.67
    /// times this campaigns (the leader's lease, then a randomised timeout).
    #[arg(long, env = "RAMPART_ELECTION_TIMEOUT_MS")]
    election_timeout_ms: Option<u64>,
    /// An unpaid order expires this many ms after it was placed (default 900000: 15 minutes).
    #[arg(long, env = "RAMPART_PAYMENT_DEADLINE_MS")]
    payment_deadline_ms: Option<u64>,
    /// How long an idempotency key is remembered, in ms (default 86400000: a day).
    #[arg(long, env = "RAMPART_IDEMPOTENCY_RETENTION_MS")]
    idempotency_retention_ms: Option<u64>,
    /// A member not heard from (declared dead, stopped and not back, or never heard of) for this many ms is
    /// decommissioned and its replicas rebuilt on the others (default 60000).
    #[arg(long, env = "RAMPART_REPLACE_AFTER_MS")]
    replace_after_ms: Option<u64>,
    /// A partition that has served nothing for this many ms quiesces: its leader stops heartbeating it and its
    /// followers watch the leader's node through membership instead (0: never; default 2000).
    #[arg(long, env = "RAMPART_QUIESCE_AFTER_MS")]
    quiesce_after_ms: Option<u64>,
    /// A partition snapshots its state after this many log entries since its last snapshot and purges its log
    /// behind it (10 to 10000000, default 5000).
    #[arg(long, env = "RAMPART_SNAPSHOT_LOGS")]
    snapshot_logs: Option<u64>,
    /// Snapshots travel to a replica in chunks of this many bytes (1024 to 33554432, default 1048576).
    #[arg(long, env = "RAMPART_SNAPSHOT_CHUNK_BYTES")]
    snapshot_chunk_bytes: Option<u64>,
    /// A secret of 16 to 256 visible ASCII characters shared by every member: the peer port then serves Raft and
    /// internal RPC only to callers presenting it (prefer the environment or the file to the flag, which `ps` shows).
    #[arg(long, env = "RAMPART_CLUSTER_TOKEN", hide_env_values = true, value_parser = parse_token)]
    cluster_token: Option<ClusterToken>,
    /// A TOML settings file.
    #[arg(long, env = "RAMPART_CONFIG")]
    config: Option<PathBuf>,
}

/// Into the type whose `Debug` is redacted at once, so the arguments never hold the secret in the clear.
fn parse_token(token: &str) -> Result<ClusterToken, std::convert::Infallible> {
    Ok(ClusterToken::new(token.to_owned()))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            RawConfig::from_toml(&text)?
        }
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        id: args.id,
        http: args.http,
        peer: args.peer,
        data_dir: args.data_dir,
        initial_cluster: args.initial_cluster,
        join: args.join,
        zone: args.zone,
        weight: args.weight,
        partitions: args.partitions,
        replicas: args.replicas,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_ms: args.election_timeout_ms,
        payment_deadline_ms: args.payment_deadline_ms,
        idempotency_retention_ms: args.idempotency_retention_ms,
        replace_after_ms: args.replace_after_ms,
        quiesce_after_ms: args.quiesce_after_ms,
        snapshot_logs: args.snapshot_logs,
        snapshot_chunk_bytes: args.snapshot_chunk_bytes,
        cluster_token: args.cluster_token,
    };
    let config = NodeConfig::from_raw(flags.or(file))?;
    // Logs to stderr: RAMPART_LOG=error|warn|info|debug|trace (info by default).
    let level = match std::env::var("RAMPART_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        Ok("info") | Err(_) => tracing::Level::INFO,
        Ok(other) => anyhow::bail!("RAMPART_LOG: use error, warn, info, debug or trace, not {other:?}"),
    };
    // openraft narrates every group's every step at info: its warnings and errors are what an operator needs.
    use tracing_subscriber::layer::SubscriberExt as _;
    let targets = tracing_subscriber::filter::Targets::new()
        .with_target("openraft", level.min(tracing::Level::WARN))
        .with_default(level);
    let subscriber =
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).finish();
    tracing::subscriber::set_global_default(subscriber.with(targets))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        };
        rampart_node::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
