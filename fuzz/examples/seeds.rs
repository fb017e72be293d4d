//! Writes the seed corpus: `cargo run --example seeds` (in fuzz/) fills
//! fuzz/corpus/wire_decode and fuzz/corpus/wal_record with valid inputs of every kind,
//! so the fuzzers start from the real formats. The output is committed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raftkv_kv::{Command, WriteOp};
use raftkv_raft::{Entry, EntryKind, HardState, Message, MessageBody, SnapshotMeta};
use raftkv_rpc::{RaftKvRequest, ReadConsistency};
use raftkv_storage::{DiskStorage, StorageOptions};

fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
    Entry { index, term, kind: EntryKind::Command, data: Bytes::from_static(data) }
}

fn messages() -> Vec<Vec<Message>> {
    let m = |term, body| Message { from: 2, to: 1, term, body, recovery: None, trace: None };
    vec![
        vec![m(1, MessageBody::RequestVote { pre_vote: true, last_log_index: 0, last_log_term: 0, force: false })],
        vec![m(2, MessageBody::RequestVoteResponse { pre_vote: false, granted: true })],
        vec![m(
            1,
            MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![entry(1, 1, b""), entry(2, 1, b"put")],
                leader_commit: 1,
            },
        )],
        vec![m(1, MessageBody::AppendEntriesResponse { success: true, index: 1, reject_hint: 0, hint_term: 0 })],
        vec![m(1, MessageBody::Heartbeat { leader_commit: 0, read_round: 1 })],
        vec![m(1, MessageBody::HeartbeatResponse { read_round: 1, missing_from: Some(1) })],
        vec![m(
            1,
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta::default(),
                offset: 0,
                total_len: 4,
                data: Bytes::from_static(b"snap"),
                done: true,
            },
        )],
        vec![m(1, MessageBody::InstallSnapshotResponse { meta_index: 3, next_offset: 0, done: true, rejected: false, too_large: None })],
        vec![m(3, MessageBody::TimeoutNow)],
    ]
}

fn requests() -> Vec<RaftKvRequest> {
    let put = Command { client_id: 1, seq: 1, op: WriteOp::Put { key: "k".into(), value: "v".into() } };
    let mut out = vec![
        RaftKvRequest::Status {},
        RaftKvRequest::Write { command: put },
        RaftKvRequest::Get { key: "k".into(), consistency: ReadConsistency::Linearizable },
        RaftKvRequest::Scan { prefix: "".into(), limit: 10, consistency: ReadConsistency::Stale },
        RaftKvRequest::Members {},
        RaftKvRequest::TransferLeader { target: Some(2) },
    ];
    out.extend(messages().into_iter().map(|messages| RaftKvRequest::Raft { cluster_id: 7, messages, links: vec![] }));
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("write {}: {e}", dir.join(name).display()));
}

fn wire_seeds(dir: &Path) {
    for (i, request) in requests().into_iter().enumerate() {
        let frame = raftkv_rpc::encode_request(Duration::from_secs(5), i as u64, request).expect("encode");
        write(dir, &format!("request-{i:02}"), &frame);
    }
    for (i, deadline) in [Duration::ZERO, Duration::MAX, Duration::from_secs(u64::MAX / 2)].into_iter().enumerate() {
        let frame = raftkv_rpc::encode_request(deadline, 1, RaftKvRequest::Status {}).expect("encode");
        write(dir, &format!("deadline-{i}"), &frame);
    }
    for (i, batch) in messages().iter().enumerate() {
        write(dir, &format!("batch-{i:02}"), &raftkv_fuzz::encode_batch(batch));
    }
}

fn wal_seeds(dir: &Path) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (mut storage, _) = DiskStorage::open(tmp.path(), StorageOptions::default()).expect("open storage");
    let hs = |term, commit| HardState { term, vote: Some(1), commit, recovering: false };
    storage.append(&[], Some(&hs(1, 0))).expect("append");
    storage.append(&[entry(1, 1, b""), entry(2, 1, b"a")], Some(&hs(1, 1))).expect("append");
    storage.append(&[entry(3, 2, b"bb")], Some(&hs(2, 3))).expect("append");
    // Overwrites index 3 with a later term, as a new leader's entries do.
    storage.append(&[entry(3, 3, b"ccc"), entry(4, 3, b"")], None).expect("append");
    let wal = storage.wal_dir().to_path_buf();
    drop(storage);
    let mut segments: Vec<_> = std::fs::read_dir(&wal).expect("wal dir").map(|e| e.expect("entry").path()).collect();
    segments.sort();
    for (i, path) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).expect("read segment");
        write(dir, &format!("segment-{i}"), &bytes);
        // A torn tail and a flipped bit.
        write(dir, &format!("segment-{i}-torn"), &bytes[..bytes.len().saturating_sub(3)]);
        let mut flipped = bytes.clone();
        if let Some(b) = flipped.get_mut(12) {
            *b ^= 0x40;
        }
        write(dir, &format!("segment-{i}-flipped"), &flipped);
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, fill) in [("wire_decode", wire_seeds as fn(&Path)), ("wal_record", wal_seeds)] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus dir");
        fill(&dir);
        println!("{}: {} files", dir.display(), std::fs::read_dir(&dir).expect("read dir").count());
    }
}
