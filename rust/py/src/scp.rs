//! The storage SCP's data plane for the async layer: `SparePool`, `ScpPump`
//! (a thread reading an association's socket) and `ScpReceiver` (the same
//! work on bytes the caller read, for TLS), both giving `ScpMessage`s and one
//! closing `ScpEnd`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dicomrelay_core::aligned::AlignedBytes;
use dicomrelay_core::scp::{
    self as core, Destination, End, Event, Failure, Implementation, PumpEvent, ReceiverConfig,
};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::IntoPyObjectExt;

use crate::buf::{ByteView, Payload};
use crate::error::{parse_error, pdu_error};
use crate::info::InstanceInfo;

/// Reads shorter than this are decoded without releasing the GIL.
const DETACH_THRESHOLD: usize = 16 * 1024;

/// Temporary files for received data sets, made ahead of need by a thread.
#[pyclass(frozen, module = "dicomrelay._native", name = "SparePool")]
pub struct SparePool(Arc<core::SparePool>);

#[pymethods]
impl SparePool {
    /// Files in `directory` (made if needed; `*.dcm` there are removed as
    /// left by a crash), `keep` of them ready.
    #[new]
    #[pyo3(signature = (directory, *, keep=8))]
    fn new(directory: PathBuf, keep: usize) -> PyResult<Self> {
        let pool = core::SparePool::new(directory.clone(), keep).map_err(|e| os_error(&e))?;
        Ok(SparePool(Arc::new(pool)))
    }

    /// Stop making files and remove the unused ones; again: nothing.
    fn close(&self, py: Python<'_>) {
        let pool = &self.0;
        py.detach(|| pool.close());
    }
}

/// A whole DIMSE message: its command set, and for a C-STORE its data set in
/// a file (not yet durable) with the file's length, digest and header.
#[pyclass(frozen, module = "dicomrelay._native", name = "ScpMessage", get_all)]
pub struct ScpMessage {
    context_id: u8,
    command: Py<PyBytes>,
    has_dataset: bool,
    /// Its file: None without a data set, when it is in `data`, or when
    /// writing it failed (see `error`).
    path: Option<String>,
    /// Its bytes, when it was small enough to hold in memory (`in_memory`).
    data: Option<Py<Payload>>,
    length: u64,
    digest: Option<String>,
    /// The file's header, or None (see `scan_error`, `error`).
    info: Option<Py<InstanceInfo>>,
    /// DicomParseError: the data set is not one the scanner can read.
    scan_error: Option<Py<PyAny>>,
    /// OSError: the data set could not be written (the file is gone).
    error: Option<Py<PyAny>>,
    /// Of a data-set message: the number its `ScpCommand` carried.
    sequence: u64,
    /// The answer decided ahead for it (`ScpPump.answer_when_stored`) was sent.
    answered: bool,
}

/// A command announcing a data set, whole before the data set is: its answer
/// may be decided while the data set arrives.
#[pyclass(frozen, module = "dicomrelay._native", name = "ScpCommand", get_all)]
pub struct ScpCommand {
    sequence: u64,
    context_id: u8,
    command: Py<PyBytes>,
}

/// The last event: why the data plane stopped. `kind` is one of "handback"
/// (`data`: a PDU other than P-DATA-TF and the bytes after it, for the
/// association machine), "pdu-error" (`error`: PduError), "dimse-error"
/// (`reason`), "closed", "idle", "stopped", "socket-error" (`error`: OSError).
#[pyclass(frozen, module = "dicomrelay._native", name = "ScpEnd", get_all)]
pub struct ScpEnd {
    kind: &'static str,
    data: Py<PyBytes>,
    reason: String,
    error: Option<Py<PyAny>>,
}

#[cold]
fn os_error(e: &std::io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, e.to_string())),
        None => PyOSError::new_err(e.to_string()),
    }
}

fn end<'py>(
    py: Python<'py>,
    kind: &'static str,
    data: &[u8],
    reason: String,
    error: Option<PyErr>,
) -> PyResult<Bound<'py, PyAny>> {
    ScpEnd {
        kind,
        data: PyBytes::new(py, data).unbind(),
        reason,
        error: error.map(|e| e.into_value(py).into_any()),
    }
    .into_bound_py_any(py)
}

