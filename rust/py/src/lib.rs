//! `dicomrelay._native`: the PyO3 glue over `dicomrelay-core`. Inputs are taken
//! without copying, the GIL is released while bytes are read, and core errors
//! become the exceptions defined in `dicomrelay.errors`.

mod buf;
mod channel;
mod error;
mod header;
mod info;
mod pdu;
mod pdu_items;
mod rewrite;
mod scp;
mod segments;
mod writer;

use std::num::NonZeroUsize;
use std::path::PathBuf;

use dicomrelay_core::{DigestAlgorithm, ScanOptions, DEFAULT_CHUNK_SIZE};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use buf::{ByteView, MappedFile};
use error::{parse_error, Failure};
use info::InstanceInfo;

/// Options as Python passes them, validated once.
fn options(digest: Option<&str>, chunk_size: Option<i64>) -> PyResult<ScanOptions> {
    let digest = match digest {
        None => None,
        Some(name) => Some(DigestAlgorithm::from_name(name).ok_or_else(|| {
            PyValueError::new_err(format!("digest must be 'sha256' or 'blake3', not {name:?}"))
        })?),
    };
    let chunk_size = match chunk_size {
        None => None,
        Some(n) if n > 0 => {
            Some(usize::try_from(n).map_err(|_| PyValueError::new_err("chunk_size too large"))?)
        }
        Some(n) => {
            return Err(PyValueError::new_err(format!(
                "chunk_size must be positive, not {n}"
            )))
        }
    };
    Ok(ScanOptions {
        // A chunk plan without a named algorithm uses the default, SHA-256.
        digest: digest.or(chunk_size.map(|_| DigestAlgorithm::Sha256)),
        chunk_size,
        ..ScanOptions::default()
    })
}

/// Files larger than this have their pages released as they are hashed.
const RELEASE_PAGES_ABOVE: usize = 64 << 20;

fn scan_path(
    path: &std::path::Path,
    options: &ScanOptions,
) -> Result<dicomrelay_core::InstanceInfo, Failure> {
    let file = MappedFile::open(path).map_err(|e| Failure::Io(e, path.to_owned()))?;
    let data = file.as_slice();
    let Some(algorithm) = options.digest.filter(|_| data.len() > RELEASE_PAGES_ABOVE) else {
        return Ok(dicomrelay_core::scan(data, options)?);
    };
    let header_only = ScanOptions {
        digest: None,
        ..*options
    };
    let mut info = dicomrelay_core::scan(data, &header_only)?;
    file.release_before(data.len());
    let digests = dicomrelay_core::digest_with(data, algorithm, options.chunk_size, |end| {
        file.release_before(end)
    });
    info.digest = Some(digests.whole);
    info.chunk_digests = digests.chunks;
    Ok(info)
}

#[pyfunction]
#[pyo3(signature = (data, *, digest=None, chunk_size=None))]
fn scan(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    digest: Option<&str>,
    chunk_size: Option<i64>,
) -> PyResult<InstanceInfo> {
    let options = options(digest, chunk_size)?;
    let view = ByteView::new(data)?;
    let bytes = view.as_slice();
    let result = py.detach(|| dicomrelay_core::scan(bytes, &options));
    result.map(InstanceInfo).map_err(parse_error)
}

#[pyfunction]
#[pyo3(signature = (path, *, digest=None, chunk_size=None))]
fn scan_file(
    py: Python<'_>,
    path: PathBuf,
    digest: Option<&str>,
    chunk_size: Option<i64>,
) -> PyResult<InstanceInfo> {
    let options = options(digest, chunk_size)?;
    let result = py.detach(|| scan_path(&path, &options));
    result.map(InstanceInfo).map_err(PyErr::from)
}

/// One input of a batch: bytes held from Python, or a path to map.
enum Source<'py> {
    Bytes(ByteView<'py>),
    Path(PathBuf),
}

