//! `Channel`, `TlsConfig` and `Hasher`: the wire hot path for the async layer,
//! which only moves bytes between sockets and these objects.

use std::sync::Arc;

use dicomrelay_core::aligned::AlignedBytes;
use dicomrelay_core::channel::{Channel as CoreChannel, ReadStatus, TlsConfig as CoreTlsConfig};
use dicomrelay_core::digest::Hasher as CoreHasher;
use dicomrelay_core::wire::{Frame, DIGEST_LEN};
use dicomrelay_core::DigestAlgorithm;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::buf::{ByteView, Payload};
use crate::error::channel_error;

/// Inputs shorter than this are hashed without releasing the GIL: the release
/// costs more than the work.
const DETACH_THRESHOLD: usize = 64 * 1024;

#[pyclass(frozen, module = "dicomrelay._native", name = "TlsConfig")]
pub struct TlsConfig(CoreTlsConfig);

#[pymethods]
impl TlsConfig {
    /// The connecting side's identity, trusting servers issued by `ca_pem`.
    #[staticmethod]
    fn client(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> PyResult<TlsConfig> {
        CoreTlsConfig::client(ca_pem, cert_pem, key_pem)
            .map(TlsConfig)
            .map_err(channel_error)
    }

    /// The accepting side's identity, requiring clients issued by `ca_pem`.
    #[staticmethod]
    fn server(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> PyResult<TlsConfig> {
        CoreTlsConfig::server(ca_pem, cert_pem, key_pem)
            .map(TlsConfig)
            .map_err(channel_error)
    }

    #[getter]
    fn is_server(&self) -> bool {
        matches!(self.0, CoreTlsConfig::Server(_))
    }
}

#[pyclass(module = "dicomrelay._native", name = "Channel")]
pub struct Channel(CoreChannel);

#[pymethods]
impl Channel {
    #[new]
    #[pyo3(signature = (tls=None, server_name=None))]
    fn new(tls: Option<&TlsConfig>, server_name: Option<&str>) -> PyResult<Channel> {
        match tls {
            None => Ok(Channel(CoreChannel::plaintext())),
            Some(config) => CoreChannel::tls(&config.0, server_name)
                .map(Channel)
                .map_err(channel_error),
        }
    }

    /// Feed bytes read from the socket; returns the whole frames now available as
    /// `(kind, flags, stream, offset, payload, digest_ok, digest)` tuples. `payload`
    /// is a `Payload` (a read-only buffer); `digest` the 32 bytes a chunk claimed
    /// for it, checked: see `digest_ok`.
    fn receive<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let channel = &mut self.0;
        let frames = py
            .detach(|| {
                channel.receive(data)?;
                Ok(channel.take_frames())
            })
            .map_err(channel_error)?;
        frame_list(py, frames)
    }

    /// Read what the non-blocking socket `fd` holds (up to 4 MiB) with the GIL
    /// released, and process it as `receive` does: returns the whole frames now
    /// available, and whether the peer closed its side. A socket error raises
    /// OSError (ConnectionResetError, ...).
    fn read_from<'py>(&mut self, py: Python<'py>, fd: i32) -> PyResult<(Bound<'py, PyList>, bool)> {
        let channel = &mut self.0;
        let (status, frames) = py
            .detach(|| {
                let status = channel.read_from(fd)?;
                Ok((status, channel.take_frames()))
            })
            .map_err(channel_error)?;
        Ok((frame_list(py, frames)?, status == ReadStatus::Closed))
    }

    /// Write queued bytes to the non-blocking socket `fd` until it would block,
    /// with the GIL released. Returns whether bytes remain (wait until it is
    /// writable, then call again).
    fn write_to(&mut self, py: Python<'_>, fd: i32) -> PyResult<bool> {
        let channel = &mut self.0;
        py.detach(|| channel.write_to(fd)).map_err(channel_error)
    }

