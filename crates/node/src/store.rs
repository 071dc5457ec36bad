//! Durable storage for every partition's Raft log and snapshots, in one redb database per node; the state
//! machines themselves live in memory.
//!
//! **Durability contract** (openraft's, honoured exactly): a vote or an appended entry is reported saved only
//! once it is on disk: a vote after the redb transaction holding it committed with `Durability::Immediate`
//! (fsync), an appended entry after that or after the write-ahead record holding it was fsync'd (below).
//!
//! **State machines in memory.** A partition's state (its key-value rows and trading shard) is a [`GroupState`]
//! in memory; its durable form is the group's latest snapshot plus the committed log entries after it. At start
//! the state is loaded from the snapshot and openraft re-applies the committed entries after it (a transient
//! state machine, in openraft's terms); openraft purges the log only up to the snapshot, so those entries are
//! always there. `last_applied` and the membership are part of the state, and the snapshot holds them with the
//! rows they describe. An apply therefore writes nothing: the hot path's only disk work is the log append.
//!
//! **Group commit:** all partitions share one writer thread. It takes every write waiting in its queue (up to
//! [`BATCH_MAX`]), applies them in one transaction and commits once, so one fsync covers many groups' appends
//! and votes; then it wakes every waiter. Committed indexes wait in memory and ride along with the next
//! transaction (or one of their own, without an fsync, once the writer has been idle for [`IDLE_FLUSH`], and
//! an fsync'd one when the store closes): a committed index lost in a crash only means a restart re-applies
//! less and learns the rest from its leader. A failed commit fails every write in that batch, and openraft stops
//! the group rather than run on a log it cannot trust.
//!
//! **Write-ahead log.** A batch of nothing but appends (the hot path) is made durable by one record of its
//! entries, appended to raft-engine's log files and fsync'd: one sequential write where redb's durable commit
//! writes a dozen scattered pages. redb takes those entries at its next durable commit, all of them in one
//! transaction; until then the group's tail holds them for every read. Anything else in a batch (a vote, a
//! truncation, a purge, a snapshot or node record) makes its commit durable, and so does a checkpoint (every
//! [`CHECKPOINT_EVERY`] or [`CHECKPOINT_BYTES`] of records, when the writer is idle, and when the store closes).
//! A durable commit holds every record written before it and stores the last one's number; its records then go.
//! After a crash, redb opens as its last durable commit left it and the records after that one are replayed, in
//! order, before anything else runs. As every write other than an append is a durable commit, the records after
//! the last one are all appends, and replaying them rebuilds exactly what was acknowledged; a record missing
//! among them is reported, never skipped.
//!
//! **Snapshots** live in files of their own (`snapshots/` beside the database), written and fsync'd outside the
//! writer thread, so a partition's large snapshot never holds up every partition's commits; the database records
//! which file is a group's current snapshot, in an fsync'd commit. Files no record names are deleted at start.
//!
//! **Integrity:** every stored value and snapshot file carries a CRC-32 of its bytes; one that fails it is
//! reported as corrupt (an `InvalidData` error naming the group and key, or the file), never decoded.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use rampart_trading::{Row, RowsView, Shard, Stamped};

use crate::cluster::Member;
use crate::types::{CommandResult, GroupId, Op, OpOutcome, TypeConfig};

/// A group's in-memory state, shared by its state machine and the node's readers.
pub type SharedState = Arc<std::sync::Mutex<GroupState>>;

/// The most writes one transaction (one fsync) takes.
pub const BATCH_MAX: usize = 1024;

/// How long committed indexes may wait for a transaction to ride along with before they get one of their own.
pub const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

const LOGS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("raft_meta");
/// Where data directories written before the state machines moved to memory kept each group's key-value rows
/// and trading rows; [`migrate_state_rows`] turns them into snapshots.
const FORMER_KV: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("kv");
const FORMER_TRADE: TableDefinition<(u32, &[u8]), &[u8]> = TableDefinition::new("trade");

type C = TypeConfig;

/// Where the metadata group keeps the cluster configuration (in its key-value rows).
pub const CONFIG_KEY: &str = "cluster/config";
const CONFIG_EPOCH_KEY: &str = "cluster/epoch";

/// The meta rows of the node itself (not of a partition) live under this group number, above any partition.
const SHAPE_GROUP: GroupId = u32::MAX;
type Write = Box<dyn FnOnce(&WriteTransaction) -> io::Result<()> + Send>;

/// What to do once a write's transaction committed (fsync'd) or failed; called on the writer thread.
type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A log entry as stored: its index and its encoded bytes.
type EncodedEntry = (u64, Vec<u8>);

/// Log entries one append adds to a group.
type Rows = Arc<Vec<EncodedEntry>>;

/// One write-ahead record: the entries a batch appends, by group.
type Record<'a> = [(GroupId, &'a [EncodedEntry])];

/// A write, what to do once it is on disk, and, for an append, its group and entries: a batch of nothing but
/// appends is made durable by one record in the write-ahead log (see the module's "Write-ahead log").
struct Job {
    write: Write,
    done: Done,
    appends: Option<Appends>,
}

/// What to do once the database holds an append's entries (a durable commit inserted them).
type Stored = Box<dyn FnOnce() + Send>;

/// An append's group and entries, and what to do once the database holds them.
struct Appends {
    group: GroupId,
    rows: Rows,
    stored: Stored,
}

/// The newest entries of a group's log, in memory: every entry handed to the writer and not yet in the database
/// (openraft reads an entry as soon as `append` returns, before it is durable; a write-ahead record makes it
/// durable before the database holds it), and the latest ones the database holds up to
/// [`TAIL_ENTRIES_MAX`] entries and [`TAIL_BYTES_MAX`] encoded bytes. Replication and the state machine read the
/// entries just appended; from here they read them without a database transaction or a decode.
///
/// **Invariant:** the tail is a suffix of the log. Every append enters it, truncation and purge remove the same
/// indexes from it as from the database, and only its oldest entries leave it, and only once durable. So a range
/// that starts at or above the tail's first index is in the tail wherever the log holds it, and the tail's last
/// entry is the log's.
#[derive(Debug, Default)]
struct Tail {
    entries: BTreeMap<u64, Cached>,
    /// The encoded size of `entries`.
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    entry: EntryOf<C>,
    bytes: usize,
    /// Committed to the database: it may leave the tail.
    durable: bool,
}

/// Durable entries the tail keeps, at most, per group.
const TAIL_ENTRIES_MAX: usize = 256;
/// Encoded bytes the tail keeps, at most, per group (entries not yet durable are kept beyond it).
const TAIL_BYTES_MAX: usize = 1 << 20;

impl Tail {
    fn insert(&mut self, entry: EntryOf<C>, bytes: usize) {
        self.bytes += bytes;
        if let Some(old) = self.entries.insert(entry.index(), Cached { entry, bytes, durable: false }) {
            self.bytes -= old.bytes;
        }
    }

    /// Marks these entries committed to the database (an index appended again meanwhile keeps its newer entry,
    /// not yet durable), then lets the oldest durable ones go beyond the bounds.
    fn made_durable(&mut self, ids: &[LogIdOf<C>]) {
        for id in ids {
            if let Some(c) = self.entries.get_mut(&id.index()).filter(|c| c.entry.log_id() == *id) {
                c.durable = true;
            }
        }
        while self.entries.len() > TAIL_ENTRIES_MAX || self.bytes > TAIL_BYTES_MAX {
            match self.entries.first_entry() {
                Some(oldest) if oldest.get().durable => self.bytes -= oldest.remove().bytes,
                _ => break,
            }
        }
    }

    /// The entries of `lo..=hi`, if the tail holds every one of them the log holds.
    fn read(&self, lo: u64, hi: u64) -> Option<Vec<EntryOf<C>>> {
        let first = *self.entries.keys().next()?;
        (first <= lo).then(|| self.entries.range(lo..=hi).map(|(_, c)| c.entry.clone()).collect())
    }

    fn forget(&mut self, lo: u64, hi: u64) {
        let gone: Vec<u64> = self.entries.range(lo..=hi).map(|(i, _)| *i).collect();
        for i in gone {
            if let Some(c) = self.entries.remove(&i) {
                self.bytes -= c.bytes;
            }
        }
    }
}

type SharedTail = Arc<std::sync::Mutex<Tail>>;

