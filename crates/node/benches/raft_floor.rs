//! What openraft alone costs per committed write: three replicas of each of `G` groups in one process, with a log
//! and a state machine in memory (nothing written to disk) and replicas that call each other directly (nothing
//! encoded, nothing sent over a socket). 64 clients each write one 100-byte key-value entry at a time, each to the
//! leader of the group after the one it wrote last, and a write counts once a quorum holds it and the leader
//! applied it. (`rampart bench --workload kv` picks random keys instead, so two of its writes sometimes meet in
//! one partition and share a round; here, with 64 groups, nearly every write is a round of its own.) Every 5,000
//! entries a group takes an (empty) snapshot and purges its log, as the node does, so memory stays flat.
//!
//! Everything a node adds (the disk, the peer transport, the HTTP API) only costs more, so this is a ceiling on
//! what a 3-node cluster on the same cores can commit with one Raft entry per write: with `G = 64` (the default
//! partition count) each write is a round of its own in its group, with `G = 1` the writes waiting together share
//! one round. The third case is `G = 64` with each node's appends reported flushed by a thread of the node's, as
//! the store's writer thread reports them (without the disk): what that hand-off costs openraft's loop.
//!
//! `cargo bench -p rampart-node --bench raft_floor`

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::{EntryPayload, OptionalSend, Raft, StoredMembership};
use rampart_node::types::{Command, CommandResult, GroupId, Op, OpOutcome, PeerNode, RaftId, TypeConfig};

type C = TypeConfig;
type Replica = Raft<C, Machine>;

/// Concurrent writers, as in the kv comparison with etcd.
const CLIENTS: usize = 64;
/// Writes per measured iteration.
const WRITES: u64 = 4_096;
/// The replicas of every group.
const NODES: [RaftId; 3] = [1, 2, 3];

/// A replica's log, in memory: an append is flushed at once, or by a thread of its own (as the node's store
/// writer reports appends, without the disk).
#[derive(Clone, Default)]
struct Log {
    inner: Arc<Mutex<LogInner>>,
    flusher: Option<std::sync::mpsc::Sender<IOFlushed<C>>>,
}

#[derive(Default)]
struct LogInner {
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    purged: Option<LogIdOf<C>>,
    entries: BTreeMap<u64, EntryOf<C>>,
}

fn poisoned<T>(_: T) -> io::Error {
    io::Error::other("poisoned lock")
}

impl RaftLogReader<C> for Log {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        Ok(self.inner.lock().map_err(poisoned)?.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.inner.lock().map_err(poisoned)?.vote)
    }
}

impl RaftLogStorage<C> for Log {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let log = self.inner.lock().map_err(poisoned)?;
        let last = log.entries.values().next_back().map(|e| e.log_id()).max(log.purged);
        Ok(LogState { last_purged_log_id: log.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.inner.lock().map_err(poisoned)?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.inner.lock().map_err(poisoned)?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.inner.lock().map_err(poisoned)?.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = self.inner.lock().map_err(poisoned)?;
            for entry in entries {
                log.entries.insert(entry.index(), entry);
            }
        }
        match &self.flusher {
            Some(flusher) => flusher.send(callback).map_err(|_| io::Error::other("the flusher stopped"))?,
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        self.inner.lock().map_err(poisoned)?.entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let mut log = self.inner.lock().map_err(poisoned)?;
        log.entries = log.entries.split_off(&(log_id.index() + 1));
        log.purged = Some(log_id);
        Ok(())
    }
}

/// The last entry applied, and the membership in force.
type Applied = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

/// A replica's state machine: what it applied, and nothing else.
#[derive(Clone, Default)]
struct Machine(Arc<Mutex<Applied>>);

impl RaftSnapshotBuilder<C> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Cursor<Vec<u8>>>, io::Error> {
        let (applied, membership) = self.0.lock().map_err(poisoned)?.clone();
        let meta = SnapshotMetaOf::<C> { last_log_id: applied, last_membership: membership };
        Ok(SnapshotOf::<C, Cursor<Vec<u8>>> { meta, snapshot: Cursor::new(Vec::new()) })
    }
}

impl RaftStateMachine<C> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        Ok(self.0.lock().map_err(poisoned)?.clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let outcomes = {
                let mut state = self.0.lock().map_err(poisoned)?;
                state.0 = Some(entry.log_id());
                match &entry.payload {
                    EntryPayload::Membership(m) => {
                        state.1 = StoredMembership::new(Some(entry.log_id()), m.clone());
                        Vec::new()
                    }
                    EntryPayload::Normal(command) => vec![OpOutcome::Done; command.ops.len()],
                    EntryPayload::Blank => Vec::new(),
                }
            };
            if let Some(r) = responder {
                r.send(CommandResult { index: entry.index(), outcomes });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, _: Self::SnapshotData) -> Result<(), io::Error> {
        *self.0.lock().map_err(poisoned)? = (meta.last_log_id, meta.last_membership.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        Ok(None)
    }
}

/// Every replica of every group, by group and node.
#[derive(Clone, Default)]
struct Router(Arc<RwLock<HashMap<(GroupId, RaftId), Replica>>>);

impl Router {
    fn get(&self, group: GroupId, node: RaftId) -> Result<Replica, Unreachable<C>> {
        let replica = self.0.read().ok().and_then(|r| r.get(&(group, node)).cloned());
        replica.ok_or_else(|| Unreachable::new(&io::Error::other(format!("no replica {node} of group {group}"))))
    }
}

struct Network {
    router: Router,
    group: GroupId,
}

impl RaftNetworkFactory<C> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: RaftId, _node: &PeerNode) -> Link {
        Link { router: self.router.clone(), group: self.group, target }
    }
}

