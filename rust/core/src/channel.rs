//! A secure channel: TLS (rustls, sans-IO) under the frame codec. Bytes from the
//! socket go in, verified frames come out; frames go in, bytes for the socket
//! come out. Without TLS (an explicit insecure choice) the codec runs alone.
//!
//! The state machine takes and gives bytes (`receive`, `take_outgoing`); two
//! adapters move them between it and a non-blocking socket themselves
//! (`read_from`, `write_to`), so the bytes never pass through the caller.

use std::io::{self, ErrorKind as IoErrorKind, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use crate::socket::Socket;
use crate::wire::{encode_frame, frame_header, Frame, FrameDecoder, WireError, DIGEST_LEN};

/// The most `read_from` reads in one call, so one busy peer cannot hold the
/// caller's event loop (it calls again).
pub const READ_CAP: usize = 4 << 20;
/// One `recv` of ciphertext (or of small plaintext frames): few syscalls, and
/// small enough to stay in cache for the decryption that follows.
const INBOX_SIZE: usize = 256 << 10;
/// A plaintext payload missing at least this many bytes is read straight into
/// its frame.
const DIRECT_READ: usize = 64 << 10;

/// Why a channel failed: the TLS layer, the frames inside it, or the socket
/// under it (an errno: ECONNRESET, EPIPE, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    Tls(String),
    Wire(WireError),
    Config(String),
    Socket(i32),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Tls(d) => write!(f, "TLS: {d}"),
            ChannelError::Wire(e) => write!(f, "protocol: {e}"),
            ChannelError::Config(d) => write!(f, "TLS configuration: {d}"),
            ChannelError::Socket(errno) => {
                write!(f, "socket: {}", io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<WireError> for ChannelError {
    fn from(e: WireError) -> Self {
        ChannelError::Wire(e)
    }
}

/// How a `read_from` ended; the frames it completed wait in `take_frames`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has nothing more for now: wait until it is readable.
    Drained,
    /// `READ_CAP` bytes were read; more may be waiting.
    Capped,
    /// The peer closed its side; everything it sent before was processed.
    Closed,
}

#[cold]
fn config_error(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Config(format!("{what}: {e}"))
}

/// A socket failure, by errno; anything else an I/O call returns came from rustls.
#[cold]
fn io_error(e: io::Error) -> ChannelError {
    match e.raw_os_error() {
        Some(errno) => ChannelError::Socket(errno),
        None => ChannelError::Tls(e.to_string()),
    }
}

/// An organisation's TLS identity and the CAs it trusts, built once per node.
#[derive(Clone)]
pub enum TlsConfig {
    Client(Arc<ClientConfig>),
    Server(Arc<ServerConfig>),
}

fn load_identity(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ChannelError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("certificate", e))?;
    if certs.is_empty() {
        return Err(ChannelError::Config("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| config_error("private key", e))?;
    Ok((certs, key))
}

fn load_roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, ChannelError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| config_error("CA certificate", e))?)
            .map_err(|e| config_error("CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(ChannelError::Config("no trusted CA certificate".into()));
    }
    Ok(Arc::new(roots))
}

impl TlsConfig {
    /// The connecting side: presents `cert_pem`, trusts servers issued by `ca_pem`.
    pub fn client(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, ChannelError> {
        let (certs, key) = load_identity(cert_pem, key_pem)?;
        let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("protocol versions", e))?
            .with_root_certificates(load_roots(ca_pem)?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| config_error("client identity", e))?;
        Ok(TlsConfig::Client(Arc::new(config)))
    }

    /// The accepting side: presents `cert_pem` and requires a client certificate
    /// issued by `ca_pem` (mutual TLS).
    pub fn server(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, ChannelError> {
        let (certs, key) = load_identity(cert_pem, key_pem)?;
        let provider = Arc::new(default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(load_roots(ca_pem)?, provider.clone())
                .build()
                .map_err(|e| config_error("client verifier", e))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error("protocol versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| config_error("server identity", e))?;
        Ok(TlsConfig::Server(Arc::new(config)))
    }
}

/// One connection's protocol state: TLS (or none) and the frame decoder.
pub struct Channel {
    tls: Option<Connection>,
    decoder: FrameDecoder,
    /// Without TLS, frames waiting to go out (`outgoing[sent..]`). With TLS the
    /// encrypted records wait in rustls until written or taken.
    outgoing: Vec<u8>,
    sent: usize,
    /// Frames encoded before TLS can carry them.
    staging: Vec<u8>,
    /// Bytes read from the socket before the channel takes them: one large
    /// `recv` where rustls alone would make one per 4 KiB. Allocated on first use.
    inbox: Vec<u8>,
}

impl Channel {
    pub fn plaintext() -> Channel {
        Channel {
            tls: None,
            decoder: FrameDecoder::default(),
            outgoing: Vec::new(),
            sent: 0,
            staging: Vec::new(),
            inbox: Vec::new(),
        }
    }

    /// `server_name` is the DNS name the server's certificate must carry (clients only).
    pub fn tls(config: &TlsConfig, server_name: Option<&str>) -> Result<Channel, ChannelError> {
        let mut conn: Connection = match config {
            TlsConfig::Client(c) => {
                let name = server_name
                    .ok_or_else(|| ChannelError::Config("a client needs a server name".into()))?;
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| config_error("server name", e))?;
                ClientConnection::new(c.clone(), name)
                    .map_err(|e| ChannelError::Tls(e.to_string()))?
                    .into()
            }
            TlsConfig::Server(c) => ServerConnection::new(c.clone())
                .map_err(|e| ChannelError::Tls(e.to_string()))?
                .into(),
        };
        // Flow control belongs to the async layer, which writes the queued records
        // as the socket allows; rustls must not silently refuse plaintext.
        conn.set_buffer_limit(None);
        Ok(Channel {
            tls: Some(conn),
            ..Channel::plaintext()
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// The peer's end-entity certificate (DER) once the handshake is done.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.tls
            .as_ref()?
            .peer_certificates()?
            .first()
            .map(|c| c.as_ref())
    }

    /// Take bytes received from the socket; decrypt what is complete.
    pub fn receive(&mut self, mut data: &[u8]) -> Result<(), ChannelError> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(self.decoder.push(data)?);
        };
        while !data.is_empty() {
            let taken = conn
                .read_tls(&mut data)
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
            if taken == 0 {
                // After close_notify rustls takes nothing more: ignore the rest.
                break;
            }
            // An alert or handshake reply this produces stays queued in rustls.
            conn.process_new_packets()
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
            match self.decoder.read_from(&mut conn.reader()) {
                Ok(decoded) => decoded?,
                Err(e) if e.kind() == IoErrorKind::UnexpectedEof => {
                    return Err(ChannelError::Tls("peer closed without close_notify".into()))
                }
                Err(e) => return Err(ChannelError::Tls(e.to_string())),
            }
        }
        self.release_staged()
    }

    /// Read from the non-blocking socket `fd` until it has nothing more, it
    /// closes, or `READ_CAP` bytes, processing them as `receive` does. Without
    /// TLS a large payload is read straight into its frame.
    pub fn read_from(&mut self, fd: RawFd) -> Result<ReadStatus, ChannelError> {
        let mut socket = Socket::new(fd);
        let mut total = 0;
        while total < READ_CAP {
            let Some((asked, got)) = self.read_once(&mut socket)? else {
                return Ok(ReadStatus::Drained);
            };
            if got == 0 {
                return Ok(ReadStatus::Closed);
            }
            total += got;
            if got < asked {
                // A short read emptied the socket; readiness (level-triggered)
                // says when there is more, without a recv that would block.
                return Ok(ReadStatus::Drained);
            }
        }
        Ok(ReadStatus::Capped)
    }

    /// One `recv`, processed: (bytes asked for, bytes read), or None when the
    /// socket would block.
    fn read_once(&mut self, socket: &mut Socket) -> Result<Option<(usize, usize)>, ChannelError> {
        let read = |r: io::Result<usize>| match r {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == IoErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_error(e)),
        };
        if self.tls.is_none() {
            if let Some(space) = self.decoder.payload_space() {
                let asked = space.len();
                if asked >= DIRECT_READ {
                    let Some(got) = read(socket.read(space))? else {
                        return Ok(None);
                    };
                    self.decoder.payload_filled(got);
                    return Ok(Some((asked, got)));
                }
            }
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        inbox.resize(INBOX_SIZE, 0);
        let result = read(socket.read(&mut inbox)).and_then(|got| match got {
            Some(n) => self.receive(&inbox[..n]).map(|()| Some((INBOX_SIZE, n))),
            None => Ok(None),
        });
        self.inbox = inbox;
        result
    }

    /// Whole frames received so far, chunk digests checked.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        self.decoder.take_frames()
    }

    /// Queue one frame to send.
    pub fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        offset: u64,
        digest: Option<&[u8; DIGEST_LEN]>,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let ready =
            self.tls.as_ref().is_some_and(|c| !c.is_handshaking()) && self.staging.is_empty();
        if !ready {
            // Plaintext, or TLS still handshaking: encode into a buffer.
            let target = if self.tls.is_none() {
                &mut self.outgoing
            } else {
                &mut self.staging
            };
            encode_frame(target, kind, flags, stream, offset, digest, payload)?;
            return self.release_staged();
        }
        // Straight into TLS records: the header, digest and payload are encrypted
        // from where they lie, without assembling the frame first.
        let header =
            frame_header(kind, flags, stream, offset, digest.is_some(), payload.len())?.encode();
        let conn = self.tls.as_mut().expect("checked above");
        let mut parts: [&[u8]; 3] = [&header, digest.map_or(&[][..], |d| &d[..]), payload];
        write_all_vectored(&mut conn.writer(), &mut parts)
    }

    /// Move staged frames into TLS once it can carry them.
    fn release_staged(&mut self) -> Result<(), ChannelError> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(());
        };
        if !conn.is_handshaking() && !self.staging.is_empty() {
            conn.writer()
                .write_all(&self.staging)
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
            self.staging.clear();
        }
        Ok(())
    }

    /// Tell the peer this side is done (TLS close_notify).
    pub fn close(&mut self) -> Result<(), ChannelError> {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
        }
        self.release_staged()
    }

    /// Bytes for the socket; empties the queue. (The queue continues in a
    /// pooled buffer: see `aligned::give_back` for returning this one.)
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        let next = crate::aligned::take_buffer(self.outgoing.capacity().max(4096));
        let mut out = std::mem::replace(&mut self.outgoing, next);
        out.drain(..std::mem::take(&mut self.sent));
        if let Some(conn) = self.tls.as_mut() {
            while conn.wants_write() {
                // Writing into a Vec cannot fail.
                let _ = conn.write_tls(&mut out);
            }
        }
        out
    }

    /// Write what is queued to the non-blocking socket `fd` (TLS records
    /// straight from rustls, many to a `sendmsg`) until it would block. Returns
    /// whether bytes remain: call again once the socket is writable.
    pub fn write_to(&mut self, fd: RawFd) -> Result<bool, ChannelError> {
        let mut socket = Socket::new(fd);
        while self.sent < self.outgoing.len() {
            match socket.write(&self.outgoing[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == IoErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(io_error(e)),
            }
        }
        self.outgoing.clear();
        self.sent = 0;
        let Some(conn) = self.tls.as_mut() else {
            return Ok(false);
        };
        while conn.wants_write() {
            match conn.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == IoErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(false)
    }

    /// Whether bytes wait to be written (frames staged behind the handshake do
    /// not count: they cannot go yet).
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len() || self.tls.as_ref().is_some_and(|c| c.wants_write())
    }
}

fn write_all_vectored(w: &mut impl Write, parts: &mut [&[u8]]) -> Result<(), ChannelError> {
    let mut parts: &mut [&[u8]] = parts;
    while !parts.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut n = w
            .write_vectored(&slices)
            .map_err(|e| ChannelError::Tls(e.to_string()))?;
        if n == 0 {
            return Err(ChannelError::Tls("TLS writer refused plaintext".into()));
        }
        while let Some(first) = parts.first_mut() {
            if n >= first.len() {
                n -= first.len();
                parts = &mut std::mem::take(&mut parts)[1..];
            } else {
                *first = &first[n..];
                break;
            }
        }
    }
    Ok(())
}
