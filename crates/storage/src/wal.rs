//! WAL segments on disk and their replay.
//!
//! Segments are `<dir>/wal/<seq:016x>.wal`, consecutive. Every segment starts with a
//! `HardState` record (the state when it was created), so deleting a prefix of old
//! segments never loses the latest hard state.
//!
//! The last segment may end in zeros: the space written ahead of its records
//! (`StorageOptions::zero_fill_bytes`), where a crash leaves zeros or a torn record
//! followed by zeros, and replay ends the log there. Every other segment is cut to its
//! records before the next one is created, so zeros in one are corruption.

use std::path::{Path, PathBuf};

use raftkv_raft::{Entry, HardState};

use crate::codec::{self, Frame, Marker, Record};
use crate::disk::Disk;
use crate::error::StorageError;
use crate::log::{Log, last_after};

/// One segment file as known after replay or creation.
#[derive(Debug)]
pub(crate) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    /// Bytes of complete records in the file.
    pub len: u64,
    /// The highest entry index written to this segment, if any entry was.
    pub max_index: Option<u64>,
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The sequence numbers of the segments in `dir`, ascending and checked contiguous.
fn list_segments(disk: &Disk, dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut seqs = Vec::new();
    for name in disk.list_dir(dir)? {
        match parse_segment_name(&name) {
            Some(seq) => seqs.push(seq),
            None => tracing::warn!(dir = %dir.display(), file = %name, "ignoring a file that is not a WAL segment"),
        }
    }
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            let missing = segment_path(dir, pair[0] + 1);
            let reason =
                format!("WAL segment missing: found segments {:016x} and {:016x} with none between", pair[0], pair[1]);
            return Err(StorageError::corrupt(missing, 0, reason));
        }
    }
    Ok(seqs)
}

/// Everything replay learned.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub segments: Vec<Segment>,
    /// `Some(file length)` if the last segment ends in a torn write that must be cut
    /// back to its `len`.
    pub torn: Option<u64>,
    pub hard_state: HardState,
    pub log: Log<Entry>,
    /// The marker to write for a snapshot file the WAL has no marker for (a crash
    /// between the snapshot's rename and its marker).
    pub pending_marker: Option<Marker>,
}

/// Replays every segment in `dir` on top of the newest valid snapshot's position.
///
/// `lost_index`: the highest index of a snapshot refused as corrupt. When it is above
/// the snapshot replayed on, the WAL may hold markers of that lost snapshot and may
/// have been compacted behind it; replay then tolerates both, keeping only entries it
/// can prove contiguous from the snapshot (see [`ReplayState`]).
pub(crate) fn replay(
    disk: &Disk,
    dir: &Path,
    snapshot: Option<(u64, u64)>,
    lost_index: Option<u64>,
    limit: u32,
) -> Result<Replayed, StorageError> {
    let seqs = list_segments(disk, dir)?;
    let base = snapshot.map_or(0, |(index, _)| index);
    let mut state = ReplayState::new(snapshot, lost_index.is_some_and(|lost| lost > base));
    let mut segments = Vec::with_capacity(seqs.len());
    let mut torn = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let buf = disk.read(&path)?;
        let is_last = i + 1 == seqs.len();
        let (len, max_index) = scan(&path, &buf, is_last, limit, &mut state)?;
        if len < buf.len() as u64 {
            debug_assert!(is_last, "only the last segment may be torn");
            torn = Some(buf.len() as u64);
        }
        segments.push(Segment { seq, path, len, max_index });
    }
    let (hard_state, log, pending_marker) = state.finish();
    Ok(Replayed { segments, torn, hard_state, log, pending_marker })
}

