//! A Rampart node: partitions replicated with Raft (openraft, one group per partition) on durable redb
//! storage, with the settings it runs from.
//!
//! What it owns: the Raft type configuration ([`types`]), the durable log and state machine with group commit
//! ([`store`]), and the node's settings ([`config`]).
//!
//! Invariants:
//! - A vote or a log entry is reported saved only after an fsync'd commit holds it.
//! - `last_applied` is written in the same transaction as the state it describes.
//! - Every stored value is checksummed; a corrupt value is an error, never data.

pub mod config;
pub mod store;
pub mod types;
