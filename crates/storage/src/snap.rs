//! Snapshot files: `<dir>/snap/<index:016x>-<term:016x>.snap`.
//!
//! A snapshot file that fails its checks at open is never deleted: it is moved aside to
//! `<dir>/snap/corrupt-<name>` (evidence), and the next older one is tried.
//!
//! Layout (little-endian): magic `RKVSNAP\0`, version u32, index u64, term u64,
//! voter count u32 + ids u64, learner count u32 + ids u64, data length u64, data,
//! then a crc32c u32 over everything before it.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftkv_raft::{ConfState, Snapshot, SnapshotMeta};

use crate::codec::Reader;
use crate::disk::Disk;
use crate::error::StorageError;

const MAGIC: &[u8; 8] = b"RKVSNAP\0";
const VERSION: u32 = 1;
const TMP_SUFFIX: &str = ".tmp";
/// The name prefix of a snapshot file refused as corrupt and moved aside.
const CORRUPT_PREFIX: &str = "corrupt-";
/// How many snapshot files survive pruning.
const KEEP: usize = 2;

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
    pub fn remove_tmp(&self) -> Result<(), StorageError> {
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
    fn list(&self) -> Result<Vec<(u64, u64)>, StorageError> {
        Ok(self.scan()?.found)
    }

    fn scan(&self) -> Result<Listing, StorageError> {
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
    pub fn load_newest_valid(&self) -> Result<Loaded, StorageError> {
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
    fn load(&self, path: &Path, index: u64, term: u64) -> Result<Result<Snapshot, StorageError>, StorageError> {
        let bytes = self.disk.read(path)?;
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
    fn move_aside(&self, path: &Path) -> Result<PathBuf, StorageError> {
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

    /// Writes `snapshot` durably: temporary file, fsync, rename, fsync directory.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let name = file_name(snapshot.meta.index, snapshot.meta.term);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let mut file = self.disk.create(&tmp)?;
        // In three writes rather than one encoded buffer: the data can be as large as
        // the whole state, and a second copy of it would add that much to peak memory.
        let header = header(snapshot);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &snapshot.data);
        for part in [&header[..], &snapshot.data[..], &crc.to_le_bytes()] {
            self.disk.write(file.as_mut(), &tmp, part)?;
        }
        self.disk.sync_file(file.as_mut(), &tmp)?;
        drop(file);
        self.disk.rename(&tmp, &path)?;
        self.disk.sync_dir(&self.dir)
    }

    /// Deletes all but the newest [`KEEP`] snapshots.
    pub fn prune(&self) -> Result<(), StorageError> {
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

fn put_set(out: &mut Vec<u8>, set: &BTreeSet<u64>) {
    out.extend_from_slice(&(set.len() as u32).to_le_bytes());
    for id in set {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// The bytes of a snapshot file before its data (which the data length ends).
fn header(snapshot: &Snapshot) -> Vec<u8> {
    let meta = &snapshot.meta;
    let ids = meta.conf.voters.len() + meta.conf.learners.len();
    let mut out = Vec::with_capacity(44 + 8 * ids);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    put_set(&mut out, &meta.conf.voters);
    put_set(&mut out, &meta.conf.learners);
    out.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    out
}

/// Decodes a snapshot file; errors carry the byte offset of the problem. The data is
/// not copied: the snapshot's `data` is a slice of `bytes`.
fn decode(bytes: Vec<u8>) -> Result<Snapshot, (u64, String)> {
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
    Ok(Snapshot { meta, data: Bytes::from(bytes).slice(data) })
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
        let mut out = header(snapshot);
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
        assert_eq!(decode(encode(&snapshot)).unwrap(), snapshot);
    }

    #[test]
    fn saved_file_is_the_encoding_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk { fs: std::sync::Arc::new(crate::fs::RealFs), sync: true, counters: Default::default() };
        let snaps = SnapDir::new(disk, dir.path().to_path_buf());
        let snapshot = sample();
        snaps.save(&snapshot).unwrap();
        let written = std::fs::read(dir.path().join(file_name(10, 3))).unwrap();
        assert_eq!(written, encode(&snapshot));
        assert_eq!(snaps.load_newest_valid().unwrap().snapshot, Some(snapshot));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(decode(damaged).is_err(), "bit {i} flip went unnoticed");
        }
        assert!(decode(bytes[..3].to_vec()).is_err());
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
