//! Quiescence: a partition with nothing to do costs nothing.
//!
//! Awake, a group's leader heartbeats its followers every `--heartbeat-ms`, and every replica runs openraft's
//! ticker (every 13/64 of a heartbeat) so that a follower notices a silent leader. For 64 idle partitions on three
//! nodes that is tens of thousands of task wakeups a second. So a leader whose group has served nothing for
//! `--quiesce-after-ms`, and whose followers hold every entry it has, asks them to quiesce; when all agree it stops
//! heartbeating the group and they stop their election timers. A quiesced follower watches its leader's *node*
//! through membership (SWIM) instead of the group's heartbeats: once membership no longer calls that node alive,
//! the follower wakes and campaigns at once.
//!
//! What wakes a group:
//! - on its leader: a request served for it (a write or a read) or a change of its replicas; a follower's node
//!   that membership no longer calls alive (it may come back with no memory of the quiescence and campaign);
//! - on a follower: an append that carries entries, a vote request, a leader other than the one it quiesced
//!   under or one that is no longer a voter, or that leader's node no longer alive. (Not a pre-vote: granting one
//!   changes nothing, and waking on it would make every follower a candidate at once. The real vote that follows a
//!   successful pre-vote wakes it.)
//!
//! Raft's safety never depends on timers, so none of this can lose or fork data. A wrong guess costs liveness
//! only, and boundedly: one election in an idle group, or a failover at membership's detection speed instead of
//! Raft's. A group stays awake while anything is in flight, so a partition under load fails over as fast as ever.
//! Pre-vote does not shield a quiesced group the way it shields an awake one: its replicas have no recent word
//! from the leader to defend, so a follower woken by a false suspicion of the leader's node wins the election
//! (one election in an idle group).
//!
//! Leaders also stop their own ticker whether quiesced or not: with openraft's heartbeats replaced by the
//! node-wide round, a leader's tick has nothing to do. The metadata group never quiesces (one group: little to
//! save, and configuration changes run through it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use openraft::metrics::RaftMetrics;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::cluster::META_GROUP;
use crate::node::Node;
use crate::types::{raft_id, GroupId, RaftId, TypeConfig};

/// How long a leader waits for its followers to answer a request to quiesce.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a group is quiesced on this node and, on its leader, how much it has served.
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    /// Bit 0: quiesced. The bits above count the requests this node served for the group as its leader.
    state: AtomicU64,
    /// On a quiesced follower: the leader it quiesced under.
    leader: AtomicU64,
}

impl Quiet {
    pub(crate) fn is_quiesced(&self) -> bool {
        self.state.load(Ordering::Acquire) & 1 == 1
    }

    /// Requests served so far (the counter a leader asks its followers under).
    fn served(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> 1
    }

    /// A request served here as leader: counts it and wakes the group.
    pub(crate) fn serve(&self) {
        if self.state.fetch_add(2, Ordering::AcqRel) & 1 == 1 {
            self.wake();
        }
    }

