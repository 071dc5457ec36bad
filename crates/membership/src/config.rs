//! Membership settings, the `lan` and `wan` profiles, and their validation.

use std::time::Duration;

/// Every timing and bound of the membership protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How often this member probes one other member (scaled up by the local health multiplier).
    pub probe_interval: Duration,
    /// The direct-probe timeout before any round trip was measured.
    pub probe_timeout: Duration,
    /// Bounds on the learned direct-probe timeout (`mean + y × sd` of recent round trips, where `y` is where
    /// phi reaches `phi_threshold`).
    pub probe_timeout_min: Duration,
    pub probe_timeout_max: Duration,
    /// The phi level at which a late ack counts as missing.
    pub phi_threshold: f64,
    /// Members asked to probe on our behalf when a direct probe fails (SWIM's `k`).
    pub indirect_probes: usize,
    /// Also probe over TCP when UDP fails, to tell "UDP blocked" from "down".
    pub tcp_fallback: bool,
    /// Lifeguard suspicion timeout: starts at `suspicion_max`, shrinks towards `suspicion_min` as independent
    /// members confirm the suspicion, reaching it at `suspicion_confirmations`.
    pub suspicion_min: Duration,
    pub suspicion_max: Duration,
    pub suspicion_confirmations: usize,
    /// Each update is piggybacked `retransmit_mult × ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// How often pending gossip is pushed to `gossip_fanout` random members.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// In clusters up to this size, suspicions, deaths and refutations are also sent straight to every member,
    /// so the whole cluster learns them in one hop; larger clusters rely on gossip alone.
    pub broadcast_max: usize,
    /// How often a full-state sync is done with one random member (heals partitions, catches up).
    pub sync_interval: Duration,
    /// How often a dead member is told we are alive, so that a healed partition merges back.
    pub reannounce_interval: Duration,
    /// How long dead and left members are remembered before they are forgotten.
    pub dead_retention: Duration,
    /// Lifeguard's local health multiplier saturates here.
    pub lhm_max: u32,
    /// Being woken this much later than asked counts as a local pause (this process was frozen): probes in
    /// flight are dropped instead of failing, and suspicion timers are stretched by the pause.
    pub pause_guard: Duration,
    /// The largest datagram sent.
    pub max_datagram: usize,
    /// Bounds on simultaneous work, so nothing grows without limit.
    pub probes_inflight_max: usize,
    pub relays_inflight_max: usize,
    pub members_max: usize,
    /// Seed of the random choices (probe order, indirect helpers, gossip targets).
    pub seed: u64,
}

/// A named set of timings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// A data-centre LAN: round trips of a millisecond or so, detection in about a second.
    Lan,
    /// Across regions: round trips of up to a few hundred milliseconds, detection in seconds.
    Wan,
}

impl Config {
    pub fn profile(profile: Profile) -> Self {
        match profile {
            Profile::Lan => Self {
                probe_interval: Duration::from_millis(150),
                probe_timeout: Duration::from_millis(100),
                probe_timeout_min: Duration::from_millis(20),
                probe_timeout_max: Duration::from_millis(200),
                phi_threshold: 8.0,
                indirect_probes: 3,
                tcp_fallback: true,
                suspicion_min: Duration::from_millis(400),
                suspicion_max: Duration::from_millis(1200),
                suspicion_confirmations: 2,
                retransmit_mult: 4,
                gossip_interval: Duration::from_millis(50),
                gossip_fanout: 3,
                broadcast_max: 128,
                sync_interval: Duration::from_secs(10),
                reannounce_interval: Duration::from_secs(2),
                dead_retention: Duration::from_secs(3600),
                lhm_max: 8,
                pause_guard: Duration::from_millis(100),
                max_datagram: 1400,
                probes_inflight_max: 4,
                relays_inflight_max: 64,
                members_max: 4096,
                seed: 0,
            },
            Profile::Wan => Self {
                probe_interval: Duration::from_millis(1000),
                probe_timeout: Duration::from_millis(600),
                probe_timeout_min: Duration::from_millis(100),
                probe_timeout_max: Duration::from_millis(1500),
                suspicion_min: Duration::from_secs(3),
                suspicion_max: Duration::from_secs(12),
                suspicion_confirmations: 3,
                gossip_interval: Duration::from_millis(250),
                gossip_fanout: 4,
                broadcast_max: 32,
                sync_interval: Duration::from_secs(30),
                reannounce_interval: Duration::from_secs(10),
                pause_guard: Duration::from_millis(500),
                ..Self::profile(Profile::Lan)
            },
        }
    }

