//! Property-based fuzzing of the decoder and of the state machine's packet input: no input may panic, every
//! refused packet is counted, and every packet we encode decodes to itself.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use rampart_membership::wire::{Msg, Packet, Update, HEADER};
use rampart_membership::{Channel, Config, Meta, Profile, State, Swim};

/// Member ids, the receiver's own ("me") among them, so that updates about the receiver itself are exercised.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just("me".to_owned()), 4 => "[a-z0-9]{1,12}"]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
}

fn update() -> impl Strategy<Value = Update> {
    (
        id(),
        addr(),
        prop_oneof![4 => 0..=(1u64 << 62), 1 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(1u64 << 62)],
        0u8..4,
        prop::option::of(id()),
        any::<u32>(),
    )
        .prop_map(|(id, addr, incarnation, s, by, weight)| Update {
            id,
            addr,
            incarnation,
            state: [State::Alive, State::Suspect, State::Dead, State::Left][s as usize],
            meta: Meta { http: None, zone: "z".into(), weight },
            by,
        })
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        any::<u32>().prop_map(|seq| Msg::Ping { seq }),
        any::<u32>().prop_map(|seq| Msg::Ack { seq }),
        any::<u32>().prop_map(|seq| Msg::Nack { seq }),
        (any::<u32>(), id(), addr(), any::<u32>()).prop_map(|(seq, target, target_addr, timeout_ms)| Msg::PingReq {
            seq,
            target,
            target_addr,
            timeout_ms
        }),
        Just(Msg::Gossip),
        any::<bool>().prop_map(|reply| Msg::Sync { reply }),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (id(), msg(), prop::collection::vec(update(), 0..8)).prop_map(|(from, msg, updates)| Packet { from, msg, updates })
}

fn member() -> Swim {
    Swim::new(
        Config::profile(Profile::Lan),
        "me".into(),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        Meta::default(),
        vec![],
        Duration::ZERO,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_is_the_identity(mut p in packet()) {
        // Incarnations above the bound are refused by design (tested below); keep this one in range.
        for u in &mut p.updates {
            u.incarnation = u.incarnation.min(rampart_membership::wire::MAX_INCARNATION);
        }
        prop_assert_eq!(Packet::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Packet::decode(&bytes);
        let mut with_header = HEADER.to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = Packet::decode(&with_header);
    }

    #[test]
    fn mutated_packets_never_panic_and_are_counted(p in packet(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = p.encode();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v | 1;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        let mut swim = member();
        let refused = Packet::decode(&bytes).is_err();
        swim.handle_packet(Duration::from_millis(1), SocketAddr::from(([127, 0, 0, 2], 2)), Channel::Datagram, &bytes);
        prop_assert_eq!(swim.stats().decode_errors, u64::from(refused));
        // Whatever it was, the member keeps working.
        swim.poll_timeout();
        swim.handle_tick(Duration::from_secs(1));
    }

    #[test]
    fn any_valid_packet_is_handled(p in packet()) {
        let mut swim = member();
        swim.handle_packet(Duration::from_millis(1), SocketAddr::from(([127, 0, 0, 2], 2)), Channel::Datagram, &p.encode());
        for t in 0..20 {
            swim.poll_timeout();
            swim.handle_tick(Duration::from_millis(100 * t));
            while swim.poll_transmit().is_some() {}
            while swim.poll_event().is_some() {}
        }
        let refused = p.updates.iter().any(|u| u.incarnation > rampart_membership::wire::MAX_INCARNATION);
        prop_assert_eq!(swim.stats().decode_errors, u64::from(refused));
        prop_assert!(swim.local().incarnation <= rampart_membership::wire::MAX_INCARNATION + 1);
    }
}
