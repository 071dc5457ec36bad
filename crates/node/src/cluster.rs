//! The cluster configuration and the work that follows it: which nodes are members, where each partition's
//! replicas belong, and moving replicas there.
//!
//! The configuration lives in the **metadata group** ([`META_GROUP`], a Raft group on up to five nodes, the
//! founders at first; a voter that leaves the cluster is replaced by a live member) under one key, and changes
//! only through that group's leader: a node joins (`--join`, or `POST /v1/cluster/nodes`) or is decommissioned
//! (`DELETE /v1/cluster/nodes/{id}`); each change appends the new member list to the history and bumps the epoch.
//! The placement is the ring's: `Placement::new` on the first member list, then `Placement::rebalance` for each
//! later one, so every node derives the same assignment, and a change moves exactly the replicas `Placement::diff`
//! names.
//!
//! **Moving replicas.** Every node, every 500 ms: fetches the configuration; starts an empty Raft group for each
//! partition the placement now gives it; for each partition it leads whose voters differ from the placement,
//! adds the missing replicas as learners, waits until they caught up (a snapshot or the log), then makes the
//! placement's replicas the voters (one partition at a time per leader: the throttle); and drops (with its data)
//! any group the placement no longer gives it once that group's leader confirms it is no longer a member. The
//! metadata group moves the same way, towards [`ClusterConfig::meta_members`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use openraft::raft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use rampart_ring::{Node as RingNode, NodeId as RingNodeId, PartitionId, Placement, PlacementConfig, Zone};
use serde::{Deserialize, Serialize};

use crate::network::CallError;
use crate::node::{group_name, Node, Read, ReadResult, RequestError};
use crate::store::CONFIG_KEY;
use crate::types::{raft_id, GroupId, Op, PeerNode, RaftId};

/// The metadata group's number (above every partition).
pub const META_GROUP: GroupId = u32::MAX - 1;
/// The most nodes the metadata group runs on.
pub const META_MAX: usize = 5;
/// How often a node reconciles its groups with the configuration.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Every how many rounds a node that runs a replica of the metadata group, but does not lead it, also asks the
/// members for a newer configuration (see [`Node::newest_from_peers`]).
const SURVEY_EVERY: u64 = 10;
/// How long a new replica may take to catch up before the move is retried.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// The same for the metadata group, whose state is small: a new voter that does not catch up in this time is
/// likely gone, and its leader has other work (every move, every replacement) waiting behind it.
const META_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// One member of the cluster, as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub zone: String,
    pub weight: u32,
}

/// The cluster configuration, replicated by the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Changes applied since the cluster was created.
    pub epoch: u64,
    pub partitions: u32,
    pub replicas: u32,
    /// Every member list the cluster has had, the first one (the founders) first and the current one last.
    pub history: Vec<Vec<Member>>,
    /// How to reach every node ever a member.
    pub addrs: BTreeMap<String, PeerNode>,
    /// The metadata group's voters once a change has replaced one (a voter decommissioned, or dead and replaced);
    /// until then (and in configurations recorded before voters were), the founders' rule of
    /// [`ClusterConfig::founding_meta`].
    #[serde(default)]
    pub meta: Option<Vec<String>>,
    /// A random number the metadata group's first leader gives the cluster ([`AdminOp::Identify`]), presented on
    /// every peer request: a node left from an earlier cluster founded alike on the same addresses carries
    /// another, and is refused. `None` until then (and in configurations recorded before identities were).
    #[serde(default)]
    pub identity: Option<u64>,
}

/// Both identities, when both are known and differ: configurations of two different clusters. (One unknown, the
/// configuration was recorded before the cluster was given its identity, or before identities existed.)
pub fn other_identities(a: Option<u64>, b: Option<u64>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => Some((a, b)),
        _ => None,
    }
}

/// A change to the member list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminOp {
    /// Adds (or re-announces) a node; answered with the configuration that holds it.
    Join { member: Member, addr: PeerNode },
    /// Decommissions a node: its replicas move to the others.
    Remove { id: String },
    /// Gives the metadata group a live member in place of each voter it has lost, up to its founding size: sent
    /// by the group's leader when a change left it smaller for want of a live member to take a voter's place.
    Refill,
    /// Gives the cluster its identity, if it has none yet: sent by the metadata group's leader.
    Identify { identity: u64 },
}

