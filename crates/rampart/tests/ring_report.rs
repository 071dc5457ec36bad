//! `rampart ring report`, run as a user would: the real binary, its exit status and its output.

use std::process::{Command, Output};

fn rampart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).output().expect("the rampart binary runs")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn acceptance_scenario_meets_the_bounds() {
    let out = rampart(&[
        "ring",
        "report",
        "--nodes",
        "10",
        "--vnodes",
        "160",
        "--partitions",
        "256",
        "--replicas",
        "3",
        "--add",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = json_lines(&out);
    let names: Vec<&str> = rows.iter().map(|r| r["algorithm"].as_str().expect("algorithm")).collect();
    assert_eq!(names, ["rampart", "ketama", "jump", "rendezvous", "maglev", "bounded-load"]);
    for row in &rows {
        for field in ["max_over_mean", "moved_fraction", "optimal_fraction"] {
            assert!(row[field].is_f64(), "{field} missing in {row}");
        }
    }
    let ours = &rows[0];
    let max = ours["max_over_mean"].as_f64().expect("number");
    let moved = ours["moved_fraction"].as_f64().expect("number");
    let optimal = ours["optimal_fraction"].as_f64().expect("number");
    assert!(max <= 1.05, "{ours}");
    assert!(moved <= 1.1 * optimal, "{ours}");
    assert!((optimal - 1.0 / 11.0).abs() < 1e-3, "{ours}");
    assert_eq!(ours["only_necessary_moves"], true);
}

#[test]
fn balance_holds_at_a_hundred_nodes_for_a_leave() {
    let out = rampart(&["ring", "report", "--nodes", "100", "--partitions", "1024", "--remove", "1", "--json"]);
    assert!(out.status.success());
    let ours = &json_lines(&out)[0];
    assert!(ours["max_over_mean"].as_f64().expect("number") <= 1.05, "{ours}");
    assert!(ours["max_over_mean_after"].as_f64().expect("number") <= 1.05, "{ours}");
    assert_eq!(ours["only_necessary_moves"], true, "{ours}");
}

#[test]
fn the_table_names_every_algorithm() {
    let out = rampart(&["ring", "report", "--nodes", "12", "--zones", "3"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["rampart", "ketama", "jump", "rendezvous", "maglev", "bounded-load"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let cases: [(&[&str], &str); 5] = [
        (&["--nodes", "0"], "--nodes 0"),
        (&["--nodes", "5", "--remove", "5"], "at least one node must stay"),
        (&["--partitions", "0"], "partitions"),
        (&["--nodes", "3", "--weights", "100,0"], "weight 0"),
        (&["--nodes", "3", "--zones", "4"], "--zones 4"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["ring", "report"];
        full.extend_from_slice(args);
        let out = rampart(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