/// Each group's latest committed index (encoded), not yet written.
type PendingCommitted = Arc<std::sync::Mutex<BTreeMap<GroupId, Vec<u8>>>>;

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Prefixes `bytes` with their CRC-32.
fn seal(bytes: &[u8]) -> Vec<u8> {
    let mut out = crc32fast::hash(bytes).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Checks and strips the CRC-32 prefix.
fn unseal<'a>(bytes: &'a [u8], what: &dyn Fn() -> String) -> io::Result<&'a [u8]> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, format!("corrupt stored value: {}", what()));
    if bytes.len() < 4 {
        return Err(corrupt());
    }
    let (sum, body) = bytes.split_at(4);
    if u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) != crc32fast::hash(body) {
        return Err(corrupt());
    }
    Ok(body)
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(value).map(|b| seal(&b)).map_err(other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &dyn Fn() -> String) -> io::Result<T> {
    postcard::from_bytes(unseal(bytes, what)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", what())))
}

/// One node's database and its group-commit writer.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    /// Each partition's state, in memory (its durable form: the snapshot plus the log after it).
    states: std::sync::Mutex<BTreeMap<GroupId, SharedState>>,
    writer: Option<std_mpsc::Sender<Job>>,
    /// Committed indexes waiting for the writer's next transaction.
    committed: PendingCommitted,
    /// Each group's newest log entries.
    tails: std::sync::Mutex<BTreeMap<GroupId, SharedTail>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Snapshot files: written and fsync'd outside the writer thread, so a large snapshot never holds up
    /// the group commit every partition shares.
    snapshots: PathBuf,
    /// Commits done and writes they carried, durable commits among them (for `/metrics`).
    pub stats: Arc<StoreStats>,
}

#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: std::sync::atomic::AtomicU64,
    /// Database commits made durable (fsync'd): every write other than appends, and the checkpoints.
    pub durable_commits: std::sync::atomic::AtomicU64,
    /// Batches of appends made durable by a write-ahead record instead.
    pub wal_records: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    /// How long each durable database commit took, from its transaction's start to its fsync's end: what every
    /// write it carried waited for, and, for a checkpoint, how long every partition's appends were held up.
    pub durable_commit_seconds: std::sync::Mutex<crate::telemetry::Histogram>,
    /// How long each write-ahead record took, from the batch's start to its fsync's end.
    pub wal_record_seconds: std::sync::Mutex<crate::telemetry::Histogram>,
}