/// Why a configuration change was refused. Nothing changed.
#[derive(Clone, Debug, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum AdminError {
    #[error("no node {0} in the cluster")]
    UnknownNode(String),
    #[error("removing {0} would leave fewer nodes than replicas per partition")]
    TooFew(String),
    #[error("{0} is a member at another peer address; decommission it first")]
    IdInUse(String),
    #[error("{0} is the metadata group's last voter and no live member can take its place yet; retry once one is up")]
    LastMetaVoter(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Request(#[from] RequestError),
}

impl ClusterConfig {
    /// The configuration of a cluster created from `founders` (epoch 0).
    pub fn founding(founders: Vec<Member>, addrs: BTreeMap<String, PeerNode>, partitions: u32, replicas: u32) -> Self {
        ClusterConfig { epoch: 0, partitions, replicas, history: vec![founders], addrs, meta: None, identity: None }
    }

    /// Whether `other` is a configuration of the same cluster: the same shape and the same founders at the same
    /// peer addresses (what `--initial-cluster` gave every founder). A data directory reused for another cluster
    /// must not bring that cluster's configuration along.
    pub fn same_cluster(&self, other: &ClusterConfig) -> bool {
        let founders = |c: &ClusterConfig| -> Vec<(Member, Option<String>)> {
            let first = c.history.first().map_or(&[][..], Vec::as_slice);
            first.iter().map(|m| (m.clone(), c.addrs.get(&m.id).map(|a| a.peer.clone()))).collect()
        };
        (self.partitions, self.replicas) == (other.partitions, other.replicas)
            && founders(self) == founders(other)
            && other_identities(self.identity, other.identity).is_none()
    }

    pub fn members(&self) -> &[Member] {
        self.history.last().map_or(&[], Vec::as_slice)
    }

    /// The peer addresses of the members other than `me` (where to start gossip).
    pub fn peers_but(&self, me: &str) -> impl Iterator<Item = std::net::SocketAddr> + '_ {
        let me = me.to_owned();
        self.members().iter().filter(move |m| m.id != me).filter_map(|m| self.addrs.get(&m.id)?.peer.parse().ok())
    }

    /// The nodes the metadata group runs on (sorted by id): the recorded voters, else the founders' rule.
    pub fn meta_members(&self) -> Vec<String> {
        self.meta.clone().unwrap_or_else(|| self.founding_meta())
    }

    /// The metadata group a cluster is founded with: at most [`META_MAX`] founders, taken from their zones in turn
    /// (zones by name, founders by id within each). With three zones or more, no zone may hold half of them (a
    /// zone's loss then leaves a majority), so with unbalanced zones there may be fewer: founders 4/1/1 over three
    /// zones give three voters, one per zone. With one or two zones (and in clusters founded before zones were
    /// given), the first five by id, as before. This must never change for a founding list once a cluster has it:
    /// every node derives the group's first voters from it.
    pub fn founding_meta(&self) -> Vec<String> {
        let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in self.history.first().into_iter().flatten() {
            zones.entry(m.zone.as_str()).or_default().push(m.id.as_str());
        }
        for ids in zones.values_mut() {
            ids.sort_unstable();
        }
        let mut ids: Vec<String> = if zones.len() < 3 {
            let mut all: Vec<&str> = zones.values().flatten().copied().collect();
            all.sort_unstable();
            all.into_iter().take(META_MAX).map(str::to_owned).collect()
        } else {
            // Round-robin over the zones, then the longest prefix (up to five) in which no zone holds half.
            let rounds = zones.values().map(Vec::len).max().unwrap_or(0);
            let order: Vec<(&str, &str)> = (0..rounds)
                .flat_map(|r| zones.iter().filter_map(move |(zone, ids)| ids.get(r).map(|id| (*zone, *id))))
                .collect();
            let balanced = |k: usize| {
                let mut count: BTreeMap<&str, usize> = BTreeMap::new();
                order[..k].iter().all(|(zone, _)| {
                    let c = count.entry(zone).or_default();
                    *c += 1;
                    *c * 2 < k
                })
            };
            let k = (1..=order.len().min(META_MAX)).rev().find(|&k| balanced(k)).unwrap_or(1);
            order[..k].iter().map(|(_, id)| (*id).to_owned()).collect()
        };
        ids.sort();
        ids
    }

    /// The placement: the ring's assignment for the first member list, rebalanced through every later one.
    pub fn placement(&self) -> Result<Placement, rampart_ring::PlacementError> {
        let ring_nodes = |members: &[Member]| -> Result<Vec<RingNode>, rampart_ring::PlacementError> {
            members
                .iter()
                .map(|m| {
                    Ok(RingNode::new(RingNodeId::new(m.id.clone())?)
                        .in_zone(Zone::new(m.zone.clone())?)
                        .with_weight(m.weight))
                })
                .collect()
        };
        let config = PlacementConfig { partitions: self.partitions, replicas: self.replicas, vnodes: 160 };
        let mut placement = Placement::new(config, ring_nodes(&self.history[0])?)?;
        for members in &self.history[1..] {
            placement = placement.rebalance(ring_nodes(members)?)?;
        }
        Ok(placement)
    }

    /// The metadata group's voters for `next`'s member list: the current voters still members, and, in place of
    /// those that left, members `alive` names that are not voters yet, each from the zone with the fewest voters
    /// (then by zone name and id), up to the size the cluster was founded with. `None` when the voters stay.
    fn meta_for(&self, next: &ClusterConfig, alive: &BTreeSet<String>) -> Option<Vec<String>> {
        let current = self.meta_members();
        let members = next.members();
        let mut voters: Vec<String> = current.iter().filter(|v| members.iter().any(|m| &m.id == *v)).cloned().collect();
        let target = self.founding_meta().len();
        if voters.len() == current.len() && voters.len() >= target {
            return None;
        }
        let zone_of = |id: &str| members.iter().find(|m| m.id == id).map(|m| m.zone.clone()).unwrap_or_default();
        let mut candidates: Vec<&Member> =
            members.iter().filter(|m| alive.contains(&m.id) && !voters.contains(&m.id)).collect();
        while voters.len() < target {
            let mut held: BTreeMap<String, usize> = BTreeMap::new();
            for v in &voters {
                *held.entry(zone_of(v)).or_default() += 1;
            }
            let Some(pick) = candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, m)| (held.get(&m.zone).copied().unwrap_or(0), m.zone.as_str(), m.id.as_str()))
                .map(|(i, _)| i)
            else {
                break;
            };
            voters.push(candidates.remove(pick).id.clone());
        }
        voters.sort();
        (voters != current).then_some(voters)
    }

    /// The configuration after `op`, or `None` if `op` changes nothing. `alive` names the members that may take a
    /// lost metadata voter's place.
    fn apply(&self, op: &AdminOp, alive: &BTreeSet<String>) -> Result<Option<ClusterConfig>, AdminError> {
        let mut next = self.clone();
        let mut members = self.members().to_vec();
        match op {
            AdminOp::Refill => {
                next.meta = self.meta_for(self, alive);
                if next.meta.is_none() {
                    return Ok(None);
                }
                next.epoch += 1;
                return Ok(Some(next));
            }
            AdminOp::Identify { identity } => {
                if self.identity.is_some() || *identity == 0 {
                    return Ok(None);
                }
                next.identity = Some(*identity);
                next.epoch += 1;
                return Ok(Some(next));
            }
            AdminOp::Join { member, addr } => {
                if self.members().contains(member) && self.addrs.get(&member.id) == Some(addr) {
                    return Ok(None);
                }
                // A member's Raft identity must not move to another address: the new process has none of its votes.
                let known = self.addrs.get(&member.id).map(|a| a.peer.as_str());
                if self.members().iter().any(|m| m.id == member.id) && known != Some(addr.peer.as_str()) {
                    return Err(AdminError::IdInUse(member.id.clone()));
                }
                next.addrs.insert(member.id.clone(), addr.clone());
                match members.iter_mut().find(|m| m.id == member.id) {
                    Some(m) => *m = member.clone(),
                    None => members.push(member.clone()),
                }
            }
            AdminOp::Remove { id } => {
                if !members.iter().any(|m| &m.id == id) {
                    return Err(AdminError::UnknownNode(id.clone()));
                }
                if members.len() <= self.replicas as usize {
                    return Err(AdminError::TooFew(id.clone()));
                }
                members.retain(|m| &m.id != id);
            }
        }
        next.history.push(members);
        next.epoch += 1;
        next.placement().map_err(|e| AdminError::Invalid(e.to_string()))?;
        if let Some(meta) = self.meta_for(&next, alive) {
            if meta.is_empty() {
                // The configuration would live in a group with no voter: nobody could change it again.
                let AdminOp::Remove { id } = op else { return Err(AdminError::Invalid("no metadata voter".into())) };
                return Err(AdminError::LastMetaVoter(id.clone()));
            }
            next.meta = Some(meta);
        }
        Ok(Some(next))
    }
}