fn event_to_python<'py>(py: Python<'py>, event: Event) -> PyResult<Bound<'py, PyAny>> {
    match event {
        Event::Command {
            sequence,
            context_id,
            command,
        } => ScpCommand {
            sequence,
            context_id,
            command: PyBytes::new(py, &command).unbind(),
        }
        .into_bound_py_any(py),
        Event::Message(m) => {
            let (mut path, mut data, mut length, mut digest) = (None, None, 0, None);
            let (mut info, mut scan_error, mut error) = (None, None, None);
            let has_dataset = m.dataset.is_some();
            let (sequence, answered) = (m.sequence, m.answered);
            if let Some(d) = m.dataset {
                path = d.path.map(|p| p.to_string_lossy().into_owned());
                if let Some(bytes) = d.data {
                    // Handed over as it is: no copy.
                    let held = Payload(Arc::new(AlignedBytes::unaligned(bytes)));
                    data = Some(Py::new(py, held)?);
                }
                (length, digest) = (d.length, d.digest);
                match d.scan {
                    Some(Ok(i)) => info = Some(Py::new(py, InstanceInfo(*i))?),
                    Some(Err(e)) => scan_error = Some(parse_error(e).into_value(py).into_any()),
                    None => {}
                }
                error = d.error.map(|e| os_error(&e).into_value(py).into_any());
            }
            ScpMessage {
                context_id: m.context_id,
                command: PyBytes::new(py, &m.command).unbind(),
                has_dataset,
                path,
                data,
                length,
                digest,
                info,
                scan_error,
                error,
                sequence,
                answered,
            }
            .into_bound_py_any(py)
        }
        Event::Handback(bytes) => end(py, "handback", &bytes, String::new(), None),
        Event::Failed(Failure::Pdu(e)) => {
            let reason = e.to_string();
            end(py, "pdu-error", b"", reason, Some(pdu_error(e)))
        }
        Event::Failed(Failure::Dimse(reason)) => end(py, "dimse-error", b"", reason, None),
    }
}

fn events_to_python<'py>(
    py: Python<'py>,
    events: impl IntoIterator<Item = PumpEvent>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for event in events {
        out.append(match event {
            PumpEvent::Event(e) => event_to_python(py, e)?,
            PumpEvent::Ended(End::Closed) => end(py, "closed", b"", String::new(), None)?,
            PumpEvent::Ended(End::Idle) => end(py, "idle", b"", String::new(), None)?,
            PumpEvent::Ended(End::Stopped) => end(py, "stopped", b"", String::new(), None)?,
            PumpEvent::Ended(End::Socket(e)) => {
                end(py, "socket-error", b"", e.to_string(), Some(os_error(&e)))?
            }
        })?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)] // the association's terms, as keyword arguments
fn config(
    spares: &SparePool,
    contexts: Vec<(u8, String)>,
    calling_ae_title: String,
    implementation_class_uid: String,
    implementation_version_name: String,
    digest: Option<&str>,
    max_pdu_length: u32,
    in_memory: u64,
) -> PyResult<ReceiverConfig> {
    Ok(ReceiverConfig {
        max_pdu_length,
        contexts,
        calling_ae_title,
        implementation: Implementation {
            class_uid: implementation_class_uid,
            version_name: implementation_version_name,
        },
        digest: digest.map(crate::channel::algorithm).transpose()?,
        destination: spares.0.clone() as Arc<dyn Destination>,
        in_memory,
    })
}

/// The data plane on bytes the caller reads (a TLS stream's plaintext).
#[pyclass(module = "dicomrelay._native", name = "ScpReceiver")]
pub struct ScpReceiver(core::Receiver);

#[pymethods]
impl ScpReceiver {
    /// `contexts`: the accepted presentation contexts, (id, transfer syntax).
    #[new]
    #[pyo3(signature = (spares, *, contexts, calling_ae_title, implementation_class_uid, implementation_version_name, digest, max_pdu_length, in_memory=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        spares: &SparePool,
        contexts: Vec<(u8, String)>,
        calling_ae_title: String,
        implementation_class_uid: String,
        implementation_version_name: String,
        digest: Option<&str>,
        max_pdu_length: u32,
        in_memory: u64,
    ) -> PyResult<Self> {
        let config = config(
            spares,
            contexts,
            calling_ae_title,
            implementation_class_uid,
            implementation_version_name,
            digest,
            max_pdu_length,
            in_memory,
        )?;
        Ok(ScpReceiver(core::Receiver::new(config)))
    }

    /// Bytes from the peer: the messages they complete, then an `ScpEnd` if
    /// they end the data plane's part (it takes no more bytes after that).
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        let receiver = &mut self.0;
        let events = if bytes.len() >= DETACH_THRESHOLD {
            py.detach(|| {
                receiver.feed(bytes);
                receiver.take_events()
            })
        } else {
            receiver.feed(bytes);
            receiver.take_events()
        };
        events_to_python(py, events.into_iter().map(PumpEvent::Event))
    }
}

/// A thread reading the socket `fd` into the data plane; `fileno()` becomes
/// readable when messages wait in `take()`.
#[pyclass(module = "dicomrelay._native", name = "ScpPump")]
pub struct ScpPump {
    pump: Option<core::Pump>,
    wakeup: UnixStream,
}

