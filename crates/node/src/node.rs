//! The node: one Raft group per partition it replicates, the peer RPC server, and request routing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftMetrics;
use openraft::raft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Raft, ServerState, Snapshot};
use rampart_ring::{Node as RingNode, NodeId as RingNodeId, PartitionId, Placement, PlacementConfig, Zone};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use rampart_membership::{Config as MembershipConfig, Meta, Profile};
use rampart_membership_net::Membership;

use crate::config::{Bootstrap, NodeConfig};
use crate::network::{CallError, GroupNetwork, Peers, SnapshotRpc, MAX_BODY};
use crate::store::{StateMachine, Store};
use crate::types::{raft_id, Command, CommandResult, GroupId, PeerNode, RaftId, TypeConfig};

type C = TypeConfig;
pub type GroupRaft = Raft<C, StateMachine>;

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leader waits for a write to commit before answering that its outcome is unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a node could not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    Mismatch(String),
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("placement: {0}")]
    Placement(#[from] rampart_ring::PlacementError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
}

/// Why a request could not be served. Each maps to one HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestError {
    /// The partition has no leader right now (election under way, or no quorum). Nothing was applied; retrying
    /// is safe.
    #[error("partition {0} has no leader; retry shortly")]
    Unavailable(GroupId),
    /// The write reached a leader that stopped answering (crashed, lost its quorum, timed out): it may or may
    /// not have been applied. Retrying is safe only for an idempotent request.
    #[error("partition {0}: the write may or may not have been applied")]
    Indeterminate(GroupId),
    /// Storage failed on the serving node.
    #[error("storage failure: {0}")]
    Internal(String),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub config: NodeConfig,
    pub me: RaftId,
    pub placement: Placement,
    pub store: Arc<Store>,
    pub peers: Peers,
    pub groups: BTreeMap<GroupId, GroupRaft>,
    /// Failure detection: UDP on the peer port number, fallback probes over HTTP to the peer RPC server.
    pub membership: Arc<Membership>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Opens storage, starts a Raft group for every partition this node replicates, serves peer RPC on
    /// `--peer`, and initializes the groups it is the first replica of (on a fresh cluster only).
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, StartError> {
        let Bootstrap::Initial(members) = &config.bootstrap else {
            return Err(StartError::Unsupported(
                "--join needs the metadata group, which is not built yet: start every node with --initial-cluster",
            ));
        };
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("rampart.redb"))?;
        // P and R are fixed at cluster creation: a node restarted with other values would route keys to the wrong
        // groups, so the first start records them and later starts must match.
        let shape = (config.partitions, config.replicas);
        match store.cluster_shape()? {
            None => store.set_cluster_shape(shape).await?,
            Some(recorded) if recorded != shape => {
                return Err(StartError::Mismatch(format!(
                    "this data directory belongs to a cluster of {} partitions x {} replicas, not {} x {}",
                    recorded.0, recorded.1, shape.0, shape.1
                )))
            }
            Some(_) => {}
        }
        let me = raft_id(&config.id);
        // Every node derives the same peer table and placement from the same initial cluster list.
        let mut nodes = BTreeMap::new();
        let mut ring_nodes = Vec::new();
        for (id, peer) in members {
            let http = if *id == config.id { config.http.to_string() } else { String::new() };
            nodes.insert(raft_id(id), PeerNode { id: id.clone(), peer: peer.to_string(), http });
            ring_nodes.push(RingNode::new(RingNodeId::new(id.clone())?).in_zone(Zone::new(config.zone.clone())?));
        }
        let placement = Placement::new(
            PlacementConfig { partitions: config.partitions, replicas: config.replicas, vnodes: 160 },
            ring_nodes,
        )?;
        let peers = Peers::new(nodes.clone());
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "rampart".into(),
                heartbeat_interval: config.heartbeat.as_millis() as u64,
                election_timeout_min: config.election_timeout.as_millis() as u64,
                election_timeout_max: config.election_timeout.as_millis() as u64 * 2,
                install_snapshot_timeout: 10_000,
                ..openraft::Config::default()
            }
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let mut groups = BTreeMap::new();
        let mut founders = Vec::new();
        for p in 0..config.partitions {
            let replicas: Vec<RaftId> = placement
                .replicas(PartitionId(p))
                .map(|r| r.map(|n| raft_id(n.id.as_str())).collect())
                .unwrap_or_default();
            if !replicas.contains(&me) {
                continue;
            }
            let network = GroupNetwork { peers: peers.clone(), group: p };
            let raft = Raft::new(me, raft_config.clone(), network, store.log(p), store.state_machine(p))
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            if replicas.first() == Some(&me) {
                founders.push((p, replicas));
            }
            groups.insert(p, raft);
        }
        let seeds: Vec<std::net::SocketAddr> =
            members.iter().filter(|(id, _)| **id != config.id).map(|(_, addr)| *addr).collect();
        let meta = Meta { http: Some(config.http.to_string()), zone: config.zone.clone(), weight: config.weight };
        let membership_config = MembershipConfig { seed: me, ..MembershipConfig::profile(Profile::Lan) };
        let membership = Arc::new(
            Membership::start_udp_http_fallback(membership_config, config.id.clone(), config.peer, meta, seeds)
                .await
                .map_err(|e| StartError::Raft(format!("membership: {e}")))?,
        );
        let node = Arc::new(Node {
            config,
            me,
            placement,
            store,
            peers,
            groups,
            membership,
            server: std::sync::Mutex::new(None),
        });
        let listener = TcpListener::bind(node.config.peer).await.map_err(|e| StartError::Bind(node.config.peer, e))?;
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = peer_router(node.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("peer server stopped: {e}");
            }
        });
        if let Ok(mut s) = node.server.lock() {
            *s = Some(server);
        }
        for (p, replicas) in founders {
            let raft = &node.groups[&p];
            // Only a group that never had a log is initialized; a restarted node finds its state on disk.
            if raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
                continue;
            }
            let members: BTreeMap<RaftId, PeerNode> =
                replicas.iter().filter_map(|r| node.peers.nodes().get(r).map(|n| (*r, n.clone()))).collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::warn!("partition {p}: initialize: {e}");
            }
        }
        Ok(node)
    }

    /// The partition a key belongs to.
    pub fn partition_of(&self, key: &str) -> GroupId {
        self.placement.partition_of(key.as_bytes()).0
    }

    /// The replicas of a partition, in preference order.
    pub fn replicas(&self, group: GroupId) -> Vec<RaftId> {
        self.placement
            .replicas(PartitionId(group))
            .map(|r| r.map(|n| raft_id(n.id.as_str())).collect())
            .unwrap_or_default()
    }

    pub fn metrics(&self, group: GroupId) -> Option<RaftMetrics<C>> {
        self.groups.get(&group).map(|r| r.metrics().borrow_watched().clone())
    }

    /// Commits `command` in its partition: locally if this node leads it, else through the leader.
    pub async fn write(&self, group: GroupId, command: Command) -> Result<CommandResult, RequestError> {
        self.route(group, Op::Write(command)).await.map(|r| match r {
            OpResult::Written(w) => w,
            OpResult::Read(_) => CommandResult::default(),
        })
    }

    /// A linearizable read of `key` in its partition.
    pub async fn read(&self, group: GroupId, key: String) -> Result<Option<String>, RequestError> {
        self.route(group, Op::Read(key)).await.map(|r| match r {
            OpResult::Read(v) => v,
            OpResult::Written(_) => None,
        })
    }

    async fn route(&self, group: GroupId, op: Op) -> Result<OpResult, RequestError> {
        let leader = match self.groups.get(&group) {
            Some(raft) => {
                let m = raft.metrics().borrow_watched().clone();
                if m.state == ServerState::Leader {
                    return self.serve_local(group, op).await;
                }
                m.current_leader
            }
            None => None,
        };
        // Not the leader here: ask the leader if known, else the replicas in turn (one hop; they do not forward).
        let mut targets: Vec<RaftId> = leader.into_iter().collect();
        targets.extend(self.replicas(group).into_iter().filter(|r| *r != self.me && Some(*r) != leader));
        let is_write = matches!(op, Op::Write(_));
        for target in targets {
            let answer: Result<Result<OpResult, Forward>, CallError> =
                self.peers.call(target, &format!("/internal/{group}"), &op, FORWARD_TIMEOUT).await;
            match answer {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Forward::Error(e))) => return Err(e),
                Ok(Err(Forward::NotLeader)) | Err(CallError::Connect(..) | CallError::UnknownPeer(_)) => continue,
                // The write may have reached a leader: sending it to another node could apply it twice.
                Err(_) if is_write => return Err(RequestError::Indeterminate(group)),
                Err(_) => continue,
            }
        }
        Err(RequestError::Unavailable(group))
    }

    /// Serves `op` on this node's replica of `group` (it believes it is the leader).
    async fn serve_local(&self, group: GroupId, op: Op) -> Result<OpResult, RequestError> {
        let raft = self.groups.get(&group).ok_or(RequestError::Unavailable(group))?;
        match op {
            Op::Write(command) => match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
                Ok(Ok(r)) => Ok(OpResult::Written(r.data)),
                // Refused before it was proposed: nothing was applied.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    Err(RequestError::Unavailable(group))
                }
                // Proposed and then discarded, a fatal stop, or no commit in time: the outcome is unknown.
                Ok(Err(e)) => {
                    tracing::debug!("partition {group}: write: {e}");
                    Err(RequestError::Indeterminate(group))
                }
                Err(_) => Err(RequestError::Indeterminate(group)),
            },
            Op::Read(key) => {
                raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|_| RequestError::Unavailable(group))?;
                self.store.get(group, &key).map(OpResult::Read).map_err(|e| RequestError::Internal(e.to_string()))
            }
        }
    }

    /// Leaves the cluster's membership, then stops every group and the peer server.
    pub async fn shutdown(&self) {
        self.membership.leave().await;
        for raft in self.groups.values() {
            let _ = raft.shutdown().await;
        }
        if let Ok(mut s) = self.server.lock() {
            if let Some(h) = s.take() {
                h.abort();
            }
        }
    }

    /// Partitions this node replicates whose leader is unknown.
    pub fn leaderless(&self) -> BTreeSet<GroupId> {
        self.groups
            .iter()
            .filter(|(_, r)| r.metrics().borrow_watched().current_leader.is_none())
            .map(|(g, _)| *g)
            .collect()
    }
}