/// Applies the records of one segment; returns its valid length and highest entry.
fn scan(
    path: &Path,
    buf: &[u8],
    is_last: bool,
    limit: u32,
    state: &mut ReplayState,
) -> Result<(u64, Option<u64>), StorageError> {
    let mut off = 0;
    let mut max_index = None;
    while off < buf.len() {
        let corrupt = |reason: String| StorageError::corrupt(path, off as u64, reason);
        match codec::read_frame(buf, off, limit) {
            Frame::Ok { ty, payload, next } => {
                let record = codec::decode(ty, payload).map_err(corrupt)?;
                state.apply(record, &mut max_index).map_err(corrupt)?;
                off = next;
            }
            // Why only in the last segment: a crash can tear only the last write, which
            // is at its end. And only on evidence of one: a record cut short or with a
            // bad checksum that nothing valid follows, or a zero-filled tail. A damaged
            // record (a flipped bit, in its length field too) followed by a valid one was
            // written and fsynced before that one: corruption, not a torn write.
            Frame::Incomplete(reason) | Frame::BadChecksum { reason, .. } | Frame::BadLength(reason) if is_last => {
                match tail_after(buf, off, limit) {
                    // The zeros written ahead of the log's end (or a write that never
                    // landed): nothing was lost that had been acknowledged.
                    Tail::Zeros => {
                        tracing::debug!(file = %path.display(), offset = off, file_len = buf.len(), "zeros after the WAL's last record");
                    }
                    Tail::Torn => tracing::warn!(
                        file = %path.display(), offset = off, file_len = buf.len(), %reason,
                        "torn write at the end of the WAL: truncating to the last complete record"
                    ),
                    Tail::Damaged => {
                        let why = match next_valid_frame(buf, off + 1, limit) {
                            Some(next) => format!("a valid record follows at offset {next}"),
                            None => "the bytes after it are not zero".to_string(),
                        };
                        return Err(corrupt(format!("{reason}; not a torn write at the end of the log: {why}")));
                    }
                }
                break;
            }
            Frame::Incomplete(reason) | Frame::BadChecksum { reason, .. } | Frame::BadLength(reason) => {
                return Err(corrupt(reason));
            }
        }
    }
    Ok((off as u64, max_index))
}

/// How the last segment ends from the bad record at `off`.
enum Tail {
    /// Only zeros (zeros written ahead, or a write that never landed).
    Zeros,
    /// A torn write: a record whose length our writer could have written, that no
    /// valid record follows.
    Torn,
    /// Neither: corruption.
    Damaged,
}

fn tail_after(buf: &[u8], off: usize, limit: u32) -> Tail {
    let rest = &buf[off..];
    if rest.iter().all(|b| *b == 0) {
        return Tail::Zeros;
    }
    let plausible_len = rest.get(0..4).is_none_or(|l| {
        let len = u32::from_le_bytes(l.try_into().expect("4 bytes"));
        len != 0 && len <= limit
    });
    if plausible_len && next_valid_frame(buf, off + 1, limit).is_none() { Tail::Torn } else { Tail::Damaged }
}

/// The first offset at or after `from` where a whole, checksummed, decodable record
/// starts. Cheap on a torn tail: zeros and garbage fail the length check before any
/// checksum is computed.
fn next_valid_frame(buf: &[u8], from: usize, limit: u32) -> Option<usize> {
    (from..buf.len()).find(|&at| {
        let rest = &buf[at..];
        if rest.len() <= codec::HEADER_LEN {
            return false;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        if len == 0 || len > limit || rest.len() - codec::HEADER_LEN < len as usize {
            return false;
        }
        matches!(codec::read_frame(buf, at, limit), Frame::Ok { ty, payload, .. } if codec::decode(ty, payload).is_ok())
    })
}

/// What [`decode_segment`] recovered from one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// The length of the complete records (a torn tail of the last segment is cut).
    pub valid_len: u64,
    pub hard_state: HardState,
    /// The first and last index of the recovered log.
    pub first_index: u64,
    pub last_index: u64,
}

/// Decodes one WAL segment's bytes as recovery does (records, checksums, entry order,
/// snapshot markers), starting from the snapshot `(index, term)` if any; `is_last`:
/// a torn tail is cut rather than corruption. For fuzzing and inspection: any bytes
/// give a result or a [`StorageError::Corrupt`] naming the offset, never a panic.
pub fn decode_segment(
    buf: &[u8],
    is_last: bool,
    snapshot: Option<(u64, u64)>,
    limit: u32,
) -> Result<DecodedSegment, StorageError> {
    let mut state = ReplayState::new(snapshot, false);
    let (valid_len, _) = scan(Path::new("<segment>"), buf, is_last, limit, &mut state)?;
    let (hard_state, log, _) = state.finish();
    Ok(DecodedSegment { valid_len, hard_state, first_index: log.base_index() + 1, last_index: log.last_index() })
}

