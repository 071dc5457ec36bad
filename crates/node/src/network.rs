//! Node-to-node RPC: every partition group's Raft messages, and forwarded client requests, over one HTTP/2
//! connection per peer (h2c on the `--peer` address).
//!
//! Bodies are postcard. Raft messages to one peer travel in batches: each target has a lane, a task that takes
//! every message queued for that peer (from any group) into one `POST /raft/batch`, with at most
//! [`LANE_WINDOW`] batches in flight. Messages raised together (a heartbeat round of every group this node
//! leads, a burst of appends) so cost one request, one set of HTTP/2 frames and one wake-up of the peer, not one
//! each; the server hands a lane's batches to the groups in the order they were sent ([`LaneTurns`]), each
//! message to its group's Raft, concurrently, and answers them in order. A leader's appends to a follower are
//! pipelined ([`GroupLink::stream_append`]). Snapshots
//! go alone on `/raft/{group}/snapshot`. Any failure on the way (peer down, timeout, group not hosted there) is
//! reported to openraft as `Unreachable`, which makes it back off and retry; it never stops a group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Stream, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::config::ClusterToken;
use crate::types::{GroupId, PeerNode, RaftId, TypeConfig};

type C = TypeConfig;

/// The largest RPC body accepted (a snapshot of one partition included).
pub const MAX_BODY: usize = 64 << 20;
/// A Raft RPC that takes longer than this is treated as lost.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time an append is given (see [`append_ttl`]).
const APPEND_TTL_MIN: Duration = Duration::from_secs(1);
/// A group's appends to one follower that may be unanswered at once (see [`GroupLink::stream_append`]).
const APPEND_PIPELINE: usize = 8;
/// How long a commit notice (an append with no entries, raised when the commit moves) waits for the append after
/// it, which carries the same commit or a later one and so supersedes it ([`pipelined_appends`]). A hot
/// partition's leader proposes its next entry once the one before is applied, a fraction of a millisecond after
/// the commit; with writes spread over many partitions, each partition's next entry comes milliseconds later
/// (about 12 ms apart: kv at 64 clients, 5,500 writes/s over 64 partitions). Without the wait every entry cost
/// each follower two messages; at 2 ms, kv still sent 0.83 notices a write, at 20 ms 0.27, and took 3-6% more
/// writes a second (BENCHMARKS.md, "Commit notices superseded by the next append"). A follower learns a commit up
/// to this much later, and at the latest with the next heartbeat round (every 40 ms by default): nothing waits for
/// that (the leader answers clients, and a new leader commits again before it serves).
const NOTICE_LINGER: Duration = Duration::from_millis(20);
/// Batches of Raft messages in flight to one peer. Messages raised while they are out wait and leave together in
/// the next batch: the more load, the larger the batches, and the fewer requests per message. Two, so that an
/// append does not wait behind a batch of commit notices or heartbeats that is out (BENCHMARKS.md, "Pipelined
/// appends").
pub const LANE_WINDOW: usize = 2;
/// The most messages in one batch.
const BATCH_MESSAGES: usize = 512;
/// A batch is closed once its message bodies reach this size (a single larger message still goes, alone).
const BATCH_BYTES: usize = 4 << 20;

/// The Raft operations that travel in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftOp {
    Append,
    Vote,
    PreVote,
}

/// One Raft message of a batch: its group, its operation and its postcard body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub group: GroupId,
    pub op: RaftOp,
    pub body: Bytes,
}

/// The answer to one [`Envelope`]: the postcard answer of the group's Raft, or why there is none.
pub type Reply = Result<Bytes, String>;

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A message waiting in a lane, with the caller waiting for its answer.
#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

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
    client: HttpClient,
    nodes: Arc<RwLock<BTreeMap<RaftId, PeerNode>>>,
    /// One lane per target, started on first use; a lane stops when every `Peers` clone is gone.
    lanes: Arc<Mutex<BTreeMap<RaftId, mpsc::UnboundedSender<Pending>>>>,
    /// Snapshots are sent in chunks of this many bytes.
    snapshot_chunk: usize,
    /// Presented on every call.
    credentials: Credentials,
}

/// What every peer request presents: the cluster token, when the cluster has one, and the cluster's identity,
/// once this node knows it. A peer that knows another identity refuses the request (409): a node left from an
/// earlier cluster on the same addresses cannot take part in this one.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<ClusterToken>,
    /// The cluster's identity ([`crate::cluster::ClusterConfig::identity`]); 0 while unknown.
    identity: Arc<std::sync::atomic::AtomicU64>,
    /// Peers (by peer address) whose last answer refused this node as another cluster's, and the identity each
    /// holds; a peer that answers again leaves it.
    refused_by: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// The header that carries the cluster's identity (hexadecimal).
pub const IDENTITY_HEADER: &str = "x-rampart-cluster";

