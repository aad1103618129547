//! The PDU codec against real peers' bytes (DCMTK 3.6.7 storescu, echoscu and
//! storescp; pynetdicom 3.0.4: see tests/fixtures/capture.py), every
//! fragmentation of them, and malformed and oversized input. Random PDUs and
//! bytes are in pdu_random.rs.

use dicomrelay_core::pdu::{
    decode_all, fragment_pdata, Abort, AssociateAc, AssociateRj, AssociateRq, AsyncOpsWindow, Pdu,
    PduDecoder, PduErrorKind, Pdv, PdvSink, PresentationContextAc, PresentationContextRq,
    RoleSelection, SopClassCommonExtended, SopClassExtended, UserIdentity, UserInformation,
    APPLICATION_CONTEXT, MAX_ASSOCIATE_LENGTH,
};

const DCMTK_UID: &str = "1.2.276.0.7230010.3.0.3.6.7";
const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const STREAMS: &[&str] = &[
    "echo.scu.bin",
    "echo.scp.bin",
    "store.scu.bin",
    "store.scp.bin",
    "refuse.scu.bin",
    "refuse.scp.bin",
    "abort.scu.bin",
    "abort.scp.bin",
    "pynetdicom.rq.bin",
    "pynetdicom.ac.bin",
];

fn decode(data: &[u8]) -> Vec<Pdu> {
    decode_all(data, 16384).expect("decodes")
}

/// The byte ranges of each PDU in a stream of whole PDUs.
fn pdu_ranges(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = u32::from_be_bytes(data[at + 2..at + 6].try_into().unwrap()) as usize;
        out.push(at..at + 6 + len);
        at += 6 + len;
    }
    out
}

fn dcmtk_user_information(max_length: u32) -> UserInformation {
    UserInformation {
        max_length: Some(max_length),
        implementation_class_uid: Some(DCMTK_UID.to_owned()),
        implementation_version_name: Some("OFFIS_DCMTK_367".to_owned()),
        ..UserInformation::default()
    }
}

#[test]
fn echoscu_association_request() {
    let pdus = decode(&fixture("echo.scu.bin"));
    assert_eq!(pdus.len(), 3);
    let expected = AssociateRq {
        protocol_version: 1,
        called_ae_title: "STORESCP".to_owned(),
        calling_ae_title: "ECHOSCU".to_owned(),
        application_context: APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: vec![PresentationContextRq {
            context_id: 1,
            abstract_syntax: VERIFICATION.to_owned(),
            transfer_syntaxes: vec![IMPLICIT_LE.to_owned()],
        }],
        user_information: dcmtk_user_information(16384),
        unknown_items: vec![],
    };
    assert_eq!(pdus[0], Pdu::AssociateRq(expected));
    let Pdu::PData(command) = &pdus[1] else {
        panic!("expected P-DATA-TF, got {:?}", pdus[1]);
    };
    let [pdv] = command.pdvs.as_slice() else {
        panic!("one PDV");
    };
    assert_eq!(
        (pdv.context_id, pdv.is_command, pdv.is_last),
        (1, true, true)
    );
    // C-ECHO-RQ: group length element first, the SOP class UID inside.
    assert_eq!(&pdv.data[..4], &[0, 0, 0, 0]);
    assert!(pdv
        .data
        .windows(VERIFICATION.len())
        .any(|w| w == VERIFICATION.as_bytes()));
    assert_eq!(pdus[2], Pdu::ReleaseRq);
}

#[test]
fn storescp_echo_answers() {
    let pdus = decode(&fixture("echo.scp.bin"));
    let expected = AssociateAc {
        protocol_version: 1,
        called_ae_title: "STORESCP".to_owned(),
        calling_ae_title: "ECHOSCU".to_owned(),
        application_context: APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: vec![PresentationContextAc {
            context_id: 1,
            result: 0,
            transfer_syntax: Some(IMPLICIT_LE.to_owned()),
        }],
        user_information: dcmtk_user_information(16384),
        unknown_items: vec![],
    };
    assert_eq!(pdus[0], Pdu::AssociateAc(expected));
    assert!(matches!(&pdus[1], Pdu::PData(p) if p.pdvs[0].is_command && p.pdvs[0].is_last));
    assert_eq!(pdus[2], Pdu::ReleaseRp);
}