/// The log being rebuilt, starting from the newest snapshot file's position.
///
/// In `lenient` mode (a newer snapshot was lost to corruption) three things that are
/// otherwise corruption are expected, and handled without inventing entries:
/// - a marker of a snapshot newer than ours: entries up to its index may have been
///   compacted away, so any later entry at or below it cannot be placed (it would have
///   been below that snapshot's base) and empties the log;
/// - a gap (segments deleted behind the lost snapshot): the log above our snapshot is
///   unknown, so it is emptied; later entries rebuild it only from `base + 1`;
/// - a marker of our own snapshot after those: written by an open that recovered this
///   way, it starts the records written from that recovered state on.
struct ReplayState {
    log: Log<Entry>,
    hard_state: HardState,
    snapshot: Option<(u64, u64)>,
    /// Whether the WAL holds the marker of the snapshot file `snapshot`.
    snapshot_marker_seen: bool,
    /// The term the WAL last wrote at the snapshot file's index (entries at or below
    /// the base are not kept, but the snapshot decision may need it).
    wal_term_at_base: Option<u64>,
    lenient: bool,
    /// The highest index of a marker of a lost snapshot since our own snapshot's last
    /// marker (lenient mode only).
    lost_base: Option<u64>,
    /// How many entries lenient replay could not place.
    dropped: u64,
}

impl ReplayState {
    fn new(snapshot: Option<(u64, u64)>, lenient: bool) -> Self {
        let (index, term) = snapshot.unwrap_or((0, 0));
        ReplayState {
            log: Log::new(index, term),
            hard_state: HardState::default(),
            snapshot,
            snapshot_marker_seen: false,
            // Index 0 is the empty log, whose "term" is 0, as in `Log::term_at`.
            wal_term_at_base: (index == 0).then_some(0),
            lenient,
            lost_base: None,
            dropped: 0,
        }
    }