impl Drop for Store {
    /// Closes the queue and waits for the writer to finish what it took, so the file is released when the
    /// last handle goes.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> io::Result<Arc<Store>> {
        let db = Arc::new(Database::create(path).map_err(other)?);
        {
            // Create the tables up front so readers never see them missing.
            let txn = db.begin_write().map_err(other)?;
            txn.open_table(LOGS).map_err(other)?;
            txn.open_table(META).map_err(other)?;
            txn.commit().map_err(other)?;
        }
        let snapshots = path.with_file_name("snapshots");
        std::fs::create_dir_all(&snapshots)?;
        migrate_state_rows(&db, &snapshots)?;
        let wal = Wal::open(&path.with_file_name("wal"), &db)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let writer_db = db.clone();
        let stats = Arc::new(StoreStats::default());
        let committed = PendingCommitted::default();
        let thread = std::thread::Builder::new().name("rampart-store-writer".into()).spawn({
            let (stats, committed) = (stats.clone(), committed.clone());
            move || write_loop(&writer_db, &rx, &committed, &stats, wal)
        })?;
        let store = Store {
            db,
            states: Default::default(),
            writer: Some(tx),
            committed,
            tails: Default::default(),
            thread: Some(thread),
            snapshots,
            stats,
        };
        store.remove_orphan_snapshots()?;
        Ok(Arc::new(store))
    }

    /// Deletes snapshot files no group refers to (a crash between writing a file and recording it, or between
    /// replacing a snapshot and deleting the old file).
    fn remove_orphan_snapshots(&self) -> io::Result<()> {
        let txn = self.db.begin_read().map_err(other)?;
        let meta = txn.open_table(META).map_err(other)?;
        let mut referred = std::collections::BTreeSet::new();
        for item in meta.iter().map_err(other)? {
            let (k, v) = item.map_err(other)?;
            let (group, key) = k.value();
            if key == SNAPSHOT_KEY {
                referred.insert(decode::<SnapshotRef>(v.value(), &|| format!("group {group} snapshot"))?.file);
            }
        }
        for entry in std::fs::read_dir(&self.snapshots)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referred.contains(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Writes a snapshot's file (off the async runtime) and records it as the group's current snapshot, in one
    /// fsync'd commit; with `only_if_newer`, only if it is newer than the one recorded (a snapshot built in the
    /// background must not replace one installed meanwhile). The file that ends up referred to by nothing (the one
    /// replaced, or this one) is deleted; if the commit fails, this one is. Returns the bytes.
    async fn record_snapshot(
        self: &Arc<Self>,
        group: GroupId,
        meta: &SnapshotMetaOf<C>,
        data: Vec<u8>,
        only_if_newer: bool,
    ) -> io::Result<Vec<u8>> {
        let (store, file_meta) = (self.clone(), meta.clone());
        let (data, file) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let file = write_snapshot_file(&store.snapshots, group, &file_meta, &data)?;
            Ok((data, file))
        })
        .await
        .map_err(other)??;
        let stored = encode(&SnapshotRef { meta: meta.clone(), file: file.clone() })?;
        let at = meta.last_log_id;
        let unused = Arc::new(std::sync::Mutex::new(None));
        let recorded = self
            .write(Box::new({
                let (unused, file) = (unused.clone(), file.clone());
                move |txn| {
                    let mut table = txn.open_table(META).map_err(other)?;
                    let current = snapshot_record(&table, group)?;
                    *unused.lock().map_err(other)? =
                        if !only_if_newer || at > current.as_ref().and_then(|c| c.meta.last_log_id) {
                            table.insert((group, SNAPSHOT_KEY), stored.as_slice()).map_err(other)?;
                            current.map(|c| c.file)
                        } else {
                            Some(file)
                        };
                    Ok(())
                }
            }))
            .await;
        let unused = match recorded {
            Ok(()) => unused.lock().map_err(other)?.take(),
            Err(e) => {
                self.remove_snapshot_file(&file);
                return Err(e);
            }
        };
        if let Some(name) = unused {
            self.remove_snapshot_file(&name);
        }
        Ok(data)
    }

    /// A snapshot file's bytes, checked against their CRC.
    fn read_snapshot_file(&self, name: &str) -> io::Result<Vec<u8>> {
        let bytes = std::fs::read(self.snapshots.join(name))?;
        unseal(&bytes, &|| format!("snapshot file {name}")).map(<[u8]>::to_vec)
    }

    /// Deletes a snapshot file no longer referred to (what is left behind is removed at the next start).
    fn remove_snapshot_file(&self, name: &str) {
        if let Err(e) = std::fs::remove_file(self.snapshots.join(name)) {
            tracing::warn!("snapshot file {name}: {e}");
        }
    }

    /// Runs `write` in the next group commit and waits until it is durable.
    async fn write(&self, write: Write) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            write,
            Box::new(move |r| {
                // A waiter that gave up is not an error.
                let _ = tx.send(r);
            }),
        )?;
        rx.await.map_err(|_| other("the storage writer has stopped"))?
    }

    /// Queues `write` for the next group commit; `done` runs once it committed or failed.
    fn submit(&self, write: Write, done: Done) -> io::Result<()> {
        self.queue(Job { write, done, appends: None })
    }

    fn queue(&self, job: Job) -> io::Result<()> {
        let writer = self.writer.as_ref().ok_or_else(|| other("the storage writer has stopped"))?;
        writer.send(job).map_err(|_| other("the storage writer has stopped"))
    }

    fn read_meta<T: DeserializeOwned>(&self, group: GroupId, key: &str) -> io::Result<Option<T>> {
        read_meta(&self.db, group, key)
    }

    /// The log store of one partition group.
    pub fn log(self: &Arc<Self>, group: GroupId) -> LogStore {
        let mut all = self.tails.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        LogStore { store: self.clone(), group, tail: all.entry(group).or_default().clone() }
    }

    /// The state machine of one partition group, its state loaded from the group's snapshot (and checked);
    /// openraft re-applies the committed entries after it when the group starts.
    pub fn state_machine(self: &Arc<Self>, group: GroupId) -> io::Result<StateMachine> {
        let state = Arc::new(std::sync::Mutex::new(self.snapshot_state(group)?));
        self.states.lock().map_err(other)?.insert(group, state.clone());
        Ok(StateMachine { store: self.clone(), group, state })
    }

    /// The state a group's current snapshot holds (an empty state if it has none).
    fn snapshot_state(&self, group: GroupId) -> io::Result<GroupState> {
        match self.current_snapshot(group)? {
            Some((meta, data)) => GroupState::from_snapshot(group, &meta, &data),
            None => Ok(GroupState::new(group)),
        }
    }

    /// A group's current snapshot: its metadata and its (checked) bytes.
    fn current_snapshot(&self, group: GroupId) -> io::Result<Option<(SnapshotMetaOf<C>, Vec<u8>)>> {
        // A snapshot recorded after the record was read may have replaced (and deleted) its file: read again.
        for _ in 0..3 {
            let Some(r) = self.read_meta::<SnapshotRef>(group, SNAPSHOT_KEY)? else { return Ok(None) };
            match self.read_snapshot_file(&r.file) {
                Ok(data) => return Ok(Some((r.meta, data))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("group {group}: the snapshot file keeps being replaced")))
    }

    /// A group's state as this node's disk holds it, rebuilt as a restart rebuilds it: the snapshot, then the
    /// committed entries after it. For checks and tools on a stopped node's data; a running group's state is
    /// [`Store::state`].
    pub fn recover(self: &Arc<Self>, group: GroupId) -> io::Result<GroupState> {
        let mut state = self.snapshot_state(group)?;
        let committed = self.read_committed(group)?;
        let from = state.applied.map_or(0, |l| l.index() + 1);
        if let Some(upto) = committed.map(|c| c.index()).filter(|&c| c >= from) {
            // Distinct indexes within `from..=upto`: as many as the range holds means none is missing.
            let mut entries = self.log(group).entries(from..=upto)?;
            if entries.len() as u64 != upto - from + 1 {
                return Err(invalid(format!("group {group}: the log lacks committed entries {from}..={upto}")));
            }
            for entry in &mut entries {
                state.apply(entry);
            }
        }
        Ok(state)
    }

    /// A group's latest committed index: the one waiting to be written, else the one written.
    fn read_committed(&self, group: GroupId) -> io::Result<Option<LogIdOf<C>>> {
        let pending = self.committed.lock().map_err(other)?.get(&group).cloned();
        match pending {
            Some(bytes) => decode::<Option<LogIdOf<C>>>(&bytes, &|| format!("group {group} committed")),
            None => Ok(self.read_meta::<Option<LogIdOf<C>>>(group, "committed")?.flatten()),
        }
    }

    /// The state of a partition this node replicates. The caller ensures a read is linearizable.
    pub fn state(&self, group: GroupId) -> Option<SharedState> {
        self.states.lock().ok()?.get(&group).cloned()
    }

    /// The (partitions, replicas) this database was created for, if recorded.
    pub fn cluster_shape(&self) -> io::Result<Option<(u32, u32)>> {
        self.read_meta(SHAPE_GROUP, "shape")
    }

    /// Records the (partitions, replicas) of the cluster.
    pub async fn set_cluster_shape(&self, shape: (u32, u32)) -> io::Result<()> {
        self.put_node_meta("shape", &shape).await
    }

    /// Records one of this node's own facts (durably, in the writer's next transaction).
    async fn put_node_meta<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.write(Box::new(move |txn| {
            txn.open_table(META).map_err(other)?.insert((SHAPE_GROUP, key), bytes.as_slice()).map_err(other)?;
            Ok(())
        }))
        .await
    }

    /// The latest cluster configuration this node had in force (as JSON), if it recorded one.
    pub fn config_record(&self) -> io::Result<Option<String>> {
        self.read_meta(SHAPE_GROUP, "config")
    }

    /// Records the configuration in force (as JSON, which reads back across versions of its fields).
    pub async fn set_config_record(&self, json: String) -> io::Result<()> {
        self.put_node_meta("config", &json).await
    }

    /// The founding members this node's cluster was created with, as the node recorded them when it bootstrapped.
    pub fn founders(&self) -> io::Result<Option<Vec<Member>>> {
        self.read_meta(SHAPE_GROUP, "founders")
    }

    /// Records the founding members.
    pub async fn set_founders(&self, founders: &[Member]) -> io::Result<()> {
        self.put_node_meta("founders", &founders).await
    }

    /// Whether this node initialized its founding groups once (a node never initializes a group twice: a group
    /// it left and rejoins is rebuilt from its leader).
    pub fn bootstrapped(&self) -> io::Result<bool> {
        Ok(self.read_meta::<bool>(SHAPE_GROUP, "bootstrapped")?.unwrap_or(false))
    }

    pub async fn set_bootstrapped(&self) -> io::Result<()> {
        self.put_node_meta("bootstrapped", &true).await
    }

    /// The groups with any stored state (a vote, log, or state machine).
    pub fn stored_groups(&self) -> io::Result<std::collections::BTreeSet<GroupId>> {
        let txn = self.db.begin_read().map_err(other)?;
        let meta = txn.open_table(META).map_err(other)?;
        let mut groups = std::collections::BTreeSet::new();
        for item in meta.iter().map_err(other)? {
            let (k, _) = item.map_err(other)?;
            let group = k.value().0;
            if group != SHAPE_GROUP {
                groups.insert(group);
            }
        }
        Ok(groups)
    }

    /// Deletes every row of a group this node no longer replicates (its log, vote, state and snapshot).
    pub async fn drop_group(&self, group: GroupId) -> io::Result<()> {
        if let Ok(mut states) = self.states.lock() {
            states.remove(&group);
        }
        if let Ok(mut committed) = self.committed.lock() {
            committed.remove(&group);
        }
        if let Ok(mut tails) = self.tails.lock() {
            tails.remove(&group);
        }
        let snapshot: Option<SnapshotRef> = self.read_meta(group, SNAPSHOT_KEY)?;
        self.write(Box::new(move |txn| {
            delete_entries(txn, group, 0, u64::MAX)?;
            let mut meta = txn.open_table(META).map_err(other)?;
            meta.retain_in((group, "")..(group + 1, ""), |_, _| false).map_err(other)
        }))
        .await?;
        if let Some(s) = snapshot {
            self.remove_snapshot_file(&s.file);
        }
        Ok(())
    }

    /// Reads one key of a group's state machine (the caller ensures the read is linearizable); `None` also for a
    /// group this node does not run.
    pub fn get(&self, group: GroupId, key: &str) -> io::Result<Option<String>> {
        let Some(state) = self.state(group) else { return Ok(None) };
        let state = state.lock().map_err(other)?;
        Ok(state.get(key).map(str::to_owned))
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Every trading row of one group, checked and decoded.
fn trade_rows(table: &impl ReadableTable<(u32, &'static [u8]), &'static [u8]>, group: GroupId) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for item in table.range((group, &[][..])..).map_err(other)? {
        let (k, v) = item.map_err(other)?;
        if k.value().0 != group {
            break;
        }
        rows.push(decode::<Row>(v.value(), &|| format!("group {group} trading row"))?);
    }
    Ok(rows)
}

/// Writes a snapshot's bytes (sealed with a CRC) to a new file in `dir`, durably: the file and the directory are
/// fsync'd before the name is returned. Blocking: call it off the async runtime.
fn write_snapshot_file(dir: &Path, group: GroupId, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<String> {
    use std::io::Write as _;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let index = meta.last_log_id.map_or(0, |l| l.index());
    let name = format!("g{group}-{index}-{nanos}.snap");
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&seal(data))?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(&name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(name)
}

/// Data directories written before the state machines moved to memory kept each group's state as rows (tables
/// `kv` and `trade`, meta keys `applied` and `membership`), written with every apply. Each group whose rows are
/// newer than its snapshot gets a snapshot of them; then the rows go, in one fsync'd transaction. A crash before
/// the commit leaves the rows, and the next start does it again.
fn migrate_state_rows(db: &Database, dir: &Path) -> io::Result<()> {
    let former = {
        let txn = db.begin_read().map_err(other)?;
        let names: Vec<String> = txn.list_tables().map_err(other)?.map(|t| t.name().to_owned()).collect();
        names.iter().any(|n| n == FORMER_KV.name() || n == FORMER_TRADE.name())
    };
    if !former {
        return Ok(());
    }
    let txn = db.begin_write().map_err(other)?;
    let mut replaced = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(other)?;
        let kv = txn.open_table(FORMER_KV).map_err(other)?;
        let trade = txn.open_table(FORMER_TRADE).map_err(other)?;
        let mut applied = Vec::new();
        for item in meta.iter().map_err(other)? {
            let (k, v) = item.map_err(other)?;
            let (group, key) = k.value();
            if key == "applied" {
                let at = decode::<Option<LogIdOf<C>>>(v.value(), &|| format!("group {group} applied"))?;
                applied.push((group, at));
            }
        }
        for (group, at) in applied {
            let current = snapshot_record(&meta, group)?;
            if at <= current.as_ref().and_then(|c| c.meta.last_log_id) {
                continue;
            }
            let mut rows = Vec::new();
            for item in kv.range((group, "")..(group + 1, "")).map_err(other)? {
                let (k, v) = item.map_err(other)?;
                let key = k.value().1;
                rows.push((key.to_owned(), decode::<String>(v.value(), &|| format!("group {group} key {key}"))?));
            }
            let membership = match meta.get((group, "membership")).map_err(other)? {
                Some(v) => decode(v.value(), &|| format!("group {group} membership"))?,
                None => StoredMembership::default(),
            };
            let snapshot_meta = SnapshotMetaOf::<C> { last_log_id: at, last_membership: membership };
            let blob = SnapshotBlob { kv: rows, trade: trade_rows(&trade, group)? };
            let data = postcard::to_allocvec(&blob).map_err(other)?;
            let file = write_snapshot_file(dir, group, &snapshot_meta, &data)?;
            let record = encode(&SnapshotRef { meta: snapshot_meta, file })?;
            meta.insert((group, SNAPSHOT_KEY), record.as_slice()).map_err(other)?;
            replaced.extend(current.map(|c| c.file));
        }
        meta.retain(|(_, key), _| key != "applied" && key != "membership").map_err(other)?;
    }
    txn.delete_table(FORMER_KV).map_err(other)?;
    txn.delete_table(FORMER_TRADE).map_err(other)?;
    txn.commit().map_err(other)?;
    for name in replaced {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

/// A group's meta row `key`, decoded.
fn read_meta<T: DeserializeOwned>(db: &Database, group: GroupId, key: &str) -> io::Result<Option<T>> {
    let txn = db.begin_read().map_err(other)?;
    let table = txn.open_table(META).map_err(other)?;
    match table.get((group, key)).map_err(other)? {
        Some(v) => decode(v.value(), &|| format!("group {group} {key}")).map(Some),
        None => Ok(None),
    }
}

/// A durable commit this slow is logged (each one holds up every partition's appends on the node).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How long appends may stay durable only in the write-ahead log before a checkpoint makes the database durable
/// and lets the log's records go.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes of write-ahead records after which a checkpoint is due whatever the time.
const CHECKPOINT_BYTES: usize = 32 << 20;
/// Where the node's meta rows record the last write-ahead record a durable commit of the database holds.
const WAL_KEY: &str = "wal";

/// The write-ahead log: raft-engine's append-only files, one record per batch of appends (see the module's
/// "Write-ahead log"). Records get consecutive sequence numbers; those after a checkpoint live in a raft-engine
/// region of their own (numbered by the first of them), which the next checkpoint cleans in one command.
struct Wal {
    engine: raft_engine::Engine,
    /// The last record's number (records up to it are written).
    seq: u64,
    /// The region this checkpoint's records go to.
    region: u64,
    /// Records and bytes written since the last checkpoint.
    records: u64,
    bytes: usize,
    since: std::time::Instant,
}

impl Wal {
    /// Opens the log in `dir`, replays into `db` every record a durable commit does not hold yet (in order, in
    /// one durable commit that then holds them all) and cleans the log. A record missing between the last
    /// checkpoint and a later record is corruption, reported, never skipped.
    fn open(dir: &Path, db: &Database) -> io::Result<Wal> {
        let cfg = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            recovery_mode: raft_engine::RecoveryMode::TolerateTailCorruption,
            recovery_threads: 1,
            batch_compression_threshold: raft_engine::ReadableSize(0),
            // Small files that are recycled, and three of them written out when the log is created: a record
            // then overwrites blocks the file system already holds, so its fsync flushes the data alone, where
            // an append to a fresh or preallocated file also writes the file's metadata (its size or extents
            // changed). raft-engine lets files go only once they total more than `purge_threshold`; a checkpoint
            // cleans every record before it purges, so nothing live is ever rewritten and a few files suffice.
            target_file_size: raft_engine::ReadableSize::mb(4),
            purge_threshold: raft_engine::ReadableSize::mb(8),
            enable_log_recycle: true,
            prefill_for_recycle: true,
            prefill_limit: Some(raft_engine::ReadableSize::mb(8)),
            ..Default::default()
        };
        let engine =
            raft_engine::Engine::open(cfg).map_err(|e| other(format!("write-ahead log {}: {e}", dir.display())))?;
        let checkpoint: u64 = read_meta(db, SHAPE_GROUP, WAL_KEY)?.unwrap_or(0);
        let regions = engine.raft_groups();
        let mut records = BTreeMap::new();
        for &region in &regions {
            let mut bad = None;
            engine
                .scan_raw_messages(region, None, None, false, |k, v| {
                    match <[u8; 8]>::try_from(k) {
                        Ok(k) if u64::from_be_bytes(k) > checkpoint => {
                            records.insert(u64::from_be_bytes(k), v.to_vec());
                        }
                        Ok(_) => {}
                        Err(_) => bad = Some(k.len()),
                    }
                    true
                })
                .map_err(other)?;
            if let Some(len) = bad {
                return Err(invalid(format!("write-ahead log: a record key of {len} bytes in region {region}")));
            }
        }
        let mut seq = checkpoint;
        if !records.is_empty() {
            let txn = db.begin_write().map_err(other)?;
            for (n, record) in &records {
                if *n != seq + 1 {
                    return Err(invalid(format!(
                        "write-ahead log: record {} is missing (after the checkpoint at {checkpoint}, record {n} is there)",
                        seq + 1
                    )));
                }
                let rows: Vec<(GroupId, Vec<EncodedEntry>)> = decode(record, &|| format!("write-ahead record {n}"))?;
                for (group, rows) in rows {
                    insert_entries(&txn, group, &rows)?;
                }
                seq = *n;
            }
            put_wal_mark(&txn, seq)?;
            txn.commit().map_err(other)?;
            tracing::info!("replayed {} write-ahead records ({}..={seq})", records.len(), checkpoint + 1);
        }
        let wal = Wal { engine, seq, region: seq + 1, records: 0, bytes: 0, since: std::time::Instant::now() };
        wal.clean(&regions)?;
        Ok(wal)
    }

    /// Writes one record of appends and fsyncs it.
    fn append(&mut self, appends: &Record<'_>) -> io::Result<()> {
        let record = encode(&appends)?;
        let n = self.seq + 1;
        let mut batch = raft_engine::LogBatch::default();
        self.bytes += record.len();
        batch.put(self.region, n.to_be_bytes().to_vec(), record).map_err(other)?;
        self.engine.write(&mut batch, true).map_err(|e| other(format!("write-ahead log: {e}")))?;
        self.seq = n;
        self.records += 1;
        Ok(())
    }

    /// Whether records wait for a checkpoint.
    fn pending(&self) -> bool {
        self.records > 0
    }

    /// Whether a checkpoint is due whatever else happens.
    fn due(&self) -> bool {
        self.pending() && (self.bytes >= CHECKPOINT_BYTES || self.since.elapsed() >= CHECKPOINT_EVERY)
    }

    /// After a durable commit that holds every record so far: lets the records go (not fsync'd: records a crash
    /// brings back are older than the checkpoint, and replay skips them) and starts a new region.
    fn checkpointed(&mut self) -> io::Result<()> {
        let used = [self.region];
        self.region = self.seq + 1;
        if self.records > 0 {
            self.clean(&used)?;
        }
        (self.records, self.bytes, self.since) = (0, 0, std::time::Instant::now());
        Ok(())
    }

    fn clean(&self, regions: &[u64]) -> io::Result<()> {
        if regions.is_empty() {
            return Ok(());
        }
        let mut batch = raft_engine::LogBatch::default();
        for &region in regions {
            batch.add_command(region, raft_engine::Command::Clean);
        }
        self.engine.write(&mut batch, false).map_err(|e| other(format!("write-ahead log: {e}")))?;
        self.engine.purge_expired_files().map_err(|e| other(format!("write-ahead log: {e}")))?;
        Ok(())
    }
}

fn write_loop(
    db: &Database,
    rx: &std_mpsc::Receiver<Job>,
    committed: &PendingCommitted,
    stats: &StoreStats,
    mut wal: Wal,
) {
    // Appends their write-ahead records made durable, not yet in the database: the next durable commit inserts
    // them, in order, before its own writes (until then their tails hold them for every read).
    let mut deferred: Vec<Appends> = Vec::new();
    loop {
        let (batch, closing) = match rx.recv_timeout(IDLE_FLUSH) {
            Ok(first) => {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                (batch, false)
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => (Vec::new(), false),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => (Vec::new(), true),
        };
        let pending = committed.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        // A checkpoint: when due, when the writer is idle, and when the store closes.
        let checkpoint = wal.pending() && (wal.due() || batch.is_empty() || closing);
        if batch.is_empty() && pending.is_empty() && !checkpoint {
            if closing {
                return;
            }
            continue;
        }
        // Nothing but appends: one write-ahead record makes them durable, and the database takes them at the next
        // durable commit. Anything else (a vote, a truncation, a purge, a snapshot record...) and a checkpoint make
        // the database's commit durable, which then holds every record written before it.
        let only_appends = !batch.is_empty() && batch.iter().all(|j| j.appends.is_some());
        let durable = checkpoint || closing || (!batch.is_empty() && !only_appends);
        let logged = only_appends && !durable;
        use std::sync::atomic::Ordering::Relaxed;
        stats.commits.fetch_add(1, Relaxed);
        stats.durable_commits.fetch_add(u64::from(durable), Relaxed);
        stats.wal_records.fetch_add(u64::from(logged), Relaxed);
        stats.writes.fetch_add((batch.len() + pending.len()) as u64, Relaxed);
        let started = std::time::Instant::now();
        let mut written = started;
        let count = batch.len();
        let mut dones: Vec<Done> = Vec::with_capacity(count);
        let result = if logged {
            let result = (|| {
                if !pending.is_empty() {
                    let mut txn = db.begin_write().map_err(other)?;
                    txn.set_durability(Durability::None).map_err(other)?;
                    put_committed(&txn, &pending)?;
                    txn.commit().map_err(other)?;
                }
                written = std::time::Instant::now();
                let record: Vec<(GroupId, &[EncodedEntry])> =
                    batch.iter().filter_map(|j| j.appends.as_ref()).map(|a| (a.group, a.rows.as_slice())).collect();
                wal.append(&record)
            })();
            for job in batch {
                dones.push(job.done);
                if let (Ok(()), Some(appends)) = (&result, job.appends) {
                    deferred.push(appends);
                }
            }
            result
        } else {
            let mut stored: Vec<Stored> = Vec::new();
            let mut writes: Vec<Write> = Vec::with_capacity(count);
            for job in batch {
                writes.push(job.write);
                dones.push(job.done);
                stored.extend(job.appends.map(|a| a.stored));
            }
            let result = (|| {
                let mut txn = db.begin_write().map_err(other)?;
                if !durable {
                    txn.set_durability(Durability::None).map_err(other)?;
                } else {
                    for a in &deferred {
                        insert_entries(&txn, a.group, &a.rows)?;
                    }
                }
                for w in writes {
                    w(&txn)?;
                }
                put_committed(&txn, &pending)?;
                if durable {
                    put_wal_mark(&txn, wal.seq)?;
                }
                written = std::time::Instant::now();
                txn.commit().map_err(other)?;
                if durable {
                    wal.checkpointed()?;
                }
                Ok::<(), io::Error>(())
            })();
            if result.is_ok() && durable {
                for a in deferred.drain(..) {
                    (a.stored)();
                }
                for s in stored {
                    s();
                }
            }
            result
        };
        if let Err(e) = &result {
            tracing::error!("storage commit failed: {e}");
        } else if durable || logged {
            let took = started.elapsed();
            let histogram = if durable { &stats.durable_commit_seconds } else { &stats.wal_record_seconds };
            if let Ok(mut h) = histogram.lock() {
                h.record(took);
            }
            // Every partition's appends on this node waited for it: worth a line in the log.
            if took >= SLOW_COMMIT {
                tracing::warn!(
                    "slow storage commit: {} ms ({} ms for its {count} writes, {} ms to commit and fsync)",
                    took.as_millis(),
                    (written - started).as_millis(),
                    written.elapsed().as_millis()
                );
            }
        }
        for done in dones {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
        if closing {
            return;
        }
    }
}

/// Records that the database holds every write-ahead record up to `seq`.
fn put_wal_mark(txn: &WriteTransaction, seq: u64) -> io::Result<()> {
    txn.open_table(META).map_err(other)?.insert((SHAPE_GROUP, WAL_KEY), encode(&seq)?.as_slice()).map_err(other)?;
    Ok(())
}

/// Writes each group's latest committed index.
fn put_committed(txn: &WriteTransaction, pending: &BTreeMap<GroupId, Vec<u8>>) -> io::Result<()> {
    let mut meta = txn.open_table(META).map_err(other)?;
    for (group, bytes) in pending {
        meta.insert((*group, "committed"), bytes.as_slice()).map_err(other)?;
    }
    Ok(())
}

fn bounds(group: GroupId, range: impl RangeBounds<u64>) -> Option<((u32, u64), (u32, u64))> {
    let lo = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (lo <= hi).then_some(((group, lo), (group, hi)))
}

fn insert_entries(txn: &WriteTransaction, group: GroupId, rows: &[EncodedEntry]) -> io::Result<()> {
    let mut table = txn.open_table(LOGS).map_err(other)?;
    for (i, bytes) in rows {
        table.insert((group, *i), bytes.as_slice()).map_err(other)?;
    }
    Ok(())
}

fn delete_entries(txn: &WriteTransaction, group: GroupId, lo: u64, hi: u64) -> io::Result<()> {
    let mut table = txn.open_table(LOGS).map_err(other)?;
    let keys: Vec<u64> = table
        .range((group, lo)..=(group, hi))
        .map_err(other)?
        .map(|item| item.map(|(k, _)| k.value().1).map_err(other))
        .collect::<io::Result<_>>()?;
    for i in keys {
        table.remove((group, i)).map_err(other)?;
    }
    Ok(())
}

/// One partition's Raft log.
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Arc<Store>,
    group: GroupId,
    tail: SharedTail,
}

impl LogStore {
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<C>>> {
        let Some((lo, hi)) = bounds(self.group, range) else { return Ok(Vec::new()) };
        let mut out: BTreeMap<u64, EntryOf<C>> = {
            let tail = self.tail.lock().map_err(other)?;
            if let Some(entries) = tail.read(lo.1, hi.1) {
                return Ok(entries);
            }
            // The tail first: an entry that commits meanwhile is then in the database read below. Where both hold
            // an index, the tail's entry is the newer.
            tail.entries.range(lo.1..=hi.1).map(|(i, c)| (*i, c.entry.clone())).collect()
        };
        let txn = self.store.db.begin_read().map_err(other)?;
        let table = txn.open_table(LOGS).map_err(other)?;
        for item in table.range(lo..=hi).map_err(other)? {
            let (k, v) = item.map_err(other)?;
            let (g, i) = k.value();
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(i) {
                slot.insert(decode(v.value(), &|| format!("group {g} log entry {i}"))?);
            }
        }
        Ok(out.into_values().collect())
    }

    fn last_entry(&self) -> io::Result<Option<EntryOf<C>>> {
        if let Some((_, c)) = self.tail.lock().map_err(other)?.entries.last_key_value() {
            return Ok(Some(c.entry.clone()));
        }
        let txn = self.store.db.begin_read().map_err(other)?;
        let table = txn.open_table(LOGS).map_err(other)?;
        match table.range((self.group, 0)..=(self.group, u64::MAX)).map_err(other)?.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(other)?;
                let (g, i) = k.value();
                Ok(Some(decode::<EntryOf<C>>(v.value(), &|| format!("group {g} log entry {i}"))?))
            }
            None => Ok(None),
        }
    }

    /// Forgets the tail's entries in `lo..=hi` once their removal from the database committed.
    fn forget(&self, lo: u64, hi: u64) -> io::Result<()> {
        self.tail.lock().map_err(other)?.forget(lo, hi);
        Ok(())
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        let group = self.group;
        let write: Write = Box::new(move |txn| {
            txn.open_table(META).map_err(other)?.insert((group, key), bytes.as_slice()).map_err(other)?;
            Ok(())
        });
        self.store.write(write).await
    }

    /// Deletes the entries of this group with index in `lo..=hi`.
    async fn delete_range(&self, lo: u64, hi: u64) -> io::Result<()> {
        let group = self.group;
        self.store.write(Box::new(move |txn| delete_entries(txn, group, lo, hi))).await?;
        self.forget(lo, hi)
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        self.entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.store.read_meta(self.group, "vote")
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged: Option<LogIdOf<C>> = self.store.read_meta(self.group, "purged")?;
        let last = self.last_entry()?.map(|e| e.log_id()).max(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta("vote", vote).await
    }

    /// Kept in memory until the writer's next transaction (see the module's "Group commit"): a `committed`
    /// lost in a crash only means a restarted replica re-applies up to an older index and catches up from its
    /// leader; every read is served by a leader after a ReadIndex round, which covers every entry committed
    /// before it.
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let bytes = encode(&committed)?;
        self.store.committed.lock().map_err(other)?.insert(self.group, bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        self.store.read_committed(self.group)
    }

    /// Returns once the entries are queued for the writer and readable (from the tail until they commit); the
    /// callback hears back once the transaction holding them is fsync'd. openraft calls this inside a group's
    /// core loop: the group goes on (sends the entries to its followers, takes the next writes) while the disk
    /// works.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<EntryOf<C>> = entries.into_iter().collect();
        let rows: Vec<(u64, Vec<u8>)> =
            match entries.iter().map(|e| Ok((e.index(), encode(e)?))).collect::<io::Result<_>>() {
                Ok(rows) => rows,
                Err(e) => {
                    callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
        let ids: Vec<LogIdOf<C>> = entries.iter().map(|e| e.log_id()).collect();
        {
            let mut tail = self.tail.lock().map_err(other)?;
            for (entry, (_, bytes)) in entries.into_iter().zip(&rows) {
                tail.insert(entry, bytes.len());
            }
        }
        let group = self.group;
        let rows: Rows = Arc::new(rows);
        let write: Write = Box::new({
            let rows = rows.clone();
            move |txn| insert_entries(txn, group, &rows)
        });
        let tail = self.tail.clone();
        let stored: Stored = Box::new(move || {
            // Readable from the database now: the tail may let them go.
            if let Ok(mut t) = tail.lock() {
                t.made_durable(&ids);
            }
        });
        // Reported only once the entries are durable (their transaction or write-ahead record fsync'd), or failed.
        let done: Done = Box::new(move |result| callback.io_completed(result));
        self.store.queue(Job { write, done, appends: Some(Appends { group, rows, stored }) })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        self.delete_range(from, u64::MAX).await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // The purge point and the deletion in one transaction: a crash leaves both or neither, never a purge
        // point ahead of the last entry (which openraft would refuse as a corrupted log).
        let bytes = encode(&log_id)?;
        let (group, upto) = (self.group, log_id.index());
        self.store
            .write(Box::new(move |txn| {
                txn.open_table(META).map_err(other)?.insert((group, "purged"), bytes.as_slice()).map_err(other)?;
                delete_entries(txn, group, 0, upto)
            }))
            .await?;
        self.forget(0, upto)
    }
}

/// A snapshot's contents: the state machine of one group at `meta.last_log_id`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBlob {
    kv: Vec<(String, String)>,
    trade: Vec<Row>,
}

/// The same contents encoded from a view of a state (postcard writes a map as a sequence of pairs, so it decodes
/// as a [`SnapshotBlob`]).
#[derive(Serialize)]
struct SnapshotBlobRef<'a> {
    kv: KvRows<'a>,
    trade: &'a RowsView,
}

/// A group's key-value rows, encoded as a map.
struct KvRows<'a>(&'a Kv);