    /// Queue one frame. `digest` (32 bytes) precedes the payload of a chunk.
    #[pyo3(signature = (kind, payload, *, stream=0, offset=0, flags=0, digest=None))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments of one frame
    fn send(
        &mut self,
        py: Python<'_>,
        kind: u8,
        payload: &Bound<'_, PyAny>,
        stream: u32,
        offset: u64,
        flags: u8,
        digest: Option<&[u8]>,
    ) -> PyResult<()> {
        let digest = chunk_digest(digest)?;
        let view = ByteView::new(payload)?;
        let bytes = view.as_slice();
        let channel = &mut self.0;
        let mut send = || channel.send(kind, flags, stream, offset, digest.as_ref(), bytes);
        let result = if bytes.len() >= DETACH_THRESHOLD {
            py.detach(send)
        } else {
            send()
        };
        result.map_err(channel_error)
    }

    /// Queue one frame whose payload is `length` bytes of the open file `fd` at
    /// `base + offset` (`base`: where the instance starts in the file, a
    /// segment's record; `offset`, the frame's, is within the instance): read
    /// (into a pooled buffer) and encrypted with the GIL released.
    #[pyo3(signature = (kind, fd, offset, length, *, stream=0, flags=0, digest=None, base=0))]
    #[allow(clippy::too_many_arguments)] // the Python keyword arguments of one frame
    fn send_from_file(
        &mut self,
        py: Python<'_>,
        kind: u8,
        fd: i32,
        offset: u64,
        length: usize,
        stream: u32,
        flags: u8,
        digest: Option<&[u8]>,
        base: u64,
    ) -> PyResult<()> {
        let digest = chunk_digest(digest)?;
        let channel = &mut self.0;
        py.detach(|| -> PyResult<()> {
            let mut buf = dicomrelay_core::aligned::take_buffer(length);
            let chunk = (fd, base, offset, length, stream);
            let sent = queue_from_file(channel, &mut buf, kind, flags, chunk, digest.as_ref());
            dicomrelay_core::aligned::give_back(buf);
            sent
        })
    }

    /// Queue one frame per item of `chunks`, each `(fd, base, offset, length,
    /// stream, digest)` as `send_from_file` takes them, in one call with the
    /// GIL released: many small instances cost one crossing, not one each.
    /// Stops at the first file that fails (EOFError for one that is shorter);
    /// the frames before it are queued.
    #[pyo3(signature = (kind, chunks, *, flags=0))]
    fn send_many_from_files(
        &mut self,
        py: Python<'_>,
        kind: u8,
        chunks: Vec<FileChunk>,
        flags: u8,
    ) -> PyResult<()> {
        let digests = chunks
            .iter()
            .map(|chunk| chunk_digest(chunk.5.as_deref()))
            .collect::<PyResult<Vec<_>>>()?;
        let channel = &mut self.0;
        py.detach(|| -> PyResult<()> {
            let mut buf = dicomrelay_core::aligned::take_buffer(0);
            let sent = chunks.iter().zip(&digests).try_for_each(
                |(&(fd, base, offset, length, stream, _), digest)| {
                    let chunk = (fd, base, offset, length, stream);
                    queue_from_file(channel, &mut buf, kind, flags, chunk, digest.as_ref())
                },
            );
            dicomrelay_core::aligned::give_back(buf);
            sent
        })
    }

    /// Bytes to write to the socket (a `Payload`); empties the queue.
    fn take_outgoing(&mut self) -> Payload {
        Payload(Arc::new(AlignedBytes::unaligned(self.0.take_outgoing())))
    }

    /// Send TLS close_notify (queued in the outgoing bytes).
    fn close(&mut self) -> PyResult<()> {
        self.0.close().map_err(channel_error)
    }

    #[getter]
    fn handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    /// Whether bytes wait to be written.
    #[getter]
    fn wants_write(&self) -> bool {
        self.0.wants_write()
    }

    /// The peer's certificate (DER) once the TLS handshake is done.
    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.peer_certificate().map(|c| PyBytes::new(py, c))
    }
}

/// Frames as the tuples `receive` and `read_from` return.
fn frame_list(py: Python<'_>, frames: Vec<Frame>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for f in frames {
        let claimed = f.digest.map(|d| PyBytes::new(py, &d));
        let tuple = PyTuple::new(
            py,
            [
                f.header.kind.into_bound_py_any(py)?,
                f.header.flags.into_bound_py_any(py)?,
                f.header.stream.into_bound_py_any(py)?,
                f.header.offset.into_bound_py_any(py)?,
                Bound::new(py, Payload(Arc::new(f.payload)))?.into_any(),
                f.digest_ok.into_bound_py_any(py)?,
                claimed.into_bound_py_any(py)?,
            ],
        )?;
        out.append(tuple)?;
    }
    Ok(out)
}

