//! The simulator's promises, and Rampart's detection targets checked on virtual time.

use std::time::Duration;

use rampart_detect_sim::{run, Kind, Partition, SimConfig};

fn lan_chaos(nodes: usize, seconds: u64, seed: u64) -> SimConfig {
    SimConfig {
        nodes,
        loss: 0.05,
        jitter: Duration::from_millis(50),
        pause: Duration::from_millis(300),
        pause_every: Duration::from_secs(10),
        duration: Duration::from_secs(seconds),
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let cfg = lan_chaos(8, 120, 42);
    for kind in Kind::ALL {
        assert_eq!(run(kind, &cfg), run(kind, &cfg), "{}", kind.name());
    }
    let other = run(Kind::Rampart, &SimConfig { seed: 43, ..cfg.clone() });
    assert_ne!(run(Kind::Rampart, &cfg).detections, other.detections);
}

#[test]
fn rampart_detects_within_a_second_without_false_positives() {
    for seed in [1, 2] {
        let r = run(Kind::Rampart, &lan_chaos(10, 600, seed));
        assert_eq!(r.detections.len(), 19, "seed {seed}: every crash detected: {r:?}");
        assert_eq!(r.undetected, 0);
        assert_eq!(r.false_positives, 0, "seed {seed}");
        let median = r.median().expect("detections");
        let max = r.max().expect("detections");
        assert!(median <= Duration::from_secs(1), "seed {seed}: median {median:?}");
        assert!(max <= Duration::from_secs(2), "seed {seed}: max {max:?}");
    }
}

#[test]
fn a_long_freeze_is_declared_dead_then_rejoins_without_accusing_anyone() {
    let cfg = SimConfig {
        long_pause: Some((Duration::from_secs(20), Duration::from_secs(2))),
        crash: 0,
        ..lan_chaos(10, 60, 3)
    };
    let r = run(Kind::Rampart, &cfg);
    let l = r.long_pause.expect("a long pause happened");
    assert!(l.declared_dead_by >= 5, "{l:?}");
    let back = l.back_alive_after.expect("everyone sees it alive again");
    assert!(back < Duration::from_secs(1), "{l:?}");
    assert_eq!(l.accusations_after_wake, 0);
    assert_eq!(r.false_positives, 0);
}

#[test]
fn partitions_heal() {
    for one_way in [false, true] {
        let cfg = SimConfig {
            partition: Some(Partition { at: Duration::from_secs(10), duration: Duration::from_secs(10), one_way }),
            crash: 0,
            ..SimConfig { duration: Duration::from_secs(60), ..SimConfig::default() }
        };
        let r = run(Kind::Rampart, &cfg);
        let healed = r.partition_healed_after.expect("the halves merge again");
        assert!(healed < Duration::from_secs(5), "one_way {one_way}: {healed:?}");
    }
}

#[test]
fn the_false_positive_counter_sees_a_weak_detector() {
    // All-to-all heartbeats with a fixed 1 s timeout do accuse live members under heavy loss.
    let cfg = SimConfig { loss: 0.3, crash: 0, ..lan_chaos(10, 120, 5) };
    assert!(run(Kind::Naive, &cfg).false_positives > 0);
}

#[test]
fn bad_settings_are_refused() {
    assert!(SimConfig { nodes: 1, ..SimConfig::default() }.validate().is_err());
    assert!(SimConfig { loss: 0.9, ..SimConfig::default() }.validate().is_err());
    assert!(SimConfig { crash: 10, ..SimConfig::default() }.validate().is_err());
    assert!(SimConfig::default().validate().is_ok());
}
