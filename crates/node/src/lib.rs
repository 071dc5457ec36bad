//! A Rampart node: partitions replicated with Raft (openraft, one group per partition) on durable redb
//! storage, with the settings it runs from.
//!
//! What it owns: the Raft type configuration ([`types`]), the durable log and state machine with group commit
//! ([`store`]), and the node's settings ([`config`]).
//!
//! Invariants:
//! - A vote or a log entry is reported saved only after an fsync'd commit holds it.
//! - `last_applied` is written in the same transaction as the state it describes.
//! - Every stored value is checksummed; a corrupt value is an error, never data.

pub mod api;
pub mod cluster;
pub mod config;
pub mod network;
pub mod node;
mod quiesce;
pub mod store;
pub mod telemetry;
pub mod trade_api;
pub mod types;

use std::future::Future;
use std::sync::Arc;

/// Runs a node until `shutdown` resolves: starts it, serves the HTTP API on `--http`, then stops accepting,
/// lets in-flight requests finish, and stops every Raft group (flushing storage). A node that a majority of its
/// cluster refuses as another cluster's stops the same way and returns why ([`node::StartError::ShutOut`]).
pub async fn run(
    config: config::NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), node::StartError> {
    let http = config.http;
    let listener = tokio::net::TcpListener::bind(http).await.map_err(|e| node::StartError::Bind(http, e))?;
    // Small request/response exchanges: Nagle's algorithm with delayed ACKs would add tens of milliseconds.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let node = node::Node::start(config).await?;
    tracing::info!("node {} serving HTTP on {http}, peers on {}", node.config.id, node.config.peer);
    let mut shut_out = node.shut_out.subscribe();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            _ = shut_out.wait_for(Option::is_some) => {}
        }
    };
    let served = axum::serve(listener, api::router(Arc::clone(&node))).with_graceful_shutdown(stop).await;
    node.shutdown().await;
    served.map_err(|e| node::StartError::Bind(http, e))?;
    let why = node.shut_out.borrow().clone();
    why.map_or(Ok(()), |why| Err(node::StartError::ShutOut(why)))
}
