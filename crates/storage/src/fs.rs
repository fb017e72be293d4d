//! The file-system seam: every file operation of this crate goes through
//! [`FileSystem`], so tests can slot in an implementation that fails or delays
//! fsync, runs out of space, or counts calls.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;

/// The file operations storage needs, and nothing more.
pub trait FileSystem: Send + Sync {
    /// Creates `dir` and any missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (not full paths), in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The whole content of the file at `path`, which is never written, truncated or
    /// replaced in place again (a snapshot file): the real file system maps it rather
    /// than reading it, so its pages are page cache, loaded when touched. Others read
    /// it into memory.
    fn read_shared(&self, path: &Path) -> io::Result<Bytes> {
        self.read(path).map(Bytes::from)
    }
    /// Creates (or truncates) the file at `path`, open for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// Opens an existing file for writing at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file that storage writes to.
pub trait FileHandle: Send {
    /// Writes all of `buf` at the file's write position (the end, for appends).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes; the write position moves back
    /// to `len` if it was beyond it.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Writes `len` zero bytes from the write position on and leaves the position
    /// where it was: space that later writes overwrite instead of growing the file.
    fn zero_fill_ahead(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's data and size durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The real file system (`std::fs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

/// Written at its position, which only writes and `set_len` move (not `O_APPEND`:
/// writes may land inside zero-filled space).
struct RealFile(File);

impl FileHandle for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        if self.0.stream_position()? > len {
            self.0.seek(SeekFrom::Start(len))?;
        }
        Ok(())
    }

    fn zero_fill_ahead(&mut self, len: u64) -> io::Result<()> {
        let at = self.0.stream_position()?;
        // One write, no loop: `vec!` of zeros maps fresh zeroed pages.
        let len =
            usize::try_from(len).map_err(|_| io::Error::other(format!("{len} bytes of zeros do not fit in memory")))?;
        self.0.write_all(&vec![0u8; len])?;
        self.0.seek(SeekFrom::Start(at))?;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        fs::read_dir(dir)?.map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned())).collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_shared(&self, path: &Path) -> io::Result<Bytes> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and the file is this crate's own snapshot
        // file: immutable once renamed into place, never truncated or written again
        // (removing it or moving it aside leaves the mapped inode intact), so the bytes
        // behind the slice cannot change or vanish while it lives.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Bytes::from_owner(map))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    // Why: Windows cannot open a directory as a file; NTFS journals metadata itself.
    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
