//! The cost of reading a partition's log: what replication and the state machine do for every entry on every
//! replica. `read/tail` reads the newest entry, which the log keeps in memory; `read/database` reads an older one,
//! which only the database holds (a read transaction, a B-tree lookup and a decode). Each entry is one kv write
//! of 100 bytes, as `rampart bench --workload kv` makes them.
//!
//! `cargo bench -p rampart-node --bench log`

use criterion::{criterion_group, criterion_main, Criterion};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::EntryOf;
use openraft::type_config::TypeConfigExt;
use rampart_node::store::Store;
use rampart_node::types::{Command, Op, TypeConfig};

fn entry(i: u64) -> EntryOf<TypeConfig> {
    let put = Op::Put { key: format!("bench-{i}"), value: "x".repeat(100) };
    EntryOf::<TypeConfig>::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, i),
        Command { at_ms: i, ops: vec![put] },
    )
}

fn read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = Store::open(&dir.path().join("rampart.redb")).expect("open");
    let mut log = store.log(1);
    const LAST: u64 = 10_000;
    runtime.block_on(async {
        for from in (1..=LAST).step_by(100) {
            let (tx, rx) = TypeConfig::oneshot();
            log.append((from..from + 100).map(entry).collect::<Vec<_>>(), IOFlushed::signal(tx)).await.expect("append");
            rx.await.expect("flushed").expect("durable");
        }
    });
    let mut group = c.benchmark_group("read");
    group.bench_function("tail", |b| {
        b.iter(|| runtime.block_on(log.try_get_log_entries(LAST..=LAST)).expect("read"));
    });
    group.bench_function("database", |b| {
        b.iter(|| runtime.block_on(log.try_get_log_entries(LAST / 2..=LAST / 2)).expect("read"));
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
