//! The membership wire format: versioned, size-bounded, validated on the way in.
//!
//! A packet is a 4-byte header (`RMB` and a version byte) followed by a postcard-encoded [`Packet`]. Decoding
//! never panics and never allocates beyond the packet's own size: any datagram that is too large, has the wrong
//! header or version, does not parse, or carries out-of-range fields is refused with a [`DecodeError`], and the
//! state machine counts it and drops it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The magic bytes and the version of the format.
pub const HEADER: [u8; 4] = [b'R', b'M', b'B', 1];
/// The largest packet accepted on any channel (the largest UDP payload).
pub const MAX_PACKET: usize = 65_507;
/// The longest member id, zone or address string, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// The most updates one packet may carry.
pub const MAX_UPDATES: usize = 512;
/// The highest incarnation accepted from the wire: far beyond any real member's restarts and refutations,
/// and far from `u64::MAX`, so raising it never overflows.
pub const MAX_INCARNATION: u64 = 1 << 62;

/// A member's state as gossip carries it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    /// Left the cluster on purpose; never suspected or probed again at this incarnation.
    Left,
}

/// What other nodes need to know about a member besides its liveness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The member's HTTP API address (`host:port`), if it serves one.
    pub http: Option<String>,
    /// Its failure domain.
    pub zone: String,
    /// Its placement weight (100 is an ordinary node).
    pub weight: u32,
}

/// One piece of gossip: a member's state at an incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub id: String,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub state: State,
    pub meta: Meta,
    /// For a suspicion, who suspects (each distinct suspecter confirms it, Lifeguard-style).
    pub by: Option<String>,
}

/// The message a packet carries, besides its piggybacked updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A probe: answer with `Ack { seq }`.
    Ping { seq: u32 },
    /// The answer to a `Ping` (or, from a relay, to a `PingReq`).
    Ack { seq: u32 },
    /// Ask the receiver to probe `target` for us and relay the answer, or a `Nack` if it gets none within
    /// `timeout_ms` (so the nack arrives while the asker still listens).
    PingReq { seq: u32, target: String, target_addr: SocketAddr, timeout_ms: u32 },
    /// From a relay: it could not reach the target in time, but it is itself alive (Lifeguard).
    Nack { seq: u32 },
    /// Nothing but the piggybacked updates.
    Gossip,
    /// Full state exchange (join and anti-entropy): the updates are (part of) the sender's whole view; with
    /// `reply`, the receiver answers with its own.
    Sync { reply: bool },
}

/// A whole packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender's member id.
    pub from: String,
    pub msg: Msg,
    pub updates: Vec<Update>,
}

/// Why a packet was refused. Nothing changed in the receiver's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("packet of {0} bytes is larger than {MAX_PACKET}")]
    TooLarge(usize),
    #[error("packet too short or without the RMB header")]
    BadHeader,
    #[error("unsupported wire version {0}")]
    Version(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("field out of range: {0}")]
    OutOfRange(&'static str),
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

impl Packet {
    /// Encodes the packet with its header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Decodes and validates a packet.
    pub fn decode(bytes: &[u8]) -> Result<Packet, DecodeError> {
        if bytes.len() > MAX_PACKET {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if bytes.len() < HEADER.len() || bytes[..3] != HEADER[..3] {
            return Err(DecodeError::BadHeader);
        }
        if bytes[3] != HEADER[3] {
            return Err(DecodeError::Version(bytes[3]));
        }
        let packet: Packet =
            postcard::from_bytes(&bytes[HEADER.len()..]).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        packet.validate()?;
        Ok(packet)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        if !valid_id(&self.from) {
            return Err(DecodeError::OutOfRange("from"));
        }
        if self.updates.len() > MAX_UPDATES {
            return Err(DecodeError::OutOfRange("updates"));
        }
        if let Msg::PingReq { target, .. } = &self.msg {
            if !valid_id(target) {
                return Err(DecodeError::OutOfRange("target"));
            }
        }
        for u in &self.updates {
            if !valid_id(&u.id) {
                return Err(DecodeError::OutOfRange("update.id"));
            }
            if u.meta.zone.len() > MAX_ID_LEN || u.meta.http.as_ref().is_some_and(|h| h.len() > MAX_ID_LEN) {
                return Err(DecodeError::OutOfRange("update.meta"));
            }
            if u.by.as_ref().is_some_and(|b| !valid_id(b)) {
                return Err(DecodeError::OutOfRange("update.by"));
            }
            if u.incarnation > MAX_INCARNATION {
                return Err(DecodeError::OutOfRange("update.incarnation"));
            }
        }
        Ok(())
    }
}

/// The encoded size of one update inside a packet, for fitting piggybacks into a datagram.
pub fn update_size(update: &Update) -> usize {
    postcard::to_allocvec(update).map(|v| v.len()).unwrap_or(MAX_PACKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> Packet {
        Packet {
            from: "n1".into(),
            msg: Msg::PingReq {
                seq: 7,
                target: "n2".into(),
                target_addr: "127.0.0.2:7946".parse().unwrap(),
                timeout_ms: 50,
            },
            updates: vec![Update {
                id: "n3".into(),
                addr: "127.0.0.3:7946".parse().unwrap(),
                incarnation: 4,
                state: State::Suspect,
                meta: Meta { http: Some("127.0.0.3:7103".into()), zone: "z1".into(), weight: 100 },
                by: Some("n1".into()),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let p = packet();
        assert_eq!(Packet::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let good = packet().encode();
        assert_eq!(Packet::decode(&[]), Err(DecodeError::BadHeader));
        assert_eq!(Packet::decode(b"XYZ\x01abc"), Err(DecodeError::BadHeader));
        let mut v2 = good.clone();
        v2[3] = 2;
        assert_eq!(Packet::decode(&v2), Err(DecodeError::Version(2)));
        assert!(matches!(Packet::decode(&good[..good.len() - 3]), Err(DecodeError::Malformed(_))));
        assert_eq!(Packet::decode(&vec![0u8; MAX_PACKET + 1]), Err(DecodeError::TooLarge(MAX_PACKET + 1)));
        let mut long = packet();
        long.from = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(Packet::decode(&long.encode()), Err(DecodeError::OutOfRange("from")));
        let mut empty = packet();
        empty.updates[0].id.clear();
        assert_eq!(Packet::decode(&empty.encode()), Err(DecodeError::OutOfRange("update.id")));
        let mut huge = packet();
        huge.updates[0].incarnation = u64::MAX;
        assert_eq!(Packet::decode(&huge.encode()), Err(DecodeError::OutOfRange("update.incarnation")));
    }

    #[test]
    fn update_size_matches_the_encoding() {
        let mut p = packet();
        let one = p.encode().len();
        let u = p.updates[0].clone();
        p.updates.push(u.clone());
        assert_eq!(p.encode().len(), one + update_size(&u));
    }
}
