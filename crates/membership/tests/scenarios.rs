//! Scenario tests of the SWIM state machine: scripted inputs, exact outputs.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_membership::wire::{Msg, Packet, Update};
use rampart_membership::{Channel, Config, Event, Meta, Profile, State, Swim};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 7001))
}

fn update(id: &str, i: u8, incarnation: u64, state: State, by: Option<&str>) -> Update {
    Update {
        id: id.into(),
        addr: addr(i),
        incarnation,
        state,
        meta: Meta { http: None, zone: "z".into(), weight: 100 },
        by: by.map(Into::into),
    }
}

fn packet(from: &str, msg: Msg, updates: Vec<Update>) -> Vec<u8> {
    Packet { from: from.into(), msg, updates }.encode()
}

fn config() -> Config {
    Config { seed: 7, ..Config::profile(Profile::Lan) }
}

/// Member `a` at 127.0.0.1 that has learned of `others` (at 127.0.0.2, .3, ...) from a sync.
fn member_knowing(others: &[&str]) -> Swim {
    member("a", others)
}

fn member(me: &str, others: &[&str]) -> Swim {
    let mut a = Swim::new(config(), me.into(), addr(1), Meta::default(), vec![], ms(0));
    let ups = others.iter().enumerate().map(|(i, id)| update(id, i as u8 + 2, 0, State::Alive, None)).collect();
    a.handle_packet(ms(0), addr(2), Channel::Datagram, &packet(others[0], Msg::Sync { reply: false }, ups));
    drain(&mut a);
    while a.poll_event().is_some() {}
    a
}

fn drain(s: &mut Swim) -> Vec<(SocketAddr, Channel, Packet)> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|t| (t.to, t.channel, Packet::decode(&t.bytes).expect("we decode what we encode")))
        .collect()
}

fn events(s: &mut Swim) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Runs ticks from `from` to `to` in 1 ms steps, collecting what was sent.
fn run(s: &mut Swim, from: u64, to: u64) -> Vec<(SocketAddr, Channel, Packet)> {
    let mut sent = Vec::new();
    for t in from..=to {
        s.poll_timeout();
        s.handle_tick(ms(t));
        sent.extend(drain(s));
    }
    sent
}

