//! The PDU codec on random input: random PDUs round-trip through encoding and
//! a decoder fed in random pieces; random bytes give errors, not panics;
//! messages of every size fragment within the peer's limit. A small
//! hand-rolled PRNG keeps the runs reproducible without a dependency.

use dicomrelay_core::pdu::{
    decode_all, fragment_pdata, fragmented_len, Abort, AssociateAc, AssociateRj, AssociateRq,
    AsyncOpsWindow, PData, Pdu, PduDecoder, PduErrorKind, Pdv, PresentationContextAc,
    PresentationContextRq, RawItem, RoleSelection, SopClassCommonExtended, SopClassExtended,
    UserIdentity, UserInformation, PDV_OVERHEAD,
};

/// xorshift64*: enough randomness for tests, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.byte()).collect()
    }
    /// Printable ASCII with no trailing space (what decodes back unchanged).
    fn text(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        let mut s: String = (0..len)
            .map(|_| char::from(0x20 + self.below(95) as u8))
            .collect();
        while s.ends_with(' ') {
            s.pop();
        }
        s
    }
    fn uid(&mut self) -> String {
        let parts = 1 + self.below(8);
        let parts: Vec<String> = (0..parts)
            .map(|_| self.below(100_000).to_string())
            .collect();
        parts.join(".")
    }
    fn ae_title(&mut self) -> String {
        loop {
            let title = self.text(16);
            let title = title.trim_matches(' ');
            if !title.is_empty() {
                return title.to_owned();
            }
        }
    }
    fn uids(&mut self, min: usize, max: usize) -> Vec<String> {
        (0..min + self.below(max - min + 1))
            .map(|_| self.uid())
            .collect()
    }
    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.chance(2) {
            Some(f(self))
        } else {
            None
        }
    }
}

fn random_user_information(rng: &mut Rng) -> UserInformation {
    UserInformation {
        max_length: rng.maybe(|r| r.next() as u32),
        implementation_class_uid: rng.maybe(Rng::uid),
        async_ops_window: rng.maybe(|r| AsyncOpsWindow {
            max_operations_invoked: r.next() as u16,
            max_operations_performed: r.next() as u16,
        }),
        role_selections: (0..rng.below(3))
            .map(|_| RoleSelection {
                sop_class_uid: rng.uid(),
                scu_role: rng.chance(2),
                scp_role: rng.chance(2),
            })
            .collect(),
        implementation_version_name: rng.maybe(|r| r.text(16)),
        sop_class_extended: (0..rng.below(3))
            .map(|_| SopClassExtended {
                sop_class_uid: rng.uid(),
                service_class_application_information: rng.bytes(8),
            })
            .collect(),
        sop_class_common_extended: (0..rng.below(3))
            .map(|_| SopClassCommonExtended {
                sop_class_uid: rng.uid(),
                service_class_uid: rng.uid(),
                related_general_sop_class_uids: rng.uids(0, 3),
            })
            .collect(),
        user_identity: rng.maybe(|r| UserIdentity {
            identity_type: r.byte(),
            positive_response_requested: r.chance(2),
            primary_field: r.bytes(40),
            secondary_field: r.bytes(40),
        }),
        user_identity_response: rng.maybe(|r| r.bytes(40)),
        unknown_items: (0..rng.below(2))
            .map(|_| RawItem {
                item_type: 0x5A + rng.below(0x40) as u8,
                data: rng.bytes(10),
            })
            .collect(),
    }
}

fn random_unknown_items(rng: &mut Rng) -> Vec<RawItem> {
    (0..rng.below(2))
        .map(|_| RawItem {
            item_type: 0x60 + rng.below(0x90) as u8,
            data: rng.bytes(10),
        })
        .collect()
}

