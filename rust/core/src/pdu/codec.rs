//! Whole PDUs: the bodies of the association PDUs decoded once they have
//! arrived, and every PDU encoded (PS3.8 9.3.2-9.3.8).

use super::error::{PduError, PduErrorKind, Result};
use super::item_type as it;
use super::items::{
    decode_application_context, decode_context_ac, decode_context_rq, decode_user_information,
    put_application_context, put_context_ac, put_context_rq, put_raw_item, put_user_information,
};
use super::read::Reader;
use super::text::{decode_ae_title, decode_ae_title_lenient, put_ae_title};
use super::{
    pdu_name, pdu_type, Abort, AssociateAc, AssociateRj, AssociateRq, PData, Pdu, RawItem,
    UserInformation,
};

/// The fixed part of an A-ASSOCIATE-RQ/-AC body: version, reserved, two AE
/// titles and 32 reserved bytes.
pub(super) const ASSOCIATE_FIXED_LEN: usize = 68;

/// Item types that cannot stand at the top level of an A-ASSOCIATE PDU as
/// unknown items: they are read as something else, or belong inside one.
const ASSOCIATE_TYPES: &[u8] = &[
    it::APPLICATION_CONTEXT,
    it::PRESENTATION_CONTEXT_RQ,
    it::PRESENTATION_CONTEXT_AC,
    it::ABSTRACT_SYNTAX,
    it::TRANSFER_SYNTAX,
    it::USER_INFORMATION,
    it::MAXIMUM_LENGTH,
    it::IMPLEMENTATION_CLASS_UID,
    it::ASYNC_OPS_WINDOW,
    it::ROLE_SELECTION,
    it::IMPLEMENTATION_VERSION_NAME,
    it::SOP_CLASS_EXTENDED,
    it::SOP_CLASS_COMMON_EXTENDED,
    it::USER_IDENTITY_RQ,
    it::USER_IDENTITY_AC,
];

/// Decode the body of a PDU other than P-DATA-TF (which the decoder splits
/// into PDVs as it arrives). `base` is the body's offset in the stream.
pub(super) fn decode_body(pdu_type: u8, body: &[u8], base: u64) -> Result<Pdu> {
    let mut r = Reader::new(body, base);
    let pdu = match pdu_type {
        pdu_type::ASSOCIATE_RQ | pdu_type::ASSOCIATE_AC => return decode_associate(pdu_type, r),
        pdu_type::ASSOCIATE_RJ => {
            let [_, result, source, reason] = r.array("A-ASSOCIATE-RJ")?;
            Pdu::AssociateRj(AssociateRj {
                result,
                source,
                reason,
            })
        }
        pdu_type::RELEASE_RQ => {
            r.array::<4>("A-RELEASE-RQ")?;
            Pdu::ReleaseRq
        }
        pdu_type::RELEASE_RP => {
            r.array::<4>("A-RELEASE-RP")?;
            Pdu::ReleaseRp
        }
        pdu_type::ABORT => {
            let [_, _, source, reason] = r.array("A-ABORT")?;
            Pdu::Abort(Abort { source, reason })
        }
        other => {
            return Err(PduError::new(
                PduErrorKind::UnknownPduType,
                base.saturating_sub(6),
                format!("PDU type 0x{other:02X}"),
            ))
        }
    };
    r.finish(pdu_name(pdu_type))?;
    Ok(pdu)
}

/// The parts an A-ASSOCIATE-RQ and -AC share.
struct Associate<C> {
    protocol_version: u16,
    called_ae_title: String,
    calling_ae_title: String,
    application_context: String,
    presentation_contexts: Vec<C>,
    user_information: UserInformation,
    unknown_items: Vec<RawItem>,
}

fn decode_associate(pdu_type: u8, r: Reader<'_>) -> Result<Pdu> {
    if pdu_type == pdu_type::ASSOCIATE_RQ {
        let a = decode_associate_parts(r, true, it::PRESENTATION_CONTEXT_RQ, decode_context_rq)?;
        Ok(Pdu::AssociateRq(AssociateRq {
            protocol_version: a.protocol_version,
            called_ae_title: a.called_ae_title,
            calling_ae_title: a.calling_ae_title,
            application_context: a.application_context,
            presentation_contexts: a.presentation_contexts,
            user_information: a.user_information,
            unknown_items: a.unknown_items,
        }))
    } else {
        let a = decode_associate_parts(r, false, it::PRESENTATION_CONTEXT_AC, decode_context_ac)?;
        Ok(Pdu::AssociateAc(AssociateAc {
            protocol_version: a.protocol_version,
            called_ae_title: a.called_ae_title,
            calling_ae_title: a.calling_ae_title,
            application_context: a.application_context,
            presentation_contexts: a.presentation_contexts,
            user_information: a.user_information,
            unknown_items: a.unknown_items,
        }))
    }
}