#[test]
fn storescu_proposes_128_contexts_with_user_identity() {
    let data = fixture("store.scu.bin");
    let pdus = decode(&data);
    let Pdu::AssociateRq(rq) = &pdus[0] else {
        panic!("expected A-ASSOCIATE-RQ");
    };
    assert_eq!(rq.presentation_contexts.len(), 128);
    let ids: Vec<u8> = rq
        .presentation_contexts
        .iter()
        .map(|pc| pc.context_id)
        .collect();
    assert_eq!(ids, (0..128).map(|i| 2 * i + 1).collect::<Vec<u8>>());
    assert_eq!(
        rq.user_information.user_identity,
        Some(UserIdentity {
            identity_type: 2,
            positive_response_requested: false,
            primary_field: b"alice".to_vec(),
            secondary_field: b"secret".to_vec(),
        })
    );
    assert_eq!(pdus.last(), Some(&Pdu::ReleaseRq));

    // storescp accepted at most 4096 bytes per P-DATA-TF variable field.
    for range in pdu_ranges(&data) {
        if data[range.start] == 4 {
            assert!(range.len() - 6 <= 4096);
        }
    }
    let fragments: Vec<&Pdv> = pdus
        .iter()
        .filter_map(|p| match p {
            Pdu::PData(p) => Some(&p.pdvs),
            _ => None,
        })
        .flatten()
        .collect();
    let (command, dataset): (Vec<&Pdv>, Vec<&Pdv>) =
        fragments.into_iter().partition(|pdv| pdv.is_command);
    assert_eq!(command.len(), 1);
    assert!(dataset.len() > 1, "the data set is fragmented");
    let lasts: Vec<bool> = dataset.iter().map(|pdv| pdv.is_last).collect();
    assert_eq!(lasts.iter().filter(|&&l| l).count(), 1);
    assert_eq!(lasts.last(), Some(&true));
    // CT_small.dcm is 39,206 bytes; its data set (no preamble or meta group)
    // is what crosses the network.
    let dataset_len: usize = dataset.iter().map(|pdv| pdv.data.len()).sum();
    assert!((38_000..39_206).contains(&dataset_len), "{dataset_len}");
}

#[test]
fn storescp_accepts_every_context() {
    let pdus = decode(&fixture("store.scp.bin"));
    let Pdu::AssociateAc(ac) = &pdus[0] else {
        panic!("expected A-ASSOCIATE-AC");
    };
    assert_eq!(ac.presentation_contexts.len(), 128);
    assert!(ac.presentation_contexts.iter().all(|pc| pc.result == 0));
    assert_eq!(ac.user_information.max_length, Some(4096));
    assert_eq!(pdus.len(), 3);
}

#[test]
fn refused_and_aborted_associations() {
    assert_eq!(
        decode(&fixture("refuse.scp.bin")),
        vec![Pdu::AssociateRj(AssociateRj {
            result: 1,
            source: 1,
            reason: 1
        })]
    );
    let pdus = decode(&fixture("abort.scu.bin"));
    assert_eq!(
        pdus.last(),
        Some(&Pdu::Abort(Abort {
            source: 0,
            reason: 0
        }))
    );
}

#[test]
fn pynetdicom_negotiation_sub_items() {
    let Ok([Pdu::AssociateRq(rq)]) = <[Pdu; 1]>::try_from(decode(&fixture("pynetdicom.rq.bin")))
    else {
        panic!("one A-ASSOCIATE-RQ");
    };
    let ct = "1.2.840.10008.5.1.4.1.1.2";
    let ui = &rq.user_information;
    assert_eq!(ui.max_length, Some(32768));
    assert_eq!(
        ui.async_ops_window,
        Some(AsyncOpsWindow {
            max_operations_invoked: 5,
            max_operations_performed: 3
        })
    );
    assert_eq!(
        ui.role_selections,
        vec![RoleSelection {
            sop_class_uid: ct.to_owned(),
            scu_role: true,
            scp_role: false
        }]
    );
    assert_eq!(
        ui.implementation_version_name.as_deref(),
        Some("PYNETDICOM_304")
    );
    assert_eq!(
        ui.sop_class_extended,
        vec![SopClassExtended {
            sop_class_uid: ct.to_owned(),
            service_class_application_information: vec![1, 0, 1],
        }]
    );
    assert_eq!(
        ui.sop_class_common_extended,
        vec![SopClassCommonExtended {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4".to_owned(),
            service_class_uid: "1.2.840.10008.4.2".to_owned(),
            related_general_sop_class_uids: vec![ct.to_owned()],
        }]
    );
    let identity = ui.user_identity.as_ref().expect("user identity");
    assert!(identity.positive_response_requested);

    let Ok([Pdu::AssociateAc(ac)]) = <[Pdu; 1]>::try_from(decode(&fixture("pynetdicom.ac.bin")))
    else {
        panic!("one A-ASSOCIATE-AC");
    };
    assert_eq!(ac.presentation_contexts[1].result, 3);
    assert!(ac.user_information.role_selections[0].scp_role);
    assert_eq!(
        ac.user_information.user_identity_response.as_deref(),
        Some(&b"token-for-alice"[..])
    );
}