fn pings(sent: &[(SocketAddr, Channel, Packet)]) -> Vec<(SocketAddr, Channel, u32)> {
    sent.iter()
        .filter_map(|(to, ch, p)| match p.msg {
            Msg::Ping { seq } => Some((*to, *ch, seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_learns_the_members_and_announces_them() {
    let mut a = Swim::new(config(), "a".into(), addr(1), Meta::default(), vec![addr(2)], ms(0));
    // Not joined yet: the first tick asks the seed for its state.
    a.poll_timeout();
    a.handle_tick(ms(0));
    let sent = drain(&mut a);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, addr(2));
    assert_eq!(sent[0].2.msg, Msg::Sync { reply: true });
    assert_eq!(sent[0].2.updates[0].id, "a");
    let ups = vec![update("b", 2, 0, State::Alive, None), update("c", 3, 0, State::Alive, None)];
    a.handle_packet(ms(1), addr(2), Channel::Datagram, &packet("b", Msg::Sync { reply: false }, ups));
    let ev = events(&mut a);
    assert!(matches!(&ev[..], [Event::Up(b), Event::Up(c)] if b.id == "b" && c.id == "c"), "{ev:?}");
    assert_eq!(a.members().count(), 2);
}

#[test]
fn a_probe_that_is_acked_changes_nothing() {
    let mut a = member_knowing(&["b"]);
    let sent = run(&mut a, 1, 150);
    let p = pings(&sent);
    assert_eq!(p, vec![(addr(2), Channel::Datagram, p[0].2)]);
    a.handle_packet(ms(152), addr(2), Channel::Datagram, &packet("b", Msg::Ack { seq: p[0].2 }, vec![]));
    let sent = run(&mut a, 153, 299);
    assert!(pings(&sent).is_empty() && sent.iter().all(|(_, _, p)| !matches!(p.msg, Msg::PingReq { .. })));
    assert!(events(&mut a).is_empty());
    assert_eq!(a.stats().probes_failed, 0);
    assert_eq!(a.health(), 0);
}

#[test]
fn no_ack_leads_to_indirect_probes_then_suspicion_then_death() {
    let mut a = member_knowing(&["b", "c", "d"]);
    let mut target = None;
    let mut t = 1;
    // Find the first probe, then stay silent.
    while target.is_none() {
        let sent = run(&mut a, t, t);
        target = pings(&sent).first().map(|&(to, _, seq)| (to, seq));
        t += 1;
    }
    let (victim, seq) = target.expect("a probe was sent");
    let probe_at = t - 1;
    // After the direct timeout (100 ms before any round trip was learned): ping-req to the two others, and a
    // TCP ping to the target.
    let sent = run(&mut a, t, probe_at + 100);
    let reqs: Vec<SocketAddr> = sent
        .iter()
        .filter(|(_, _, p)| matches!(&p.msg, Msg::PingReq { seq: s, target_addr, .. } if *s == seq && *target_addr == victim))
        .map(|(to, _, _)| *to)
        .collect();
    assert_eq!(reqs.len(), 2, "{sent:?}");
    assert!(!reqs.contains(&victim));
    assert_eq!(pings(&sent), vec![(victim, Channel::Stream, seq)]);
    // A helper answers with a nack (it could not reach the target either).
    a.handle_packet(ms(probe_at + 150), reqs[0], Channel::Datagram, &packet("c", Msg::Nack { seq }, vec![]));
    // End of the indirect window (100 + 100 + 20 ms): suspect, told to the victim and broadcast to the others.
    let sent = run(&mut a, probe_at + 101, probe_at + 220);
    let ev = events(&mut a);
    assert!(matches!(&ev[..], [Event::Suspect(m)] if m.addr == victim), "{ev:?}");
    let told: Vec<SocketAddr> = sent
        .iter()
        .filter(|(_, _, p)| {
            p.updates.iter().any(|u| u.addr == victim && u.state == State::Suspect && u.by.as_deref() == Some("a"))
        })
        .map(|(to, _, _)| *to)
        .collect();
    assert!(told.contains(&victim), "the suspect is told: {told:?}");
    assert!(told.len() >= 3, "everyone is told: {told:?}");
    // One failed probe and one missing nack: Lifeguard's multiplier is now 2.
    assert_eq!(a.health(), 2);
    // No refutation: dead after the suspicion timeout (1200 ms with no other confirmation).
    run(&mut a, probe_at + 221, probe_at + 220 + 1199);
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::Dead(_))));
    run(&mut a, probe_at + 220 + 1200, probe_at + 220 + 1201);
    let ev = events(&mut a);
    assert!(ev.iter().any(|e| matches!(e, Event::Dead(m) if m.addr == victim)), "{ev:?}");
}

#[test]
fn confirmations_shorten_the_suspicion() {
    let mut a = member_knowing(&["b", "c", "d"]);
    a.handle_packet(
        ms(10),
        addr(3),
        Channel::Datagram,
        &packet("c", Msg::Gossip, vec![update("b", 2, 0, State::Suspect, Some("c"))]),
    );
    a.handle_packet(
        ms(20),
        addr(4),
        Channel::Datagram,
        &packet("d", Msg::Gossip, vec![update("b", 2, 0, State::Suspect, Some("d"))]),
    );
    a.handle_packet(
        ms(30),
        addr(1),
        Channel::Datagram,
        &packet("x", Msg::Gossip, vec![update("b", 2, 0, State::Suspect, Some("x"))]),
    );
    // With 2 independent confirmations the timeout is the minimum, 400 ms from the first suspicion.
    run(&mut a, 31, 409);
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::Dead(_))));
    run(&mut a, 410, 411);
    assert!(events(&mut a).iter().any(|e| matches!(e, Event::Dead(m) if m.id == "b")));
}

