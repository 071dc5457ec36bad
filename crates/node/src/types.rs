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

/// One Raft entry in one partition: a batch of operations proposed together by the partition's leader, with
/// the leader's clock reading when it proposed them (the business time every replica applies them at).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub at_ms: u64,
    pub ops: Vec<Op>,
}

/// One client operation. Operations of one entry are applied in order, each on its own: one rejected order does
/// not undo the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Trade(rampart_trading::Command),
    /// The metadata group's cluster configuration (JSON), applied only if `epoch` is the stored epoch plus one.
    SetConfig {
        epoch: u64,
        json: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value } => write!(f, "put {key} ({} bytes)", value.len()),
            Op::Delete { key } => write!(f, "delete {key}"),
            Op::Trade(c) => write!(f, "{c:?}"),
            Op::SetConfig { epoch, .. } => write!(f, "cluster configuration {epoch}"),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops at {} ms", self.ops.len(), self.at_ms)
    }
}

/// What applying one operation gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutcome {
    Done,
    Trade(rampart_trading::Outcome),
}

/// What applying an entry returned: one outcome per operation, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The log index the entry was applied at.
    pub index: u64,
    pub outcomes: Vec<OpOutcome>,
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