/// Re-encoding gives the peer's bytes back, except the reserved byte DCMTK
/// sets to 0xFF in each proposed presentation context (written as 0 here).
#[test]
fn captures_reencode_to_their_bytes() {
    for name in STREAMS {
        let data = fixture(name);
        for (range, pdu) in pdu_ranges(&data).into_iter().zip(decode(&data)) {
            let original = &data[range];
            let encoded = pdu.encode().unwrap();
            assert_eq!(encoded.len(), original.len(), "{name}: {}", pdu.name());
            for (i, (&a, &b)) in original.iter().zip(&encoded).enumerate() {
                let dcmtk_reserved = a == 0xFF && b == 0 && original[i - 6] == 0x20;
                assert!(a == b || dcmtk_reserved, "{name}: {} byte {i}", pdu.name());
            }
        }
    }
}

fn split_decode(data: &[u8], split: usize) -> Vec<Pdu> {
    let mut decoder = PduDecoder::new(16384);
    let mut out = Vec::new();
    decoder.feed(&data[..split], &mut out).unwrap();
    decoder.feed(&data[split..], &mut out).unwrap();
    decoder.finish().unwrap();
    out
}

#[test]
fn every_split_point_gives_the_same_pdus() {
    for name in STREAMS {
        let data = fixture(name);
        // Every split of the PDUs in the first 16 KB (all of each association
        // PDU, the first P-DATA-TF PDUs of a store; every 7th split of the
        // stores' 10 KB requests, to keep debug builds quick), every 97th of
        // the rest. byte_at_a_time covers every boundary of every stream.
        let ranges = pdu_ranges(&data);
        let head = ranges
            .iter()
            .map(|r| r.end)
            .take_while(|&end| end <= 16384)
            .last();
        let head = &data[..head.unwrap_or(ranges[0].end)];
        let whole = decode(head);
        let step = if head.len() > 8192 { 7 } else { 1 };
        for split in (0..=head.len()).step_by(step) {
            assert_eq!(split_decode(head, split), whole, "{name} split at {split}");
        }
        let whole = decode(&data);
        for split in (0..data.len()).step_by(97) {
            assert_eq!(split_decode(&data, split), whole, "{name} split at {split}");
        }
    }
}

#[test]
fn byte_at_a_time() {
    for name in STREAMS {
        let data = fixture(name);
        let mut decoder = PduDecoder::new(16384);
        let mut out = Vec::new();
        let ends: Vec<usize> = pdu_ranges(&data).iter().map(|r| r.end).collect();
        for (i, byte) in data.iter().enumerate() {
            let before = out.len();
            decoder.feed(std::slice::from_ref(byte), &mut out).unwrap();
            // A PDU comes out exactly when its last byte goes in.
            assert_eq!(
                out.len() > before,
                ends.contains(&(i + 1)),
                "{name} byte {i}"
            );
            assert_eq!(decoder.pending() == 0, ends.contains(&(i + 1)));
        }
        assert_eq!(out, decode(&data), "{name}");
    }
}

#[test]
fn every_truncation_is_an_error() {
    for name in STREAMS {
        let data = fixture(name);
        let first = pdu_ranges(&data)[0].clone();
        for cut in 1..first.end {
            let err = decode_all(&data[..cut], 16384).unwrap_err();
            assert_eq!(err.kind, PduErrorKind::Truncated, "{name} cut at {cut}");
            assert_eq!(err.offset, cut as u64);
        }
    }
}

