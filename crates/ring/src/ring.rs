//! The virtual-node ring: an immutable, sorted array of points with a radix index for lookups.

use crate::hash::vnode_point;
use crate::node::{validated, Node};
use crate::PlacementError;

/// Upper bound on the points of one ring (all nodes' virtual nodes together), so that a bad weight or vnode
/// setting is refused instead of exhausting memory.
pub const MAX_POINTS: usize = 1 << 24;

/// An immutable consistent-hash ring of virtual nodes.
///
/// Built once (one sort of every node's points), then only read: share it between threads behind an `Arc` and
/// replace the whole ring on a membership change. A lookup hashes nothing itself: it takes a 64-bit point (see
/// [`crate::hash::key_hash`]), indexes a radix table by the point's top bits and searches the few ring points in
/// that bucket, so it costs about one cache miss more than reading an array.
///
/// **Invariant:** `points` is strictly increasing and `owners[i]` is the index (into `nodes`, sorted by id) of the
/// node that owns `points[i]`. Two nodes whose points collide resolve to the lower id, deterministically.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<Node>,
    points: Vec<u64>,
    owners: Vec<u32>,
    /// `index[b]` is the position of the first point whose top `64 - shift` bits are `>= b`.
    index: Vec<u32>,
    shift: u32,
    /// Every node's own points, sorted: the distance from any point to a given node is one binary search.
    node_points: Vec<Vec<u64>>,
}

