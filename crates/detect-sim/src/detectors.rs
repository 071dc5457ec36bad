//! The detectors under simulation, behind one trait: Rampart's SWIM, foca, and a fixed-timeout heartbeat.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use foca::{Config as FocaConfig, Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime, Timer};
use rampart_membership::{Channel, Config, Event, Meta, Profile, Swim};
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// A member's verdict about another.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Dead,
    Alive,
}

/// A packet leaving a member.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: usize,
    pub stream: bool,
    pub bytes: Vec<u8>,
}

/// One simulated member of some detector.
pub trait Member {
    fn on_packet(&mut self, now: Duration, from: usize, stream: bool, bytes: &[u8]);
    fn on_tick(&mut self, now: Duration);
    /// When `on_tick` must run next.
    fn next_wakeup(&mut self) -> Duration;
    fn drain(&mut self, out: &mut Vec<Outgoing>, verdicts: &mut Vec<(usize, Verdict)>);
}

/// The detectors the simulator knows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Rampart's membership, LAN profile.
    Rampart,
    /// The foca crate, `Config::new_lan`.
    Foca,
    /// Every member heartbeats every other every 200 ms; silence for 1 s means dead.
    Naive,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Rampart, Kind::Foca, Kind::Naive];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Rampart => "rampart",
            Kind::Foca => "foca",
            Kind::Naive => "naive",
        }
    }

    /// A fresh member `idx` (in its `generation`-th life) of an `n`-member cluster, joining through member
    /// `seed.0` (in its `seed.1`-th life).
    pub fn member(
        self,
        idx: usize,
        generation: u32,
        n: usize,
        seed: (usize, u32),
        rng_seed: u64,
        now: Duration,
    ) -> Box<dyn Member> {
        match self {
            Kind::Rampart => Box::new(Ours::new(idx, generation, seed.0, rng_seed, now)),
            Kind::Foca => Box::new(FocaMember::new(idx, generation, n, seed, rng_seed, now)),
            Kind::Naive => Box::new(Naive::new(idx, n, now)),
        }
    }
}

/// The simulated address of member `idx` (never used for real traffic).
pub fn addr(idx: usize) -> SocketAddr {
    SocketAddr::from(([127, 1, (idx / 250) as u8, (idx % 250 + 1) as u8], 7946))
}

fn index(addr: SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(a) => {
            let o = a.ip().octets();
            (o[0] == 127 && o[1] == 1).then(|| o[2] as usize * 250 + o[3] as usize - 1)
        }
        SocketAddr::V6(_) => None,
    }
}

fn id_index(id: &str) -> Option<usize> {
    id.strip_prefix('m')?.parse().ok()
}

// ----- Rampart -----

struct Ours {
    swim: Swim,
}

impl Ours {
    fn new(idx: usize, generation: u32, seed: usize, rng_seed: u64, now: Duration) -> Self {
        let cfg = Config {
            seed: rng_seed ^ (idx as u64) << 20 ^ u64::from(generation) << 40,
            ..Config::profile(Profile::Lan)
        };
        let seeds = if seed == idx { vec![] } else { vec![addr(seed)] };
        Self { swim: Swim::new(cfg, format!("m{idx}"), addr(idx), Meta::default(), seeds, now) }
    }
}

impl Member for Ours {
    fn on_packet(&mut self, now: Duration, from: usize, stream: bool, bytes: &[u8]) {
        let channel = if stream { Channel::Stream } else { Channel::Datagram };
        self.swim.handle_packet(now, addr(from), channel, bytes);
    }

    fn on_tick(&mut self, now: Duration) {
        self.swim.handle_tick(now);
    }

    fn next_wakeup(&mut self) -> Duration {
        self.swim.poll_timeout()
    }

    fn drain(&mut self, out: &mut Vec<Outgoing>, verdicts: &mut Vec<(usize, Verdict)>) {
        while let Some(t) = self.swim.poll_transmit() {
            if let Some(to) = index(t.to) {
                out.push(Outgoing { to, stream: t.channel == Channel::Stream, bytes: t.bytes });
            }
        }
        while let Some(e) = self.swim.poll_event() {
            let (m, v) = match &e {
                Event::Dead(m) | Event::Left(m) => (m, Verdict::Dead),
                Event::Up(m) | Event::Alive(m) => (m, Verdict::Alive),
                _ => continue,
            };
            if let Some(i) = id_index(&m.id) {
                verdicts.push((i, v));
            }
        }
    }
}

// ----- foca -----

/// foca identity: the member index plus a generation, renewed when declared down so it can rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FocaId {
    idx: u32,
    generation: u32,
}

