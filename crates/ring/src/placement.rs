//! Data ownership: partitions to preference lists of distinct nodes, balanced, zone-spread, minimal movement.
//!
//! # The method
//!
//! A plain consistent-hash ring places data with a statistical balance only: with 160 virtual nodes the busiest
//! of 100 nodes holds 20–30% more than the mean, and a partition-level assignment (a few hundred partitions) is
//! lumpier still. Rampart therefore layers an exact, *balanced assignment* on the ring:
//!
//! 1. **Quotas.** Every node gets an integer quota of partition replicas: `P × R` split in proportion to
//!    weight, first over zones (no zone may hold more than one replica of a partition while zones suffice), then
//!    over the nodes of each zone, capped at one replica per partition per node. Remainders go, largest first,
//!    to the nodes that already hold the most, so a change of membership does not shuffle quotas among
//!    bystanders. Every node ends at exactly its quota: the busiest holds at most `ceil(mean)` replicas.
//! 2. **The ring decides who gets what.** A vacant replica slot of partition `p` goes to the first node, walking
//!    the ring clockwise from `p`'s point, that is under quota, not yet in `p`, and (if possible) of a zone `p`
//!    does not use yet. A node under quota takes over slots from over-quota nodes in the partitions the ring puts
//!    it closest to.
//! 3. **Incremental.** A new placement is computed *from the previous one*. Replicas on nodes that left leave a
//!    vacancy; everything else stays unless its node is over quota. So when a node joins, only replicas that move
//!    *to the joiner* move (the joiner's quota, i.e. the optimum `1/(N+1)`); when a node leaves, only *its*
//!    replicas move. The result is still deterministic: the same previous placement and the same node set give
//!    the same new placement on every node, and the cluster replicates the placement itself (with its epoch)
//!    through the metadata group, so every node starts from the same previous placement.
//!
//! **Invariants** (checked by [`Placement::check`] and by the property tests): every partition has
//! `min(R, nodes)` distinct nodes; every node holds exactly its quota; with at least `R` zones of enough
//! capacity every partition spans `R` zones; the epoch grows by one on every change.

use std::collections::BTreeMap;

use crate::hash::{key_hash, partition_point, reduce};
use crate::node::{Node, NodeId};
use crate::ring::Ring;
use crate::PlacementError;

/// Upper bound on the number of partitions of a cluster.
pub const MAX_PARTITIONS: u32 = 65_536;
/// Upper bound on the replication factor.
pub const MAX_REPLICAS: u32 = 7;
/// Upper bound on the virtual nodes of an ordinary node.
pub const MAX_VNODES: u32 = 10_000;

/// A partition's number, `0..P`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// The fixed shape of a cluster's placement, chosen when the cluster is created.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PlacementConfig {
    /// `P`: how many partitions the key space is cut into (1 to [`MAX_PARTITIONS`]). Fixed for a cluster's life.
    pub partitions: u32,
    /// `R`: replicas of each partition, on distinct nodes (1 to [`MAX_REPLICAS`]).
    pub replicas: u32,
    /// Virtual nodes of an ordinary node on the ring (1 to [`MAX_VNODES`]).
    pub vnodes: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self { partitions: 64, replicas: 3, vnodes: 160 }
    }
}

impl PlacementConfig {
    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<(), PlacementError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(PlacementError::InvalidPartitions(self.partitions));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(PlacementError::InvalidReplicas(self.replicas));
        }
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return Err(PlacementError::InvalidVnodes(self.vnodes));
        }
        Ok(())
    }
}

/// One replica that changes nodes between two placements.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Move {
    pub partition: PartitionId,
    /// The node that gives the replica up; `None` when the partition gains a replica (it had fewer than `R`).
    pub from: Option<NodeId>,
    /// The node that receives it; `None` when the partition loses a replica (fewer nodes than `R`).
    pub to: Option<NodeId>,
}

/// An immutable placement: which nodes hold which partitions, at an epoch.
///
/// Cheap to read from many threads (share it behind an `Arc`); a membership change builds a new one with
/// [`Placement::rebalance`].
#[derive(Clone, Debug)]
pub struct Placement {
    epoch: u64,
    config: PlacementConfig,
    ring: Ring,
    /// Row `p` lists partition `p`'s replicas as indices into `ring.nodes()`, in preference order (the first is
    /// the preferred leader).
    table: Vec<Vec<u32>>,
}