#[pyfunction]
#[pyo3(signature = (sources, *, digest=None, chunk_size=None, threads=None))]
fn scan_many<'py>(
    py: Python<'py>,
    sources: &Bound<'py, PyAny>,
    digest: Option<&str>,
    chunk_size: Option<i64>,
    threads: Option<i64>,
) -> PyResult<Bound<'py, PyList>> {
    let options = options(digest, chunk_size)?;
    let threads = match threads {
        None => None,
        Some(n) if n > 0 => Some(n as usize),
        Some(n) => {
            return Err(PyValueError::new_err(format!(
                "threads must be positive, not {n}"
            )))
        }
    };
    let mut inputs = Vec::new();
    for item in sources.try_iter()? {
        let item = item?;
        let is_path = item.is_instance_of::<PyString>() || item.hasattr("__fspath__")?;
        inputs.push(if is_path {
            Source::Path(item.extract()?)
        } else {
            Source::Bytes(ByteView::new(&item)?)
        });
    }
    let jobs: Vec<Job<'_>> = inputs
        .iter()
        .map(|s| match s {
            Source::Bytes(v) => Job::Bytes(v.as_slice()),
            Source::Path(p) => Job::Path(p.as_path()),
        })
        .collect();
    let workers = threads
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(NonZeroUsize::get)
        })
        .unwrap_or(1)
        .clamp(1, 64);
    let results = py.detach(|| run_batch(&jobs, &options, workers));
    let out = PyList::empty(py);
    for result in results {
        match result {
            Ok(info) => out.append(Bound::new(py, InstanceInfo(info))?)?,
            Err(failure) => out.append(PyErr::from(failure).into_value(py))?,
        }
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Job<'a> {
    Bytes(&'a [u8]),
    Path(&'a std::path::Path),
}

type Outcome = Result<dicomrelay_core::InstanceInfo, Failure>;

/// Scan every job on `workers` threads, results in input order.
fn run_batch(jobs: &[Job<'_>], options: &ScanOptions, workers: usize) -> Vec<Outcome> {
    let run = |job: &Job<'_>| match *job {
        Job::Bytes(b) => dicomrelay_core::scan(b, options).map_err(Failure::from),
        Job::Path(p) => scan_path(p, options),
    };
    let workers = workers.min(jobs.len()).max(1);
    if workers == 1 {
        return jobs.iter().map(run).collect();
    }
    let per_worker = jobs.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(per_worker)
            .map(|part| s.spawn(move || part.iter().map(run).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<InstanceInfo>()?;
    m.add_class::<channel::Channel>()?;
    m.add_class::<channel::TlsConfig>()?;
    m.add_class::<channel::Hasher>()?;
    m.add_class::<buf::Payload>()?;
    m.add_class::<writer::DurableWriter>()?;
    m.add_class::<writer::StreamFile>()?;
    m.add_function(wrap_pyfunction!(writer::sync_filesystem, m)?)?;
    m.add_class::<segments::SegmentStore>()?;
    m.add_class::<segments::SegmentReader>()?;
    m.add_class::<segments::SegmentFaults>()?;
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(scan_file, m)?)?;
    m.add_function(wrap_pyfunction!(scan_many, m)?)?;
    m.add_function(wrap_pyfunction!(header::header_values, m)?)?;
    m.add_function(wrap_pyfunction!(header::header_values_file, m)?)?;
    m.add_function(wrap_pyfunction!(rewrite::rewrite_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(rewrite::rewrite_path, m)?)?;
    m.add_class::<pdu::PduDecoder>()?;
    m.add_class::<pdu_items::AssociateRq>()?;
    m.add_class::<pdu_items::AssociateAc>()?;
    m.add_class::<pdu::AssociateRj>()?;
    m.add_class::<pdu::PData>()?;
    m.add_class::<pdu::ReleaseRq>()?;
    m.add_class::<pdu::ReleaseRp>()?;
    m.add_class::<pdu::Abort>()?;
    m.add_class::<pdu_items::PresentationContextRq>()?;
    m.add_class::<pdu_items::PresentationContextAc>()?;
    m.add_class::<pdu_items::UserInformation>()?;
    m.add_class::<pdu_items::RoleSelection>()?;
    m.add_class::<pdu_items::SopClassExtended>()?;
    m.add_class::<pdu_items::SopClassCommonExtended>()?;
    m.add_class::<pdu_items::UserIdentity>()?;
    m.add_function(wrap_pyfunction!(pdu::fragment_pdata, m)?)?;
    m.add_class::<scp::SparePool>()?;
    m.add_class::<scp::ScpMessage>()?;
    m.add_class::<scp::ScpCommand>()?;
    m.add_class::<scp::ScpEnd>()?;
    m.add_class::<scp::ScpReceiver>()?;
    m.add_class::<scp::ScpPump>()?;
    m.add_function(wrap_pyfunction!(scp::file_meta, m)?)?;
    m.add("DEFAULT_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