/// The configuration in force on this node and what it implies.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub placement: Placement,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Result<Cluster, rampart_ring::PlacementError> {
        let placement = config.placement()?;
        Ok(Cluster { config, placement })
    }

    /// A partition's replicas (Raft ids) in preference order.
    pub fn replicas(&self, group: GroupId) -> Vec<RaftId> {
        if group == META_GROUP {
            return self.config.meta_members().iter().map(|id| raft_id(id)).collect();
        }
        self.placement
            .replicas(PartitionId(group))
            .map(|r| r.map(|n| raft_id(n.id.as_str())).collect())
            .unwrap_or_default()
    }

    /// The groups (partitions, and the metadata group) `me` should replicate.
    pub fn groups_of(&self, me: RaftId) -> BTreeSet<GroupId> {
        let mut groups: BTreeSet<GroupId> =
            (0..self.config.partitions).filter(|p| self.replicas(*p).contains(&me)).collect();
        if self.replicas(META_GROUP).contains(&me) {
            groups.insert(META_GROUP);
        }
        groups
    }
}

impl Node {
    /// Applies a membership change through the metadata group's leader (forwarding to it if need be) and
    /// returns the configuration in force after it.
    pub async fn admin(&self, op: AdminOp) -> Result<ClusterConfig, AdminError> {
        let leader = self.group(META_GROUP).map(|r| {
            let m = r.metrics();
            let m = m.borrow_watched();
            (m.state == ServerState::Leader, m.current_leader)
        });
        if let Some((true, _)) = leader {
            return self.admin_local(op).await;
        }
        let mut targets: Vec<RaftId> = leader.and_then(|(_, l)| l).into_iter().collect();
        targets.extend(self.cluster().replicas(META_GROUP).into_iter().filter(|r| *r != self.me));
        let mut last = AdminError::Request(RequestError::Unavailable(META_GROUP));
        for target in targets {
            match self
                .peers
                .call::<_, Result<ClusterConfig, AdminError>>(
                    target,
                    "/internal/admin-local",
                    &op,
                    Duration::from_secs(90),
                )
                .await
            {
                Ok(Ok(c)) => return Ok(c),
                // The leader proposed it and cannot tell whether it committed: not for another node to repeat.
                Ok(Err(e @ AdminError::Request(RequestError::Indeterminate(_) | RequestError::Internal(_)))) => {
                    return Err(e)
                }
                Ok(Err(AdminError::Request(e))) => last = AdminError::Request(e),
                Ok(Err(e)) => return Err(e),
                // Not delivered (or refused before it was read): the next node may take it.
                Err(CallError::Connect(..) | CallError::UnknownPeer(_) | CallError::Status(..)) => {
                    last = AdminError::Request(RequestError::Unavailable(META_GROUP));
                }
                // It may have reached the leader and committed: another node could apply it twice.
                Err(e) => {
                    tracing::info!("configuration change {op:?}: {e}");
                    return Err(AdminError::Request(RequestError::Indeterminate(META_GROUP)));
                }
            }
        }
        Err(last)
    }

    /// Answers `/internal/admin-local`: the change if this node leads the metadata group, else `Unavailable`.
    pub(crate) async fn admin_if_leader(&self, op: AdminOp) -> Result<ClusterConfig, AdminError> {
        let leads = self.group(META_GROUP).is_some_and(|r| r.metrics().borrow_watched().state == ServerState::Leader);
        if !leads {
            return Err(AdminError::Request(RequestError::Unavailable(META_GROUP)));
        }
        self.admin_local(op).await
    }

    /// On the metadata group's leader: one change at a time, on top of the latest committed configuration.
    pub(crate) async fn admin_local(&self, op: AdminOp) -> Result<ClusterConfig, AdminError> {
        let _one_at_a_time = self.admin_lock.lock().await;
        self.admin_locked(op).await
    }