impl Placement {
    /// The first placement of a cluster (epoch 1).
    pub fn new(config: PlacementConfig, nodes: Vec<Node>) -> Result<Self, PlacementError> {
        config.validate()?;
        let ring = Ring::new(nodes, config.vnodes)?;
        let table = plan(&ring, &config, vec![Vec::new(); config.partitions as usize])?;
        Ok(Self { epoch: 1, config, ring, table })
    }

    /// The placement for a new node set, computed from this one so that the fewest replicas move (epoch + 1).
    /// Nodes are matched by id; a node whose weight or zone changed keeps what it can.
    pub fn rebalance(&self, nodes: Vec<Node>) -> Result<Self, PlacementError> {
        let ring = Ring::new(nodes, self.config.vnodes)?;
        let index: BTreeMap<&NodeId, u32> = ring.nodes().iter().enumerate().map(|(i, n)| (&n.id, i as u32)).collect();
        let old_nodes = self.ring.nodes();
        let rows = self
            .table
            .iter()
            .map(|row| row.iter().filter_map(|&o| index.get(&old_nodes[o as usize].id).copied()).collect())
            .collect();
        let table = plan(&ring, &self.config, rows)?;
        Ok(Self { epoch: self.epoch + 1, config: self.config, ring, table })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// The nodes, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        self.ring.nodes()
    }

    /// The ring the placement was computed on.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The partition a key belongs to. Depends only on the key and `P`, never on the nodes.
    #[inline]
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        PartitionId(reduce(key_hash(key), self.config.partitions))
    }

    /// A partition's replicas in preference order, or `None` for a partition number out of range.
    pub fn replicas(&self, partition: PartitionId) -> Option<impl Iterator<Item = &Node> + '_> {
        let row = self.table.get(partition.0 as usize)?;
        Some(row.iter().map(|&n| &self.ring.nodes()[n as usize]))
    }

    /// The replicas of the partition `key` belongs to, in preference order.
    pub fn replicas_for_key(&self, key: &[u8]) -> impl Iterator<Item = &Node> + '_ {
        let row = &self.table[self.partition_of(key).0 as usize];
        row.iter().map(|&n| &self.ring.nodes()[n as usize])
    }

    /// How many partition replicas each node holds, indexed like [`Placement::nodes`].
    pub fn load(&self) -> Vec<usize> {
        let mut load = vec![0; self.ring.nodes().len()];
        for &n in self.table.iter().flatten() {
            load[n as usize] += 1;
        }
        load
    }

    /// The replicas that change nodes from `self` to `next`, partition by partition, in partition order.
    /// A node that leaves a partition is paired with the node that enters it.
    pub fn diff(&self, next: &Placement) -> Vec<Move> {
        let mut moves = Vec::new();
        let partitions = self.table.len().max(next.table.len());
        for p in 0..partitions {
            let ids = |pl: &'_ Placement| -> Vec<NodeId> {
                pl.table
                    .get(p)
                    .map_or_else(Vec::new, |row| row.iter().map(|&n| pl.ring.nodes()[n as usize].id.clone()).collect())
            };
            let (old, new) = (ids(self), ids(next));
            let gone: Vec<&NodeId> = old.iter().filter(|n| !new.contains(n)).collect();
            let came: Vec<&NodeId> = new.iter().filter(|n| !old.contains(n)).collect();
            for i in 0..gone.len().max(came.len()) {
                moves.push(Move {
                    partition: PartitionId(p as u32),
                    from: gone.get(i).map(|&n| n.clone()),
                    to: came.get(i).map(|&n| n.clone()),
                });
            }
        }
        moves
    }

    /// Verifies the placement's structural invariants; `Err` names the first broken one. A placement built by
    /// this module always passes: this is for tests, and for a placement received from elsewhere.
    pub fn check(&self) -> Result<(), String> {
        let n = self.ring.nodes().len() as u32;
        let r = self.config.replicas.min(n) as usize;
        if self.table.len() != self.config.partitions as usize {
            return Err(format!("{} rows for {} partitions", self.table.len(), self.config.partitions));
        }
        for (p, row) in self.table.iter().enumerate() {
            if row.len() != r {
                return Err(format!("partition {p} has {} replicas, want {r}", row.len()));
            }
            if row.iter().any(|&x| x >= n) {
                return Err(format!("partition {p} names a node out of range"));
            }
            let mut sorted = row.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != row.len() {
                return Err(format!("partition {p} has a node twice"));
            }
        }
        Ok(())
    }
}

