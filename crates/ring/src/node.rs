//! Nodes as the ring sees them: an id, a weight and a zone.

use std::fmt;

use crate::PlacementError;

/// The weight of an ordinary node. A node of weight 200 gets twice the virtual nodes and twice the data.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Upper bound on a node's weight, so that `vnodes × weight` can never overflow or exhaust memory.
pub const MAX_WEIGHT: u32 = 100_000;

/// Upper bound on the length of node and zone ids, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A node's stable identity (for example `n1`). Ids order and hash the same everywhere.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps an id: 1 to [`MAX_ID_LEN`] bytes of ASCII letters, digits, `-`, `_` or `.`.
    pub fn new(id: impl Into<String>) -> Result<Self, PlacementError> {
        let id = id.into();
        if valid_id(&id) {
            Ok(Self(id))
        } else {
            Err(PlacementError::InvalidId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failure domain (rack, availability zone). Replicas of one partition are spread over zones first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone(String);

impl Zone {
    /// Validates and wraps a zone name, with the same rules as [`NodeId::new`].
    pub fn new(zone: impl Into<String>) -> Result<Self, PlacementError> {
        let zone = zone.into();
        if valid_id(&zone) {
            Ok(Self(zone))
        } else {
            Err(PlacementError::InvalidId(zone))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A member of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// Relative capacity, 1 to [`MAX_WEIGHT`]; [`DEFAULT_WEIGHT`] is an ordinary node.
    pub weight: u32,
    pub zone: Zone,
}

impl Node {
    /// A node of default weight in the default zone.
    pub fn new(id: NodeId) -> Self {
        Self { id, weight: DEFAULT_WEIGHT, zone: Zone::default() }
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    pub fn in_zone(mut self, zone: Zone) -> Self {
        self.zone = zone;
        self
    }

    /// How many virtual nodes this node gets when an ordinary node gets `vnodes`: proportional to weight,
    /// rounded, and never zero, so that a very light node still owns a little of the ring.
    pub fn vnode_count(&self, vnodes: u32) -> u32 {
        let scaled =
            (u64::from(vnodes) * u64::from(self.weight) + u64::from(DEFAULT_WEIGHT) / 2) / u64::from(DEFAULT_WEIGHT);
        scaled.clamp(1, u64::from(u32::MAX)) as u32
    }
}

/// Checks a node list: at least one node, no duplicate ids, weights in range. Returns it sorted by id, which is
/// the canonical order every node computes with.
pub(crate) fn validated(mut nodes: Vec<Node>) -> Result<Vec<Node>, PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    for pair in nodes.windows(2) {
        if pair[0].id == pair[1].id {
            return Err(PlacementError::DuplicateNode(pair[0].id.clone()));
        }
    }
    if let Some(bad) = nodes.iter().find(|n| n.weight == 0 || n.weight > MAX_WEIGHT) {
        return Err(PlacementError::InvalidWeight { node: bad.id.clone(), weight: bad.weight });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("zone-a.rack_2").is_ok());
        for bad in ["", "with space", "slash/", "é", &"x".repeat(129)] {
            assert!(matches!(NodeId::new(bad), Err(PlacementError::InvalidId(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn vnodes_follow_weight_and_never_vanish() {
        let n = |w| Node::new(NodeId::new("a").unwrap()).with_weight(w);
        assert_eq!(n(100).vnode_count(160), 160);
        assert_eq!(n(200).vnode_count(160), 320);
        assert_eq!(n(50).vnode_count(160), 80);
        assert_eq!(n(1).vnode_count(160), 2);
        assert_eq!(n(1).vnode_count(10), 1);
    }

    #[test]
    fn node_lists_are_checked() {
        let id = |s: &str| NodeId::new(s).unwrap();
        assert!(matches!(validated(vec![]), Err(PlacementError::NoNodes)));
        let dup = vec![Node::new(id("a")), Node::new(id("a"))];
        assert!(matches!(validated(dup), Err(PlacementError::DuplicateNode(_))));
        let zero = vec![Node::new(id("a")).with_weight(0)];
        assert!(matches!(validated(zero), Err(PlacementError::InvalidWeight { .. })));
        let sorted = validated(vec![Node::new(id("b")), Node::new(id("a"))]).unwrap();
        assert_eq!(sorted[0].id, id("a"));
    }
}
