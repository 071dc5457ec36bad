//! A deterministic simulator for failure detectors.
//!
//! It runs `N` members of one detector on a virtual clock over a simulated network with seeded loss, delay and
//! jitter, one-way or two-way partitions, crashes with restarts, short periodic pauses (a member frozen, as by a
//! GC, while packets queue up for it) and one optional long pause. It measures what an operator cares about:
//! how long until *every* live member has declared a crashed member dead, how often a live member is wrongly
//! declared dead, and the traffic each member sends. The same seed gives the same run, event for event.
//!
//! Detectors plug in through [`detectors::Member`]: Rampart's membership, the `foca` crate (sans-IO SWIM, LAN
//! settings) and a naive all-to-all heartbeat with a fixed timeout.

pub mod detectors;

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

pub use detectors::{Kind, Verdict};
use detectors::{Member, Outgoing};

/// A network partition between the first and the second half of the members.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Partition {
    /// When it starts, counted from the end of the warm-up.
    pub at: Duration,
    pub duration: Duration,
    /// Only packets from the first half to the second are lost.
    pub one_way: bool,
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub nodes: usize,
    /// Probability that a datagram is lost (streams are reliable).
    pub loss: f64,
    /// One-way delay: `latency` plus a uniform extra of up to `jitter`.
    pub latency: Duration,
    pub jitter: Duration,
    /// Every `pause_every`, one random live member is frozen for `pause` (zero for none).
    pub pause: Duration,
    pub pause_every: Duration,
    /// One member frozen once, at `.0` after the warm-up, for `.1`; reported separately.
    pub long_pause: Option<(Duration, Duration)>,
    /// Members crashed at once in each crash cycle (zero for none).
    pub crash: usize,
    pub crash_every: Duration,
    /// A crashed member comes back (fresh state, new incarnation) this long after its crash.
    pub restart_after: Duration,
    pub partition: Option<Partition>,
    /// Time for the cluster to form before anything is measured.
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 10,
            loss: 0.0,
            latency: Duration::from_micros(200),
            jitter: Duration::ZERO,
            pause: Duration::ZERO,
            pause_every: Duration::from_secs(10),
            long_pause: None,
            crash: 1,
            crash_every: Duration::from_secs(30),
            restart_after: Duration::from_secs(15),
            partition: None,
            warmup: Duration::from_secs(10),
            duration: Duration::from_secs(300),
            seed: 1,
        }
    }
}

impl SimConfig {
    /// Checks the settings; the message names the field and its range.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=1000).contains(&self.nodes) {
            return Err(format!("nodes {}: use 2 to 1000", self.nodes));
        }
        if !(0.0..=0.5).contains(&self.loss) {
            return Err(format!("loss {}: use 0 to 0.5", self.loss));
        }
        if self.crash >= self.nodes {
            return Err(format!("crash {}: use 0 to nodes - 1", self.crash));
        }
        if self.duration > Duration::from_secs(24 * 3600) || self.duration.is_zero() {
            return Err("duration: use 1 s to 24 h".into());
        }
        if self.jitter > Duration::from_secs(10) || self.latency > Duration::from_secs(10) {
            return Err("latency and jitter: use at most 10 s".into());
        }
        if !self.pause.is_zero() && (self.pause_every.is_zero() || self.pause >= self.pause_every) {
            return Err("pause must be shorter than pause_every".into());
        }
        if self.crash > 0 && (self.restart_after.is_zero() || self.restart_after >= self.crash_every) {
            return Err("restart_after must be between 0 and crash_every".into());
        }
        Ok(())
    }
}

/// What happened to the member frozen for a long time.
#[derive(Clone, Debug, PartialEq)]
pub struct LongPauseReport {
    /// How many members declared it dead while it was frozen.
    pub declared_dead_by: usize,
    /// From its waking until every member that declared it dead saw it alive again (`None`: not all did).
    pub back_alive_after: Option<Duration>,
    /// Members it declared dead in the 10 s after waking (a well-behaved detector: zero).
    pub accusations_after_wake: usize,
}

/// The figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub detector: &'static str,
    /// Per crash: time until every live member declared the crashed member dead.
    pub detections: Vec<Duration>,
    /// Crashes that some live member never declared before the crashed member came back.
    pub undetected: usize,
    /// A member declared dead while it was up (and had been up for at least 5 s).
    pub false_positives: usize,
    pub packets_per_member_per_s: f64,
    pub bytes_per_member_per_s: f64,
    pub long_pause: Option<LongPauseReport>,
    /// With a partition: from its end until every live member again saw every other live member alive
    /// (`None`: they never all did). Verdicts between the partition's start and this moment are not counted
    /// as false positives: across a partition the other side *is* unreachable.
    pub partition_healed_after: Option<Duration>,
}

