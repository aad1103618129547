//! Two channels joined in memory: mutual TLS, frames both ways, tampering and
//! strangers refused.

use dicomrelay_core::channel::{Channel, ChannelError, TlsConfig};
use dicomrelay_core::digest::digest_raw;
use dicomrelay_core::wire::CHUNK;
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
