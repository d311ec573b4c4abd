//! The small storage interface every durable byte goes through.
//!
//! Production uses [`FileDisk`]: real files under the data dir, `fsync` on
//! [`Disk::sync`], and tmp-file + rename + directory fsync for
//! [`Disk::write_atomic`]. The simulator uses [`MemDisk`], which survives a
//! node's restart and, on [`MemDisk::crash`], loses whatever was not synced;
//! `madsim::fs` has no such fault model and `tokio::fs` is not simulated.
//!
//! The calls are synchronous: records are small and an `fsync` must finish
//! before a write is acknowledged anyway.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Named files that can be appended to, synced, truncated and replaced
/// atomically. Names are plain file names (no directories).
pub trait Disk: Send + Sync + 'static {
    /// The whole content of `name`, or `None` if it does not exist.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Appends to `name`, creating it. Not durable until [`Disk::sync`].
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Makes every earlier append and truncate of `name` durable.
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Cuts `name` to `len` bytes and makes that durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Replaces `name` with `bytes` durably: after a crash the file holds
    /// either the old or the new content, never a mix.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Up to `len` bytes of `name` from `offset` (fewer at its end): a large
    /// file (a snapshot) is read a window at a time, never whole.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The length of `name`, or `None` if it does not exist.
    fn len(&self, name: &str) -> io::Result<Option<u64>>;
    /// Replaces `to` with `from` (which the caller synced) and makes that
    /// durable: after a crash `to` holds its old or its new content, never
    /// a mix. `from` is gone afterwards.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name` if it exists.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// A human-readable location, for error messages.
    fn describe(&self, name: &str) -> String;
    /// Extra time a sync takes beyond the call itself. Real disks spend it
    /// inside `sync`; the simulated disk reports it so the caller can wait
    /// on the simulated clock (a slow-fsync fault).
    fn sync_latency(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Waits until a sync or atomic replacement issued on `disk` just now is
/// durable. Real disks are done when the call returns; the simulated disk
/// completes it `sync_latency` later, in true (not host-clock) time, and
/// a crash before then loses it. Call before acknowledging anything the
/// write protects.
pub async fn wait_durable(disk: &dyn Disk) {
    let latency = disk.sync_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// Files in one directory on a real filesystem.
#[derive(Debug)]
pub struct FileDisk {
    dir: PathBuf,
    open: Mutex<BTreeMap<String, OpenFile>>,
}

/// An append handle, and whether the directory entry that names the file
/// still has to be made durable (the file was created by this handle).
#[derive(Debug)]
struct OpenFile {
    file: File,
    dir_entry_unsynced: bool,
}

impl FileDisk {
    /// Opens (creating) the data directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating data dir {}: {e}", dir.display()),
            )
        })?;
        Ok(Self {
            dir,
            open: Mutex::new(BTreeMap::new()),
        })
    }

    fn with_file<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut OpenFile) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut open = self.open.lock().expect("disk lock poisoned");
        if !open.contains_key(name) {
            let path = self.dir.join(name);
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(path)?;
            open.insert(
                name.to_string(),
                OpenFile {
                    file,
                    dir_entry_unsynced: !existed,
                },
            );
        }
        f(open.get_mut(name).expect("inserted above"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Disk for FileDisk {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match File::open(self.dir.join(name)) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.with_file(name, |f| f.file.write_all(bytes))
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        // A new file's name lives in the directory: sync that too, once,
        // or a crash can lose the whole (synced) file.
        self.with_file(name, |f| {
            f.file.sync_data()?;
            if f.dir_entry_unsynced {
                self.sync_dir()?;
                f.dir_entry_unsynced = false;
            }
            Ok(())
        })
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with_file(name, |f| {
            f.file.set_len(len)?;
            f.file.sync_all()
        })
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        {
            let mut f = File::create(self.dir.join(&tmp))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        self.rename(&tmp, name)
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.dir.join(name))?;
        f.seek(io::SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn len(&self, name: &str) -> io::Result<Option<u64>> {
        match fs::metadata(self.dir.join(name)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        // Drop our append handles first: they would keep writing to the
        // inodes the names no longer point to.
        {
            let mut open = self.open.lock().expect("disk lock poisoned");
            open.remove(from);
            open.remove(to);
        }
        fs::rename(self.dir.join(from), self.dir.join(to))?;
        self.sync_dir()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.open.lock().expect("disk lock poisoned").remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// One simulated file: its content and how much of it is durable.
#[derive(Debug, Clone, Default)]
struct MemFile {
    data: Vec<u8>,
    /// Bytes that survive a crash for certain.
    synced_len: usize,
    /// Syncs issued but not yet complete: `(completes_at, len)`. A crash
    /// before `completes_at` loses (or tears) what they would have saved.
    syncs_in_flight: Vec<(tokio::time::Instant, usize)>,
    /// An atomic replacement not yet durable: `(completes_at, old content)`;
    /// a crash before `completes_at` brings the old content back.
    replaced: Option<(tokio::time::Instant, Option<Vec<u8>>)>,
}

impl MemFile {
    /// Applies every sync and replacement that completed by `now`.
    fn settle(&mut self, now: tokio::time::Instant) {
        let data_len = self.data.len();
        for (_, len) in self.syncs_in_flight.iter().filter(|(at, _)| *at <= now) {
            self.synced_len = self.synced_len.max((*len).min(data_len));
        }
        self.syncs_in_flight.retain(|(at, _)| *at > now);
        if self.replaced.as_ref().is_some_and(|(at, _)| *at <= now) {
            self.replaced = None;
        }
    }
}

/// An in-memory disk for the simulator and tests. Clones share the same
/// files, so the harness keeps a handle across a node's crash and restart.
///
/// A sync (and an atomic replacement) completes `sync_latency` after it is
/// issued, on the simulated clock, and the stores wait that long before
/// they acknowledge anything: a crash in between loses or tears what the
/// sync would have saved, as a power cut during a real `fsync` does.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    files: Arc<Mutex<BTreeMap<String, MemFile>>>,
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Every sync takes at least this long (the disk's own speed).
    base_sync_latency_us: Arc<std::sync::atomic::AtomicU64>,
    /// A slow-fsync fault's extra latency.
    extra_sync_latency_us: Arc<std::sync::atomic::AtomicU64>,
}

fn disk_full() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "No space left on device")
}

impl MemDisk {
    /// An empty disk whose syncs complete at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty disk whose syncs take `latency`: crashes can fall inside
    /// them.
    pub fn with_sync_latency(latency: std::time::Duration) -> Self {
        let disk = Self::default();
        disk.base_sync_latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
        disk
    }

    /// Power loss: every file keeps only what completed syncs saved.
    /// `torn_bytes` keeps that many extra unsynced bytes per file, as a
    /// torn write does. Returns how many files lost or tore bytes.
    pub fn crash(&self, torn_bytes: usize) -> usize {
        let now = tokio::time::Instant::now();
        let mut files = self.files.lock().expect("disk lock poisoned");
        let mut damaged = 0;
        for file in files.values_mut() {
            file.settle(now);
            if let Some((_, old)) = file.replaced.take() {
                // The replacement never became durable.
                damaged += 1;
                let old = old.unwrap_or_default();
                file.synced_len = old.len();
                file.data = old;
                file.syncs_in_flight.clear();
                continue;
            }
            let keep = (file.synced_len + torn_bytes).min(file.data.len());
            if keep < file.data.len() || keep > file.synced_len {
                damaged += 1;
            }
            file.data.truncate(keep);
            file.synced_len = keep;
            file.syncs_in_flight.clear();
        }
        files.retain(|_, f| !f.data.is_empty() || f.synced_len > 0);
        damaged
    }

    /// Flips one bit of a stored file (a media fault). Returns false if the
    /// file is shorter than `byte`.
    pub fn flip_bit(&self, name: &str, byte: usize, bit: u8) -> bool {
        let mut files = self.files.lock().expect("disk lock poisoned");
        match files.get_mut(name) {
            Some(f) if byte < f.data.len() => {
                f.data[byte] ^= 1 << (bit % 8);
                true
            }
            _ => false,
        }
    }

    /// Makes every later write fail with "No space left on device" (or
    /// stop failing).
    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_space(&self) -> io::Result<()> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(disk_full());
        }
        Ok(())
    }

    /// Makes every sync take `latency` longer than the disk's own speed (a
    /// slow or overloaded disk); `ZERO` ends the fault.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        self.extra_sync_latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Whether a sync or atomic replacement is still in flight: a crash now
    /// would lose or tear it.
    pub fn write_in_flight(&self) -> bool {
        let now = tokio::time::Instant::now();
        let files = self.files.lock().expect("disk lock poisoned");
        files.values().any(|f| {
            f.syncs_in_flight.iter().any(|(at, _)| *at > now)
                || f.replaced.as_ref().is_some_and(|(at, _)| *at > now)
        })
    }

    /// Loses every file (an operator wiping a data dir).
    pub fn wipe(&self) {
        self.files.lock().expect("disk lock poisoned").clear();
    }

    /// Names and lengths of the stored files.
    pub fn listing(&self) -> Vec<(String, usize)> {
        let files = self.files.lock().expect("disk lock poisoned");
        files
            .iter()
            .map(|(n, f)| (n.clone(), f.data.len()))
            .collect()
    }

    fn completes_at(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.sync_latency()
    }
}

impl Disk for MemDisk {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let files = self.files.lock().expect("disk lock poisoned");
        Ok(files.get(name).map(|f| f.data.clone()))
    }

    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.check_space()?;
        let mut files = self.files.lock().expect("disk lock poisoned");
        files
            .entry(name.to_string())
            .or_default()
            .data
            .extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        let completes_at = self.completes_at();
        let mut files = self.files.lock().expect("disk lock poisoned");
        let f = files.entry(name.to_string()).or_default();
        let len = f.data.len();
        f.syncs_in_flight.push((completes_at, len));
        f.settle(tokio::time::Instant::now());
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.lock().expect("disk lock poisoned");
        let f = files.entry(name.to_string()).or_default();
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(f.data.len());
        f.data.truncate(len);
        f.synced_len = f.synced_len.min(len);
        for (_, l) in &mut f.syncs_in_flight {
            *l = (*l).min(len);
        }
        // Durable on return (the trait's contract; recovery relies on it).
        f.synced_len = len;
        Ok(())
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.check_space()?;
        let completes_at = self.completes_at();
        let now = tokio::time::Instant::now();
        let mut files = self.files.lock().expect("disk lock poisoned");
        let old = files.remove(name).map(|mut f| {
            f.settle(now);
            match f.replaced {
                // Replaced again before the last replacement was durable:
                // a crash now brings back what was durable before both.
                Some((_, older)) => older,
                None => Some(f.data[..f.synced_len].to_vec()),
            }
        });
        let replaced = (completes_at > now).then(|| (completes_at, old.flatten()));
        files.insert(
            name.to_string(),
            MemFile {
                data: bytes.to_vec(),
                synced_len: bytes.len(),
                syncs_in_flight: Vec::new(),
                replaced,
            },
        );
        Ok(())
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let files = self.files.lock().expect("disk lock poisoned");
        let f = files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {name}")))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.data.len());
        let end = start.saturating_add(len).min(f.data.len());
        Ok(f.data[start..end].to_vec())
    }

    fn len(&self, name: &str) -> io::Result<Option<u64>> {
        let files = self.files.lock().expect("disk lock poisoned");
        Ok(files.get(name).map(|f| f.data.len() as u64))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let moved = self
            .files
            .lock()
            .expect("disk lock poisoned")
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {from}")))?;
        self.write_atomic(to, &moved.data)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files.lock().expect("disk lock poisoned").remove(name);
        Ok(())
    }

    fn sync_latency(&self) -> std::time::Duration {
        let us = self
            .base_sync_latency_us
            .load(std::sync::atomic::Ordering::SeqCst)
            + self
                .extra_sync_latency_us
                .load(std::sync::atomic::Ordering::SeqCst);
        std::time::Duration::from_micros(us)
    }

    fn describe(&self, name: &str) -> String {
        format!("memdisk:{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(disk: &dyn Disk) {
        assert_eq!(disk.read("a").unwrap(), None);
        disk.append("a", b"hello ").unwrap();
        disk.append("a", b"world").unwrap();
        disk.sync("a").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"hello world");
        disk.truncate("a", 5).unwrap();
        disk.append("a", b"!").unwrap();
        disk.sync("a").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"hello!");
        disk.write_atomic("a", b"new").unwrap();
        disk.append("a", b"+").unwrap();
        disk.sync("a").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"new+");
        assert_eq!(disk.len("a").unwrap(), Some(4));
        assert_eq!(disk.len("b").unwrap(), None);
        assert_eq!(disk.read_at("a", 1, 2).unwrap(), b"ew");
        assert_eq!(disk.read_at("a", 3, 10).unwrap(), b"+");
        assert_eq!(disk.read_at("a", 9, 10).unwrap(), b"");
        assert!(disk.read_at("b", 0, 1).is_err());
        disk.append("b", b"staged").unwrap();
        disk.sync("b").unwrap();
        disk.rename("b", "a").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"staged");
        assert_eq!(disk.read("b").unwrap(), None);
        // Appends after a rename go to the file the name now holds.
        disk.append("a", b"!").unwrap();
        disk.sync("a").unwrap();
        assert_eq!(disk.read("a").unwrap().unwrap(), b"staged!");
        disk.remove("a").unwrap();
        disk.remove("a").unwrap();
        assert_eq!(disk.read("a").unwrap(), None);
    }

    #[test]
    fn file_disk_behaves_like_mem_disk() {
        let dir = std::env::temp_dir().join(format!("mesh-disk-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        exercise(&FileDisk::open(&dir).unwrap());
        exercise(&MemDisk::new());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mem_disk_crash_loses_only_unsynced_bytes() {
        let disk = MemDisk::new();
        disk.append("log", b"durable").unwrap();
        disk.sync("log").unwrap();
        disk.append("log", b"-lost").unwrap();
        disk.crash(0);
        assert_eq!(disk.read("log").unwrap().unwrap(), b"durable");
        disk.append("log", b"-torn").unwrap();
        disk.crash(2);
        assert_eq!(disk.read("log").unwrap().unwrap(), b"durable-t");
    }

    #[tokio::test]
    async fn a_crash_during_a_sync_loses_or_tears_its_bytes() {
        let latency = std::time::Duration::from_millis(200);
        let disk = MemDisk::with_sync_latency(latency);
        disk.append("log", b"durable").unwrap();
        disk.sync("log").unwrap();
        tokio::time::sleep(latency).await;
        disk.append("log", b"-in-flight").unwrap();
        disk.sync("log").unwrap();
        // Power fails during the sync.
        assert_eq!(disk.crash(3), 1);
        assert_eq!(disk.read("log").unwrap().unwrap(), b"durable-in");
        // A sync that completed survives.
        disk.append("log", b"+ok").unwrap();
        disk.sync("log").unwrap();
        tokio::time::sleep(latency).await;
        assert_eq!(disk.crash(100), 0);
        assert_eq!(disk.read("log").unwrap().unwrap(), b"durable-in+ok");
    }

    #[tokio::test]
    async fn a_crash_during_an_atomic_replacement_keeps_the_old_content() {
        let latency = std::time::Duration::from_millis(200);
        let disk = MemDisk::with_sync_latency(latency);
        disk.write_atomic("vote", b"old").unwrap();
        tokio::time::sleep(latency).await;
        disk.write_atomic("vote", b"new").unwrap();
        disk.write_atomic("vote", b"newer").unwrap();
        assert_eq!(disk.read("vote").unwrap().unwrap(), b"newer");
        assert_eq!(disk.crash(0), 1);
        assert_eq!(disk.read("vote").unwrap().unwrap(), b"old");
        // A file created and lost before its replacement was durable.
        disk.write_atomic("node-id", b"7").unwrap();
        disk.crash(0);
        assert_eq!(disk.read("node-id").unwrap(), None);
    }
}
