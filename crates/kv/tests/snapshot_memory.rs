//! A manual check of memory and lookup time at scale (ignored: slow, and it reads the
//! process-wide peak RSS, so it must run alone, in release):
//!
//! `cargo test --release -p raftkv-kv --test snapshot_memory -- --ignored --nocapture`
//!
//! 1M pairs (16-byte keys, 100-byte values), a snapshot, 10k random overwrites and a
//! second snapshot while the first is still held (as the Raft runtime holds it), then
//! `get` of 1M random keys.
// It reads /proc and calls glibc's malloc_trim.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use raftkv_kv::{Command, KvStateMachine, WriteOp};

const PAIRS: u64 = 1_000_000;
const OVERWRITES: u64 = 10_000;

/// The system allocator, counting live heap bytes and their peak: exact, unlike RSS,
/// which includes what the allocator keeps after a free.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as if both blocks were live, as they may be while it copies.
        let live = LIVE.fetch_add(new_size, Relaxed) + new_size;
        PEAK.fetch_max(live, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

unsafe extern "C" {
    /// glibc: returns free heap memory to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// splitmix64: a fixed, well-mixed sequence, so runs are comparable.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("{:016x}", mix(i)))
}

fn put(sm: &mut KvStateMachine, i: u64, fill: u8) {
    let op = WriteOp::Put { key: key(i), value: Bytes::from(vec![fill; 100]) };
    let index = sm.applied_index() + 1;
    let applied = sm.apply(index, 1, &Command { client_id: 1, seq: index, op }.encode());
    assert!(applied.result.is_ok(), "{applied:?}");
}

/// A field of /proc/self/status, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field present");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB")
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so the next peak is that of one phase.
fn reset_peak() {
    // SAFETY: no arguments to get wrong; glibc only.
    unsafe { malloc_trim(0) };
    PEAK.store(LIVE.load(Relaxed), Relaxed);
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[test]
#[ignore = "slow; reads the process-wide peak RSS: run alone in release"]
fn snapshot_peak_memory_and_get_time() {
    let mut sm = KvStateMachine::new();
    for i in 0..PAIRS {
        put(&mut sm, i, b'a');
    }
    assert_eq!(sm.len(), PAIRS as usize);
    let started = Instant::now();
    let first = sm.snapshot();
    let first_time = started.elapsed();
    let after_first = (status_kb("VmRSS:"), status_kb("VmHWM:"), PEAK.load(Relaxed));

    reset_peak();
    let first_live = LIVE.load(Relaxed);
    for i in 0..OVERWRITES {
        put(&mut sm, mix(i ^ 0x5555) % PAIRS, b'b');
    }
    let started = Instant::now();
    let second = sm.snapshot();
    let second_time = started.elapsed();
    let second_peak = status_kb("VmHWM:");
    let second_rss = status_kb("VmRSS:");
    let second_live_peak = PEAK.load(Relaxed);
    assert_eq!(sm.len(), PAIRS as usize);
    assert!(second.len() > 100 * PAIRS as usize && first.len() == second.len());

    let lookups: Vec<Bytes> = (0..PAIRS).map(|i| key(mix(i ^ 0xaaaa) % PAIRS)).collect();
    // The best of three passes: the machine may be shared.
    let mut get_time = std::time::Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let found = lookups.iter().filter(|k| sm.get(k).is_some_and(|v| v.len() == 100)).count();
        get_time = get_time.min(started.elapsed());
        assert_eq!(found, PAIRS as usize, "every key looked up exists");
    }

    println!("snapshot of {PAIRS} pairs: {} bytes", first.len());
    let heap = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "first snapshot: RSS after {:.1} MB, VmHWM so far {:.1} MB, live heap peak so far {:.1} MB, live heap after {:.1} MB",
        mb(after_first.0),
        mb(after_first.1),
        heap(after_first.2),
        heap(first_live)
    );
    println!(
        "10k overwrites + second snapshot (first held): VmHWM {:.1} MB, RSS after {:.1} MB, live heap peak {:.1} MB",
        mb(second_peak),
        mb(second_rss),
        heap(second_live_peak)
    );
    println!("snapshot times: first {first_time:?}, second {second_time:?}");
    println!(
        "get of {PAIRS} random keys (best of 3 passes): {get_time:?} ({:.0} ns each)",
        get_time.as_nanos() as f64 / PAIRS as f64
    );
}
