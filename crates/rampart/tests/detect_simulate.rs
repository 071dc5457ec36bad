//! `rampart detect simulate`, run as a user would.

use std::process::{Command, Output};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).output().expect("the rampart binary runs")
}

/// Five simulated minutes of the LAN chaos profile: 5% loss, 50 ms jitter, 300 ms pauses, a crash every 30 s.
const LAN_CHAOS: &[&str] = &[
    "detect",
    "simulate",
    "--nodes",
    "10",
    "--loss",
    "0.05",
    "--jitter-ms",
    "50",
    "--pause-ms",
    "300",
    "--pause-every-s",
    "10",
    "--crash",
    "1",
    "--duration-s",
    "300",
    "--seed",
    "9",
    "--json",
];

#[test]
fn json_has_one_object_per_detector_with_the_contract_fields() {
    let out = rampart(LAN_CHAOS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["detector"].as_str().expect("detector")).collect();
    assert_eq!(names, ["rampart", "foca", "naive"]);
    for r in &rows {
        for field in ["detect_median_ms", "detect_max_ms", "false_positives"] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
    }
    let ours = &rows[0];
    assert!(ours["detect_median_ms"].as_f64().expect("number") <= 1000.0, "{ours}");
    assert!(ours["detect_max_ms"].as_f64().expect("number") <= 2000.0, "{ours}");
    assert_eq!(ours["false_positives"], 0);
    // The same seed gives the same figures.
    let again = rampart(LAN_CHAOS);
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn bad_input_is_refused() {
    for (args, needle) in [
        (vec!["--nodes", "1"], "nodes 1"),
        (vec!["--loss", "0.9"], "loss 0.9"),
        (vec!["--crash", "10"], "crash 10"),
        (vec!["--loss", "NaN"], "--loss"),
    ] {
        let mut full = vec!["detect", "simulate"];
        full.extend(args.iter().copied());
        let out = rampart(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