    /// Checks every field against its range; the message names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = |d: Duration| d.as_millis();
        let check = |ok: bool, field: &'static str, range: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError { field, range })
            }
        };
        check((1..=60_000).contains(&ms(self.probe_interval)), "probe_interval", "1 ms to 60 s")?;
        check(
            ms(self.probe_timeout_min) >= 1
                && self.probe_timeout_min <= self.probe_timeout
                && self.probe_timeout <= self.probe_timeout_max
                && ms(self.probe_timeout_max) <= 60_000,
            "probe_timeout",
            "1 ms <= probe_timeout_min <= probe_timeout <= probe_timeout_max <= 60 s",
        )?;
        check(
            self.phi_threshold.is_finite() && (0.5..=20.0).contains(&self.phi_threshold),
            "phi_threshold",
            "0.5 to 20",
        )?;
        check(self.indirect_probes <= 16, "indirect_probes", "0 to 16")?;
        check(
            ms(self.suspicion_min) >= 1
                && self.suspicion_min <= self.suspicion_max
                && ms(self.suspicion_max) <= 600_000,
            "suspicion",
            "1 ms <= suspicion_min <= suspicion_max <= 10 min",
        )?;
        check((1..=32).contains(&self.suspicion_confirmations), "suspicion_confirmations", "1 to 32")?;
        check((1..=32).contains(&self.retransmit_mult), "retransmit_mult", "1 to 32")?;
        check((1..=60_000).contains(&ms(self.gossip_interval)), "gossip_interval", "1 ms to 60 s")?;
        check((1..=32).contains(&self.gossip_fanout), "gossip_fanout", "1 to 32")?;
        check(self.broadcast_max <= 4096, "broadcast_max", "0 to 4096")?;
        check(ms(self.sync_interval) >= 10, "sync_interval", "at least 10 ms")?;
        check(ms(self.reannounce_interval) >= 10, "reannounce_interval", "at least 10 ms")?;
        check(self.dead_retention >= self.suspicion_max, "dead_retention", "at least suspicion_max")?;
        check(self.lhm_max <= 64, "lhm_max", "0 to 64")?;
        check(ms(self.pause_guard) >= 1, "pause_guard", "at least 1 ms")?;
        check((512..=crate::wire::MAX_PACKET).contains(&self.max_datagram), "max_datagram", "512 to 65507 bytes")?;
        check((1..=64).contains(&self.probes_inflight_max), "probes_inflight_max", "1 to 64")?;
        check((1..=4096).contains(&self.relays_inflight_max), "relays_inflight_max", "1 to 4096")?;
        check((1..=100_000).contains(&self.members_max), "members_max", "1 to 100000")?;
        Ok(())
    }
}

/// A setting out of its range. Nothing was started with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("membership setting {field} is out of range: use {range}")]
pub struct ConfigError {
    pub field: &'static str,
    pub range: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid() {
        Config::profile(Profile::Lan).validate().unwrap();
        Config::profile(Profile::Wan).validate().unwrap();
    }

    #[test]
    fn bad_settings_name_the_field() {
        let lan = Config::profile(Profile::Lan);
        let cases = [
            (Config { probe_interval: Duration::ZERO, ..lan.clone() }, "probe_interval"),
            (Config { probe_timeout_min: Duration::from_secs(1), ..lan.clone() }, "probe_timeout"),
            (Config { phi_threshold: f64::NAN, ..lan.clone() }, "phi_threshold"),
            (Config { suspicion_max: Duration::from_millis(1), ..lan.clone() }, "suspicion"),
            (Config { max_datagram: 100, ..lan.clone() }, "max_datagram"),
            (Config { gossip_fanout: 0, ..lan.clone() }, "gossip_fanout"),
        ];
        for (cfg, field) in cases {
            assert_eq!(cfg.validate().unwrap_err().field, field);
        }
    }
}