impl Identity for FocaId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(FocaId { idx: self.idx, generation: self.generation + 1 })
    }

    fn addr(&self) -> u32 {
        self.idx
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[derive(Default)]
struct FocaRuntime {
    now: Duration,
    seq: u64,
    sends: Vec<(FocaId, Vec<u8>)>,
    timers: BinaryHeap<Reverse<(Duration, u64)>>,
    timer_payloads: Vec<(u64, Timer<FocaId>)>,
    verdicts: Vec<(usize, Verdict)>,
}

impl Runtime<FocaId> for FocaRuntime {
    fn notify(&mut self, notification: Notification<'_, FocaId>) {
        match notification {
            Notification::MemberUp(id) => self.verdicts.push((id.idx as usize, Verdict::Alive)),
            Notification::MemberDown(id) => self.verdicts.push((id.idx as usize, Verdict::Dead)),
            _ => {}
        }
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<FocaId>, after: Duration) {
        // Timers are ordered by (deadline, submission order): foca's own `Timer` ordering ignores contents.
        self.seq += 1;
        self.timers.push(Reverse((self.now + after, self.seq)));
        self.timer_payloads.push((self.seq, event));
    }
}

struct FocaMember {
    foca: Foca<FocaId, PostcardCodec, Xoshiro256PlusPlus, NoCustomBroadcast>,
    rt: FocaRuntime,
}

impl FocaMember {
    fn new(idx: usize, generation: u32, n: usize, seed: (usize, u32), rng_seed: u64, now: Duration) -> Self {
        let cfg = FocaConfig::new_lan(NonZeroU32::new(n.max(1) as u32).unwrap_or(NonZeroU32::MIN));
        let id = FocaId { idx: idx as u32, generation };
        let rng = Xoshiro256PlusPlus::seed_from_u64(rng_seed ^ (idx as u64) << 20 ^ u64::from(generation) << 40);
        let mut me =
            Self { foca: Foca::new(id, cfg, rng, PostcardCodec), rt: FocaRuntime { now, ..FocaRuntime::default() } };
        if seed.0 != idx {
            let _ = me.foca.announce(FocaId { idx: seed.0 as u32, generation: seed.1 }, &mut me.rt);
        }
        me
    }
}

impl Member for FocaMember {
    fn on_packet(&mut self, now: Duration, _from: usize, _stream: bool, bytes: &[u8]) {
        self.rt.now = now;
        let _ = self.foca.handle_data(bytes, &mut self.rt);
    }

    fn on_tick(&mut self, now: Duration) {
        self.rt.now = now;
        while let Some(Reverse((at, seq))) = self.rt.timers.peek().copied() {
            if at > now {
                break;
            }
            self.rt.timers.pop();
            if let Some(pos) = self.rt.timer_payloads.iter().position(|(s, _)| *s == seq) {
                let (_, timer) = self.rt.timer_payloads.swap_remove(pos);
                let _ = self.foca.handle_timer(timer, &mut self.rt);
            }
        }
    }

    fn next_wakeup(&mut self) -> Duration {
        self.rt.timers.peek().map_or(self.rt.now + Duration::from_secs(3600), |Reverse((at, _))| *at)
    }

    fn drain(&mut self, out: &mut Vec<Outgoing>, verdicts: &mut Vec<(usize, Verdict)>) {
        out.extend(self.rt.sends.drain(..).map(|(to, bytes)| Outgoing { to: to.idx as usize, stream: false, bytes }));
        verdicts.append(&mut self.rt.verdicts);
    }
}

// ----- naive -----

const NAIVE_INTERVAL: Duration = Duration::from_millis(200);
const NAIVE_TIMEOUT: Duration = Duration::from_millis(1000);

/// All-to-all heartbeats with a fixed timeout: what a first attempt at failure detection looks like.
struct Naive {
    idx: usize,
    n: usize,
    next: Duration,
    last_heard: Vec<Option<Duration>>,
    dead: Vec<bool>,
    out: Vec<Outgoing>,
    verdicts: Vec<(usize, Verdict)>,
}

impl Naive {
    fn new(idx: usize, n: usize, now: Duration) -> Self {
        Self {
            idx,
            n,
            next: now,
            last_heard: vec![Some(now); n],
            dead: vec![false; n],
            out: Vec::new(),
            verdicts: Vec::new(),
        }
    }
}

impl Member for Naive {
    fn on_packet(&mut self, now: Duration, from: usize, _stream: bool, _bytes: &[u8]) {
        if from < self.n {
            self.last_heard[from] = Some(now);
            if self.dead[from] {
                self.dead[from] = false;
                self.verdicts.push((from, Verdict::Alive));
            }
        }
    }

    fn on_tick(&mut self, now: Duration) {
        for peer in 0..self.n {
            if peer == self.idx {
                continue;
            }
            if !self.dead[peer] && self.last_heard[peer].is_some_and(|t| now.saturating_sub(t) >= NAIVE_TIMEOUT) {
                self.dead[peer] = true;
                self.verdicts.push((peer, Verdict::Dead));
            }
        }
        if now >= self.next {
            for peer in (0..self.n).filter(|&p| p != self.idx) {
                self.out.push(Outgoing { to: peer, stream: false, bytes: (self.idx as u64).to_le_bytes().to_vec() });
            }
            self.next = now + NAIVE_INTERVAL;
        }
    }

    fn next_wakeup(&mut self) -> Duration {
        let mut next = self.next;
        for peer in 0..self.n {
            if peer != self.idx && !self.dead[peer] {
                if let Some(t) = self.last_heard[peer] {
                    next = next.min(t + NAIVE_TIMEOUT);
                }
            }
        }
        next
    }

    fn drain(&mut self, out: &mut Vec<Outgoing>, verdicts: &mut Vec<(usize, Verdict)>) {
        out.append(&mut self.out);
        verdicts.append(&mut self.verdicts);
    }
}