impl Serialize for KvRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A group's key-value state. Persistent: a snapshot takes it in constant time.
type Kv = imbl::OrdMap<String, String>;

/// A group's current snapshot: its metadata in the database (meta key [`SNAPSHOT_KEY`]), its bytes in a file of
/// their own under the `snapshots` directory beside the database.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRef {
    meta: SnapshotMetaOf<C>,
    file: String,
}

const SNAPSHOT_KEY: &str = "snapshot-file";

/// A group's snapshot record, read inside a write transaction.
fn snapshot_record(
    table: &impl ReadableTable<(u32, &'static str), &'static [u8]>,
    group: GroupId,
) -> io::Result<Option<SnapshotRef>> {
    match table.get((group, SNAPSHOT_KEY)).map_err(other)? {
        Some(v) => decode(v.value(), &|| format!("group {group} snapshot")).map(Some),
        None => Ok(None),
    }
}

/// One partition's replicated state, held in memory. Its durable form is the group's latest snapshot plus the
/// committed log entries after it.
#[derive(Debug)]
pub struct GroupState {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    kv: Kv,
    shard: Shard,
}

impl GroupState {
    fn new(group: GroupId) -> GroupState {
        GroupState { applied: None, membership: StoredMembership::default(), kv: Kv::new(), shard: Shard::new(group) }
    }

    /// The state a snapshot holds, checked whole (the trading rows must restore a consistent shard).
    fn from_snapshot(group: GroupId, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<GroupState> {
        let blob: SnapshotBlob = postcard::from_bytes(data)
            .map_err(|e| invalid(format!("snapshot of group {group} at {:?}: {e}", meta.last_log_id)))?;
        let shard =
            Shard::restore(group, blob.trade).map_err(|e| invalid(format!("snapshot of group {group}: {e}")))?;
        Ok(GroupState {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            kv: blob.kv.into_iter().collect(),
            shard,
        })
    }

    /// A key-value row.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }

    /// The trading state.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Applies one committed entry; its operations move into the state (an entry is applied once).
    fn apply(&mut self, entry: &mut EntryOf<C>) -> Vec<OpOutcome> {
        let log_id = entry.log_id();
        let mut outcomes = Vec::new();
        match &mut entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(command) => {
                let at_ms = command.at_ms;
                outcomes.reserve_exact(command.ops.len());
                for op in std::mem::take(&mut command.ops) {
                    outcomes.push(match op {
                        Op::Put { key, value } => {
                            self.kv.insert(key, value);
                            OpOutcome::Done
                        }
                        Op::Delete { key } => {
                            self.kv.remove(&key);
                            OpOutcome::Done
                        }
                        Op::SetConfig { epoch, json } => {
                            // A configuration applies only on top of the one before it: a stale proposal changes
                            // nothing.
                            let current =
                                self.kv.get(CONFIG_EPOCH_KEY).and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
                            if epoch == current + 1 {
                                self.kv.insert(CONFIG_KEY.to_owned(), json);
                                self.kv.insert(CONFIG_EPOCH_KEY.to_owned(), epoch.to_string());
                            }
                            OpOutcome::Done
                        }
                        Op::Trade(command) => OpOutcome::Trade(self.shard.apply(&Stamped { at_ms, command })),
                    });
                }
            }
            EntryPayload::Membership(m) => self.membership = StoredMembership::new(Some(log_id), m.clone()),
        }
        self.applied = Some(log_id);
        outcomes
    }
}

/// One partition's state machine: its state in memory, its snapshots in files.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<Store>,
    group: GroupId,
    state: SharedState,
}

