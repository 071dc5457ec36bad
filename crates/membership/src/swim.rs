//! The SWIM membership state machine, with Lifeguard's refinements and phi-informed probe timeouts.
//!
//! Sans-IO: inputs are [`Swim::handle_packet`] and [`Swim::handle_tick`], both given the current time; outputs
//! are drained with [`Swim::poll_transmit`] (packets to send), [`Swim::poll_event`] (membership changes) and
//! [`Swim::poll_timeout`] (when to call `handle_tick` next). Randomness comes from a generator seeded by
//! [`Config::seed`], so a run is a pure function of its inputs and replays exactly.
//!
//! The protocol, per member:
//! - Every `probe_interval` (times the local health multiplier) it pings the next member of a shuffled
//!   round-robin list. No ack within the learned timeout: it asks `k` others to ping the target for it
//!   (`PingReq`), and pings it over TCP too. No ack by the end of the indirect window: the target is *suspect*.
//! - A suspicion is gossiped, and sent straight to the suspect (so it can refute quickly) and, in clusters up to
//!   `broadcast_max`, to everybody. Each member runs its own suspicion timer, which independent confirmations
//!   shorten (Lifeguard); when it expires the member is declared *dead*.
//! - A member that hears itself suspected or declared dead refutes by raising its incarnation.
//! - Updates ride on every packet (least-sent first), each for `retransmit_mult × ceil(log10(n + 1))` sends.
//! - A periodic full-state sync with a random member, and a periodic hello to a random dead member, heal
//!   partitions; joining is a sync with a seed address.
//! - Lifeguard's local health multiplier grows when our own probes fail or expected nacks do not come, and
//!   stretches our probe interval and timeouts: a member that is itself slow stops accusing others.
//! - A local-pause guard: if this member is woken much later than it asked (it was frozen), probes in flight
//!   are dropped rather than failed and its suspicion timers are stretched by the pause.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::config::Config;
use crate::phi::{PhiAccrual, PhiConfig, Window};
use crate::wire::{update_size, Meta, Msg, Packet, State, Update, MAX_UPDATES};

/// Which channel a packet travels on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A UDP datagram (or its stand-in): may be lost, must fit `max_datagram`.
    Datagram,
    /// A reliable stream (TCP, or an HTTP heartbeat): the fallback probe path.
    Stream,
}

/// A packet to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub channel: Channel,
    pub bytes: Vec<u8>,
}

/// A member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub state: State,
    pub meta: Meta,
}

/// A change in membership, for the rest of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member joined, or came back after being dead or having left.
    Up(MemberInfo),
    /// A member is suspected of having failed.
    Suspect(MemberInfo),
    /// A suspected member refuted the suspicion.
    Alive(MemberInfo),
    /// A member was declared dead.
    Dead(MemberInfo),
    /// A member left on purpose.
    Left(MemberInfo),
    /// A member's metadata changed.
    Updated(MemberInfo),
    /// A member answers over TCP but not over UDP: it is up, but datagrams to it are being lost or blocked.
    UdpUnreachable(MemberInfo),
    /// This member was suspected or declared dead by others and refuted it with a new incarnation.
    Refuted { incarnation: u64 },
    /// This member noticed it had been frozen for this long (and did not accuse anyone because of it).
    LocalPause(Duration),
}

/// Counters for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Packets refused by the decoder (malformed, oversized, wrong version).
    pub decode_errors: u64,
    pub probes_sent: u64,
    pub probes_failed: u64,
    pub suspicions_raised: u64,
    pub refutations: u64,
    pub local_pauses: u64,
    /// Work refused because a bound was reached (in-flight probes or relays, member count).
    pub overflows: u64,
}

