//! One server per data dir: an exclusive lock (flock) on `<data-dir>/LOCK`, taken
//! before anything in the dir is read and held until the server returns. A second
//! server on the same dir stops at once, naming the dir and the holder's pid. (In
//! Kubernetes, `kubectl delete pod --force` can start a replacement while the old
//! container still runs on the same volume: two servers writing one WAL.)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The file locked in the data dir.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Held for as long as the server runs; the lock is released when it is dropped (or
/// the process dies, whatever the way).
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock of `dir` (creating the dir if needed), or fails naming the dir and,
/// when the lock file says, the pid of the process holding it.
pub(crate) fn lock(dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_string(),
            };
            bail!(
                "the data dir {} is in use: {holder} holds its lock {}. Two servers on one data dir would \
                 write the same log; stop the other server first, or use another --data-dir",
                dir.display(),
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {} (file locks unsupported here?)", path.display()));
        }
    }
    // The pid is a hint for the error above; the lock itself is what protects.
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write the pid into the lock file {}", path.display()))?;
    Ok(DataDirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_dir_fails_naming_the_dir_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock(&data).expect("the first lock");
        assert_eq!(held.path(), data.join(LOCK_FILE));
        let e = lock(&data).expect_err("the dir is locked").to_string();
        let pid = std::process::id().to_string();
        for part in [data.display().to_string(), format!("process {pid}"), "another --data-dir".to_string()] {
            assert!(e.contains(&part), "{part:?} missing in: {e}");
        }
        drop(held);
        lock(&data).expect("free again once the holder is gone");
    }
}
