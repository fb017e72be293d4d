//! [`DiskStorage`]: the WAL, hard state and snapshots of one node.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftkv_raft::{Entry, HardState, Recovered, Snapshot, SnapshotMeta};

use crate::codec::{self, DEFAULT_MAX_RECORD_SIZE, Marker};
use crate::disk::{Counters, Disk};
use crate::error::StorageError;
use crate::fs::{FileHandle, FileSystem, RealFs};
use crate::log::{Log, last_after};
use crate::snap::{Loaded, SnapDir, SnapshotFile, WrittenSnapshot};
use crate::wal::{self, Segment};

/// Capacity of the batch encoding buffer kept between batches: the group-commit
/// writer's default batch byte bound plus headers fits; a larger one is released.
const MAX_KEPT_WRITE_BUF: usize = 20 << 20;

type Result<T> = std::result::Result<T, StorageError>;

/// When writes are made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging every write (and the directory on file changes).
    #[default]
    Always,
    /// Never fsync. Acknowledged data may be lost on power failure: benchmarks only.
    Never,
}

/// How to open a [`DiskStorage`].
#[derive(Clone)]
pub struct StorageOptions {
    pub fsync: FsyncPolicy,
    /// A segment is rolled over once it holds at least this many bytes.
    pub segment_size: u64,
    /// The largest record (`len` field) written or accepted on read. Never lower it
    /// below the size of records already on disk: they would read as corrupt.
    pub max_record_size: u32,
    /// Zeros written ahead of the current segment's end, this many bytes at a time
    /// (0: none; with `FsyncPolicy::Never`, never). A write into space already written
    /// and synced does not grow the file, so its fsync has no size or extent change to
    /// journal: measured here, an fdatasync after a 200 B append took 259 µs and after
    /// an overwrite 176 µs.
    pub zero_fill_bytes: u64,
    pub fs: Arc<dyn FileSystem>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            fsync: FsyncPolicy::Always,
            segment_size: 64 << 20,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
            zero_fill_bytes: 1 << 20,
            fs: Arc::new(RealFs),
        }
    }
}

/// Equal when every setting is, the file systems being the same instance.
impl PartialEq for StorageOptions {
    fn eq(&self, other: &Self) -> bool {
        self.fsync == other.fsync
            && self.segment_size == other.segment_size
            && self.max_record_size == other.max_record_size
            && self.zero_fill_bytes == other.zero_fill_bytes
            && Arc::ptr_eq(&self.fs, &other.fs)
    }
}

impl Eq for StorageOptions {}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageOptions")
            .field("fsync", &self.fsync)
            .field("segment_size", &self.segment_size)
            .field("max_record_size", &self.max_record_size)
            .field("zero_fill_bytes", &self.zero_fill_bytes)
            .finish_non_exhaustive()
    }
}

/// What one durable write cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub bytes: u64,
    pub fsynced: bool,
    pub fsync_duration: Duration,
}

/// Totals since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// File fsyncs (`fdatasync`) of WAL segments and snapshot files.
    pub fsyncs: u64,
    /// Directory fsyncs.
    pub dir_fsyncs: u64,
    pub bytes_written: u64,
    /// WAL records written (a snapshot file is not a record).
    pub records_written: u64,
}

impl StorageStats {
    pub(crate) fn from_counters(c: &Counters) -> Self {
        StorageStats {
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            dir_fsyncs: c.dir_fsyncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            records_written: c.records_written.load(Ordering::Relaxed),
        }
    }
}

