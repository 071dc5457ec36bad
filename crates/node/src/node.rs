//! The node: one Raft group per partition it replicates, the peer RPC server, and request routing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::future::{join_all, maybe_done};
use openraft::error::{ClientWriteError, RaftError};
use openraft::metrics::RaftMetrics;
use openraft::raft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{Raft, ServerState, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use rampart_membership::{Config as MembershipConfig, Meta, Profile};
use rampart_membership_net::Membership;

use crate::cluster::{AdminError, AdminOp, Cluster, ClusterConfig, Member, META_GROUP};
use crate::config::{Bootstrap, NodeConfig, DEFAULT_ZONE};
use crate::network::{
    CallError, Envelope, GroupNetwork, LaneTicket, LaneTurns, Late, Peers, RaftOp, Reply, SnapshotAssembler,
    SnapshotChunk, LANE_HEADER, MAX_BODY,
};
use crate::quiesce::Quiet;
use crate::store::{StateMachine, Store};
use crate::types::{raft_id, Command, GroupId, Op, OpOutcome, PeerNode, RaftId, TypeConfig};
use rampart_trading::{HoldState, Item, Order, OrderId, OrderStatus, Outcome, Product, Rejection, Sku};
use tokio::sync::{mpsc, oneshot, Semaphore};

type C = TypeConfig;
pub type GroupRaft = Raft<C, StateMachine>;

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leader may take to confirm its leadership for a linearizable read.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader waits for a quorum to confirm it before a write or membership change after a lapsed lease.
const LEASE_CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a leader waits for a write to commit before answering that its outcome is unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Operations waiting for a partition's next entry; beyond this a write is refused as `unavailable`.
const QUEUE_MAX: usize = 16_384;
/// The shortest wait, at founding, before a founding replica creates a group its first replica has not created.
const FOUNDING_GRACE_MIN: Duration = Duration::from_secs(1);
/// The most operations one entry carries.
const BATCH_OPS_MAX: usize = 1024;
/// Entries of one partition proposed and not yet applied. While they are all in flight, new operations queue
/// and go together in the next entry: the busier a partition, the bigger its entries. One: a second entry in
/// flight (even with appends pipelined to the followers) cost the hot partition twice the entries, each paying a
/// commit and a Raft round on every replica, and gained less than a second lane window (BENCHMARKS.md,
/// "Pipelined appends").
const INFLIGHT_MAX: usize = 1;
/// An entry waits for the callers the entry before it answered only if that entry carried at least this many
/// operations (see [`Batcher`]): a partition written by a few callers at a time goes at once.
const GATHER_AFTER_OPS: usize = 4;
/// The longest an entry waits for those callers, from its first operation (tokio's timer rounds the deadline up
/// to its next millisecond tick: a wait that runs out lasts 1–2 ms).
const GATHER_FOR: Duration = Duration::from_millis(1);
/// Entries that go without waiting after a wait ran out.
const GATHER_SKIP: u32 = 16;
/// How often a leader looks for unpaid orders past their deadline.
const EXPIRY_EVERY: Duration = Duration::from_millis(500);

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
    /// A majority of the cluster refuses this node as another cluster's ([`Node::shut_out_reason`]).
    #[error("{0}")]
    ShutOut(String),
}

/// How errors and logs name a group.
pub(crate) fn group_name(group: GroupId) -> String {
    if group == META_GROUP {
        "the metadata group".into()
    } else {
        format!("partition {group}")
    }
}

/// Why a request could not be served. Each maps to one HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestError {
    /// The partition has no leader right now (election under way, or no quorum). Nothing was applied; retrying
    /// is safe.
    #[error("{} has no leader; retry shortly", group_name(*.0))]
    Unavailable(GroupId),
    /// The write reached a leader that stopped answering (crashed, lost its quorum, timed out): it may or may
    /// not have been applied. Retrying is safe only for an idempotent request.
    #[error("{}: the write may or may not have been applied", group_name(*.0))]
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
    pub store: Arc<Store>,
    pub peers: Peers,
    /// Failure detection: UDP on the peer port number, fallback probes over HTTP to the peer RPC server.
    pub membership: Arc<Membership>,
    /// The cluster configuration in force here and its placement (replaced when a newer one arrives).
    pub(crate) cluster: std::sync::RwLock<Arc<Cluster>>,
    /// The Raft groups this node runs, each with its queue of operations for its next entry.
    groups: std::sync::RwLock<BTreeMap<GroupId, Hosted>>,
    raft_config: Arc<openraft::Config>,
    /// Configuration changes are made one at a time.
    pub(crate) admin_lock: tokio::sync::Mutex<()>,
    /// On the metadata leader: the members not heard from, since when, and the last one replaced.
    pub(crate) replacing: tokio::sync::Mutex<Replacing>,
    /// The state membership last gave each configured member since this node started, kept after membership
    /// forgets a dead or departed member (for `GET /v1/cluster`).
    pub(crate) last_heard: std::sync::Mutex<BTreeMap<String, rampart_membership::State>>,
    /// The epoch of the configuration last recorded in the store (see `Node::record_config`).
    pub(crate) recorded_epoch: std::sync::Mutex<Option<u64>>,
    /// Entries proposed by this node's proposers, and the operations they carried (for `/metrics`).
    pub proposed: Arc<ProposeStats>,
    /// Latency of the HTTP API's requests (for `/metrics`).
    pub latency: crate::telemetry::RequestLatency,
    /// Snapshots being received, chunk by chunk.
    pub snapshots_in: std::sync::Mutex<SnapshotAssembler>,
    /// The order in which each peer lane's batches are handed to the groups.
    lane_turns: LaneTurns,
    /// Peer requests refused for want of the cluster token (for `/metrics`).
    pub peer_refused: std::sync::atomic::AtomicU64,
    /// Appends handed to this node's groups by their leaders (for `/metrics`).
    pub appends_in: std::sync::atomic::AtomicU64,
    /// Of those, the ones that carried no entries: heartbeats and commit notices (for `/metrics`).
    pub empty_appends_in: std::sync::atomic::AtomicU64,
    /// Whether a peer request of another cluster was already logged (once is enough to name the problem).
    warned_identity: std::sync::atomic::AtomicBool,
    /// Set once a majority of the cluster refuses this node as another cluster's: the node stops, saying why.
    pub(crate) shut_out: tokio::sync::watch::Sender<Option<String>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The metadata leader's replacement clocks (`Node::replace_dead`).
#[derive(Debug, Default)]
pub(crate) struct Replacing {
    /// Members this node does not hear from, and since when.
    pub(crate) since: BTreeMap<String, std::time::Instant>,
    /// When the last member was replaced.
    pub(crate) last: Option<std::time::Instant>,
}

/// A Raft group this node runs.
#[derive(Debug)]
struct Hosted {
    raft: GroupRaft,
    proposer: mpsc::Sender<Proposal>,
    task: JoinHandle<()>,
    /// Leaders this node has seen the group elect since it started hosting it (for `/metrics`).
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    watcher: JoinHandle<()>,
    quiet: Arc<Quiet>,
}

/// What this node's proposers sent (for `/metrics`).
#[derive(Debug, Default)]
pub struct ProposeStats {
    pub entries: std::sync::atomic::AtomicU64,
    pub ops: std::sync::atomic::AtomicU64,
    /// Entries that waited for the callers the entry before answered.
    pub gathered: std::sync::atomic::AtomicU64,
    /// Of those, the ones whose wait ran out before every caller was back.
    pub gather_missed: std::sync::atomic::AtomicU64,
}

/// One operation waiting to be proposed, and where its outcome goes.
type Proposal = (Op, oneshot::Sender<Result<OpOutcome, RequestError>>);