impl Credentials {
    fn identity(&self) -> u64 {
        self.identity.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Peers {
    pub fn new(nodes: BTreeMap<RaftId, PeerNode>, snapshot_chunk: usize, token: Option<ClusterToken>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Self {
            client,
            nodes: Arc::new(RwLock::new(nodes)),
            lanes: Arc::default(),
            snapshot_chunk: snapshot_chunk.max(1),
            credentials: Credentials { token, identity: Arc::default(), refused_by: Arc::default() },
        }
    }

    /// The peers (by peer address) whose last answer refused this node as a member of another cluster, and the
    /// identity each holds.
    pub fn refused_by(&self) -> BTreeMap<String, u64> {
        self.credentials.refused_by.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Presents `identity` on every request from now on (once the configuration in force carries it).
    pub fn set_identity(&self, identity: u64) {
        self.credentials.identity.store(identity, std::sync::atomic::Ordering::Release);
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
        let addr = peer_addr(&self.nodes, target)?;
        exchange(&self.client, &self.credentials, addr, path, None, req, timeout).await
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
        token: Option<&ClusterToken>,
    ) -> Result<Resp, CallError> {
        let peers = Peers::new(BTreeMap::new(), 1, token.cloned());
        exchange(&peers.client, &peers.credentials, addr.to_string(), path, None, req, timeout).await
    }

    /// Queues one Raft message on `target`'s lane at once, so that messages queued one after another leave (and
    /// are handed to the peer's Raft) in that order, and returns what waits for the decoded answer.
    fn raft_send<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: RaftId,
        group: GroupId,
        op: RaftOp,
        req: &Req,
        timeout: Duration,
    ) -> impl Future<Output = Result<Resp, io::Error>> + Send + 'static {
        let queued = postcard::to_allocvec(req).map_err(io::Error::other).and_then(|body| {
            let (reply, answer) = oneshot::channel();
            let envelope = Envelope { group, op, body: Bytes::from(body) };
            let pending = Pending { envelope, deadline: Instant::now() + timeout, reply };
            self.lane(target).send(pending).map_err(|_| io::Error::other(format!("node {target}: lane closed")))?;
            Ok(answer)
        });
        async move {
            let bytes = tokio::time::timeout(timeout, queued?)
                .await
                .map_err(|_| io::Error::other(format!("node {target} timed out")))?
                .map_err(|_| io::Error::other(format!("node {target}: batch abandoned")))?
                .map_err(io::Error::other)?;
            postcard::from_bytes(&bytes).map_err(io::Error::other)
        }
    }

    fn lane(&self, target: RaftId) -> mpsc::UnboundedSender<Pending> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lane) = lanes.get(&target).filter(|l| !l.is_closed()) {
            return lane.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_lane(self.client.clone(), self.credentials.clone(), self.nodes.clone(), target, rx));
        lanes.insert(target, tx.clone());
        tx
    }
}

fn peer_addr(nodes: &RwLock<BTreeMap<RaftId, PeerNode>>, target: RaftId) -> Result<String, CallError> {
    nodes.read().ok().and_then(|n| n.get(&target).map(|p| p.peer.clone())).ok_or(CallError::UnknownPeer(target))
}

/// A lane: takes what is queued for `target` into batches, at most [`LANE_WINDOW`] in flight.
async fn run_lane(
    client: HttpClient,
    credentials: Credentials,
    nodes: Arc<RwLock<BTreeMap<RaftId, PeerNode>>>,
    target: RaftId,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let window = Arc::new(Semaphore::new(LANE_WINDOW));
    // Numbers this lane's batches, so that the peer hands them to its groups in the order they were sent.
    let lane = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
    };
    let mut seq = 0u64;
    // The batches sent and not yet answered (or given up on): the oldest tells the peer where the lane stands.
    let unanswered = Arc::new(Mutex::new(BTreeSet::new()));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = window.clone().acquire_owned().await else { return };
        // Let the messages raised in the same instant (the other groups' heartbeats of one round) join.
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(pending) = next.take() {
            // A caller that gave up (timed out) is not sent.
            if !pending.reply.is_closed() {
                bytes += pending.envelope.body.len();
                batch.push(pending);
            }
            if batch.len() >= BATCH_MESSAGES || bytes >= BATCH_BYTES {
                break;
            }
            next = queue.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let addr = peer_addr(&nodes, target);
        let (client, credentials) = (client.clone(), credentials.clone());
        let oldest = {
            let mut unanswered = unanswered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            unanswered.insert(seq);
            unanswered.first().copied().unwrap_or(seq)
        };
        let ticket = LaneTicket { lane, seq, oldest };
        seq += 1;
        let unanswered = unanswered.clone();
        tokio::spawn(async move {
            let _permit = permit;
            send_batch(&client, &credentials, addr, ticket, batch).await;
            unanswered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&ticket.seq);
        });
    }
}

async fn send_batch(
    client: &HttpClient,
    credentials: &Credentials,
    addr: Result<String, CallError>,
    ticket: LaneTicket,
    batch: Vec<Pending>,
) {
    let now = Instant::now();
    let timeout = batch.iter().map(|p| p.deadline.saturating_duration_since(now)).max().unwrap_or_default();
    let (envelopes, waiters): (Vec<Envelope>, Vec<oneshot::Sender<Reply>>) =
        batch.into_iter().map(|p| (p.envelope, p.reply)).unzip();
    let answer: Result<Vec<Reply>, CallError> = match addr {
        Ok(addr) => {
            exchange(client, credentials, addr, "/raft/batch", Some(ticket), &envelopes, timeout.min(RPC_TIMEOUT)).await
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(replies) if replies.len() == waiters.len() => {
            for (waiter, reply) in waiters.into_iter().zip(replies) {
                let _ = waiter.send(reply);
            }
        }
        Ok(replies) => {
            let why = format!("a batch of {} messages was answered with {}", waiters.len(), replies.len());
            for waiter in waiters {
                let _ = waiter.send(Err(why.clone()));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for waiter in waiters {
                let _ = waiter.send(Err(why.clone()));
            }
        }
    }
}

/// The header that numbers a lane's batches: `{lane:x}.{seq:x}.{oldest:x}`.
pub const LANE_HEADER: &str = "x-rampart-lane";

/// A batch's place in its lane: the lane (a random number per lane and process), the batch's sequence number,
/// and the oldest batch of the lane that was still unanswered when it left (its own number if none was). The
/// batches before `oldest` were answered or given up on: the peer waits for none of them, so a lane's first
/// batches, or the first after the peer restarted, take their turns in order whichever arrives first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneTicket {
    pub lane: u64,
    pub seq: u64,
    pub oldest: u64,
}

impl fmt::Display for LaneTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}.{:x}", self.lane, self.seq, self.oldest)
    }
}