impl Report {
    pub fn median(&self) -> Option<Duration> {
        let mut d = self.detections.clone();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }

    pub fn max(&self) -> Option<Duration> {
        self.detections.iter().max().copied()
    }
}

/// How long after a restart a member must be up before a "dead" verdict about it counts as false.
const FALSE_POSITIVE_GRACE: Duration = Duration::from_secs(5);

enum EvKind {
    Deliver { to: usize, from: usize, stream: bool, bytes: Vec<u8> },
    Wake { member: usize },
    Crash,
    Restart { member: usize },
    Pause { long: bool, len: Duration },
    Unpause { member: usize },
}

struct Ev {
    at: Duration,
    seq: u64,
    kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ev {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest event must come out first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot {
    member: Box<dyn Member>,
    generation: u32,
    crashed: bool,
    paused: bool,
    deferred: Vec<(usize, bool, Vec<u8>)>,
    scheduled: Option<Duration>,
    up_since: Duration,
}

struct Episode {
    victim: usize,
    at: Duration,
    pending: BTreeSet<usize>,
    /// The latest detection so far.
    last: Option<Duration>,
}

struct LongPause {
    member: usize,
    start: Duration,
    wake: Duration,
    declared_by: BTreeSet<usize>,
    realive: BTreeSet<usize>,
    back_at: Option<Duration>,
    accusations: usize,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    kind: Kind,
    rng: Xoshiro256PlusPlus,
    queue: BinaryHeap<Ev>,
    seq: u64,
    slots: Vec<Slot>,
    episodes: Vec<Episode>,
    report: Report,
    long: Option<LongPause>,
    measured_from: Duration,
    /// `dead_view[by][about]`: whether `by` currently holds `about` dead.
    dead_view: Vec<Vec<bool>>,
    healed_at: Option<Duration>,
    packets: u64,
    bytes: u64,
    out: Vec<Outgoing>,
    verdicts: Vec<(usize, Verdict)>,
}

/// Runs one detector through the scenario.
pub fn run(kind: Kind, cfg: &SimConfig) -> Report {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let member_seed: u64 = rng.random();
    let slots = (0..cfg.nodes)
        .map(|i| Slot {
            member: kind.member(i, 0, cfg.nodes, (0, 0), member_seed, Duration::ZERO),
            generation: 0,
            crashed: false,
            paused: false,
            deferred: Vec::new(),
            scheduled: None,
            up_since: Duration::ZERO,
        })
        .collect();
    let mut sim = Sim {
        cfg,
        kind,
        rng,
        queue: BinaryHeap::new(),
        seq: 0,
        slots,
        episodes: Vec::new(),
        report: Report {
            detector: kind.name(),
            detections: Vec::new(),
            undetected: 0,
            false_positives: 0,
            packets_per_member_per_s: 0.0,
            bytes_per_member_per_s: 0.0,
            long_pause: None,
            partition_healed_after: None,
        },
        long: None,
        dead_view: vec![vec![false; cfg.nodes]; cfg.nodes],
        healed_at: None,
        measured_from: cfg.warmup,
        packets: 0,
        bytes: 0,
        out: Vec::new(),
        verdicts: Vec::new(),
    };
    sim.schedule_faults();
    for m in 0..cfg.nodes {
        sim.after_activity(m, Duration::ZERO);
    }
    let end = cfg.warmup + cfg.duration;
    while let Some(ev) = sim.queue.pop() {
        if ev.at > end {
            break;
        }
        sim.handle(ev);
    }
    sim.finish(end)
}

impl Sim<'_> {
    fn push(&mut self, at: Duration, kind: EvKind) {
        self.seq += 1;
        self.queue.push(Ev { at, seq: self.seq, kind });
    }

    fn schedule_faults(&mut self) {
        let cfg = self.cfg;
        let end = cfg.warmup + cfg.duration;
        if cfg.crash > 0 {
            let mut t = cfg.warmup + cfg.crash_every / 2;
            while t + cfg.restart_after < end {
                self.push(t, EvKind::Crash);
                t += cfg.crash_every;
            }
        }
        if !cfg.pause.is_zero() {
            // Offset from the crashes so that the two are measured apart.
            let mut t = cfg.warmup + cfg.pause_every / 3;
            while t < end {
                self.push(t, EvKind::Pause { long: false, len: cfg.pause });
                t += cfg.pause_every;
            }
        }
        if let Some((at, len)) = cfg.long_pause {
            self.push(cfg.warmup + at, EvKind::Pause { long: true, len });
        }
    }

    fn blocked(&self, from: usize, to: usize, at: Duration) -> bool {
        let Some(p) = self.cfg.partition else { return false };
        let start = self.cfg.warmup + p.at;
        if at < start || at >= start + p.duration {
            return false;
        }
        let half = self.cfg.nodes / 2;
        let (a, b) = (from < half, to < half);
        if p.one_way {
            a && !b
        } else {
            a != b
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = ev.at;
        match ev.kind {
            EvKind::Deliver { to, from, stream, bytes } => {
                let slot = &mut self.slots[to];
                if slot.crashed {
                    return;
                }
                if slot.paused {
                    slot.deferred.push((from, stream, bytes));
                    return;
                }
                slot.member.on_packet(now, from, stream, &bytes);
                self.after_activity(to, now);
            }
            EvKind::Wake { member } => {
                let slot = &mut self.slots[member];
                if slot.crashed || slot.paused || slot.scheduled != Some(now) {
                    return;
                }
                slot.scheduled = None;
                slot.member.on_tick(now);
                self.after_activity(member, now);
            }
            EvKind::Crash => self.crash(now),
            EvKind::Restart { member } => self.restart(member, now),
            EvKind::Pause { long, len } => {
                let candidates: Vec<usize> =
                    (0..self.slots.len()).filter(|&m| !self.slots[m].crashed && !self.slots[m].paused).collect();
                if candidates.is_empty() {
                    return;
                }
                let m = candidates[self.rng.random_range(0..candidates.len())];
                self.slots[m].paused = true;
                if long {
                    self.long = Some(LongPause {
                        member: m,
                        start: now,
                        wake: now + len,
                        declared_by: BTreeSet::new(),
                        realive: BTreeSet::new(),
                        back_at: None,
                        accusations: 0,
                    });
                }
                self.push(now + len, EvKind::Unpause { member: m });
            }
            EvKind::Unpause { member } => {
                let slot = &mut self.slots[member];
                slot.paused = false;
                if slot.crashed {
                    return;
                }
                // A frozen process reads the packets that queued up, then notices the time.
                for (from, stream, bytes) in std::mem::take(&mut slot.deferred) {
                    slot.member.on_packet(now, from, stream, &bytes);
                }
                slot.member.on_tick(now);
                slot.scheduled = None;
                self.after_activity(member, now);
            }
        }
    }

    fn crash(&mut self, now: Duration) {
        let protected = self.long.as_ref().map(|l| l.member);
        for _ in 0..self.cfg.crash {
            let candidates: Vec<usize> = (0..self.slots.len())
                .filter(|&m| !self.slots[m].crashed && !self.slots[m].paused && Some(m) != protected)
                .collect();
            if candidates.is_empty() {
                return;
            }
            let victim = candidates[self.rng.random_range(0..candidates.len())];
            let slot = &mut self.slots[victim];
            slot.crashed = true;
            slot.deferred.clear();
            slot.scheduled = None;
            // The victim no longer has to detect anyone: episodes waiting only for it are complete.
            for e in &mut self.episodes {
                e.pending.remove(&victim);
            }
            let (done, open): (Vec<Episode>, Vec<Episode>) =
                std::mem::take(&mut self.episodes).into_iter().partition(|e| e.pending.is_empty());
            self.episodes = open;
            self.report.detections.extend(done.into_iter().filter_map(|e| e.last.map(|l| l - e.at)));
            let pending = (0..self.slots.len()).filter(|&m| !self.slots[m].crashed).collect();
            self.episodes.push(Episode { victim, at: now, pending, last: None });
            self.push(now + self.cfg.restart_after, EvKind::Restart { member: victim });
        }
    }

    fn restart(&mut self, member: usize, now: Duration) {
        // An episode still open when its victim comes back was never fully detected.
        let before = self.episodes.len();
        self.episodes.retain(|e| e.victim != member);
        self.report.undetected += before - self.episodes.len();
        let live: Vec<usize> = (0..self.slots.len()).filter(|&m| m != member && !self.slots[m].crashed).collect();
        let seed = live.get(self.rng.random_range(0..live.len().max(1))).copied().unwrap_or(member);
        let member_seed: u64 = self.rng.random();
        let generation = self.slots[member].generation + 1;
        let seed_gen = self.slots[seed].generation;
        let slot = &mut self.slots[member];
        slot.member = self.kind.member(member, generation, self.cfg.nodes, (seed, seed_gen), member_seed, now);
        slot.generation = generation;
        slot.crashed = false;
        slot.paused = false;
        slot.up_since = now;
        slot.scheduled = None;
        self.dead_view[member].iter_mut().for_each(|d| *d = false);
        self.after_activity(member, now);
    }

    /// Collects what a member produced, sends it, records verdicts, and books its next wake-up.
    fn after_activity(&mut self, m: usize, now: Duration) {
        let mut out = std::mem::take(&mut self.out);
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.slots[m].member.drain(&mut out, &mut verdicts);
        for o in out.drain(..) {
            if now >= self.measured_from {
                self.packets += 1;
                self.bytes += o.bytes.len() as u64;
            }
            if o.to >= self.slots.len() || o.to == m {
                continue;
            }
            if !o.stream && self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
                continue;
            }
            if self.blocked(m, o.to, now) {
                continue;
            }
            let jitter = if self.cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.random_range(0..self.cfg.jitter.as_nanos() as u64))
            };
            self.push(
                now + self.cfg.latency + jitter,
                EvKind::Deliver { to: o.to, from: m, stream: o.stream, bytes: o.bytes },
            );
        }
        for (about, v) in verdicts.drain(..) {
            self.verdict(m, about, v, now);
        }
        self.out = out;
        self.verdicts = verdicts;
        let next = self.slots[m].member.next_wakeup();
        let next = if next <= now { now + Duration::from_micros(100) } else { next };
        if self.slots[m].scheduled.is_none_or(|s| s != next) {
            self.slots[m].scheduled = Some(next);
            self.push(next, EvKind::Wake { member: m });
        }
    }

    fn verdict(&mut self, by: usize, about: usize, v: Verdict, now: Duration) {
        if about >= self.slots.len() {
            return;
        }
        self.dead_view[by][about] = v == Verdict::Dead;
        if let Some(p) = self.cfg.partition {
            let (start, end) = (self.cfg.warmup + p.at, self.cfg.warmup + p.at + p.duration);
            if now >= end && self.healed_at.is_none() && v == Verdict::Alive && self.all_see_all_alive() {
                self.healed_at = Some(now - end);
            }
            if now >= start && (now < end || self.healed_at.is_none()) {
                return;
            }
        }
        if let Some(l) = &mut self.long {
            if about == l.member && now >= l.start && now < l.wake + Duration::from_secs(20) {
                match v {
                    Verdict::Dead => {
                        l.declared_by.insert(by);
                    }
                    Verdict::Alive if now >= l.wake && l.declared_by.contains(&by) => {
                        l.realive.insert(by);
                        if l.realive.len() == l.declared_by.len() {
                            l.back_at.get_or_insert(now);
                        }
                    }
                    Verdict::Alive => {}
                }
                return;
            }
            if by == l.member
                && v == Verdict::Dead
                && now >= l.wake
                && now < l.wake + Duration::from_secs(10)
                && !self.slots[about].crashed
            {
                l.accusations += 1;
            }
        }
        if v != Verdict::Dead {
            return;
        }
        let slot = &self.slots[about];
        if slot.crashed {
            let mut done = Vec::new();
            for (i, e) in self.episodes.iter_mut().enumerate() {
                if e.victim == about && e.pending.remove(&by) {
                    e.last = Some(now);
                    if e.pending.is_empty() {
                        done.push(i);
                    }
                }
            }
            for i in done.into_iter().rev() {
                let e = self.episodes.remove(i);
                self.report.detections.push(now - e.at);
            }
        } else if now >= self.measured_from && now.saturating_sub(slot.up_since) >= FALSE_POSITIVE_GRACE {
            self.report.false_positives += 1;
        }
    }

    fn all_see_all_alive(&self) -> bool {
        let up = |m: usize| !self.slots[m].crashed;
        (0..self.slots.len())
            .filter(|&a| up(a))
            .all(|a| (0..self.slots.len()).filter(|&b| up(b)).all(|b| !self.dead_view[a][b]))
    }

    fn finish(mut self, end: Duration) -> Report {
        self.report.partition_healed_after = self.healed_at;
        let secs = (end - self.measured_from).as_secs_f64() * self.cfg.nodes as f64;
        self.report.packets_per_member_per_s = self.packets as f64 / secs;
        self.report.bytes_per_member_per_s = self.bytes as f64 / secs;
        self.report.long_pause = self.long.map(|l| LongPauseReport {
            declared_dead_by: l.declared_by.len(),
            back_alive_after: if l.declared_by.is_empty() {
                Some(Duration::ZERO)
            } else {
                l.back_at.map(|t| t - l.wake)
            },
            accusations_after_wake: l.accusations,
        });
        self.report
    }
}