/// Computes the new table from `rows` (the previous table with departed nodes removed).
fn plan(ring: &Ring, config: &PlacementConfig, mut rows: Vec<Vec<u32>>) -> Result<Vec<Vec<u32>>, PlacementError> {
    let nodes = ring.nodes();
    let r = config.replicas.min(nodes.len() as u32) as usize;
    let parts = config.partitions as usize;
    for row in &mut rows {
        row.truncate(r);
    }
    let mut zone_names: Vec<&str> = nodes.iter().map(|n| n.zone.as_str()).collect();
    zone_names.sort_unstable();
    zone_names.dedup();
    let zone: Vec<u32> =
        nodes.iter().map(|n| zone_names.binary_search(&n.zone.as_str()).unwrap_or_default() as u32).collect();
    let mut count = vec![0u64; nodes.len()];
    for &n in rows.iter().flatten() {
        count[n as usize] += 1;
    }
    let (bounds, per_zone) = quotas(nodes, &zone, zone_names.len(), config.partitions, r as u64, &count);
    let mut planner = Planner {
        ring,
        zone,
        lo: bounds.iter().map(|b| b.0).collect(),
        hi: bounds.iter().map(|b| b.1).collect(),
        count,
        rows,
        points: (0..config.partitions).map(partition_point).collect(),
        r,
        per_zone: per_zone as usize,
    };
    // Vacancies are filled a rank at a time across all partitions, so that first replicas are spread before
    // second ones are placed. Nodes below their lower bound are served first, then nodes with room.
    for rank in 0..r {
        let vacant: Vec<usize> = (0..parts).filter(|&p| planner.rows[p].len() <= rank).collect();
        let vacant = planner.match_vacancies(&vacant, |pl, u| pl.lo[u].saturating_sub(pl.count[u]));
        let vacant = planner.match_vacancies(&vacant, |pl, u| pl.hi[u].saturating_sub(pl.count[u]));
        for p in vacant {
            planner.fill(p)?;
        }
    }
    planner.level()?;
    planner.spread_zones();
    Ok(planner.rows)
}

/// How undesirable a single move is, compared lexicographically: (needs a chain, zone clash, bound rank,
/// ring distance).
type MoveCost = (bool, usize, u8, u64);

struct Planner<'a> {
    ring: &'a Ring,
    zone: Vec<u32>,
    /// Per node, the fewest and the most replicas it may end with: the floor and the ceiling of its exact
    /// weighted share. Any count in between is fair, which leaves room to pick donors and takers that need no
    /// extra moves.
    lo: Vec<u64>,
    hi: Vec<u64>,
    count: Vec<u64>,
    rows: Vec<Vec<u32>>,
    points: Vec<u64>,
    r: usize,
    /// How many replicas of one partition a zone may hold before it counts as a clash: 1 when there are at
    /// least `R` zones, more when there are fewer.
    per_zone: usize,
}

