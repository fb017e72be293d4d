//! Snapshot files: `<dir>/snap/<index:016x>-<term:016x>.snap`.
//!
//! A snapshot file that fails its checks at open is never deleted: it is moved aside to
//! `<dir>/snap/corrupt-<name>` (evidence), and the next older one is tried.
//!
//! Layout (little-endian): magic `RKVSNAP\0`, version u32, index u64, term u64,
//! voter count u32 + ids u64, learner count u32 + ids u64, data length u64, data,
//! then a crc32c u32 over everything before it.

use std::collections::BTreeSet;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftkv_raft::{ConfState, Snapshot, SnapshotMeta};

use crate::codec::Reader;
use crate::disk::Disk;
use crate::error::StorageError;
use crate::fs::FileHandle;

type Result<T, E = StorageError> = std::result::Result<T, E>;

const MAGIC: &[u8; 8] = b"RKVSNAP\0";
const VERSION: u32 = 1;
const TMP_SUFFIX: &str = ".tmp";
/// The name prefix of a snapshot file refused as corrupt and moved aside.
const CORRUPT_PREFIX: &str = "corrupt-";
/// How many snapshot files survive pruning.
const KEEP: usize = 2;
/// Bytes a [`SnapshotFile`] gathers before each write to its file.
const WRITE_BUF: usize = 256 << 10;

fn file_name(index: u64, term: u64) -> String {
    format!("{index:016x}-{term:016x}.snap")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let (index, term) = name.strip_suffix(".snap")?.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(s, 16).ok()).flatten()
    };
    Some((hex(index)?, hex(term)?))
}

/// The position of a snapshot moved aside as `corrupt-<name>[.<n>]`.
fn parse_corrupt_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(CORRUPT_PREFIX)?;
    let end = rest.find(".snap")? + ".snap".len();
    parse_name(&rest[..end])
}

/// What [`SnapDir::load_newest_valid`] found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The newest snapshot that passed its checks.
    pub snapshot: Option<Snapshot>,
    /// The highest index of a snapshot ever refused as corrupt (moved aside, now or at
    /// an earlier open). The WAL may depend on it: its markers, and compaction behind it.
    pub lost_index: Option<u64>,
}

/// What the snapshot directory holds.
struct Listing {
    /// Complete snapshot files (index, term), oldest first.
    found: Vec<(u64, u64)>,
    /// The highest index of a snapshot moved aside as corrupt.
    lost: Option<u64>,
}

/// The snapshot directory.
#[derive(Clone)]
pub(crate) struct SnapDir {
    disk: Disk,
    dir: PathBuf,
}

impl SnapDir {
    pub fn new(disk: Disk, dir: PathBuf) -> Self {
        SnapDir { disk, dir }
    }