impl Node {
    /// Opens storage, learns the cluster configuration (from `--initial-cluster`, the metadata group, or the
    /// node named by `--join`), starts a Raft group for every partition this node replicates, serves peer RPC on
    /// `--peer`, and initializes the groups it is the first replica of (once, on a fresh cluster).
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, StartError> {
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
        let this = Member { id: config.id.clone(), zone: config.zone.clone(), weight: config.weight };
        let this_addr =
            PeerNode { id: config.id.clone(), peer: config.peer.to_string(), http: config.http.to_string() };
        // The configuration this node last had in force, if it ran before.
        let recorded: Option<ClusterConfig> = store.config_record()?.and_then(|json| serde_json::from_str(&json).ok());
        let (cluster_config, seeds) = match &config.bootstrap {
            Bootstrap::Initial(members) => {
                // Every founder must derive the same first configuration from the same list, so founders are placed
                // with the zone and weight the list gives them (a node that joins later brings its own): founders
                // computing different placements would each initialize groups of their own.
                let founders: Vec<Member> = members
                    .iter()
                    .map(|(id, f)| Member { id: id.clone(), zone: f.zone.clone(), weight: f.weight })
                    .collect();
                let addrs: BTreeMap<String, PeerNode> = members
                    .iter()
                    .map(|(id, f)| {
                        let http = if *id == config.id { config.http.to_string() } else { String::new() };
                        (id.clone(), PeerNode { id: id.clone(), peer: f.peer.to_string(), http })
                    })
                    .collect();
                let founding = ClusterConfig::founding(founders, addrs, config.partitions, config.replicas);
                // Gossip starts from the other founders and, on a restart, every member the configuration recorded
                // here knows: the founders may since have been replaced, and the members that saw this node stop
                // no longer call on it, so it must call on them.
                let mut seeds: Vec<std::net::SocketAddr> =
                    members.iter().filter(|(id, _)| **id != config.id).map(|(_, f)| f.peer).collect();
                if let Some(r) = recorded.as_ref().filter(|r| founding.same_cluster(r)) {
                    seeds.extend(r.peers_but(&config.id));
                }
                seeds.sort();
                seeds.dedup();
                (founding, seeds)
            }
            Bootstrap::Join(addr) => {
                // A member restarting as it was (same entry, same peer address) takes the newest configuration
                // of the one the member it names has in force and the one it recorded itself: it may be a voter of
                // the metadata group that the group needs for its quorum, and a request to add it could then never
                // be answered (nor, with the member it names down, even sent). Anyone else asks to be added; the
                // answer is the configuration that holds it.
                let token = config.cluster_token.as_ref();
                let known: Option<ClusterConfig> =
                    Peers::call_addr(*addr, "/internal/config", &(), Duration::from_secs(5), token).await.ok();
                // A data directory of another cluster (another identity) must not bring its Raft state into this one.
                let ours = recorded.as_ref().and_then(|r| r.identity);
                let foreign = |c: &ClusterConfig| -> Result<(), StartError> {
                    match crate::cluster::other_identities(ours, c.identity) {
                        Some((a, b)) => Err(StartError::Mismatch(format!(
                            "this data directory belongs to cluster {a:x}, and the cluster at {addr} is {b:x}: give \
                             this node an empty --data-dir to join it"
                        ))),
                        None => Ok(()),
                    }
                };
                known.as_ref().map_or(Ok(()), foreign)?;
                // The newest of the two decides. A record of another cluster counts for nothing.
                let recorded = recorded.clone().filter(|r| known.as_ref().is_none_or(|k| k.same_cluster(r)));
                let newest = known.into_iter().chain(recorded).max_by_key(|c| c.epoch);
                // This node's entry there, if it is a member at this peer address (a founder's entry knows no HTTP
                // address until the node itself announces one). None: decommissioned while it was down, or never
                // added, and `--join` asks to be added.
                let entry = newest.as_ref().and_then(|c| {
                    let addr = c.addrs.get(&config.id)?;
                    let same = addr.peer == this_addr.peer && (addr.http.is_empty() || addr.http == this_addr.http);
                    c.members().iter().find(|m| m.id == config.id).filter(|_| same)
                });
                // The same node in another zone or at another weight: a change of place that would move replicas,
                // made by decommissioning the node and joining it again, never by a restart whose flags merely left
                // the zone out.
                if let Some(m) = entry.filter(|m| **m != this) {
                    return Err(StartError::Mismatch(format!(
                        "{} is a member in zone {} at weight {}, not zone {} at weight {}: start it with --zone {} \
                         --weight {} (to move a node, decommission it and join it again)",
                        m.id, m.zone, m.weight, this.zone, this.weight, m.zone, m.weight
                    )));
                }
                let known = if entry.is_some() { newest } else { None };
                let joined = match known {
                    Some(c) => c,
                    None => {
                        let op = AdminOp::Join { member: this.clone(), addr: this_addr.clone() };
                        let answer: Result<ClusterConfig, AdminError> =
                            Peers::call_addr(*addr, "/internal/admin", &op, Duration::from_secs(90), token)
                                .await
                                .map_err(|e| StartError::Raft(format!("--join {addr}: {e}")))?;
                        answer.map_err(|e| StartError::Raft(format!("--join {addr}: {e}")))?
                    }
                };
                foreign(&joined)?;
                if (joined.partitions, joined.replicas) != shape {
                    return Err(StartError::Mismatch(format!(
                        "the cluster has {} partitions x {} replicas; start this node with --partitions {} --replicas {}",
                        joined.partitions, joined.replicas, joined.partitions, joined.replicas
                    )));
                }
                // Gossip starts from the member named and every member the configuration knows (the one named
                // may be down).
                let mut seeds = vec![*addr];
                seeds.extend(joined.peers_but(&config.id));
                seeds.sort();
                seeds.dedup();
                (joined, seeds)
            }
        };
        if matches!(config.bootstrap, Bootstrap::Initial(_)) {
            check_founders(&store, &cluster_config).await?;
        }
        let cluster = Cluster::new(cluster_config)?;
        let mut nodes: BTreeMap<RaftId, PeerNode> =
            cluster.config.addrs.iter().map(|(id, n)| (raft_id(id), n.clone())).collect();
        nodes.insert(me, this_addr);
        let peers = Peers::new(nodes, config.snapshot_chunk_bytes, config.cluster_token.clone());
        peers.set_identity(cluster.config.identity.unwrap_or(0));
        let (election_min, election_max) =
            election_timeouts(config.heartbeat.as_millis() as u64, config.election_timeout.as_millis() as u64);
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "rampart".into(),
                heartbeat_interval: config.heartbeat.as_millis() as u64,
                election_timeout_min: election_min,
                election_timeout_max: election_max,
                install_snapshot_timeout: 10_000,
                // Heartbeats come from one node-wide round (heartbeat_loop) so that every group's heartbeat to a
                // peer leaves in one batch; a follower that acknowledged an append within half an interval needs
                // none.
                enable_heartbeat: false,
                heartbeat_min_interval: Some(config.heartbeat.as_millis() as u64 / 2),
                // A replica that was cut off or restarted asks first whether it could win, and a replica that
                // heard from its leader within the lease says no: it cannot depose a healthy leader.
                enable_pre_vote: Some(true),
                // A restarted leader starts as a follower. Restored leadership only helps a node back before anyone
                // noticed it gone; after a kill -9 someone did, and a node that still thinks it leads takes
                // requests it cannot commit until it hears of the new term (the demo's buyers waited up to 550 ms on
                // it). It would also lead on a state machine behind its committed index (see openraft's
                // `enable_leader_restore`).
                enable_leader_restore: Some(false),
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
                max_in_snapshot_log_to_keep: config.snapshot_logs / 5,
                ..openraft::Config::default()
            }
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let meta = Meta { http: Some(config.http.to_string()), zone: config.zone.clone(), weight: config.weight };
        let membership_config = MembershipConfig { seed: me, ..MembershipConfig::profile(Profile::Lan) };
        let key = config.cluster_token.as_ref().map(|t| rampart_membership_net::PacketKey::new(t.as_bytes()));
        let membership = Arc::new(
            Membership::start_udp_http_fallback(membership_config, config.id.clone(), config.peer, meta, seeds, key)
                .await
                .map_err(|e| StartError::Raft(format!("membership: {e}")))?,
        );
        // (A node that recorded a later configuration has run in the cluster since it was founded.)
        let founding = cluster.config.epoch == 0
            && !store.bootstrapped()?
            && recorded.as_ref().is_none_or(|r| r.epoch == 0 || !cluster.config.same_cluster(r));
        let first = Arc::new(cluster);
        let node = Arc::new(Node {
            config,
            me,
            store,
            peers,
            membership,
            cluster: std::sync::RwLock::new(first.clone()),
            groups: std::sync::RwLock::new(BTreeMap::new()),
            raft_config,
            admin_lock: tokio::sync::Mutex::new(()),
            replacing: tokio::sync::Mutex::new(Replacing::default()),
            last_heard: std::sync::Mutex::new(BTreeMap::new()),
            recorded_epoch: std::sync::Mutex::new(None),
            proposed: Arc::default(),
            snapshots_in: Default::default(),
            lane_turns: LaneTurns::default(),
            peer_refused: Default::default(),
            appends_in: Default::default(),
            empty_appends_in: Default::default(),
            warned_identity: Default::default(),
            shut_out: tokio::sync::watch::Sender::new(None),
            latency: Default::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        // The metadata group first: its stored configuration (newer than the founding one after a change)
        // decides the rest.
        // (A node that became a voter of the metadata group after the founding has it on disk.)
        let stored = node.store.stored_groups()?;
        if first.groups_of(me).contains(&META_GROUP) || stored.contains(&META_GROUP) {
            node.host(META_GROUP).await?;
            if let Ok(Some(c)) = node.stored_config() {
                node.install(c);
            }
        }
        if let Some(c) = recorded.filter(|r| first.config.same_cluster(r)) {
            node.install(c);
        }
        // The placement's groups, and every group with state on disk: a voter restarted in the middle of a move
        // keeps serving until its group's leader confirms it was removed (reconcile drops it then).
        for group in node.cluster().groups_of(me).into_iter().chain(stored) {
            if node.group(group).is_none() {
                node.host(group).await?;
            }
        }
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
        let heartbeat = tokio::spawn(heartbeat_loop(Arc::downgrade(&node)));
        let expiry = tokio::spawn(expiry_loop(Arc::downgrade(&node)));
        let reconcile = tokio::spawn(crate::cluster::reconcile_loop(Arc::downgrade(&node)));
        let quiesce = tokio::spawn(crate::quiesce::quiesce_loop(Arc::downgrade(&node)));
        if let Ok(mut t) = node.tasks.lock() {
            t.extend([server, heartbeat, expiry, reconcile, quiesce]);
        }
        if founding {
            // A fresh cluster: the first replica of each group creates it with the founding replicas. Never again
            // after this (a group this node leaves and rejoins is rebuilt by its leader). The founding placement,
            // whatever configuration is in force by now.
            let cluster = first.clone();
            let mut later = Vec::new();
            let peers = node.peers.nodes();
            for group in cluster.groups_of(me) {
                let replicas = cluster.replicas(group);
                // Without HTTP addresses (each founder knows only its own): every founder that creates a group
                // must create it alike. (Raft messages find a replica by its id, never by this entry.)
                let members: BTreeMap<RaftId, PeerNode> = replicas
                    .iter()
                    .filter_map(|r| peers.get(r).map(|n| (*r, PeerNode { http: String::new(), ..n.clone() })))
                    .collect();
                if replicas.first() == Some(&me) {
                    node.create_group(group, members).await?;
                } else {
                    later.push((group, members));
                }
            }
            // A first replica that is down while the others found the cluster would leave its groups without a
            // leader until it came back: after a grace period, the other founding replicas create any group still
            // uncreated, with the same replicas. (openraft allows the same initialisation on several nodes: the
            // vote elects one leader.)
            let grace = (node.config.election_timeout * 8).max(FOUNDING_GRACE_MIN);
            let weak = Arc::downgrade(&node);
            let task = tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                for (group, members) in later {
                    let Some(node) = weak.upgrade() else { return };
                    match node.create_group(group, members).await {
                        Ok(true) => {
                            tracing::info!("{}: its first replica did not create it; created here", group_name(group))
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!("{}: {e}", group_name(group)),
                    }
                }
            });
            if let Ok(mut t) = node.tasks.lock() {
                t.push(task);
            }
            let founders = first.config.history.first().cloned().unwrap_or_default();
            node.store.set_founders(&founders).await?;
            node.store.set_bootstrapped().await?;
        }
        Ok(node)
    }