#[test]
fn a_suspected_member_refutes_and_others_accept() {
    let mut b = Swim::new(config(), "b".into(), addr(2), Meta::default(), vec![], ms(0));
    b.handle_packet(
        ms(5),
        addr(1),
        Channel::Datagram,
        &packet(
            "a",
            Msg::Gossip,
            vec![update("a", 1, 0, State::Alive, None), update("b", 2, 0, State::Suspect, Some("a"))],
        ),
    );
    let ev = events(&mut b);
    assert!(ev.contains(&Event::Refuted { incarnation: 1 }), "{ev:?}");
    assert_eq!(b.local().incarnation, 1);
    let sent = drain(&mut b);
    let refutation = sent
        .iter()
        .find(|(to, _, p)| {
            *to == addr(1) && p.updates.iter().any(|u| u.id == "b" && u.state == State::Alive && u.incarnation == 1)
        })
        .expect("the refutation is sent to the suspecter");
    let mut a = member_knowing(&["b"]);
    a.handle_packet(
        ms(6),
        addr(3),
        Channel::Datagram,
        &packet("c", Msg::Gossip, vec![update("b", 2, 0, State::Suspect, Some("c"))]),
    );
    assert!(matches!(&events(&mut a)[..], [Event::Suspect(_)]));
    a.handle_packet(ms(7), addr(2), Channel::Datagram, &refutation.2.encode());
    let ev = events(&mut a);
    assert!(matches!(&ev[..], [Event::Alive(m)] if m.id == "b" && m.incarnation == 1), "{ev:?}");
    // An old suspicion (incarnation 0) can no longer hurt it.
    a.handle_packet(
        ms(8),
        addr(3),
        Channel::Datagram,
        &packet("c", Msg::Gossip, vec![update("b", 2, 0, State::Suspect, Some("c"))]),
    );
    assert!(events(&mut a).is_empty());
}

#[test]
fn a_dead_member_rejoins_with_a_higher_incarnation() {
    let mut a = member_knowing(&["b"]);
    a.handle_packet(
        ms(1),
        addr(3),
        Channel::Datagram,
        &packet("c", Msg::Gossip, vec![update("b", 2, 0, State::Dead, None)]),
    );
    assert!(matches!(&events(&mut a)[..], [Event::Dead(m)] if m.id == "b"));
    // Stale news of the old incarnation changes nothing.
    a.handle_packet(
        ms(2),
        addr(2),
        Channel::Datagram,
        &packet("b", Msg::Gossip, vec![update("b", 2, 0, State::Alive, None)]),
    );
    assert!(events(&mut a).is_empty());
    a.handle_packet(
        ms(3),
        addr(2),
        Channel::Datagram,
        &packet("b", Msg::Sync { reply: false }, vec![update("b", 2, 1, State::Alive, None)]),
    );
    assert!(matches!(&events(&mut a)[..], [Event::Up(m)] if m.id == "b" && m.incarnation == 1));
}

#[test]
fn a_member_that_leaves_tells_everyone_and_stops() {
    let mut b = member_knowing(&["x", "y"]);
    b.leave(ms(10));
    let sent = drain(&mut b);
    let told: Vec<SocketAddr> = sent
        .iter()
        .filter(|(_, _, p)| p.updates.iter().any(|u| u.id == "a" && u.state == State::Left))
        .map(|(to, _, _)| *to)
        .collect();
    assert_eq!(told, vec![addr(2), addr(3)]);
    assert!(pings(&run(&mut b, 11, 2000)).is_empty(), "a member that left does not probe");
    let mut c = member("c", &["a"]);
    c.handle_packet(ms(11), addr(2), Channel::Datagram, &sent[0].2.encode());
    let ev = events(&mut c);
    assert!(matches!(&ev[0], Event::Left(m) if m.id == "a"), "{ev:?}");
    // The rest is piggybacked news of the other members, nothing more about the one that left.
    assert!(ev[1..].iter().all(|e| matches!(e, Event::Up(m) if m.id != "a")), "{ev:?}");
}