fn decode_associate_parts<C>(
    mut r: Reader<'_>,
    is_rq: bool,
    context_type: u8,
    decode_context: fn(Reader<'_>) -> Result<C>,
) -> Result<Associate<C>> {
    let pdu_at = r.offset().saturating_sub(6);
    let name = pdu_name(if is_rq { 1 } else { 2 });
    let protocol_version = r.u16("protocol version")?;
    r.u16("reserved")?;
    let called_at = r.offset();
    let called: [u8; 16] = r.array("called AE title")?;
    let calling_at = r.offset();
    let calling: [u8; 16] = r.array("calling AE title")?;
    r.bytes(32, "reserved")?;
    let (called_ae_title, calling_ae_title) = if is_rq {
        (
            decode_ae_title(called_at, &called, "called AE title")?,
            decode_ae_title(calling_at, &calling, "calling AE title")?,
        )
    } else {
        // PS3.8 9.3.3: returned as received, "but not tested".
        (
            decode_ae_title_lenient(&called),
            decode_ae_title_lenient(&calling),
        )
    };
    let mut application_context = None;
    let mut presentation_contexts = Vec::new();
    let mut user_information = None;
    let mut unknown_items = Vec::new();
    while !r.is_empty() {
        let item_at = r.offset();
        let (item_type, item) = r.item()?;
        match item_type {
            it::APPLICATION_CONTEXT if application_context.is_none() => {
                application_context = Some(decode_application_context(item)?);
            }
            t if t == context_type => presentation_contexts.push(decode_context(item)?),
            it::USER_INFORMATION if user_information.is_none() => {
                user_information = Some(decode_user_information(item)?);
            }
            t if ASSOCIATE_TYPES.contains(&t) => {
                return Err(PduError::new(
                    PduErrorKind::UnexpectedItem,
                    item_at,
                    format!("item 0x{t:02X} in an {name}"),
                ));
            }
            item_type => {
                let mut item = item;
                unknown_items.push(RawItem {
                    item_type,
                    data: item.rest().to_vec(),
                });
            }
        }
    }
    let missing = |what: &str| {
        PduError::new(
            PduErrorKind::MissingItem,
            pdu_at,
            format!("{name} without {what}"),
        )
    };
    let application_context =
        application_context.ok_or_else(|| missing("an application context"))?;
    let user_information = user_information.ok_or_else(|| missing("user information"))?;
    if presentation_contexts.is_empty() {
        return Err(missing("a presentation context"));
    }
    Ok(Associate {
        protocol_version,
        called_ae_title,
        calling_ae_title,
        application_context,
        presentation_contexts,
        user_information,
        unknown_items,
    })
}

/// Write a PDU: its header, then `body`, then the length patched in. On
/// failure `out` is left as it was.
fn encode_pdu(
    out: &mut Vec<u8>,
    pdu_type: u8,
    body: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[pdu_type, 0, 0, 0, 0, 0]);
    let result = body(out).and_then(|()| {
        let len = out.len() - start - 6;
        let len = u32::try_from(len).map_err(|_| {
            PduError::new(
                PduErrorKind::Unencodable,
                start as u64,
                format!("{} of {len} bytes does not fit a PDU", pdu_name(pdu_type)),
            )
        })?;
        out[start + 2..start + 6].copy_from_slice(&len.to_be_bytes());
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// `encode` for each PDU type, from its `encode_into`.
macro_rules! encode_to_vec {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The PDU's bytes.
            pub fn encode(&self) -> Result<Vec<u8>> {
                let mut out = Vec::new();
                self.encode_into(&mut out)?;
                Ok(out)
            }
        }
    )*};
}

encode_to_vec!(Pdu, AssociateRq, AssociateAc, AssociateRj, PData, Abort);