impl std::str::FromStr for LaneTicket {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut fields = s.split('.').map(|f| u64::from_str_radix(f, 16).map_err(|_| ()));
        let (lane, seq, oldest) = (fields.next().ok_or(())??, fields.next().ok_or(())??, fields.next().ok_or(())??);
        if fields.next().is_some() || oldest > seq {
            return Err(());
        }
        Ok(LaneTicket { lane, seq, oldest })
    }
}

/// The receiving side of lanes: lets each lane's batches take their turn in the order they were sent. A batch
/// waits for the batch before it in its lane (for at most [`TURN_WAIT`]: one lost on the way is not waited for
/// again), hands its messages to their groups, and then lets the next one go. Batches raced each other to the
/// groups before; a pipelined append that overtook the one before it would have been refused as a gap.
#[derive(Debug)]
pub struct LaneTurns {
    /// Per lane: the next sequence number whose turn it is, and when the lane was last heard.
    next: Mutex<BTreeMap<u64, (u64, Instant)>>,
    advanced: tokio::sync::Notify,
    /// The longest a batch waits for its turn ([`TURN_WAIT`]).
    wait_max: Duration,
}

impl Default for LaneTurns {
    fn default() -> Self {
        LaneTurns { next: Mutex::default(), advanced: tokio::sync::Notify::new(), wait_max: TURN_WAIT }
    }
}

/// The longest a batch waits for the batches sent before it in its lane.
const TURN_WAIT: Duration = Duration::from_millis(100);
/// A lane not heard for this long is forgotten (its sender restarted or stopped).
const LANE_IDLE: Duration = Duration::from_secs(60);

impl LaneTurns {
    /// Waits until it is `ticket`'s turn: every batch sent before it in its lane and still unanswered when it
    /// left (from `ticket.oldest` on) has taken its turn, or [`TURN_WAIT`] has passed. A batch whose turn has passed (it
    /// came after a later batch of its lane went) is [`Late`]: its messages are refused, not handed over, since
    /// an append handed over after the one sent behind it would reach its group out of order. The turn ends when
    /// the returned [`Turn`] is dropped.
    pub async fn wait(&self, ticket: LaneTicket) -> Result<Turn<'_>, Late> {
        let deadline = Instant::now() + self.wait_max;
        let mut waited_out = false;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let (outcome, moved) = {
                let Ok(mut next) = self.next.lock() else { return Err(Late) };
                let now = Instant::now();
                if !next.contains_key(&ticket.lane) {
                    next.retain(|_, (_, heard)| now.duration_since(*heard) < LANE_IDLE);
                }
                let (turn, heard) = next.entry(ticket.lane).or_insert((ticket.oldest, now));
                *heard = now;
                let before = *turn;
                *turn = (*turn).max(ticket.oldest);
                let outcome = if ticket.seq < *turn {
                    Some(Err(Late))
                } else if ticket.seq == *turn || waited_out {
                    // Waited out: the batches before it are given up, and one of them coming now is late.
                    *turn = ticket.seq;
                    Some(Ok(Turn { turns: self, ticket }))
                } else {
                    None
                };
                (outcome, *turn != before)
            };
            // The lane moved on without a batch ending its turn: a batch waiting for one it passed is late now.
            if moved {
                self.advanced.notify_waiters();
            }
            if let Some(outcome) = outcome {
                return outcome;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                waited_out = true;
            }
        }
    }
}

/// A batch's turn in its lane; dropping it (once the batch handed its messages over, or gave up) lets the next
/// batch of the lane go.
#[derive(Debug)]
pub struct Turn<'a> {
    turns: &'a LaneTurns,
    ticket: LaneTicket,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Ok(mut next) = self.turns.next.lock() {
            if let Some((turn, _)) = next.get_mut(&self.ticket.lane) {
                *turn = (*turn).max(self.ticket.seq.saturating_add(1));
            }
        }
        self.turns.advanced.notify_waiters();
    }
}

/// A batch that came after its turn (see [`LaneTurns::wait`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Late;