impl Planner<'_> {
    /// How far over its zone's allowance partition `p` would be with node `u` in it (slot `skip` excluded).
    fn clash(&self, p: usize, u: u32, skip: Option<usize>) -> usize {
        (self.zone_clash(p, u, skip) + 1).saturating_sub(self.per_zone)
    }

    /// How many replicas of partition `p`, other than the one in slot `skip`, share node `u`'s zone.
    fn zone_clash(&self, p: usize, u: u32, skip: Option<usize>) -> usize {
        let z = self.zone[u as usize];
        self.rows[p].iter().enumerate().filter(|&(i, &x)| Some(i) != skip && self.zone[x as usize] == z).count()
    }

    /// 0 when node `u` must take a replica, 1 when it may, 2 when taking one puts it over its bound.
    fn taker_rank(&self, u: u32) -> u8 {
        let (c, u) = (self.count[u as usize], u as usize);
        if c < self.lo[u] {
            0
        } else if c < self.hi[u] {
            1
        } else {
            2
        }
    }

    /// 0 when node `o` must give a replica up, 1 when it may, 2 when giving one puts it under its bound.
    fn giver_rank(&self, o: u32) -> u8 {
        let (c, o) = (self.count[o as usize], o as usize);
        if c > self.hi[o] {
            0
        } else if c > self.lo[o] {
            1
        } else {
            2
        }
    }

    /// Fills one vacant slot in each of the partitions `vacant` (distinct partitions), as a bipartite matching
    /// of slots to nodes with `room(node)` places left that neither repeat a node nor overfill a zone within a
    /// partition. Each slot tries its candidates in ring order, and an augmenting path re-routes an earlier slot
    /// when that frees a node, so a greedy early choice cannot strand a later slot. Returns the slots left over.
    fn match_vacancies(&mut self, vacant: &[usize], room: impl Fn(&Self, usize) -> u64) -> Vec<usize> {
        let n = self.ring.nodes().len();
        let room: Vec<u64> = (0..n).map(|u| room(self, u)).collect();
        let cands: Vec<Vec<u32>> = vacant
            .iter()
            .map(|&p| {
                let mut c: Vec<u32> = (0..n as u32)
                    .filter(|&u| room[u as usize] > 0 && !self.rows[p].contains(&u) && self.clash(p, u, None) == 0)
                    .collect();
                c.sort_by_key(|&u| (self.ring.distance(self.points[p], u), u));
                c
            })
            .collect();
        let mut holders: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut matched: Vec<Option<u32>> = vec![None; vacant.len()];
        for v in 0..vacant.len() {
            let mut seen = vec![false; n];
            augment(v, &cands, &room, &mut holders, &mut matched, &mut seen);
        }
        let mut left = Vec::new();
        for (v, &p) in vacant.iter().enumerate() {
            match matched[v] {
                Some(u) => {
                    self.rows[p].push(u);
                    self.count[u as usize] += 1;
                }
                None => left.push(p),
            }
        }
        left
    }

    /// Fills one vacant slot of partition `p` with the ring's first node that has room, zone clash allowed.
    fn fill(&mut self, p: usize) -> Result<(), PlacementError> {
        let n = self.ring.nodes().len() as u32;
        let best = (0..n)
            .filter(|&u| self.taker_rank(u) < 2 && !self.rows[p].contains(&u))
            .min_by_key(|&u| (self.clash(p, u, None), self.ring.distance(self.points[p], u), u));
        if let Some(u) = best {
            self.rows[p].push(u);
            self.count[u as usize] += 1;
            return Ok(());
        }
        // Every node with room left is already in `p`. Hand one of `p`'s missing nodes over from a partition `q`
        // that lacks a node `u` with room, and give `q` that `u` instead: counts stay within bounds.
        let mut best: Option<(usize, usize, u32, (usize, u64))> = None;
        for u in (0..n).filter(|&u| self.taker_rank(u) < 2) {
            for q in (0..self.rows.len()).filter(|&q| q != p && !self.rows[q].contains(&u)) {
                for (i, &y) in self.rows[q].iter().enumerate() {
                    if self.rows[p].contains(&y) {
                        continue;
                    }
                    let cost =
                        (self.clash(q, u, Some(i)) + self.clash(p, y, None), self.ring.distance(self.points[q], u));
                    if best.as_ref().is_none_or(|b| cost < b.3) {
                        best = Some((q, i, u, cost));
                    }
                }
            }
        }
        let (q, i, u, _) = best.ok_or(PlacementError::Unplaceable)?;
        let y = std::mem::replace(&mut self.rows[q][i], u);
        self.rows[p].push(y);
        self.count[u as usize] += 1;
        Ok(())
    }

    /// Moves replicas until every node is within its bounds: a node below its floor takes from a node above its
    /// own floor (above its ceiling first), and a node above its ceiling gives to a node below its ceiling. Each
    /// move goes straight from a node that should give to one that should take; only when no such pair shares a
    /// partition does a node at its bound pass one on (a two-step chain).
    fn level(&mut self) -> Result<(), PlacementError> {
        let n = self.ring.nodes().len() as u32;
        let mut budget = self.rows.len() * self.r * 4 + 16;
        loop {
            let (p, i, u) = if let Some(u) = (0..n).find(|&u| self.taker_rank(u) == 0) {
                let mut best: Option<(usize, usize, MoveCost)> = None;
                for p in (0..self.rows.len()).filter(|&p| !self.rows[p].contains(&u)) {
                    let dist = self.ring.distance(self.points[p], u);
                    for (i, &o) in self.rows[p].iter().enumerate() {
                        // Direct moves first, clash-free ones before those that need a later swap; a chain (the
                        // donor drops below its floor and must take in turn) only when no direct move exists.
                        let rank = self.giver_rank(o);
                        let cost = (rank == 2, self.clash(p, u, Some(i)), rank, dist);
                        if best.as_ref().is_none_or(|b| cost < b.2) {
                            best = Some((p, i, cost));
                        }
                    }
                }
                let (p, i, _) = best.ok_or(PlacementError::Unplaceable)?;
                (p, i, u)
            } else if let Some(o) = (0..n).find(|&o| self.giver_rank(o) == 0) {
                let mut best: Option<(usize, usize, u32, MoveCost)> = None;
                for p in 0..self.rows.len() {
                    let Some(i) = self.rows[p].iter().position(|&x| x == o) else { continue };
                    for u in (0..n).filter(|u| !self.rows[p].contains(u)) {
                        let rank = self.taker_rank(u);
                        let cost = (rank == 2, self.clash(p, u, Some(i)), rank, self.ring.distance(self.points[p], u));
                        if best.as_ref().is_none_or(|b| cost < b.3) {
                            best = Some((p, i, u, cost));
                        }
                    }
                }
                let (p, i, u, _) = best.ok_or(PlacementError::Unplaceable)?;
                (p, i, u)
            } else {
                return Ok(());
            };
            budget = budget.checked_sub(1).ok_or(PlacementError::Unplaceable)?;
            let o = std::mem::replace(&mut self.rows[p][i], u);
            self.count[o as usize] -= 1;
            self.count[u as usize] += 1;
        }
    }

    /// Swaps replicas between partitions, count for count (so balance is kept), until no partition has more
    /// replicas in one zone than its allowance while a swap could fix it.
    fn spread_zones(&mut self) {
        let parts = self.rows.len();
        let mut budget = parts * self.r * 4;
        let mut improved = true;
        while improved && budget > 0 {
            improved = false;
            for p in 0..parts {
                let Some(i) = (0..self.rows[p].len()).find(|&i| self.clash(p, self.rows[p][i], Some(i)) > 0) else {
                    continue;
                };
                let a = self.rows[p][i];
                let found = (0..parts).filter(|&q| q != p && !self.rows[q].contains(&a)).find_map(|q| {
                    self.rows[q]
                        .iter()
                        .enumerate()
                        .position(|(j, &b)| {
                            !self.rows[p].contains(&b)
                                && self.clash(p, b, Some(i)) == 0
                                && self.clash(q, a, Some(j)) == 0
                        })
                        .map(|j| (q, j))
                });
                if let Some((q, j)) = found {
                    let b = std::mem::replace(&mut self.rows[q][j], a);
                    self.rows[p][i] = b;
                    improved = true;
                    budget = budget.saturating_sub(1);
                }
            }
        }
    }
}

