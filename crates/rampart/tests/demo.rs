//! `rampart demo` end to end: real node processes, a flash sale with concurrent buyers, the hot partition's
//! leader killed with SIGKILL mid-sale and restarted, and the demo's own checks, read here from its JSON.

use std::process::Command;

#[test]
fn a_flash_sale_survives_a_leader_kill_with_nothing_lost_or_oversold() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--json", "--users", "4000", "--buyers", "100", "--partitions", "16", "--seed", "7"])
        .output()
        .expect("rampart demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let r = &verdict["report"];
    assert_eq!(verdict["pass"], true, "{verdict:#}");
    assert!(out.status.success(), "exit status {:?} with a passing verdict", out.status);
    assert_eq!(r["acknowledged_orders_lost"], 0);
    assert_eq!(r["oversold"], 0);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["stock_mismatches"], 0);
    // 4000 customers for 1000 units: the hot SKU sells out, and the rest are refused.
    let (sold, reserved) = (r["hot_sold"].as_u64().unwrap(), r["hot_reserved"].as_u64().unwrap());
    assert_eq!(sold + reserved, 1000, "{r}");
    assert!(r["orders_placed"].as_u64().unwrap() > 4000, "{r}");
    assert!(r["refused_by_code"]["out_of_stock"].as_u64().unwrap() > 0, "{r}");
}
