//! Seeded random workloads: two replicas (one repeatedly snapshotted and
//! restored) must agree on every result and digest, and the data must match a
//! plain model map.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_kv::{Applied, Command, CommandError, KvStateMachine, WriteOp, WriteResult};
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

/// Draws below `n`: the workload's choices are all small ranges.
trait Below {
    fn below(&mut self, n: u64) -> u64;
}

impl Below for SmallRng {
    fn below(&mut self, n: u64) -> u64 {
        self.random_range(0..n)
    }
}

fn random_op(rng: &mut SmallRng) -> WriteOp {
    let key = Bytes::from(format!("k{}", rng.below(8)));
    let value = |rng: &mut SmallRng| Bytes::from(format!("v{}", rng.below(4)));
    match rng.below(3) {
        0 => WriteOp::Put { key, value: value(rng) },
        1 => WriteOp::Delete { key },
        _ => {
            let expected = (rng.below(3) > 0).then(|| value(rng));
            WriteOp::Cas { key, expected, new: value(rng) }
        }
    }
}

/// Picks a sequence number: mostly new, sometimes a retry or a stale one.
fn random_seq(rng: &mut SmallRng, last: u64) -> u64 {
    match rng.below(10) {
        0..=6 => last + 1,
        7 | 8 => last.max(1),
        _ => last.saturating_sub(1).max(1),
    }
}

fn random_entry(rng: &mut SmallRng, last_seq: &mut BTreeMap<u64, u64>) -> Bytes {
    if rng.below(25) == 0 {
        return Bytes::from(vec![0xff; rng.below(4) as usize]);
    }
    let client_id = rng.below(6);
    let last = last_seq.entry(client_id).or_default();
    let seq = random_seq(rng, *last);
    *last = (*last).max(seq);
    Command { client_id, seq, op: random_op(rng) }.encode()
}

#[derive(Debug, Default)]
struct Seen {
    duplicates: u32,
    stale: u32,
    rejected: u32,
    cas_swapped: u32,
    cas_failed: u32,
}

fn tally(seen: &mut Seen, got: &Applied) {
    match &got.result {
        _ if got.duplicate => seen.duplicates += 1,
        Err(CommandError::StaleSequence { .. }) => seen.stale += 1,
        Err(_) => seen.rejected += 1,
        Ok(WriteResult::Cas { swapped: true, .. }) => seen.cas_swapped += 1,
        Ok(WriteResult::Cas { swapped: false, .. }) => seen.cas_failed += 1,
        Ok(_) => {}
    }
}

/// Applies a write the way the machine should have, when it reports it applied.
fn model_apply(model: &mut BTreeMap<Bytes, Bytes>, data: &[u8]) {
    match Command::decode(data).unwrap().op {
        WriteOp::Put { key, value } => {
            model.insert(key, value);
        }
        WriteOp::Delete { key } => {
            model.remove(&key);
        }
        WriteOp::Cas { key, expected, new } => {
            if model.get(&key) == expected.as_ref() {
                model.insert(key, new);
            }
        }
    }
}

fn run_seed(seed: u64, seen: &mut Seen) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut a = KvStateMachine::new().with_max_sessions(4);
    let mut b = KvStateMachine::new().with_max_sessions(4);
    let mut model = BTreeMap::new();
    let mut last_seq = BTreeMap::new();
    let mut index = 0;
    for step in 0..400 {
        index += 1 + rng.below(2); // gaps stand for no-op entries
        let term = 1 + index / 50;
        if rng.below(10) == 0 {
            a.apply_noop(index, term).unwrap();
            b.apply_noop(index, term).unwrap();
            continue;
        }
        let data = random_entry(&mut rng, &mut last_seq);
        let got = a.apply(index, term, &data);
        assert_eq!(b.apply(index, term, &data), got, "seed {seed} step {step}");
        if got.result.is_ok() && !got.duplicate {
            model_apply(&mut model, &data);
        }
        tally(seen, &got);
        match rng.below(40) {
            0 => b = KvStateMachine::restore(&b.snapshot()).unwrap(),
            // Snapshotting alone moves b's pairs into the snapshot's buffer.
            1 => drop(b.snapshot()),
            _ => {}
        }
        assert_eq!(a.digest(), b.digest(), "seed {seed} step {step}");
        assert!(a.session_count() <= 4);
    }
    assert_eq!(a, b);
    let all = a.scan(b"", raftkv_kv::MAX_SCAN_LIMIT).unwrap();
    let want: Vec<_> = model.into_iter().collect();
    assert_eq!(all.items, want, "seed {seed}");
}

#[test]
fn replicas_agree_on_random_workloads() {
    let mut seen = Seen::default();
    for seed in 0..50 {
        run_seed(seed, &mut seen);
    }
    // The generator must actually exercise every path it is meant to.
    assert!(seen.duplicates > 0 && seen.stale > 0 && seen.rejected > 0, "{seen:?}");
    assert!(seen.cas_swapped > 0 && seen.cas_failed > 0, "{seen:?}");
}
