//! Durable writes of whole files: bytes on stable storage before the call returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::aligned::AlignedBytes;

/// Create `path` (it must not exist) and write `data`; with `sync`, fdatasync it.
///
/// Page-aligned data is written with `O_DIRECT`: no copy into the page cache and
/// no writeback later, which on small virtual machines costs several times the
/// CPU of the copy itself. Filesystems without direct I/O (tmpfs) get an ordinary
/// write. Without `sync` the caller makes the file durable, typically for many
/// files at once with [`sync_filesystem`].
pub fn write_new_file(path: &Path, data: &AlignedBytes, sync: bool) -> io::Result<()> {
    if let Some(padded) = data.padded() {
        match write_direct(path, padded, data.len(), sync) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(path);
            }
            other => return other,
        }
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

fn write_direct(path: &Path, padded: &[u8], len: usize, sync: bool) -> io::Result<()> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.write_all(padded)?;
    file.set_len(len as u64)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Commit everything written to the filesystem holding `path` (syncfs(2)): one
/// journal commit and cache flush for a whole batch of files. Linux reports
/// writeback errors of the filesystem here, so an error means data may be lost.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    sync_filesystem_of(&dir)
}

/// syncfs(2) on an open file. Linux reports a writeback error to each open
/// file once, and only errors after it was opened: hold the file open from
/// before the data is written to learn of every error in between.
pub fn sync_filesystem_of(file: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    // SAFETY: syncfs takes a descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A blob to make durable under `final_path`, by way of `temp`.
pub struct Job {
    pub token: u64,
    pub data: std::sync::Arc<AlignedBytes>,
    pub temp: std::path::PathBuf,
    pub final_path: std::path::PathBuf,
}

/// A job done: its token, and the error if it could not be made durable.
pub type Done = (u64, Option<io::Error>);

struct Shared {
    written: std::sync::Mutex<Vec<(Job, io::Result<bool>)>>,
    written_ready: std::sync::Condvar,
    done: std::sync::Mutex<Vec<Done>>,
    closing: std::sync::atomic::AtomicBool,
}

/// Writes blobs on its own threads, off the interpreter: writer threads put each
/// blob in a temporary file (direct I/O, no fsync), and one committer thread
/// makes every blob written since its last round durable with a single
/// filesystem commit, renames them to their final names, commits the renames,
/// and reports them done. `notify` is called after each round.
pub struct DurableWriter {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    shared: std::sync::Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DurableWriter {
    pub fn new(
        root: std::path::PathBuf,
        writers: usize,
        notify: impl Fn() + Send + 'static,
    ) -> Self {
        use std::sync::{Arc, Mutex};
        let shared = Arc::new(Shared {
            written: Mutex::new(Vec::new()),
            written_ready: std::sync::Condvar::new(),
            done: Mutex::new(Vec::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..writers.max(1) {
            let (rx, shared) = (rx.clone(), shared.clone());
            threads.push(std::thread::spawn(move || loop {
                let job = match rx.lock().map(|r| r.recv()) {
                    Ok(Ok(job)) => job,
                    _ => return,
                };
                let result = if job.final_path.exists() {
                    Ok(false)
                } else {
                    write_new_file(&job.temp, &job.data, false).map(|()| true)
                };
                if let Ok(mut w) = shared.written.lock() {
                    w.push((job, result));
                }
                shared.written_ready.notify_one();
            }));
        }
        let committer_shared = shared.clone();
        threads.push(std::thread::spawn(move || {
            commit_rounds(&root, &committer_shared, notify)
        }));
        DurableWriter {
            jobs: Some(tx),
            shared,
            threads,
        }
    }

    pub fn submit(&self, job: Job) -> io::Result<()> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("writer closed"))?;
        jobs.send(job)
            .map_err(|_| io::Error::other("writer threads stopped"))
    }

    /// Jobs finished since the last call.
    pub fn completed(&self) -> Vec<Done> {
        self.shared
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Finish every submitted job, then stop the threads.
    pub fn close(&mut self) {
        self.jobs = None; // writers stop once the queue is empty
        let committer = self.threads.pop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.written_ready.notify_all();
        if let Some(t) = committer {
            let _ = t.join();
        }
    }
}

impl Drop for DurableWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn commit_rounds(root: &Path, shared: &Shared, notify: impl Fn()) {
    use std::sync::atomic::Ordering;
    // Opened once, before any blob is written, so that every writeback error
    // from then on reaches a round's syncfs.
    let root_dir = File::open(root);
    loop {
        let batch = {
            let Ok(mut written) = shared.written.lock() else {
                return;
            };
            while written.is_empty() && !shared.closing.load(Ordering::SeqCst) {
                written = match shared.written_ready.wait(written) {
                    Ok(w) => w,
                    Err(_) => return,
                };
            }
            if written.is_empty() {
                return;
            }
            std::mem::take(&mut *written)
        };
        let done = commit_round(&root_dir, batch);
        if let Ok(mut d) = shared.done.lock() {
            d.extend(done);
        }
        notify();
    }
}

/// One round: a filesystem commit for the new files, their renames, a commit
/// of the renames. A failure of either commit fails every job of the round.
fn commit_round(root: &io::Result<File>, batch: Vec<(Job, io::Result<bool>)>) -> Vec<Done> {
    let any_new = batch.iter().any(|(_, r)| matches!(r, Ok(true)));
    let synced = match root {
        _ if !any_new => Ok(()),
        Ok(dir) => sync_filesystem_of(dir),
        Err(e) => Err(copy_error(e)),
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut dirs: Vec<&Path> = Vec::new();
    let mut published = Vec::new(); // indexes into `done` of the jobs renamed now
    for (job, result) in &batch {
        let outcome = match (result, &synced) {
            (Err(e), _) => Some(copy_error(e)),
            (Ok(_), Err(e)) => Some(copy_error(e)),
            (Ok(false), Ok(())) => None,
            (Ok(true), Ok(())) => publish(&job.temp, &job.final_path).err(),
        };
        if outcome.is_some() || result.is_err() || synced.is_err() {
            let _ = std::fs::remove_file(&job.temp);
        }
        if outcome.is_none() && matches!(result, Ok(true)) {
            published.push(done.len());
            if let Some(parent) = job.final_path.parent() {
                if !dirs.contains(&parent) {
                    dirs.push(parent);
                }
            }
        }
        done.push((job.token, outcome));
    }
    // Committing one directory commits the journal that holds every rename.
    // Only the folders renamed into: a failed job's folder may not exist, and
    // its failure must not stand for the jobs that were published.
    let dirs_synced = dirs
        .iter()
        .try_for_each(|d| File::open(d).and_then(|f| f.sync_all()));
    if let Err(e) = dirs_synced {
        for &i in &published {
            done[i].1 = Some(copy_error(&e));
        }
    }
    done
}

/// The same error again, for each place it must be reported (with its errno,
/// if it has one): `io::Error` is not `Clone`.
pub fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

fn publish(temp: &Path, final_path: &Path) -> io::Result<()> {
    if final_path.exists() {
        return std::fs::remove_file(temp);
    }
    match std::fs::rename(temp, final_path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = final_path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(temp, final_path)
        }
        other => other,
    }
}

/// A new file written as a stream through a page-aligned buffer, and digested
/// on the way: for data that arrives in pieces (a DICOM dataset over the
/// network) and must not be held whole in memory. With `direct`, it bypasses
/// the page cache where the filesystem allows (each full buffer then waits for
/// the device); without, it is left for a later group commit to flush.
pub struct StreamFile {
    file: File,
    /// Staging for direct I/O, which writes whole aligned pages; None when the
    /// page cache takes the pieces as they come.
    buf: Option<AlignedBytes>,
    filled: usize,
    written: u64,
    hasher: Option<crate::digest::Hasher>,
}

const STREAM_BUFFER: usize = 1 << 20;

impl StreamFile {
    pub fn create(
        path: &Path,
        digest: Option<crate::DigestAlgorithm>,
        direct: bool,
    ) -> io::Result<StreamFile> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        let direct_file = if direct {
            match options.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(file) => Some(file),
                // The filesystem refuses direct I/O (tmpfs): go through the cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let buf = direct_file
            .is_some()
            .then(|| AlignedBytes::zeroed(STREAM_BUFFER));
        let file = match direct_file {
            Some(file) => file,
            None => options.open(path)?,
        };
        Ok(StreamFile {
            file,
            buf,
            filled: 0,
            written: 0,
            hasher: digest.map(|d| d.hasher()),
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
        let Some(buf) = self.buf.as_mut() else {
            self.file.write_all(data)?;
            self.written += data.len() as u64;
            return Ok(());
        };
        while !data.is_empty() {
            let room = STREAM_BUFFER - self.filled;
            let n = room.min(data.len());
            buf.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == STREAM_BUFFER {
                self.file.write_all(buf.as_slice())?;
                self.written += STREAM_BUFFER as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Write what is left, cut the file to its length, and (with `sync`)
    /// fdatasync it. Returns the length and the digest, if one was asked for.
    pub fn finish(mut self, sync: bool) -> io::Result<(u64, Option<String>)> {
        let length = self.written + self.filled as u64;
        if let Some(buf) = self.buf.as_mut().filter(|_| self.filled > 0) {
            // Direct I/O writes whole pages: pad with zeros, then cut back.
            let padded = self.filled.div_ceil(crate::aligned::PAGE) * crate::aligned::PAGE;
            buf.as_mut_slice()[self.filled..padded].fill(0);
            self.file.write_all(&buf.as_slice()[..padded])?;
            self.file.set_len(length)?;
        }
        if sync {
            self.file.sync_data()?;
        }
        let digest = self
            .hasher
            .take()
            .map(|h| crate::digest::to_hex(&h.finish()));
        Ok((length, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_hold_exactly_the_data() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0usize, 1, 4096, 5000, 600_000] {
            let mut data = AlignedBytes::zeroed(len);
            for (i, b) in data.as_mut_slice().iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            let path = dir.join(format!("f{len}"));
            write_new_file(&path, &data, len % 2 == 0).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data.as_slice());
            assert!(
                write_new_file(&path, &data, true).is_err(),
                "must not overwrite"
            );
        }
        sync_filesystem(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_files_hold_every_piece_and_its_digest() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
        let pieces = [1usize, 4095, 65_536, 1 << 20, 3_000_001];
        for (n, (piece, direct)) in pieces
            .iter()
            .flat_map(|&p| [(p, true), (p, false)])
            .enumerate()
        {
            let path = dir.join(format!("s{n}"));
            let algorithm = Some(crate::DigestAlgorithm::Sha256);
            let mut f = StreamFile::create(&path, algorithm, direct).unwrap();
            for chunk in data.chunks(piece) {
                f.write(chunk).unwrap();
            }
            let (len, digest) = f.finish(true).unwrap();
            assert_eq!(len, data.len() as u64);
            assert_eq!(std::fs::read(&path).unwrap(), data);
            assert_eq!(
                digest.unwrap(),
                crate::digest::digest(&data, crate::DigestAlgorithm::Sha256, None).whole
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_job_does_not_fail_the_jobs_published_beside_it() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-round-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let job = |token: u64, folder: &str| Job {
            token,
            data: std::sync::Arc::new(AlignedBytes::zeroed(10)),
            temp: dir.join("in").join(format!("{token}.tmp")),
            final_path: dir.join(folder).join(format!("{token}")),
        };
        let good = job(1, "a");
        std::fs::write(&good.temp, b"0123456789").unwrap();
        // A write that failed (a full disk): its folder was never made.
        let failed = job(2, "never-made");
        let batch = vec![
            (good, Ok(true)),
            (failed, Err(io::Error::from_raw_os_error(libc::ENOSPC))),
        ];
        let done = commit_round(&File::open(&dir), batch);
        assert!(done[0].1.is_none(), "published: {:?}", done[0].1);
        assert_eq!(
            done[1].1.as_ref().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
        assert_eq!(
            std::fs::read(dir.join("a").join("1")).unwrap(),
            b"0123456789"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writer_makes_every_job_durable_and_reports_it() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-writer-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let mut writer = DurableWriter::new(dir.clone(), 3, || {});
        for token in 0..50u64 {
            let mut data = AlignedBytes::zeroed(10_000 + token as usize);
            data.as_mut_slice()[0] = token as u8;
            let final_path = dir
                .join("blobs")
                .join(format!("{}", token % 7))
                .join(token.to_string());
            let temp = dir.join("in").join(format!("{token}.tmp"));
            writer
                .submit(Job {
                    token,
                    data: std::sync::Arc::new(data),
                    temp,
                    final_path,
                })
                .unwrap();
        }
        writer.close();
        let mut done = writer.completed();
        done.sort_by_key(|d| d.0);
        assert_eq!(done.len(), 50);
        for (token, error) in done {
            assert!(error.is_none(), "{token}: {error:?}");
            let path = dir
                .join("blobs")
                .join(format!("{}", token % 7))
                .join(token.to_string());
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len(), 10_000 + token as usize);
            assert_eq!(bytes[0], token as u8);
        }
        assert_eq!(std::fs::read_dir(dir.join("in")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