    /// `admin_local` with the change lock already held.
    async fn admin_locked(&self, op: AdminOp) -> Result<ClusterConfig, AdminError> {
        let meta = self.group(META_GROUP).ok_or(RequestError::Unavailable(META_GROUP))?;
        let confirmed =
            tokio::time::timeout(crate::node::READ_TIMEOUT, meta.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            return Err(AdminError::Request(RequestError::Unavailable(META_GROUP)));
        }
        let current = self.stored_config()?.unwrap_or_else(|| self.cluster().config.clone());
        let Some(next) = current.apply(&op, &self.fresh_members())? else { return Ok(current) };
        let json = serde_json::to_string(&next).map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.propose(META_GROUP, Op::SetConfig { epoch: next.epoch, json }).await?;
        // An answer means committed, not yet stored here: the stored configuration is read once this replica has
        // applied everything committed (a ReadIndex round waits for that).
        let applied =
            tokio::time::timeout(crate::node::READ_TIMEOUT, meta.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        if !matches!(applied, Ok(Ok(_))) {
            return Err(AdminError::Request(RequestError::Indeterminate(META_GROUP)));
        }
        // From here on the change may have committed: a failure is an unknown outcome, not a refusal.
        let indeterminate = AdminError::Request(RequestError::Indeterminate(META_GROUP));
        match self.stored_config() {
            // This change itself, not another one that took the same epoch first.
            Ok(Some(c)) if c == next => {
                self.install(c.clone());
                Ok(c)
            }
            // Another configuration won the epoch: nothing of this change was applied.
            Ok(Some(c)) if c.epoch == next.epoch => Err(AdminError::Request(RequestError::Unavailable(META_GROUP))),
            // Later changes (under other leaders) may have followed this one.
            _ => Err(indeterminate),
        }
    }

    /// The configuration this node's replica of the metadata group has applied, if it runs one and it is set.
    pub(crate) fn stored_config(&self) -> Result<Option<ClusterConfig>, RequestError> {
        if self.group(META_GROUP).is_none() {
            return Ok(None);
        }
        let json = self.store.get(META_GROUP, CONFIG_KEY).map_err(|e| RequestError::Internal(e.to_string()))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| RequestError::Internal(format!("cluster configuration: {e}")))
        })
        .transpose()
    }

    /// The latest configuration: from the local metadata replica, else read through the metadata group.
    async fn latest_config(&self) -> Result<Option<ClusterConfig>, RequestError> {
        if self.group(META_GROUP).is_some() {
            return self.stored_config();
        }
        match self.query(META_GROUP, Read::Kv(CONFIG_KEY.into())).await? {
            ReadResult::Kv(Some(json)) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| RequestError::Internal(format!("cluster configuration: {e}"))),
            _ => Ok(None),
        }
    }

    /// The newest configuration a peer has in force, if newer than this node's. Every configuration a node puts
    /// in force was committed by the metadata group, so the newest is safe to take from any member: this is how a
    /// node learns what changed when its replica of the metadata group hears from no leader (it was removed from
    /// the group while it was down, and its own log still names it a voter: asked every [`SURVEY_EVERY`] rounds,
    /// as such a replica may still believe in its last leader) or the group's replicas it knows of cannot be
    /// reached.
    async fn newest_from_peers(&self) -> Option<ClusterConfig> {
        let current = self.cluster().config.clone();
        // The members (not every node ever one: a decommissioned machine may be gone, and each call to it would
        // wait out the timeout).
        let asked: BTreeSet<RaftId> = current
            .members()
            .iter()
            .map(|m| raft_id(&m.id))
            .chain(current.meta_members().iter().map(|id| raft_id(id)))
            .filter(|r| *r != self.me)
            .collect();
        let call = |r: RaftId| self.peers.call::<_, ClusterConfig>(r, "/internal/config", &(), Duration::from_secs(1));
        let answers = join_all(asked.into_iter().map(call)).await;
        answers
            .into_iter()
            .flatten()
            .filter(|c| c.epoch > current.epoch && current.same_cluster(c))
            .max_by_key(|c| c.epoch)
    }

    /// Records the configuration in force in the store, if it is newer than the one recorded: a restart starts from
    /// it, even when no member it could ask is up.
    async fn record_config(&self) {
        let config = self.cluster().config.clone();
        let recorded = self.recorded_epoch.lock().ok().and_then(|r| *r);
        if recorded.is_some_and(|e| e >= config.epoch) {
            return;
        }
        let stored = match serde_json::to_string(&config) {
            Ok(json) => self.store.set_config_record(json).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        match stored {
            Ok(()) => {
                if let Ok(mut r) = self.recorded_epoch.lock() {
                    *r = Some(config.epoch);
                }
            }
            Err(e) => tracing::warn!("recording configuration {}: {e}", config.epoch),
        }
    }

    /// Puts a newer configuration in force here: peers learn new addresses, routing uses the new placement.
    pub(crate) fn install(&self, config: ClusterConfig) {
        if config.epoch <= self.cluster().config.epoch {
            return;
        }
        for (id, addr) in &config.addrs {
            self.peers.insert(raft_id(id), addr.clone());
        }
        self.peers.set_identity(config.identity.unwrap_or(0));
        match Cluster::new(config) {
            Ok(c) => {
                tracing::info!(
                    "cluster configuration {} in force: {} members",
                    c.config.epoch,
                    c.config.members().len()
                );
                if let Ok(mut w) = self.cluster.write() {
                    *w = Arc::new(c);
                }
            }
            Err(e) => tracing::error!("cluster configuration rejected: {e}"),
        }
    }

    /// This node and the members membership calls alive and heard from within about their usual interval (phi
    /// below 1): those that may take a metadata voter's place. (A member killed a moment ago may still be called
    /// alive; its phi has already grown.)
    fn fresh_members(&self) -> BTreeSet<String> {
        let mut fresh: BTreeSet<String> = self
            .membership
            .members()
            .into_iter()
            .filter(|(m, phi)| m.state == rampart_membership::State::Alive && *phi < 1.0)
            .map(|(m, _)| m.id)
            .collect();
        fresh.insert(self.config.id.clone());
        fresh
    }

    /// On the metadata group's leader: decommissions a member this node has not heard from (membership has declared
    /// it dead, it left, or it was never heard of) for longer than `--replace-after-ms`, so its replicas are rebuilt
    /// on the others. A voter of the metadata group is decommissioned the same way, and a live member takes its place
    /// there too (`ClusterConfig::meta_for`), so the group keeps its size through one loss after another.
    ///
    /// Two guards keep a node that merely hears nobody from emptying the cluster: it replaces only while it hears at
    /// least half the members (itself included; a node restarted alone, or cut off from gossip, hears fewer), and
    /// after one removal the next waits until the partitions here have moved, or `--replace-after-ms` has passed.
    async fn replace_dead(&self, cluster: &Cluster) {
        let members = cluster.config.members();
        let states = self.member_states();
        {
            // What membership says of each member, remembered past the time it forgets a dead or departed one (for
            // the view). Only ids the configuration lists: membership may have heard of any number of others.
            // A poisoned lock still holds a usable map (at worst some states a round old).
            let mut last = self.last_heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            last.extend(states.iter().map(|(id, s)| (id.clone(), *s)));
            last.retain(|id, _| cluster.config.addrs.contains_key(id));
        }
        let leads_meta =
            self.group(META_GROUP).is_some_and(|r| r.metrics().borrow_watched().state == ServerState::Leader);
        let heard = |id: &str| id == self.config.id || heard_now(id, &states);
        let mut replacing = self.replacing.lock().await;
        if !leads_meta {
            replacing.since.clear();
            return;
        }
        let now = std::time::Instant::now();
        let due =
            replacing.due(members, heard, cluster.config.replicas as usize, self.config.replace_after, now, || {
                self.moving_here(cluster)
            });
        drop(replacing);
        if let Some(id) = due {
            // Another change may have held the lock a while: the member may be back by now.
            let one_at_a_time = self.admin_lock.lock().await;
            let removed = if heard_now(&id, &self.member_states()) {
                tracing::info!("{id} is back: not replaced");
                None
            } else {
                tracing::warn!(
                    "{id} has been dead, gone or never heard of for {:?}: decommissioning it, its replicas move",
                    self.config.replace_after
                );
                Some(self.admin_locked(AdminOp::Remove { id: id.clone() }).await)
            };
            drop(one_at_a_time);
            if let Some(removed) = removed {
                // Also after an error: one of unknown outcome may have committed, and its moves hold the next. (A
                // member removed drops out of the clocks with the configuration that no longer lists it.)
                self.replacing.lock().await.last = Some(std::time::Instant::now());
                if let Err(e) = removed {
                    tracing::warn!("replacing {id}: {e}");
                }
            }
        }
        // A cluster without an identity (just founded, or founded by a build without them) gets one.
        if self.cluster().config.identity.is_none() {
            use std::hash::BuildHasher as _;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            // Random: std seeds each `RandomState` from the operating system.
            let identity = std::collections::hash_map::RandomState::new().hash_one((now.as_nanos(), self.me)).max(1);
            if let Err(e) = self.admin_local(AdminOp::Identify { identity }).await {
                tracing::info!("giving the cluster its identity: {e}");
            }
        }
        // A metadata group left smaller than it was founded (no member was fresh enough to take a voter's place)
        // is filled as soon as one is.
        let config = &self.cluster().config;
        if config.meta_for(config, &self.fresh_members()).is_some() {
            if let Err(e) = self.admin_local(AdminOp::Refill).await {
                tracing::info!("filling the metadata group: {e}");
            }
        }
    }

    /// What membership says of each member it knows.
    fn member_states(&self) -> BTreeMap<String, rampart_membership::State> {
        self.membership.members().into_iter().map(|(m, _)| (m.id, m.state)).collect()
    }

    /// Whether a partition (or the metadata group) this node runs still has voters other than the configuration's.
    fn moving_here(&self, cluster: &Cluster) -> bool {
        self.hosted_quiet().into_iter().any(|(group, raft, _)| {
            let target: BTreeSet<RaftId> = cluster.replicas(group).into_iter().collect();
            let m = raft.metrics();
            let voters: BTreeSet<RaftId> =
                m.borrow_watched().committed_membership_config.membership().voter_ids().collect();
            !target.is_empty() && voters != target
        })
    }

    /// One round of reconciliation (see the module doc); `survey`: ask the peers for a newer configuration too.
    pub(crate) async fn reconcile(&self, survey: bool) {
        let unreachable = match self.latest_config().await {
            Ok(Some(c)) => {
                self.install(c);
                false
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!("cluster configuration: {e}");
                true
            }
        };
        // A node without a replica of the metadata group reads the configuration through it every round; one with a
        // replica reads its own, which only the survey can show to be stale.
        let (leaderless, follows_meta) = self.group(META_GROUP).map_or((false, false), |r| {
            let m = r.metrics();
            let m = m.borrow_watched();
            (m.current_leader.is_none(), m.state != ServerState::Leader)
        });
        if unreachable || leaderless || (survey && follows_meta) {
            if let Some(c) = self.newest_from_peers().await {
                tracing::info!("cluster configuration {} learnt from a peer", c.epoch);
                self.install(c);
            }
        }
        self.record_config().await;
        self.replace_dead(&self.cluster()).await;
        let cluster = self.cluster();
        let mine = cluster.groups_of(self.me);
        for group in &mine {
            if self.group(*group).is_none() {
                if let Err(e) = self.host(*group).await {
                    tracing::warn!("{}: cannot start its group: {e}", group_name(*group));
                }
            }
        }
        for (group, raft, quiet) in self.hosted_quiet() {
            let (leads, voters, learners) = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                // The committed membership: a change merely appended may still be undone.
                let membership = m.committed_membership_config.membership();
                let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
                let learners: BTreeSet<RaftId> = membership.learner_ids().collect();
                (m.state == ServerState::Leader, voters, learners)
            };
            let target: BTreeSet<RaftId> = cluster.replicas(group).into_iter().collect();
            let moves = leads && voters != target && !target.is_empty();
            // Learners left behind by a move that did not finish (it timed out, or its node was removed).
            let stray: BTreeSet<RaftId> =
                if leads { learners.difference(&target).copied().collect() } else { BTreeSet::new() };
            if moves || !stray.is_empty() {
                // A change of replicas is work: the group wakes (and stays awake while it is under way), and a
                // leader that was quiesced confirms its lease, without which openraft refuses the change.
                quiet.serve();
                crate::node::confirm_lease(&raft).await;
            }
            if moves {
                self.move_replicas(group, &raft, &voters, &target).await;
            } else if !stray.is_empty() {
                if let Err(e) = raft.change_membership(openraft::ChangeMembers::RemoveNodes(stray.clone()), false).await
                {
                    tracing::info!("{}: removing learners {stray:?}: {e}", group_name(group));
                }
                for gone in stray {
                    let _ = self
                        .peers
                        .call::<_, bool>(gone, &format!("/internal/drop/{group}"), &(), Duration::from_secs(2))
                        .await;
                }
            } else if !mine.contains(&group) && !voters.contains(&self.me) && !learners.contains(&self.me) {
                // The group's own membership no longer holds this node (it saw the change that removed it).
                self.unhost(group).await;
            } else if !mine.contains(&group) && !leads && self.removed_from(group, &cluster).await {
                self.unhost(group).await;
            }
        }
    }

    /// On a partition's leader: learners for the new replicas, caught up, then the placement's voters.
    async fn move_replicas(
        &self,
        group: GroupId,
        raft: &crate::node::GroupRaft,
        voters: &BTreeSet<RaftId>,
        target: &BTreeSet<RaftId>,
    ) {
        let nodes = self.peers.nodes();
        let catch_up = if group == META_GROUP { META_CATCH_UP_TIMEOUT } else { CATCH_UP_TIMEOUT };
        // A new replica on a member not heard from could only time out (up to `catch_up`, holding this node's
        // rounds, the replacement of that very member included): the move waits until it is heard.
        let states = self.member_states();
        let unheard = target
            .iter()
            .filter(|t| !voters.contains(t) && **t != self.me)
            .filter_map(|t| nodes.get(t))
            .find(|n| !heard_now(&n.id, &states));
        if let Some(n) = unheard {
            tracing::debug!("{}: waiting to hear from {} before moving a replica there", group_name(group), n.id);
            return;
        }
        for new in target.iter().filter(|t| !voters.contains(t)) {
            let Some(node) = nodes.get(new) else {
                tracing::warn!("{}: no address for replica {new}", group_name(group));
                return;
            };
            tracing::info!("{}: adding {} as a learner", group_name(group), node.id);
            match tokio::time::timeout(catch_up, raft.add_learner(*new, node.clone(), true)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!("{}: add learner {}: {e}", group_name(group), node.id);
                    return;
                }
                Err(_) => {
                    tracing::info!("{}: {} did not catch up in {catch_up:?}", group_name(group), node.id);
                    return;
                }
            }
        }
        // A joint configuration whose new voters died after catching up cannot commit: the next round looks again.
        let changed = match tokio::time::timeout(catch_up, raft.change_membership(target.clone(), false)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::info!("{}: the change of replicas did not commit in {catch_up:?}", group_name(group));
                return;
            }
        };
        match changed {
            Ok(_) => {
                tracing::info!(
                    "{}: replicas are now {:?}",
                    group_name(group),
                    target.iter().filter_map(|t| nodes.get(t).map(|n| n.id.clone())).collect::<Vec<_>>()
                );
                // Tell the replicas that left: they drop the group and its data.
                for gone in voters.iter().filter(|v| !target.contains(v)) {
                    let _ = self
                        .peers
                        .call::<_, bool>(*gone, &format!("/internal/drop/{group}"), &(), Duration::from_secs(2))
                        .await;
                }
            }
            Err(e) => tracing::info!("{}: change membership: {e}", group_name(group)),
        }
    }

    /// Whether `group`'s leader (asked through the placement's replicas) confirms this node is not a member.
    async fn removed_from(&self, group: GroupId, cluster: &Cluster) -> bool {
        for target in cluster.replicas(group) {
            let answer: Result<Option<Vec<RaftId>>, _> =
                self.peers.call(target, &format!("/internal/members/{group}"), &(), Duration::from_secs(2)).await;
            if let Ok(Some(members)) = answer {
                return !members.contains(&self.me);
            }
        }
        false
    }

    /// Answers `/internal/members/{group}`: the group's voters and learners, if this node leads it.
    pub(crate) fn members_if_leader(&self, group: GroupId) -> Option<Vec<RaftId>> {
        let raft = self.group(group)?;
        let m = raft.metrics();
        let m = m.borrow_watched();
        if m.state != ServerState::Leader {
            return None;
        }
        // Only a committed membership decides that a replica may delete its copy.
        if m.membership_config.log_id() != m.committed_membership_config.log_id() {
            return None;
        }
        let membership = m.committed_membership_config.membership();
        Some(membership.voter_ids().chain(membership.learner_ids()).collect())
    }

    /// Answers `/internal/drop/{group}`: drops the group if the placement no longer gives it to this node.
    pub(crate) async fn drop_if_not_mine(&self, group: GroupId) -> bool {
        if self.cluster().groups_of(self.me).contains(&group) {
            return false;
        }
        self.unhost(group).await;
        true
    }
}

