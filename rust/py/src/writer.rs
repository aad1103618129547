//! `DurableWriter`: blob writes and their group commits on Rust threads; the
//! event loop hears about finished rounds through a readable socket.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use dicomrelay_core::durable::{
    copy_error, DurableWriter as CoreWriter, Job, StreamFile as CoreStreamFile,
};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::IntoPyObjectExt;

use crate::buf::Payload;

#[pyclass(module = "dicomrelay._native", name = "DurableWriter")]
pub struct DurableWriter {
    inner: Option<CoreWriter>,
    wakeup: UnixStream,
}

#[pymethods]
impl DurableWriter {
    /// `root`: a directory on the filesystem the blobs are written to.
    #[new]
    #[pyo3(signature = (root, *, writers=4))]
    fn new(root: PathBuf, writers: usize) -> PyResult<Self> {
        let (wakeup, signal) = UnixStream::pair()?;
        wakeup.set_nonblocking(true)?;
        signal.set_nonblocking(true)?;
        let inner = CoreWriter::new(root, writers, move || {
            // A full socket already holds a wake-up; losing this byte is fine.
            let _ = (&signal).write(&[1]);
        });
        Ok(DurableWriter {
            inner: Some(inner),
            wakeup,
        })
    }

    /// Queue `payload` to become durable at `final_path`, written first to `temp`.
    fn submit(
        &self,
        token: u64,
        payload: &Payload,
        temp: PathBuf,
        final_path: PathBuf,
    ) -> PyResult<()> {
        let inner = self
            .inner
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("writer is closed"))?;
        let job = Job {
            token,
            data: payload.0.clone(),
            temp,
            final_path,
        };
        inner
            .submit(job)
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Jobs finished since the last call: `(token, None)` when durable, else
    /// `(token, OSError)`.
    fn completed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut drain = [0u8; 256];
        while matches!((&self.wakeup).read(&mut drain), Ok(n) if n > 0) {}
        let out = PyList::empty(py);
        let Some(inner) = &self.inner else {
            return Ok(out);
        };
        for (token, error) in inner.completed() {
            let error = match error {
                None => py.None().into_bound(py),
                Some(e) => match e.raw_os_error() {
                    Some(errno) => PyOSError::new_err((errno, e.to_string()))
                        .into_value(py)
                        .into_any()
                        .into_bound(py),
                    None => PyOSError::new_err(e.to_string())
                        .into_value(py)
                        .into_any()
                        .into_bound(py),
                },
            };
            out.append((token.into_bound_py_any(py)?, error))?;
        }
        Ok(out)
    }

    /// A descriptor that becomes readable when jobs have finished.
    fn fileno(&self) -> i32 {
        self.wakeup.as_raw_fd()
    }

    /// Finish every queued job, then stop the threads.
    fn close(&mut self, py: Python<'_>) {
        if let Some(mut inner) = self.inner.take() {
            py.detach(|| inner.close());
            // Jobs finished while closing are reported by no one; they are durable.
        }
    }
}

/// A new file written piece by piece: direct I/O where possible, digested on
/// the way, durable on `finish`.
#[pyclass(module = "dicomrelay._native", name = "StreamFile")]
pub struct StreamFile {
    inner: Option<CoreStreamFile>,
    path: PathBuf,
    /// A write that failed: every later write fails, and so does `finish`.
    failed: Option<std::io::Error>,
}

fn os_error(e: std::io::Error, path: &std::path::Path) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, e.to_string(), path.to_path_buf())),
        None => PyOSError::new_err(e.to_string()),
    }
}

#[pymethods]
impl StreamFile {
    /// Create `path` (it must not exist); `digest`: "sha256", "blake3" or None;
    /// `direct`: bypass the page cache (else a later `sync_filesystem` flushes it).
    #[new]
    #[pyo3(signature = (path, *, digest=None, direct=true))]
    fn new(path: PathBuf, digest: Option<&str>, direct: bool) -> PyResult<Self> {
        let algorithm = digest.map(crate::channel::algorithm).transpose()?;
        let inner =
            CoreStreamFile::create(&path, algorithm, direct).map_err(|e| os_error(e, &path))?;
        Ok(StreamFile {
            inner: Some(inner),
            path,
            failed: None,
        })
    }

    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("file already finished"))?;
        if let Some(e) = &self.failed {
            return Err(os_error(copy_error(e), &self.path));
        }
        let view = crate::buf::ByteView::new(data)?;
        let bytes = view.as_slice();
        if let Err(e) = py.detach(|| inner.write(bytes)) {
            // Sticky: nothing after a hole is written.
            let err = os_error(copy_error(&e), &self.path);
            self.failed = Some(e);
            return Err(err);
        }
        Ok(())
    }

    /// Write the rest and (with `sync`) make it durable; returns (length, digest).
    #[pyo3(signature = (*, sync=true))]
    fn finish(&mut self, py: Python<'_>, sync: bool) -> PyResult<(u64, Option<String>)> {
        let inner = self
            .inner
            .take()
            .ok_or_else(|| PyValueError::new_err("file already finished"))?;
        if let Some(e) = self.failed.take() {
            return Err(os_error(e, &self.path));
        }
        let path = &self.path;
        py.detach(|| inner.finish(sync))
            .map_err(|e| os_error(e, path))
    }
}

/// syncfs(2) on the open descriptor `fd`: one flush for a whole group of
/// files. Raises OSError for any writeback error since `fd` was opened (each
/// is reported once): then some of that data may be lost.
#[pyfunction]
pub fn sync_filesystem(py: Python<'_>, fd: i32) -> PyResult<()> {
    // SAFETY: the caller's descriptor stays open for the call; BorrowedFd does not close it.
    let file = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    py.detach(|| dicomrelay_core::durable::sync_filesystem_of(&file))
        .map_err(|e| match e.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, e.to_string())),
            None => PyOSError::new_err(e.to_string()),
        })
}