impl Pdu {
    /// Append the PDU's bytes to `out`; on failure `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Pdu::AssociateRq(a) => a.encode_into(out),
            Pdu::AssociateAc(a) => a.encode_into(out),
            Pdu::AssociateRj(rj) => rj.encode_into(out),
            Pdu::PData(p) => p.encode_into(out),
            Pdu::ReleaseRq | Pdu::ReleaseRp => encode_pdu(out, self.pdu_type(), |out| {
                out.extend_from_slice(&[0; 4]);
                Ok(())
            }),
            Pdu::Abort(a) => a.encode_into(out),
        }
    }
}

impl AssociateRq {
    /// Append the PDU's bytes to `out`; on failure `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_pdu(out, pdu_type::ASSOCIATE_RQ, |out| {
            put_associate(
                out,
                self.protocol_version,
                (&self.called_ae_title, &self.calling_ae_title),
                false,
                &self.application_context,
                |out| {
                    self.presentation_contexts
                        .iter()
                        .try_for_each(|pc| put_context_rq(out, pc))
                },
                &self.user_information,
                &self.unknown_items,
            )
        })
    }
}

impl AssociateAc {
    /// Append the PDU's bytes to `out`; on failure `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_pdu(out, pdu_type::ASSOCIATE_AC, |out| {
            put_associate(
                out,
                self.protocol_version,
                (&self.called_ae_title, &self.calling_ae_title),
                true,
                &self.application_context,
                |out| {
                    self.presentation_contexts
                        .iter()
                        .try_for_each(|pc| put_context_ac(out, pc))
                },
                &self.user_information,
                &self.unknown_items,
            )
        })
    }
}

impl AssociateRj {
    /// Append the PDU's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_pdu(out, pdu_type::ASSOCIATE_RJ, |out| {
            out.extend_from_slice(&[0, self.result, self.source, self.reason]);
            Ok(())
        })
    }
}

impl Abort {
    /// Append the PDU's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_pdu(out, pdu_type::ABORT, |out| {
            out.extend_from_slice(&[0, 0, self.source, self.reason]);
            Ok(())
        })
    }
}

impl PData {
    /// Append the PDU's bytes to `out`; on failure `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_pdu(out, pdu_type::P_DATA_TF, |out| put_pdata(out, self))
    }
}

