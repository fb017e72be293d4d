//! A snapshot of as many pairs as the last one reuses the vector of pairs the last one
//! left (no free and new allocation of it). Its own test binary: it counts the
//! allocations of the whole process, so nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use raftkv_kv::{Command, KvStateMachine, WriteOp};

/// The system allocator, counting allocations of one size (that of the base vector).
struct Counting;

static WATCHED_SIZE: AtomicUsize = AtomicUsize::new(0);
static WATCHED: AtomicUsize = AtomicUsize::new(0);

fn watch(size: usize) {
    if size == WATCHED_SIZE.load(Relaxed) {
        WATCHED.fetch_add(1, Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        watch(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        watch(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn put(sm: &mut KvStateMachine, key: String) {
    let op = WriteOp::Put { key: Bytes::from(key), value: Bytes::from_static(b"v") };
    let index = sm.applied_index() + 1;
    assert!(sm.apply(index, 1, &Command { client_id: 1, seq: index, op }.encode()).result.is_ok());
}

/// Allocations of the watched size while `f` runs.
fn watched_during(f: impl FnOnce()) -> usize {
    let before = WATCHED.load(Relaxed);
    f();
    WATCHED.load(Relaxed) - before
}

#[test]
fn a_snapshot_of_as_many_pairs_as_the_last_reuses_its_base_vector() {
    // An odd count, so that no other allocation of the run has the base's size: a
    // pair in the base is one `Bytes` (a slice of the snapshot).
    const PAIRS: usize = 37;
    WATCHED_SIZE.store(PAIRS * size_of::<Bytes>(), Relaxed);
    let mut sm = KvStateMachine::new();
    for i in 0..PAIRS {
        put(&mut sm, format!("key-{i:02}"));
    }
    assert_eq!(watched_during(|| drop(sm.snapshot())), 1, "the first snapshot allocates the base");
    put(&mut sm, "key-00".into());
    assert_eq!(watched_during(|| drop(sm.snapshot())), 0, "the second one reuses it");
    assert_eq!(sm.len(), PAIRS);
}
