//! `rampart cluster ...` and `rampart status`: the cluster's members and partitions, and membership changes.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rampart_client::{Client, NewNode, Retry};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes and their health, partitions, their replicas and leaders, moves under way, the ring epoch.
    Status(StatusArgs),
    /// Adds a node (started with `rampart serve ... --join PEER`, which also adds it by itself).
    Add(AddArgs),
    /// Decommissions a node: its replicas move to the others (watch `rampart cluster status`).
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Any node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:7101")]
    addr: String,
    /// The cluster view as JSON (as `GET /v1/cluster` gives it).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long, default_value = "127.0.0.1:7101")]
    addr: String,
    /// The new node's id.
    #[arg(long)]
    id: String,
    /// Its peer address (Raft, internal RPC, membership).
    #[arg(long)]
    peer: String,
    /// Its HTTP address.
    #[arg(long)]
    http: String,
    #[arg(long)]
    zone: Option<String>,
    #[arg(long)]
    weight: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[arg(long, default_value = "127.0.0.1:7101")]
    addr: String,
    /// The node to decommission.
    id: String,
}

pub fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            ClusterCommand::Status(args) => status(args).await,
            ClusterCommand::Add(a) => {
                let client = Client::new([&a.addr], Retry::default())?;
                let node = NewNode { id: a.id, peer: a.peer, http: a.http, zone: a.zone, weight: a.weight };
                let answer = client.add_node(&node).await?;
                crate::output::print(&format!("{answer}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            ClusterCommand::Remove(a) => {
                let client = Client::new([&a.addr], Retry::default())?;
                let answer = client.remove_node(&a.id).await?;
                crate::output::print(&format!("{answer}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new([&args.addr], Retry { attempts: 3, ..Retry::default() })?;
    let v = client.cluster().await?;
    if args.json {
        crate::output::print(&format!("{v}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "ring epoch {}, configuration {}, partitions moving {}\n\nnodes\n",
        v["ring_epoch"], v["config_epoch"], v["partitions_moving"]
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<8} {:<8} peer {:<21} http {:<21} zone {:<10} phi {}\n",
            n["id"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            n["addr"].as_str().unwrap_or("-"),
            n["http"].as_str().unwrap_or("-"),
            n["zone"].as_str().unwrap_or("-"),
            n["phi"]
        ));
    }
    let meta = &v["metadata"];
    out.push_str(&format!("\nmetadata group: {}\n", starred(&meta["replicas"], &meta["leader"])));
    out.push_str("\npartitions (replicas in preference order; * leader; ~ moving)\n");
    for p in v["partitions"].as_array().into_iter().flatten() {
        let moving = if p["moving"] == true { " ~" } else { "" };
        let replicas = starred(&p["replicas"], &p["leader"]);
        out.push_str(&format!("  {:>4}  {replicas}  term {}{moving}\n", p["id"], p["term"]));
    }
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// A group's replicas, space-separated, its leader marked with `*`.
fn starred(replicas: &serde_json::Value, leader: &serde_json::Value) -> String {
    let leader = leader.as_str().unwrap_or("");
    let names: Vec<String> = replicas
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .map(|r| if r == leader { format!("{r}*") } else { r.to_owned() })
        .collect();
    names.join(" ")
}
