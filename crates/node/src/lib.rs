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

/// Connections waiting to be accepted (tokio's default for `TcpListener::bind`).
const LISTEN_BACKLOG: u32 = 1024;

/// Runs a node until `shutdown` resolves: starts it, serves the HTTP API on `--http`, then stops accepting,
/// lets in-flight requests finish, and stops every Raft group (flushing storage). A node that a majority of its
/// cluster refuses as another cluster's stops the same way and returns why ([`node::StartError::ShutOut`]).
pub async fn run(
    config: config::NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), node::StartError> {
    let http = config.http;
    let bind_error = |e| node::StartError::Bind(http, e);
    // The address is taken first, so that a port in use fails the start at once; it listens only once the node
    // has started. A socket that listened during the start (opening the store, starting every group: most of a
    // second on a restart) would take clients' connections and leave their requests unanswered, rather than
    // refuse them so that they try another node at once.
    let socket = take_address(http).map_err(bind_error)?;
    let node = node::Node::start(config).await?;
    let listener = match socket.listen(LISTEN_BACKLOG) {
        Ok(listener) => listener,
        Err(e) => {
            // Another process took the port meanwhile: stop the groups just started, flushing storage.
            node.shutdown().await;
            return Err(bind_error(e));
        }
    };
    // Small request/response exchanges: Nagle's algorithm with delayed ACKs would add tens of milliseconds.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
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

/// Binds a socket to `addr` without listening on it: the address is taken (another socket listening on it is an
/// error), and a connection to it is refused until the socket listens.
fn take_address(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_api_address_refuses_connections_until_it_listens_and_cannot_be_taken_twice() {
        let socket = take_address("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let refused = tokio::net::TcpStream::connect(addr).await.expect_err("nothing listens yet");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let listener = socket.listen(LISTEN_BACKLOG).unwrap();
        let connected = tokio::net::TcpStream::connect(addr).await;
        assert!(connected.is_ok(), "a listening socket takes connections: {connected:?}");
        assert!(take_address(addr).is_err(), "an address another socket listens on is not taken again");
        drop(listener);
    }
}