    /// Creates founding group `group` with `members` as its voters, unless this node's replica of it already
    /// holds a vote or a log (created here, or reached by the replica that created it). Whether it did.
    async fn create_group(&self, group: GroupId, members: BTreeMap<RaftId, PeerNode>) -> Result<bool, StartError> {
        let Some(raft) = self.group(group) else { return Ok(false) };
        if raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            return Ok(false);
        }
        if let Err(e) = raft.initialize(members).await {
            tracing::warn!("{}: initialize: {e}", group_name(group));
        }
        Ok(true)
    }

    /// Starts a Raft group (empty if new: its leader fills it) and its proposer.
    pub(crate) async fn host(&self, group: GroupId) -> Result<(), StartError> {
        let network = GroupNetwork { peers: self.peers.clone(), group };
        let raft = Raft::new(
            self.me,
            self.raft_config.clone(),
            network,
            self.store.log(group),
            self.store.state_machine(group)?,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let task =
            tokio::spawn(propose_loop(raft.clone(), group, rx, self.config.payment_deadline, self.proposed.clone()));
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let watcher = tokio::spawn(count_leader_changes(raft.clone(), leader_changes.clone()));
        if let Ok(mut groups) = self.groups.write() {
            groups.insert(group, Hosted { raft, proposer: tx, task, leader_changes, watcher, quiet: Arc::default() });
        }
        Ok(())
    }

    /// Stops a group this node no longer replicates and deletes its data.
    pub(crate) async fn unhost(&self, group: GroupId) {
        let hosted = self.groups.write().ok().and_then(|mut g| g.remove(&group));
        if let Some(h) = hosted {
            tracing::info!("{}: no longer replicated here; dropping it", group_name(group));
            h.task.abort();
            h.watcher.abort();
            let _ = h.raft.shutdown().await;
            if let Err(e) = self.store.drop_group(group).await {
                tracing::error!("{}: dropping its data: {e}", group_name(group));
            }
        }
    }

    /// A group this node runs.
    pub fn group(&self, group: GroupId) -> Option<GroupRaft> {
        self.groups.read().ok()?.get(&group).map(|h| h.raft.clone())
    }

    /// Every group this node runs.
    pub fn hosted(&self) -> Vec<(GroupId, GroupRaft)> {
        self.groups.read().map(|g| g.iter().map(|(id, h)| (*id, h.raft.clone())).collect()).unwrap_or_default()
    }

    /// A group this node runs, and its quiescence.
    pub(crate) fn group_quiet(&self, group: GroupId) -> Option<(GroupRaft, Arc<Quiet>)> {
        self.groups.read().ok()?.get(&group).map(|h| (h.raft.clone(), h.quiet.clone()))
    }

    /// Every group this node runs, and its quiescence.
    pub(crate) fn hosted_quiet(&self) -> Vec<(GroupId, GroupRaft, Arc<Quiet>)> {
        self.groups
            .read()
            .map(|g| g.iter().map(|(id, h)| (*id, h.raft.clone(), h.quiet.clone())).collect())
            .unwrap_or_default()
    }

    /// Leaders seen elected in each group this node runs.
    pub fn leader_changes(&self) -> BTreeMap<GroupId, u64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.groups
            .read()
            .map(|g| g.iter().map(|(id, h)| (*id, h.leader_changes.load(Relaxed))).collect())
            .unwrap_or_default()
    }

    fn proposer(&self, group: GroupId) -> Option<mpsc::Sender<Proposal>> {
        self.groups.read().ok()?.get(&group).map(|h| h.proposer.clone())
    }

    /// The configuration in force here.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The partition a key belongs to (fixed for the life of the cluster).
    pub fn partition_of(&self, key: &str) -> GroupId {
        rampart_ring::hash::reduce(rampart_ring::hash::key_hash(key.as_bytes()), self.config.partitions)
    }

    /// The replicas of a partition, in preference order.
    pub fn replicas(&self, group: GroupId) -> Vec<RaftId> {
        self.cluster().replicas(group)
    }

    pub fn metrics(&self, group: GroupId) -> Option<RaftMetrics<C>> {
        self.group(group).map(|r| r.metrics().borrow_watched().clone())
    }

    /// Commits `op` in its partition (locally if this node leads it, else through the leader) and returns what
    /// applying it gave.
    pub async fn propose(&self, group: GroupId, op: Op) -> Result<OpOutcome, RequestError> {
        match self.route(group, Request::Write(op)).await? {
            Answer::Written(outcome) => Ok(outcome),
            Answer::Read(_) => Err(RequestError::Internal("a write was answered as a read".into())),
        }
    }

    /// Drives an order spanning partitions (a saga) as far as it can go: a pending order's legs are reserved on
    /// their partitions and the order confirmed, or aborted with the first refusal; a closed order's legs are
    /// settled (paid) or released (cancelled, expired, aborted). Every step is idempotent, so whoever drives it
    /// (the request's node, or the home partition's leader later) may repeat any of them.
    pub async fn drive_saga(&self, mut order: Arc<Order>) -> Result<Arc<Order>, RequestError> {
        let (home, id) = (order.id.partition(), order.id);
        if order.status == OrderStatus::Pending {
            let mut priced = Vec::new();
            let mut refusal = None;
            for p in order.leg_partitions() {
                let items: Vec<Item> = order
                    .items
                    .iter()
                    .filter(|l| l.remote == Some(p))
                    .map(|l| Item { sku: l.sku.clone(), qty: l.qty })
                    .collect();
                let reserve = rampart_trading::Command::ReserveLeg {
                    order_id: id,
                    user_id: order.user_id.clone(),
                    items,
                    placed_ms: order.placed_ms,
                };
                match self.propose(p, Op::Trade(reserve)).await? {
                    OpOutcome::Trade(Outcome::Hold(h)) => match h.state {
                        HoldState::Reserved | HoldState::Sold => priced.extend(h.items),
                        HoldState::Released => {
                            refusal = Some(Rejection::InvalidState { order_id: id, status: OrderStatus::Aborted });
                            break;
                        }
                        HoldState::Refused(r) => {
                            refusal = Some(r);
                            break;
                        }
                    },
                    OpOutcome::Trade(Outcome::Rejected { rejection, .. }) => {
                        refusal = Some(rejection);
                        break;
                    }
                    other => return Err(RequestError::Internal(format!("reserve {id}: {other:?}"))),
                }
            }
            let result = match refusal {
                Some(r) => Err(r),
                None => Ok(priced),
            };
            order = self.order_outcome(home, rampart_trading::Command::ResolveSaga { order_id: id, result }).await?;
        }
        if !order.legs_synced && order.status != OrderStatus::Pending {
            let status = order.status;
            for p in order.leg_partitions() {
                let command = match status {
                    OrderStatus::Paid => rampart_trading::Command::Settle { order_id: id },
                    _ => rampart_trading::Command::Release { order_id: id },
                };
                if let OpOutcome::Trade(Outcome::Rejected { rejection, .. }) =
                    self.propose(p, Op::Trade(command)).await?
                {
                    tracing::warn!("order {id}: leg on partition {p}: {rejection}");
                }
            }
            order = self.order_outcome(home, rampart_trading::Command::LegsSynced { order_id: id, status }).await?;
        }
        Ok(order)
    }

    async fn order_outcome(
        &self,
        group: GroupId,
        command: rampart_trading::Command,
    ) -> Result<Arc<Order>, RequestError> {
        match self.propose(group, Op::Trade(command)).await? {
            OpOutcome::Trade(Outcome::Order { order, .. }) => Ok(order),
            other => Err(RequestError::Internal(format!("partition {group}: unexpected {other:?}"))),
        }
    }

    /// A linearizable read in its partition.
    pub async fn query(&self, group: GroupId, read: Read) -> Result<ReadResult, RequestError> {
        match self.route(group, Request::Read(read)).await? {
            Answer::Read(r) => Ok(r),
            Answer::Written(_) => Err(RequestError::Internal("a read was answered as a write".into())),
        }
    }

    async fn route(&self, group: GroupId, request: Request) -> Result<Answer, RequestError> {
        let leader = match self.group(group) {
            Some(raft) => {
                // Read the two fields in place: cloning the whole metrics on every request is measurable.
                let (state, leader) = {
                    let m = raft.metrics();
                    let m = m.borrow_watched();
                    (m.state, m.current_leader)
                };
                if state == ServerState::Leader {
                    return self.serve_local(group, request).await;
                }
                leader
            }
            None => None,
        };
        // Not the leader here: ask the leader if known, else the replicas in turn (one hop; they do not forward),
        // those membership calls alive first: a dead one costs a refused connection or, where a host is gone, the
        // connect timeout. (Behind a known leader the rest are tried only if it cannot be reached: left in
        // placement order, not worth asking membership on every forwarded request.)
        let mut targets: Vec<RaftId> = leader.into_iter().collect();
        let mut others: Vec<RaftId> =
            self.replicas(group).into_iter().filter(|r| *r != self.me && Some(*r) != leader).collect();
        if leader.is_none() {
            let alive = crate::quiesce::alive(self);
            others.sort_by_key(|r| !alive.contains(r));
        }
        targets.extend(others);
        let is_write = matches!(request, Request::Write(_));
        for target in targets {
            let answer: Result<Result<Answer, Forward>, CallError> =
                self.peers.call(target, &format!("/internal/{group}"), &request, FORWARD_TIMEOUT).await;
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

    /// Serves `request` on this node's replica of `group` (it believes it is the leader).
    async fn serve_local(&self, group: GroupId, request: Request) -> Result<Answer, RequestError> {
        let (raft, quiet) = self.group_quiet(group).ok_or(RequestError::Unavailable(group))?;
        quiet.serve();
        match request {
            Request::Write(op) => {
                let proposer = self.proposer(group).ok_or(RequestError::Unavailable(group))?;
                let (tx, rx) = oneshot::channel();
                // A full queue refuses the write before anything is proposed: retrying is safe.
                proposer.try_send((op, tx)).map_err(|_| RequestError::Unavailable(group))?;
                // The proposer dropping the reply means it stopped (shutdown) after taking the operation.
                rx.await.map_err(|_| RequestError::Indeterminate(group))?.map(Answer::Written)
            }
            Request::Read(read) => {
                // A leader that cannot confirm its leadership in time (no quorum) answers `unavailable`.
                let confirmed =
                    tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
                if !matches!(confirmed, Ok(Ok(_))) {
                    return Err(RequestError::Unavailable(group));
                }
                let state = self.store.state(group).ok_or(RequestError::Unavailable(group))?;
                let state = state
                    .lock()
                    .map_err(|_| RequestError::Internal(format!("partition {group}: state lock poisoned")))?;
                Ok(Answer::Read(match read {
                    Read::Kv(key) => ReadResult::Kv(state.get(&key).map(str::to_owned)),
                    Read::Product(sku) => ReadResult::Product(state.shard().product(&sku).cloned()),
                    Read::Order(id) => ReadResult::Order(state.shard().order(&id).cloned()),
                }))
            }
        }
    }
    /// Why this node cannot take part in the cluster it knows, if a majority of that cluster's members answer
    /// that they belong to another one: it was left from an earlier cluster founded alike on the same addresses,
    /// and every peer of the new one refuses it (409). It never says so of a node that a minority refuses (a
    /// healthy member of the new cluster, refused only by the stale node).
    pub(crate) fn shut_out_reason(&self) -> Option<String> {
        let cluster = self.cluster();
        let ours = cluster.config.identity?;
        let refused_by = self.peers.refused_by();
        let members = cluster.config.members();
        let refusing: Vec<(&str, u64)> = members
            .iter()
            .filter_map(|m| {
                let addr = &cluster.config.addrs.get(&m.id)?.peer;
                refused_by.get(addr).filter(|theirs| **theirs != ours).map(|theirs| (m.id.as_str(), *theirs))
            })
            .collect();
        let &(_, theirs) = refusing.first()?;
        if refusing.len() * 2 <= members.len() {
            return None;
        }
        let names: Vec<&str> = refusing.iter().map(|(id, _)| *id).collect();
        Some(format!(
            "{} of the {} members ({}) belong to cluster {theirs:x}, and this node's data directory {} to cluster \
             {ours:x}: it was left from an earlier cluster on the same addresses. The node stops: wipe that directory \
             and start it again to join the cluster as it is now",
            refusing.len(),
            members.len(),
            names.join(", "),
            self.config.data_dir.display(),
        ))
    }

    /// Leaves the cluster's membership, then stops every group and the peer server.
    pub async fn shutdown(&self) {
        self.membership.leave().await;
        for (_, raft) in self.hosted() {
            let _ = raft.shutdown().await;
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    /// Partitions this node replicates that cannot serve as far as it can tell: their leader is unknown, or
    /// membership has declared its node dead, or a majority of their voters is dead. (A follower whose pre-vote
    /// fails keeps the leader it last knew in openraft's metrics, however long that node has been dead.)
    pub fn leaderless(&self) -> BTreeSet<GroupId> {
        let down = self.down();
        self.hosted()
            .into_iter()
            .filter(|(_, r)| {
                let metrics = r.metrics();
                let m = metrics.borrow_watched();
                let voters: Vec<RaftId> = m.membership_config.membership().voter_ids().collect();
                let dead = voters.iter().filter(|v| down.contains(v)).count();
                live_leader(&m, &down).is_none() || dead * 2 >= voters.len().max(1)
            })
            .map(|(g, _)| g)
            .collect()
    }

    /// The members membership has declared dead (or that left).
    pub(crate) fn down(&self) -> BTreeSet<RaftId> {
        use rampart_membership::State;
        let members = self.membership.members().into_iter();
        members.filter(|(m, _)| matches!(m.state, State::Dead | State::Left)).map(|(m, _)| raft_id(&m.id)).collect()
    }
}

/// How long `GET /v1/cluster` waits for the peers it asks about partitions held elsewhere.
const LEADERS_TIMEOUT: Duration = Duration::from_millis(300);

/// A group's leader as a node holding one of its replicas sees it: the leader and the term it leads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderSeen {
    pub group: GroupId,
    pub leader: RaftId,
    pub term: u64,
}

impl Node {
    /// The leaders this node's replicas see for those of `groups` it holds.
    fn leaders_seen(&self, groups: &[GroupId]) -> Vec<LeaderSeen> {
        let down = self.down();
        groups
            .iter()
            .filter_map(|&group| {
                let m = self.metrics(group)?;
                Some(LeaderSeen { group, leader: live_leader(&m, &down)?, term: m.current_term })
            })
            .collect()
    }

    /// The leaders of `groups` (partitions this node holds no replica of, so it cannot see them itself) as the
    /// nodes holding them see them, asked all at once; where answers differ, the higher term's. Only replicas of
    /// those groups that membership has heard of and calls alive or suspect are asked (a node gone for good, its
    /// host too, would hold every view up for [`LEADERS_TIMEOUT`]); a group none of them answered for in that
    /// time, or whose leader this node's membership calls dead, is left out.
    pub async fn leaders_elsewhere(&self, groups: &[GroupId]) -> BTreeMap<GroupId, LeaderSeen> {
        use rampart_membership::State;
        let mut seen = BTreeMap::new();
        if groups.is_empty() {
            return seen;
        }
        let down = self.down();
        let heard: BTreeSet<RaftId> = (self.membership.members().into_iter())
            .filter(|(m, _)| matches!(m.state, State::Alive | State::Suspect))
            .map(|(m, _)| raft_id(&m.id))
            .collect();
        let cluster = self.cluster();
        let holders: BTreeSet<RaftId> = groups
            .iter()
            .flat_map(|&g| cluster.replicas(g))
            .filter(|id| *id != self.me && heard.contains(id))
            .collect();
        let asked = holders
            .iter()
            .map(|&peer| self.peers.call::<_, Vec<LeaderSeen>>(peer, "/internal/leaders", &groups, LEADERS_TIMEOUT));
        for answer in join_all(asked).await.into_iter().flatten() {
            for l in answer.into_iter().filter(|l| groups.contains(&l.group) && !down.contains(&l.leader)) {
                let entry = seen.entry(l.group).or_insert(l);
                if l.term > entry.term {
                    *entry = l;
                }
            }
        }
        seen
    }
}

/// The leader a group's metrics name, unless membership has declared its node dead (`down`): a follower whose
/// pre-vote fails keeps the leader it last knew, however long that node has been dead.
pub(crate) fn live_leader(m: &RaftMetrics<TypeConfig>, down: &BTreeSet<RaftId>) -> Option<RaftId> {
    m.current_leader.filter(|l| !down.contains(l))
}

/// The founders' zones and weights decide every placement since the cluster was created: a restart whose
/// `--initial-cluster` places them otherwise would place every partition otherwise on this node alone, so it is
/// refused. A node records them when it bootstraps (until then a corrected list is taken); a data directory
/// bootstrapped before that record existed was founded with every founder in the default zone at the default
/// weight, is held to that, and records it.
async fn check_founders(store: &Store, founding: &ClusterConfig) -> Result<(), StartError> {
    if !store.bootstrapped()? {
        return Ok(());
    }
    let listed = founding.history.first().map_or(&[][..], Vec::as_slice);
    let recorded = match store.founders()? {
        Some(recorded) => recorded,
        None => {
            let former: Vec<Member> = listed
                .iter()
                .map(|m| Member { id: m.id.clone(), zone: DEFAULT_ZONE.into(), weight: rampart_ring::DEFAULT_WEIGHT })
                .collect();
            if former == listed {
                store.set_founders(&former).await?;
            }
            former
        }
    };
    if recorded == listed {
        return Ok(());
    }
    let list = |members: &[Member]| {
        members.iter().map(|m| format!("{}@{}:{}", m.id, m.zone, m.weight)).collect::<Vec<_>>().join(",")
    };
    Err(StartError::Mismatch(format!(
        "this cluster was created with the founders {}; --initial-cluster now gives {}",
        list(&recorded),
        list(listed)
    )))
}

/// A request forwarded to the node that should serve it.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Write(Op),
    Read(Read),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Written(OpOutcome),
    Read(ReadResult),
}

/// A linearizable read of one partition's state.
#[derive(Debug, Serialize, Deserialize)]
pub enum Read {
    Kv(String),
    Product(Sku),
    Order(OrderId),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ReadResult {
    Kv(Option<String>),
    Product(Option<Product>),
    Order(Option<Order>),
}

/// The business clock a leader stamps into its entries: wall-clock milliseconds since the Unix epoch. The state
/// machine never lets it run backwards, whatever a new leader's clock says.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How a partition's proposer forms its entries.
///
/// Callers in a closed loop (each sends its next operation once answered, as buyers and `rampart bench` do) split
/// into two cohorts under [`INFLIGHT_MAX`] = 1: the operations that queue while an entry is in flight go in the
/// next entry as soon as it is answered, before the callers it answered are back, so each entry carries about
/// half of them and every caller waits two rounds. So once an entry of at least [`GATHER_AFTER_OPS`] is answered,
/// the next one also waits, up to [`GATHER_FOR`], for as many operations as that entry answered: its callers come
/// back within a fraction of a millisecond and go in one entry with the queued ones. A wait that runs out (the
/// callers went to other partitions, or are gone) makes the next [`GATHER_SKIP`] entries go at once.
#[derive(Debug, Default)]
struct Batcher {
    /// The operations of the entry answered last.
    answered: usize,
    /// Entries still to go without waiting, after a wait that ran out.
    skip: u32,
}

impl Batcher {
    /// The operations of the next entry, taken once the entry before it was answered: every operation queued (up
    /// to [`BATCH_OPS_MAX`]) and, when that entry was big enough, its callers' next ones as they come. `None` once
    /// the queue is closed and empty.
    async fn next<T>(&mut self, rx: &mut mpsc::Receiver<T>, stats: &ProposeStats) -> Option<Vec<T>> {
        // Queued while the entry before was in flight, so not from the callers it answered.
        let waiting = rx.len();
        let mut batch = vec![rx.recv().await?];
        drain(rx, &mut batch);
        let want = (waiting + self.answered).min(BATCH_OPS_MAX);
        if self.answered >= GATHER_AFTER_OPS && batch.len() < want && self.skip == 0 {
            stats.gathered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let until = tokio::time::Instant::now() + GATHER_FOR;
            while batch.len() < want {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(op)) => batch.push(op),
                    Ok(None) => break,
                    Err(_) => {
                        stats.gather_missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.skip = GATHER_SKIP;
                        break;
                    }
                }
            }
            drain(rx, &mut batch);
        } else {
            self.skip = self.skip.saturating_sub(1);
        }
        self.answered = batch.len();
        Some(batch)
    }
}

