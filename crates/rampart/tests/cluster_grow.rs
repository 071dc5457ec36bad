//! Real processes: a 3-node cluster gains a 4th node (`--join`), loses it again (`DELETE /v1/cluster/nodes/n3`),
//! gains it back (`POST /v1/cluster/nodes`), then a founding node is killed and, once declared dead for the
//! replacement delay, its replicas are rebuilt on the others and its metadata vote goes to the live node that had
//! none; it comes back holding nothing. Then a second founder is killed: the metadata group, no longer on the
//! founders alone, still has a majority, takes the first one back and replaces the second; with two of its three
//! voters down, the one that joined restarts with `--join` (naming a member that is down) and gives it its
//! majority back. Only the replicas the ring names move, the voters of every partition end up as the placement
//! says, and every acknowledged write stays readable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, Processes};

const BASE: u16 = 27_900;
const PARTITIONS: usize = 8;

fn http_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BASE + i as u16))
}

fn peer(i: usize) -> String {
    format!("127.0.0.1:{}", BASE + 50 + i as u16)
}

/// Starts node `i` in `nodes`' directory with the given bootstrap flags, replacing members dead for 2 s.
fn start(nodes: &mut Processes, i: usize, bootstrap: &[&str]) {
    start_with(nodes, i, "2000", bootstrap);
}

/// Starts node `i` with the given replacement delay (ms) and bootstrap flags.
fn start_with(nodes: &mut Processes, i: usize, replace_after_ms: &str, bootstrap: &[&str]) {
    let child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["serve", "--id", &format!("n{i}"), "--http", &http_addr(i).to_string(), "--peer", &peer(i)])
        .arg("--data-dir")
        .arg(nodes.dir.path().join(format!("n{i}")))
        .args(["--partitions", &PARTITIONS.to_string(), "--replace-after-ms", replace_after_ms])
        .args(bootstrap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rampart serve starts");
    nodes.children.push(child);
}

fn view(i: usize) -> Option<serde_json::Value> {
    http("GET", http_addr(i), "/v1/cluster", None)
        .and_then(|(s, b)| (s == 200).then(|| serde_json::from_str(&b).ok())?)
}

