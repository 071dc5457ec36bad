//! Real processes: six founders in three zones (three, two and one nodes), placed by `--initial-cluster`
//! (`id=host:port@zone`). Every partition's three replicas are in three zones, and the metadata group's five
//! voters are taken from the zones in turn, so the loss of the largest zone (its three nodes killed at once, as a
//! site is lost) leaves every partition and the metadata group a quorum: every write acknowledged before the loss
//! reads back, every partition takes writes through the survivors, and the configuration still changes. A
//! founder restarted with a founding list that places it elsewhere is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, refused, Processes};

const BASE: u16 = 28_300;
const NODES: usize = 6;
const PARTITIONS: u64 = 8;
/// n0-n2 in zone-a, n3-n4 in zone-b, n5 in zone-c. The first five founders by id (the metadata group's voters
/// before it was spread over zones) would put three of its five voters in zone-a.
const ZONES: [&str; NODES] = ["zone-a", "zone-a", "zone-a", "zone-b", "zone-b", "zone-c"];
const LOST: usize = 3;

fn http_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BASE + i as u16))
}

fn zone(i: usize) -> &'static str {
    ZONES[i]
}

fn peer(i: usize) -> String {
    format!("127.0.0.1:{}", BASE + 50 + i as u16)
}

/// The founding list, with `zone_of(i)` as node i's zone.
fn founding_list(zone_of: impl Fn(usize) -> &'static str) -> String {
    (0..NODES).map(|i| format!("n{i}={}@{}", peer(i), zone_of(i))).collect::<Vec<_>>().join(",")
}

/// `rampart serve` for node `i` on `dir`'s data, founded by `initial`.
fn serve(dir: &std::path::Path, i: usize, initial: &str) -> Command {
    let mut command = node(dir, i);
    command.args(["--initial-cluster", initial]);
    command
}

/// `rampart serve` for node `i` on `dir`'s data, before its bootstrap flags.
fn node(dir: &std::path::Path, i: usize) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    command
        .args(["serve", "--id", &format!("n{i}"), "--http", &http_addr(i).to_string(), "--peer", &peer(i)])
        .arg("--data-dir")
        .arg(dir.join(format!("n{i}")))
        .args(["--partitions", &PARTITIONS.to_string()])
        // Nobody is decommissioned automatically: the zone's loss is survived, not repaired.
        .args(["--replace-after-ms", "600000"]);
    command
}

fn start() -> Processes {
    let mut nodes = Processes::new();
    let initial = founding_list(zone);
    for i in 0..NODES {
        let child = serve(nodes.dir.path(), i, &initial)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rampart serve starts");
        nodes.children.push(child);
    }
    nodes
}

