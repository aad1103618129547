//! `SegmentStore`: the append-only segment store of `dicomrelay-core`, with
//! the GIL released around every read, write and sync. Locations are
//! `(segment, offset, length)` tuples, digests lower-case hex.

use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dicomrelay_core::segment::{
    DurableEnd, Location, Recovery, ScanStop, SegmentConfig, SegmentIo,
    SegmentReader as CoreReader, SegmentStore as CoreStore, DEFAULT_BUFFER_SIZE,
    DEFAULT_SEGMENT_SIZE, FIRST_RECORD,
};

const _: () = assert!(DEFAULT_SEGMENT_SIZE == 1073741824 && DEFAULT_BUFFER_SIZE == 8388608);
const _: () = assert!(FIRST_RECORD == 4096);
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::buf::{ByteView, Payload};
use crate::error::segment_error;

type PyLocation = (u64, u64, u64);

fn location((segment, offset, length): PyLocation) -> Location {
    Location {
        segment,
        offset,
        length,
    }
}

fn py_location(l: Location) -> PyLocation {
    (l.segment, l.offset, l.length)
}

/// A 64-digit hex digest as its 32 bytes.
fn digest_bytes(hex: &str) -> PyResult<[u8; 32]> {
    let bad = || PyValueError::new_err(format!("not a hex digest: {hex:.80?}"));
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

#[pyclass(frozen, module = "dicomrelay._native", name = "SegmentStore")]
pub struct SegmentStore {
    inner: RwLock<Option<Arc<CoreStore>>>,
    recovery: Recovery,
}

impl SegmentStore {
    fn store(&self) -> PyResult<Arc<CoreStore>> {
        self.inner
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| PyValueError::new_err("the segment store is closed"))
    }
}