/// POSTs `req` (postcard) to `path` on the peer address `addr` and decodes the answer.
async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
    client: &HttpClient,
    credentials: &Credentials,
    addr: String,
    path: &str,
    ticket: Option<LaneTicket>,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let body = postcard::to_allocvec(req).map_err(|e| CallError::Decode(addr.clone(), e.to_string()))?;
    let exchange = async {
        let mut request =
            Request::post(format!("http://{addr}{path}")).header(header::CONTENT_TYPE, "application/octet-stream");
        if let Some(token) = &credentials.token {
            request = request.header(header::AUTHORIZATION, token.header_value());
        }
        let identity = credentials.identity();
        if identity != 0 {
            request = request.header(IDENTITY_HEADER, format!("{identity:x}"));
        }
        if let Some(ticket) = ticket {
            request = request.header(LANE_HEADER, ticket.to_string());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Transport(addr.clone(), e.to_string()))?;
        // A connection that could not be made (refused, or not made within the connect timeout) carried nothing:
        // the caller may try another node. Anything later may have delivered the request.
        let response = client.request(request).await.map_err(|e| match e.is_connect() {
            true => CallError::Connect(addr.clone(), e.to_string()),
            false => CallError::Transport(addr.clone(), e.to_string()),
        })?;
        let status = response.status();
        let theirs = response.headers().get(IDENTITY_HEADER).and_then(|v| v.to_str().ok());
        let theirs = theirs.and_then(|v| u64::from_str_radix(v, 16).ok());
        if let Ok(mut refused_by) = credentials.refused_by.lock() {
            match (status, theirs) {
                (StatusCode::CONFLICT, Some(theirs)) => refused_by.insert(addr.clone(), theirs),
                _ => refused_by.remove(&addr),
            };
        }
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

fn unreachable(e: io::Error) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn ttl(option: &RPCOption) -> Duration {
    option.hard_ttl().min(RPC_TIMEOUT)
}

/// The largest snapshot a node takes in (it is assembled in memory before it is installed).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// One piece of a snapshot on the wire. A snapshot goes in pieces of `--snapshot-chunk-bytes`, in order, each
/// with the sender's vote, the snapshot's metadata, where the piece starts and the snapshot's whole size; the
/// receiver answers `None` until it has every byte, then installs the snapshot and answers with the result.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

impl SnapshotChunk {
    /// Which snapshot the chunk belongs to: the sender's vote and the last entry the snapshot holds.
    fn id(&self) -> String {
        format!("{:?} at {:?}", self.vote, self.meta.last_log_id)
    }
}

/// A snapshot assembled from its chunks.
#[derive(Debug)]
pub struct WholeSnapshot {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub data: Vec<u8>,
}

/// The receiving side of snapshot transfer: per group, the snapshot being received. A chunk that does not
/// continue it (another snapshot, a gap, a size that changed) is refused and changes nothing; a chunk at offset 0
/// starts over.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    /// Per group: the snapshot's id ([`SnapshotChunk::id`]), its whole size and the bytes so far.
    partial: BTreeMap<GroupId, (String, u64, Vec<u8>)>,
    /// Chunks taken and snapshots completed (for `/metrics`).
    pub chunks: u64,
    pub completed: u64,
}

impl SnapshotAssembler {
    /// Takes one chunk of `group`'s snapshot: `Some` once the snapshot is whole.
    pub fn accept(&mut self, group: GroupId, chunk: SnapshotChunk) -> Result<Option<WholeSnapshot>, String> {
        let end = chunk.offset.checked_add(chunk.data.len() as u64).filter(|end| *end <= chunk.total);
        let Some(end) = end else {
            return Err(format!(
                "a chunk at {} of {} bytes overruns the snapshot's {}",
                chunk.offset,
                chunk.data.len(),
                chunk.total
            ));
        };
        if chunk.total > MAX_SNAPSHOT_BYTES {
            return Err(format!("a snapshot of {} bytes is over the {MAX_SNAPSHOT_BYTES}-byte limit", chunk.total));
        }
        if chunk.data.is_empty() && end < chunk.total {
            return Err("an empty chunk in the middle of a snapshot".into());
        }
        if chunk.offset == 0 {
            self.partial.remove(&group);
        } else {
            let Some((id, total, received)) = self.partial.get(&group) else {
                return Err(format!("a chunk at {} of a snapshot whose start never came", chunk.offset));
            };
            if *id != chunk.id() || *total != chunk.total {
                return Err(format!("a chunk of snapshot {} while receiving {id}", chunk.id()));
            }
            if chunk.offset != received.len() as u64 {
                return Err(format!("a chunk at {} where {} was expected", chunk.offset, received.len()));
            }
        }
        self.chunks += 1;
        let (_, total, received) = self.partial.entry(group).or_insert_with(|| (chunk.id(), chunk.total, Vec::new()));
        received.extend_from_slice(&chunk.data);
        if (received.len() as u64) < *total {
            return Ok(None);
        }
        let data = self.partial.remove(&group).map(|(_, _, data)| data).unwrap_or_default();
        self.completed += 1;
        Ok(Some(WholeSnapshot { vote: chunk.vote, meta: chunk.meta, data }))
    }
}

/// The network of one group: the shared [`Peers`] with the group's id.
#[derive(Clone, Debug)]
pub struct GroupNetwork {
    pub peers: Peers,
    pub group: GroupId,
}

impl RaftNetworkFactory<C> for GroupNetwork {
    type Network = GroupLink;

    async fn new_client(&mut self, target: RaftId, _node: &PeerNode) -> GroupLink {
        GroupLink { peers: self.peers.clone(), target, group: self.group }
    }
}

/// One group's link to one peer: its messages go through the peer's lane.
#[derive(Clone, Debug)]
pub struct GroupLink {
    peers: Peers,
    target: RaftId,
    group: GroupId,
}