    /// Deletes leftover `*.tmp` files of interrupted saves (the previous snapshot
    /// stays the newest complete one).
    pub fn remove_tmp(&self) -> Result<()> {
        let mut removed = false;
        for name in self.disk.list_dir(&self.dir)? {
            if name.ends_with(TMP_SUFFIX) {
                tracing::info!(file = %name, "removing an interrupted snapshot");
                self.disk.remove_file(&self.dir.join(&name))?;
                removed = true;
            }
        }
        if removed {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Complete snapshot files, oldest first.
    fn list(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self.scan()?.found)
    }

    fn scan(&self) -> Result<Listing> {
        let mut found = Vec::new();
        let mut lost = None;
        for name in self.disk.list_dir(&self.dir)? {
            if let Some(pos) = parse_name(&name) {
                found.push(pos);
            } else if let Some((index, _)) = parse_corrupt_name(&name) {
                lost = lost.max(Some(index));
            } else {
                tracing::warn!(dir = %self.dir.display(), file = %name, "ignoring a file that is not a snapshot");
            }
        }
        found.sort_unstable();
        Ok(Listing { found, lost })
    }

    /// Loads the newest snapshot that passes its checks. One that fails them (checksum,
    /// format, a name that disagrees with the content) is refused loudly and moved aside
    /// as `corrupt-<name>`, and the next older one is tried. Falling back is safe only
    /// because the caller learns `lost_index` and replays the WAL accordingly (entries
    /// compacted behind the lost snapshot are not silently taken as present).
    pub fn load_newest_valid(&self) -> Result<Loaded> {
        let Listing { found, lost: mut lost_index } = self.scan()?;
        for &(index, term) in found.iter().rev() {
            let path = self.dir.join(file_name(index, term));
            match self.load(&path, index, term)? {
                Ok(snapshot) => return Ok(Loaded { snapshot: Some(snapshot), lost_index }),
                Err(corrupt) => {
                    let moved_to = self.move_aside(&path)?;
                    tracing::error!(
                        file = %path.display(),
                        moved_to = %moved_to.display(),
                        error = %corrupt,
                        "refusing a corrupt snapshot: moved it aside; recovering from an older snapshot \
                         and the WAL, or from the leader"
                    );
                    lost_index = lost_index.max(Some(index));
                }
            }
        }
        Ok(Loaded { snapshot: None, lost_index })
    }

    /// Reads and checks one snapshot file: `Err` for an I/O error, `Ok(Err)` if it is
    /// corrupt.
    fn load(&self, path: &Path, index: u64, term: u64) -> Result<Result<Snapshot>> {
        // Mapped (on the real file system): the checksum reads every page once, but as
        // page cache, and without a copy.
        let bytes = self.disk.read_shared(path)?;
        let snapshot = match decode(bytes) {
            Ok(s) => s,
            Err((offset, reason)) => return Ok(Err(StorageError::corrupt(path, offset, reason))),
        };
        if (snapshot.meta.index, snapshot.meta.term) != (index, term) {
            let reason = format!(
                "snapshot file content is at index {} term {}, its name says index {index} term {term}",
                snapshot.meta.index, snapshot.meta.term
            );
            return Ok(Err(StorageError::corrupt(path, 0, reason)));
        }
        Ok(Ok(snapshot))
    }

    /// Renames a refused snapshot to `corrupt-<name>` (with `.<n>` if that is taken),
    /// durably; returns the new path.
    fn move_aside(&self, path: &Path) -> Result<PathBuf> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let taken = self.disk.list_dir(&self.dir)?;
        let base = format!("{CORRUPT_PREFIX}{name}");
        let target = std::iter::once(base.clone())
            .chain((1..).map(|n| format!("{base}.{n}")))
            .find(|candidate| !taken.contains(candidate))
            .expect("an unbounded sequence of names has a free one");
        let to = self.dir.join(target);
        self.disk.rename(path, &to)?;
        self.disk.sync_dir(&self.dir)?;
        Ok(to)
    }

    /// Starts `<name>.tmp` for the snapshot at `meta` with `data_len` bytes of data,
    /// its header written; the data streams in through the returned file.
    pub fn create(&self, meta: SnapshotMeta, data_len: u64) -> Result<SnapshotFile> {
        let name = file_name(meta.index, meta.term);
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = self.disk.create(&tmp)?;
        let buf = header(&meta, data_len);
        let crc = crc32c::crc32c(&buf);
        let data_start = buf.len();
        let disk = self.disk.clone();
        Ok(SnapshotFile { disk, meta, tmp, file, buf, crc, data_start, data_len, written: 0, failed: None })
    }

    /// Writes `snapshot` to `<name>.tmp` (not yet durable: see [`install`](Self::install)).
    /// In parts rather than one encoded buffer: the data can be as large as the whole
    /// state, and a second copy of it would add that much to peak memory.
    pub fn write(&self, snapshot: &Snapshot) -> Result<WrittenSnapshot> {
        let mut file = self.create(snapshot.meta.clone(), snapshot.data.len() as u64)?;
        file.put(&snapshot.data)?;
        file.finish()
    }