#[test]
fn oversized_pdus_fail_at_their_header() {
    // A P-DATA-TF declaring 16385 bytes to a decoder accepting 16384.
    let mut decoder = PduDecoder::new(16384);
    let mut out = Vec::new();
    let err = decoder
        .feed(&[4, 0, 0, 0, 0x40, 0x01], &mut out)
        .unwrap_err();
    assert_eq!((err.kind, err.offset), (PduErrorKind::TooLong, 2));
    // Failed for good: the stream cannot be resynchronised.
    assert_eq!(decoder.feed(&[5], &mut out).unwrap_err(), err);

    // The limit is inclusive, and 0 means none.
    let pdata = fragment_pdata(1, false, &[7; 16378], 16384, true).unwrap();
    assert_eq!(decode_all(&pdata, 16384).unwrap().len(), 1);
    assert_eq!(
        decode_all(&pdata, 16383).unwrap_err().kind,
        PduErrorKind::TooLong
    );
    assert_eq!(decode_all(&pdata, 0).unwrap().len(), 1);

    // Association PDUs have their own limit, whatever the P-DATA limit.
    let len = MAX_ASSOCIATE_LENGTH + 1;
    let mut header = vec![1, 0];
    header.extend_from_slice(&len.to_be_bytes());
    let err = decode_all(&header, 0).unwrap_err();
    assert_eq!(err.kind, PduErrorKind::TooLong);

    // A 4 GiB declaration with no limit: no allocation by the declared length.
    let mut decoder = PduDecoder::new(0);
    decoder
        .feed(
            &[4, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF9, 1, 0],
            &mut out,
        )
        .unwrap();
    assert_eq!(decoder.pending(), 12);
}

