//! Any bytes as a WAL segment, decoded as recovery does (as the last segment, where a
//! torn tail is cut, and as an earlier one, with and without a snapshot below it).
//! Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkv_storage::{DEFAULT_MAX_RECORD_SIZE, decode_segment};

fuzz_target!(|data: &[u8]| {
    for (is_last, snapshot) in [(true, None), (false, None), (true, Some((5, 2)))] {
        if let Ok(seg) = decode_segment(data, is_last, snapshot, DEFAULT_MAX_RECORD_SIZE) {
            assert!(seg.valid_len <= data.len() as u64, "valid length {} beyond the input", seg.valid_len);
        }
    }
});