/// Writes `key` through node `via`, waiting out elections; the partition it went to.
fn put(via: usize, key: &str, value: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = format!(r#"{{"value":"{value}"}}"#);
    loop {
        let answer = http("PUT", http_addr(via), &format!("/v1/kv/{key}"), Some(&body));
        if let Some((200, answer)) = &answer {
            let answer: serde_json::Value = serde_json::from_str(answer).expect("JSON");
            return answer["partition"].as_u64().expect("the partition written");
        }
        assert!(Instant::now() < deadline, "put {key} through n{via}: no success in 10 s; last: {answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn losing_a_whole_zone_leaves_every_partition_writable() {
    let mut nodes = start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..NODES).all(|i| http("GET", http_addr(i), "/readyz", None).is_some_and(|r| r.0 == 200)) {
        assert!(Instant::now() < deadline, "the six nodes did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each node is in the zone the list gave it (as soon as n5's membership has heard from all), and each
    // partition's replicas are in three zones.
    let expected: BTreeMap<String, String> = (0..NODES).map(|i| (format!("n{i}"), zone(i).to_owned())).collect();
    let (view, zones) = loop {
        let (_, view) = http("GET", http_addr(5), "/v1/cluster", None).expect("n5 answers");
        let view: serde_json::Value = serde_json::from_str(&view).expect("JSON");
        let zones: BTreeMap<String, String> = view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["id"].as_str().unwrap_or("").to_owned(), n["zone"].as_str().unwrap_or("").to_owned()))
            .collect();
        if zones == expected {
            break (view, zones);
        }
        assert!(Instant::now() < deadline, "zones seen: {zones:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let partitions = view["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len() as u64, PARTITIONS);
    for p in partitions {
        let spread: BTreeSet<&str> = p["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .map(|r| zones[r.as_str().expect("an id")].as_str())
            .collect();
        assert_eq!(spread.len(), 3, "partition {}: replicas {} in zones {spread:?}", p["id"], p["replicas"]);
    }

    // A key in every partition, written through every node.
    let mut keys: BTreeMap<u64, String> = BTreeMap::new();
    for k in 0..400 {
        let key = format!("site-{k}");
        let partition = put(k % NODES, &key, "before");
        keys.entry(partition).or_insert(key);
        if keys.len() as u64 == PARTITIONS {
            break;
        }
    }
    assert_eq!(keys.len() as u64, PARTITIONS, "400 keys did not reach every partition");

    // zone-a (n0, n1, n2) is lost at once. Every partition still has two replicas of three, in zone-b and
    // zone-c; the metadata group three voters of five (n3, n4, n5).
    for child in &mut nodes.children[..LOST] {
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    let lost = Instant::now();
    let survivor = |i: usize| LOST + i % (NODES - LOST);
    let read = |via: usize, key: &str, value: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = http("GET", http_addr(via), &format!("/v1/kv/{key}"), None);
            match &answer {
                Some((200, body)) => {
                    assert!(body.contains(&format!("\"{value}\"")), "{key}: {body}");
                    return;
                }
                _ => assert!(Instant::now() < deadline, "read {key}: {answer:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for (i, key) in keys.values().enumerate() {
        read(survivor(i), key, "before");
    }
    for (i, (partition, key)) in keys.iter().enumerate() {
        assert_eq!(put(survivor(i), key, "after"), *partition);
    }
    println!("every partition served a read and took a write {:?} after the zone was lost", lost.elapsed());
    for (i, key) in keys.values().enumerate() {
        read(survivor(i + 1), key, "after");
    }
    // The configuration still changes: the metadata group decommissions a lost node.
    let deadline = Instant::now() + Duration::from_secs(15);
    let left = || {
        http("GET", http_addr(5), "/v1/cluster", None)
            .and_then(|(_, v)| serde_json::from_str::<serde_json::Value>(&v).ok())
            .and_then(|v| v["nodes"].as_array()?.iter().find(|n| n["id"] == "n0").map(|n| n["state"] == "left"))
            == Some(true)
    };
    loop {
        let answer = http("DELETE", http_addr(5), "/v1/cluster/nodes/n0", None);
        // A removal whose answer was lost may have committed: a retry would then find no n0 to remove.
        if answer.as_ref().is_some_and(|(status, _)| *status == 200) || left() {
            break;
        }
        assert!(Instant::now() < deadline, "decommissioning n0 after the zone was lost: {answer:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // n0 restarted on its data with a founding list that moves it to another zone is refused: the founders'
    // zones decide every placement since the cluster was created.
    let moved = founding_list(|i| if i == 0 { "zone-b" } else { zone(i) });
    let stderr = refused(serve(nodes.dir.path(), 0, &moved));
    assert!(stderr.contains("n0@zone-a:100") && stderr.contains("n0@zone-b:100"), "{stderr}");
    // So is n1 (still a member, in zone-a) restarted with `--join` and no `--zone`: it would move to the default
    // zone and its replicas with it. It is told the zone to give.
    let mut join = node(nodes.dir.path(), 1);
    join.args(["--join", &peer(3)]);
    let stderr = refused(join);
    assert!(stderr.contains("start it with --zone zone-a --weight 100"), "{stderr}");
    // Started as it was told, it rejoins.
    let mut join = node(nodes.dir.path(), 1);
    join.args(["--join", &peer(3), "--zone", "zone-a", "--weight", "100"]);
    nodes.children.push(join.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("rampart serve starts"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(http("GET", http_addr(1), "/readyz", None), Some((200, _))) {
        assert!(Instant::now() < deadline, "n1, started with the flags it was told, is not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}