#[pymethods]
impl ScpPump {
    /// Start reading the non-blocking socket `fd`: keep it open, and read
    /// nothing from it, until `stop()` returns or an `ScpEnd` was taken.
    /// `idle_seconds`: how long the peer may send nothing (None: for ever).
    #[new]
    #[pyo3(signature = (fd, spares, *, contexts, calling_ae_title, implementation_class_uid, implementation_version_name, digest, max_pdu_length, idle_seconds=None, in_memory=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        fd: i32,
        spares: &SparePool,
        contexts: Vec<(u8, String)>,
        calling_ae_title: String,
        implementation_class_uid: String,
        implementation_version_name: String,
        digest: Option<&str>,
        max_pdu_length: u32,
        idle_seconds: Option<f64>,
        in_memory: u64,
    ) -> PyResult<Self> {
        let idle = match idle_seconds {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(PyValueError::new_err(format!(
                    "idle_seconds must be positive, not {s}"
                )))
            }
        };
        let config = config(
            spares,
            contexts,
            calling_ae_title,
            implementation_class_uid,
            implementation_version_name,
            digest,
            max_pdu_length,
            in_memory,
        )?;
        let (wakeup, signal) = UnixStream::pair().map_err(|e| os_error(&e))?;
        wakeup.set_nonblocking(true).map_err(|e| os_error(&e))?;
        signal.set_nonblocking(true).map_err(|e| os_error(&e))?;
        let receiver = core::Receiver::new(config);
        let pump = core::Pump::start(fd, receiver, idle, move || {
            // A full socket already holds a wake-up; losing this byte is fine.
            let _ = (&signal).write(&[1]);
        })
        .map_err(|e| os_error(&e))?;
        Ok(ScpPump {
            pump: Some(pump),
            wakeup,
        })
    }

    /// A descriptor that becomes readable when events wait.
    fn fileno(&self) -> i32 {
        self.wakeup.as_raw_fd()
    }

    /// The events so far: `ScpMessage`s, and last an `ScpEnd` once the pump
    /// has stopped reading.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut drain = [0u8; 256];
        while matches!((&self.wakeup).read(&mut drain), Ok(n) if n > 0) {}
        let events = self.pump.as_ref().map(core::Pump::take).unwrap_or_default();
        events_to_python(py, events)
    }

    /// Send `data` (PDUs) after whatever waits: while the pump runs the
    /// socket's writes are its too. Raises OSError for a broken socket.
    fn send(&self, data: &[u8]) -> PyResult<()> {
        let pump = self
            .pump
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("the pump has stopped"))?;
        pump.send(data).map_err(|e| os_error(&e))
    }

    /// The answer to data-set message `sequence` (an `ScpCommand`'s), decided
    /// ahead: `pdus` are sent from the pump's thread the moment the data set
    /// is stored whole, if its header names `sop_instance_uid` (and
    /// `sop_class_uid`, when it names a class) and a study; the message then
    /// comes with `answered`. Otherwise nothing is sent.
    fn answer_when_stored(
        &self,
        sequence: u64,
        pdus: &[u8],
        sop_instance_uid: String,
        sop_class_uid: String,
    ) {
        if let Some(pump) = &self.pump {
            pump.answer_when_stored(
                sequence,
                core::Answer {
                    pdus: pdus.to_vec(),
                    sop_instance_uid,
                    sop_class_uid,
                },
            );
        }
    }

    /// Stop reading and wait for the thread; no answer decided ahead goes out
    /// after this, and the files of messages never taken are removed. Returns
    /// the bytes queued but not yet written (the caller's to send). Again: b"".
    fn stop<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let unsent = match self.pump.take() {
            Some(mut pump) => py.detach(|| pump.stop()),
            None => Vec::new(),
        };
        PyBytes::new(py, &unsent)
    }
}

/// Part 10 file meta information for a received data set (PS3.10 7.1).
#[pyfunction]
#[pyo3(signature = (*, sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title, implementation_class_uid, implementation_version_name))]
pub fn file_meta<'py>(
    py: Python<'py>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
    source_ae_title: Option<&str>,
    implementation_class_uid: String,
    implementation_version_name: String,
) -> PyResult<Bound<'py, PyBytes>> {
    let texts = [
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax_uid,
        source_ae_title.unwrap_or(""),
        &implementation_class_uid,
        &implementation_version_name,
    ];
    if let Some(bad) = texts.iter().find(|t| !t.is_ascii() || t.len() > 64) {
        return Err(PyValueError::new_err(format!(
            "not a UID, AE title or version name: {bad:?}"
        )));
    }
    let implementation = Implementation {
        class_uid: implementation_class_uid,
        version_name: implementation_version_name,
    };
    let meta = core::file_meta(
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax_uid,
        source_ae_title.unwrap_or(""),
        &implementation,
    );
    Ok(PyBytes::new(py, &meta))
}