    /// Quiesces a leader's group if it has served nothing since `served` (when its followers were asked).
    fn quiesce_leader(&self, served: u64) -> bool {
        self.state.compare_exchange(served << 1, (served << 1) | 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn quiesce_follower(&self, leader: RaftId) {
        self.leader.store(leader, Ordering::Release);
        self.state.fetch_or(1, Ordering::AcqRel);
    }

    /// Wakes the group; true if it was quiesced.
    pub(crate) fn wake(&self) -> bool {
        self.state.fetch_and(!1, Ordering::AcqRel) & 1 == 1
    }
}

/// A leader's request that a follower quiesce one group: valid only if the follower still follows `leader` in
/// `term` and holds and has committed exactly the entries up to `last_index`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ask {
    pub group: GroupId,
    pub leader: RaftId,
    pub term: u64,
    pub last_index: u64,
}

/// The members membership calls alive now (this node always is).
pub(crate) fn alive(node: &Node) -> BTreeSet<RaftId> {
    let mut alive: BTreeSet<RaftId> = node
        .membership
        .members()
        .into_iter()
        .filter(|(m, _)| m.state == rampart_membership::State::Alive)
        .map(|(m, _)| raft_id(&m.id))
        .collect();
    alive.insert(node.me);
    alive
}

/// Whether a quiesced group must wake, judged from its metrics and who is alive.
pub(crate) fn must_wake(m: &RaftMetrics<TypeConfig>, me: RaftId, quiet: &Quiet, alive: &BTreeSet<RaftId>) -> bool {
    match m.state {
        ServerState::Leader => m.membership_config.membership().voter_ids().any(|v| v != me && !alive.contains(&v)),
        ServerState::Follower => {
            let leader = quiet.leader.load(Ordering::Acquire);
            m.current_leader != Some(leader)
                || !alive.contains(&leader)
                // A leader that removed itself from the group steps down and leaves it: no one would campaign.
                || !is_voter(m, leader)
        }
        _ => true,
    }
}

/// Whether `id` is a voter of the group's effective membership.
fn is_voter(m: &RaftMetrics<TypeConfig>, id: RaftId) -> bool {
    m.membership_config.membership().voter_ids().any(|v| v == id)
}

/// On a follower: answers a leader's requests to quiesce, quiescing each group that qualifies.
pub(crate) fn answer(node: &Node, asks: &[Ask]) -> Vec<bool> {
    let alive = alive(node);
    asks.iter()
        .map(|ask| {
            let Some((raft, quiet)) = node.group_quiet(ask.group) else { return false };
            let qualifies = |m: &RaftMetrics<TypeConfig>| {
                m.state == ServerState::Follower
                    && m.current_leader == Some(ask.leader)
                    && m.current_term == ask.term
                    && m.last_log_index == Some(ask.last_index)
                    && m.local_committed.as_ref().map(|c| c.index) == Some(ask.last_index)
                    && is_voter(m, ask.leader)
                    && alive.contains(&ask.leader)
            };
            if !qualifies(&raft.metrics().borrow_watched()) {
                return false;
            }
            quiet.quiesce_follower(ask.leader);
            raft.runtime_config().tick(false);
            // An append handled between the check and the quiescing would have found the group awake: look again.
            if !qualifies(&raft.metrics().borrow_watched()) {
                if quiet.wake() {
                    raft.runtime_config().tick(true);
                }
                return false;
            }
            true
        })
        .collect()
}

/// On a leader: whether `m` shows a group with nothing in flight: every entry committed and held by every voter,
/// and no configuration change or learner under way. Returns the ask and the followers to send it to.
fn settled(m: &RaftMetrics<TypeConfig>, group: GroupId) -> Option<(Ask, Vec<RaftId>)> {
    if m.state != ServerState::Leader {
        return None;
    }
    let last_index = m.last_log_index?;
    let membership = m.membership_config.membership();
    // A leader that is no longer a voter is about to step down and leave the group to the others.
    if membership.get_joint_config().len() != 1 || membership.learner_ids().next().is_some() || !is_voter(m, m.id) {
        return None;
    }
    if m.local_committed.as_ref().map(|c| c.index) != Some(last_index) {
        return None;
    }
    let replication = m.replication.as_ref()?;
    let followers: Vec<RaftId> = membership.voter_ids().filter(|v| *v != m.id).collect();
    let caught_up = followers
        .iter()
        .all(|f| replication.get(f).is_some_and(|matched| matched.as_ref().map(|l| l.index) == Some(last_index)));
    caught_up.then_some((Ask { group, leader: m.id, term: m.current_term, last_index }, followers))
}

/// Every `--quiesce-after-ms` / 4: asks the followers of each group this node leads that has served nothing for
/// `--quiesce-after-ms` to quiesce it, and quiesces the groups all of whose followers agreed.
pub(crate) async fn quiesce_loop(node: std::sync::Weak<Node>) {
    let Some(after) = node.upgrade().map(|n| n.config.quiesce_after) else { return };
    if after.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(after / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per group: the served counter last seen and since when it has not moved.
    let mut idle: BTreeMap<GroupId, (u64, Instant)> = BTreeMap::new();
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let now = Instant::now();
        let mut candidates: Vec<(Ask, Vec<RaftId>, u64, Arc<Quiet>)> = Vec::new();
        let hosted = node.hosted_quiet();
        idle.retain(|g, _| hosted.iter().any(|(h, _, _)| h == g));
        for (group, raft, quiet) in hosted {
            if group == META_GROUP || quiet.is_quiesced() {
                continue;
            }
            let served = quiet.served();
            let since = match idle.get(&group) {
                Some((seen, since)) if *seen == served => *since,
                _ => {
                    idle.insert(group, (served, now));
                    continue;
                }
            };
            if now.duration_since(since) < after {
                continue;
            }
            let settled = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                settled(&m, group)
            };
            if let Some((ask, followers)) = settled {
                candidates.push((ask, followers, served, quiet));
            }
        }
        if candidates.is_empty() {
            continue;
        }
        // One request per follower, carrying every group it is asked to quiesce.
        let mut per_follower: BTreeMap<RaftId, Vec<Ask>> = BTreeMap::new();
        for (ask, followers, _, _) in &candidates {
            for f in followers {
                per_follower.entry(*f).or_default().push(ask.clone());
            }
        }
        let answers = join_all(per_follower.into_iter().map(|(f, asks)| {
            let node = node.clone();
            async move {
                let answer: Result<Vec<bool>, _> = node.peers.call(f, "/internal/quiesce", &asks, ASK_TIMEOUT).await;
                let agreed: BTreeSet<GroupId> = match answer {
                    Ok(a) => asks.iter().zip(a).filter(|(_, yes)| *yes).map(|(ask, _)| ask.group).collect(),
                    Err(e) => {
                        tracing::debug!("asking {f} to quiesce: {e}");
                        BTreeSet::new()
                    }
                };
                (f, agreed)
            }
        }))
        .await;
        let agreed: BTreeMap<RaftId, BTreeSet<GroupId>> = answers.into_iter().collect();
        for (ask, followers, served, quiet) in candidates {
            let all = followers.iter().all(|f| agreed.get(f).is_some_and(|groups| groups.contains(&ask.group)));
            if all && quiet.quiesce_leader(served) {
                tracing::debug!("partition {}: quiesced at index {}", ask.group, ask.last_index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type C = TypeConfig;

    /// Metrics of node `me` in `state`, in a group of `voters` (and `learners`) whose log ends at index 5, all of
    /// it committed; on a leader, each follower holding up to `matched`.
    fn metrics(me: RaftId, state: ServerState, voters: &[RaftId], learners: &[RaftId], matched: u64) -> RaftMetrics<C> {
        let mut m = RaftMetrics::new_initial(me);
        m.state = state;
        m.current_term = 2;
        m.last_log_index = Some(5);
        m.local_committed = Some(openraft::testing::log_id::<C>(2, 1, 5));
        let all = voters.iter().chain(learners).copied();
        let membership = openraft::Membership::new_with_defaults(vec![voters.iter().copied().collect()], all);
        m.membership_config = Arc::new(openraft::StoredMembership::new(None, membership));
        if state == ServerState::Leader {
            let followers = voters.iter().chain(learners).filter(|v| **v != me);
            m.replication =
                Some(followers.map(|f| (*f, Some(openraft::testing::log_id::<C>(2, me, matched)))).collect());
        } else {
            m.current_leader = Some(1);
        }
        m
    }

    /// A leader asks only with every entry held by every voter, no learner, and itself still a voter.
    #[test]
    fn a_leader_asks_only_when_its_group_is_settled() {
        let (ask, followers) = settled(&metrics(1, ServerState::Leader, &[1, 2, 3], &[], 5), 7).expect("settled");
        assert_eq!((ask.group, ask.leader, ask.term, ask.last_index), (7, 1, 2, 5));
        assert_eq!(followers, vec![2, 3]);
        assert!(settled(&metrics(1, ServerState::Leader, &[1, 2, 3], &[], 4), 7).is_none(), "a follower lags");
        assert!(settled(&metrics(1, ServerState::Leader, &[1, 2, 3], &[4], 5), 7).is_none(), "a learner");
        assert!(settled(&metrics(1, ServerState::Leader, &[2, 3, 4], &[], 5), 7).is_none(), "no longer a voter");
        assert!(settled(&metrics(2, ServerState::Follower, &[1, 2, 3], &[], 5), 7).is_none(), "not the leader");
    }

    /// A quiesced follower wakes when its leader's node is not alive, when another leader appears, or when its
    /// leader left the group; a quiesced leader wakes when a follower's node is not alive.
    #[test]
    fn quiesced_replicas_wake_when_their_peers_are_gone() {
        let quiet = Quiet::default();
        quiet.quiesce_follower(1);
        let everyone: BTreeSet<RaftId> = [1, 2, 3].into();
        let follower = metrics(2, ServerState::Follower, &[1, 2, 3], &[], 5);
        assert!(!must_wake(&follower, 2, &quiet, &everyone));
        assert!(must_wake(&follower, 2, &quiet, &[2, 3].into()), "the leader's node is not alive");
        let mut other = follower.clone();
        other.current_leader = Some(3);
        assert!(must_wake(&other, 2, &quiet, &everyone), "another leader");
        assert!(must_wake(&metrics(2, ServerState::Follower, &[2, 3, 4], &[], 5), 2, &quiet, &everyone), "left");
        assert!(must_wake(&metrics(2, ServerState::Candidate, &[1, 2, 3], &[], 5), 2, &quiet, &everyone));
        let leader = metrics(1, ServerState::Leader, &[1, 2, 3], &[], 5);
        assert!(!must_wake(&leader, 1, &quiet, &everyone));
        assert!(must_wake(&leader, 1, &quiet, &[1, 2].into()), "a follower's node is not alive");
    }

    /// A request served between the ask and the answers keeps the leader awake; serving wakes a quiesced
    /// leader; a follower quiesces and wakes.
    #[test]
    fn serving_keeps_a_leader_awake_and_wakes_it() {
        let q = Quiet::default();
        q.serve();
        let asked_at = q.served();
        q.serve();
        assert!(!q.quiesce_leader(asked_at), "served since the ask: stays awake");
        assert!(!q.is_quiesced());
        assert!(q.quiesce_leader(q.served()));
        assert!(q.is_quiesced());
        q.serve();
        assert!(!q.is_quiesced(), "a request wakes it");
        assert_eq!(q.served(), 3);

        q.quiesce_follower(7);
        assert!(q.is_quiesced());
        assert!(q.wake());
        assert!(!q.wake(), "already awake");
    }
}
