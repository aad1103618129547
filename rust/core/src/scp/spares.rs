//! Where received data sets are written: temporary files made ahead of need,
//! off the association's path (creating a file can wait behind a journal
//! commit for longer than receiving an image takes).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Gives each received data set a new, empty file (readable and writable) and
/// its path. A file handed out is the caller's: to keep, rename or remove.
pub trait Destination: Send + Sync {
    fn create(&self) -> io::Result<(PathBuf, File)>;

    /// Whether `bytes` more would fit where data sets are kept, for one held
    /// in memory: ENOSPC if not, as writing it into a file would have failed
    /// (the SCP answers Out of Resources instead of accepting what it cannot
    /// keep).
    fn room_for(&self, bytes: u64) -> io::Result<()> {
        let _ = bytes;
        Ok(())
    }
}

/// ENOSPC unless the filesystem holding `path` has `bytes` free for an
/// unprivileged writer.
pub fn room_in(path: &Path, bytes: u64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `statvfs` only writes the struct it is given, which is
    // zero-initialised plain data, and reads the NUL-terminated name.
    let (status, stats) = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(name.as_ptr(), &mut stats), stats)
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // narrower than u64 on some targets
    let free = u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize));
    if free < bytes {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

struct State {
    ready: Vec<(PathBuf, File)>,
    /// Set by the first `create`: a server that never receives makes no file.
    wanted: bool,
    closed: bool,
}

struct Shared {
    directory: PathBuf,
    keep: usize,
    state: Mutex<State>,
    low: Condvar,
    counter: AtomicU64,
}

/// Files in `directory` made by a thread of its own, `keep` of them ready
/// once the first was asked for.
pub struct SparePool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SparePool {
    /// Makes `directory` if needed and removes the files a crash left there
    /// (`*.dcm`: never made durable, never reported).
    pub fn new(directory: PathBuf, keep: usize) -> io::Result<SparePool> {
        std::fs::create_dir_all(&directory)?;
        for entry in std::fs::read_dir(&directory)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "dcm") {
                let _ = std::fs::remove_file(&path);
            }
        }
        let shared = Arc::new(Shared {
            directory,
            keep: keep.max(1),
            state: Mutex::new(State {
                ready: Vec::new(),
                wanted: false,
                closed: false,
            }),
            low: Condvar::new(),
            counter: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("scp-spares".into())
            .spawn(move || worker.refill())?;
        Ok(SparePool {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stop making files and remove the ones ready; again: nothing.
    pub fn close(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.low.notify_all();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        let ready = match self.shared.state.lock() {
            Ok(mut state) => std::mem::take(&mut state.ready),
            Err(_) => Vec::new(),
        };
        for (path, _) in ready {
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn directory(&self) -> &Path {
        &self.shared.directory
    }
}

impl Drop for SparePool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Destination for SparePool {
    fn create(&self) -> io::Result<(PathBuf, File)> {
        loop {
            let spare = {
                let mut state = self
                    .shared
                    .state
                    .lock()
                    .map_err(|_| io::Error::other("spare files poisoned"))?;
                let spare = state.ready.pop();
                state.wanted = true;
                if state.ready.len() < self.shared.keep / 2 + 1 {
                    self.shared.low.notify_one();
                }
                spare
            };
            match spare {
                // Not removed behind the server's back (an operator clearing the folder).
                Some((path, file)) if path.exists() => return Ok((path, file)),
                Some(_) => continue,
                None => return self.shared.make(),
            }
        }
    }

    fn room_for(&self, bytes: u64) -> io::Result<()> {
        room_in(&self.shared.directory, bytes)
    }
}

impl Shared {
    fn make(&self) -> io::Result<(PathBuf, File)> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self
            .directory
            .join(format!("{:x}-{nanos:x}-{n:x}.dcm", std::process::id()));
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The folder was removed: make it again.
                std::fs::create_dir_all(&self.directory)?;
                open()?
            }
            other => other?,
        };
        Ok((path, file))
    }

    fn refill(&self) {
        loop {
            let missing = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                while !state.closed && (!state.wanted || state.ready.len() >= self.keep) {
                    state = match self.low.wait(state) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
                if state.closed {
                    return;
                }
                self.keep - state.ready.len()
            };
            for _ in 0..missing {
                let Ok(made) = self.make() else {
                    // The disk is full or the folder unwritable: `create`
                    // will say why when it must make one itself.
                    break;
                };
                match self.state.lock() {
                    Ok(mut state) if !state.closed => state.ready.push(made),
                    _ => {
                        let _ = std::fs::remove_file(&made.0);
                        return;
                    }
                }
            }
            // Made what it could; wait to be told again rather than spin.
            if let Ok(state) = self.state.lock() {
                if !state.closed && state.ready.len() < self.keep {
                    let _ = self
                        .low
                        .wait_timeout(state, std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_new_files_and_closing_removes_the_unused() {
        let dir = std::env::temp_dir().join(format!("dicomrelay-spares-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale.dcm"), b"left by a crash").unwrap();
        let pool = SparePool::new(dir.clone(), 4).unwrap();
        assert!(!dir.join("stale.dcm").exists());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "none made unasked"
        );
        let mut taken = Vec::new();
        for _ in 0..10 {
            let (path, file) = pool.create().unwrap();
            assert_eq!(file.metadata().unwrap().len(), 0);
            assert!(!taken.contains(&path));
            taken.push(path);
        }
        // The folder removed under the pool: it is made again.
        // (The pool may still be refilling: a file made meanwhile fails the
        // removal, as `rm -r` would; then try again.)
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if std::fs::remove_dir_all(&dir).is_ok() {
                break;
            }
        }
        assert!(!dir.exists());
        let (path, _) = pool.create().unwrap();
        assert!(path.exists());
        pool.close();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the file handed out is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
