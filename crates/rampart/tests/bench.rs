//! `rampart bench` against a real `rampart serve` (one node, one replica): what it reports acknowledged is what
//! the cluster holds, for the flash sale (every acknowledged order reserved one unit of the hot SKU) and for kv
//! writes (every key it wrote reads back with its value).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, Processes};

const HTTP: u16 = 27821;
const PEER: u16 = 27822;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], HTTP))
}

fn get(path: &str) -> serde_json::Value {
    let (status, body) = http("GET", addr(), path, None).expect("the node answers");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Runs `rampart bench` with `args` and returns its `--json` report.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["bench", "--addr", &format!("127.0.0.1:{HTTP}"), "--json"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("rampart bench runs");
    assert!(out.status.success(), "rampart bench failed: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn what_the_load_generator_counts_as_acknowledged_is_what_the_cluster_holds() {
    let mut node = Processes::new();
    node.children.push(
        Command::new(env!("CARGO_BIN_EXE_rampart"))
            .args([
                "serve",
                "--id",
                "n1",
                "--http",
                &format!("127.0.0.1:{HTTP}"),
                "--peer",
                &format!("127.0.0.1:{PEER}"),
            ])
            .arg("--data-dir")
            .arg(node.dir.path())
            .args(["--initial-cluster", &format!("n1=127.0.0.1:{PEER}"), "--partitions", "8", "--replicas", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rampart serve starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http("GET", addr(), "/readyz", None).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "the node did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let sale = bench(&["--workload", "flash-sale", "--clients", "8", "--duration-s", "1", "--prefix", "sale"]);
    let ok = sale["ok"].as_u64().expect("ok");
    assert!(ok > 0, "{sale}");
    assert_eq!(sale["errors"], 0, "{sale}");
    let run = sale["run"].as_str().expect("the run's prefix");
    let hot = get(&format!("/v1/products/{run}-hot"));
    assert_eq!(hot["reserved"].as_u64(), Some(ok), "one unit reserved per acknowledged order: {hot}");
    assert_eq!(hot["sold"], 0, "{hot}");

    let kv = bench(&[
        "--workload",
        "kv",
        "--clients",
        "4",
        "--duration-s",
        "1",
        "--keys",
        "5",
        "--value-bytes",
        "7",
        "--prefix",
        "w",
    ]);
    assert!(kv["ok"].as_u64().is_some_and(|ok| ok >= 5), "{kv}");
    assert_eq!(kv["errors"], 0, "{kv}");
    for key in 0..5 {
        let v = get(&format!("/v1/kv/w-{key}"));
        assert_eq!(v["value"], "xxxxxxx", "key w-{key}: {v}");
    }
}
