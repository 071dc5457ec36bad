//! The phi accrual failure detector (Hayashibara et al., 2004), as Akka and Cassandra use it.
//!
//! Instead of a yes/no verdict after a fixed timeout, it outputs `phi`, a suspicion level on a log scale: the
//! probability that a heartbeat this late would still arrive is `10^-phi`. A threshold of 8 means "wrong about
//! once in 10^8". It learns the heartbeat inter-arrival distribution from a sliding window, so a jittery link
//! gets more slack and a steady one less. Time is always a parameter.

use std::collections::VecDeque;
use std::time::Duration;

/// A sliding window of samples (milliseconds) with their mean and standard deviation.
#[derive(Clone, Debug)]
pub struct Window {
    samples: VecDeque<f64>,
    capacity: usize,
    sum: f64,
    sum_sq: f64,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self { samples: VecDeque::with_capacity(capacity), capacity: capacity.max(1), sum: 0.0, sum_sq: 0.0 }
    }

    pub fn push(&mut self, sample_ms: f64) {
        if self.samples.len() == self.capacity {
            if let Some(old) = self.samples.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.samples.push_back(sample_ms);
        self.sum += sample_ms;
        self.sum_sq += sample_ms * sample_ms;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn mean(&self) -> f64 {
        if self.samples.is_empty() {
            0.0
        } else {
            self.sum / self.samples.len() as f64
        }
    }

    pub fn std_dev(&self) -> f64 {
        let n = self.samples.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mean = self.mean();
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }

    /// The delay (ms) after which `phi` reaches `threshold` for this distribution, given a floor on the
    /// standard deviation: `mean + y × sd` where `phi(y) = threshold`.
    pub fn quantile_ms(&self, threshold: f64, min_std_ms: f64) -> f64 {
        let (mean, sd) = (self.mean(), self.std_dev().max(min_std_ms));
        // phi is increasing in y: bisect on y in [0, 40] standard deviations.
        let (mut lo, mut hi) = (0.0f64, 40.0f64);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if phi_of(mid) < threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        mean + hi * sd
    }
}

/// Phi of a heartbeat `y` standard deviations late, by the logistic approximation of the normal tail that
/// Akka uses (accurate to about 0.01% and free of `erf`).
fn phi_of(y: f64) -> f64 {
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if y > 0.0 {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// Settings of a phi accrual detector.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct PhiConfig {
    /// How many inter-arrival times to remember.
    pub window: usize,
    /// A floor on the learned standard deviation, so a perfectly regular link is not judged on zero variance.
    pub min_std_dev: Duration,
    /// Extra time always granted on top of the learned mean (a GC pause, a busy scheduler).
    pub acceptable_pause: Duration,
    /// The interval assumed before any heartbeat was seen.
    pub first_interval: Duration,
    /// Above this, [`PhiAccrual::is_available`] says no.
    pub threshold: f64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        Self {
            window: 100,
            min_std_dev: Duration::from_millis(50),
            acceptable_pause: Duration::ZERO,
            first_interval: Duration::from_millis(500),
            threshold: 8.0,
        }
    }
}

/// One monitored peer's heartbeat history.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    config: PhiConfig,
    intervals: Window,
    last: Option<Duration>,
}

impl PhiAccrual {
    pub fn new(config: PhiConfig) -> Self {
        let mut intervals = Window::new(config.window);
        // Seed with the assumed interval (and some spread) so the first verdicts are sane.
        let first = config.first_interval.as_secs_f64() * 1000.0;
        intervals.push(first - first / 4.0);
        intervals.push(first + first / 4.0);
        Self { config, intervals, last: None }
    }

    /// Records a heartbeat arriving at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        if let Some(last) = self.last {
            if now > last {
                self.intervals.push((now - last).as_secs_f64() * 1000.0);
            }
        }
        self.last = Some(now);
    }

    /// The suspicion level at `now`: 0 right after a heartbeat, growing as the next one is overdue.
    pub fn phi(&self, now: Duration) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let elapsed = now.saturating_sub(last).as_secs_f64() * 1000.0;
        let mean = self.intervals.mean() + self.config.acceptable_pause.as_secs_f64() * 1000.0;
        let sd = self.intervals.std_dev().max(self.config.min_std_dev.as_secs_f64() * 1000.0);
        phi_of((elapsed - mean) / sd).max(0.0)
    }

    /// Whether the peer is considered up at `now` (phi below the threshold).
    pub fn is_available(&self, now: Duration) -> bool {
        self.phi(now) < self.config.threshold
    }

    /// When the last heartbeat arrived.
    pub fn last_heartbeat(&self) -> Option<Duration> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn phi_grows_as_a_heartbeat_is_overdue() {
        let mut d = PhiAccrual::new(PhiConfig { min_std_dev: ms(10), ..PhiConfig::default() });
        // More heartbeats than the window holds, so the seeded first interval has aged out.
        for i in 0..150 {
            d.heartbeat(ms(i * 100));
        }
        let last = ms(149 * 100);
        let at = |extra| d.phi(last + ms(extra));
        assert!(at(0) < 0.5, "{}", at(0));
        assert!(at(100) < 1.0, "{}", at(100));
        assert!(at(150) > 1.0);
        assert!(at(150) < at(200) && at(200) < at(300));
        assert!(d.is_available(last + ms(120)));
        assert!(!d.is_available(last + ms(400)));
    }

    #[test]
    fn jitter_widens_the_tolerance() {
        let mut steady = PhiAccrual::new(PhiConfig { min_std_dev: ms(1), ..PhiConfig::default() });
        let mut jittery = steady.clone();
        let mut t_steady = 0;
        let mut t_jitter = 0;
        for i in 0..100u64 {
            t_steady += 100;
            t_jitter += if i % 2 == 0 { 50 } else { 150 };
            steady.heartbeat(ms(t_steady));
            jittery.heartbeat(ms(t_jitter));
        }
        assert!(steady.phi(ms(t_steady + 180)) > jittery.phi(ms(t_jitter + 180)));
    }

    #[test]
    fn no_heartbeat_means_no_suspicion_yet() {
        let d = PhiAccrual::new(PhiConfig::default());
        assert_eq!(d.phi(ms(10_000)), 0.0);
        assert_eq!(d.last_heartbeat(), None);
    }

    #[test]
    fn window_statistics_and_quantile() {
        let mut w = Window::new(3);
        for v in [10.0, 20.0, 30.0, 40.0] {
            w.push(v);
        }
        assert_eq!(w.len(), 3);
        assert!((w.mean() - 30.0).abs() < 1e-9);
        assert!((w.std_dev() - (200.0f64 / 3.0).sqrt()).abs() < 1e-9);
        // phi = 1 is about 1.3 standard deviations; phi = 8 about 5.6.
        let q1 = w.quantile_ms(1.0, 0.0);
        let q8 = w.quantile_ms(8.0, 0.0);
        assert!(q1 > 30.0 && q1 < q8, "{q1} {q8}");
        assert!((phi_of((q8 - 30.0) / w.std_dev()) - 8.0).abs() < 1e-6);
    }
}
