//! Durable appends with many Raft groups per write, the pattern of a node's group commit: each round appends one
//! entry to each of G groups and makes the round durable with one sync. Reports rounds (syncs) and entries per
//! second for each engine, one after the other on the same disk.
//!
//! usage: log-engines [SECONDS_PER_CASE] [ENTRY_BYTES]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};

const LOG: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("raft_log");

trait Engine {
    fn name(&self) -> &'static str;
    /// Appends entry `index` of every group in `groups`, durably.
    fn round(&mut self, groups: u32, index: u64, entry: &[u8]);
}

/// The node's layout: one table keyed by (group, index), one write transaction per round, fsync'd.
struct Redb(Database);

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb 4 (B-tree, copy-on-write)"
    }
    fn round(&mut self, groups: u32, index: u64, entry: &[u8]) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate).expect("durability");
        {
            let mut table = txn.open_table(LOG).expect("table");
            for g in 0..groups {
                table.insert((g, index), entry).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
}

/// redb with every group's entries under one node-wide sequence number, so a round appends at the B-tree's right
/// edge (one leaf) instead of touching one leaf per group; finding a group's entries needs an index in memory.
struct RedbSequence(Database, u64);

const SEQ_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log_seq");

impl Engine for RedbSequence {
    fn name(&self) -> &'static str {
        "redb 4, keyed by one append sequence"
    }
    fn round(&mut self, groups: u32, _index: u64, entry: &[u8]) {
        let mut txn = self.0.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate).expect("durability");
        {
            let mut table = txn.open_table(SEQ_LOG).expect("table");
            for _ in 0..groups {
                self.1 += 1;
                table.insert(self.1, entry).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
}

/// TiKV's multi-Raft log: every group's items in one shared append-only stream, fdatasync'd per write.
struct RaftEngine(raft_engine::Engine);

impl Engine for RaftEngine {
    fn name(&self) -> &'static str {
        "raft-engine 0.4 (shared append-only log)"
    }
    fn round(&mut self, groups: u32, index: u64, entry: &[u8]) {
        let mut batch = raft_engine::LogBatch::with_capacity(groups as usize);
        for g in 0..groups {
            batch.put(u64::from(g) + 1, index.to_be_bytes().to_vec(), entry.to_vec()).expect("put");
        }
        self.0.write(&mut batch, true).expect("write");
    }
}

/// The floor: length, CRC and bytes of every entry appended to one file, then one fdatasync.
struct AppendFile(File, Vec<u8>);

impl Engine for AppendFile {
    fn name(&self) -> &'static str {
        "append-only file + fdatasync (floor)"
    }
    fn round(&mut self, groups: u32, index: u64, entry: &[u8]) {
        let buf = &mut self.1;
        buf.clear();
        for g in 0..groups {
            buf.extend_from_slice(&g.to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(entry).to_le_bytes());
            buf.extend_from_slice(entry);
        }
        self.0.write_all(buf).expect("write");
        self.0.sync_data().expect("fdatasync");
    }
}

fn open(kind: usize, dir: &Path) -> Box<dyn Engine> {
    match kind {
        0 => Box::new(Redb(Database::create(dir.join("log.redb")).expect("redb"))),
        3 => Box::new(RedbSequence(Database::create(dir.join("seq.redb")).expect("redb"), 0)),
        1 => {
            let cfg = raft_engine::Config { dir: dir.join("raft-engine").display().to_string(), ..Default::default() };
            Box::new(RaftEngine(raft_engine::Engine::open(cfg).expect("raft-engine")))
        }
        _ => {
            let file = OpenOptions::new().create(true).append(true).open(dir.join("log.bin")).expect("file");
            Box::new(AppendFile(file, Vec::new()))
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let entry_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let entry = vec![0xa5u8; entry_bytes];
    println!("{secs} s per case, {entry_bytes}-byte entries, one sync per round of one entry per group");
    for groups in [1u32, 16, 64] {
        for kind in [0, 3, 1, 2] {
            let dir = tempfile::TempDir::new().expect("temp dir");
            let mut engine = open(kind, dir.path());
            let start = Instant::now();
            let mut rounds = 0u64;
            while start.elapsed() < Duration::from_secs(secs) {
                rounds += 1;
                engine.round(groups, rounds, &entry);
            }
            let s = start.elapsed().as_secs_f64();
            println!(
                "groups={groups:<3} {:<42} {:>7.0} syncs/s {:>9.0} entries/s  {:>6.0} us/round",
                engine.name(),
                rounds as f64 / s,
                (rounds * u64::from(groups)) as f64 / s,
                s * 1e6 / rounds as f64
            );
        }
    }
}