/// Kuhn's augmenting path from slot `v`: take a candidate node with room, or one whose holder can move on.
fn augment(
    v: usize,
    cands: &[Vec<u32>],
    room: &[u64],
    holders: &mut [Vec<usize>],
    matched: &mut [Option<u32>],
    seen: &mut [bool],
) -> bool {
    for &u in &cands[v] {
        let u = u as usize;
        if seen[u] {
            continue;
        }
        seen[u] = true;
        if (holders[u].len() as u64) < room[u] {
            holders[u].push(v);
            matched[v] = Some(u as u32);
            return true;
        }
        for k in 0..holders[u].len() {
            let w = holders[u][k];
            if augment(w, cands, room, holders, matched, seen) {
                holders[u][k] = v;
                matched[v] = Some(u as u32);
                return true;
            }
        }
    }
    false
}

/// Per node, the fewest and most replicas it should hold, and how many replicas of one partition a zone may
/// hold (1 when every partition can have all its replicas in distinct zones).
///
/// Each node's exact share is `P × r` in proportion to weight, capped at `P` (one replica per partition), and
/// its bounds are that share's floor and ceiling. When a zone's share would exceed what it may hold (`P` per
/// allowed replica), the split is made per zone first, zone totals rounded to integers, then within each zone.
fn quotas(nodes: &[Node], zone: &[u32], zones: usize, partitions: u32, r: u64, held: &[u64]) -> (Vec<(u64, u64)>, u64) {
    let p = u64::from(partitions);
    let total = p * r;
    let members = |z: usize| (0..nodes.len()).filter(move |&i| zone[i] as usize == z);
    let all_weight: u128 = nodes.iter().map(|n| u128::from(n.weight)).sum();
    // The loosest per-zone allowance that still fits every replica: one per partition when zones suffice.
    let mut per_zone = r.div_ceil(zones as u64);
    loop {
        let items: Vec<(u64, u64, u64)> = (0..zones)
            .map(|z| {
                let weight = members(z).map(|i| u64::from(nodes[i].weight)).sum();
                let cap = p * per_zone.min(members(z).count() as u64);
                (weight, cap, members(z).map(|i| held[i]).sum())
            })
            .collect();
        if items.iter().map(|it| it.1).sum::<u64>() < total {
            per_zone += 1;
            continue;
        }
        let binds = items.iter().any(|&(w, cap, _)| u128::from(total) * u128::from(w) >= u128::from(cap) * all_weight);
        let mut bounds = vec![(0, 0); nodes.len()];
        if binds {
            for (z, zq) in apportion(total, &items).into_iter().enumerate() {
                let idx: Vec<usize> = members(z).collect();
                let weights: Vec<(u64, u64)> = idx.iter().map(|&i| (u64::from(nodes[i].weight), p)).collect();
                for (&i, b) in idx.iter().zip(floor_ceil(zq, &weights)) {
                    bounds[i] = b;
                }
            }
        } else {
            // No zone is too heavy: a plain split over all nodes, so a change in one zone does not shift replicas
            // between bystanders in other zones.
            let weights: Vec<(u64, u64)> = nodes.iter().map(|n| (u64::from(n.weight), p)).collect();
            bounds = floor_ceil(total, &weights);
        }
        return (bounds, per_zone);
    }
}