/// Moves what is queued into `batch`, up to [`BATCH_OPS_MAX`] in all.
fn drain<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    while batch.len() < BATCH_OPS_MAX {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// Proposes one group's queued operations: up to [`BATCH_OPS_MAX`] per entry, [`INFLIGHT_MAX`] entries at a time,
/// each formed by a [`Batcher`].
async fn propose_loop(
    raft: GroupRaft,
    group: GroupId,
    mut rx: mpsc::Receiver<Proposal>,
    pay_within: Duration,
    proposed: Arc<ProposeStats>,
) {
    let inflight = Arc::new(Semaphore::new(INFLIGHT_MAX));
    let mut batcher = Batcher::default();
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let Some(batch) = batcher.next(&mut rx, &proposed).await else { return };
        proposed.entries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        proposed.ops.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let raft = raft.clone();
        tokio::spawn(async move {
            let at_ms = now_ms();
            let (mut ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
            for op in &mut ops {
                // The leader stamps the payment deadline: every replica applies the same one.
                if let Op::Trade(rampart_trading::Command::PlaceOrder { pay_deadline_ms, .. }) = op {
                    *pay_deadline_ms = at_ms.saturating_add(pay_within.as_millis() as u64);
                }
            }
            confirm_lease(&raft).await;
            let written = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(Command { at_ms, ops })).await;
            let failure = match written {
                Ok(Ok(r)) if r.data.outcomes.len() == replies.len() => {
                    for (reply, outcome) in replies.into_iter().zip(r.data.outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                    drop(permit);
                    return;
                }
                Ok(Ok(_)) => RequestError::Internal(format!("partition {group}: outcomes do not match operations")),
                // Refused before it was proposed: nothing was applied.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => RequestError::Unavailable(group),
                // Proposed and then discarded, a fatal stop, or no commit in time: the outcome is unknown.
                Ok(Err(e)) => {
                    tracing::debug!("partition {group}: write: {e}");
                    RequestError::Indeterminate(group)
                }
                Err(_) => RequestError::Indeterminate(group),
            };
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
            drop(permit);
        });
    }
}

/// A leader that heard from no quorum for a lease (a group that was quiesced) is refused writes and membership
/// changes by openraft until a quorum acknowledges it again: this confirms leadership first, when the lease has
/// lapsed or is about to. Failing, the write or change that follows is refused (nothing is proposed).
pub(crate) async fn confirm_lease(raft: &GroupRaft) {
    if lease_lapsed(raft) {
        let _ = tokio::time::timeout(LEASE_CONFIRM_TIMEOUT, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
    }
}

/// Whether a leader's lease (openraft's `election_timeout_max` since a quorum last acknowledged it) has lapsed or
/// is about to.
fn lease_lapsed(raft: &GroupRaft) -> bool {
    use openraft::Instant as _;
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let m = raft.metrics();
    let m = m.borrow_watched();
    // A lone voter is its own quorum: its lease never lapses.
    m.membership_config.membership().voter_ids().nth(1).is_some()
        && m.last_quorum_acked.as_ref().is_none_or(|t| t.elapsed() >= lease * 3 / 4)
}

/// On every group this node leads: expires unpaid orders past their deadline and forgets idempotency records
/// past their retention, as replicated commands.
/// Counts the leaders a group elects, from its server metrics (which change only with the leader, state or
/// membership, not with every entry). Ends when the group shuts down.
async fn count_leader_changes(raft: GroupRaft, changes: Arc<std::sync::atomic::AtomicU64>) {
    let mut server = raft.server_metrics();
    let mut leader = server.borrow_watched().current_leader;
    while server.changed().await.is_ok() {
        let now = server.borrow_watched().current_leader;
        if now.is_some() && now != leader {
            changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if now.is_some() {
            leader = now;
        }
    }
}

/// openraft's `election_timeout_min` and `_max` for `--election-timeout-ms` T. A follower campaigns once its
/// leader's lease (openraft takes `election_timeout_max` for it) and then its own timeout, sampled in
/// `min..max`, have passed without a word from the leader: after max + [min, max) of silence. With min = 2T/3 and
/// max = 5T/6 that is 1.5T to 1.67T (180 to 200 ms by default); min = T and max = 2T made it 3T to 4T.
fn election_timeouts(heartbeat_ms: u64, election_ms: u64) -> (u64, u64) {
    // openraft requires heartbeat + minimum heartbeat interval (half of it) + a tick (13/64 of it) < min.
    let floor = heartbeat_ms + heartbeat_ms / 2 + (heartbeat_ms * 13 / 64).max(1) + 1;
    let min = (election_ms * 2 / 3).max(floor);
    (min, (election_ms * 5 / 6).max(min + 1))
}

/// One heartbeat round per interval for every group this node leads and that is awake, all at the same instant,
/// so that each peer gets them in one batch (one request per peer per round, not one per group). The same round
/// wakes the quiesced groups that must wake, and runs openraft's ticker only where it has work: on the replicas
/// that follow an awake leader (see [`crate::quiesce`]).
async fn heartbeat_loop(node: std::sync::Weak<Node>) {
    let Some(every) = node.upgrade().map(|n| n.config.heartbeat) else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let alive = crate::quiesce::alive(&node);
        for (group, raft, quiet) in node.hosted_quiet() {
            let state = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                if quiet.is_quiesced() && crate::quiesce::must_wake(&m, node.me, &quiet, &alive) && quiet.wake() {
                    tracing::debug!("partition {group}: woken (a replica's node is not alive or the leader changed)");
                }
                m.state
            };
            let quiesced = quiet.is_quiesced();
            raft.runtime_config().tick(state != ServerState::Leader && !quiesced);
            if state == ServerState::Leader && !quiesced {
                // Fails only when the group is shutting down.
                let _ = raft.trigger().heartbeat().await;
            }
        }
    }
}

async fn expiry_loop(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(EXPIRY_EVERY);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let now = now_ms();
        let forget_before_ms = now.saturating_sub(node.config.idempotency_retention.as_millis() as u64);
        for (group, raft) in &node.hosted() {
            if *group == META_GROUP || raft.metrics().borrow_watched().state != ServerState::Leader {
                continue;
            }
            let due = node
                .store
                .state(*group)
                .and_then(|s| s.lock().ok().map(|s| s.shard().has_expiry_work(now, forget_before_ms)))
                .unwrap_or(false);
            if due {
                let op = Op::Trade(rampart_trading::Command::Expire { forget_before_ms });
                if let Err(e) = node.serve_local(*group, Request::Write(op)).await {
                    tracing::debug!("partition {group}: expiry: {e}");
                }
            }
            // Sagas left unfinished (their driver died, or a leg's partition was unavailable), and closed orders
            // whose legs must follow. A pending order younger than a second is left to the request driving it.
            let sagas = node.store.state(*group).and_then(|s| s.lock().ok().map(|s| s.shard().orders_to_drive()));
            for order in sagas.unwrap_or_default() {
                if order.status == OrderStatus::Pending && order.placed_ms + 1_000 > now {
                    continue;
                }
                if let Err(e) = node.drive_saga(order).await {
                    tracing::debug!("partition {group}: saga: {e}");
                }
            }
        }
    }
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

/// The peer RPC server: Raft messages per group and forwarded requests, only to callers presenting the cluster
/// token when there is one; and the membership's HTTP probes (authenticated by their packets' tags instead).
fn peer_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/raft/batch", post(raft_batch))
        .route("/raft/{group}/snapshot", post(snapshot_rpc))
        .route("/internal/{group}", post(forwarded))
        .route("/internal/admin", post(admin_rpc))
        .route("/internal/admin-local", post(admin_local_rpc))
        .route("/internal/members/{group}", post(members_rpc))
        .route("/internal/drop/{group}", post(drop_rpc))
        .route("/internal/config", post(config_rpc))
        .route("/internal/quiesce", post(quiesce_rpc))
        .route("/internal/leaders", post(leaders_rpc))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(node.clone(), admit_peer))
        .with_state(node.clone())
        .merge(rampart_membership_net::http::router(node.membership.clone()))
}