/// One node's durable state: a WAL in `<dir>/wal/` and snapshots in `<dir>/snap/`.
pub struct DiskStorage {
    disk: Disk,
    wal_dir: PathBuf,
    snaps: SnapDir,
    segment_size: u64,
    max_record: u32,
    zero_fill_bytes: u64,
    /// Oldest first; the last one is the current segment, open in `file`.
    segments: Vec<Segment>,
    file: Box<dyn FileHandle>,
    /// The end of the zeros written ahead in the current segment (0: none).
    zeroed_to: u64,
    /// Indices and terms of the entries after the snapshot.
    log: Log<u64>,
    hard_state: HardState,
    /// Set by the first I/O error while writing; every later write fails with it.
    poisoned: Option<String>,
    /// The records of a batch are encoded here before their one write. Reused: a
    /// fresh buffer per batch grew by doubling (reallocating and copying, and for large
    /// batches mapping fresh pages) on every group commit.
    write_buf: Vec<u8>,
}

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("wal_dir", &self.wal_dir)
            .field("segments", &self.segments.len())
            .field("snapshot_index", &self.log.base_index())
            .field("last_index", &self.log.last_index())
            .field("hard_state", &self.hard_state)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl DiskStorage {
    /// Opens (creating if absent) the storage in `dir` and recovers its content.
    pub fn open(dir: &Path, opts: StorageOptions) -> Result<(DiskStorage, Recovered)> {
        check_options(&opts)?;
        let disk = Disk { fs: opts.fs.clone(), sync: opts.fsync == FsyncPolicy::Always, counters: Arc::default() };
        if !disk.sync {
            tracing::warn!(
                dir = %dir.display(),
                "fsync disabled: data acknowledged may be lost on power failure; benchmarks only"
            );
        }
        let (wal_dir, snap_dir) = (dir.join("wal"), dir.join("snap"));
        for d in [&wal_dir, &snap_dir] {
            disk.create_dir_all(d)?;
        }
        disk.sync_dir(dir)?;
        // Why the parent too: `dir` itself may have just been created.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            disk.sync_dir(parent)?;
        }
        let snaps = SnapDir::new(disk.clone(), snap_dir);
        snaps.remove_tmp()?;
        let Loaded { snapshot, lost_index } = snaps.load_newest_valid()?;
        let position = snapshot.as_ref().map(|s| (s.meta.index, s.meta.term));
        let replayed = wal::replay(&disk, &wal_dir, position, lost_index, opts.max_record_size)?;
        let (storage, entries) = Self::resume(disk, wal_dir, snaps, &opts, replayed)?;
        // Nothing recovered: a first start, or a lost disk (see `Recovered::lost_state`).
        let lost_state = snapshot.is_none() && entries.is_empty();
        let recovered = Recovered { hard_state: storage.hard_state, snapshot, entries, lost_state };
        Ok((storage, recovered))
    }

    /// Builds the storage from a replay: reopens (or creates) the current segment,
    /// cuts a torn tail, and writes what recovery owes the WAL.
    fn resume(
        disk: Disk,
        wal_dir: PathBuf,
        snaps: SnapDir,
        opts: &StorageOptions,
        replayed: wal::Replayed,
    ) -> Result<(DiskStorage, Vec<Entry>)> {
        let wal::Replayed { mut segments, torn, mut hard_state, log, pending_marker } = replayed;
        // Why: the commit index may name entries that are not here any more (a refused
        // snapshot); claiming them committed would invent state. Written back, so that it
        // cannot apply to entries appended later.
        let clamped = hard_state.commit > log.last_index();
        if clamped {
            tracing::warn!(
                commit = hard_state.commit,
                last_index = log.last_index(),
                "the recovered commit index is beyond the recovered log; lowering it"
            );
            hard_state.commit = log.last_index();
        }
        let file = match segments.last() {
            Some(last) => reopen_segment(&disk, last, torn)?,
            None => {
                let path = wal::segment_path(&wal_dir, 1);
                let file = disk.create(&path)?;
                disk.sync_dir(&wal_dir)?;
                segments.push(Segment { seq: 1, path, len: 0, max_index: None });
                file
            }
        };
        let mut terms = Log::new(log.base_index(), log.base_term());
        let entries = log.into_items();
        for e in &entries {
            terms.apply(e.index, e.term);
        }
        let sync = disk.sync;
        let mut storage = DiskStorage {
            disk,
            wal_dir,
            snaps,
            segment_size: opts.segment_size,
            max_record: opts.max_record_size,
            zero_fill_bytes: if sync { opts.zero_fill_bytes } else { 0 },
            // Reopening cut any zeros: there are none until the first write.
            zeroed_to: 0,
            segments,
            file,
            log: terms,
            hard_state,
            poisoned: None,
            write_buf: Vec::new(),
        };
        storage.write_owed(pending_marker, clamped)?;
        Ok((storage, entries))
    }

    /// Writes the hard state if the current segment is empty (its header) or recovery
    /// changed it, and the marker replay asked for: that of a snapshot whose save crashed
    /// before its marker, or that of the snapshot recovered on after a refused one.
    fn write_owed(&mut self, marker: Option<Marker>, hard_state_changed: bool) -> Result<()> {
        let mut buf = Vec::new();
        let mut records = 0;
        if self.current().len == 0 || hard_state_changed {
            codec::encode_hard_state(&mut buf, &self.hard_state, self.max_record)?;
            records += 1;
        }
        if let Some(m) = &marker {
            codec::encode_marker(&mut buf, m, self.max_record)?;
            records += 1;
        }
        if records > 0 {
            self.write_wal(&buf, records)?;
        }
        Ok(())
    }

    /// Appends `entries` (which may overwrite a suffix: an entry at or below the last
    /// index truncates the log there) and/or `hard_state` as one write, then fsyncs per
    /// policy. On `Ok` the write is durable.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<WriteStats> {
        let (mut results, write) = self.append_batch(&[(entries, hard_state.copied())]);
        results.pop().expect("one result per request")?;
        write
    }

    /// Validates and encodes each request in order (a failing request is skipped and
    /// its error returned in its slot), writes the rest as one write with one fsync,
    /// and applies them. The second result is that of the write.
    pub(crate) fn append_batch(
        &mut self,
        requests: &[(&[Entry], Option<HardState>)],
    ) -> (Vec<Result<()>>, Result<WriteStats>) {
        if let Err(e) = self.check_healthy() {
            return (requests.iter().map(|_| Err(e.clone())).collect(), Err(e));
        }
        let mut last = self.log.last_index();
        let mut prev_hs = self.hard_state;
        let mut buf = std::mem::take(&mut self.write_buf);
        buf.clear();
        let mut records = 0;
        let results: Vec<Result<()>> = requests
            .iter()
            .map(|&(entries, hs)| {
                records += self.encode(entries, hs, (&mut last, &mut prev_hs), &mut buf)?;
                Ok(())
            })
            .collect();
        if buf.is_empty() {
            self.keep_write_buf(buf);
            return (results, Ok(WriteStats::default()));
        }
        let write = self.write_wal(&buf, records);
        self.keep_write_buf(buf);
        if write.is_ok() {
            let written = requests.iter().zip(&results).filter(|(_, r)| r.is_ok());
            for (&(entries, hs), _) in written {
                self.apply(entries, hs);
            }
            debug_assert_eq!(self.log.last_index(), last, "validation and apply agree");
        }
        (results, write)
    }

    /// Keeps `buf`'s memory for the next batch, unless one unusually large batch
    /// grew it beyond [`MAX_KEPT_WRITE_BUF`].
    fn keep_write_buf(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > MAX_KEPT_WRITE_BUF {
            buf = Vec::new();
        }
        self.write_buf = buf;
    }

    /// Validates one request against a log ending at `last` and the hard state
    /// `prev_hs` (what the batch wrote so far), appends its records to `out` and
    /// returns their count. On error neither `out` nor the cursors change.
    fn encode(
        &self,
        entries: &[Entry],
        hs: Option<HardState>,
        (last, prev_hs): (&mut u64, &mut HardState),
        out: &mut Vec<u8>,
    ) -> Result<u64> {
        let base = self.log.base_index();
        let mut new_last = *last;
        for e in entries {
            new_last = last_after(base, new_last, e.index).map_err(StorageError::invalid)?;
        }
        if let Some(hs) = hs {
            check_hard_state(prev_hs, &hs)?;
        }
        let start = out.len();
        let encoded = self.encode_records(entries, hs.as_ref(), out);
        if encoded.is_err() {
            out.truncate(start);
        }
        encoded?;
        *last = new_last;
        if let Some(hs) = hs {
            *prev_hs = hs;
        }
        Ok(u64::from(!entries.is_empty()) + u64::from(hs.is_some()))
    }

    fn encode_records(&self, entries: &[Entry], hs: Option<&HardState>, out: &mut Vec<u8>) -> Result<()> {
        if !entries.is_empty() {
            codec::encode_entries(out, entries, self.max_record)?;
        }
        if let Some(hs) = hs {
            codec::encode_hard_state(out, hs, self.max_record)?;
        }
        Ok(())
    }

    /// Updates the in-memory view after a durable write.
    fn apply(&mut self, entries: &[Entry], hard_state: Option<HardState>) {
        let segment = self.segments.last_mut().expect("a current segment");
        for e in entries {
            self.log.apply(e.index, e.term);
            segment.max_index = segment.max_index.max(Some(e.index));
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs;
        }
    }

    /// Saves `snapshot` durably, marks the WAL, and compacts: deletes old segments
    /// whose entries are all covered, and all but the newest two snapshot files.
    ///
    /// Entries above the snapshot survive only if the log holds the snapshot's index
    /// with its term; otherwise the whole log is discarded (Raft §7).
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.check_snapshot(&snapshot.meta)?;
        let written = self.snaps.write(snapshot);
        if let Err(e) = &written {
            self.poison(e);
        }
        self.install(written?).map(drop)
    }

    /// Starts a snapshot file at `meta` with `data_len` bytes of data, for the caller
    /// to stream the data into and hand to [`commit_snapshot`](Self::commit_snapshot).
    /// Writing it changes nothing else (an error there does not fail the storage).
    pub fn snapshot_file(&self, meta: SnapshotMeta, data_len: u64) -> Result<SnapshotFile> {
        self.snaps.create(meta, data_len)
    }

    /// [`save_snapshot`](Self::save_snapshot) of a snapshot file written through
    /// [`snapshot_file`](Self::snapshot_file): makes it durable and puts it in place,
    /// marks the WAL, compacts, and returns the snapshot, its data mapped from the file
    /// (read into memory on a file system other than [`RealFs`]). A refused one is
    /// deleted.
    pub fn commit_snapshot(&mut self, written: WrittenSnapshot) -> Result<Snapshot> {
        if let Err(e) = self.check_snapshot(written.meta()) {
            self.snaps.discard(written);
            return Err(e);
        }
        let (meta, data) = (written.meta().clone(), written.data_range());
        let path = self.install(written)?;
        let data = self.snaps.map(&path, data)?;
        Ok(Snapshot { meta, data })
    }

    /// Whether a snapshot at `meta` may be saved now.
    fn check_snapshot(&self, meta: &SnapshotMeta) -> Result<()> {
        self.check_healthy()?;
        let (index, term) = (meta.index, meta.term);
        let (base, base_term) = (self.log.base_index(), self.log.base_term());
        if index < base || (index == base && term != base_term) {
            return Err(StorageError::invalid(format!(
                "snapshot at index {index} term {term} is not newer than the current one at index {base} term {base_term}"
            )));
        }
        Ok(())
    }

    /// Installs a written snapshot file and compacts behind it; returns its path.
    fn install(&mut self, written: WrittenSnapshot) -> Result<PathBuf> {
        let result = self.install_and_compact(written);
        if let Err(e) = &result {
            self.poison(e);
        }
        result
    }

    fn install_and_compact(&mut self, written: WrittenSnapshot) -> Result<PathBuf> {
        let (index, term) = (written.meta().index, written.meta().term);
        let path = self.snaps.install(written)?;
        // Why the marker comes after the file: a marker without its file would be
        // unrecoverable, while a file without its marker is completed at open.
        let keep_suffix = self.log.keeps_suffix(index, term);
        let mut buf = Vec::new();
        codec::encode_marker(&mut buf, &Marker { index, term, keep_suffix }, self.max_record)?;
        self.write_wal(&buf, 1)?;
        self.log.apply_snapshot(index, term, keep_suffix);
        self.delete_covered_segments(index, keep_suffix)?;
        self.snaps.prune()?;
        Ok(path)
    }

    /// Deletes the longest prefix of non-current segments whose entries are all
    /// covered by the snapshot. Why a prefix: a later segment may overwrite entries of
    /// an earlier one, and deleting it alone would resurrect what it truncated.
    fn delete_covered_segments(&mut self, index: u64, keep_suffix: bool) -> Result<()> {
        let covered = |s: &Segment| !keep_suffix || s.max_index.is_none_or(|m| m <= index);
        let count = self.segments[..self.segments.len() - 1].iter().take_while(|s| covered(s)).count();
        // Oldest first, each removal made durable before the next: whatever a crash
        // leaves is still a contiguous run of segments.
        for segment in &self.segments[..count] {
            self.disk.remove_file(&segment.path)?;
            self.disk.sync_dir(&self.wal_dir)?;
        }
        if count > 0 {
            tracing::debug!(deleted = count, snapshot_index = index, "compacted the WAL");
        }
        self.segments.drain(..count);
        debug_assert!(!self.segments.is_empty(), "the current segment is never deleted");
        Ok(())
    }

    /// Writes `buf` (whole records) to the current segment, rolling over first if it
    /// is full, then fsyncs per policy. Any failure poisons the storage.
    fn write_wal(&mut self, buf: &[u8], records: u64) -> Result<WriteStats> {
        self.check_healthy()?;
        let result = self.write_wal_unchecked(buf, records);
        if let Err(e) = &result {
            self.poison(e);
        }
        result
    }

    fn write_wal_unchecked(&mut self, buf: &[u8], records: u64) -> Result<WriteStats> {
        if self.current().len >= self.segment_size {
            self.roll()?;
        }
        let path = self.current().path.clone();
        self.make_room(&path, buf.len() as u64)?;
        self.disk.write(self.file.as_mut(), &path, buf)?;
        self.segments.last_mut().expect("a current segment").len += buf.len() as u64;
        Counters::add(&self.disk.counters.records_written, records);
        let fsync_duration = self.disk.sync_file(self.file.as_mut(), &path)?;
        Ok(WriteStats { bytes: buf.len() as u64, fsynced: self.disk.sync, fsync_duration })
    }

    /// Zero-fills the next `zero_fill_bytes` (or `len`, if larger) when a write of
    /// `len` bytes would go past the zeros written ahead. Their fsync is the write's.
    fn make_room(&mut self, path: &Path, len: u64) -> Result<()> {
        let end = self.current().len;
        if self.zero_fill_bytes == 0 || end + len <= self.zeroed_to {
            return Ok(());
        }
        let ahead = self.zero_fill_bytes.max(len);
        self.file.zero_fill_ahead(ahead).map_err(|e| StorageError::io("zero-fill", path, e))?;
        self.zeroed_to = end + ahead;
        debug_assert!(
            end + len <= self.zeroed_to,
            "a write of {len} bytes past the zeros ending at {}",
            self.zeroed_to
        );
        Ok(())
    }

    /// Cuts the current segment's zeros written ahead: replay reads every segment but
    /// the last to its end, where only records may be. Durable before a newer segment
    /// exists.
    fn cut_zeros(&mut self) -> Result<()> {
        let (len, path) = (self.current().len, self.current().path.clone());
        if self.zeroed_to > len {
            self.disk.set_len(self.file.as_mut(), &path, len)?;
            self.disk.sync_file(self.file.as_mut(), &path)?;
            self.zeroed_to = 0;
        }
        Ok(())
    }

    /// Starts a new segment whose first record is the current hard state. Its fsync
    /// is the caller's, which follows at once.
    fn roll(&mut self) -> Result<()> {
        self.cut_zeros()?;
        let seq = self.current().seq + 1;
        let path = wal::segment_path(&self.wal_dir, seq);
        let file = self.disk.create(&path)?;
        self.disk.sync_dir(&self.wal_dir)?;
        self.file = file;
        self.zeroed_to = 0;
        self.segments.push(Segment { seq, path: path.clone(), len: 0, max_index: None });
        let mut buf = Vec::new();
        codec::encode_hard_state(&mut buf, &self.hard_state, self.max_record)?;
        self.disk.write(self.file.as_mut(), &path, &buf)?;
        self.segments.last_mut().expect("just pushed").len = buf.len() as u64;
        Counters::add(&self.disk.counters.records_written, 1);
        tracing::debug!(segment = %path.display(), "rolled over to a new WAL segment");
        Ok(())
    }

    fn current(&self) -> &Segment {
        self.segments.last().expect("a current segment")
    }

    fn check_healthy(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Failed { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: &StorageError) {
        if error.poisons() && self.poisoned.is_none() {
            tracing::error!(%error, "storage write failed; refusing all further writes");
            self.poisoned = Some(error.to_string());
        }
    }

    /// Totals since open.
    pub fn stats(&self) -> StorageStats {
        StorageStats::from_counters(&self.disk.counters)
    }

    /// A handle on the snapshot directory, to start snapshot files from another thread.
    pub(crate) fn snap_dir_handle(&self) -> SnapDir {
        self.snaps.clone()
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.disk.counters.clone()
    }

    /// The last durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The index of the last entry (or of the snapshot if no entry follows it).
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The index of the newest snapshot (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.log.base_index()
    }

    /// Where the snapshots live (`<dir>/snap`).
    pub fn snap_dir(&self) -> &Path {
        self.snaps.path()
    }

    /// Where the WAL segments live (`<dir>/wal`).
    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }
}

