//! The storage layer against openraft's own conformance suite, plus integrity and durability checks.

use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use rampart_node::store::{LogStore, StateMachine, Store};
use rampart_node::types::TypeConfig;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(&dir.path().join("rampart.redb")).expect("open store");
        // Group 7, to show that groups are kept apart in the shared tables.
        Ok((dir, store.log(7), store.state_machine(7).expect("state machine")))
    }
}

#[test]
fn openraft_storage_conformance_suite_passes() {
    TypeConfig::run(async { Suite::test_all(Builder).await.expect("conformance") });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn a_vote_survives_a_reopen_and_groups_are_separate() {
    use openraft::impls::Vote;
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("rampart.redb");
    runtime().block_on(async {
        let store = Store::open(&path).expect("open");
        let mut log = store.log(1);
        let vote = Vote::new(3, 42);
        log.save_vote(&vote).await.expect("save vote");
        assert_eq!(store.log(2).read_vote().await.expect("read"), None, "another group sees nothing");
    });
    // A fresh process opening the same file reads the vote back.
    runtime().block_on(async {
        use openraft::impls::Vote;
        let store: Arc<Store> = Store::open(&path).expect("reopen");
        let vote = store.log(1).read_vote().await.expect("read");
        assert_eq!(vote, Some(Vote::new(3, 42)));
        let mut sm = store.state_machine(1).unwrap();
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, None);
    });
}

#[test]
fn a_corrupted_value_is_reported_not_returned() {
    use openraft::impls::Vote;
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("rampart.redb");
    runtime().block_on(async {
        let store = Store::open(&path).expect("open");
        store.log(1).save_vote(&Vote::new(9, 1)).await.expect("save");
    });
    // Flip the bytes of the stored vote on disk: find its CRC-prefixed encoding and damage it.
    let mut bytes = std::fs::read(&path).expect("read file");
    let needle = {
        let body = postcard::to_allocvec(&Vote::<openraft::impls::leader_id_adv::LeaderId<u64, u64>>::new(9, 1))
            .expect("encode");
        let mut v = crc32fast::hash(&body).to_le_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    };
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_slice()).expect("the vote is on disk");
    bytes[at + 4] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write file");
    runtime().block_on(async {
        // The damage is inside a value, where redb's own structure checks do not look: our checksum must catch it.
        let store = Store::open(&path).expect("the file's structure is intact");
        let err = store.log(1).read_vote().await.expect_err("corruption must be reported");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("group 1 vote"), "{err}");
    });
}

#[test]
fn a_snapshot_lives_in_its_own_file_checked_and_unreferred_files_go() {
    use openraft::storage::RaftSnapshotBuilder;
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("rampart.redb");
    let snapshots = dir.path().join("snapshots");
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&snapshots)
            .expect("snapshot directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    runtime().block_on(async {
        let store = Store::open(&path).expect("open");
        let mut sm = store.state_machine(3).expect("state machine");
        // An empty state at log index 5, installed as a leader would send it.
        let empty = sm.get_snapshot_builder().await.build_snapshot().await.expect("build").snapshot.into_inner();
        assert!(files().is_empty(), "a snapshot of nothing applied is not kept");
        let meta = openraft::type_config::alias::SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 5)),
            ..Default::default()
        };
        sm.install_snapshot(&meta, std::io::Cursor::new(empty.clone())).await.expect("install");
        assert_eq!(files().len(), 1);
        let rebuilt = sm.get_snapshot_builder().await.build_snapshot().await.expect("build again");
        assert_eq!(rebuilt.meta.last_log_id, meta.last_log_id);
        assert_eq!(files().len(), 1, "one file per group: a snapshot no newer than the current one is not kept");
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta.last_log_id, meta.last_log_id);
        assert_eq!(current.snapshot.into_inner(), empty);
    });
    // A file nobody refers to (a crash between writing and recording it) is removed at the next start.
    std::fs::write(snapshots.join("g3-9-1.snap"), b"left over").expect("write");
    std::fs::write(snapshots.join("g3-9-2.snap.tmp"), b"torn").expect("write");
    let kept = files().into_iter().filter(|n| !n.starts_with("g3-9-")).collect::<Vec<_>>();
    runtime().block_on(async {
        let store = Store::open(&path).expect("reopen");
        assert_eq!(files(), kept, "only the recorded snapshot is left");
        // The state machine starts from its snapshot: the empty state at index 5.
        let mut sm = store.state_machine(3).expect("state machine");
        assert_eq!(
            sm.applied_state().await.expect("applied").0,
            Some(openraft::testing::log_id::<TypeConfig>(1, 1, 5))
        );
        // A damaged snapshot file is reported, never handed to a replica nor loaded as a state.
        let file = snapshots.join(&kept[0]);
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).expect("write");
        let err = sm.get_current_snapshot().await.expect_err("corrupt");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("snapshot file"), "{err}");
        let err = store.state_machine(3).expect_err("a group does not start from a damaged snapshot");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    });
}