/// Reconciles every [`RECONCILE_EVERY`] until the node is gone, or until a majority of the cluster refuses it
/// as another cluster's (then it tells the node to stop).
pub(crate) async fn reconcile_loop(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    for round in 1u64.. {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if let Some(why) = node.shut_out_reason() {
            tracing::error!("{why}");
            node.shut_out.send_replace(Some(why));
            return;
        }
        node.reconcile(round % SURVEY_EVERY == 0).await;
    }
}

impl crate::node::Replacing {
    /// One round of the metadata leader's clocks: the member to decommission now, if any. `heard`: whether this
    /// node hears a member (itself included); `moving`: whether the last removal's moves are still under way.
    pub(crate) fn due(
        &mut self,
        members: &[Member],
        heard: impl Fn(&str) -> bool,
        replicas: usize,
        replace_after: Duration,
        now: std::time::Instant,
        moving: impl FnOnce() -> bool,
    ) -> Option<String> {
        let hears = members.iter().filter(|m| heard(&m.id)).count();
        if hears * 2 < members.len() {
            // It cannot tell who is gone: every clock starts again.
            if !self.since.is_empty() {
                tracing::warn!(
                    "hearing {hears} of {} members: none is replaced until at least half are",
                    members.len()
                );
            }
            self.since.clear();
            return None;
        }
        self.since.retain(|id, _| members.iter().any(|m| m.id == *id) && !heard(id));
        let mut due: Option<(std::time::Instant, &str)> = None;
        for m in members.iter().filter(|m| !heard(&m.id)) {
            // Dead, left (stopped and not back) or never heard of since this node started: one that stayed down
            // through a restart of the whole cluster is known to no live node, so membership never declares it
            // anything, and its replicas would stay one short for good.
            let since = *self.since.entry(m.id.clone()).or_insert(now);
            // One at a time, the one gone longest first: the members left decide whether the next may go.
            if now.duration_since(since) >= replace_after && due.is_none_or(|(d, _)| since < d) {
                due = Some((since, &m.id));
            }
        }
        // With no node to spare (as many members as replicas) there is nowhere to rebuild: the partitions run on
        // the replicas left until the node returns or one is added. (With at least half the members heard and
        // more members than replicas, more than half of any partition's new replicas can be heard ones, so its
        // change can commit.)
        if members.len() <= replicas {
            return None;
        }
        // The last removal's moves first (bounded: a move that cannot finish, its new replica gone too, must not
        // hold every later replacement).
        if self.last.is_some_and(|t| now.duration_since(t) < replace_after) && moving() {
            return None;
        }
        due.map(|(_, id)| id.to_owned())
    }
}