/// Exact water-filled shares of `total` over `(weight, cap)` items: each item gets `total × w / W` unless that
/// exceeds its cap, in which case it gets its cap and the rest is split among the others. Shares are rationals
/// `num / den`, so equal weights tie exactly.
fn shares(total: u64, items: &[(u64, u64)]) -> Vec<(u128, u128)> {
    let mut out = vec![(0u128, 1u128); items.len()];
    let mut fixed = vec![false; items.len()];
    let mut left = u128::from(total);
    loop {
        let free: Vec<usize> = (0..items.len()).filter(|&i| !fixed[i]).collect();
        let weight: u128 = free.iter().map(|&i| u128::from(items[i].0)).sum();
        if free.is_empty() || weight == 0 {
            return out;
        }
        let capped: Vec<usize> =
            free.iter().copied().filter(|&i| left * u128::from(items[i].0) > u128::from(items[i].1) * weight).collect();
        if capped.is_empty() {
            for &i in &free {
                out[i] = (left * u128::from(items[i].0), weight);
            }
            return out;
        }
        for i in capped {
            out[i] = (u128::from(items[i].1), 1);
            fixed[i] = true;
            left -= u128::from(items[i].1);
        }
    }
}

/// The floor and ceiling of each item's water-filled share.
fn floor_ceil(total: u64, items: &[(u64, u64)]) -> Vec<(u64, u64)> {
    shares(total, items).into_iter().map(|(num, den)| ((num / den) as u64, num.div_ceil(den) as u64)).collect()
}