/// A snapshot about to be built: a view of the state as it was when the build was asked for (later applies do not
/// change it), encoded and written to its file while the group goes on applying.
#[derive(Debug)]
pub struct SnapshotView {
    store: Arc<Store>,
    group: GroupId,
    /// The state's metadata and rows, or why they could not be taken.
    taken: Option<io::Result<(SnapshotMetaOf<C>, Kv, RowsView)>>,
}

impl RaftSnapshotBuilder<C> for SnapshotView {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Cursor<Vec<u8>>>, io::Error> {
        let (meta, kv, trade) = self.taken.take().unwrap_or_else(|| Err(other("the snapshot was already built")))?;
        let started = std::time::Instant::now();
        let encode = move || postcard::to_allocvec(&SnapshotBlobRef { kv: KvRows(&kv), trade: &trade }).map_err(other);
        let data = tokio::task::spawn_blocking(encode).await.map_err(other)??;
        let encoded = started.elapsed();
        let data = self.store.record_snapshot(self.group, &meta, data, true).await?;
        tracing::info!(
            "{}: snapshot at {} built, {} bytes, encoded in {} ms, written and recorded in {} ms",
            crate::node::group_name(self.group),
            meta.last_log_id.map_or(0, |l| l.index()),
            data.len(),
            encoded.as_millis(),
            (started.elapsed() - encoded).as_millis()
        );
        Ok(SnapshotOf::<C, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = SnapshotView;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let state = self.state.lock().map_err(other)?;
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        let mut answers = Vec::with_capacity(batch.len());
        {
            let mut state = self.state.lock().map_err(other)?;
            for (mut entry, responder) in batch {
                let outcomes = state.apply(&mut entry);
                answers.push((responder, CommandResult { index: entry.index(), outcomes }));
            }
        }
        // The entries are committed in the Raft log (durable on a quorum), which is what an answer promises, and
        // the state above already shows them to any reader.
        for (responder, result) in answers {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Called between applies: the view is of one applied index, whatever is applied while it is encoded. The
        // key-value rows, orders, refusals and holds are persistent maps, shared with the view rather than copied,
        // so the partition's applies wait only for its products to be copied.
        let taken = self.state.lock().map_err(other).map(|state| {
            let meta = SnapshotMetaOf::<C> { last_log_id: state.applied, last_membership: state.membership.clone() };
            (meta, state.kv.clone(), state.shard.rows_view())
        });
        SnapshotView { store: self.store.clone(), group: self.group, taken: Some(taken) }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let group = self.group;
        // Checked whole before anything is written; then its file and its record.
        let installed = GroupState::from_snapshot(group, meta, &data)?;
        self.store.record_snapshot(group, meta, data, false).await?;
        *self.state.lock().map_err(other)? = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        Ok(self
            .store
            .current_snapshot(self.group)?
            .map(|(meta, data)| SnapshotOf::<C, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(data) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies every file of `from` into `to` (created), as a crash would leave them.
    fn copy_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("dir");
        for f in std::fs::read_dir(from).expect("dir") {
            let f = f.expect("file");
            std::fs::copy(f.path(), to.join(f.file_name())).expect("copy");
        }
    }

    /// Entry `index` of `term`, putting `value` under `k{index}`.
    fn put_entry(term: u64, index: u64, value: String) -> EntryOf<C> {
        use openraft::entry::RaftEntry;
        let put = Op::Put { key: format!("k{index}"), value };
        EntryOf::<C>::new_normal(
            openraft::testing::log_id::<C>(term, 1, index),
            crate::types::Command { at_ms: index, ops: vec![put] },
        )
    }

    /// A snapshot encoded from a view of a state decodes as the stored form, row for row, and shows the state as
    /// it was when the view was taken, whatever was applied after.
    #[test]
    fn a_snapshot_view_decodes_as_a_snapshot_blob_of_the_state_when_it_was_taken() {
        use rampart_trading::{Command, Item, Sku, UserId};
        let order = |n: u64| Stamped {
            at_ms: 10 + n,
            command: Command::PlaceOrder {
                user_id: UserId(format!("u{n}").into()),
                idempotency_key: format!("k{n}"),
                items: vec![Item { sku: Sku("s".into()), qty: 1 }],
                pay_deadline_ms: 1_000,
                remote: BTreeMap::new(),
            },
        };
        let mut kv: Kv = [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())].into_iter().collect();
        let mut shard = Shard::new(3);
        let create = Command::CreateProduct {
            sku: Sku("s".into()),
            name: "s".into(),
            price_cents: 5,
            stock: 9,
            max_per_user: None,
        };
        shard.apply(&Stamped { at_ms: 1, command: create });
        for n in 0..3 {
            shard.apply(&order(n));
        }
        // A remembered refusal, a saga hold, a tombstone (a closed hold) and the cut-off of closed holds forgotten:
        // every kind of row is in the view.
        let too_many = Command::PlaceOrder {
            user_id: UserId("greedy".into()),
            idempotency_key: "k".into(),
            items: vec![Item { sku: Sku("s".into()), qty: 100 }],
            pay_deadline_ms: 1_000,
            remote: BTreeMap::new(),
        };
        shard.apply(&Stamped { at_ms: 5, command: too_many });
        let leg = Command::ReserveLeg {
            order_id: rampart_trading::OrderId::new(9, 1),
            user_id: UserId("far".into()),
            items: vec![Item { sku: Sku("s".into()), qty: 1 }],
            placed_ms: 6,
        };
        shard.apply(&Stamped { at_ms: 6, command: leg });
        let tombstone = Command::Release { order_id: rampart_trading::OrderId::new(9, 2) };
        shard.apply(&Stamped { at_ms: 7, command: tombstone });
        shard.apply(&Stamped { at_ms: 8, command: Command::Expire { forget_before_ms: 1 } });
        let (kv_then, rows_then) = (kv.clone(), shard.rows());
        let (kv_view, rows_view) = (kv.clone(), shard.rows_view());
        kv.insert("c".to_owned(), "3".to_owned());
        for n in 3..5 {
            shard.apply(&order(n));
        }
        assert_ne!(shard.rows(), rows_then, "the state moved on after the view was taken");
        let bytes =
            postcard::to_allocvec(&SnapshotBlobRef { kv: KvRows(&kv_view), trade: &rows_view }).expect("encode");
        let blob: SnapshotBlob = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(blob.kv, kv_then.into_iter().collect::<Vec<_>>());
        assert_eq!(blob.trade, rows_then);
        let count = |f: fn(&Row) -> bool| blob.trade.iter().filter(|r| f(r)).count();
        assert_eq!(count(|r| matches!(r, Row::Order(_))), 3);
        assert_eq!(count(|r| matches!(r, Row::Refusal { .. })), 1);
        assert_eq!(count(|r| matches!(r, Row::Hold(_))), 1);
        assert_eq!(count(|r| matches!(r, Row::ClosedHold { .. })), 1);
        assert_eq!(count(|r| matches!(r, Row::HoldsForgotten { before_ms: 1 })), 1);
    }

    /// The log reads the same through the tail as from the database: past the tail's bounds, after a truncation
    /// and a purge, and across a restart (when the tail starts empty).
    #[tokio::test]
    async fn the_log_reads_alike_from_its_tail_and_from_the_database() {
        use openraft::entry::RaftEntry;
        use openraft::storage::IOFlushed;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("rampart.redb");
        let entry = |term: u64, i: u64| put_entry(term, i, format!("{term}-{i}-{}", "x".repeat(5_000)));
        async fn append(log: &mut LogStore, entries: Vec<EntryOf<C>>) {
            let (tx, rx) = <C as openraft::type_config::TypeConfigExt>::oneshot();
            log.append(entries, IOFlushed::signal(tx)).await.expect("append");
            rx.await.expect("flushed").expect("durable");
        }
        let values = |entries: Vec<EntryOf<C>>| -> Vec<(u64, u64)> {
            entries.iter().map(|e| (e.log_id().leader_id.term, e.index())).collect()
        };
        let store = Store::open(&path).expect("open");
        let mut log = store.log(7);
        // 1,000 entries of 5 KB: the tail keeps about 200 of them (1 MiB), the rest only the database holds.
        for from in (1..=1_000).step_by(100) {
            append(&mut log, (from..from + 100).map(|i| entry(1, i)).collect()).await;
        }
        let tail_first = |log: &LogStore| *log.tail.lock().expect("tail").entries.keys().next().expect("a tail");
        // Durable in write-ahead records only: the tail holds every entry until the database does.
        assert_eq!(tail_first(&log), 1);
        // A durable commit (a vote) is a checkpoint: the database takes the entries, and the tail lets them go.
        log.save_vote(&VoteOf::<C>::new(1, 1)).await.expect("vote");
        let first = tail_first(&log);
        assert!(first > 700 && first < 1_000, "the tail is bounded: it starts at {first}");
        let all = |lo: u64, hi: u64, term_from: u64| -> Vec<(u64, u64)> {
            (lo..=hi).map(|i| (if i >= term_from { 2 } else { 1 }, i)).collect()
        };
        assert_eq!(values(log.try_get_log_entries(1..=1_000).await.expect("read")), all(1, 1_000, u64::MAX));
        assert_eq!(values(log.try_get_log_entries(990..).await.expect("read")), all(990, 1_000, u64::MAX));
        assert_eq!(values(log.try_get_log_entries(600..=650).await.expect("read")), all(600, 650, u64::MAX));
        // A new leader's entries replace the last 100: the tail then holds none of the old ones.
        log.truncate_after(Some(openraft::testing::log_id::<C>(1, 1, 900))).await.expect("truncate");
        assert_eq!(log.last_entry().expect("last").map(|e| e.index()), Some(900));
        append(&mut log, (901..=950).map(|i| entry(2, i)).collect()).await;
        assert_eq!(values(log.try_get_log_entries(850..).await.expect("read")), all(850, 950, 901));
        log.purge(openraft::testing::log_id::<C>(1, 1, 899)).await.expect("purge");
        assert_eq!(values(log.try_get_log_entries(900..).await.expect("read")), all(900, 950, 901));
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(950));
        drop(log);
        drop(store);
        let store = Store::open(&path).expect("reopen");
        let mut log = store.log(7);
        assert!(log.tail.lock().expect("tail").entries.is_empty());
        assert_eq!(values(log.try_get_log_entries(900..).await.expect("read")), all(900, 950, 901));
        assert_eq!(log.get_log_state().await.expect("state").last_log_id.map(|l| l.index()), Some(950));
    }

    /// Appends made durable only by the write-ahead log (the database's commit holding them not fsync'd) are back
    /// after a crash that lost that commit: the database as its last durable commit left it, with the log as it
    /// was written since, opens with every acknowledged entry. A record missing between the checkpoint and a later
    /// record is reported, never skipped.
    #[tokio::test]
    async fn appends_durable_only_in_the_write_ahead_log_survive_the_loss_of_the_database_commit() {
        use openraft::entry::RaftEntry;
        use openraft::storage::IOFlushed;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (live, crashed) = (dir.path().join("live"), dir.path().join("crashed"));
        for d in [&live, &crashed] {
            std::fs::create_dir_all(d).expect("dir");
        }
        let store = Store::open(&live.join("rampart.redb")).expect("open");
        let mut log = store.log(7);
        log.save_vote(&VoteOf::<C>::new(1, 1)).await.expect("vote");
        // The vote's commit was durable and the writer is idle: the database file as a crash now would leave it.
        std::fs::copy(live.join("rampart.redb"), crashed.join("rampart.redb")).expect("copy");
        let entries: Vec<EntryOf<C>> = (1..=3).map(|i| put_entry(1, i, format!("v{i}"))).collect();
        let (tx, rx) = <C as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("flushed").expect("durable");
        let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted(&store.stats.durable_commits), 1, "the vote's commit");
        assert_eq!(counted(&store.stats.wal_records), 1, "the appends went to the write-ahead log alone");
        // The log as the crash leaves it (its record fsync'd before the append was acknowledged).
        copy_files(&live.join("wal"), &crashed.join("wal"));
        drop(log);
        drop(store);
        let store = Store::open(&crashed.join("rampart.redb")).expect("reopen");
        let mut log = store.log(7);
        let back = log.try_get_log_entries(1..=3).await.expect("read");
        assert_eq!(back.iter().map(|e| e.index()).collect::<Vec<_>>(), vec![1, 2, 3], "every acknowledged entry");
        assert_eq!(log.read_vote().await.expect("vote"), Some(VoteOf::<C>::new(1, 1)));
        drop(log);
        drop(store);

        // A log whose first record after the checkpoint is gone.
        let gap = dir.path().join("gap");
        std::fs::create_dir_all(gap.join("wal")).expect("dir");
        {
            let cfg = raft_engine::Config { dir: gap.join("wal").to_string_lossy().into_owned(), ..Default::default() };
            let engine = raft_engine::Engine::open(cfg).expect("engine");
            let mut batch = raft_engine::LogBatch::default();
            batch.put(1, 2u64.to_be_bytes().to_vec(), seal(b"x")).expect("put");
            engine.write(&mut batch, true).expect("write");
        }
        let e = Store::open(&gap.join("rampart.redb")).expect_err("a gap in the write-ahead log");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("record 1 is missing"), "{e}");
    }