/// Whether membership calls the member alive or suspect (heard from, or not yet given up).
fn heard_now(id: &str, states: &BTreeMap<String, rampart_membership::State>) -> bool {
    use rampart_membership::State;
    matches!(states.get(id), Some(State::Alive | State::Suspect))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founded(zones: &[(&str, &str)]) -> ClusterConfig {
        let members = zones.iter().map(|(id, zone)| Member { id: (*id).into(), zone: (*zone).into(), weight: 100 });
        ClusterConfig::founding(members.collect(), BTreeMap::new(), 8, 3)
    }

    /// The metadata group is spread over zones: with three zones, losing any one leaves it a majority.
    #[test]
    fn the_metadata_group_takes_founders_from_each_zone_in_turn() {
        let one_zone: Vec<(String, &str)> = (0..7).map(|i| (format!("n{i}"), "default")).collect();
        let one_zone: Vec<(&str, &str)> = one_zone.iter().map(|(id, z)| (id.as_str(), *z)).collect();
        assert_eq!(founded(&one_zone).meta_members(), ["n0", "n1", "n2", "n3", "n4"], "the first five by id");
        let zoned = founded(&[("n0", "a"), ("n1", "a"), ("n2", "a"), ("n3", "b"), ("n4", "b"), ("n5", "c")]);
        let meta = zoned.meta_members();
        assert_eq!(meta, ["n0", "n1", "n3", "n4", "n5"]);
        for zone in [["n0", "n1", "n2"].as_slice(), &["n3", "n4"], &["n5"]] {
            let lost = meta.iter().filter(|m| zone.contains(&m.as_str())).count();
            assert!(lost * 2 < meta.len(), "losing {zone:?} takes {lost} of {meta:?}");
        }
        assert_eq!(founded(&[("n1", "x"), ("n0", "y")]).meta_members(), ["n0", "n1"], "fewer founders than five");
        // Unbalanced zones: 4/1/1 gives one voter per zone rather than three of five in zone a.
        let lopsided = founded(&[("n0", "a"), ("n1", "a"), ("n2", "a"), ("n3", "a"), ("n4", "b"), ("n5", "c")]);
        assert_eq!(lopsided.meta_members(), ["n0", "n4", "n5"]);
        // Two zones cannot avoid a zone holding half: the first five by id.
        let two = founded(&[("n0", "a"), ("n1", "a"), ("n2", "a"), ("n3", "b"), ("n4", "b"), ("n5", "b")]);
        assert_eq!(two.meta_members(), ["n0", "n1", "n2", "n3", "n4"]);
    }

    /// A metadata voter that leaves is replaced by a live member from the zone with the fewest voters; with none
    /// alive the group runs smaller and is filled again by a later change; other changes leave the voters alone.
    #[test]
    fn a_lost_metadata_voter_is_replaced_by_a_live_member() {
        let ids = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| (*s).to_owned()).collect() };
        let join = |id: &str, zone: &str| AdminOp::Join {
            member: Member { id: id.into(), zone: zone.into(), weight: 100 },
            addr: PeerNode { id: id.into(), peer: format!("{id}:1"), http: format!("{id}:2") },
        };
        let remove = |id: &str| AdminOp::Remove { id: id.into() };
        let everyone = ids(&["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"]);
        let zoned = founded(&[("n0", "a"), ("n1", "a"), ("n2", "a"), ("n3", "b"), ("n4", "b"), ("n5", "c")]);
        let grown = zoned.apply(&join("n6", "c"), &everyone).unwrap().unwrap();
        assert_eq!(grown.meta, None, "a join keeps the founders' voters");
        let shrunk = grown.apply(&remove("n2"), &everyone).unwrap().unwrap();
        assert_eq!(shrunk.meta, None, "n2 is no voter");

        // Zone a is lost: n0 leaves; n6 (zone c, alive) takes its place, not n2 (zone a, dead).
        let zone_b_c = ids(&["n3", "n4", "n5", "n6"]);
        let replaced = grown.apply(&remove("n0"), &zone_b_c).unwrap().unwrap();
        assert_eq!(replaced.meta_members(), ["n1", "n3", "n4", "n5", "n6"]);
        // With no live member to spare the group runs on four, and a later change brings it back to five.
        let four = zoned.apply(&remove("n0"), &ids(&["n3", "n4", "n5"])).unwrap().unwrap();
        assert_eq!(four.meta_members(), ["n1", "n3", "n4", "n5"]);
        let five = four.apply(&join("n7", "a"), &ids(&["n3", "n4", "n5", "n7"])).unwrap().unwrap();
        assert_eq!(five.meta_members(), ["n1", "n3", "n4", "n5", "n7"]);
        // Or its leader fills it once a member is fresh again: the voters change, the members do not.
        assert_eq!(four.apply(&AdminOp::Refill, &ids(&["n3", "n4", "n5"])).unwrap(), None);
        let refilled = four.apply(&AdminOp::Refill, &ids(&["n2", "n3", "n4", "n5"])).unwrap().unwrap();
        assert_eq!(refilled.meta_members(), ["n1", "n2", "n3", "n4", "n5"]);
        assert_eq!((refilled.epoch, &refilled.history), (four.epoch + 1, &four.history));
        assert_eq!(five.apply(&AdminOp::Refill, &everyone).unwrap(), None, "a full group stays as it is");
        // Its last voter leaves only for a live member: a group with no voter could never change again.
        let alone = ClusterConfig::founding(
            vec![Member { id: "n0".into(), zone: "a".into(), weight: 100 }],
            BTreeMap::new(),
            8,
            1,
        );
        let two = alone.apply(&join("n1", "a"), &everyone).unwrap().unwrap();
        assert_eq!(two.meta_members(), ["n0"]);
        assert_eq!(two.apply(&remove("n0"), &ids(&["n0"])), Err(AdminError::LastMetaVoter("n0".into())));
        assert_eq!(two.apply(&remove("n0"), &ids(&["n1"])).unwrap().unwrap().meta_members(), ["n1"]);
        // A configuration is known as its cluster's by its shape and founders, whatever happened since.
        assert!(zoned.same_cluster(&replaced) && replaced.same_cluster(&zoned));
        assert!(!zoned.same_cluster(&ClusterConfig { partitions: 16, ..zoned.clone() }));
        assert!(!zoned.same_cluster(&alone));
        let mut elsewhere = zoned.clone();
        elsewhere
            .addrs
            .insert("n0".into(), PeerNode { id: "n0".into(), peer: "10.0.0.9:7201".into(), http: "".into() });
        assert!(!zoned.same_cluster(&elsewhere), "the same ids at other peer addresses are another cluster");
        // The recorded voters survive the configuration's JSON, and a configuration recorded without them reads
        // as the founders' rule.
        let json = serde_json::to_string(&five).unwrap();
        assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), five);
        let mut legacy: serde_json::Value = serde_json::to_value(&zoned).unwrap();
        legacy.as_object_mut().unwrap().remove("meta");
        let legacy: ClusterConfig = serde_json::from_value(legacy).unwrap();
        assert_eq!(legacy.meta_members(), zoned.founding_meta());
    }

    /// A cluster is given its identity once; a configuration of the same founders with another identity is another
    /// cluster's, and one without (recorded before identities, or before it was given) may be either.
    #[test]
    fn a_cluster_is_given_its_identity_once() {
        let founded = founded(&[("n0", "x"), ("n1", "y"), ("n2", "z")]);
        let everyone: BTreeSet<String> = ["n0", "n1", "n2"].iter().map(|s| (*s).to_owned()).collect();
        let named = founded.apply(&AdminOp::Identify { identity: 7 }, &everyone).unwrap().unwrap();
        assert_eq!((named.identity, named.epoch), (Some(7), founded.epoch + 1));
        assert_eq!(named.apply(&AdminOp::Identify { identity: 8 }, &everyone).unwrap(), None, "given once");
        assert_eq!(founded.apply(&AdminOp::Identify { identity: 0 }, &everyone).unwrap(), None, "0 is no identity");
        let other = ClusterConfig { identity: Some(8), ..named.clone() };
        assert!(!named.same_cluster(&other) && !other.same_cluster(&named));
        assert!(named.same_cluster(&founded) && founded.same_cluster(&other));
        let mut legacy: serde_json::Value = serde_json::to_value(&named).unwrap();
        legacy.as_object_mut().unwrap().remove("identity");
        assert_eq!(serde_json::from_value::<ClusterConfig>(legacy).unwrap().identity, None);
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n).map(|i| Member { id: format!("n{i}"), zone: "default".into(), weight: 100 }).collect()
    }

    /// Runs a round at `at` ms with the members in `unheard` not heard, three replicas and a 1 s delay.
    fn round(r: &mut crate::node::Replacing, n: usize, unheard: &[&str], at: u64, moving: bool) -> Option<String> {
        let t0 = *T0.get_or_init(std::time::Instant::now);
        let now = t0 + Duration::from_millis(at);
        r.due(&members(n), |id| !unheard.contains(&id), 3, Duration::from_secs(1), now, || moving)
    }

    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

    #[test]
    fn a_member_unheard_for_the_delay_is_due_and_one_heard_again_is_not() {
        let mut r = crate::node::Replacing::default();
        assert_eq!(round(&mut r, 4, &["n3"], 0, false), None, "its clock starts");
        assert_eq!(round(&mut r, 4, &["n3"], 999, false), None);
        assert_eq!(round(&mut r, 4, &["n3"], 1000, false).as_deref(), Some("n3"));
        // Heard again: its clock starts over the next time it is lost.
        assert_eq!(round(&mut r, 4, &[], 1100, false), None);
        assert_eq!(round(&mut r, 4, &["n3"], 1200, false), None);
        assert_eq!(round(&mut r, 4, &["n3"], 2199, false), None);
        assert_eq!(round(&mut r, 4, &["n3"], 2200, false).as_deref(), Some("n3"));
    }

    #[test]
    fn a_node_hearing_fewer_than_half_the_members_replaces_nobody_and_starts_every_clock_again() {
        let mut r = crate::node::Replacing::default();
        // Five members: n4's clock starts, then this node (n0) hears only n1, two of five.
        assert_eq!(round(&mut r, 5, &["n4"], 0, false), None);
        for at in [500, 1000, 5000] {
            assert_eq!(round(&mut r, 5, &["n2", "n3", "n4"], at, false), None, "at {at} ms");
        }
        assert!(r.since.is_empty(), "no clock runs: {:?}", r.since);
        // Hearing n2 and n3 again, n4's clock starts only now.
        assert_eq!(round(&mut r, 5, &["n4"], 6000, false), None);
        assert_eq!(round(&mut r, 5, &["n4"], 6999, false), None);
        assert_eq!(round(&mut r, 5, &["n4"], 7000, false).as_deref(), Some("n4"));
        // Exactly half heard is enough: six members, n0-n2 heard.
        let mut r = crate::node::Replacing::default();
        assert_eq!(round(&mut r, 6, &["n3", "n4", "n5"], 0, false), None);
        assert_eq!(round(&mut r, 6, &["n3", "n4", "n5"], 1000, false).as_deref(), Some("n3"));
    }

    #[test]
    fn nobody_is_replaced_where_no_node_is_left_to_spare() {
        // Three members and three replicas: nowhere to rebuild.
        let mut r = crate::node::Replacing::default();
        assert_eq!(round(&mut r, 3, &["n2"], 0, false), None);
        assert_eq!(round(&mut r, 3, &["n2"], 5000, false), None);
        // Four, two of them heard: one goes, and the partitions keep two heard replicas of three.
        let mut r = crate::node::Replacing::default();
        assert_eq!(round(&mut r, 4, &["n2", "n3"], 0, false), None);
        assert_eq!(round(&mut r, 4, &["n2", "n3"], 1000, false).as_deref(), Some("n2"));
    }

    #[test]
    fn the_member_gone_longest_goes_first_and_the_next_waits_for_the_moves_or_the_delay() {
        let mut r = crate::node::Replacing::default();
        assert_eq!(round(&mut r, 6, &["n5"], 0, false), None);
        assert_eq!(round(&mut r, 6, &["n5", "n4"], 500, false), None);
        assert_eq!(round(&mut r, 6, &["n5", "n4"], 1500, false).as_deref(), Some("n5"), "gone longest");
        // n5 removed at 1.5 s: five members left, n4 due, but the moves are under way.
        r.last = Some(*T0.get().unwrap() + Duration::from_millis(1500));
        assert_eq!(round(&mut r, 5, &["n4"], 2000, true), None, "moves under way");
        assert!(!r.since.contains_key("n5"), "a member no longer listed keeps no clock: {:?}", r.since);
        assert_eq!(round(&mut r, 5, &["n4"], 2000, false).as_deref(), Some("n4"), "moves done");
        assert_eq!(round(&mut r, 5, &["n4"], 2499, true), None);
        assert_eq!(round(&mut r, 5, &["n4"], 2500, true).as_deref(), Some("n4"), "held for the delay at most");
    }
}