/// Refuses a peer request that does not present the cluster token (401), or that presents another cluster's
/// identity than the one in force here (409: a node left from an earlier cluster founded alike on the same
/// addresses, whose Raft state must not mix with this one's), before its body is read.
async fn admit_peer(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &node.config.cluster_token {
        let presented = request.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
        if !presented.is_some_and(|p| token.is_presented_by(p)) {
            node.peer_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (StatusCode::UNAUTHORIZED, "this peer port needs the cluster token").into_response();
        }
    }
    let presented = request.headers().get(crate::network::IDENTITY_HEADER).and_then(|v| v.to_str().ok());
    if let (Some(theirs), Some(ours)) = (presented, node.cluster().config.identity) {
        if u64::from_str_radix(theirs, 16).ok() != Some(ours) {
            node.peer_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !node.warned_identity.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(
                    "refusing peer requests of another cluster (identity {theirs}, ours {ours:x}): a node started on \
                     a data directory of an earlier cluster? Wipe it to join this one"
                );
            }
            // The answer names our identity: a caller that a majority of its cluster refuses so stops.
            let ours_header = [(crate::network::IDENTITY_HEADER, format!("{ours:x}"))];
            return (StatusCode::CONFLICT, ours_header, format!("this node belongs to cluster {ours:x}, not {theirs}"))
                .into_response();
        }
    }
    next.run(request).await
}

