//! Two channels joined in memory, then over loopback TCP: mutual TLS, frames
//! both ways, tampering and strangers refused, end of stream and resets.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use dicomrelay_core::channel::{Channel, ChannelError, ReadStatus, TlsConfig, READ_CAP};
use dicomrelay_core::digest::digest_raw;
use dicomrelay_core::wire::{Frame, CHUNK};
use dicomrelay_core::DigestAlgorithm;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// (cert PEM, key PEM) for an organisation, issued by `ca`.
fn org(ca: &Ca, code: &str) -> (String, String) {
    let params =
        CertificateParams::new(vec![format!("{}.org.dicomrelay", code.to_lowercase())]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pair(server_ca: &Ca, client_ca: &Ca, trust: &Ca) -> (Channel, Channel) {
    let (scert, skey) = org(server_ca, "RX2");
    let (ccert, ckey) = org(client_ca, "RX1");
    let trust_pem = trust.cert.pem();
    let server =
        TlsConfig::server(trust_pem.as_bytes(), scert.as_bytes(), skey.as_bytes()).unwrap();
    let client =
        TlsConfig::client(trust_pem.as_bytes(), ccert.as_bytes(), ckey.as_bytes()).unwrap();
    (
        Channel::tls(&client, Some("rx2.org.dicomrelay")).unwrap(),
        Channel::tls(&server, None).unwrap(),
    )
}

/// Move bytes both ways until neither side has anything to say.
fn pump(a: &mut Channel, b: &mut Channel) -> Result<(), ChannelError> {
    for _ in 0..20 {
        let ab = a.take_outgoing();
        let ba = b.take_outgoing();
        if ab.is_empty() && ba.is_empty() {
            return Ok(());
        }
        b.receive(&ab)?;
        a.receive(&ba)?;
    }
    Ok(())
}

#[test]
fn frames_cross_mutual_tls_with_digests_checked() {
    let root = ca("root");
    let (mut client, mut server) = pair(&root, &root, &root);
    let data = vec![42u8; 600_000];
    let digest = digest_raw(&data, DigestAlgorithm::Sha256);
    // Sent before the handshake completes: staged, then delivered.
    client.send(1, 0, 0, 0, None, b"{\"hello\":1}").unwrap();
    client.send(CHUNK, 1, 3, 0, Some(&digest), &data).unwrap();
    pump(&mut client, &mut server).unwrap();
    assert!(!server.is_handshaking());
    assert!(server.peer_certificate().is_some());
    let frames = server.take_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(&*frames[0].payload, b"{\"hello\":1}");
    assert_eq!(frames[1].header.stream, 3);
    assert_eq!(frames[1].digest_ok, Some(true));
    assert_eq!(frames[1].digest, Some(digest));
    assert_eq!(&*frames[1].payload, &data[..]);

    server.send(5, 0, 3, 0, None, b"ack").unwrap();
    pump(&mut client, &mut server).unwrap();
    let frames = client.take_frames();
    assert_eq!(&*frames[0].payload, b"ack");
}

#[test]
fn a_client_from_an_untrusted_ca_is_refused() {
    let root = ca("root");
    let stranger = ca("stranger");
    let (mut client, mut server) = pair(&root, &stranger, &root);
    client.send(1, 0, 0, 0, None, b"hi").unwrap();
    let err = pump(&mut client, &mut server).unwrap_err();
    assert!(matches!(err, ChannelError::Tls(_)), "{err}");
    assert!(server.take_frames().is_empty());
}

#[test]
fn a_server_with_the_wrong_name_is_refused() {
    let root = ca("root");
    let (scert, skey) = org(&root, "EVIL");
    let server_cfg = TlsConfig::server(
        root.cert.pem().as_bytes(),
        scert.as_bytes(),
        skey.as_bytes(),
    )
    .unwrap();
    let (ccert, ckey) = org(&root, "RX1");
    let client_cfg = TlsConfig::client(
        root.cert.pem().as_bytes(),
        ccert.as_bytes(),
        ckey.as_bytes(),
    )
    .unwrap();
    let mut client = Channel::tls(&client_cfg, Some("rx2.org.dicomrelay")).unwrap();
    let mut server = Channel::tls(&server_cfg, None).unwrap();
    assert!(pump(&mut client, &mut server).is_err());
}

#[test]
fn garbage_instead_of_tls_is_an_error() {
    let root = ca("root");
    let (_, mut server) = pair(&root, &root, &root);
    assert!(server.receive(b"GET / HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn plaintext_channels_carry_frames_too() {
    let mut a = Channel::plaintext();
    let mut b = Channel::plaintext();
    a.send(2, 0, 0, 0, None, b"offer").unwrap();
    b.receive(&a.take_outgoing()).unwrap();
    let frames = b.take_frames();
    assert_eq!(&*frames[0].payload, b"offer");
}

/// Set an integer socket option.
fn set_option(fd: RawFd, level: i32, option: i32, value: i32) {
    // SAFETY: `value` is a live `int` of the size passed, for the whole call.
    let set = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
}

/// A connected loopback TCP pair, both ends non-blocking, with socket buffers
/// small enough that a few hundred kilobytes fill them.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    set_option(
        listener.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        64 << 10,
    );
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (b, _) = listener.accept().unwrap();
    for s in [&a, &b] {
        set_option(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 64 << 10);
        s.set_nonblocking(true).unwrap();
    }
    (a, b)
}

/// Move bytes both ways over the sockets until `b` has received `want` frames
/// and `a` has nothing left to write; what `b` received, and whether `a` ever
/// found its socket full.
fn pump_sockets(
    (a, fa): (&mut Channel, RawFd),
    (b, fb): (&mut Channel, RawFd),
    want: usize,
) -> (Vec<Frame>, bool) {
    let (mut got, mut full) = (Vec::new(), false);
    for _ in 0..1_000_000 {
        full |= a.write_to(fa).unwrap();
        b.write_to(fb).unwrap();
        assert_ne!(a.read_from(fa).unwrap(), ReadStatus::Closed);
        assert_ne!(b.read_from(fb).unwrap(), ReadStatus::Closed);
        got.extend(b.take_frames());
        if got.len() >= want && !a.wants_write() {
            return (got, full);
        }
    }
    panic!("only {} of {want} frames arrived", got.len());
}

#[test]
fn tls_frames_cross_a_real_socket() {
    let root = ca("root");
    let (mut client, mut server) = pair(&root, &root, &root);
    let (a, b) = tcp_pair();
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let digest = digest_raw(&data, DigestAlgorithm::Sha256);
    client.send(1, 0, 0, 0, None, b"{\"hello\":1}").unwrap();
    client.send(CHUNK, 1, 3, 0, Some(&digest), &data).unwrap();
    let (frames, full) = pump_sockets(
        (&mut client, a.as_raw_fd()),
        (&mut server, b.as_raw_fd()),
        2,
    );
    assert!(full, "3 MiB should not fit in the socket buffers");
    assert!(server.peer_certificate().is_some());
    assert_eq!(&*frames[0].payload, b"{\"hello\":1}");
    assert_eq!(frames[1].digest_ok, Some(true));
    assert_eq!(&*frames[1].payload, &data[..]);

    server.send(5, 0, 3, 0, None, b"ack").unwrap();
    let (frames, _) = pump_sockets(
        (&mut server, b.as_raw_fd()),
        (&mut client, a.as_raw_fd()),
        1,
    );
    assert_eq!(&*frames[0].payload, b"ack");
}

#[test]
fn a_read_stops_at_its_cap_and_the_next_one_goes_on() {
    let (mut a, mut b) = (Channel::plaintext(), Channel::plaintext());
    let (sa, sb) = UnixStream::pair().unwrap();
    set_option(sa.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
    sb.set_nonblocking(true).unwrap();
    let data = vec![5u8; READ_CAP + (1 << 20)];
    a.send(CHUNK, 0, 1, 0, None, &data).unwrap();
    a.send(6, 0, 0, 0, None, b"after").unwrap();
    sa.set_nonblocking(true).unwrap();
    assert!(
        !a.write_to(sa.as_raw_fd()).unwrap(),
        "both frames fit in the buffer"
    );
    // The first read stops once past the cap, before the second frame.
    assert_eq!(b.read_from(sb.as_raw_fd()).unwrap(), ReadStatus::Capped);
    let frames = b.take_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(&*frames[0].payload, &data[..]);
    assert_eq!(b.read_from(sb.as_raw_fd()).unwrap(), ReadStatus::Drained);
    assert_eq!(&*b.take_frames()[0].payload, b"after");
}

#[test]
fn plaintext_payloads_are_read_straight_into_their_frames() {
    let (mut a, mut b) = (Channel::plaintext(), Channel::plaintext());
    let (sa, sb) = tcp_pair();
    let data = vec![7u8; 3 << 20];
    let digest = digest_raw(&data, DigestAlgorithm::Blake3);
    a.send(2, 0, 0, 0, None, b"offer").unwrap();
    a.send(CHUNK, 2, 1, 0, Some(&digest), &data).unwrap();
    a.send(8, 0, 0, 0, None, b"commit").unwrap();
    let (frames, _) = pump_sockets((&mut a, sa.as_raw_fd()), (&mut b, sb.as_raw_fd()), 3);
    assert_eq!(&*frames[0].payload, b"offer");
    assert_eq!(frames[1].digest_ok, Some(true));
    assert_eq!(&*frames[1].payload, &data[..]);
    assert_eq!(&*frames[2].payload, b"commit");
}

#[test]
fn a_closed_peer_is_the_end_of_the_stream_after_its_frames() {
    let (mut a, mut b) = (Channel::plaintext(), Channel::plaintext());
    let (sa, sb) = tcp_pair();
    a.send(2, 0, 0, 0, None, b"last words").unwrap();
    assert!(!a.write_to(sa.as_raw_fd()).unwrap());
    drop(sa);
    let mut frames = Vec::new();
    loop {
        let status = b.read_from(sb.as_raw_fd()).unwrap();
        frames.extend(b.take_frames());
        if status == ReadStatus::Closed {
            break;
        }
    }
    assert_eq!(&*frames[0].payload, b"last words");
}

#[test]
fn a_reset_connection_is_a_socket_error() {
    let mut b = Channel::plaintext();
    let (sa, sb) = tcp_pair();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a live, correctly sized `struct linger` for the whole
    // call, and `sa` an open socket.
    let set = unsafe {
        libc::setsockopt(
            sa.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
    drop(sa); // closing with linger 0 sends RST
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        b.read_from(sb.as_raw_fd()),
        Err(ChannelError::Socket(libc::ECONNRESET))
    );
    b.send(2, 0, 0, 0, None, b"too late").unwrap();
    assert!(matches!(
        b.write_to(sb.as_raw_fd()),
        Err(ChannelError::Socket(libc::EPIPE | libc::ECONNRESET))
    ));
}