#[test]
fn lifeguard_multiplier_slows_probing_and_recovers() {
    let mut a = member_knowing(&["b", "c"]);
    // Two probes fail completely (no acks, no nacks).
    let sent = run(&mut a, 1, 700);
    assert!(a.health() >= 2, "health {}", a.health());
    let first = pings(&sent).iter().filter(|p| p.1 == Channel::Datagram).count();
    // While unhealthy, probes are spaced out by (health + 1).
    let h = a.health();
    let sent = run(&mut a, 701, 701 + 150 * u64::from(h + 1) - 2);
    assert!(pings(&sent).iter().filter(|p| p.1 == Channel::Datagram).count() <= 1, "{first} then {:?}", pings(&sent));
    // Now b and c answer (and refute the suspicions raised meanwhile): each acked probe lowers it again.
    let mut incarnation = 0;
    for t in (702 + 150 * u64::from(h + 1))..20_000 {
        a.poll_timeout();
        a.handle_tick(ms(t));
        for (to, ch, p) in drain(&mut a) {
            let (from, i) = if to == addr(2) { ("b", 2) } else { ("c", 3) };
            if p.updates.iter().any(|u| u.id == from && u.state != State::Alive) {
                incarnation += 1;
                let alive = update(from, i, incarnation, State::Alive, None);
                a.handle_packet(ms(t), to, Channel::Datagram, &packet(from, Msg::Gossip, vec![alive]));
            }
            if let (Msg::Ping { seq }, Channel::Datagram) = (p.msg, ch) {
                a.handle_packet(ms(t), to, Channel::Datagram, &packet(from, Msg::Ack { seq }, vec![]));
            }
        }
        if a.health() == 0 {
            return;
        }
    }
    panic!("health never recovered: {}", a.health());
}

#[test]
fn a_local_pause_accuses_nobody() {
    let mut a = member_knowing(&["b"]);
    let sent = run(&mut a, 1, 150);
    assert_eq!(pings(&sent).len(), 1);
    // Frozen for 2 s: the next call comes far later than the wake-up asked for.
    a.poll_timeout();
    a.handle_tick(ms(2150));
    let ev = events(&mut a);
    assert!(matches!(ev[0], Event::LocalPause(d) if d >= ms(1800)), "{ev:?}");
    assert!(!ev.iter().any(|e| matches!(e, Event::Suspect(_))));
    run(&mut a, 2151, 2160);
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::Suspect(_))));
    assert_eq!(a.stats().local_pauses, 1);
}

#[test]
fn a_tcp_only_answer_flags_udp_trouble_and_saves_the_member() {
    let mut a = member_knowing(&["b"]);
    let sent = run(&mut a, 1, 250);
    let stream =
        pings(&sent).into_iter().find(|p| p.1 == Channel::Stream).expect("a TCP probe after the UDP one failed");
    a.handle_packet(ms(251), addr(2), Channel::Stream, &packet("b", Msg::Ack { seq: stream.2 }, vec![]));
    let ev = events(&mut a);
    assert!(matches!(&ev[..], [Event::UdpUnreachable(m)] if m.id == "b"), "{ev:?}");
    run(&mut a, 252, 400);
    assert!(!events(&mut a).iter().any(|e| matches!(e, Event::Suspect(_))));
}

#[test]
fn garbage_is_counted_and_dropped() {
    let mut a = member_knowing(&["b"]);
    for junk in [&b""[..], b"RMB", b"RMB\x01\xff\xff\xff", b"\x00\x01\x02\x03\x04", &[0x52, 0x4d, 0x42, 9, 1, 2]] {
        a.handle_packet(ms(1), addr(2), Channel::Datagram, junk);
    }
    assert_eq!(a.stats().decode_errors, 5);
    assert!(events(&mut a).is_empty());
    assert_eq!(a.members().count(), 1);
}