    /// Makes a written snapshot durable and puts it in place: fsync, rename, fsync
    /// directory. Returns its path.
    pub fn install(&self, written: WrittenSnapshot) -> Result<PathBuf> {
        let WrittenSnapshot { meta, tmp, mut file, .. } = written;
        self.disk.sync_file(file.as_mut(), &tmp)?;
        drop(file);
        let path = self.dir.join(file_name(meta.index, meta.term));
        self.disk.rename(&tmp, &path)?;
        self.disk.sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Deletes a written snapshot that will not be installed; a failure only leaves a
    /// `.tmp` file, which the next open removes.
    pub fn discard(&self, written: WrittenSnapshot) {
        let WrittenSnapshot { tmp, file, .. } = written;
        drop(file);
        if let Err(e) = self.disk.remove_file(&tmp) {
            tracing::warn!(error = %e, "could not remove an unused snapshot file; the next open will");
        }
    }

    /// The data of the installed snapshot file at `path`, whose data lies at `data`:
    /// mapped, not read (see [`FileSystem::read_shared`](crate::FileSystem::read_shared)).
    pub fn map(&self, path: &Path, data: Range<usize>) -> Result<Bytes> {
        let bytes = self.disk.read_shared(path)?;
        let expected = data.end + 4;
        if bytes.len() != expected {
            let reason = format!("snapshot file is {} bytes just after saving, {expected} were written", bytes.len());
            return Err(StorageError::corrupt(path, bytes.len().min(expected) as u64, reason));
        }
        Ok(bytes.slice(data))
    }

    /// Deletes all but the newest [`KEEP`] snapshots.
    pub fn prune(&self) -> Result<()> {
        let all = self.list()?;
        let old = &all[..all.len().saturating_sub(KEEP)];
        for &(index, term) in old {
            self.disk.remove_file(&self.dir.join(file_name(index, term)))?;
        }
        if !old.is_empty() {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A snapshot file being written, `<name>.tmp`: its header is in, the data streams in
/// through [`io::Write`] (gathered in a small buffer, its CRC32C taken as it goes), and
/// [`finish`](Self::finish) adds the checksum. Nothing is fsynced or renamed here: that
/// is [`DiskStorage::commit_snapshot`](crate::DiskStorage::commit_snapshot)'s, on the
/// storage writer thread, so the thread that builds the data never waits for the disk.
/// A file dropped unfinished stays as `.tmp` until the next open removes it.
pub struct SnapshotFile {
    disk: Disk,
    meta: SnapshotMeta,
    tmp: PathBuf,
    file: Box<dyn FileHandle>,
    /// Bytes not yet written to `file`.
    buf: Vec<u8>,
    /// Of everything accepted so far, header included.
    crc: u32,
    /// Where the data starts in the file (the header's length).
    data_start: usize,
    /// Data bytes the header declares.
    data_len: u64,
    /// Data bytes accepted so far.
    written: u64,
    /// The first error: every later write fails with it, and so does `finish`.
    failed: Option<StorageError>,
}

impl SnapshotFile {
    /// Appends `data` to the snapshot's data.
    fn put(&mut self, data: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.put_unchecked(data);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn put_unchecked(&mut self, data: &[u8]) -> Result<()> {
        let total = self.written + data.len() as u64;
        if total > self.data_len {
            return Err(StorageError::invalid(format!(
                "{}: {total} bytes of snapshot data, more than the {} its header declares",
                self.tmp.display(),
                self.data_len
            )));
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.written = total;
        if self.buf.len() + data.len() > WRITE_BUF {
            self.flush_buf()?;
        }
        if data.len() >= WRITE_BUF {
            return self.disk.write(self.file.as_mut(), &self.tmp, data);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.disk.write(self.file.as_mut(), &self.tmp, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and the checksum, once all the declared data is in.
    pub fn finish(mut self) -> Result<WrittenSnapshot> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.written != self.data_len {
            return Err(StorageError::invalid(format!(
                "{}: {} bytes of snapshot data, its header declares {}",
                self.tmp.display(),
                self.written,
                self.data_len
            )));
        }
        let crc = self.crc.to_le_bytes();
        self.buf.extend_from_slice(&crc);
        self.flush_buf()?;
        let data = self.data_start..self.data_start + self.data_len as usize;
        Ok(WrittenSnapshot { meta: self.meta, tmp: self.tmp, file: self.file, data })
    }
}

/// Why a whole-buffer write: a snapshot's encoder writes in many small pieces, and
/// `write_all` is what it calls; `flush` does nothing (the file is written out by
/// [`SnapshotFile::finish`]). An error is the storage error, kept as the source.
impl io::Write for SnapshotFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.put(data).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A snapshot file written in full, not yet durable nor in place: for
/// [`DiskStorage::commit_snapshot`](crate::DiskStorage::commit_snapshot).
pub struct WrittenSnapshot {
    meta: SnapshotMeta,
    tmp: PathBuf,
    file: Box<dyn FileHandle>,
    /// Where the data lies in the file.
    data: Range<usize>,
}

impl WrittenSnapshot {
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    pub(crate) fn data_range(&self) -> Range<usize> {
        self.data.clone()
    }
}

fn put_set(out: &mut Vec<u8>, set: &BTreeSet<u64>) {
    out.extend_from_slice(&(set.len() as u32).to_le_bytes());
    for id in set {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// The bytes of a snapshot file before its data (which the data length ends).
fn header(meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    let ids = meta.conf.voters.len() + meta.conf.learners.len();
    let mut out = Vec::with_capacity(44 + 8 * ids);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    put_set(&mut out, &meta.conf.voters);
    put_set(&mut out, &meta.conf.learners);
    out.extend_from_slice(&data_len.to_le_bytes());
    out
}

/// Decodes a snapshot file; errors carry the byte offset of the problem. The data is
/// not copied: the snapshot's `data` is a slice of `bytes`.
fn decode(bytes: Bytes) -> Result<Snapshot, (u64, String)> {
    let Some(body_len) = bytes.len().checked_sub(4) else {
        return Err((0, format!("snapshot file of {} bytes is too short", bytes.len())));
    };
    let (body, trailer) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if stored != actual {
        let reason = format!("snapshot checksum mismatch (stored {stored:#010x}, computed {actual:#010x})");
        return Err((body_len as u64, reason));
    }
    // The checksum held, so a decoding error here means a format bug, not bit rot.
    let (meta, data) = decode_body(body).map_err(|reason| (0, reason))?;
    Ok(Snapshot { meta, data: bytes.slice(data) })
}

/// The metadata and where the data lies in `body`.
fn decode_body(body: &[u8]) -> Result<(SnapshotMeta, Range<usize>), String> {
    let mut r = Reader::new(body);
    if r.take(8)? != MAGIC {
        return Err("not a raftkv snapshot file (bad magic)".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("unsupported snapshot version {version} (expected {VERSION})"));
    }
    let (index, term) = (r.u64()?, r.u64()?);
    let voters = read_set(&mut r)?;
    let learners = read_set(&mut r)?;
    let len = usize::try_from(r.u64()?).map_err(|_| "snapshot data length overflows".to_string())?;
    let start = body.len() - r.remaining();
    r.take(len)?;
    r.finish()?;
    let conf = ConfState { voters, learners };
    Ok((SnapshotMeta { index, term, conf }, start..start + len))
}

fn read_set(r: &mut Reader<'_>) -> Result<BTreeSet<u64>, String> {
    let count = r.u32()?;
    (0..count).map(|_| r.u64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(snapshot: &Snapshot) -> Vec<u8> {
        let mut out = header(&snapshot.meta, snapshot.data.len() as u64);
        out.extend_from_slice(&snapshot.data);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn sample() -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index: 10,
                term: 3,
                conf: ConfState { voters: [1, 2, 3].into(), learners: [4].into() },
            },
            data: Bytes::from_static(b"state machine"),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let snapshot = sample();
        assert_eq!(decode(encode(&snapshot).into()).unwrap(), snapshot);
    }

    fn real_snap_dir(dir: &Path) -> SnapDir {
        let disk = Disk { fs: std::sync::Arc::new(crate::fs::RealFs), sync: true, counters: Default::default() };
        SnapDir::new(disk, dir.to_path_buf())
    }

    #[test]
    fn saved_file_is_the_encoding_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let snapshot = sample();
        snaps.install(snaps.write(&snapshot).unwrap()).unwrap();
        let written = std::fs::read(dir.path().join(file_name(10, 3))).unwrap();
        assert_eq!(written, encode(&snapshot));
        assert_eq!(snaps.load_newest_valid().unwrap().snapshot, Some(snapshot));
    }

    /// Data streamed in pieces of every size around the buffer's (one far larger) makes
    /// the same file as the one-piece encoding, and maps back to the same data.
    #[test]
    fn streamed_file_is_the_encoding_and_maps_back() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let data: Vec<u8> = (0..3 * WRITE_BUF + 12_345).map(|i| (i * 7 + i / 251) as u8).collect();
        let snapshot = Snapshot { data: Bytes::from(data.clone()), ..sample() };
        let mut file = snaps.create(snapshot.meta.clone(), data.len() as u64).unwrap();
        let mut rest = &data[..];
        for size in [1, WRITE_BUF - 1, 2, 5, 2 * WRITE_BUF, 100].into_iter().cycle() {
            let (piece, next) = rest.split_at(size.min(rest.len()));
            io::Write::write_all(&mut file, piece).unwrap();
            rest = next;
            if rest.is_empty() {
                break;
            }
        }
        let written = file.finish().unwrap();
        let range = written.data_range();
        assert!(dir.path().join(format!("{}{TMP_SUFFIX}", file_name(10, 3))).exists(), "not in place before install");
        let path = snaps.install(written).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), encode(&snapshot));
        assert_eq!(snaps.map(&path, range).unwrap(), snapshot.data);
        assert_eq!(snaps.load_newest_valid().unwrap().snapshot, Some(snapshot));
    }

    #[test]
    fn streaming_other_than_the_declared_length_fails() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let mut file = snaps.create(sample().meta, 4).unwrap();
        let err = io::Write::write_all(&mut file, b"12345").unwrap_err().to_string();
        assert!(err.contains("5 bytes of snapshot data, more than the 4 its header declares"), "{err}");
        assert!(io::Write::write_all(&mut file, b"1").is_err(), "refuses writes after an error");
        assert!(file.finish().is_err());
        let mut file = snaps.create(sample().meta, 4).unwrap();
        io::Write::write_all(&mut file, b"123").unwrap();
        let err = file.finish().err().unwrap().to_string();
        assert!(err.contains("3 bytes of snapshot data, its header declares 4"), "{err}");
    }

    /// Mapping is no way around the checks: an empty or cut file is refused as corrupt.
    #[test]
    fn a_mapped_file_that_is_empty_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let encoded = encode(&sample());
        std::fs::write(dir.path().join(file_name(10, 3)), &encoded[..encoded.len() - 1]).unwrap();
        std::fs::write(dir.path().join(file_name(11, 3)), b"").unwrap();
        let loaded = snaps.load_newest_valid().unwrap();
        assert_eq!((loaded.snapshot, loaded.lost_index), (None, Some(11)));
        let path = dir.path().join(file_name(12, 3));
        std::fs::write(&path, &encoded).unwrap();
        let err = snaps.map(&path, 0..encoded.len()).unwrap_err().to_string();
        assert!(err.contains(&format!(
            "{} bytes just after saving, {} were written",
            encoded.len(),
            encoded.len() + 4
        )));
    }

    #[test]
    fn small_pieces_are_gathered_into_buffer_sized_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::fault::FaultyFs::new();
        let disk = Disk { fs: std::sync::Arc::new(fs.clone()), sync: true, counters: Default::default() };
        let snaps = SnapDir::new(disk, dir.path().to_path_buf());
        let meta = sample().meta;
        // The header and the data fill the buffer exactly.
        let data = vec![7; WRITE_BUF - header(&meta, 0).len()];
        let mut file = snaps.create(meta, data.len() as u64).unwrap();
        for piece in data.chunks(1000) {
            io::Write::write_all(&mut file, piece).unwrap();
        }
        file.finish().unwrap();
        assert_eq!(fs.counts().writes, 1, "one write, of the buffer and the checksum");
    }

    #[test]
    fn write_takes_the_whole_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let mut file = snaps.create(sample().meta, 4).unwrap();
        assert_eq!(io::Write::write(&mut file, b"1234").unwrap(), 4);
        file.finish().unwrap();
    }

    #[test]
    fn the_header_fits_the_capacity_reserved_for_it() {
        for ids in [0, 1, 10] {
            let meta = SnapshotMeta {
                conf: ConfState { voters: (0..ids).collect(), learners: (0..ids).collect() },
                ..sample().meta
            };
            let header = header(&meta, 5);
            assert_eq!(header.len(), 44 + 16 * ids as usize);
            assert_eq!(header.capacity(), header.len(), "{ids} voters and learners: one allocation, no slack");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_two_and_fsyncs_the_directory_only_when_it_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let dir_fsyncs = || snaps.disk.counters.dir_fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        for index in [1, 2] {
            std::fs::write(dir.path().join(file_name(index, 1)), b"").unwrap();
        }
        snaps.prune().unwrap();
        assert_eq!(dir_fsyncs(), 0, "nothing deleted");
        std::fs::write(dir.path().join(file_name(3, 1)), b"").unwrap();
        snaps.prune().unwrap();
        assert_eq!(dir_fsyncs(), 1);
        assert_eq!(snaps.list().unwrap(), [(2, 1), (3, 1)]);
    }

    /// A second refused snapshot of the same name keeps both pieces of evidence.
    #[test]
    fn a_name_refused_twice_is_moved_aside_under_a_numbered_name() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = real_snap_dir(dir.path());
        let name = file_name(10, 3);
        for _ in 0..2 {
            std::fs::write(dir.path().join(&name), b"not a snapshot").unwrap();
            assert_eq!(snaps.load_newest_valid().unwrap().lost_index, Some(10));
        }
        let mut names = snaps.disk.list_dir(dir.path()).unwrap();
        names.sort();
        assert_eq!(names, [format!("{CORRUPT_PREFIX}{name}"), format!("{CORRUPT_PREFIX}{name}.1")]);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(decode(damaged.into()).is_err(), "bit {i} flip went unnoticed");
        }
        assert!(decode(bytes[..3].to_vec().into()).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(10, 3), "000000000000000a-0000000000000003.snap");
        assert_eq!(parse_name(&file_name(10, 3)), Some((10, 3)));
        assert_eq!(parse_name("000000000000000a-0000000000000003.snap.tmp"), None);
        assert_eq!(parse_name("a-3.snap"), None);
        let corrupt = format!("{CORRUPT_PREFIX}{}", file_name(10, 3));
        assert_eq!(parse_name(&corrupt), None);
        assert_eq!(parse_corrupt_name(&corrupt), Some((10, 3)));
        assert_eq!(parse_corrupt_name(&format!("{corrupt}.2")), Some((10, 3)));
        assert_eq!(parse_corrupt_name(&file_name(10, 3)), None);
    }
}