/// A request forwarded to the node that should serve it.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Write(Command),
    Read(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum OpResult {
    Written(CommandResult),
    Read(Option<String>),
}

/// Why a forwarded request was not served by the node it reached.
#[derive(Debug, Serialize, Deserialize)]
enum Forward {
    /// That node does not lead the partition (try another).
    NotLeader,
    /// It leads it, and the request failed there.
    Error(RequestError),
}

fn postcard_response<T: Serialize>(value: &T) -> Response {
    match postcard::to_allocvec(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

/// The peer RPC server: Raft messages per group and forwarded requests.
fn peer_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/raft/{group}/{op}", post(raft_rpc))
        .route("/internal/{group}", post(forwarded))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node.clone())
        .merge(rampart_membership_net::http::router(node.membership.clone()))
}

async fn raft_rpc(State(node): State<Arc<Node>>, Path((group, op)): Path<(GroupId, String)>, body: Bytes) -> Response {
    let Some(raft) = node.groups.get(&group) else {
        return postcard_response(&Err::<(), String>(format!("partition {group} is not hosted here")));
    };
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match op.as_str() {
        "append" => match postcard::from_bytes(&body) {
            Ok(rpc) => postcard_response(&raft.append_entries(rpc).await.map_err(|e| err(&e))),
            Err(e) => bad_request(e),
        },
        "vote" => match postcard::from_bytes(&body) {
            Ok(rpc) => postcard_response(&raft.vote(rpc).await.map_err(|e| err(&e))),
            Err(e) => bad_request(e),
        },
        "pre_vote" => match postcard::from_bytes(&body) {
            Ok(rpc) => postcard_response(&raft.pre_vote(rpc).await.map_err(|e| err(&e))),
            Err(e) => bad_request(e),
        },
        "snapshot" => match postcard::from_bytes::<SnapshotRpc>(&body) {
            Ok(rpc) => {
                let snapshot = Snapshot { meta: rpc.meta, snapshot: Cursor::new(rpc.data) };
                postcard_response(&raft.install_full_snapshot(rpc.vote, snapshot).await.map_err(|e| err(&e)))
            }
            Err(e) => bad_request(e),
        },
        _ => (StatusCode::NOT_FOUND, "unknown raft operation").into_response(),
    }
}

async fn forwarded(State(node): State<Arc<Node>>, Path(group): Path<GroupId>, body: Bytes) -> Response {
    let op: Op = match postcard::from_bytes(&body) {
        Ok(op) => op,
        Err(e) => return bad_request(e),
    };
    let leads = node.groups.get(&group).is_some_and(|r| r.metrics().borrow_watched().state == ServerState::Leader);
    let answer: Result<OpResult, Forward> =
        if leads { node.serve_local(group, op).await.map_err(Forward::Error) } else { Err(Forward::NotLeader) };
    postcard_response(&answer)
}
