//! Node-to-node RPC: every partition group's Raft messages, and forwarded client requests, over one HTTP/2
//! connection per peer (h2c on the `--peer` address).
//!
//! Bodies are postcard. A request names its group in the path (`/raft/{group}/append`), so one connection
//! multiplexes all groups; the server hands each message to that group's Raft. Any failure on the way (peer
//! down, timeout, group not hosted there) is reported to openraft as `Unreachable`, which makes it back off and
//! retry; it never stops a group.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Cursor};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::OptionalSend;
use openraft_multi::{GroupNetworkAdapter, GroupRouter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{GroupId, PeerNode, RaftId, TypeConfig};

type C = TypeConfig;

/// The largest RPC body accepted (a snapshot of one partition included).
pub const MAX_BODY: usize = 64 << 20;
/// A Raft RPC that takes longer than this is treated as lost.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no address known for node {0}")]
    UnknownPeer(RaftId),
    /// The connection could not be made: the request was certainly not delivered.
    #[error("peer {0}: cannot connect: {1}")]
    Connect(String, String),
    /// Failed after the request may have been delivered.
    #[error("peer {0}: {1}")]
    Transport(String, String),
    #[error("peer {0} timed out")]
    Timeout(String),
    #[error("peer {0} answered {1}")]
    Status(String, StatusCode),
    #[error("peer {0} sent a malformed answer: {1}")]
    Decode(String, String),
}

/// The client side of node-to-node RPC, shared by every group.
#[derive(Clone, Debug)]
pub struct Peers {
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    nodes: Arc<RwLock<BTreeMap<RaftId, PeerNode>>>,
}

impl Peers {
    pub fn new(nodes: BTreeMap<RaftId, PeerNode>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Self { client, nodes: Arc::new(RwLock::new(nodes)) }
    }

    /// The known nodes.
    pub fn nodes(&self) -> BTreeMap<RaftId, PeerNode> {
        self.nodes.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// POSTs `req` (postcard) to `path` on `target`'s peer address and decodes the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: RaftId,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let addr = self
            .nodes
            .read()
            .ok()
            .and_then(|n| n.get(&target).map(|p| p.peer.clone()))
            .ok_or(CallError::UnknownPeer(target))?;
        self.call_at(addr, path, req, timeout).await
    }

    /// Adds or updates a node's addresses.
    pub fn insert(&self, id: RaftId, node: PeerNode) {
        if let Ok(mut nodes) = self.nodes.write() {
            nodes.insert(id, node);
        }
    }

    /// One call to a peer address no node table names yet (a node joining through a member).
    pub async fn call_addr<Req: Serialize, Resp: DeserializeOwned>(
        addr: std::net::SocketAddr,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        Peers::new(BTreeMap::new()).call_at(addr.to_string(), path, req, timeout).await
    }

    async fn call_at<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: String,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = postcard::to_allocvec(req).map_err(|e| CallError::Decode(addr.clone(), e.to_string()))?;
        let exchange = async {
            let request = Request::post(format!("http://{addr}{path}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| CallError::Transport(addr.clone(), e.to_string()))?;
            let response =
                self.client.request(request).await.map_err(|e| CallError::Transport(addr.clone(), e.to_string()))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(CallError::Status(addr.clone(), status));
            }
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| CallError::Transport(addr.clone(), e.to_string()))?
                .to_bytes();
            postcard::from_bytes(&bytes).map_err(|e| CallError::Decode(addr.clone(), e.to_string()))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(addr.clone()))?
    }

    async fn raft_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: RaftId,
        group: GroupId,
        op: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, io::Error> {
        let answer: Result<Resp, String> = self
            .call(target, &format!("/raft/{group}/{op}"), req, timeout)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        answer.map_err(io::Error::other)
    }
}

fn unreachable(e: io::Error) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn ttl(option: &RPCOption) -> Duration {
    option.hard_ttl().min(RPC_TIMEOUT)
}

/// A snapshot on the wire: the vote of the sender, the metadata and the bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRpc {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub data: Vec<u8>,
}

impl GroupRouter<C, GroupId> for Peers {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &self,
        target: RaftId,
        group: GroupId,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.raft_call(target, group, "append", &rpc, ttl(&option)).await.map_err(unreachable)
    }

    async fn vote(
        &self,
        target: RaftId,
        group: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.raft_call(target, group, "vote", &rpc, ttl(&option)).await.map_err(unreachable)
    }

    async fn pre_vote(
        &self,
        target: RaftId,
        group: GroupId,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.raft_call(target, group, "pre_vote", &rpc, ttl(&option)).await.map_err(unreachable)
    }

    async fn full_snapshot(
        &self,
        target: RaftId,
        group: GroupId,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let rpc = SnapshotRpc { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        // A snapshot may be large: give it more than a heartbeat's time.
        let timeout = ttl(&option).max(Duration::from_secs(10));
        self.raft_call(target, group, "snapshot", &rpc, timeout)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

/// The network of one group: the shared [`Peers`] with the group's id.
#[derive(Clone, Debug)]
pub struct GroupNetwork {
    pub peers: Peers,
    pub group: GroupId,
}

impl RaftNetworkFactory<C> for GroupNetwork {
    type Network = GroupNetworkAdapter<C, GroupId, Peers>;

    async fn new_client(&mut self, target: RaftId, _node: &PeerNode) -> Self::Network {
        GroupNetworkAdapter::new(self.peers.clone(), target, self.group)
    }
}
