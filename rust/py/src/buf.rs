//! Intake of Python inputs: byte buffers without copying, and files by mmap.

use std::fs::File;
use std::path::Path;

use std::sync::Arc;

use dicomrelay_core::aligned::AlignedBytes;
use memmap2::Mmap;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView};

/// A read-only view of a Python object's bytes, held for as long as the view lives.
pub enum ByteView<'py> {
    Bytes(Bound<'py, PyBytes>),
    Buffer(PyBuffer<u8>),
}

impl<'py> ByteView<'py> {
    pub fn new(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = obj.cast::<PyBytes>() {
            return Ok(ByteView::Bytes(bytes.clone()));
        }
        let buffer = match PyBuffer::<u8>::get(obj) {
            Ok(buffer) => buffer,
            Err(_) => {
                // A buffer of other items (a memoryview cast to 'H', an array): its bytes.
                let bytes = PyMemoryView::from(obj).and_then(|m| m.call_method1("cast", ("B",)));
                match bytes {
                    Ok(view) => PyBuffer::<u8>::get(&view)?,
                    Err(_) => {
                        return Err(PyTypeError::new_err(format!(
                            "expected bytes, bytearray, memoryview or mmap, not {}",
                            obj.get_type()
                                .name()
                                .map_or_else(|_| "?".to_owned(), |n| n.to_string())
                        )))
                    }
                }
            }
        };
        if !buffer.is_c_contiguous() {
            return Err(PyTypeError::new_err("buffer is not contiguous"));
        }
        Ok(ByteView::Buffer(buffer))
    }

    /// The bytes, as a slice that may be read with the GIL released.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ByteView::Bytes(b) => b.as_bytes(),
            ByteView::Buffer(buffer) => {
                let len = buffer.len_bytes();
                if len == 0 {
                    return &[];
                }
                // SAFETY: the buffer is C-contiguous with `len` bytes of u8 (checked
                // at intake) and `PyBuffer` keeps the exporter alive and its memory
                // pinned until it is released. A writer in another thread could change
                // the bytes while we read them: the scan then sees some mix of old and
                // new bytes, which it treats like any other untrusted input.
                unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, len) }
            }
        }
    }
}

/// A file mapped read-only into memory. An empty file maps to no bytes.
pub struct MappedFile(Option<Mmap>);

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        if metadata.is_dir() {
            return Err(std::io::Error::from_raw_os_error(21)); // EISDIR
        }
        if metadata.len() == 0 {
            return Ok(MappedFile(None));
        }
        // SAFETY: the map is read-only and private to this call. Another process
        // truncating the file while it is scanned would fault the reader (SIGBUS);
        // dicomrelay only scans files it owns or has been handed whole.
        let map = unsafe { Mmap::map(&file)? };
        Ok(MappedFile(Some(map)))
    }

    pub fn as_slice(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Drop the resident pages of `..end` (rounded down to whole pages): the
    /// kernel reads them again from the file if they are touched later. Keeps a
    /// multi-GB file from growing the process's RSS as it is hashed.
    pub fn release_before(&self, end: usize) {
        const PAGE: usize = 4096;
        let Some(map) = &self.0 else { return };
        let end = end.min(map.len()) / PAGE * PAGE;
        if end == 0 {
            return;
        }
        // SAFETY: the mapping is private and read-only, and nothing holds a
        // reference into `..end` across this call that relies on the pages staying
        // resident; MADV_DONTNEED on a file-backed mapping only drops the cache.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, end) };
    }
}

/// Bytes produced in Rust and handed to Python without a copy: a read-only
/// buffer (`memoryview(payload)`, `os.write(fd, payload)`, `bytes(payload)`).
#[pyclass(frozen, module = "dicomrelay._native", name = "Payload")]
pub struct Payload(pub Arc<AlignedBytes>);

#[pymethods]
impl Payload {
    /// # Safety
    /// Called by CPython with a valid `view` to fill, per the buffer protocol.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        if flags & pyo3::ffi::PyBUF_WRITABLE == pyo3::ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "a Payload is read-only",
            ));
        }
        let data = slf.get().0.as_slice();
        // SAFETY: `view` comes from CPython. The Vec is never mutated or moved while
        // the object lives (the class is frozen), and PyBuffer_FillInfo takes a new
        // reference to the exporter, keeping it alive as long as the view.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::os::raw::c_void,
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython when a view is released; nothing to free.
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.0.len()
    }

    fn __repr__(&self) -> String {
        format!("Payload({} bytes)", self.0.len())
    }

    /// Create the file at `path` (which must not exist) holding these bytes, with
    /// direct I/O where the filesystem allows; with `sync`, fdatasync it too.
    #[pyo3(signature = (path, *, sync=true))]
    fn write_new_file(&self, py: Python<'_>, path: std::path::PathBuf, sync: bool) -> PyResult<()> {
        let data = &self.0;
        py.detach(|| dicomrelay_core::durable::write_new_file(&path, data, sync))
            .map_err(|e| match e.raw_os_error() {
                Some(errno) => pyo3::exceptions::PyOSError::new_err((errno, e.to_string(), path)),
                None => e.into(),
            })
    }
}