/// Splits `total` into integers by water-filled share, the remainders going largest first, then to the item
/// that already holds most (so a membership change does not shuffle bystanders), then to the lower index.
/// Items are `(weight, cap, held)`; the caps must sum to at least `total`.
fn apportion(total: u64, items: &[(u64, u64, u64)]) -> Vec<u64> {
    let weights: Vec<(u64, u64)> = items.iter().map(|it| (it.0, it.1)).collect();
    let sh = shares(total, &weights);
    let mut out: Vec<u64> = sh.iter().map(|&(num, den)| (num / den) as u64).collect();
    let mut seats = total - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Remainders compared exactly: a/b > c/d  <=>  a*d > c*b.
    let rem = |i: usize| (sh[i].0 % sh[i].1, sh[i].1);
    order.sort_by(|&a, &b| {
        let ((ra, da), (rb, db)) = (rem(a), rem(b));
        (rb * da).cmp(&(ra * db)).then(items[b].2.cmp(&items[a].2)).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(order.len() * 2) {
        if seats == 0 {
            break;
        }
        if out[i] < items[i].1 {
            out[i] += 1;
            seats -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Zone;

    fn nodes(n: usize, zones: usize) -> Vec<Node> {
        (0..n)
            .map(|i| {
                Node::new(NodeId::new(format!("n{i:03}")).unwrap())
                    .in_zone(Zone::new(format!("z{}", i % zones.max(1))).unwrap())
            })
            .collect()
    }

    fn config(partitions: u32, replicas: u32) -> PlacementConfig {
        PlacementConfig { partitions, replicas, vnodes: 160 }
    }

    #[test]
    fn apportion_is_exact_and_sticky() {
        assert_eq!(apportion(10, &[(1, 10, 0), (1, 10, 0), (1, 10, 0)]), vec![4, 3, 3]);
        // Ties go to who already holds more.
        assert_eq!(
            apportion(10, &[(1, 10, 0), (1, 10, 0), (1, 10, 5)]),
            vec![4, 3, 3].into_iter().rev().collect::<Vec<_>>()
        );
        // Caps are honoured and the excess flows to the others.
        assert_eq!(apportion(10, &[(8, 4, 0), (1, 10, 0), (1, 10, 0)]), vec![4, 3, 3]);
        assert_eq!(apportion(0, &[(1, 1, 0)]), vec![0]);
    }

    #[test]
    fn first_placement_is_balanced_and_valid() {
        for &(n, p) in &[(1usize, 64u32), (2, 64), (3, 64), (10, 64), (10, 256), (100, 64), (100, 1024)] {
            let pl = Placement::new(config(p, 3), nodes(n, 1)).unwrap();
            pl.check().unwrap();
            let load = pl.load();
            let total: usize = load.iter().sum();
            assert_eq!(total, p as usize * 3.min(n));
            let max = *load.iter().max().unwrap();
            assert!(max <= total.div_ceil(n), "n={n} p={p}: max {max}");
        }
    }

    #[test]
    fn a_join_moves_only_to_the_joiner_and_a_leave_only_from_the_leaver() {
        let before = Placement::new(config(256, 3), nodes(10, 1)).unwrap();
        let after = before.rebalance(nodes(11, 1)).unwrap();
        assert_eq!(after.epoch(), 2);
        let moves = before.diff(&after);
        assert!(moves.iter().all(|m| m.to.as_ref().map(NodeId::as_str) == Some("n010")), "{moves:?}");
        assert_eq!(moves.len(), after.load()[10]);
        let back = after.rebalance(nodes(10, 1)).unwrap();
        let moves = after.diff(&back);
        assert!(moves.iter().all(|m| m.from.as_ref().map(NodeId::as_str) == Some("n010")));
        assert_eq!(moves.len(), after.load()[10]);
    }

    #[test]
    fn zones_are_spread_when_there_are_enough() {
        let pl = Placement::new(config(256, 3), nodes(9, 3)).unwrap();
        for p in 0..256 {
            let mut zones: Vec<&Zone> = pl.replicas(PartitionId(p)).unwrap().map(|n| &n.zone).collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "partition {p}");
        }
    }

    #[test]
    fn fewer_nodes_than_replicas_degrades_then_grows_back() {
        let one = Placement::new(config(16, 3), nodes(1, 1)).unwrap();
        one.check().unwrap();
        assert_eq!(one.load(), vec![16]);
        let three = one.rebalance(nodes(3, 1)).unwrap();
        three.check().unwrap();
        assert_eq!(three.load(), vec![16, 16, 16]);
        let moves = one.diff(&three);
        assert!(moves.iter().all(|m| m.from.is_none()));
        assert_eq!(moves.len(), 32);
    }

    #[test]
    fn bad_config_is_refused() {
        for bad in [config(0, 3), config(MAX_PARTITIONS + 1, 3), config(64, 0), config(64, 8)] {
            assert!(Placement::new(bad, nodes(3, 1)).is_err(), "{bad:?}");
        }
        assert!(Placement::new(PlacementConfig { vnodes: 0, ..config(64, 3) }, nodes(3, 1)).is_err());
    }
}
