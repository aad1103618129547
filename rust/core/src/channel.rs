//! A secure channel: TLS (rustls, sans-IO) under the frame codec. Bytes from the
//! socket go in, verified frames come out; frames go in, bytes for the socket
//! come out. Without TLS (an explicit insecure choice) the codec runs alone.

use std::io::{ErrorKind as IoErrorKind, Write};
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use crate::wire::{encode_frame, frame_header, Frame, FrameDecoder, WireError, DIGEST_LEN};

/// Why a channel failed: the TLS layer, or the frames inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    Tls(String),
    Wire(WireError),
    Config(String),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Tls(d) => write!(f, "TLS: {d}"),
            ChannelError::Wire(e) => write!(f, "protocol: {e}"),
            ChannelError::Config(d) => write!(f, "TLS configuration: {d}"),
        }
    }
}

impl std::error::Error for ChannelError {}

impl From<WireError> for ChannelError {
    fn from(e: WireError) -> Self {
        ChannelError::Wire(e)
    }
}

#[cold]
fn config_error(what: &str, e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Config(format!("{what}: {e}"))
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
    /// Frames waiting to go out: plaintext without TLS, otherwise encrypted records.
    outgoing: Vec<u8>,
    /// Frames encoded before TLS can carry them, or scratch for encoding.
    staging: Vec<u8>,
}

impl Channel {
    pub fn plaintext() -> Channel {
        Channel {
            tls: None,
            decoder: FrameDecoder::default(),
            outgoing: Vec::new(),
            staging: Vec::new(),
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
        // Flow control belongs to the async layer, which drains `outgoing` as the
        // socket allows; rustls must not silently refuse plaintext.
        conn.set_buffer_limit(None);
        let mut channel = Channel {
            tls: Some(conn),
            ..Channel::plaintext()
        };
        channel.flush_tls()?;
        Ok(channel)
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
            conn.read_tls(&mut data)
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
            let processed = conn.process_new_packets();
            // Whatever happened, an alert or handshake reply may need to go out.
            let mut out = std::mem::take(&mut self.outgoing);
            while conn.wants_write() {
                conn.write_tls(&mut out)
                    .map_err(|e| ChannelError::Tls(e.to_string()))?;
            }
            self.outgoing = out;
            processed.map_err(|e| ChannelError::Tls(e.to_string()))?;
            match self.decoder.read_from(&mut conn.reader()) {
                Ok(decoded) => decoded?,
                Err(e) if e.kind() == IoErrorKind::UnexpectedEof => {
                    return Err(ChannelError::Tls("peer closed without close_notify".into()))
                }
                Err(e) => return Err(ChannelError::Tls(e.to_string())),
            }
        }
        if !self.is_handshaking() && !self.staging.is_empty() {
            self.flush_tls()?;
        }
        Ok(())
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
            return self.flush_tls();
        }
        // Straight into TLS records: the header, digest and payload are encrypted
        // from where they lie, without assembling the frame first.
        let header =
            frame_header(kind, flags, stream, offset, digest.is_some(), payload.len())?.encode();
        let conn = self.tls.as_mut().expect("checked above");
        let mut parts: [&[u8]; 3] = [&header, digest.map_or(&[][..], |d| &d[..]), payload];
        write_all_vectored(&mut conn.writer(), &mut parts)?;
        self.flush_tls()
    }

    /// Move staged frames into TLS once it can carry them; collect records to send.
    fn flush_tls(&mut self) -> Result<(), ChannelError> {
        let Some(conn) = self.tls.as_mut() else {
            return Ok(());
        };
        if !conn.is_handshaking() && !self.staging.is_empty() {
            conn.writer()
                .write_all(&self.staging)
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
            self.staging.clear();
        }
        while conn.wants_write() {
            conn.write_tls(&mut self.outgoing)
                .map_err(|e| ChannelError::Tls(e.to_string()))?;
        }
        Ok(())
    }

    /// Tell the peer this side is done (TLS close_notify).
    pub fn close(&mut self) -> Result<(), ChannelError> {
        if let Some(conn) = self.tls.as_mut() {
            conn.send_close_notify();
        }
        self.flush_tls()
    }

    /// Bytes for the socket; empties the queue. (The queue continues in a
    /// pooled buffer: see `aligned::give_back` for returning this one.)
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        let next = crate::aligned::take_buffer(self.outgoing.capacity().max(4096));
        std::mem::replace(&mut self.outgoing, next)
    }

    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len() + self.staging.len()
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