/// A batch of Raft messages from one peer: each goes to its group's Raft, all at once, and the answers come back
/// in the order of the messages. A numbered batch first waits for its turn in its lane (one that comes after its
/// turn is refused: [`LaneTurns::wait`]), and lets the next batch go
/// once every message has been handed to its group (each takes its place in its group's queue on its first
/// poll), so that a group gets a lane's messages in the order they were sent.
async fn raft_batch(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let ticket = headers.get(LANE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<LaneTicket>().ok());
    let batch = postcard::from_bytes::<Vec<Envelope>>(&body);
    // Waits for the batch's turn (ended when `turn` drops, whatever happens next).
    let turn = match ticket {
        Some(ticket) => match node.lane_turns.wait(ticket).await {
            Ok(turn) => Some(turn),
            Err(Late) => {
                let why = format!("batch {ticket} came after a later batch of its lane: not handed over");
                let refused: Vec<Reply> = vec![Err(why); batch.as_ref().map_or(0, Vec::len)];
                return postcard_response(&refused);
            }
        },
        None => None,
    };
    let batch = match batch {
        Ok(batch) => batch,
        Err(e) => return bad_request(e),
    };
    let mut messages: Vec<_> = batch.into_iter().map(|m| maybe_done(Box::pin(raft_message(&node, m)))).collect();
    // Unconstrained: tokio's cooperative budget must not leave a message unsent in this first pass.
    tokio::task::unconstrained(std::future::poll_fn(|cx| {
        for m in &mut messages {
            let _ = Pin::new(m).poll(cx);
        }
        Poll::Ready(())
    }))
    .await;
    drop(turn);
    join_all(messages.iter_mut()).await;
    let replies: Vec<Reply> = messages
        .iter_mut()
        .map(|m| Pin::new(m).take_output().unwrap_or_else(|| Err("no answer".to_string())))
        .collect();
    postcard_response(&replies)
}