fn check_options(opts: &StorageOptions) -> Result<()> {
    if opts.segment_size == 0 {
        return Err(StorageError::invalid("segment_size must be positive"));
    }
    // Room for the largest fixed-size record (a hard state: 25 bytes).
    if opts.max_record_size < 64 {
        return Err(StorageError::invalid("max_record_size must be at least 64 bytes"));
    }
    Ok(())
}

/// Opens the last segment for appending, first cutting a torn tail or the zeros
/// written ahead back to its last complete record (durably, so a torn tail cannot
/// reappear).
fn reopen_segment(disk: &Disk, last: &Segment, torn: Option<u64>) -> Result<Box<dyn FileHandle>> {
    let mut file = disk.open_append(&last.path)?;
    if let Some(file_len) = torn {
        debug_assert!(last.len < file_len);
        disk.set_len(file.as_mut(), &last.path, last.len)?;
        disk.sync_file(file.as_mut(), &last.path)?;
        tracing::info!(
            file = %last.path.display(), offset = last.len, dropped_bytes = file_len - last.len,
            "cut the WAL back to its last complete record"
        );
    }
    Ok(file)
}

/// A hard state may move on, never back: its term never decreases, a vote cast in a
/// term is never changed or forgotten in that term (Raft's one vote per term), and the
/// commit index never decreases within a term. Writing one that breaks this after
/// `old` is the caller's bug; refusing it keeps what is on disk true.
fn check_hard_state(old: &HardState, hs: &HardState) -> Result<()> {
    if hs.vote == Some(0) {
        return Err(StorageError::invalid("a vote for node 0 (0 means no vote on disk)"));
    }
    if hs.term < old.term {
        return Err(StorageError::invalid(format!("a hard state of term {} after term {}", hs.term, old.term)));
    }
    if hs.term == old.term && old.vote.is_some() && hs.vote != old.vote {
        return Err(StorageError::invalid(format!(
            "a vote for {:?} in term {}, which already has a vote for {:?}",
            hs.vote, hs.term, old.vote
        )));
    }
    debug_assert!(
        hs.term > old.term || hs.commit >= old.commit,
        "commit {} after {} in one term",
        hs.commit,
        old.commit
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hard_state_of_a_batch_is_checked_against_the_one_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
        let hs = |term, vote| HardState { term, vote, commit: 0, recovering: false };
        let (results, write) = s.append_batch(&[(&[], Some(hs(4, Some(1)))), (&[], Some(hs(4, Some(3))))]);
        write.unwrap();
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("already has a vote for Some(1)"), "{err}");
        assert_eq!(s.hard_state(), hs(4, Some(1)), "the refused one was not applied");
    }

    #[test]
    fn the_write_buffer_is_kept_between_batches_unless_it_grew_too_large() {
        assert!(MAX_KEPT_WRITE_BUF >= crate::GroupCommitOptions::default().max_batch_bytes, "a default batch fits");
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
        s.append(&[], Some(&HardState { term: 1, ..HardState::default() })).unwrap();
        assert!(s.write_buf.capacity() > 0, "kept after a small batch");
        s.keep_write_buf(Vec::with_capacity(MAX_KEPT_WRITE_BUF));
        assert_eq!(s.write_buf.capacity(), MAX_KEPT_WRITE_BUF);
        s.keep_write_buf(Vec::with_capacity(MAX_KEPT_WRITE_BUF + 1));
        assert_eq!(s.write_buf.capacity(), 0, "released");
    }

    #[test]
    fn only_io_errors_poison_and_the_first_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
        s.poison(&StorageError::invalid("a caller's mistake: the files are as they were"));
        assert!(s.check_healthy().is_ok());
        let io_error = |path: &str| StorageError::io("write", path, std::io::Error::other("injected"));
        s.poison(&io_error("/first"));
        s.poison(&io_error("/second"));
        let err = s.check_healthy().unwrap_err().to_string();
        assert!(err.contains("/first"), "{err}");
    }
}
