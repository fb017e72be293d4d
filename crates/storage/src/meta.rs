//! Two small files beside the log: `<dir>/meta` says which cluster and which node the
//! data directory belongs to; `<dir>/removed` (a tombstone) says that node was removed
//! from its cluster, so the directory must never serve again.
//!
//! Layout (little-endian): magic (8 bytes), version u32, the fields as u64s, then a
//! crc32c u32 over everything before it. Written to `<name>.tmp`, fsynced, renamed over
//! `<name>`, then the directory is fsynced — always, whatever the fsync policy of the
//! log: these files are written once and decide what the node is.

use std::path::{Path, PathBuf};

use raftkv_raft::{Index, NodeId};

use crate::error::StorageError;
use crate::fs::FileSystem;

const META_FILE: &str = "meta";
const TOMBSTONE_FILE: &str = "removed";
const META_MAGIC: &[u8; 8] = b"RKVMETA\0";
const TOMBSTONE_MAGIC: &[u8; 8] = b"RKVTOMB\0";
const VERSION: u32 = 1;

/// Which cluster and which node a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub cluster_id: u64,
    pub node_id: NodeId,
}

/// The node of this data directory was removed from `cluster_id` by the configuration
/// change at `index` (0 when it learned of its removal from a peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub index: Index,
}

impl NodeMeta {
    /// The path of the meta file in data directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(META_FILE)
    }

    /// Reads `<dir>/meta`; `None` if there is none. Damage is [`StorageError::Corrupt`].
    pub fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<NodeMeta>, StorageError> {
        let Some(fields) = load(fs, &Self::path(dir), META_MAGIC, 2)? else { return Ok(None) };
        Ok(Some(NodeMeta { cluster_id: fields[0], node_id: fields[1] }))
    }

    /// Writes `<dir>/meta` durably (creating `dir` if needed), replacing any old one.
    pub fn save(&self, fs: &dyn FileSystem, dir: &Path) -> Result<(), StorageError> {
        save(fs, dir, META_FILE, META_MAGIC, &[self.cluster_id, self.node_id])
    }
}

impl Tombstone {
    /// The path of the tombstone in data directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(TOMBSTONE_FILE)
    }

    /// Reads `<dir>/removed`; `None` if there is none. Damage is [`StorageError::Corrupt`].
    pub fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Tombstone>, StorageError> {
        let Some(fields) = load(fs, &Self::path(dir), TOMBSTONE_MAGIC, 3)? else { return Ok(None) };
        Ok(Some(Tombstone { cluster_id: fields[0], node_id: fields[1], index: fields[2] }))
    }

    /// Writes `<dir>/removed` durably (creating `dir` if needed).
    pub fn save(&self, fs: &dyn FileSystem, dir: &Path) -> Result<(), StorageError> {
        save(fs, dir, TOMBSTONE_FILE, TOMBSTONE_MAGIC, &[self.cluster_id, self.node_id, self.index])
    }
}

fn encode(magic: &[u8; 8], fields: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 + 8 * fields.len() + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The `n` fields of a file written by [`encode`] with `magic`, or why not.
fn decode(bytes: &[u8], magic: &[u8; 8], n: usize) -> Result<Vec<u64>, String> {
    let want = 8 + 4 + 8 * n + 4;
    if bytes.len() != want {
        return Err(format!("{} bytes, expected {want}", bytes.len()));
    }
    let (body, crc) = bytes.split_at(want - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short checksum")?);
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    if &body[..8] != magic {
        return Err("wrong magic".into());
    }
    let version = u32::from_le_bytes(body[8..12].try_into().map_err(|_| "short version")?);
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    body[12..]
        .chunks_exact(8)
        .map(|c| c.try_into().map(u64::from_le_bytes).map_err(|_| "short field".to_string()))
        .collect()
}

fn load(fs: &dyn FileSystem, path: &Path, magic: &[u8; 8], n: usize) -> Result<Option<Vec<u64>>, StorageError> {
    let bytes = match fs.read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", path, e)),
    };
    decode(&bytes, magic, n).map(Some).map_err(|reason| StorageError::corrupt(path, 0, reason))
}

fn save(fs: &dyn FileSystem, dir: &Path, name: &str, magic: &[u8; 8], fields: &[u64]) -> Result<(), StorageError> {
    fs.create_dir_all(dir).map_err(|e| StorageError::io("create dir", dir, e))?;
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(name));
    let mut file = fs.create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
    file.write_all(&encode(magic, fields)).map_err(|e| StorageError::io("write", &tmp, e))?;
    file.sync_data().map_err(|e| StorageError::io("fsync", &tmp, e))?;
    drop(file);
    fs.rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
    fs.sync_dir(dir).map_err(|e| StorageError::io("fsync dir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    #[test]
    fn meta_and_tombstone_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("not-yet");
        assert_eq!(NodeMeta::load(&RealFs, &sub).unwrap(), None);
        assert_eq!(Tombstone::load(&RealFs, &sub).unwrap(), None);
        let meta = NodeMeta { cluster_id: 0xdead_beef_0123_4567, node_id: 7 };
        meta.save(&RealFs, &sub).unwrap();
        assert_eq!(NodeMeta::load(&RealFs, &sub).unwrap(), Some(meta));
        let newer = NodeMeta { cluster_id: 1, node_id: 8 };
        newer.save(&RealFs, &sub).unwrap();
        assert_eq!(NodeMeta::load(&RealFs, &sub).unwrap(), Some(newer));
        let t = Tombstone { cluster_id: 3, node_id: 7, index: 42 };
        t.save(&RealFs, &sub).unwrap();
        assert_eq!(Tombstone::load(&RealFs, &sub).unwrap(), Some(t));
        let mut names: Vec<_> = std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["meta", "removed"], "no temporary file is left behind");
    }

    /// Only a missing file is "no meta"; one that cannot be read is an error.
    #[test]
    fn an_unreadable_meta_file_is_an_io_error_not_an_absent_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(NodeMeta::path(dir.path())).unwrap();
        let err = NodeMeta::load(&RealFs, dir.path()).unwrap_err();
        assert!(matches!(err, StorageError::Io { op: "read", .. }), "{err}");
    }

    #[test]
    fn damaged_files_are_corrupt_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        NodeMeta { cluster_id: 5, node_id: 2 }.save(&RealFs, dir.path()).unwrap();
        let path = NodeMeta::path(dir.path());
        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let e = NodeMeta::load(&RealFs, dir.path()).unwrap_err();
            assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("meta") && msg.contains(want), "{msg}");
        };
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x10;
            check(&flipped, "checksum");
        }
        for cut in 0..good.len() {
            check(&good[..cut], "expected");
        }
        check(&[good.clone(), vec![0]].concat(), "expected");
        // A tombstone is not a meta file, even with a valid checksum.
        let t = encode(TOMBSTONE_MAGIC, &[1, 2]);
        check(&t, "wrong magic");
        let v2 = {
            let mut b = good[..good.len() - 4].to_vec();
            b[8] = 2;
            let crc = crc32c::crc32c(&b);
            [b, crc.to_le_bytes().to_vec()].concat()
        };
        check(&v2, "unknown version 2");
    }
}