impl RaftNetworkV2<C> for GroupLink {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let answer = self.peers.raft_send(self.target, self.group, RaftOp::Append, &rpc, append_ttl(&option));
        answer.await.map_err(unreachable)
    }

    /// A leader's appends to this follower, pipelined: each request is queued on the lane as soon as openraft
    /// makes it (when an entry is appended; a commit notice waits up to [`NOTICE_LINGER`] for a request to
    /// supersede it), up to [`APPEND_PIPELINE`] unanswered, and the answers come back in order. openraft's
    /// default waits for each answer before it sends the next, so an entry appended while one is out waited a
    /// whole round trip and a follower's fsync before it left. The
    /// follower hands a lane's batches to its groups in the order they were sent (see [`LaneTurns`]), so a
    /// pipelined append never overtakes the one before it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        let stream = pipelined_appends(self.clone(), input, append_ttl(&option), NOTICE_LINGER);
        Box::pin(async move { Ok(stream) })
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.peers.raft_send(self.target, self.group, RaftOp::Vote, &rpc, ttl(&option)).await.map_err(unreachable)
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        let answer = self.peers.raft_send(self.target, self.group, RaftOp::PreVote, &rpc, ttl(&option));
        answer.await.map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let data = Bytes::from(snapshot.snapshot.into_inner());
        let total = data.len() as u64;
        // A chunk may be large: give it more than a heartbeat's time.
        let timeout = ttl(&option).max(Duration::from_secs(10));
        let failed = |why: String| StreamingError::Unreachable(Unreachable::new(&io::Error::other(why)));
        let send = async {
            let mut offset = 0;
            loop {
                let end = (offset + self.peers.snapshot_chunk).min(data.len());
                let chunk = SnapshotChunk {
                    vote,
                    meta: snapshot.meta.clone(),
                    offset: offset as u64,
                    total,
                    data: data.slice(offset..end),
                };
                let answer: Result<Option<SnapshotResponse<C>>, String> = self
                    .peers
                    .call(self.target, &format!("/raft/{}/snapshot", self.group), &chunk, timeout)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                match answer.map_err(failed)? {
                    Some(response) => return Ok(response),
                    None if end < data.len() => offset = end,
                    None => return Err(failed("the peer took the last chunk but installed nothing".into())),
                }
            }
        };
        tokio::select! {
            sent = send => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// openraft gives an append one heartbeat interval (40 ms by default). Under load an append can wait behind its
/// lane's batches in flight and then a follower's fsync for longer; timing it out broke the replication stream,
/// which openraft resumes only after a backoff: the partition took nothing for 210-290 ms, every request in flight
/// at once. So an append gets at least `APPEND_TTL_MIN` (openraft's heartbeat worker still bounds its own
/// heartbeats by the interval). A follower that is gone refuses the connection at once; one that hangs costs its
/// own stream this long while the others commit.
fn append_ttl(option: &RPCOption) -> Duration {
    ttl(option).max(APPEND_TTL_MIN)
}

/// The stream of [`GroupLink::stream_append`]. It ends after the first answer that is not a full success (a
/// conflict, a higher vote, a partial success, a failure): what was sent after it is moot, and openraft starts a
/// new stream from what the follower holds. A request without entries (a commit notice) is held for `linger`
/// and dropped if another request comes meanwhile: that one carries the same `prev_log_id` and the same or a later
/// commit, and its answer acknowledges both (openraft drains every request up to the log id an answer matches).
fn pipelined_appends<S>(
    link: GroupLink,
    mut input: S,
    timeout: Duration,
    linger: Duration,
) -> BoxStream<'static, Result<StreamAppendResult<C>, RPCError<C>>>
where
    S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
{
    let mut inflight = FuturesOrdered::new();
    let (mut input_done, mut stopped) = (false, false);
    // A commit notice held back, and until when.
    let mut held: Option<(AppendEntriesRequest<C>, Pin<Box<tokio::time::Sleep>>)> = None;
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        if stopped {
            return Poll::Ready(None);
        }
        let send = |rpc: AppendEntriesRequest<C>| {
            let prev = rpc.prev_log_id;
            let last = rpc.entries.last().map(|e| e.log_id).or(prev);
            let answer = link.peers.raft_send(link.target, link.group, RaftOp::Append, &rpc, timeout);
            answer.map(move |a: io::Result<AppendEntriesResponse<C>>| (a, prev, last))
        };
        while !input_done && inflight.len() < APPEND_PIPELINE {
            match input.poll_next_unpin(cx) {
                // A request with no entries only moves the follower's commit: held back, it is superseded by the
                // next request (which carries the same commit or a later one) if that comes within the linger.
                Poll::Ready(Some(rpc)) if rpc.entries.is_empty() => {
                    // The first notice held sets the deadline; a later one replaces it, not the deadline.
                    let until = held.take().map_or_else(|| Box::pin(tokio::time::sleep(linger)), |(_, until)| until);
                    held = Some((rpc, until));
                }
                Poll::Ready(Some(rpc)) => {
                    held = None;
                    inflight.push_back(send(rpc));
                }
                Poll::Ready(None) => input_done = true,
                Poll::Pending => break,
            }
        }
        let room = inflight.len() < APPEND_PIPELINE;
        if let Some((rpc, _)) = held.take_if(|(_, until)| (input_done || until.as_mut().poll(cx).is_ready()) && room) {
            inflight.push_back(send(rpc));
        }
        match inflight.poll_next_unpin(cx) {
            Poll::Ready(Some((answer, prev, last))) => {
                let item = match answer {
                    Ok(response) => {
                        stopped = match &response {
                            AppendEntriesResponse::Success => false,
                            AppendEntriesResponse::PartialSuccess(took) => *took != last,
                            _ => true,
                        };
                        Ok(response.into_stream_result(prev, last))
                    }
                    Err(e) => {
                        stopped = true;
                        Err(unreachable(e))
                    }
                };
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) if input_done && held.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::post;

    use super::*;

    /// A peer that answers each `/raft/batch` request, after `delay`, with what `answer` makes of its messages.
    async fn batch_peer<F>(delay: Duration, answer: F) -> std::net::SocketAddr
    where
        F: Fn(Vec<Envelope>) -> Vec<Reply> + Clone + Send + Sync + 'static,
    {
        let app = axum::Router::new().route(
            "/raft/batch",
            post(move |body: Bytes| {
                let answer = answer.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let batch: Vec<Envelope> = postcard::from_bytes(&body).expect("a batch");
                    postcard::to_allocvec(&answer(batch)).expect("encode")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A peer that answers each message of a batch with its body (a number) plus one, slowly, counting requests.
    async fn peer(requests: Arc<AtomicUsize>) -> std::net::SocketAddr {
        batch_peer(Duration::from_millis(5), move |batch| {
            requests.fetch_add(1, Ordering::Relaxed);
            let reply = |m: &Envelope| {
                let n: u32 = postcard::from_bytes(&m.body).map_err(|e| e.to_string())?;
                Ok(Bytes::from(postcard::to_allocvec(&(n + 1)).map_err(|e| e.to_string())?))
            };
            batch.iter().map(reply).collect()
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_sends_what_queued_together_and_answers_each_caller_its_own() {
        let requests = Arc::new(AtomicUsize::new(0));
        let addr = peer(requests.clone()).await;
        let node = PeerNode { id: "p".into(), peer: addr.to_string(), http: String::new() };
        let peers = Peers::new(BTreeMap::from([(1, node)]), 1024, None);
        let calls = (0..200u32).map(|g| {
            let peers = peers.clone();
            async move { peers.raft_send::<u32, u32>(1, g, RaftOp::Vote, &(g * 7), Duration::from_secs(5)).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        for (g, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.expect("answered"), g as u32 * 7 + 1, "caller {g} got another's answer");
        }
        let n = requests.load(Ordering::Relaxed);
        assert!(n <= 10, "200 messages raised together took {n} requests");
        // A peer no table names fails at once, whatever is queued elsewhere.
        let err = peers.raft_send::<u32, u32>(9, 0, RaftOp::Vote, &0, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("no address known for node 9"), "{err}");
    }

    #[test]
    fn a_lane_ticket_reads_back_as_written() {
        let ticket = LaneTicket { lane: 0xdead_beef_0123, seq: 42, oldest: 40 };
        assert_eq!(ticket.to_string().parse::<LaneTicket>(), Ok(ticket));
        // The oldest unanswered batch cannot come after the batch itself.
        for bad in ["", "12", "x.1.1", "1.2", "1.2.", ".1.1", "1.2.3", "1.2.1.0", "-1.2.1"] {
            assert!(bad.parse::<LaneTicket>().is_err(), "{bad:?} was taken");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lanes_batches_take_their_turns_in_the_order_they_were_sent() {
        let turns = Arc::new(LaneTurns { wait_max: Duration::from_secs(30), ..LaneTurns::default() });
        let at_once = Duration::from_secs(5);
        // Batches 6 and 7 leave while 5 is unanswered.
        let t = |seq| LaneTicket { lane: 7, seq, oldest: 5 };
        let fifth = tokio::time::timeout(at_once, turns.wait(t(5))).await.expect("the first batch starts its lane");
        let order = Arc::new(Mutex::new(Vec::new()));
        let batch = |seq: u64| {
            let (turns, order) = (turns.clone(), order.clone());
            tokio::spawn(async move {
                let _turn = turns.wait(t(seq)).await.expect("in its turn");
                order.lock().unwrap().push(seq);
            })
        };
        let (seventh, sixth) = (batch(7), batch(6));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(order.lock().unwrap().is_empty(), "6 and 7 went before 5 handed its messages over");
        drop(fifth);
        sixth.await.unwrap();
        seventh.await.unwrap();
        assert_eq!(*order.lock().unwrap(), [6, 7]);
        // A batch whose turn has passed is refused; another lane is not held up by this one.
        assert_eq!(turns.wait(t(6)).await.unwrap_err(), Late, "a late batch is refused");
        let other = tokio::time::timeout(at_once, turns.wait(LaneTicket { lane: 8, seq: 100, oldest: 100 })).await;
        assert!(other.expect("another lane goes at once").is_ok());
    }

    #[tokio::test]
    async fn a_batch_lost_on_the_way_is_waited_for_only_so_long() {
        let turns = LaneTurns::default();
        let t = |seq| LaneTicket { lane: 1, seq, oldest: seq.min(1) };
        drop(turns.wait(t(0)).await.expect("first"));
        // Batch 1 never comes: batch 2 waits for it `TURN_WAIT`, no longer, and the lane goes on after 2.
        let started = Instant::now();
        let second = turns.wait(t(2)).await.expect("in its turn once the wait is over");
        let waited = started.elapsed();
        assert!(waited >= TURN_WAIT && waited < TURN_WAIT * 20, "batch 2 waited {waited:?}");
        // Batch 1 coming now, while batch 2 holds the turn it waited out, or after, would reach its groups after
        // batch 2: it is refused.
        assert_eq!(turns.wait(t(1)).await.unwrap_err(), Late);
        drop(second);
        assert_eq!(turns.wait(t(1)).await.unwrap_err(), Late);
        let third = tokio::time::timeout(Duration::from_secs(5), turns.wait(t(3))).await;
        assert!(third.expect("batch 3 goes at once").is_ok());
        // The largest sequence number ends its turn like any other.
        let t = |seq| LaneTicket { lane: 2, seq, oldest: seq };
        drop(turns.wait(t(u64::MAX)).await.expect("the first batch starts its lane"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_starts_at_its_oldest_unanswered_batch_and_never_waits_for_an_answered_one() {
        let turns = Arc::new(LaneTurns { wait_max: Duration::from_secs(30), ..LaneTurns::default() });
        let at_once = Duration::from_secs(5);
        // A new lane (or a peer just restarted) hears batch 1 first, sent while batch 0 was unanswered: it waits
        // for 0, which is then not refused as late.
        let t = |seq, oldest| LaneTicket { lane: 3, seq, oldest };
        let second = tokio::spawn({
            let turns = turns.clone();
            async move { drop(turns.wait(t(1, 0)).await.expect("in its turn")) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "batch 1 went before batch 0");
        let first = tokio::time::timeout(at_once, turns.wait(t(0, 0))).await.expect("batch 0 goes at once");
        drop(first.expect("batch 0 is not late"));
        tokio::time::timeout(at_once, second).await.expect("batch 1 goes after 0").unwrap();
        // Batch 2 was given up on by the sender (it never came): batch 3, sent after that, does not wait for it.
        let third = tokio::time::timeout(at_once, turns.wait(t(3, 3))).await.expect("batch 3 goes at once");
        drop(third.expect("in its turn"));
        assert_eq!(turns.wait(t(2, 2)).await.unwrap_err(), Late, "batch 2 arriving now is late");
        // Batch 8 waits for 7; batch 9 then says the sender gave up on both: 8 is told at once that it is late,
        // and is not handed over once its wait is out.
        drop(tokio::time::timeout(at_once, turns.wait(t(4, 4))).await.expect("at once").expect("in its turn"));
        drop(turns.wait(t(5, 5)).await.expect("batch 5"));
        let eighth = tokio::spawn({
            let turns = turns.clone();
            async move { turns.wait(t(8, 7)).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ninth = tokio::time::timeout(at_once, turns.wait(t(9, 9))).await.expect("batch 9 goes at once");
        let eighth = tokio::time::timeout(at_once, eighth).await.expect("batch 8 is told at once").unwrap();
        assert_eq!(eighth, Err(Late));
        drop(ninth);
    }

    fn chunk(term: u64, offset: u64, total: u64, data: &[u8]) -> SnapshotChunk {
        SnapshotChunk {
            vote: VoteOf::<C>::new(term, 1),
            meta: SnapshotMetaOf::<C>::default(),
            offset,
            total,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn a_snapshot_is_whole_only_after_its_last_chunk() {
        let mut a = SnapshotAssembler::default();
        assert!(a.accept(7, chunk(1, 0, 10, b"0123")).unwrap().is_none());
        assert!(a.accept(7, chunk(1, 4, 10, b"4567")).unwrap().is_none());
        // Another group's snapshot does not disturb this one.
        assert!(a.accept(8, chunk(1, 0, 3, b"abc")).unwrap().is_some());
        let whole = a.accept(7, chunk(1, 8, 10, b"89")).unwrap().expect("whole after the last byte");
        assert_eq!(whole.data, b"0123456789");
        assert_eq!((a.chunks, a.completed), (4, 2));
        assert!(a.partial.is_empty(), "nothing is kept after a snapshot is whole");
    }

    #[test]
    fn chunks_that_do_not_continue_the_snapshot_are_refused_and_change_nothing() {
        let mut a = SnapshotAssembler::default();
        a.accept(1, chunk(1, 0, 10, b"0123")).unwrap();
        let refused = [
            chunk(1, 6, 10, b"67"),                    // a gap
            chunk(1, 2, 10, b"23"),                    // a repeat
            chunk(2, 4, 10, b"4567"),                  // another snapshot (another leader's)
            chunk(1, 4, 12, b"4567"),                  // another size
            chunk(1, 8, 10, b"89ab"),                  // past the end
            chunk(1, 4, 10, b""),                      // empty, in the middle
            chunk(1, 0, MAX_SNAPSHOT_BYTES + 1, b"x"), // too large
        ];
        for c in refused {
            let what = format!("{} +{} of {}", c.offset, c.data.len(), c.total);
            assert!(a.accept(1, c).is_err(), "{what} was taken");
        }
        assert!(a.accept(2, chunk(1, 4, 10, b"4567")).is_err(), "a middle chunk with no start is refused");
        // The snapshot under way is intact: it completes as if nothing had come in between.
        a.accept(1, chunk(1, 4, 10, b"4567")).unwrap();
        assert_eq!(a.accept(1, chunk(1, 8, 10, b"89")).unwrap().unwrap().data, b"0123456789");
    }

    #[test]
    fn a_chunk_at_offset_zero_starts_over() {
        let mut a = SnapshotAssembler::default();
        a.accept(1, chunk(1, 0, 6, b"abc")).unwrap();
        a.accept(1, chunk(2, 0, 4, b"wx")).unwrap();
        assert_eq!(a.accept(1, chunk(2, 2, 4, b"yz")).unwrap().unwrap().data, b"wxyz");
        assert_eq!(a.accept(1, chunk(3, 0, 0, b"")).unwrap().unwrap().data, b"", "an empty snapshot is whole at once");
    }

    /// A peer that cannot be connected to was certainly not sent the request (a forwarded write may then go to
    /// another node); one that answers, even with an error, may have been.
    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = listener.local_addr().expect("address");
        drop(listener);
        let refused = Peers::call_addr::<u8, u8>(closed, "/internal/0", &1, Duration::from_secs(2), None).await;
        assert!(matches!(refused, Err(CallError::Connect(..))), "{refused:?}");
        let answering = peer(Arc::default()).await;
        let answered = Peers::call_addr::<u8, u8>(answering, "/nowhere", &1, Duration::from_secs(2), None).await;
        assert!(matches!(answered, Err(CallError::Status(_, StatusCode::NOT_FOUND))), "{answered:?}");
    }

    /// What a follower stand-in received: per append, its entries and the commit it carried.
    type Received = Arc<Mutex<Vec<(usize, Option<u64>)>>>;

    /// A follower stand-in that takes every append and records it.
    async fn follower(received: Received) -> std::net::SocketAddr {
        batch_peer(Duration::ZERO, move |batch| {
            let reply = |m: &Envelope| {
                let rpc: AppendEntriesRequest<C> = postcard::from_bytes(&m.body).expect("an append");
                received.lock().expect("lock").push((rpc.entries.len(), rpc.leader_commit.map(|c| c.index)));
                Ok(Bytes::from(postcard::to_allocvec(&AppendEntriesResponse::<C>::Success).expect("encode")))
            };
            batch.iter().map(reply).collect()
        })
        .await
    }

    /// An append after entry `prev` carrying entries `prev + 1 ..= last` (none if `last == prev`) and `commit`.
    fn append(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<C> {
        use openraft::entry::RaftEntry;
        let log_id = |index| openraft::testing::log_id::<C>(1, 1, index);
        let entries = (prev + 1..=last)
            .map(|i| {
                openraft::type_config::alias::EntryOf::<C>::new_normal(
                    log_id(i),
                    crate::types::Command { at_ms: i, ops: vec![] },
                )
            })
            .collect();
        AppendEntriesRequest {
            vote: VoteOf::<C>::new(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_notice_is_superseded_by_the_append_after_it_or_sent_once_its_wait_is_over() {
        let received = Received::default();
        let node = PeerNode { id: "f".into(), peer: follower(received.clone()).await.to_string(), http: String::new() };
        let link = GroupLink { peers: Peers::new(BTreeMap::from([(1, node)]), 1024, None), target: 1, group: 0 };
        let answered = |results: Vec<Result<StreamAppendResult<C>, RPCError<C>>>| -> Vec<u64> {
            results.into_iter().map(|r| r.expect("answered").expect("matched").map_or(0, |l| l.index)).collect()
        };
        let timeout = Duration::from_secs(5);
        let take = |received: &Received| std::mem::take(&mut *received.lock().expect("lock"));

        // Long enough that a notice sent at once is told from one held, however loaded the machine.
        let linger = Duration::from_millis(300);
        let soon = Duration::from_millis(50);

        // A notice with an append right behind it: only the append goes, and its answer covers both.
        let input = futures_util::stream::iter([append(5, 5, 3), append(5, 7, 4)]);
        let results = pipelined_appends(link.clone(), input, timeout, linger).collect::<Vec<_>>().await;
        assert_eq!(answered(results), [7]);
        assert_eq!(take(&received), [(2, Some(4))]);

        // Notices one after another, then the leader has no more: the last goes (it carries the latest commit).
        let input = futures_util::stream::iter([append(7, 7, 5), append(7, 7, 6)]);
        let results = pipelined_appends(link.clone(), input, timeout, linger).collect::<Vec<_>>().await;
        assert_eq!(answered(results), [7]);
        assert_eq!(take(&received), [(0, Some(6))]);

        // The input as openraft makes it, one request at a time.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let input = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut results = pipelined_appends(link, input, timeout, linger);

        // A notice held while nothing follows, then an append within the wait: only the append goes.
        tx.send(append(7, 7, 7)).expect("queued");
        assert!(tokio::time::timeout(soon, results.next()).await.is_err(), "the notice was answered at once");
        assert_eq!(take(&received), [], "the notice went at once");
        tx.send(append(7, 9, 7)).expect("queued");
        let next = tokio::time::timeout(timeout, results.next()).await.expect("sent").expect("an answer");
        assert_eq!(answered(vec![next]), [9]);
        assert_eq!(take(&received), [(2, Some(7))]);

        // A notice with nothing behind it goes once its wait is over, and not before.
        let started = Instant::now();
        tx.send(append(9, 9, 9)).expect("queued");
        assert!(tokio::time::timeout(soon, results.next()).await.is_err(), "the notice was answered at once");
        assert_eq!(take(&received), [], "the notice went at once");
        let next = tokio::time::timeout(timeout, results.next()).await.expect("sent").expect("an answer");
        assert!(started.elapsed() >= linger, "sent after {:?}", started.elapsed());
        assert_eq!(answered(vec![next]), [9]);
        assert_eq!(take(&received), [(0, Some(9))]);
    }
}
