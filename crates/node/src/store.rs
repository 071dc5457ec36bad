//! Durable storage for every partition's Raft log and state machine, in one redb database per node.
//!
//! **Durability contract** (openraft's, honoured exactly): a vote or an appended entry is reported saved only
//! after the redb transaction holding it committed with `Durability::Immediate` (fsync); the state machine's
//! `last_applied` and membership are written in the same transaction as the changes they describe.
//!
//! **Group commit:** all partitions share one writer thread. It takes every write waiting in its queue (up to
//! [`BATCH_MAX`]), applies them in one transaction and commits once, so one fsync covers many groups' appends
//! and votes; then it wakes every waiter. A batch holding only state-machine applies and committed indexes
//! commits without an fsync (`Flush::Lazy`): the entries are durable in the log, and a crash rolls the database
//! back to its last fsync'd commit, from which openraft re-applies. A failed commit fails every write in that
//! batch (nothing of it is visible), and openraft stops the group rather than run on a log it cannot trust.
//!
//! **Snapshots** live in files of their own (`snapshots/` beside the database), written and fsync'd outside the
//! writer thread, so a partition's large snapshot never holds up every partition's commits; the database records
//! which file is a group's current snapshot, in an fsync'd commit (which also makes every earlier apply durable).
//! Files no record names are deleted at start.
//!
//! **Integrity:** every stored value and snapshot file carries a CRC-32 of its bytes; one that fails it is
//! reported as corrupt (an `InvalidData` error naming the group and key, or the file), never decoded.

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
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use rampart_trading::{Row, Shard, Stamped};

use crate::types::{CommandResult, GroupId, Op, OpOutcome, TypeConfig};

/// The most writes one transaction (one fsync) takes.
pub const BATCH_MAX: usize = 1024;

const LOGS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("raft_meta");
const KV: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("kv");
/// The trading state machine's rows: key = postcard of a [`RowKey`], value = a sealed postcard [`Row`].
const TRADE: TableDefinition<(u32, &[u8]), &[u8]> = TableDefinition::new("trade");

type C = TypeConfig;

/// Where the metadata group keeps the cluster configuration (in its key-value rows).
pub const CONFIG_KEY: &str = "cluster/config";
const CONFIG_EPOCH_KEY: &str = "cluster/epoch";

/// The meta rows of the node itself (not of a partition) live under this group number, above any partition.
const SHAPE_GROUP: GroupId = u32::MAX;
type Write = Box<dyn FnOnce(&WriteTransaction) -> io::Result<()> + Send>;

/// A write, whether it must be on disk before its waiter hears back, and the waiter.
type Job = (Write, Flush, oneshot::Sender<io::Result<()>>);