    fn apply(&mut self, record: Record, max_index: &mut Option<u64>) -> Result<(), String> {
        match record {
            Record::HardState(hs) => self.hard_state = hs,
            Record::Entries(entries) => self.apply_entries(entries, max_index)?,
            Record::Snapshot(marker) => self.apply_marker(marker)?,
        }
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, max_index: &mut Option<u64>) -> Result<(), String> {
        for entry in entries {
            let base = self.log.base_index();
            *max_index = (*max_index).max(Some(entry.index));
            if entry.index < base {
                self.wal_term_at_base = None;
            } else if entry.index == base {
                self.wal_term_at_base = Some(entry.term);
            }
            let placed =
                last_after(base, self.log.last_index(), entry.index).and_then(|_| self.check_above_lost(entry.index));
            match placed {
                Ok(()) => self.log.apply(entry.index, entry),
                Err(_) if self.lenient => {
                    // Why empty the log: what lies between it and this entry is unknown.
                    self.dropped += self.log.last_index() - base + 1;
                    self.log.clear();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An entry at or below the marker of a lost snapshot cannot be placed.
    fn check_above_lost(&self, index: u64) -> Result<(), String> {
        match self.lost_base {
            Some(lost) if index <= lost => {
                Err(format!("entry {index} is at or below the lost snapshot at index {lost}"))
            }
            _ => Ok(()),
        }
    }

    fn apply_marker(&mut self, marker: Marker) -> Result<(), String> {
        let (index, term) = match self.snapshot {
            Some(pos) => pos,
            None if self.lenient => (0, 0),
            None => return Err(format!("snapshot marker at index {} but no snapshot file exists", marker.index)),
        };
        match marker.index.cmp(&index) {
            std::cmp::Ordering::Greater if self.lenient => {
                // A lost snapshot's marker: entries up to it may be gone from the WAL.
                self.lost_base = self.lost_base.max(Some(marker.index));
                if !marker.keep_suffix {
                    self.dropped += self.log.last_index() - self.log.base_index();
                    self.log.clear();
                }
                return Ok(());
            }
            std::cmp::Ordering::Greater => {
                return Err(format!(
                    "snapshot marker at index {} is newer than the newest snapshot file (index {index})",
                    marker.index
                ));
            }
            std::cmp::Ordering::Equal if marker.term != term => {
                return Err(format!(
                    "snapshot marker at index {index} has term {}, the snapshot file term {term}",
                    marker.term
                ));
            }
            std::cmp::Ordering::Equal => {
                self.snapshot_marker_seen = true;
                self.lost_base = None;
            }
            std::cmp::Ordering::Less => {}
        }
        if !marker.keep_suffix {
            self.log.clear();
            self.wal_term_at_base = None;
        }
        Ok(())
    }

    /// Applies the snapshot decision if the WAL had no marker for the snapshot file.
    /// In lenient mode, also returns a marker of our snapshot to write if the WAL ends
    /// after a lost snapshot's marker, so that the next replay reads what follows it as
    /// written from the recovered state.
    fn finish(mut self) -> (HardState, Log<Entry>, Option<Marker>) {
        let pending = match self.snapshot {
            Some((index, term)) if !self.snapshot_marker_seen => {
                let keep_suffix = self.wal_term_at_base == Some(term);
                if !keep_suffix {
                    self.log.clear();
                }
                Some(Marker { index, term, keep_suffix })
            }
            _ if self.lost_base.is_some() => {
                Some(Marker { index: self.log.base_index(), term: self.log.base_term(), keep_suffix: true })
            }
            _ => None,
        };
        if self.lenient {
            tracing::warn!(
                snapshot_index = self.log.base_index(),
                last_index = self.log.last_index(),
                dropped_entries = self.dropped,
                "replayed the WAL over an older snapshot than the one refused; entries it could not \
                 place contiguously were dropped (the leader sends them again)"
            );
        }
        (self.hard_state, self.log, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/x"), 0x1f);
        assert_eq!(path, Path::new("/x/000000000000001f.wal"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some(0x1f));
        assert_eq!(parse_segment_name("1f.wal"), None);
        assert_eq!(parse_segment_name("000000000000001g.wal"), None);
        assert_eq!(parse_segment_name("000000000000001f.tmp"), None);
    }

    #[test]
    fn decode_segment_reads_records_and_refuses_damage() {
        let limit = codec::DEFAULT_MAX_RECORD_SIZE;
        let entries: Vec<Entry> = (1..=3)
            .map(|index| Entry { index, term: 1, kind: raftkv_raft::EntryKind::Command, data: "x".into() })
            .collect();
        let mut buf = Vec::new();
        codec::encode_entries(&mut buf, &entries, limit).unwrap();
        codec::encode_hard_state(&mut buf, &HardState { term: 1, vote: Some(1), commit: 2, recovering: false }, limit)
            .unwrap();
        let seg = decode_segment(&buf, true, None, limit).unwrap();
        assert_eq!((seg.valid_len, seg.first_index, seg.last_index), (buf.len() as u64, 1, 3));
        assert_eq!(seg.hard_state.commit, 2);
        // A torn tail is cut in the last segment and corruption in any other.
        let torn = &buf[..buf.len() - 3];
        assert!(decode_segment(torn, true, None, limit).unwrap().valid_len < torn.len() as u64);
        let err = decode_segment(torn, false, None, limit).unwrap_err().to_string();
        assert!(err.contains("<segment>"), "{err}");
        // A length over the limit is never a torn write.
        assert!(decode_segment(&[0xff; 64], true, None, limit).is_err());
        assert_eq!(decode_segment(&[], true, None, limit).unwrap().valid_len, 0);
    }

    /// Four hard-state records of 34 bytes, each exactly at a limit of 26, the second
    /// with a bad checksum.
    fn damaged_second_of_four() -> (Vec<u8>, u32) {
        let limit = 26;
        let mut buf = Vec::new();
        for commit in 0..4 {
            let hs = HardState { term: 1, vote: None, commit, recovering: false };
            codec::encode_hard_state(&mut buf, &hs, limit).unwrap();
        }
        assert_eq!(buf.len(), 4 * 34);
        buf[34 + 20] ^= 1;
        (buf, limit)
    }

    #[test]
    fn a_damaged_record_followed_by_one_at_the_limit_is_corruption_naming_it() {
        let (buf, limit) = damaged_second_of_four();
        let err = decode_segment(&buf, true, None, limit).unwrap_err().to_string();
        assert!(err.contains("byte offset 34"), "{err}");
        assert!(err.contains("not a torn write at the end of the log: a valid record follows at offset 68"), "{err}");
        // In a segment other than the last no torn write is possible: the reason alone.
        let err = decode_segment(&buf, false, None, limit).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch") && !err.contains("torn"), "{err}");
    }

    #[test]
    fn strict_replay_refuses_a_gap_and_markers_its_snapshot_does_not_explain() {
        let limit = codec::DEFAULT_MAX_RECORD_SIZE;
        let entry = |index| Entry { index, term: 1, kind: raftkv_raft::EntryKind::Command, data: "x".into() };
        let mut gap = Vec::new();
        codec::encode_entries(&mut gap, &[entry(1), entry(3)], limit).unwrap();
        let marker = |index, term| {
            let mut buf = Vec::new();
            codec::encode_marker(&mut buf, &Marker { index, term, keep_suffix: true }, limit).unwrap();
            buf
        };
        for (buf, snapshot, says) in [
            (gap, None, "entry 3 leaves a gap"),
            (marker(8, 1), Some((4, 1)), "newer than the newest snapshot file (index 4)"),
            (marker(4, 1), Some((4, 2)), "snapshot marker at index 4 has term 1, the snapshot file term 2"),
        ] {
            let err = decode_segment(&buf, true, snapshot, limit).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt { offset: 0, .. }) && err.to_string().contains(says), "{err}");
        }
    }
}