#[pymethods]
impl SegmentStore {
    /// Open (or create) the store in `root` at `durable_end`, the last
    /// `(segment, end)` a commit returned and the caller recorded; None for a
    /// store that has never recorded one.
    #[new]
    // Literal defaults, so that Python's signature shows them; checked below.
    #[pyo3(signature = (root, *, durable_end, segment_size=1073741824, buffer_size=8388608, faults=None))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        durable_end: Option<(u64, u64)>,
        segment_size: u64,
        buffer_size: usize,
        faults: Option<PyRef<'_, SegmentFaults>>,
    ) -> PyResult<Self> {
        let mut config = SegmentConfig {
            segment_size,
            buffer_size,
            ..SegmentConfig::default()
        };
        if let Some(faults) = faults {
            config.io = faults.state.clone();
        }
        let durable = durable_end.map(|(segment, end)| DurableEnd { segment, end });
        let (store, recovery) = py
            .detach(|| CoreStore::open(&root, config, durable))
            .map_err(segment_error)?;
        Ok(SegmentStore {
            inner: RwLock::new(Some(Arc::new(store))),
            recovery,
        })
    }

    /// Append a record of `data` under `digest` (already verified); durable
    /// once a later `commit` returns.
    #[pyo3(signature = (data, digest, *, algorithm="sha256"))]
    fn append(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        digest: &str,
        algorithm: &str,
    ) -> PyResult<PyLocation> {
        let algorithm = crate::channel::algorithm(algorithm)?;
        let digest = digest_bytes(digest)?;
        let store = self.store()?;
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        py.detach(|| store.append(algorithm, &digest, bytes))
            .map(py_location)
            .map_err(segment_error)
    }

    /// Append a record of the whole file at `path` under `digest` (already
    /// verified), read a buffer at a time: for an instance too large to hold.
    #[pyo3(signature = (path, digest, *, algorithm="sha256"))]
    fn append_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        digest: &str,
        algorithm: &str,
    ) -> PyResult<PyLocation> {
        let algorithm = crate::channel::algorithm(algorithm)?;
        let digest = digest_bytes(digest)?;
        let store = self.store()?;
        py.detach(|| {
            let mut file = std::fs::File::open(&path)?;
            let length = file.metadata()?.len();
            Ok::<_, std::io::Error>((store.append_from(algorithm, &digest, length, &mut file), ()))
        })
        .map_err(PyErr::from)?
        .0
        .map(py_location)
        .map_err(segment_error)
    }

    /// Append a record of `parts` one after another (a rewritten instance:
    /// its new header, the source's pixel data, a trailer), under `digest`
    /// (of the whole, already made), without joining them first.
    #[pyo3(signature = (parts, digest, *, algorithm="sha256"))]
    fn append_parts(
        &self,
        py: Python<'_>,
        parts: Vec<Bound<'_, PyAny>>,
        digest: &str,
        algorithm: &str,
    ) -> PyResult<PyLocation> {
        let algorithm = crate::channel::algorithm(algorithm)?;
        let digest = digest_bytes(digest)?;
        let store = self.store()?;
        let views = parts
            .iter()
            .map(ByteView::new)
            .collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = views.iter().map(|v| v.as_slice()).collect();
        py.detach(|| store.append_parts(algorithm, &digest, &slices))
            .map(py_location)
            .map_err(segment_error)
    }

    /// Append `(data, digest)` records, in order: one call for a round.
    #[pyo3(signature = (records, *, algorithm="sha256"))]
    fn append_many(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyAny>,
        algorithm: &str,
    ) -> PyResult<Vec<PyLocation>> {
        let algorithm = crate::channel::algorithm(algorithm)?;
        let store = self.store()?;
        let mut views = Vec::new();
        for item in records.try_iter()? {
            let (data, digest): (Bound<'_, PyAny>, String) = item?.extract()?;
            views.push((ByteView::new(&data)?, digest_bytes(&digest)?));
        }
        let slices: Vec<(&[u8], &[u8; 32])> =
            views.iter().map(|(v, d)| (v.as_slice(), d)).collect();
        py.detach(|| {
            slices
                .iter()
                .map(|(data, digest)| store.append(algorithm, digest, data).map(py_location))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(segment_error)
    }

    /// Make every record appended so far durable (one fdatasync per segment
    /// written); returns the new durable end `(segment, end)`, to record
    /// beside the records' locations. StorageError: the round failed, none of
    /// it is durable, and the store must be opened again.
    fn commit(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let store = self.store()?;
        py.detach(|| store.commit())
            .map(|d| (d.segment, d.end))
            .map_err(segment_error)
    }

    #[getter]
    fn durable_end(&self) -> PyResult<(u64, u64)> {
        let d = self.store()?.durable_end();
        Ok((d.segment, d.end))
    }

    #[getter]
    fn active_segment(&self) -> PyResult<u64> {
        Ok(self.store()?.active_segment())
    }

    /// Segments removed at open: after the durable end, nothing in them was durable.
    #[getter]
    fn removed_segments(&self) -> Vec<u64> {
        self.recovery.removed_segments.clone()
    }

    /// Records past the durable end cut off at open.
    #[getter]
    fn cut_records(&self) -> u64 {
        self.recovery.cut_records
    }

    /// The data of the durable record at `location`, which must hold `digest`
    /// (CorruptRecord otherwise); with `verify`, hashed and checked too.
    #[pyo3(signature = (location, digest, *, verify=false))]
    fn read(
        &self,
        py: Python<'_>,
        location: PyLocation,
        digest: &str,
        verify: bool,
    ) -> PyResult<Payload> {
        let digest = digest_bytes(digest)?;
        let store = self.store()?;
        let location = self::location(location);
        py.detach(|| store.read(&location, &digest, verify))
            .map(|data| Payload(Arc::new(data)))
            .map_err(segment_error)
    }

    /// The record at `location` to stream from: `(fd, offset, length)`, the fd
    /// a new descriptor of its segment that the caller closes.
    fn open_record(
        &self,
        py: Python<'_>,
        location: PyLocation,
        digest: &str,
    ) -> PyResult<(i32, u64, u64)> {
        let digest = digest_bytes(digest)?;
        let store = self.store()?;
        let location = self::location(location);
        let (file, offset, length) = py
            .detach(|| store.open_record(&location, &digest))
            .map_err(segment_error)?;
        Ok((file.into_raw_fd(), offset, length))
    }

    /// Walk the records of `segment` from `offset`, checking headers (and with
    /// `verify`, data): `(records, end, stop)`, each record `(location,
    /// digest, algorithm)`, `stop` one of "end", "bad header: ...",
    /// "truncated", "bad data".
    #[pyo3(signature = (segment, offset=4096, *, verify=false))]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        segment: u64,
        offset: u64,
        verify: bool,
    ) -> PyResult<(Bound<'py, PyList>, u64, String)> {
        let store = self.store()?;
        let scan = py
            .detach(|| store.scan(segment, offset, verify))
            .map_err(segment_error)?;
        let records = PyList::empty(py);
        for r in &scan.records {
            records.append((
                py_location(r.location),
                dicomrelay_core::digest::to_hex(&r.digest),
                r.algorithm.name(),
            ))?;
        }
        let stop = match scan.stop {
            ScanStop::End => "end".to_owned(),
            ScanStop::BadHeader(fault) => format!("bad header: {}", fault.describe()),
            ScanStop::Truncated => "truncated".to_owned(),
            ScanStop::BadData => "bad data".to_owned(),
        };
        Ok((records, scan.end, stop))
    }

    /// Copy the live records `(location, digest)` of sealed `segment` into the
    /// active one; returns their new locations, durable after the next commit.
    /// Remove the old segment only once the index has switched to them.
    fn compact(
        &self,
        py: Python<'_>,
        segment: u64,
        live: Vec<(PyLocation, String)>,
    ) -> PyResult<Vec<PyLocation>> {
        let store = self.store()?;
        let live = live
            .into_iter()
            .map(|(l, d)| Ok((location(l), digest_bytes(&d)?)))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| store.compact(segment, &live))
            .map(|moved| moved.into_iter().map(py_location).collect())
            .map_err(segment_error)
    }

    /// Remove sealed `segment`, durably.
    fn remove_segment(&self, py: Python<'_>, segment: u64) -> PyResult<()> {
        let store = self.store()?;
        py.detach(|| store.remove_segment(segment))
            .map_err(segment_error)
    }

    /// The segment numbers, in order.
    fn segments(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        let store = self.store()?;
        py.detach(|| store.segments()).map_err(segment_error)
    }

    /// Close the store (what was not committed is not durable); it can then
    /// be opened again, in this process or another.
    fn close(&self, py: Python<'_>) {
        let store = self.inner.write().ok().and_then(|mut s| s.take());
        // Dropping the last reference releases the store's lock; a read on
        // another thread may hold one a moment longer.
        py.detach(|| drop(store));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.close(py);
    }
}