/// Whether a write needs an fsync before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Votes, log entries, snapshots: openraft's durability contract.
    Durable,
    /// State-machine applies: the entries they apply are durable in the log, and a restart re-applies from the
    /// last durable `last_applied`; the next durable commit (at most one group commit later) persists them too.
    Lazy,
}

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
    /// Each partition's trading state, in memory; its rows on disk are written with every apply.
    shards: std::sync::Mutex<std::collections::BTreeMap<GroupId, Arc<std::sync::Mutex<Shard>>>>,
    writer: Option<std_mpsc::Sender<Job>>,
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
    pub durable_commits: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
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
            txn.open_table(KV).map_err(other)?;
            txn.open_table(TRADE).map_err(other)?;
            txn.commit().map_err(other)?;
        }
        let (tx, rx) = std_mpsc::channel::<Job>();
        let writer_db = db.clone();
        let stats = Arc::new(StoreStats::default());
        let thread = std::thread::Builder::new().name("rampart-store-writer".into()).spawn({
            let stats = stats.clone();
            move || write_loop(&writer_db, &rx, &stats)
        })?;
        let snapshots = path.with_file_name("snapshots");
        std::fs::create_dir_all(&snapshots)?;
        let store = Store { db, shards: Default::default(), writer: Some(tx), thread: Some(thread), snapshots, stats };
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

    /// Writes a snapshot's bytes (sealed with a CRC) to a new file, durably: the file and the directory are
    /// fsync'd before the name is returned. Blocking: call it off the async runtime.
    fn write_snapshot_file(&self, group: GroupId, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<String> {
        use std::io::Write as _;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let index = meta.last_log_id.map_or(0, |l| l.index());
        let name = format!("g{group}-{index}-{nanos}.snap");
        let tmp = self.snapshots.join(format!("{name}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&seal(data))?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.snapshots.join(&name))?;
        std::fs::File::open(&self.snapshots)?.sync_all()?;
        Ok(name)
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
        self.enqueue(write, Flush::Durable).await
    }

    /// Runs `write` in the next group commit and waits until it is committed (durable or not).
    async fn write_lazy(&self, write: Write) -> io::Result<()> {
        self.enqueue(write, Flush::Lazy).await
    }

    async fn enqueue(&self, write: Write, flush: Flush) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or_else(|| other("the storage writer has stopped"))?;
        writer.send((write, flush, tx)).map_err(|_| other("the storage writer has stopped"))?;
        rx.await.map_err(|_| other("the storage writer has stopped"))?
    }

    fn read_meta<T: DeserializeOwned>(&self, group: GroupId, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(other)?;
        let table = txn.open_table(META).map_err(other)?;
        match table.get((group, key)).map_err(other)? {
            Some(v) => decode(v.value(), &|| format!("group {group} {key}")).map(Some),
            None => Ok(None),
        }
    }

    /// The log store of one partition group.
    pub fn log(self: &Arc<Self>, group: GroupId) -> LogStore {
        LogStore { store: self.clone(), group }
    }

    /// The state machine of one partition group, its trading state loaded from disk (and checked).
    pub fn state_machine(self: &Arc<Self>, group: GroupId) -> io::Result<StateMachine> {
        let shard = {
            let txn = self.db.begin_read().map_err(other)?;
            let rows = trade_rows(&txn.open_table(TRADE).map_err(other)?, group)?;
            Shard::restore(group, rows).map_err(|e| invalid(format!("partition {group}: {e}")))?
        };
        let shard = Arc::new(std::sync::Mutex::new(shard));
        self.shards.lock().map_err(other)?.insert(group, shard.clone());
        Ok(StateMachine { store: self.clone(), group, shard })
    }

    /// The trading state of a partition this node replicates. The caller ensures a read is linearizable.
    pub fn shard(&self, group: GroupId) -> Option<Arc<std::sync::Mutex<Shard>>> {
        self.shards.lock().ok()?.get(&group).cloned()
    }

    /// The (partitions, replicas) this database was created for, if recorded.
    pub fn cluster_shape(&self) -> io::Result<Option<(u32, u32)>> {
        self.read_meta(SHAPE_GROUP, "shape")
    }

    /// Records the (partitions, replicas) of the cluster.
    pub async fn set_cluster_shape(&self, shape: (u32, u32)) -> io::Result<()> {
        let bytes = encode(&shape)?;
        self.write(Box::new(move |txn| {
            txn.open_table(META).map_err(other)?.insert((SHAPE_GROUP, "shape"), bytes.as_slice()).map_err(other)?;
            Ok(())
        }))
        .await
    }

    /// Whether this node initialized its founding groups once (a node never initializes a group twice: a group
    /// it left and rejoins is rebuilt from its leader).
    pub fn bootstrapped(&self) -> io::Result<bool> {
        Ok(self.read_meta::<bool>(SHAPE_GROUP, "bootstrapped")?.unwrap_or(false))
    }

    pub async fn set_bootstrapped(&self) -> io::Result<()> {
        let bytes = encode(&true)?;
        self.write(Box::new(move |txn| {
            let mut meta = txn.open_table(META).map_err(other)?;
            meta.insert((SHAPE_GROUP, "bootstrapped"), bytes.as_slice()).map_err(other)?;
            Ok(())
        }))
        .await
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
        if let Ok(mut shards) = self.shards.lock() {
            shards.remove(&group);
        }
        let snapshot: Option<SnapshotRef> = self.read_meta(group, SNAPSHOT_KEY)?;
        self.write(Box::new(move |txn| {
            delete_entries(txn, group, 0, u64::MAX)?;
            clear_named_rows(txn, META, group)?;
            clear_named_rows(txn, KV, group)?;
            replace_trade_rows(txn, group, &[])
        }))
        .await?;
        if let Some(s) = snapshot {
            self.remove_snapshot_file(&s.file);
        }
        Ok(())
    }

    /// Reads one key of a group's state machine (the caller ensures the read is linearizable).
    pub fn get(&self, group: GroupId, key: &str) -> io::Result<Option<String>> {
        let txn = self.db.begin_read().map_err(other)?;
        let table = txn.open_table(KV).map_err(other)?;
        match table.get((group, key)).map_err(other)? {
            Some(v) => decode(v.value(), &|| format!("group {group} key {key}")).map(Some),
            None => Ok(None),
        }
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

/// Deletes every row of `group` from a table keyed by (group, name). Groups are below `SHAPE_GROUP`, so
/// `group + 1` bounds the range.
fn clear_named_rows(
    txn: &WriteTransaction,
    table: TableDefinition<(u32, &str), &[u8]>,
    group: GroupId,
) -> io::Result<()> {
    let mut t = txn.open_table(table).map_err(other)?;
    t.retain_in((group, "")..(group + 1, ""), |_, _| false).map_err(other)
}

/// Replaces every trading row of `group` with `rows`.
fn replace_trade_rows(txn: &WriteTransaction, group: GroupId, rows: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    let mut table = txn.open_table(TRADE).map_err(other)?;
    table.retain_in((group, &[][..])..(group + 1, &[][..]), |_, _| false).map_err(other)?;
    for (key, value) in rows {
        table.insert((group, key.as_slice()), value.as_slice()).map_err(other)?;
    }
    Ok(())
}

fn write_loop(db: &Database, rx: &std_mpsc::Receiver<Job>, stats: &StoreStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|(_, flush, _)| *flush == Flush::Durable);
        use std::sync::atomic::Ordering::Relaxed;
        stats.commits.fetch_add(1, Relaxed);
        stats.durable_commits.fetch_add(u64::from(durable), Relaxed);
        stats.writes.fetch_add(batch.len() as u64, Relaxed);
        let (writes, waiters): (Vec<Write>, Vec<_>) = batch.into_iter().map(|(w, _, tx)| (w, tx)).unzip();
        let result = (|| {
            let mut txn = db.begin_write().map_err(other)?;
            if !durable {
                txn.set_durability(Durability::None).map_err(other)?;
            }
            for w in writes {
                w(&txn)?;
            }
            txn.commit().map_err(other)
        })();
        for waiter in waiters {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            // A waiter that gave up is not an error.
            let _ = waiter.send(r);
        }
    }
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
}

impl LogStore {
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<C>>> {
        let Some((lo, hi)) = bounds(self.group, range) else { return Ok(Vec::new()) };
        let txn = self.store.db.begin_read().map_err(other)?;
        let table = txn.open_table(LOGS).map_err(other)?;
        let mut out = Vec::new();
        for item in table.range(lo..=hi).map_err(other)? {
            let (k, v) = item.map_err(other)?;
            let (g, i) = k.value();
            out.push(decode(v.value(), &|| format!("group {g} log entry {i}"))?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> io::Result<Option<EntryOf<C>>> {
        let txn = self.store.db.begin_read().map_err(other)?;
        let table = txn.open_table(LOGS).map_err(other)?;
        let last = table.range((self.group, 0)..=(self.group, u64::MAX)).map_err(other)?.next_back();
        match last {
            Some(item) => {
                let (k, v) = item.map_err(other)?;
                let (g, i) = k.value();
                decode(v.value(), &|| format!("group {g} log entry {i}")).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T, flush: Flush) -> io::Result<()> {
        let bytes = encode(value)?;
        let group = self.group;
        let write: Write = Box::new(move |txn| {
            txn.open_table(META).map_err(other)?.insert((group, key), bytes.as_slice()).map_err(other)?;
            Ok(())
        });
        self.store.enqueue(write, flush).await
    }

    /// Deletes the entries of this group with index in `lo..=hi`.
    async fn delete_range(&self, lo: u64, hi: u64) -> io::Result<()> {
        let group = self.group;
        self.store.write(Box::new(move |txn| delete_entries(txn, group, lo, hi))).await
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
        self.put_meta("vote", vote, Flush::Durable).await
    }

    /// Without an fsync of its own: a `committed` lost in a crash only means a restarted replica re-applies up
    /// to an older index and catches up from its leader; every read is served by a leader after a ReadIndex
    /// round, which covers every entry committed before it.
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.put_meta("committed", &committed, Flush::Lazy).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.store.read_meta::<Option<LogIdOf<C>>>(self.group, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> =
            match entries.into_iter().map(|e| Ok((e.index(), encode(&e)?))).collect::<io::Result<_>>() {
                Ok(rows) => rows,
                Err(e) => {
                    callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
        let group = self.group;
        let result = self
            .store
            .write(Box::new(move |txn| {
                let mut table = txn.open_table(LOGS).map_err(other)?;
                for (i, bytes) in &rows {
                    table.insert((group, *i), bytes.as_slice()).map_err(other)?;
                }
                Ok(())
            }))
            .await;
        // Reported only now: the transaction holding the entries has been fsynced.
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
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
            .await
    }
}

/// A snapshot's contents: the state machine of one group at `meta.last_log_id`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBlob {
    kv: Vec<(String, String)>,
    trade: Vec<Row>,
}

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

/// One partition's state machine.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<Store>,
    group: GroupId,
    shard: Arc<std::sync::Mutex<Shard>>,
}

impl StateMachine {
    fn membership(&self) -> io::Result<StoredMembershipOf<C>> {
        Ok(self.store.read_meta(self.group, "membership")?.unwrap_or_default())
    }

    fn applied(&self) -> io::Result<Option<LogIdOf<C>>> {
        Ok(self.store.read_meta::<Option<LogIdOf<C>>>(self.group, "applied")?.flatten())
    }
}

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        let (store, group) = (self.store.clone(), self.group);
        // Reading the state, encoding it and writing its file take a while for a large partition: off the async
        // runtime, and outside the shared writer (only the small record of the snapshot goes through it).
        let (meta, data, file) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            // One read transaction: the contents, applied index and membership are of the same moment.
            let txn = store.db.begin_read().map_err(other)?;
            let kv_table = txn.open_table(KV).map_err(other)?;
            let mut kv = Vec::new();
            for item in kv_table.range((group, "")..).map_err(other)? {
                let (k, v) = item.map_err(other)?;
                let (g, key) = k.value();
                if g != group {
                    break;
                }
                kv.push((key.to_owned(), decode::<String>(v.value(), &|| format!("group {g} key {key}"))?));
            }
            let trade = trade_rows(&txn.open_table(TRADE).map_err(other)?, group)?;
            let meta_table = txn.open_table(META).map_err(other)?;
            let read = |key: &str| -> io::Result<Option<Vec<u8>>> {
                Ok(meta_table.get((group, key)).map_err(other)?.map(|v| v.value().to_vec()))
            };
            let applied: Option<LogIdOf<C>> = match read("applied")? {
                Some(b) => decode::<Option<LogIdOf<C>>>(&b, &|| format!("group {group} applied"))?,
                None => None,
            };
            let membership: StoredMembershipOf<C> = match read("membership")? {
                Some(b) => decode(&b, &|| format!("group {group} membership"))?,
                None => StoredMembership::default(),
            };
            let data = postcard::to_allocvec(&SnapshotBlob { kv, trade }).map_err(other)?;
            let meta = SnapshotMetaOf::<C> { last_log_id: applied, last_membership: membership };
            let file = store.write_snapshot_file(group, &meta, &data)?;
            Ok((meta, data, file))
        })
        .await
        .map_err(other)??;
        let stored = encode(&SnapshotRef { meta: meta.clone(), file: file.clone() })?;
        let built_at = meta.last_log_id;
        // The file that ends up referred to by nothing: the one replaced, or this one if a newer snapshot was
        // installed meanwhile (built in the background, this one must not replace it).
        let obsolete = Arc::new(std::sync::Mutex::new(None));
        let recorded = self
            .store
            .write(Box::new({
                let obsolete = obsolete.clone();
                move |txn| {
                    let mut table = txn.open_table(META).map_err(other)?;
                    let current = snapshot_record(&table, group)?;
                    let unused = if built_at > current.as_ref().and_then(|c| c.meta.last_log_id) {
                        table.insert((group, SNAPSHOT_KEY), stored.as_slice()).map_err(other)?;
                        current.map(|c| c.file)
                    } else {
                        Some(file)
                    };
                    *obsolete.lock().map_err(other)? = unused;
                    Ok(())
                }
            }))
            .await;
        let unused = obsolete.lock().map_err(other)?.take();
        if let Some(name) = unused {
            self.store.remove_snapshot_file(&name);
        }
        recorded?;
        Ok(SnapshotOf::<C, Self::SnapshotData> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        Ok((self.applied()?, self.membership()?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            batch.push(item?);
        }
        let Some((last, _)) = batch.last() else { return Ok(()) };
        let last = last.log_id();
        let mut membership = None;
        let mut changes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        let mut results: Vec<Vec<OpOutcome>> = Vec::with_capacity(batch.len());
        let mut configs: Vec<(u64, Vec<u8>)> = Vec::new();
        let trade_changes = {
            let mut shard = self.shard.lock().map_err(other)?;
            for (entry, _) in &mut batch {
                let mut outcomes = Vec::new();
                let log_id = entry.log_id();
                match &mut entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(command) => {
                        // Applied once: the operations move into the state machine instead of being copied.
                        let at_ms = command.at_ms;
                        for op in std::mem::take(&mut command.ops) {
                            outcomes.push(match op {
                                Op::Put { key, value } => {
                                    changes.push((key, Some(encode(&value)?)));
                                    OpOutcome::Done
                                }
                                Op::Delete { key } => {
                                    changes.push((key, None));
                                    OpOutcome::Done
                                }
                                Op::SetConfig { epoch, json } => {
                                    configs.push((epoch, encode(&json)?));
                                    OpOutcome::Done
                                }
                                Op::Trade(command) => OpOutcome::Trade(shard.apply(&Stamped { at_ms, command })),
                            });
                        }
                    }
                    EntryPayload::Membership(m) => membership = Some(StoredMembership::new(Some(log_id), m.clone())),
                }
                results.push(outcomes);
            }
            shard
                .drain_changes()
                .into_iter()
                .map(|(key, row)| {
                    Ok((postcard::to_allocvec(&key).map_err(other)?, row.map(|r| encode(&r)).transpose()?))
                })
                .collect::<io::Result<Vec<_>>>()?
        };
        let group = self.group;
        let applied = encode(&Some(last))?;
        let membership = membership.map(|m| encode(&m)).transpose()?;
        // The answers go out now, before the rows below are committed: the entries are committed in the Raft log
        // (durable on a quorum), which is what an answer promises; a read waits for this apply to return (openraft's
        // applied index), so no read misses what an answer reported. Should the commit fail, the group stops and a
        // restart applies the entries again from the log.
        for ((entry, responder), outcomes) in batch.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(CommandResult { index: entry.index(), outcomes });
            }
        }
        // The changes, `last_applied` and the membership in one transaction, committed without waiting for an
        // fsync of its own (see `Flush::Lazy`). Should it fail, the in-memory shard is ahead of the disk: the error
        // stops this group (openraft treats it as fatal) and a restart reloads the shard from the disk.
        self.store
            .write_lazy(Box::new(move |txn| {
                let mut kv = txn.open_table(KV).map_err(other)?;
                for (key, value) in &changes {
                    match value {
                        Some(v) => kv.insert((group, key.as_str()), v.as_slice()).map_err(other)?,
                        None => kv.remove((group, key.as_str())).map_err(other)?,
                    };
                }
                // A configuration applies only on top of the one before it: a stale proposal changes nothing.
                for (epoch, json) in &configs {
                    let current = match kv.get((group, CONFIG_EPOCH_KEY)).map_err(other)? {
                        Some(v) => decode::<String>(v.value(), &|| "config epoch".into())?.parse::<u64>().unwrap_or(0),
                        None => 0,
                    };
                    if *epoch == current + 1 {
                        kv.insert((group, CONFIG_KEY), json.as_slice()).map_err(other)?;
                        kv.insert((group, CONFIG_EPOCH_KEY), encode(&epoch.to_string())?.as_slice()).map_err(other)?;
                    }
                }
                let mut trade = txn.open_table(TRADE).map_err(other)?;
                for (key, value) in &trade_changes {
                    match value {
                        Some(v) => trade.insert((group, key.as_slice()), v.as_slice()).map_err(other)?,
                        None => trade.remove((group, key.as_slice())).map_err(other)?,
                    };
                }
                let mut meta = txn.open_table(META).map_err(other)?;
                meta.insert((group, "applied"), applied.as_slice()).map_err(other)?;
                if let Some(m) = &membership {
                    meta.insert((group, "membership"), m.as_slice()).map_err(other)?;
                }
                Ok(())
            }))
            .await?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let blob: SnapshotBlob = postcard::from_bytes(&data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {e}")))?;
        let group = self.group;
        let applied = encode(&meta.last_log_id)?;
        let membership = encode(&meta.last_membership)?;
        let rows: Vec<(String, Vec<u8>)> =
            blob.kv.iter().map(|(k, v)| Ok((k.clone(), encode(v)?))).collect::<io::Result<_>>()?;
        let trade_rows: Vec<(Vec<u8>, Vec<u8>)> = blob
            .trade
            .iter()
            .map(|r| Ok((postcard::to_allocvec(&r.key()).map_err(other)?, encode(r)?)))
            .collect::<io::Result<_>>()?;
        let shard = Shard::restore(group, blob.trade).map_err(|e| invalid(format!("snapshot of {group}: {e}")))?;
        // Checked whole before anything is written; then its file, then its rows and record in one transaction.
        let (store, file_meta) = (self.store.clone(), meta.clone());
        let file = tokio::task::spawn_blocking(move || store.write_snapshot_file(group, &file_meta, &data))
            .await
            .map_err(other)??;
        let stored = encode(&SnapshotRef { meta: meta.clone(), file: file.clone() })?;
        let replaced = Arc::new(std::sync::Mutex::new(None));
        let installed = self
            .store
            .write(Box::new({
                let replaced = replaced.clone();
                move |txn| {
                    clear_named_rows(txn, KV, group)?;
                    let mut kv = txn.open_table(KV).map_err(other)?;
                    for (key, value) in &rows {
                        kv.insert((group, key.as_str()), value.as_slice()).map_err(other)?;
                    }
                    replace_trade_rows(txn, group, &trade_rows)?;
                    let mut m = txn.open_table(META).map_err(other)?;
                    *replaced.lock().map_err(other)? = snapshot_record(&m, group)?.map(|old| old.file);
                    m.insert((group, "applied"), applied.as_slice()).map_err(other)?;
                    m.insert((group, "membership"), membership.as_slice()).map_err(other)?;
                    m.insert((group, SNAPSHOT_KEY), stored.as_slice()).map_err(other)?;
                    Ok(())
                }
            }))
            .await;
        if let Err(e) = installed {
            self.store.remove_snapshot_file(&file);
            return Err(e);
        }
        if let Some(old) = replaced.lock().map_err(other)?.take() {
            self.store.remove_snapshot_file(&old);
        }
        *self.shard.lock().map_err(other)? = shard;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        // A snapshot recorded after the record was read may have replaced (and deleted) its file: read again.
        for _ in 0..3 {
            let Some(r) = self.store.read_meta::<SnapshotRef>(self.group, SNAPSHOT_KEY)? else { return Ok(None) };
            match self.store.read_snapshot_file(&r.file) {
                Ok(data) => {
                    return Ok(Some(SnapshotOf::<C, Cursor<Vec<u8>>> { meta: r.meta, snapshot: Cursor::new(data) }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("group {}: the snapshot file keeps being replaced", self.group)))
    }
}