#[derive(Clone, Debug)]
struct Suspicion {
    started: Duration,
    confirmations: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct Member {
    info: MemberInfo,
    state_since: Duration,
    suspicion: Option<Suspicion>,
    /// Direct-probe round trips (ms), for the phi-informed timeout.
    rtt: Window,
    /// Arrival of anything from this member: the `phi` shown to operators.
    arrivals: PhiAccrual,
    /// Recent suspicions that were refuted (decays); stretches the next suspicion.
    flaps: u32,
    udp_unreachable: bool,
}

#[derive(Clone, Debug)]
struct Probe {
    target: String,
    sent: Duration,
    direct_deadline: Duration,
    final_deadline: Duration,
    indirect_sent: bool,
    expected_nacks: usize,
    nacks: usize,
}

#[derive(Clone, Debug)]
struct Relay {
    origin: SocketAddr,
    origin_seq: u32,
    deadline: Duration,
}

#[derive(Clone, Debug)]
struct Queued {
    update: Update,
    sends: u32,
    size: usize,
}

/// One member's view of the cluster and its protocol state.
#[derive(Debug)]
pub struct Swim {
    cfg: Config,
    me: MemberInfo,
    members: BTreeMap<String, Member>,
    probe_order: Vec<String>,
    probe_pos: usize,
    probes: BTreeMap<u32, Probe>,
    relays: BTreeMap<u32, Relay>,
    seq: u32,
    lhm: u32,
    queue: Vec<Queued>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: Xoshiro256PlusPlus,
    seeds: Vec<SocketAddr>,
    next_probe: Duration,
    next_gossip: Duration,
    next_sync: Duration,
    next_reannounce: Duration,
    /// When this member asked to be woken; being woken much later means it was frozen.
    wake_at: Option<Duration>,
    left: bool,
    stats: Stats,
}

impl Swim {
    /// A member with id `id` at `addr`, starting at `now`, joining through `seeds` (empty for the first
    /// member). `config` must be valid (see [`Config::validate`]).
    pub fn new(
        config: Config,
        id: String,
        addr: SocketAddr,
        meta: Meta,
        seeds: Vec<SocketAddr>,
        now: Duration,
    ) -> Self {
        let rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let me = MemberInfo { id, addr, incarnation: 0, state: State::Alive, meta };
        let mut swim = Self {
            me,
            members: BTreeMap::new(),
            probe_order: Vec::new(),
            probe_pos: 0,
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            seq: 0,
            lhm: 0,
            queue: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            seeds: seeds.into_iter().filter(|s| *s != addr).collect(),
            next_probe: now + config.probe_interval,
            next_gossip: now + config.gossip_interval,
            next_sync: now,
            next_reannounce: now + config.reannounce_interval,
            wake_at: None,
            left: false,
            stats: Stats::default(),
            cfg: config,
        };
        let hello = swim.self_update();
        swim.enqueue(hello);
        swim
    }

    /// This member as others see it.
    pub fn local(&self) -> &MemberInfo {
        &self.me
    }

    /// Every other member this node knows, with its state.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().map(|m| &m.info)
    }

    /// The phi of `id` at `now`: how overdue the next packet from it is (0 when just heard from).
    pub fn phi(&self, id: &str, now: Duration) -> Option<f64> {
        self.members.get(id).map(|m| m.arrivals.phi(now))
    }