/// Waits until node `i` sees the metadata group's voters equal to `expected` (and to the configuration's replicas)
/// with a leader.
fn metadata_settled(i: usize, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = view(i).map(|v| v["metadata"].clone());
        let names = |v: &serde_json::Value| -> Vec<String> {
            let mut n: Vec<String> =
                v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect();
            n.sort();
            n
        };
        if let Some(m) = &v {
            if names(&m["voters"]) == expected && names(&m["replicas"]) == expected && !m["leader"].is_null() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "metadata group through n{i}: {v:?}, expected {expected:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until configuration `epoch` (or a later one: filling the metadata group takes an epoch of its own, when
/// no live member was fresh enough at the change itself) is in force and, for every partition, some replica sees
/// its voters equal to the placement's replicas with a leader; returns each partition's replica set.
fn settled(nodes: &[usize], epoch: u64) -> Vec<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let views: Vec<serde_json::Value> = nodes.iter().copied().filter_map(view).collect();
        let mut sets: Vec<Option<BTreeSet<String>>> = vec![None; PARTITIONS];
        for v in views.iter().filter(|v| v["config_epoch"].as_u64() >= Some(epoch)) {
            for p in v["partitions"].as_array().into_iter().flatten() {
                let id = p["id"].as_u64().unwrap_or(0) as usize;
                let replicas: BTreeSet<String> = p["replicas"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect();
                let voters: Option<BTreeSet<String>> =
                    p["voters"].as_array().map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect());
                if voters.as_ref() == Some(&replicas) && !p["leader"].is_null() {
                    sets[id] = Some(replicas);
                }
            }
        }
        if sets.iter().all(Option::is_some) {
            return sets.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "configuration {epoch} did not settle: {sets:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every node in `nodes`, in configuration `epoch` or later, names a leader, among the partition's
/// replicas, for every partition, including those it holds no replica of (it asks the nodes that do); returns how
/// many such partitions it saw.
fn leaders_named_everywhere(nodes: &[usize], epoch: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held_elsewhere = 0;
        let mut missing = Vec::new();
        for &i in nodes {
            let v = view(i);
            let me = format!("n{i}");
            for p in v.as_ref().and_then(|v| v["partitions"].as_array()).into_iter().flatten() {
                let replicas: Vec<&str> =
                    p["replicas"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
                if !replicas.contains(&me.as_str()) {
                    held_elsewhere += 1;
                }
                if !p["leader"].as_str().is_some_and(|l| replicas.contains(&l)) || p["term"].as_u64().is_none() {
                    missing.push(format!("n{i} partition {}: {p}", p["id"]));
                }
            }
            match v.as_ref().map(|v| v["config_epoch"].as_u64()) {
                None => missing.push(format!("n{i}: no view")),
                Some(e) if e < Some(epoch) => missing.push(format!("n{i}: configuration {e:?}, not yet {epoch}")),
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            return held_elsewhere;
        }
        assert!(Instant::now() < deadline, "leaders not named: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn put(i: usize, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = format!(r#"{{"value":"{value}"}}"#);
    loop {
        match http("PUT", http_addr(i), &format!("/v1/kv/{key}"), Some(&body)) {
            Some((200, _)) => return,
            other => assert!(Instant::now() < deadline, "put {key}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads every written key through node `via`, waiting out elections (a partition whose leader just left).
fn all_readable(via: usize, written: &BTreeMap<String, String>) {
    for (key, value) in written {
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            match http("GET", http_addr(via), &format!("/v1/kv/{key}"), None) {
                Some((200, body)) => break body,
                other => assert!(Instant::now() < deadline, "{key} through n{via}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(body.contains(&format!("\"{value}\"")), "{key} through n{via}: {body}");
    }
}

#[test]
fn a_fourth_node_joins_and_leaves_and_a_dead_founder_is_rebuilt_elsewhere() {
    let mut nodes = Processes::new();
    let initial: Vec<String> = (0..3).map(|i| format!("n{i}={}", peer(i))).collect();
    let initial = initial.join(",");
    for i in 0..3 {
        start(&mut nodes, i, &["--initial-cluster", &initial]);
    }
    // Configuration 1 gives the founded cluster its identity; every change below takes the next epoch.
    let before = settled(&[0, 1, 2], 1);
    let mut written = BTreeMap::new();
    for k in 0..60 {
        let (key, value) = (format!("grow-{k}"), format!("v{k}"));
        put(k % 3, &key, &value);
        written.insert(key, value);
    }

    start(&mut nodes, 3, &["--join", &peer(0)]);
    let grown = settled(&[0, 1, 2, 3], 2);
    let mut gained = 0;
    for (p, (old, new)) in before.iter().zip(&grown).enumerate() {
        if old != new {
            // Only towards the joiner: one replica replaced by n3, nothing else.
            assert!(new.contains("n3") && old.difference(new).count() == 1, "partition {p}: {old:?} -> {new:?}");
            gained += 1;
        }
    }
    // 8 partitions x 3 replicas over 4 nodes: the joiner's fair share is 6, and nothing else moves.
    assert_eq!(gained, PARTITIONS * 3 / 4, "{before:?} -> {grown:?}");
    all_readable(3, &written);
    // Each partition's 3 replicas leave one of the 4 nodes without it; that node still names its leader.
    assert_eq!(leaders_named_everywhere(&[0, 1, 2, 3], 2), PARTITIONS);
    for k in 60..90 {
        let (key, value) = (format!("grow-{k}"), format!("v{k}"));
        put(k % 4, &key, &value);
        written.insert(key, value);
    }

    let (status, body) = http("DELETE", http_addr(1), "/v1/cluster/nodes/n3", None).expect("node answers");
    assert_eq!(status, 200, "{body}");
    let shrunk = settled(&[0, 1, 2], 3);
    for (p, (old, new)) in grown.iter().zip(&shrunk).enumerate() {
        assert!(!new.contains("n3"), "partition {p} still on n3: {new:?}");
        if old != new {
            // Only away from the leaver: n3 replaced by one other node.
            assert!(old.contains("n3") && old.difference(new).count() == 1, "partition {p}: {old:?} -> {new:?}");
        }
    }
    all_readable(0, &written);
    let v = view(0).expect("n0 answers");
    let n3 = v["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == "n3").cloned()).expect("n3 listed");
    assert_eq!(n3["state"], "left");
    // Removing an unknown node, or one that would leave fewer nodes than replicas, is refused and changes nothing.
    assert_eq!(http("DELETE", http_addr(0), "/v1/cluster/nodes/n9", None).map(|r| r.0), Some(404));
    assert_eq!(http("DELETE", http_addr(0), "/v1/cluster/nodes/n1", None).map(|r| r.0), Some(409));
    // Regression: a member's id re-announced at another address would hand its Raft identity (and votes) to a
    // process that has none of them.
    let impostor = r#"{"id":"n1","peer":"127.0.0.1:1","http":"127.0.0.1:2"}"#;
    assert_eq!(http("POST", http_addr(0), "/v1/cluster/nodes", Some(impostor)).map(|r| r.0), Some(409));
    assert_eq!(view(0).expect("n0 answers")["config_epoch"], 3);

    // n3 is added back through the API; then founder n2 is killed: once membership has declared it dead for the
    // replacement delay (2 s here), the metadata leader (n0 or n1: the metadata group runs on two of its three)
    // decommissions it, its replicas are rebuilt on the survivors, n3 among them, and n3 takes its metadata vote.
    let add = format!(r#"{{"id":"n3","peer":"{}","http":"{}"}}"#, peer(3), http_addr(3));
    let (status, body) = http("POST", http_addr(2), "/v1/cluster/nodes", Some(&add)).expect("node answers");
    assert_eq!(status, 200, "{body}");
    let regrown = settled(&[0, 1, 2, 3], 4);
    assert!(regrown.iter().any(|r| r.contains("n3")), "{regrown:?}");
    let n2 = &mut nodes.children[2];
    n2.kill().expect("SIGKILL");
    n2.wait().expect("reaped");
    let healed = settled(&[0, 1, 3], 5);
    for (p, (old, new)) in regrown.iter().zip(&healed).enumerate() {
        assert!(!new.contains("n2") && new.len() == 3, "partition {p} not rebuilt: {new:?}");
        if old != new {
            assert!(old.contains("n2") && old.difference(new).count() == 1, "partition {p}: {old:?} -> {new:?}");
        }
    }
    all_readable(3, &written);
    metadata_settled(0, &["n0", "n1", "n3"]);
    // n2 comes back on its data, which still names it a voter of both: it learns from a peer that it is neither,
    // holds no group (what it held was dropped) and serves every key by forwarding.
    start(&mut nodes, 2, &["--initial-cluster", &initial]);
    assert_eq!(settled(&[0, 1, 2, 3], 5), healed);
    let hosted = || -> Option<Vec<String>> {
        let (_, metrics) = http("GET", http_addr(2), "/metrics", None)?;
        Some(metrics.lines().filter(|l| l.starts_with("rampart_raft_term{")).map(str::to_owned).collect())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while hosted().is_none_or(|groups| !groups.is_empty()) {
        assert!(Instant::now() < deadline, "n2 still hosts groups it left: {:?}", hosted());
        std::thread::sleep(Duration::from_millis(200));
    }
    all_readable(2, &written);
    assert_eq!(view(2).expect("n2 answers")["metadata"]["replicas"], serde_json::json!(["n0", "n1", "n3"]));

    // A second founder dies. The metadata group (n0, n1, n3) keeps a majority: it takes n2 back, then, n0 dead for
    // the replacement delay, decommissions it and gives its vote to n2. (On the founders alone, n1 would be the
    // only voter left: no change could commit.)
    let n0 = &mut nodes.children[0];
    n0.kill().expect("SIGKILL");
    n0.wait().expect("reaped");
    let add = format!(r#"{{"id":"n2","peer":"{}","http":"{}"}}"#, peer(2), http_addr(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        match http("POST", http_addr(1), "/v1/cluster/nodes", Some(&add)) {
            Some((200, body)) => break serde_json::from_str::<serde_json::Value>(&body).expect("JSON answer"),
            other => assert!(Instant::now() < deadline, "adding n2 back with n0 dead: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let added = added["config_epoch"].as_u64().expect("the answer names its epoch");
    // n0's removal follows n2's addition (before it, the members were as many as the replicas); the epoch it takes
    // depends on whether the metadata group was filled in an epoch of its own, so wait for its effect.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sets = settled(&[1, 2, 3], added + 1);
        if sets.iter().all(|r| !r.contains("n0") && r.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "n0 not replaced: {sets:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    metadata_settled(1, &["n1", "n2", "n3"]);
    all_readable(2, &written);
    put(3, "grow-after", "two-founders-lost");

    // Two of the three metadata voters go down; n3, which joined, comes back with `--join` naming n1, which is
    // down too: it starts from the configuration it recorded rather than asking to be added (a request the group,
    // one voter of three, could not answer) and restores the group's majority and every partition's.
    for i in [1, 3] {
        let child = &mut nodes.children[i];
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    start(&mut nodes, 3, &["--join", &peer(1)]);
    // The group answers again: removing an unknown node is refused only after a read its majority confirms.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http("DELETE", http_addr(2), "/v1/cluster/nodes/n9", None) {
            Some((404, _)) => break,
            other => assert!(Instant::now() < deadline, "the metadata group with n3 back: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    all_readable(3, &written);
    put(2, "grow-last", "one-voter-back");
}

/// A whole cluster goes down (every process killed) and comes back without one member: no live node has heard of
/// it since, so membership never declares it anything; unheard of for the replacement delay, it is decommissioned
/// all the same and its replicas are rebuilt on the others. Nodes 10-13 (ports apart from the test above).
#[test]
fn a_member_missing_from_a_whole_cluster_restart_is_replaced() {
    // Long enough that a restarted founder slow to start on a loaded machine is heard of well before it.
    const REPLACE_AFTER_MS: &str = "6000";
    let mut nodes = Processes::new();
    let initial: Vec<String> = (10..13).map(|i| format!("n{i}={}", peer(i))).collect();
    let initial = initial.join(",");
    for i in 10..13 {
        start_with(&mut nodes, i, REPLACE_AFTER_MS, &["--initial-cluster", &initial]);
    }
    settled(&[10, 11, 12], 1);
    start_with(&mut nodes, 13, REPLACE_AFTER_MS, &["--join", &peer(10)]);
    let grown = settled(&[10, 11, 12, 13], 2);
    assert!(grown.iter().any(|r| r.contains("n13")), "{grown:?}");
    let mut written = BTreeMap::new();
    for k in 0..40 {
        let (key, value) = (format!("restart-{k}"), format!("v{k}"));
        put(10 + k % 4, &key, &value);
        written.insert(key, value);
    }
    for child in &mut nodes.children {
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    nodes.children.clear();
    for i in 10..13 {
        start_with(&mut nodes, i, REPLACE_AFTER_MS, &["--initial-cluster", &initial]);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let healed = loop {
        let sets = settled(&[10, 11, 12], 3);
        if sets.iter().all(|r| !r.contains("n13") && r.len() == 3) {
            break sets;
        }
        assert!(Instant::now() < deadline, "n13 not replaced: {sets:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for (p, (old, new)) in grown.iter().zip(&healed).enumerate() {
        if old != new {
            // Only away from the missing member: n13 replaced by one other node.
            assert!(old.contains("n13") && old.difference(new).count() == 1, "partition {p}: {old:?} -> {new:?}");
        }
    }
    all_readable(11, &written);
    let v = view(12).expect("n12 answers");
    let n13 = v["nodes"].as_array().and_then(|n| n.iter().find(|n| n["id"] == "n13").cloned()).expect("n13 listed");
    // Never heard of since the restart, it is still shown in the zone the configuration gave it.
    assert_eq!((&n13["state"], &n13["zone"]), (&serde_json::json!("left"), &serde_json::json!("default")), "{n13}");
}

/// Stops a node with SIGTERM (it leaves membership on purpose) and waits for it to exit.
fn sigterm(nodes: &mut Processes, child: usize) {
    let c = &mut nodes.children[child];
    let status = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().expect("kill");
    assert!(status.success(), "SIGTERM sent");
    c.wait().expect("stops");
}

/// Waits until node `i` answers HTTP.
fn answering(i: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http("GET", http_addr(i), "/healthz", None).is_none() {
        assert!(Instant::now() < deadline, "n{i} does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The state node `via` gives each node it lists, and its configuration epoch.
fn states(via: usize) -> Option<(u64, BTreeMap<String, String>)> {
    let v = view(via)?;
    let nodes = v["nodes"].as_array()?;
    let states = nodes.iter().filter_map(|n| Some((n["id"].as_str()?.to_owned(), n["state"].as_str()?.to_owned())));
    Some((v["config_epoch"].as_u64()?, states.collect()))
}

/// A cluster founded by one node and grown by `--join` to four (nodes 20-23, 3 replicas). Its founder restarted
/// alone with SIGTERM finds the members that saw it leave (they no longer call on it); restarted while all the
/// others are down, it hears one member of four and replaces nobody, however long they stay away, though it alone
/// holds the metadata group; and a member stopped with SIGTERM that stays away is replaced like a dead one.
#[test]
fn a_node_that_hears_too_few_replaces_nobody_and_one_that_stays_away_is_replaced() {
    const REPLACE_AFTER_MS: &str = "2000";
    let mut nodes = Processes::new();
    let founder = format!("n20={}", peer(20));
    start_with(&mut nodes, 20, REPLACE_AFTER_MS, &["--initial-cluster", &founder]);
    settled(&[20], 1);
    let mut child = BTreeMap::from([(20, 0)]);
    for (n, i) in (21..24).enumerate() {
        start_with(&mut nodes, i, REPLACE_AFTER_MS, &["--join", &peer(20)]);
        child.insert(i, nodes.children.len() - 1);
        settled(&(20..=i).collect::<Vec<_>>(), 2 + n as u64);
    }
    let all = [20, 21, 22, 23];
    let grown = settled(&all, 4);
    let mut written = BTreeMap::new();
    for k in 0..40 {
        let (key, value) = (format!("few-{k}"), format!("v{k}"));
        put(20 + k % 4, &key, &value);
        written.insert(key, value);
    }
    let alive = |via: usize, others: &[usize]| {
        states(via).is_some_and(|(_, s)| others.iter().all(|o| s.get(&format!("n{o}")).is_some_and(|s| s == "alive")))
    };

    // The founder restarted alone: its founding list names only itself, and the others saw it leave.
    sigterm(&mut nodes, child[&20]);
    start_with(&mut nodes, 20, REPLACE_AFTER_MS, &["--initial-cluster", &founder]);
    child.insert(20, nodes.children.len() - 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !alive(20, &[21, 22, 23]) {
        assert!(Instant::now() < deadline, "the restarted founder does not hear the others: {:?}", states(20));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (epoch, _) = states(20).expect("n20 answers");

    // Everyone down, the founder back alone: it leads the metadata group (its only voter) and hears nobody. (The
    // founder goes first: without its only voter no removal can commit while the others stop.)
    for i in [20, 21, 22, 23] {
        sigterm(&mut nodes, child[&i]);
    }
    start_with(&mut nodes, 20, REPLACE_AFTER_MS, &["--initial-cluster", &founder]);
    child.insert(20, nodes.children.len() - 1);
    answering(20);
    // Four times the delay, from the moment it answers.
    let quiet_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < quiet_until {
        if let Some((e, s)) = states(20) {
            assert!(e == epoch && s.values().all(|s| s != "left"), "n20 alone replaced a member: {e} {s:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The others back first (from their own records, n20 down), then n20, which finds them all at once.
    sigterm(&mut nodes, child[&20]);
    for i in [21, 22, 23] {
        start_with(&mut nodes, i, REPLACE_AFTER_MS, &["--join", &peer(20)]);
        child.insert(i, nodes.children.len() - 1);
    }
    for i in [21, 22, 23] {
        answering(i);
    }
    start_with(&mut nodes, 20, REPLACE_AFTER_MS, &["--initial-cluster", &founder]);
    child.insert(20, nodes.children.len() - 1);
    assert_eq!(settled(&all, epoch), grown, "nothing moved");
    all_readable(21, &written);

    // A member stopped on purpose and not back within the delay: its replicas are rebuilt on the others.
    sigterm(&mut nodes, child[&23]);
    let healed = settled(&[20, 21, 22], epoch + 1);
    for (p, (old, new)) in grown.iter().zip(&healed).enumerate() {
        assert!(!new.contains("n23") && new.len() == 3, "partition {p}: {new:?}");
        if old != new {
            assert!(old.contains("n23") && old.difference(new).count() == 1, "partition {p}: {old:?} -> {new:?}");
        }
    }
    all_readable(22, &written);
    assert_eq!(states(21).map(|(_, s)| s["n23"].clone()).as_deref(), Some("left"));
}