pub fn algorithm(name: &str) -> PyResult<DigestAlgorithm> {
    DigestAlgorithm::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!("digest must be 'sha256' or 'blake3', not {name:?}"))
    })
}

/// An incremental digest, for objects that arrive in pieces.
#[pyclass(module = "dicomrelay._native", name = "Hasher")]
pub struct Hasher {
    inner: Option<CoreHasher>,
    algorithm: DigestAlgorithm,
}

#[pymethods]
impl Hasher {
    #[new]
    #[pyo3(signature = (algorithm="sha256"))]
    fn new(algorithm: &str) -> PyResult<Hasher> {
        let algorithm = self::algorithm(algorithm)?;
        Ok(Hasher {
            inner: Some(algorithm.hasher()),
            algorithm,
        })
    }

    fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let hasher = self
            .inner
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("hasher already finished"))?;
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        if bytes.len() >= DETACH_THRESHOLD {
            py.detach(|| hasher.update(bytes));
        } else {
            hasher.update(bytes);
        }
        Ok(())
    }

    /// The digest as lower-case hex; the hasher cannot be updated after.
    fn hexdigest(&mut self) -> PyResult<String> {
        let hasher = self
            .inner
            .take()
            .ok_or_else(|| PyValueError::new_err("hasher already finished"))?;
        Ok(dicomrelay_core::digest::to_hex(&hasher.finish()))
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.algorithm.name()
    }
}

/// One frame of `Channel.send_many_from_files`: (fd, base, offset, length,
/// stream, digest).
type FileChunk = (i32, u64, u64, usize, u32, Option<Vec<u8>>);

/// A chunk digest as Python gives it: 32 bytes, or none.
fn chunk_digest(digest: Option<&[u8]>) -> PyResult<Option<[u8; DIGEST_LEN]>> {
    digest
        .map(|d| {
            <[u8; DIGEST_LEN]>::try_from(d)
                .map_err(|_| PyValueError::new_err("a chunk digest is 32 bytes"))
        })
        .transpose()
}

/// Queue one frame whose payload is `length` bytes of `fd` at `base + offset`,
/// `(fd, base, offset, length, stream)`, read into `buf` first.
fn queue_from_file(
    channel: &mut CoreChannel,
    buf: &mut Vec<u8>,
    kind: u8,
    flags: u8,
    (fd, base, offset, length, stream): (i32, u64, u64, usize, u32),
    digest: Option<&[u8; DIGEST_LEN]>,
) -> PyResult<()> {
    let at = base
        .checked_add(offset)
        .ok_or_else(|| PyValueError::new_err("base + offset overflows"))?;
    read_exact_at(fd, buf, length, at)?;
    channel
        .send(kind, flags, stream, offset, digest, buf)
        .map_err(channel_error)
}

/// Fill `buf` with exactly `length` bytes of the descriptor at `offset` (pread,
/// leaving the descriptor's own position alone), straight into its spare
/// capacity: zeroing half a megabyte first would cost more than the read.
fn read_exact_at(fd: i32, buf: &mut Vec<u8>, length: usize, offset: u64) -> PyResult<()> {
    buf.clear();
    buf.reserve(length);
    while buf.len() < length {
        let filled = buf.len();
        let at = libc::off_t::try_from(offset + filled as u64)
            .map_err(|_| PyValueError::new_err("file offset out of range"))?;
        let spare = &mut buf.spare_capacity_mut()[..length - filled];
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`
        // for the whole call, and pread writes at most that many into it.
        let n = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            0 => {
                return Err(pyo3::exceptions::PyEOFError::new_err(
                    "the file is shorter than when it was scanned",
                ))
            }
            n if n > 0 => {
                // SAFETY: pread initialised the first `n` bytes of the spare
                // capacity, and `n <= spare.len()`, so within the capacity.
                unsafe { buf.set_len(filled + n as usize) };
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}
