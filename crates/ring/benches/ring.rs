//! Lookup and build costs of the ring, beside the `hashring` crate in the same run.
//!
//! `cargo bench -p rampart-ring --bench ring`. Both rings get the same string keys and the same number of
//! points (N nodes × 160 virtual nodes); each hashes the key itself (ours xxh3, hashring SipHash-2-4 with zero keys, as it
//! ships), since that is what a caller pays.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rampart_ring::hash::key_hash;
use rampart_ring::{Node, NodeId, Placement, PlacementConfig, Ring};

const VNODES: u32 = 160;

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::new(NodeId::new(format!("n{i:04}")).expect("valid id"))).collect()
}

/// One entry per (node, vnode): hashring has no virtual nodes of its own, each entry is one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VNode {
    node: u32,
    vnode: u32,
}

fn peer_ring(n: usize) -> hashring::HashRing<VNode> {
    let mut ring = hashring::HashRing::new();
    ring.batch_add((0..n as u32).flat_map(|node| (0..VNODES).map(move |vnode| VNode { node, vnode })).collect());
    ring
}

fn keys() -> Vec<String> {
    (0..4096).map(|i| format!("sku-{i}")).collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("lookup");
    for n in [10usize, 100, 1000] {
        let ours = Ring::new(nodes(n), VNODES).expect("ring");
        let theirs = peer_ring(n);
        group.bench_with_input(BenchmarkId::new("rampart-ring", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ours.lookup(key_hash(black_box(keys[i].as_bytes()))))
            })
        });
        group.bench_with_input(BenchmarkId::new("hashring", n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(theirs.get(black_box(&keys[i].as_str())))
            })
        });
    }
    // The data path: key -> partition -> preference list, on the balanced placement.
    let placement = Placement::new(PlacementConfig { partitions: 256, replicas: 3, vnodes: VNODES }, nodes(100))
        .expect("placement");
    group.bench_function("rampart-placement/100", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(placement.replicas_for_key(black_box(keys[i].as_bytes())).next())
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for n in [10usize, 100, 1000] {
        group.bench_with_input(BenchmarkId::new("rampart-ring", n), &n, |b, &n| {
            let ns = nodes(n);
            b.iter(|| black_box(Ring::new(ns.clone(), VNODES).expect("ring")))
        });
        group.bench_with_input(BenchmarkId::new("hashring", n), &n, |b, &n| b.iter(|| black_box(peer_ring(n))));
    }
    for n in [10usize, 100] {
        group.bench_with_input(BenchmarkId::new("rampart-placement-p256", n), &n, |b, &n| {
            let ns = nodes(n);
            let config = PlacementConfig { partitions: 256, replicas: 3, vnodes: VNODES };
            b.iter(|| black_box(Placement::new(config, ns.clone()).expect("placement")))
        });
    }
    let config = PlacementConfig { partitions: 256, replicas: 3, vnodes: VNODES };
    let base = Placement::new(config, nodes(100)).expect("placement");
    group.bench_function("rampart-rebalance-join/100", |b| {
        let grown = nodes(101);
        b.iter(|| black_box(base.rebalance(grown.clone()).expect("rebalance")))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = lookup, build
}
criterion_main!(benches);
