//! The Raft type configuration shared by every partition group: what a command is, what it returns, and how
//! a node is addressed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A partition's number. Each partition is one Raft group.
pub type GroupId = u32;

/// A node's Raft id: a fixed hash of its string id (see [`raft_id`]), the same on every node and restart.
pub type RaftId = u64;

/// How to reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node's string id (`n1`).
    pub id: String,
    /// Raft and internal RPC.
    pub peer: String,
    /// The HTTP API.
    pub http: String,
}

/// A replicated command: one Raft entry in one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put { key: String, value: String },
    Delete { key: String },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => write!(f, "put {key} ({} bytes)", value.len()),
            Command::Delete { key } => write!(f, "delete {key}"),
        }
    }
}

/// What applying a command returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The log index the command was applied at.
    pub index: u64,
}

openraft::declare_raft_types!(
    /// Rampart's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = RaftId,
        Node = PeerNode,
);

/// The Raft id of the node called `id`: xxh3 of the id with the placement seed, so every node derives the same
/// number without coordination.
pub fn raft_id(id: &str) -> RaftId {
    rampart_ring::hash::key_hash(id.as_bytes())
}