async fn raft_message(node: &Node, message: Envelope) -> Reply {
    let (raft, quiet) =
        node.group_quiet(message.group).ok_or_else(|| format!("{} is not hosted here", group_name(message.group)))?;
    let body = &message.body;
    // Entries or a vote request wake a quiesced follower (once handled: an append or a granted vote restarts its
    // election timer); a heartbeat or a pre-vote does not (see the quiesce module).
    let (bytes, wakes) = match message.op {
        RaftOp::Append => {
            let rpc: openraft::raft::AppendEntriesRequest<C> = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            let wakes = !rpc.entries.is_empty();
            node.appends_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !wakes {
                node.empty_appends_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (postcard::to_allocvec(&raft.append_entries(rpc).await.map_err(|e| e.to_string())?), wakes)
        }
        RaftOp::Vote => {
            let rpc = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            (postcard::to_allocvec(&raft.vote(rpc).await.map_err(|e| e.to_string())?), true)
        }
        RaftOp::PreVote => {
            let rpc = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            (postcard::to_allocvec(&raft.pre_vote(rpc).await.map_err(|e| e.to_string())?), false)
        }
    };
    if wakes && quiet.wake() {
        raft.runtime_config().tick(true);
    }
    bytes.map(Bytes::from).map_err(|e| e.to_string())
}

/// A leader's requests to quiesce groups this node follows: one answer per request, in order.
async fn quiesce_rpc(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match postcard::from_bytes::<Vec<crate::quiesce::Ask>>(&body) {
        Ok(asks) => postcard_response(&crate::quiesce::answer(&node, &asks)),
        Err(e) => bad_request(e),
    }
}

/// The leaders this node sees for those of the asked groups it holds (for another node's cluster view).
async fn leaders_rpc(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match postcard::from_bytes::<Vec<GroupId>>(&body) {
        Ok(groups) => postcard_response(&node.leaders_seen(&groups)),
        Err(e) => bad_request(e),
    }
}

/// One chunk of a snapshot: kept until the snapshot is whole, which is then installed.
async fn snapshot_rpc(State(node): State<Arc<Node>>, Path(group): Path<GroupId>, body: Bytes) -> Response {
    let chunk = match postcard::from_bytes::<SnapshotChunk>(&body) {
        Ok(chunk) => chunk,
        Err(e) => return bad_request(e),
    };
    let Some(raft) = node.group(group) else {
        return postcard_response(&Err::<(), String>(format!("{} is not hosted here", group_name(group))));
    };
    let whole = match node.snapshots_in.lock() {
        Ok(mut assembler) => assembler.accept(group, chunk),
        Err(_) => Err("the snapshot assembler is poisoned".into()),
    };
    let answer = match whole {
        Ok(Some(whole)) => {
            let snapshot = Snapshot { meta: whole.meta, snapshot: Cursor::new(whole.data) };
            raft.install_full_snapshot(whole.vote, snapshot).await.map(Some).map_err(|e| e.to_string())
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    postcard_response(&answer)
}

async fn forwarded(State(node): State<Arc<Node>>, Path(group): Path<GroupId>, body: Bytes) -> Response {
    let request: Request = match postcard::from_bytes(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let leads = node.group(group).is_some_and(|r| r.metrics().borrow_watched().state == ServerState::Leader);
    let answer: Result<Answer, Forward> =
        if leads { node.serve_local(group, request).await.map_err(Forward::Error) } else { Err(Forward::NotLeader) };
    postcard_response(&answer)
}

async fn admin_rpc(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match postcard::from_bytes::<AdminOp>(&body) {
        Ok(op) => postcard_response(&node.admin(op).await),
        Err(e) => bad_request(e),
    }
}

async fn admin_local_rpc(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match postcard::from_bytes::<AdminOp>(&body) {
        Ok(op) => postcard_response(&node.admin_if_leader(op).await),
        Err(e) => bad_request(e),
    }
}

async fn members_rpc(State(node): State<Arc<Node>>, Path(group): Path<GroupId>) -> Response {
    postcard_response(&node.members_if_leader(group))
}

async fn drop_rpc(State(node): State<Arc<Node>>, Path(group): Path<GroupId>) -> Response {
    postcard_response(&node.drop_if_not_mine(group).await)
}

/// The configuration in force on this node.
async fn config_rpc(State(node): State<Arc<Node>>) -> Response {
    postcard_response(&node.cluster().config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proposer's queue, kept open.
    type Queue = (mpsc::Receiver<u32>, mpsc::Sender<u32>);

    /// A batcher's next entry from `queued` operations sent first and `returning` sent from another task once the
    /// batcher waits (callers coming back). The test runtime has one thread: that task runs only when the batcher
    /// waits, after it took the queued ones.
    async fn entry_after(
        batcher: &mut Batcher,
        stats: &ProposeStats,
        queued: u32,
        returning: u32,
    ) -> (Vec<u32>, Queue) {
        let (tx, mut rx) = mpsc::channel(BATCH_OPS_MAX);
        for op in 0..queued {
            tx.send(op).await.unwrap();
        }
        let callers = tx.clone();
        tokio::spawn(async move {
            for op in 0..returning {
                let _ = callers.send(100 + op).await;
            }
        });
        let batch = batcher.next(&mut rx, stats).await.unwrap();
        (batch, (rx, tx))
    }

    #[tokio::test]
    async fn an_entry_waits_for_the_callers_the_entry_before_answered_and_takes_them_with_the_queued_ones() {
        let stats = ProposeStats::default();
        let mut batcher = Batcher { answered: 8, skip: 0 };
        let (batch, _queue) = entry_after(&mut batcher, &stats, 3, 8).await;
        assert_eq!(batch, vec![0, 1, 2, 100, 101, 102, 103, 104, 105, 106, 107]);
        assert_eq!(batcher.answered, 11);
        assert_eq!(stats.gathered.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(stats.gather_missed.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_small_entry_is_not_waited_for_after() {
        let stats = ProposeStats::default();
        let mut batcher = Batcher { answered: GATHER_AFTER_OPS - 1, skip: 0 };
        let (batch, _queue) = entry_after(&mut batcher, &stats, 1, 3).await;
        assert_eq!(batch, vec![0], "the entry goes with what is queued");
        assert_eq!(stats.gathered.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_wait_that_runs_out_goes_with_what_came_and_the_entries_after_it_go_at_once() {
        let stats = ProposeStats::default();
        let mut batcher = Batcher { answered: 8, skip: 0 };
        // Two of the eight callers come back; the others went elsewhere.
        let (batch, _queue) = entry_after(&mut batcher, &stats, 6, 2).await;
        assert_eq!(batch, vec![0, 1, 2, 3, 4, 5, 100, 101]);
        assert_eq!(stats.gathered.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(stats.gather_missed.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(batcher.skip, GATHER_SKIP);
        for left in (0..GATHER_SKIP).rev() {
            let (batch, _queue) = entry_after(&mut batcher, &stats, 5, 5).await;
            assert_eq!(batch, vec![0, 1, 2, 3, 4], "no wait while skipping");
            assert_eq!(batcher.skip, left);
        }
        assert_eq!(stats.gathered.load(std::sync::atomic::Ordering::Relaxed), 1);
        let (batch, _queue) = entry_after(&mut batcher, &stats, 5, 5).await;
        assert_eq!(batch.len(), 10, "waits again once the skipped entries went: {batch:?}");
    }

    #[tokio::test]
    async fn a_closed_queue_ends_the_batches_once_empty() {
        let stats = ProposeStats::default();
        let mut batcher = Batcher { answered: 8, skip: 0 };
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(1).await.unwrap();
        drop(tx);
        assert_eq!(batcher.next(&mut rx, &stats).await, Some(vec![1]), "what was queued still goes");
        assert_eq!(batcher.next(&mut rx, &stats).await, None);
    }

    /// Every heartbeat and election timeout the configuration accepts gives openraft a valid configuration, and
    /// a follower never campaigns before the election timeout has passed in silence.
    #[test]
    fn election_timeouts_are_valid_and_never_shorter_than_asked() {
        for heartbeat_ms in [1, 2, 3, 7, 40, 100, 333, 10_000] {
            for factor in [3, 4, 10] {
                // At least 3 heartbeats and at most 60 s, as the configuration requires.
                let election_ms = (heartbeat_ms * factor).min(60_000);
                let (min, max) = election_timeouts(heartbeat_ms, election_ms);
                let config = openraft::Config {
                    heartbeat_interval: heartbeat_ms,
                    election_timeout_min: min,
                    election_timeout_max: max,
                    heartbeat_min_interval: Some(heartbeat_ms / 2),
                    ..openraft::Config::default()
                };
                assert!(
                    config.validate().is_ok(),
                    "heartbeat {heartbeat_ms} ms, election {election_ms} ms: {min}..{max}"
                );
                assert!(max + min >= election_ms, "{heartbeat_ms}/{election_ms}: campaigns after {} ms", max + min);
            }
        }
        assert_eq!(election_timeouts(40, 120), (80, 100), "the defaults: a campaign after 180 to 200 ms of silence");
    }
}