    /// Lifeguard's local health multiplier (0 is healthy).
    pub fn health(&self) -> u32 {
        self.lhm
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Leaves the cluster: tells every member directly and stops probing. Idempotent.
    pub fn leave(&mut self, now: Duration) {
        self.observe_time(now);
        if self.left {
            return;
        }
        self.left = true;
        self.me.incarnation = self.me.incarnation.saturating_add(1);
        self.me.state = State::Left;
        let update = self.self_update();
        self.enqueue(update.clone());
        let targets: Vec<SocketAddr> = self.live_members().map(|m| m.info.addr).collect();
        for to in targets {
            self.send_with(to, Msg::Gossip, vec![update.clone()], Channel::Datagram);
        }
    }

    /// The next packet to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next membership event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Swim::handle_tick`] must be called next.
    pub fn poll_timeout(&mut self) -> Duration {
        let mut next = self.next_probe.min(self.next_gossip).min(self.next_sync).min(self.next_reannounce);
        for p in self.probes.values() {
            next = next.min(if p.indirect_sent { p.final_deadline } else { p.direct_deadline });
        }
        for r in self.relays.values() {
            next = next.min(r.deadline);
        }
        for m in self.members.values() {
            if let Some(s) = &m.suspicion {
                next = next.min(s.started + self.suspicion_timeout(m, s));
            }
        }
        self.wake_at = Some(next);
        next
    }

    /// A packet arrived from `from` on `channel`. Malformed packets are counted and dropped.
    pub fn handle_packet(&mut self, now: Duration, from: SocketAddr, channel: Channel, bytes: &[u8]) {
        self.observe_time(now);
        self.stats.packets_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let packet = match Packet::decode(bytes) {
            Ok(p) => p,
            Err(_) => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        if packet.from == self.me.id {
            return;
        }
        if let Some(m) = self.members.get_mut(&packet.from) {
            m.arrivals.heartbeat(now);
        }
        for update in packet.updates {
            self.apply(now, update);
        }
        if self.left {
            return;
        }
        // Where to send anything but the immediate answer: the sender's own address when we know it (a packet
        // that came over a stream transport arrives from a temporary address).
        let home = self.members.get(&packet.from).map_or(from, |m| m.info.addr);
        match packet.msg {
            Msg::Ping { seq } => self.send_with(from, Msg::Ack { seq }, Vec::new(), channel),
            Msg::Ack { seq } => self.on_ack(now, &packet.from, seq, channel),
            Msg::Nack { seq } => {
                if let Some(p) = self.probes.get_mut(&seq) {
                    p.nacks += 1;
                }
            }
            Msg::PingReq { seq, target, target_addr, timeout_ms } => {
                if self.relays.len() >= self.cfg.relays_inflight_max {
                    self.stats.overflows += 1;
                    return;
                }
                let my_seq = self.next_seq();
                let timeout = self.direct_timeout(&target).min(Duration::from_millis(u64::from(timeout_ms)));
                self.relays.insert(my_seq, Relay { origin: home, origin_seq: seq, deadline: now + timeout });
                self.send(target_addr, Msg::Ping { seq: my_seq });
            }
            Msg::Gossip => {}
            Msg::Sync { reply } => {
                if reply {
                    self.send_state(home, false);
                }
            }
        }
    }

    /// Time passed: run whatever is due at `now`.
    pub fn handle_tick(&mut self, now: Duration) {
        self.observe_time(now);
        self.expire_probes(now);
        self.expire_relays(now);
        self.expire_suspicions(now);
        if self.left {
            return;
        }
        if now >= self.next_probe {
            self.start_probe(now);
            self.next_probe = now + self.scaled(self.cfg.probe_interval);
        }
        if now >= self.next_gossip {
            self.gossip();
            self.next_gossip = now + self.cfg.gossip_interval;
        }
        if now >= self.next_sync {
            self.sync();
            self.next_sync = now
                + if self.live_members().next().is_none() {
                    self.cfg.probe_interval * 4
                } else {
                    self.cfg.sync_interval
                };
        }
        if now >= self.next_reannounce {
            self.reannounce();
            self.forget_old_dead(now);
            self.next_reannounce = now + self.cfg.reannounce_interval;
        }
    }

    // ----- time -----

    /// The local-pause guard: woken far later than asked means this process was frozen.
    fn observe_time(&mut self, now: Duration) {
        let Some(wake_at) = self.wake_at.take() else { return };
        let late = now.saturating_sub(wake_at);
        if late <= self.cfg.pause_guard {
            return;
        }
        self.stats.local_pauses += 1;
        self.events.push_back(Event::LocalPause(late));
        // Nothing we sent before the pause could be answered while we were frozen, so silence proves nothing:
        // drop the probes, and give every suspicion the pause back, so refutations that arrived meanwhile are
        // read before any timer fires.
        self.probes.clear();
        self.relays.clear();
        for m in self.members.values_mut() {
            if let Some(s) = &mut m.suspicion {
                s.started += late;
            }
        }
        self.next_probe = now + self.cfg.probe_interval;
    }

    /// `d` stretched by the local health multiplier.
    fn scaled(&self, d: Duration) -> Duration {
        d * (self.lhm + 1)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The direct-probe timeout for `target`: where phi of its recent round trips reaches the threshold,
    /// within bounds, stretched by our own health.
    fn direct_timeout(&self, target: &str) -> Duration {
        let base = self.members.get(target).map_or(self.cfg.probe_timeout, |m| self.learned_timeout(m));
        self.scaled(base)
    }

    /// Where phi of `m`'s recent round trips reaches the threshold, within the configured bounds (the
    /// configured default until a few round trips were seen).
    fn learned_timeout(&self, m: &Member) -> Duration {
        let learned = (m.rtt.len() >= 4).then(|| {
            let min_sd = self.cfg.probe_timeout_min.as_secs_f64() * 1000.0 / 4.0;
            Duration::from_secs_f64(m.rtt.quantile_ms(self.cfg.phi_threshold, min_sd) / 1000.0)
        });
        learned.unwrap_or(self.cfg.probe_timeout).clamp(self.cfg.probe_timeout_min, self.cfg.probe_timeout_max)
    }

    fn suspicion_timeout(&self, m: &Member, s: &Suspicion) -> Duration {
        // Lifeguard: max - (max - min) * log(C + 1) / log(K + 1), C independent confirmations of K needed.
        let k = self.cfg.suspicion_confirmations as f64;
        let c = (s.confirmations.len().saturating_sub(1) as f64).min(k);
        let (min, max) = (self.cfg.suspicion_min.as_secs_f64(), self.cfg.suspicion_max.as_secs_f64());
        let secs = (max - (max - min) * (c + 1.0).ln() / (k + 1.0).ln()).max(min);
        // A member that keeps being falsely suspected (flapping) gets more slack each time, up to 4x. (Adding
        // the peer's round-trip tail here as well was measured: slower detection, no fewer false positives.)
        Duration::from_secs_f64(secs) * (1 + m.flaps.min(3))
    }

    // ----- probing -----

    fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| matches!(m.info.state, State::Alive | State::Suspect))
    }

    fn start_probe(&mut self, now: Duration) {
        if self.probes.len() >= self.cfg.probes_inflight_max {
            self.stats.overflows += 1;
            return;
        }
        let Some(target) = self.next_probe_target() else { return };
        let Some(addr) = self.members.get(&target).map(|m| m.info.addr) else { return };
        let seq = self.next_seq();
        let direct = self.direct_timeout(&target);
        // The indirect window: the helper's own probe (at most one direct timeout) plus the relayed answer.
        let final_deadline = now + direct + direct + self.scaled(self.cfg.probe_timeout_min);
        self.probes.insert(
            seq,
            Probe {
                target,
                sent: now,
                direct_deadline: now + direct,
                final_deadline,
                indirect_sent: false,
                expected_nacks: 0,
                nacks: 0,
            },
        );
        self.stats.probes_sent += 1;
        self.send(addr, Msg::Ping { seq });
    }

    /// Round-robin over a shuffled list of live members, reshuffled each pass (SWIM's bounded first
    /// detection time).
    fn next_probe_target(&mut self) -> Option<String> {
        for _ in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let id = self.probe_order[self.probe_pos].clone();
                self.probe_pos += 1;
                if self.members.get(&id).is_some_and(|m| matches!(m.info.state, State::Alive | State::Suspect)) {
                    return Some(id);
                }
            }
            let mut order: Vec<String> = self.live_members().map(|m| m.info.id.clone()).collect();
            if order.is_empty() {
                return None;
            }
            for i in (1..order.len()).rev() {
                let j = self.rng.random_range(0..=i);
                order.swap(i, j);
            }
            self.probe_order = order;
            self.probe_pos = 0;
        }
        None
    }

    fn on_ack(&mut self, now: Duration, from: &str, seq: u32, channel: Channel) {
        if let Some(relay) = self.relays.remove(&seq) {
            self.send(relay.origin, Msg::Ack { seq: relay.origin_seq });
            return;
        }
        let Some(probe) = self.probes.get(&seq) else { return };
        if channel == Channel::Stream {
            // Up, but only over TCP: say so once, and keep it from being suspected.
            if let Some(m) = self.members.get_mut(&probe.target) {
                if !m.udp_unreachable {
                    m.udp_unreachable = true;
                    self.events.push_back(Event::UdpUnreachable(m.info.clone()));
                }
            }
        }
        let Some(probe) = self.probes.remove(&seq) else { return };
        if from == probe.target && channel == Channel::Datagram && !probe.indirect_sent {
            if let Some(m) = self.members.get_mut(&probe.target) {
                m.rtt.push((now - probe.sent).as_secs_f64() * 1000.0);
                m.udp_unreachable = false;
            }
        }
        self.lhm = self.lhm.saturating_sub(1);
    }

    fn expire_probes(&mut self, now: Duration) {
        let due: Vec<u32> = self
            .probes
            .iter()
            .filter(|(_, p)| now >= if p.indirect_sent { p.final_deadline } else { p.direct_deadline })
            .map(|(&s, _)| s)
            .collect();
        for seq in due {
            let Some(probe) = self.probes.get(&seq).cloned() else { continue };
            if !probe.indirect_sent {
                // Helpers get one direct timeout for their own probe, so their nack is back before our window ends.
                self.send_indirect(seq, &probe.target, probe.direct_deadline - probe.sent);
                continue;
            }
            self.probes.remove(&seq);
            self.stats.probes_failed += 1;
            // Lifeguard: a failed probe counts against our own health, and so does each helper that did not even
            // send a nack (we may be the one that is slow or cut off).
            let missing_nacks = probe.expected_nacks.saturating_sub(probe.nacks);
            self.lhm = (self.lhm + 1 + u32::from(missing_nacks > 0)).min(self.cfg.lhm_max);
            self.suspect(now, &probe.target);
        }
    }

    fn send_indirect(&mut self, seq: u32, target: &str, budget: Duration) {
        let Some(addr) = self.members.get(target).map(|m| m.info.addr) else {
            self.probes.remove(&seq);
            return;
        };
        let mut helpers: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.info.state == State::Alive && m.info.id != target)
            .map(|m| m.info.addr)
            .collect();
        let k = self.cfg.indirect_probes.min(helpers.len());
        for i in 0..k {
            let j = self.rng.random_range(i..helpers.len());
            helpers.swap(i, j);
        }
        helpers.truncate(k);
        for &h in &helpers {
            let timeout_ms = budget.as_millis().min(u128::from(u32::MAX)) as u32;
            self.send(h, Msg::PingReq { seq, target: target.to_owned(), target_addr: addr, timeout_ms });
        }
        if self.cfg.tcp_fallback {
            self.send_with(addr, Msg::Ping { seq }, Vec::new(), Channel::Stream);
        }
        if let Some(p) = self.probes.get_mut(&seq) {
            p.indirect_sent = true;
            p.expected_nacks = k;
        }
    }

    fn expire_relays(&mut self, now: Duration) {
        let due: Vec<u32> = self.relays.iter().filter(|(_, r)| now >= r.deadline).map(|(&s, _)| s).collect();
        for seq in due {
            if let Some(r) = self.relays.remove(&seq) {
                self.send(r.origin, Msg::Nack { seq: r.origin_seq });
            }
        }
    }

    // ----- suspicion -----

    /// Our own probe of `id` failed: suspect it, or, if it is suspect already, confirm the suspicion (an
    /// independent confirmation shortens everyone's timer).
    fn suspect(&mut self, now: Duration, id: &str) {
        let me = self.me.id.clone();
        let Some(m) = self.members.get_mut(id) else { return };
        let update = Update { state: State::Suspect, by: Some(me.clone()), ..to_update(&m.info) };
        match m.info.state {
            State::Alive => {
                self.stats.suspicions_raised += 1;
                let suspect_addr = m.info.addr;
                self.apply(now, update.clone());
                // Tell the suspect itself (so it can refute at once) and, in a small cluster, everybody.
                self.send_with(suspect_addr, Msg::Gossip, vec![update.clone()], Channel::Datagram);
                self.broadcast(update);
            }
            State::Suspect => {
                let Some(s) = &mut m.suspicion else { return };
                if s.confirmations.insert(me) {
                    self.enqueue(update.clone());
                    self.broadcast(update);
                }
            }
            State::Dead | State::Left => {}
        }
    }

    fn expire_suspicions(&mut self, now: Duration) {
        let due: Vec<String> = self
            .members
            .values()
            .filter(|m| m.suspicion.as_ref().is_some_and(|s| now >= s.started + self.suspicion_timeout(m, s)))
            .map(|m| m.info.id.clone())
            .collect();
        for id in due {
            let Some(m) = self.members.get(&id) else { continue };
            let update = Update { state: State::Dead, by: None, ..to_update(&m.info) };
            self.apply(now, update.clone());
            self.broadcast(update);
        }
    }

    // ----- merging gossip -----

    fn apply(&mut self, now: Duration, u: Update) {
        if u.id == self.me.id {
            self.apply_about_me(u);
            return;
        }
        let Some(m) = self.members.get_mut(&u.id) else {
            if self.members.len() >= self.cfg.members_max {
                self.stats.overflows += 1;
                return;
            }
            let info = MemberInfo {
                id: u.id.clone(),
                addr: u.addr,
                incarnation: u.incarnation,
                state: u.state,
                meta: u.meta.clone(),
            };
            let mut member = Member {
                info: info.clone(),
                state_since: now,
                suspicion: None,
                rtt: Window::new(32),
                arrivals: PhiAccrual::new(PhiConfig {
                    first_interval: self.cfg.probe_interval,
                    ..PhiConfig::default()
                }),
                flaps: 0,
                udp_unreachable: false,
            };
            member.arrivals.heartbeat(now);
            match u.state {
                State::Alive => self.events.push_back(Event::Up(info)),
                State::Suspect => {
                    member.suspicion = Some(Suspicion { started: now, confirmations: u.by.iter().cloned().collect() });
                    self.events.push_back(Event::Up(info.clone()));
                    self.events.push_back(Event::Suspect(info));
                }
                // Remembered so stale gossip cannot bring it back, but nothing to announce.
                State::Dead | State::Left => {}
            }
            self.members.insert(u.id.clone(), member);
            self.enqueue(u);
            return;
        };
        let (cur, inc) = (m.info.state, m.info.incarnation);
        let newer = u.incarnation > inc;
        let accept = match u.state {
            State::Alive => newer,
            State::Suspect => {
                (cur == State::Alive && u.incarnation >= inc)
                    || (cur == State::Suspect && newer)
                    || (matches!(cur, State::Dead | State::Left) && newer)
            }
            State::Dead => (matches!(cur, State::Alive | State::Suspect) && u.incarnation >= inc) || newer,
            State::Left => cur != State::Left && u.incarnation >= inc,
        };
        if !accept {
            // The same suspicion from another member is an independent confirmation (Lifeguard).
            if u.state == State::Suspect && cur == State::Suspect && u.incarnation == inc {
                if let (Some(s), Some(by)) = (&mut m.suspicion, &u.by) {
                    if s.confirmations.len() < 64 && s.confirmations.insert(by.clone()) {
                        self.enqueue(u);
                    }
                }
            }
            return;
        }
        let meta_changed = m.info.meta != u.meta || m.info.addr != u.addr;
        m.info.incarnation = u.incarnation;
        m.info.addr = u.addr;
        m.info.meta = u.meta.clone();
        if cur != u.state {
            m.state_since = now;
        }
        m.info.state = u.state;
        let info = m.info.clone();
        match u.state {
            State::Alive => {
                m.suspicion = None;
                match cur {
                    State::Suspect => {
                        m.flaps = (m.flaps + 1).min(8);
                        self.events.push_back(Event::Alive(info));
                    }
                    State::Dead | State::Left => {
                        m.arrivals.heartbeat(now);
                        self.events.push_back(Event::Up(info));
                    }
                    State::Alive if meta_changed => self.events.push_back(Event::Updated(info)),
                    State::Alive => {}
                }
            }
            State::Suspect => {
                if m.suspicion.is_none() {
                    m.suspicion = Some(Suspicion { started: now, confirmations: BTreeSet::new() });
                    self.events.push_back(Event::Suspect(info));
                }
                if let (Some(s), Some(by)) = (&mut m.suspicion, &u.by) {
                    s.confirmations.insert(by.clone());
                }
            }
            State::Dead => {
                m.suspicion = None;
                if cur != State::Dead {
                    self.events.push_back(Event::Dead(info));
                }
            }
            State::Left => {
                m.suspicion = None;
                self.events.push_back(Event::Left(info));
            }
        }
        self.enqueue(u);
    }

    fn apply_about_me(&mut self, u: Update) {
        if self.left {
            return;
        }
        let accused =
            matches!(u.state, State::Suspect | State::Dead | State::Left) && u.incarnation >= self.me.incarnation;
        let stale_alive = u.state == State::Alive && u.incarnation > self.me.incarnation;
        if accused || stale_alive {
            // Bounded by the decoder (MAX_INCARNATION), so this cannot overflow; saturate anyway.
            self.me.incarnation = u.incarnation.saturating_add(1);
            self.stats.refutations += 1;
            self.events.push_back(Event::Refuted { incarnation: self.me.incarnation });
            let alive = self.self_update();
            self.enqueue(alive.clone());
            self.broadcast(alive);
        }
    }

    // ----- dissemination -----

    fn self_update(&self) -> Update {
        to_update(&self.me)
    }

    fn enqueue(&mut self, update: Update) {
        // A newer update about a member replaces the queued one.
        self.queue.retain(|q| {
            q.update.id != update.id
                || (q.update.state == State::Suspect && update.state == State::Suspect && q.update.by != update.by)
        });
        let size = update_size(&update);
        self.queue.push(Queued { update, sends: 0, size });
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.members.len() as f64 + 1.0;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    /// Takes updates for one packet: least-sent first, as many as fit in `room` bytes.
    fn piggyback(&mut self, room: usize) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.queue.sort_by_key(|q| q.sends);
        let mut used = 0;
        let mut out = Vec::new();
        for q in &mut self.queue {
            if used + q.size > room || out.len() >= MAX_UPDATES / 2 {
                continue;
            }
            used += q.size;
            q.sends += 1;
            out.push(q.update.clone());
        }
        self.queue.retain(|q| q.sends < limit);
        out
    }

    fn send(&mut self, to: SocketAddr, msg: Msg) {
        self.send_with(to, msg, Vec::new(), Channel::Datagram);
    }

    fn send_with(&mut self, to: SocketAddr, msg: Msg, mut updates: Vec<Update>, channel: Channel) {
        let mut packet = Packet { from: self.me.id.clone(), msg, updates: Vec::new() };
        let base = packet.encode().len() + 2 + updates.iter().map(update_size).sum::<usize>();
        let room = self.cfg.max_datagram.saturating_sub(base);
        let extra: Vec<Update> = self.piggyback(room).into_iter().filter(|u| !updates_contains(&updates, u)).collect();
        updates.extend(extra);
        packet.updates = updates;
        let bytes = packet.encode();
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push_back(Transmit { to, channel, bytes });
    }

    /// Sends `update` straight to every live member when the cluster is small enough.
    fn broadcast(&mut self, update: Update) {
        if self.members.len() > self.cfg.broadcast_max {
            return;
        }
        let targets: Vec<SocketAddr> =
            self.live_members().filter(|m| m.info.id != update.id).map(|m| m.info.addr).collect();
        for to in targets {
            self.send_with(to, Msg::Gossip, vec![update.clone()], Channel::Datagram);
        }
    }

    fn gossip(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut targets: Vec<SocketAddr> = self.live_members().map(|m| m.info.addr).collect();
        let k = self.cfg.gossip_fanout.min(targets.len());
        for i in 0..k {
            let j = self.rng.random_range(i..targets.len());
            targets.swap(i, j);
        }
        for &to in &targets[..k] {
            self.send(to, Msg::Gossip);
        }
    }

    /// Our whole view (ourselves first), split into packets that fit a datagram.
    fn send_state(&mut self, to: SocketAddr, reply: bool) {
        let mut all = vec![self.self_update()];
        all.extend(self.members.values().map(|m| to_update(&m.info)));
        let header =
            Packet { from: self.me.id.clone(), msg: Msg::Sync { reply }, updates: Vec::new() }.encode().len() + 4;
        let mut chunk: Vec<Update> = Vec::new();
        let mut used = header;
        for u in all {
            let size = update_size(&u);
            if (used + size > self.cfg.max_datagram || chunk.len() >= MAX_UPDATES) && !chunk.is_empty() {
                let updates = std::mem::take(&mut chunk);
                self.push_packet(to, Msg::Sync { reply }, updates);
                used = header;
            }
            used += size;
            chunk.push(u);
        }
        if !chunk.is_empty() {
            self.push_packet(to, Msg::Sync { reply }, chunk);
        }
    }

    /// Sends a packet with exactly these updates (no piggyback).
    fn push_packet(&mut self, to: SocketAddr, msg: Msg, updates: Vec<Update>) {
        let bytes = Packet { from: self.me.id.clone(), msg, updates }.encode();
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.out.push_back(Transmit { to, channel: Channel::Datagram, bytes });
    }

    fn sync(&mut self) {
        let live: Vec<SocketAddr> = self.live_members().map(|m| m.info.addr).collect();
        if live.is_empty() {
            // Not joined yet (or alone): ask the seeds.
            for s in self.seeds.clone() {
                self.send_state(s, true);
            }
            return;
        }
        let to = live[self.rng.random_range(0..live.len())];
        self.send_state(to, true);
    }

    fn reannounce(&mut self) {
        let dead: Vec<SocketAddr> =
            self.members.values().filter(|m| m.info.state == State::Dead).map(|m| m.info.addr).collect();
        if dead.is_empty() {
            return;
        }
        let to = dead[self.rng.random_range(0..dead.len())];
        self.send_state(to, true);
    }

    /// Forgets long-dead members and lets flapping scores decay.
    fn forget_old_dead(&mut self, now: Duration) {
        for m in self.members.values_mut() {
            m.flaps = m.flaps.saturating_sub(1);
        }
        let retention = self.cfg.dead_retention;
        self.members.retain(|_, m| {
            !(matches!(m.info.state, State::Dead | State::Left) && now.saturating_sub(m.state_since) > retention)
        });
    }
}

fn to_update(m: &MemberInfo) -> Update {
    Update {
        id: m.id.clone(),
        addr: m.addr,
        incarnation: m.incarnation,
        state: m.state,
        meta: m.meta.clone(),
        by: None,
    }
}

fn updates_contains(list: &[Update], u: &Update) -> bool {
    list.iter().any(|x| x.id == u.id && x.state == u.state && x.incarnation == u.incarnation)
}