/// Reads durable records while another process appends (no lock, no recovery):
/// for tools such as export, given locations from the ledger.
#[pyclass(frozen, module = "dicomrelay._native", name = "SegmentReader")]
pub struct SegmentReader {
    inner: CoreReader,
}

#[pymethods]
impl SegmentReader {
    #[new]
    fn new(root: PathBuf) -> Self {
        SegmentReader {
            inner: CoreReader::new(&root),
        }
    }

    /// The data of the record at `location`, which must hold `digest`
    /// (CorruptRecord otherwise); with `verify`, hashed and checked too.
    #[pyo3(signature = (location, digest, *, verify=false))]
    fn read(
        &self,
        py: Python<'_>,
        location: PyLocation,
        digest: &str,
        verify: bool,
    ) -> PyResult<Payload> {
        let digest = digest_bytes(digest)?;
        let location = self::location(location);
        py.detach(|| self.inner.read(&location, &digest, verify))
            .map(|data| Payload(Arc::new(data)))
            .map_err(segment_error)
    }
}

/// Failures injected into a store's data writes and syncs, in place of the
/// kernel's (a lost write-back, a full disk): 0 for none, else the errno.
#[derive(Default)]
struct FaultState {
    write_errno: AtomicI32,
    sync_errno: AtomicI32,
    syncs: AtomicU64,
}

impl SegmentIo for FaultState {
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self.write_errno.load(Ordering::SeqCst) {
            0 => file.write_all_at(buf, offset),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        match self.sync_errno.load(Ordering::SeqCst) {
            0 => file.sync_data(),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Faults to inject into a `SegmentStore` (its `faults=`): for tests of what
/// a failed fdatasync or write does to the rounds built on it.
#[pyclass(frozen, module = "dicomrelay._native", name = "SegmentFaults")]
pub struct SegmentFaults {
    state: Arc<FaultState>,
}

#[pymethods]
impl SegmentFaults {
    #[new]
    fn new() -> Self {
        SegmentFaults {
            state: Arc::new(FaultState::default()),
        }
    }

    /// Every data write fails with `errno` from now on (0: none).
    fn fail_writes(&self, errno: i32) {
        self.state.write_errno.store(errno, Ordering::SeqCst);
    }

    /// Every fdatasync fails with `errno` from now on (0: none).
    fn fail_syncs(&self, errno: i32) {
        self.state.sync_errno.store(errno, Ordering::SeqCst);
    }

    /// The fdatasyncs asked for so far, failed or not.
    #[getter]
    fn syncs(&self) -> u64 {
        self.state.syncs.load(Ordering::SeqCst)
    }
}
