//! The classic consistent-hashing algorithms, behind one trait, for comparison with Rampart's placement.
//!
//! Each maps a 64-bit key hash to a preference list of distinct nodes (indices into the node list sorted by id).
//! They are stateless per key, so none of them can promise an exact balance: that is what
//! [`crate::Placement`] adds on top of the ring.

use crate::hash::{mix, partition_point, reduce, vnode_point};
use crate::node::{validated, Node};
use crate::placement::{Placement, PlacementConfig};
use crate::ring::Ring;
use crate::PlacementError;

/// A key-to-nodes placement function.
pub trait Placer {
    /// A short, stable name for reports.
    fn name(&self) -> &'static str;
    /// Fills `out` with up to `r` distinct node indices for `hash`, in preference order.
    fn place(&self, hash: u64, r: usize, out: &mut Vec<u32>);
}

/// Karger's ring with virtual nodes, as libketama popularised it (xxh3 points instead of MD5): the first `r`
/// distinct nodes clockwise from the key.
#[derive(Debug, Clone)]
pub struct Ketama {
    ring: Ring,
}

impl Ketama {
    pub fn new(nodes: Vec<Node>, vnodes: u32) -> Result<Self, PlacementError> {
        Ok(Self { ring: Ring::new(nodes, vnodes)? })
    }
}

impl Placer for Ketama {
    fn name(&self) -> &'static str {
        "ketama"
    }

    fn place(&self, hash: u64, r: usize, out: &mut Vec<u32>) {
        self.ring.preference(hash, r, out);
    }
}

/// Lamping and Veach's jump consistent hash. No memory and near-perfect balance, but it ignores weights and
/// only supports removing the *last* bucket; replicas come from re-hashing the key until `r` distinct buckets
/// are found.
#[derive(Debug, Clone)]
pub struct Jump {
    buckets: u32,
}

impl Jump {
    pub fn new(nodes: Vec<Node>) -> Result<Self, PlacementError> {
        Ok(Self { buckets: validated(nodes)?.len() as u32 })
    }

    /// The jump hash of `key` into `0..buckets` (Lamping & Veach 2014, figure 1).
    pub fn bucket(mut key: u64, buckets: u32) -> u32 {
        let (mut b, mut j) = (-1i64, 0i64);
        while j < i64::from(buckets) {
            b = j;
            key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
            j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
        }
        b as u32
    }
}

impl Placer for Jump {
    fn name(&self) -> &'static str {
        "jump"
    }

    fn place(&self, hash: u64, r: usize, out: &mut Vec<u32>) {
        fill_distinct(out, r, self.buckets, |i| Jump::bucket(mix(hash, i), self.buckets));
    }
}

/// Highest random weight (Thaler and Ravishankar), weighted: each node scores `-weight / ln(u)` with `u` a
/// uniform hash of (key, node); the `r` best scores win. Minimal movement, `O(N)` per lookup.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Per node: the hash of its id and its weight.
    nodes: Vec<(u64, f64)>,
}

impl Rendezvous {
    pub fn new(nodes: Vec<Node>) -> Result<Self, PlacementError> {
        let nodes = validated(nodes)?;
        Ok(Self { nodes: nodes.iter().map(|n| (vnode_point(n.id.as_str(), 0), f64::from(n.weight))).collect() })
    }