#[test]
fn malformed_pdus_are_typed_errors() {
    let cases: &[(&[u8], PduErrorKind, u64)] = &[
        (
            &[0x08, 0, 0, 0, 0, 4, 0, 0, 0, 0],
            PduErrorKind::UnknownPduType,
            0,
        ),
        (&[0x00], PduErrorKind::UnknownPduType, 0),
        (
            &[5, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0],
            PduErrorKind::LengthMismatch,
            2,
        ),
        (&[7, 0, 0, 0, 0, 2, 0, 0], PduErrorKind::LengthMismatch, 2),
        (&[4, 0, 0, 0, 0, 0], PduErrorKind::MissingItem, 2),
        // A PDV whose item length (1) is shorter than its own header.
        (
            &[4, 0, 0, 0, 0, 6, 0, 0, 0, 1, 1, 3],
            PduErrorKind::LengthMismatch,
            6,
        ),
        // A PDV running past its PDU.
        (
            &[4, 0, 0, 0, 0, 7, 0, 0, 0, 4, 1, 3, 9],
            PduErrorKind::LengthMismatch,
            6,
        ),
        // Bytes left in the PDU that cannot hold a PDV header.
        (
            &[4, 0, 0, 0, 0, 9, 0, 0, 0, 3, 1, 3, 9, 0, 0],
            PduErrorKind::LengthMismatch,
            13,
        ),
        (
            &[1, 0, 0, 0, 0, 10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            PduErrorKind::LengthMismatch,
            2,
        ),
    ];
    for &(bytes, kind, offset) in cases {
        let err = decode_all(bytes, 16384).unwrap_err();
        assert_eq!((err.kind, err.offset), (kind, offset), "{bytes:?}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

/// Patch the A-ASSOCIATE-RQ of echoscu and check the error each patch causes.
#[test]
fn malformed_association_requests() {
    let data = fixture("echo.scu.bin");
    let rq = &data[pdu_ranges(&data)[0].clone()];
    let patched = |at: usize, bytes: &[u8]| {
        let mut rq = rq.to_vec();
        rq[at..at + bytes.len()].copy_from_slice(bytes);
        decode_all(&rq, 16384).unwrap_err()
    };
    // Called AE title all spaces; calling AE title with a control character.
    let err = patched(10, b"                ");
    assert_eq!((err.kind, err.offset), (PduErrorKind::BadValue, 10));
    let err = patched(27, b"\x07");
    assert_eq!((err.kind, err.offset), (PduErrorKind::BadValue, 27));
    // The application context item (at 74) claims more than the PDU holds.
    let err = patched(76, &[0xFF, 0xFF]);
    assert_eq!((err.kind, err.offset), (PduErrorKind::LengthMismatch, 74));
    // A non-ASCII byte in the abstract syntax UID.
    let err = patched(0x74, &[0xC3]);
    assert_eq!((err.kind, err.offset), (PduErrorKind::BadValue, 0x74));
    // The application context item retyped as an abstract syntax sub-item.
    let err = patched(74, &[0x30]);
    assert_eq!(err.kind, PduErrorKind::UnexpectedItem);
    // The presentation context retyped as an unknown item: none is left.
    let err = patched(0x63, &[0x77]);
    assert_eq!((err.kind, err.offset), (PduErrorKind::MissingItem, 0));
    // The maximum length sub-item grown by one byte into its neighbour.
    let err = patched(0x9C, &[5]);
    assert_eq!(err.kind, PduErrorKind::LengthMismatch);
}

/// Every single-byte change of every association PDU either fails with an
/// error or decodes to something that re-encodes and decodes to itself.
#[test]
fn mutations_never_panic_and_decodes_are_stable() {
    for name in [
        "echo.scu.bin",
        "echo.scp.bin",
        "pynetdicom.rq.bin",
        "pynetdicom.ac.bin",
    ] {
        let data = fixture(name);
        let original = &data[pdu_ranges(&data)[0].clone()];
        for at in 0..original.len() {
            for value in [0x00, 0x01, 0x20, 0x7F, 0xFF, original[at] ^ 0x80] {
                let mut mutated = original.to_vec();
                mutated[at] = value;
                if let Ok(pdus) = decode_all(&mutated, 16384) {
                    for pdu in pdus {
                        let encoded = pdu.encode().expect("a decoded PDU encodes");
                        assert_eq!(decode_all(&encoded, 0).unwrap(), vec![pdu]);
                    }
                }
            }
        }
    }
}

/// Messages as a sink sees them: each PDV's context and kind, its bytes joined.
#[derive(Default)]
struct Collect {
    messages: Vec<(u8, bool, Vec<u8>)>,
    open: Option<(u8, bool, bool, Vec<u8>)>,
    pending: Vec<u8>,
}

impl PdvSink for Collect {
    fn begin(&mut self, context_id: u8, is_command: bool, is_last: bool) {
        assert!(self.open.is_none(), "a PDV began inside another");
        self.open = Some((context_id, is_command, is_last, Vec::new()));
    }

    fn data(&mut self, data: &[u8]) {
        let open = self.open.as_mut().expect("data inside a PDV");
        open.3.extend_from_slice(data);
    }

    fn end(&mut self) {
        let (context_id, is_command, is_last, data) = self.open.take().expect("an open PDV");
        self.pending.extend(data);
        if is_last {
            self.messages
                .push((context_id, is_command, std::mem::take(&mut self.pending)));
        }
    }
}

/// Streaming: every PDV reaches the sink whatever the read sizes (nothing
/// comes out for P-DATA-TF), and decoding stops after any other PDU.
#[test]
fn streaming_sends_every_pdv_to_the_sink_and_stops_after_other_pdus() {
    let dataset_a: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let dataset_b: Vec<u8> = (0..9_000u32).map(|i| (i % 13) as u8).collect();
    let mut stream = Vec::new();
    for dataset in [&dataset_a, &dataset_b] {
        stream.extend(fragment_pdata(1, true, b"command", 16_384, true).unwrap());
        stream.extend(fragment_pdata(3, false, dataset, 16_384, true).unwrap());
    }
    stream.extend(fragment_pdata(1, false, b"", 16_384, true).unwrap());
    let pdata_end = stream.len();
    stream.extend(Pdu::ReleaseRq.encode().unwrap());
    stream.extend(fragment_pdata(1, true, b"after", 16_384, true).unwrap());
    for read in [1usize, 7, 4_096, 16_390, stream.len()] {
        let mut decoder = PduDecoder::new(16_384);
        let mut sink = Collect::default();
        let mut pdus = Vec::new();
        let mut consumed = 0;
        for piece in stream.chunks(read) {
            consumed += decoder.feed_pdvs(piece, &mut pdus, &mut sink).unwrap();
            if !pdus.is_empty() {
                break;
            }
        }
        assert_eq!(pdus, vec![Pdu::ReleaseRq], "read size {read}");
        assert_eq!(
            consumed,
            pdata_end + 10,
            "stopped right after the release request"
        );
        let expected = vec![
            (1, true, b"command".to_vec()),
            (3, false, dataset_a.clone()),
            (1, true, b"command".to_vec()),
            (3, false, dataset_b.clone()),
            (1, false, Vec::new()),
        ];
        assert_eq!(sink.messages, expected, "read size {read}");
        assert_eq!(decoder.pending(), 0);
    }
}