    /// The write-ahead log's files are recycled once their records are checkpointed: 40 MiB of records leave the
    /// log's directory no larger than its live file and the few it keeps for reuse, written out in advance so
    /// that a record overwrites blocks rather than growing a file.
    #[tokio::test]
    async fn the_write_ahead_files_are_reused_not_accumulated() {
        use openraft::storage::IOFlushed;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(&dir.path().join("rampart.redb")).expect("open");
        let wal = dir.path().join("wal");
        let size = || -> u64 {
            std::fs::read_dir(&wal).expect("wal").map(|f| f.expect("file").metadata().expect("metadata").len()).sum()
        };
        let reserved = std::fs::read_dir(&wal)
            .expect("wal")
            .filter(|f| f.as_ref().expect("file").file_name().to_string_lossy().ends_with(".reserved"))
            .count();
        assert_eq!(reserved, 3, "files written out for reuse when the log is created");
        let mut log = store.log(7);
        for round in 0..40u64 {
            // About 1 MiB of appends: one write-ahead record.
            let entries: Vec<EntryOf<C>> =
                (1..=100).map(|i| put_entry(1, round * 100 + i, "x".repeat(10_000))).collect();
            let (tx, rx) = <C as openraft::type_config::TypeConfigExt>::oneshot();
            log.append(entries, IOFlushed::signal(tx)).await.expect("append");
            rx.await.expect("flushed").expect("durable");
            // A vote is a durable commit of the database: a checkpoint, after which the record is let go.
            log.save_vote(&VoteOf::<C>::new(round + 1, 1)).await.expect("vote");
        }
        let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(counted(&store.stats.wal_records), 40, "each batch of appends was one write-ahead record");
        assert!(size() <= 24 << 20, "the log's files after 40 MiB of records: {} bytes", size());
        let last = log.get_log_state().await.expect("state").last_log_id.map(|l| l.index);
        assert_eq!(last, Some(4_000), "every entry is still there");
        // Killed now (its files copied as they are), it opens with every entry, and its files are numbered without
        // a gap (raft-engine skips any file below a gap at open, and leaves it on disk).
        let crashed = dir.path().join("crashed");
        copy_files(&wal, &crashed.join("wal"));
        std::fs::copy(dir.path().join("rampart.redb"), crashed.join("rampart.redb")).expect("copy");
        let numbers = |dir: &Path| -> Vec<u64> {
            let mut seqs: Vec<u64> = std::fs::read_dir(dir)
                .expect("wal")
                .filter_map(|f| f.expect("file").file_name().to_str()?.strip_suffix(".raftlog")?.parse().ok())
                .collect();
            seqs.sort_unstable();
            seqs
        };
        drop(log);
        drop(store);
        let store = Store::open(&crashed.join("rampart.redb")).expect("reopen");
        let seqs = numbers(&crashed.join("wal"));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "log files after the crash: {seqs:?}");
        let last = store.log(7).get_log_state().await.expect("state").last_log_id.map(|l| l.index);
        assert_eq!(last, Some(4_000), "every entry survives the crash");
    }

    /// A data directory of the former layout (state as rows) opens with its state intact, now in a snapshot.
    #[test]
    fn state_rows_of_the_former_layout_become_a_snapshot() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("rampart.redb");
        let applied = Some(openraft::testing::log_id::<C>(2, 1, 41));
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert((5, "applied"), encode(&applied).expect("encode").as_slice()).expect("insert");
                meta.insert((5, "vote"), encode(&7u8).expect("encode").as_slice()).expect("insert");
                let mut kv = txn.open_table(FORMER_KV).expect("kv");
                kv.insert((5, "k"), encode(&"v".to_owned()).expect("encode").as_slice()).expect("insert");
                kv.insert((6, "other"), encode(&"w".to_owned()).expect("encode").as_slice()).expect("insert");
                txn.open_table(FORMER_TRADE).expect("trade");
            }
            txn.commit().expect("commit");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let store = Store::open(&path).expect("open");
            let mut sm = store.state_machine(5).expect("state machine");
            assert_eq!(sm.applied_state().await.expect("applied").0, applied);
            assert_eq!(store.get(5, "k").expect("get"), Some("v".to_owned()));
            assert_eq!(store.get(5, "other").expect("get"), None, "groups stay apart");
            let snapshot = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
            assert_eq!(snapshot.meta.last_log_id, applied);
            assert_eq!(store.read_meta::<u8>(5, "vote").expect("vote"), Some(7), "the rest of the meta rows stay");
            assert_eq!(store.read_meta::<Option<LogIdOf<C>>>(5, "applied").expect("applied"), None);
            let txn = store.db.begin_read().expect("read");
            assert!(txn.list_tables().expect("tables").all(|t| t.name() != "kv" && t.name() != "trade"));
        });
    }
}