    fn score(&self, hash: u64, node: usize) -> f64 {
        let (id, weight) = self.nodes[node];
        // 53 random bits mapped into (0, 1), never 0 or 1, so the logarithm is finite and negative.
        let u = ((mix(hash, id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -weight / u.ln()
    }
}

impl Placer for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn place(&self, hash: u64, r: usize, out: &mut Vec<u32>) {
        let mut scored: Vec<(f64, u32)> = (0..self.nodes.len()).map(|i| (self.score(hash, i), i as u32)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out.clear();
        out.extend(scored.iter().take(r).map(|&(_, i)| i));
    }
}

/// Google's Maglev lookup table (Eisenbud et al. 2016): every node fills table slots along its own permutation
/// in turn, which gives a near-perfect balance and small (not minimal) disruption. Weighted by giving a node
/// turns in proportion to its weight. Replicas come from re-hashing the key.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
    nodes: u32,
}

impl Maglev {
    pub fn new(nodes: Vec<Node>) -> Result<Self, PlacementError> {
        let nodes = validated(nodes)?;
        let n = nodes.len();
        // A fixed table size (well above 100 × N for up to 655 nodes), so that a membership change does not re-map
        // the whole table: Maglev's disruption comes only from the permutations competing for slots.
        let size = next_prime((100 * n as u64 + 1).max(MAGLEV_MIN_TABLE));
        let perm: Vec<(u64, u64)> = nodes
            .iter()
            .map(|node| {
                let h = vnode_point(node.id.as_str(), 0);
                (mix(h, 1) % size, mix(h, 2) % (size - 1) + 1)
            })
            .collect();
        let max_weight = nodes.iter().map(|node| node.weight).max().unwrap_or(1);
        let mut next = vec![0u64; n];
        let mut credit = vec![0u64; n];
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                // A node of half the heaviest weight takes a turn every other round.
                credit[i] += u64::from(nodes[i].weight);
                if credit[i] < u64::from(max_weight) {
                    continue;
                }
                credit[i] -= u64::from(max_weight);
                let (offset, skip) = perm[i];
                loop {
                    let slot = ((offset + next[i] * skip) % size) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Ok(Self { table, nodes: n as u32 })
    }
}

impl Placer for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn place(&self, hash: u64, r: usize, out: &mut Vec<u32>) {
        let size = self.table.len() as u32;
        fill_distinct(out, r, self.nodes, |i| self.table[reduce(mix(hash, i), size) as usize]);
    }
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam 2018): walk the ring as usual,
/// but skip nodes already holding `ceil((1 + ε) × mean)` items. Good for routing requests; its placement
/// depends on arrival order, so it moves more than the ring when membership changes.
#[derive(Debug, Clone)]
pub struct BoundedLoad {
    ring: Ring,
    epsilon: f64,
}

impl BoundedLoad {
    pub fn new(nodes: Vec<Node>, vnodes: u32, epsilon: f64) -> Result<Self, PlacementError> {
        Ok(Self { ring: Ring::new(nodes, vnodes)?, epsilon })
    }

    /// Assigns `items` key hashes in order, `r` distinct nodes each, within the load bound.
    pub fn assign(&self, items: &[u64], r: usize) -> Vec<Vec<u32>> {
        let nodes = self.ring.nodes();
        let r = r.min(nodes.len());
        let total_weight: f64 = nodes.iter().map(|n| f64::from(n.weight)).sum();
        let total = (items.len() * r) as f64;
        let cap: Vec<usize> = nodes
            .iter()
            .map(|n| ((1.0 + self.epsilon) * total * f64::from(n.weight) / total_weight).ceil() as usize)
            .collect();
        let mut load = vec![0usize; nodes.len()];
        let mut walk = Vec::new();
        items
            .iter()
            .map(|&hash| {
                // The full preference walk, then the first r with room (a full node is skipped, not displaced).
                self.ring.preference(hash, nodes.len(), &mut walk);
                let mut row: Vec<u32> =
                    walk.iter().copied().filter(|&n| load[n as usize] < cap[n as usize]).take(r).collect();
                for &n in walk.iter() {
                    if row.len() == r {
                        break;
                    }
                    if !row.contains(&n) {
                        row.push(n);
                    }
                }
                for &n in &row {
                    load[n as usize] += 1;
                }
                row
            })
            .collect()
    }
}

/// One algorithm's partition table: rows of indices into `nodes` (sorted by id), and for Rampart the
/// placement it came from, so the next table can be computed incrementally.
#[derive(Debug)]
pub(crate) struct Table {
    pub rows: Vec<Vec<u32>>,
    pub nodes: Vec<Node>,
    pub placement: Option<Placement>,
}

/// The algorithms a report compares.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Rampart's balanced, incremental assignment on the ring ([`Placement`]).
    Rampart,
    Ketama,
    Jump,
    Rendezvous,
    Maglev,
    /// Bounded loads with ε = 0.25.
    BoundedLoad,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Rampart,
        Algorithm::Ketama,
        Algorithm::Jump,
        Algorithm::Rendezvous,
        Algorithm::Maglev,
        Algorithm::BoundedLoad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rampart => "rampart",
            Algorithm::Ketama => "ketama",
            Algorithm::Jump => "jump",
            Algorithm::Rendezvous => "rendezvous",
            Algorithm::Maglev => "maglev",
            Algorithm::BoundedLoad => "bounded-load",
        }
    }

    /// The partition table this algorithm gives for `nodes`, as node ids per partition. For Rampart, a
    /// `previous` placement makes the result incremental, as in a running cluster.
    pub(crate) fn table(
        self,
        config: &PlacementConfig,
        nodes: Vec<Node>,
        previous: Option<&Placement>,
    ) -> Result<Table, PlacementError> {
        let r = config.replicas as usize;
        let points: Vec<u64> = (0..config.partitions).map(partition_point).collect();
        let by_placer = |placer: &dyn Placer, nodes: Vec<Node>| {
            let mut out = Vec::new();
            let table = points
                .iter()
                .map(|&h| {
                    placer.place(h, r, &mut out);
                    out.clone()
                })
                .collect();
            Table { rows: table, nodes: validated(nodes).unwrap_or_default(), placement: None }
        };
        Ok(match self {
            Algorithm::Rampart => {
                let placement = match previous {
                    Some(prev) => prev.rebalance(nodes)?,
                    None => Placement::new(*config, nodes)?,
                };
                let table = (0..config.partitions)
                    .map(|p| {
                        placement
                            .replicas(crate::PartitionId(p))
                            .map(|row| {
                                row.map(|n| {
                                    placement.nodes().iter().position(|m| m.id == n.id).unwrap_or_default() as u32
                                })
                                .collect()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                Table { rows: table, nodes: placement.nodes().to_vec(), placement: Some(placement) }
            }
            Algorithm::Ketama => by_placer(&Ketama::new(nodes.clone(), config.vnodes)?, nodes),
            Algorithm::Jump => by_placer(&Jump::new(nodes.clone())?, nodes),
            Algorithm::Rendezvous => by_placer(&Rendezvous::new(nodes.clone())?, nodes),
            Algorithm::Maglev => by_placer(&Maglev::new(nodes.clone())?, nodes),
            Algorithm::BoundedLoad => {
                let bl = BoundedLoad::new(nodes.clone(), config.vnodes, 0.25)?;
                Table { rows: bl.assign(&points, r), nodes: validated(nodes)?, placement: None }
            }
        })
    }
}

/// Fills `out` with up to `r` distinct values drawn from `probe(0), probe(1), ...`; if the probes keep
/// colliding (tiny clusters), the rest are taken in index order so the list is always complete.
fn fill_distinct(out: &mut Vec<u32>, r: usize, n: u32, mut probe: impl FnMut(u64) -> u32) {
    out.clear();
    let want = r.min(n as usize);
    for i in 0..(want as u64 * 16) {
        if out.len() == want {
            return;
        }
        let b = probe(i);
        if !out.contains(&b) {
            out.push(b);
        }
    }
    for b in 0..n {
        if out.len() == want {
            return;
        }
        if !out.contains(&b) {
            out.push(b);
        }
    }
}

/// The smallest Maglev lookup table: a prime, as the permutation scheme requires.
const MAGLEV_MIN_TABLE: u64 = 65_537;

fn next_prime(mut n: u64) -> u64 {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn nodes(n: usize) -> Vec<Node> {
        (0..n).map(|i| Node::new(NodeId::new(format!("n{i}")).unwrap())).collect()
    }

    #[test]
    fn jump_moves_keys_only_to_the_new_bucket_and_balances() {
        assert_eq!(Jump::bucket(0, 1), 0);
        assert_eq!(Jump::bucket(u64::MAX, 1), 0);
        let mut counts = [0usize; 11];
        for k in 0..100_000u64 {
            let (a, b) = (Jump::bucket(mix(k, 0), 10), Jump::bucket(mix(k, 0), 11));
            assert!(a < 10 && b < 11);
            assert!(a == b || b == 10, "key {k} moved from {a} to {b}");
            counts[b as usize] += 1;
        }
        let mean = 100_000.0 / 11.0;
        assert!(counts.iter().all(|&c| (c as f64 / mean - 1.0).abs() < 0.03), "{counts:?}");
    }

    #[test]
    fn every_placer_gives_distinct_complete_lists() {
        let ns = nodes(5);
        let placers: Vec<Box<dyn Placer>> = vec![
            Box::new(Ketama::new(ns.clone(), 40).unwrap()),
            Box::new(Jump::new(ns.clone()).unwrap()),
            Box::new(Rendezvous::new(ns.clone()).unwrap()),
            Box::new(Maglev::new(ns.clone()).unwrap()),
        ];
        let mut out = Vec::new();
        for placer in &placers {
            for h in (0..1000u64).map(|i| mix(i, 77)) {
                placer.place(h, 3, &mut out);
                let mut d = out.clone();
                d.sort_unstable();
                d.dedup();
                assert_eq!(d.len(), 3, "{}", placer.name());
                assert!(d.iter().all(|&x| x < 5));
                placer.place(h, 9, &mut out);
                assert_eq!(out.len(), 5, "{}", placer.name());
            }
        }
    }

    #[test]
    fn maglev_table_is_full_and_balanced() {
        let m = Maglev::new(nodes(10)).unwrap();
        let mut counts = [0usize; 10];
        for &n in &m.table {
            counts[n as usize] += 1;
        }
        let mean = m.table.len() as f64 / 10.0;
        assert!(counts.iter().all(|&c| (c as f64) < mean * 1.02 + 1.0), "{counts:?}");
    }

    #[test]
    fn bounded_load_respects_its_bound() {
        let bl = BoundedLoad::new(nodes(10), 20, 0.25).unwrap();
        let items: Vec<u64> = (0..1000).map(|i| mix(i, 5)).collect();
        let rows = bl.assign(&items, 3);
        let mut load = [0usize; 10];
        for &n in rows.iter().flatten() {
            load[n as usize] += 1;
        }
        assert!(load.iter().all(|&l| l <= 375), "{load:?}");
    }
}
