//! Consistent-hash placement for Rampart.
//!
//! What it does: maps keys to a fixed number of partitions, and partitions to ordered preference lists of
//! distinct nodes, so that load is balanced by weight, replicas are spread over zones, and a change of membership
//! moves the fewest replicas. It also carries the classic algorithms (ketama-style ring, jump hash, rendezvous,
//! Maglev, bounded-load ring) behind one trait, so they can be measured beside Rampart's own method.
//!
//! What it does not do: any IO, any clock, any randomness. It is a pure function of its inputs; the cluster
//! replicates a [`Placement`] (with its epoch) and every node derives the same answers from it.
//!
//! Invariants:
//! - Hashing is fixed-seed xxh3 over explicit little-endian bytes, pinned by test vectors ([`hash`]).
//! - A key's partition depends only on the key and `P`; `P` never changes for a cluster.
//! - A partition's replicas are `min(R, nodes)` distinct physical nodes; every node holds exactly its quota.
//! - Every new placement has a higher epoch, and [`Placement::diff`] names exactly the replicas that move.

mod algorithms;
pub mod hash;
mod node;
mod placement;
mod report;
mod ring;

pub use algorithms::{Algorithm, BoundedLoad, Jump, Ketama, Maglev, Placer, Rendezvous};
pub use node::{Node, NodeId, Zone, DEFAULT_WEIGHT, MAX_ID_LEN, MAX_WEIGHT};
pub use placement::{Move, PartitionId, Placement, PlacementConfig, MAX_PARTITIONS, MAX_REPLICAS, MAX_VNODES};
pub use report::{compare, Scenario, ScenarioChange, Stats};
pub use ring::{Ring, MAX_POINTS};

/// Why a ring or a placement could not be built. Nothing is changed by a failed build: the previous ring or
/// placement stays in force, so every variant is safe to retry with corrected input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// A node or zone id is empty, too long, or has characters other than ASCII letters, digits, `-`, `_`, `.`.
    #[error("invalid id {0:?}: use 1 to 128 ASCII letters, digits, '-', '_' or '.'")]
    InvalidId(String),
    /// The node list is empty.
    #[error("at least one node is needed")]
    NoNodes,
    /// Two nodes have the same id.
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    /// A weight is 0 or above [`MAX_WEIGHT`].
    #[error("node {node} has weight {weight}; weights go from 1 to {MAX_WEIGHT}")]
    InvalidWeight { node: NodeId, weight: u32 },
    #[error("{0} partitions: use 1 to {MAX_PARTITIONS}")]
    InvalidPartitions(u32),
    #[error("{0} replicas: use 1 to {MAX_REPLICAS}")]
    InvalidReplicas(u32),
    #[error("{0} virtual nodes: use 1 to {MAX_VNODES}")]
    InvalidVnodes(u32),
    /// The weights and vnode setting ask for more ring points than [`MAX_POINTS`].
    #[error("{0} ring points asked for; at most {MAX_POINTS}: lower vnodes or weights")]
    TooManyPoints(u64),
    /// The assignment could not satisfy its constraints. This is a bug, never an input problem.
    #[error("no valid assignment found (a bug: please report the node set)")]
    Unplaceable,
}