fn random_pdu(rng: &mut Rng) -> Pdu {
    match rng.below(7) {
        0 => Pdu::AssociateRq(AssociateRq {
            protocol_version: rng.next() as u16,
            called_ae_title: rng.ae_title(),
            calling_ae_title: rng.ae_title(),
            application_context: rng.uid(),
            presentation_contexts: (0..1 + rng.below(4))
                .map(|_| PresentationContextRq {
                    context_id: rng.byte(),
                    abstract_syntax: rng.uid(),
                    transfer_syntaxes: rng.uids(1, 4),
                })
                .collect(),
            user_information: random_user_information(rng),
            unknown_items: random_unknown_items(rng),
        }),
        1 => Pdu::AssociateAc(AssociateAc {
            protocol_version: rng.next() as u16,
            called_ae_title: rng.text(16).trim_matches(' ').to_owned(),
            calling_ae_title: rng.ae_title(),
            application_context: rng.uid(),
            presentation_contexts: (0..1 + rng.below(4))
                .map(|_| PresentationContextAc {
                    context_id: rng.byte(),
                    result: rng.byte(),
                    transfer_syntax: rng.maybe(Rng::uid),
                })
                .collect(),
            user_information: random_user_information(rng),
            unknown_items: random_unknown_items(rng),
        }),
        2 => Pdu::AssociateRj(AssociateRj {
            result: rng.byte(),
            source: rng.byte(),
            reason: rng.byte(),
        }),
        3 => Pdu::PData(PData {
            pdvs: (0..1 + rng.below(3))
                .map(|_| Pdv {
                    context_id: rng.byte(),
                    is_command: rng.chance(2),
                    is_last: rng.chance(2),
                    data: rng.bytes(300),
                })
                .collect(),
        }),
        4 => Pdu::ReleaseRq,
        5 => Pdu::ReleaseRp,
        _ => Pdu::Abort(Abort {
            source: rng.byte(),
            reason: rng.byte(),
        }),
    }
}

/// Random PDUs, encoded back to back and fed in random pieces, decode to
/// themselves; and every encoding re-encodes to the same bytes.
#[test]
fn random_pdus_round_trip() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..2000 {
        let pdus: Vec<Pdu> = (0..1 + rng.below(5))
            .map(|_| random_pdu(&mut rng))
            .collect();
        let mut stream = Vec::new();
        for pdu in &pdus {
            let before = stream.len();
            pdu.encode_into(&mut stream).unwrap();
            let back = decode_all(&stream[before..], 0).unwrap();
            assert_eq!(back[0].encode().unwrap(), &stream[before..]);
        }
        let mut decoder = PduDecoder::new(1024);
        let mut out = Vec::new();
        let mut rest = stream.as_slice();
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(64));
            decoder.feed(&rest[..n], &mut out).unwrap();
            rest = &rest[n..];
        }
        decoder.finish().unwrap();
        assert_eq!(out, pdus, "round {round}");
    }
}

/// Random bytes, and random bytes after a valid PDU header: errors, not panics.
#[test]
fn garbage_never_panics() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut data = rng.bytes(200);
        if rng.chance(2) && data.len() >= 6 {
            data[0] = 1 + rng.below(7) as u8;
            data[1] = 0;
            let len = (data.len() - 6 + rng.below(3)).saturating_sub(1) as u32;
            data[2..6].copy_from_slice(&len.to_be_bytes());
        }
        let _ = decode_all(&data, rng.below(300) as u32).map_err(|e| e.to_string());
    }
}

#[test]
fn fragments_reassemble_within_the_limit() {
    let mut rng = Rng(7);
    let data: Vec<u8> = (0..70_000).map(|_| rng.byte()).collect();
    for max in [0, 7, 8, 100, 4096, 16384, 16390, 65536] {
        for len in [0, 1, 2, 1000, 4084, 4090, 4091, 16378, 16379, 70_000] {
            for last in [true, false] {
                let message = &data[..len];
                let pdus = fragment_pdata(3, len % 2 == 0, message, max, last).unwrap();
                assert_eq!(pdus.len(), fragmented_len(len, max, last).unwrap());
                let decoded = decode_all(&pdus, max).unwrap();
                let mut joined = Vec::new();
                for (i, pdu) in decoded.iter().enumerate() {
                    let Pdu::PData(p) = pdu else { panic!() };
                    let [pdv] = p.pdvs.as_slice() else { panic!() };
                    assert_eq!((pdv.context_id, pdv.is_command), (3, len % 2 == 0));
                    assert_eq!(pdv.is_last, last && i + 1 == decoded.len());
                    if max != 0 {
                        assert!(pdv.data.len() + 6 <= max as usize);
                    }
                    joined.extend_from_slice(&pdv.data);
                }
                assert_eq!(joined, message, "max {max} len {len}");
                let expected = match (len, max) {
                    (0, _) => usize::from(last),
                    (_, 0) => 1,
                    _ => len.div_ceil(max as usize - 6),
                };
                assert_eq!(decoded.len(), expected);
                assert_eq!(pdus.len(), len + expected * PDV_OVERHEAD);
            }
        }
    }
    for max in 1..=6 {
        let err = fragment_pdata(1, true, b"x", max, true).unwrap_err();
        assert_eq!(err.kind, PduErrorKind::Unencodable);
    }
}