struct Link {
    router: Router,
    group: GroupId,
    target: RaftId,
}

fn failed(e: impl std::fmt::Display) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other(e.to_string())))
}

impl RaftNetworkV2<C> for Link {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let replica = self.router.get(self.group, self.target).map_err(RPCError::Unreachable)?;
        replica.append_entries(rpc).await.map_err(failed)
    }

    /// Pipelined, as the node's transport is: the follower takes each request as it is made.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let replica = self.router.get(self.group, self.target).map_err(RPCError::Unreachable)?;
            let answers = replica.stream_append(input).map(|r| r.map_err(failed));
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, _: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        let replica = self.router.get(self.group, self.target).map_err(RPCError::Unreachable)?;
        replica.vote(rpc).await.map_err(failed)
    }

    async fn full_snapshot(
        &mut self,
        _: VoteOf<C>,
        _: SnapshotOf<C, Self::SnapshotData>,
        _: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        // Snapshots are taken and logs purged, keeping 1,000 entries: no follower here falls that far behind.
        Err(StreamingError::Unreachable(Unreachable::new(&io::Error::other("no follower here needs a snapshot sent"))))
    }
}

/// A thread that reports every append handed to it flushed, as soon as it has it.
fn flusher() -> std::sync::mpsc::Sender<IOFlushed<C>> {
    let (tx, rx) = std::sync::mpsc::channel::<IOFlushed<C>>();
    std::thread::spawn(move || {
        for callback in rx {
            callback.io_completed(Ok(()));
        }
    });
    tx
}

/// `groups` groups of three replicas, each led by a replica of its own turn; their leaders, by group. With
/// `threads`, each node's appends are reported by a thread of the node's.
async fn cluster(groups: u32, threads: bool) -> (Router, Vec<Replica>) {
    let config = Arc::new(
        openraft::Config {
            cluster_name: "floor".into(),
            // Nothing fails here: no election after the first, and a heartbeat rarely enough not to count.
            heartbeat_interval: 1_000,
            election_timeout_min: 10_000,
            election_timeout_max: 20_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..openraft::Config::default()
        }
        .validate()
        .expect("config"),
    );
    let router = Router::default();
    let members: BTreeMap<RaftId, PeerNode> =
        NODES.iter().map(|&id| (id, PeerNode { id: format!("n{id}"), ..PeerNode::default() })).collect();
    let flushers: Vec<_> = NODES.iter().map(|_| threads.then(flusher)).collect();
    let mut leaders = Vec::new();
    for group in 0..groups {
        for (&id, flusher) in NODES.iter().zip(&flushers) {
            let network = Network { router: router.clone(), group };
            let log = Log { flusher: flusher.clone(), ..Log::default() };
            let replica = Raft::new(id, config.clone(), network, log, Machine::default()).await.expect("raft");
            router.0.write().expect("router").insert((group, id), replica);
        }
        let first = router.get(group, NODES[group as usize % NODES.len()]).expect("replica");
        first.initialize(members.clone()).await.expect("initialize");
        leaders.push(first);
    }
    for (group, leader) in leaders.iter().enumerate() {
        let me = NODES[group % NODES.len()];
        leader
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(me) && m.last_applied.is_some(), "leads")
            .await
            .expect("leader");
    }
    (router, leaders)
}

/// `total` writes from [`CLIENTS`] clients, each to the group after its last; how long they took.
async fn write(leaders: &Arc<Vec<Replica>>, total: u64, round: u64) -> Duration {
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|client| {
            let leaders = leaders.clone();
            tokio::spawn(async move {
                let mut group = client as usize;
                for i in (client..total).step_by(CLIENTS) {
                    group = (group + 1) % leaders.len();
                    let put = Op::Put { key: format!("key-{round}-{i}"), value: "x".repeat(100) };
                    leaders[group].client_write(Command { at_ms: i, ops: vec![put] }).await.expect("write");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    start.elapsed()
}

fn floor(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut bench = c.benchmark_group("openraft_writes");
    bench.throughput(Throughput::Elements(WRITES)).sample_size(10).measurement_time(Duration::from_secs(20));
    for (groups, threads) in [(1, false), (64, false), (64, true)] {
        let (router, leaders) = runtime.block_on(cluster(groups, threads));
        let leaders = Arc::new(leaders);
        let mut round = 0;
        let name = if threads { format!("{groups}_groups_flushed_by_a_thread") } else { format!("{groups}_groups") };
        bench.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        round += 1;
                        runtime.block_on(write(&leaders, WRITES, round))
                    })
                    .sum()
            });
        });
        let replicas: Vec<Replica> = router.0.write().expect("router").drain().map(|(_, r)| r).collect();
        runtime.block_on(async {
            for replica in replicas {
                replica.shutdown().await.expect("shutdown");
            }
        });
    }
    bench.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