#[allow(clippy::too_many_arguments)] // the fields an RQ and an AC share
fn put_associate(
    out: &mut Vec<u8>,
    protocol_version: u16,
    (called, calling): (&str, &str),
    is_ac: bool,
    application_context: &str,
    put_contexts: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    user_information: &UserInformation,
    unknown_items: &[RawItem],
) -> Result<()> {
    out.extend_from_slice(&protocol_version.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    put_ae_title(out, called, is_ac, "called AE title")?;
    put_ae_title(out, calling, is_ac, "calling AE title")?;
    out.extend_from_slice(&[0; 32]);
    put_application_context(out, application_context)?;
    let contexts_at = out.len();
    put_contexts(out)?;
    if out.len() == contexts_at {
        return Err(PduError::new(
            PduErrorKind::Unencodable,
            contexts_at as u64,
            "an A-ASSOCIATE PDU needs at least one presentation context",
        ));
    }
    put_user_information(out, user_information)?;
    for raw in unknown_items {
        put_raw_item(out, raw, ASSOCIATE_TYPES, "A-ASSOCIATE item")?;
    }
    Ok(())
}

fn put_pdata(out: &mut Vec<u8>, pdata: &PData) -> Result<()> {
    if pdata.pdvs.is_empty() {
        return Err(PduError::new(
            PduErrorKind::Unencodable,
            out.len() as u64,
            "a P-DATA-TF PDU needs at least one PDV",
        ));
    }
    for pdv in &pdata.pdvs {
        let item_len = pdv
            .data
            .len()
            .checked_add(2)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                PduError::new(
                    PduErrorKind::Unencodable,
                    out.len() as u64,
                    format!("a PDV of {} bytes does not fit a PDU", pdv.data.len()),
                )
            })?;
        out.extend_from_slice(&item_len.to_be_bytes());
        out.extend_from_slice(&[pdv.context_id, pdv.control_header()]);
        out.extend_from_slice(&pdv.data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{decode_all, Pdv, PresentationContextRq, APPLICATION_CONTEXT};

    fn request() -> AssociateRq {
        AssociateRq {
            protocol_version: 1,
            called_ae_title: "SCP".to_owned(),
            calling_ae_title: "SCU".to_owned(),
            application_context: APPLICATION_CONTEXT.to_owned(),
            presentation_contexts: vec![PresentationContextRq {
                context_id: 1,
                abstract_syntax: "1.2.840.10008.1.1".to_owned(),
                transfer_syntaxes: vec!["1.2.840.10008.1.2".to_owned()],
            }],
            user_information: UserInformation::default(),
            unknown_items: vec![],
        }
    }

    #[test]
    fn fixed_length_pdus() {
        let rj = Pdu::AssociateRj(AssociateRj {
            result: 2,
            source: 3,
            reason: 1,
        });
        assert_eq!(rj.encode().unwrap(), [3, 0, 0, 0, 0, 4, 0, 2, 3, 1]);
        assert_eq!(
            Pdu::ReleaseRq.encode().unwrap(),
            [5, 0, 0, 0, 0, 4, 0, 0, 0, 0]
        );
        assert_eq!(
            Pdu::ReleaseRp.encode().unwrap(),
            [6, 0, 0, 0, 0, 4, 0, 0, 0, 0]
        );
        let abort = Pdu::Abort(Abort {
            source: 2,
            reason: 6,
        });
        assert_eq!(abort.encode().unwrap(), [7, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
        // Reserved bytes are not tested on receipt.
        let decoded = decode_all(&[7, 0xAA, 0, 0, 0, 4, 0xBB, 0xCC, 2, 6], 0).unwrap();
        assert_eq!(decoded, vec![abort]);
    }

    #[test]
    fn a_request_round_trips_with_unknown_items() {
        let mut rq = request();
        rq.unknown_items.push(RawItem {
            item_type: 0x99,
            data: vec![1, 2, 3],
        });
        let pdu = Pdu::AssociateRq(rq);
        let bytes = pdu.encode().unwrap();
        assert_eq!(&bytes[10..26], b"SCP             ");
        assert_eq!(decode_all(&bytes, 0).unwrap(), vec![pdu]);
    }

    #[test]
    fn encoding_failures_leave_the_output_alone() {
        let mut out = vec![0xEE];
        let mut rq = request();
        rq.called_ae_title = "A-TITLE-OF-17-CHR".to_owned();
        let err = Pdu::AssociateRq(rq).encode_into(&mut out).unwrap_err();
        assert_eq!(err.kind, PduErrorKind::Unencodable);
        assert_eq!(out, [0xEE]);

        let mut rq = request();
        rq.presentation_contexts.clear();
        assert!(Pdu::AssociateRq(rq).encode_into(&mut out).is_err());
        let mut rq = request();
        rq.unknown_items.push(RawItem {
            item_type: 0x20,
            data: vec![],
        });
        assert!(Pdu::AssociateRq(rq).encode_into(&mut out).is_err());
        let empty = Pdu::PData(PData { pdvs: vec![] });
        assert!(empty.encode_into(&mut out).is_err());
        assert_eq!(out, [0xEE]);
    }

    #[test]
    fn pdvs_carry_their_control_header() {
        let pdata = Pdu::PData(PData {
            pdvs: vec![
                Pdv {
                    context_id: 5,
                    is_command: true,
                    is_last: false,
                    data: vec![9],
                },
                Pdv {
                    context_id: 5,
                    is_command: false,
                    is_last: true,
                    data: vec![],
                },
            ],
        });
        let bytes = pdata.encode().unwrap();
        assert_eq!(
            bytes,
            [4, 0, 0, 0, 0, 13, 0, 0, 0, 3, 5, 1, 9, 0, 0, 0, 2, 5, 2]
        );
        assert_eq!(decode_all(&bytes, 13).unwrap(), vec![pdata]);
    }

    #[test]
    fn association_pdus_need_their_mandatory_items() {
        let bytes = Pdu::AssociateRq(request()).encode().unwrap();
        // Drop the user information item (the last, 4 bytes) and fix the length.
        let mut cut = bytes[..bytes.len() - 4].to_vec();
        cut[5] -= 4;
        let err = decode_all(&cut, 0).unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::MissingItem, 0));
        assert!(err.detail.contains("user information"));
        // A second application context.
        let mut twice = bytes.clone();
        let app = twice[74..74 + 25].to_vec();
        twice.extend_from_slice(&app);
        twice[5] += 25;
        assert_eq!(
            decode_all(&twice, 0).unwrap_err().kind,
            PduErrorKind::UnexpectedItem
        );
        // An A-ASSOCIATE-AC item type inside a request.
        let mut wrong = bytes;
        wrong[74 + 25] = 0x21;
        assert_eq!(
            decode_all(&wrong, 0).unwrap_err().kind,
            PduErrorKind::UnexpectedItem
        );
    }
}
