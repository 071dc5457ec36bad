//! Failure detection and cluster membership for Rampart.
//!
//! What it does: tells every node, within about a second on a LAN, which other nodes are alive, suspected,
//! dead or gone, without accusing nodes that are merely slow or briefly paused. It combines SWIM-style probing
//! (direct, then indirect through `k` members, then TCP), suspicion with incarnation-based refutation,
//! Lifeguard's local-health awareness and confirmation-driven suspicion timeouts, round-trip timeouts learned per
//! peer with phi accrual statistics, and piggybacked gossip.
//!
//! What it does not do: any IO. [`Swim`] is a sans-IO state machine: packets and ticks go in with the current
//! time, packets, events and the next wake-up time come out. Transports (UDP, TCP, HTTP) and the clock belong to
//! whoever drives it, which is what lets the simulator run a whole cluster on a virtual clock and replay a
//! failure from its seed.
//!
//! Invariants:
//! - A member's incarnation only grows; only the member itself raises it (to refute).
//! - For the same incarnation, `Alive < Suspect < Dead`; `Left` is final for its incarnation.
//! - Every queue and in-flight map is bounded ([`Config`]'s `*_max` fields); overflow is counted, not grown.
//! - Decoding never panics: a malformed packet is counted in [`Stats::decode_errors`] and dropped.

mod config;
pub mod phi;
mod swim;
pub mod wire;

pub use config::{Config, ConfigError, Profile};
pub use swim::{Channel, Event, MemberInfo, Stats, Swim, Transmit};
pub use wire::{DecodeError, Meta, State};