impl Ring {
    /// Builds a ring where an ordinary node (weight [`crate::DEFAULT_WEIGHT`]) has `vnodes` points.
    pub fn new(nodes: Vec<Node>, vnodes: u32) -> Result<Self, PlacementError> {
        if vnodes == 0 {
            return Err(PlacementError::InvalidVnodes(vnodes));
        }
        let nodes = validated(nodes)?;
        let total: u64 = nodes.iter().map(|n| u64::from(n.vnode_count(vnodes))).sum();
        if total > MAX_POINTS as u64 {
            return Err(PlacementError::TooManyPoints(total));
        }
        let mut all: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        for (i, node) in nodes.iter().enumerate() {
            let id = node.id.as_str();
            all.extend((0..node.vnode_count(vnodes)).map(|v| (vnode_point(id, v), i as u32)));
        }
        // One sort builds the ring; ties (a 64-bit collision) keep the lower node index, i.e. the lower id.
        all.sort_unstable();
        all.dedup_by_key(|(point, _)| *point);

        let bits = usize::BITS - all.len().next_power_of_two().leading_zeros() - 1;
        let bits = bits.clamp(1, 24);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for b in 0..buckets as u64 {
            while pos < all.len() && (all[pos].0 >> shift) < b {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(all.len() as u32);

        let mut node_points = vec![Vec::new(); nodes.len()];
        for &(point, owner) in &all {
            node_points[owner as usize].push(point);
        }
        let (points, owners) = all.into_iter().unzip();
        Ok(Self { nodes, points, owners, index, shift, node_points })
    }

    /// The nodes, sorted by id. Node indices returned by lookups index this slice.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How many points the ring has.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// A ring always has at least one point; this exists for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The position of the first point at or after `hash`, wrapping around to 0.
    #[inline]
    fn position(&self, hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let lo = self.index[b] as usize;
        let hi = self.index[b + 1] as usize;
        let pos = lo + self.points[lo..hi].partition_point(|&p| p < hash);
        if pos == self.points.len() {
            0
        } else {
            pos
        }
    }

    /// The node that owns `hash`: the owner of the first point clockwise from it.
    #[inline]
    pub fn lookup(&self, hash: u64) -> u32 {
        self.owners[self.position(hash)]
    }

    /// The node that owns `hash`, by id.
    pub fn lookup_node(&self, hash: u64) -> &Node {
        &self.nodes[self.lookup(hash) as usize]
    }

    /// Fills `out` with the first `r` distinct nodes met walking clockwise from `hash` (fewer if the ring has
    /// fewer nodes): the classic preference list.
    pub fn preference(&self, hash: u64, r: usize, out: &mut Vec<u32>) {
        out.clear();
        let want = r.min(self.nodes.len());
        let start = self.position(hash);
        let n = self.points.len();
        for step in 0..n {
            if out.len() == want {
                break;
            }
            let owner = self.owners[(start + step) % n];
            if !out.contains(&owner) {
                out.push(owner);
            }
        }
    }

    /// How far clockwise from `hash` the first point of node `node` lies. The smaller, the earlier a walk from
    /// `hash` meets the node: this ranks nodes for a partition the same way the walk does, at the cost of one
    /// binary search.
    #[inline]
    pub fn distance(&self, hash: u64, node: u32) -> u64 {
        let pts = &self.node_points[node as usize];
        if pts.is_empty() {
            // Only possible if every point of the node collided with a lower id's: it is never met.
            return u64::MAX;
        }
        let i = pts.partition_point(|&p| p < hash);
        let next = if i == pts.len() { pts[0] } else { pts[i] };
        next.wrapping_sub(hash)
    }

    /// The fraction of the hash space each node owns (indexed like [`Ring::nodes`]); sums to 1.
    pub fn ownership(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.nodes.len()];
        let n = self.points.len();
        for i in 0..n {
            let prev = self.points[(i + n - 1) % n];
            let arc = if n == 1 { 1u128 << 64 } else { u128::from(self.points[i].wrapping_sub(prev)) };
            owned[self.owners[i] as usize] += arc;
        }
        owned.into_iter().map(|o| o as f64 / 2f64.powi(64)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Zone};

    fn nodes(n: usize) -> Vec<Node> {
        (0..n).map(|i| Node::new(NodeId::new(format!("n{i}")).unwrap())).collect()
    }

    /// The lookup must agree with the obvious linear scan, including at the wrap-around and on exact points.
    #[test]
    fn lookup_matches_a_linear_scan() {
        let ring = Ring::new(nodes(7), 50).unwrap();
        let naive = |h: u64| {
            let i = ring.points.iter().position(|&p| p >= h).unwrap_or(0);
            ring.owners[i]
        };
        let mut probes = vec![0, 1, u64::MAX, u64::MAX - 1];
        probes.extend(ring.points.iter().copied());
        probes.extend(ring.points.iter().map(|p| p.wrapping_add(1)));
        probes.extend((0..2000u64).map(|i| crate::hash::mix(i, 9)));
        for h in probes {
            assert_eq!(ring.lookup(h), naive(h), "hash {h:#x}");
        }
    }

    #[test]
    fn single_point_ring_owns_everything() {
        let ring = Ring::new(nodes(1), 1).unwrap();
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.lookup(0), 0);
        assert_eq!(ring.lookup(u64::MAX), 0);
        assert!((ring.ownership()[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn preference_lists_are_distinct_and_capped() {
        let ring = Ring::new(nodes(4), 20).unwrap();
        let mut out = Vec::new();
        for h in (0..500u64).map(|i| crate::hash::mix(i, 1)) {
            ring.preference(h, 3, &mut out);
            assert_eq!(out.len(), 3);
            assert_eq!(out[0], ring.lookup(h));
            let mut d = out.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3);
            ring.preference(h, 9, &mut out);
            assert_eq!(out.len(), 4);
        }
    }

    #[test]
    fn distance_ranks_like_the_walk() {
        let ring = Ring::new(nodes(6), 30).unwrap();
        let mut out = Vec::new();
        for h in (0..300u64).map(|i| crate::hash::mix(i, 2)) {
            ring.preference(h, 6, &mut out);
            let mut by_distance: Vec<u32> = (0..6).collect();
            by_distance.sort_by_key(|&n| ring.distance(h, n));
            assert_eq!(out, by_distance);
        }
    }

    #[test]
    fn ownership_follows_weight_with_enough_vnodes() {
        // A fixed node set (the hash is fixed, so this is deterministic): with 1000 points per ordinary node every
        // node's share of the hash space is within 5% of its weight share.
        let mut ns = nodes(5);
        ns[0].weight = 200;
        ns[1].weight = 50;
        let ring = Ring::new(ns.clone(), 1000).unwrap();
        let total: u32 = ns.iter().map(|n| n.weight).sum();
        for (node, share) in ring.nodes().iter().zip(ring.ownership()) {
            let want = f64::from(node.weight) / f64::from(total);
            assert!((share / want - 1.0).abs() < 0.05, "{} owns {share:.4}, weight share {want:.4}", node.id);
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(Ring::new(nodes(3), 0), Err(PlacementError::InvalidVnodes(0))));
        let heavy = vec![Node::new(NodeId::new("a").unwrap()).with_weight(100_000).in_zone(Zone::default())];
        assert!(matches!(Ring::new(heavy, 20_000), Err(PlacementError::TooManyPoints(_))));
    }
}
