//! The variable items of A-ASSOCIATE-RQ/-AC: application context, presentation
//! contexts and user information with its sub-items (PS3.8 9.3.2-9.3.3,
//! PS3.7 annex D.3.3), each decoded from and encoded to its item value.

use super::error::{PduError, PduErrorKind, Result};
use super::item_type as it;
use super::read::{begin_item, end_item, put_u16_prefixed, Reader};
use super::text::{check_text, decode_text};
use super::{
    AsyncOpsWindow, PresentationContextAc, PresentationContextRq, RawItem, RoleSelection,
    SopClassCommonExtended, SopClassExtended, UserIdentity, UserInformation,
};

fn unencodable(at: usize, detail: String) -> PduError {
    PduError::new(PduErrorKind::Unencodable, at as u64, detail)
}

fn duplicate(at: u64, what: &str) -> PduError {
    PduError::new(PduErrorKind::UnexpectedItem, at, format!("a second {what}"))
}

fn put_text_item(out: &mut Vec<u8>, item_type: u8, value: &str, what: &'static str) -> Result<()> {
    check_text(out.len(), value, what)?;
    let start = begin_item(out, item_type);
    out.extend_from_slice(value.as_bytes());
    end_item(out, start, what)
}

fn put_prefixed_text(out: &mut Vec<u8>, value: &str, what: &'static str) -> Result<()> {
    check_text(out.len(), value, what)?;
    put_u16_prefixed(out, value.as_bytes(), what)
}

fn read_prefixed_text(r: &mut Reader<'_>, what: &'static str) -> Result<String> {
    let (at, raw) = r.u16_prefixed(what)?;
    decode_text(at, raw, what)
}

pub(super) fn decode_application_context(mut r: Reader<'_>) -> Result<String> {
    decode_text(r.offset(), r.rest(), "application context name")
}

pub(super) fn put_application_context(out: &mut Vec<u8>, name: &str) -> Result<()> {
    put_text_item(
        out,
        it::APPLICATION_CONTEXT,
        name,
        "application context name",
    )
}

/// Item 0x20: context id, three reserved bytes, then one abstract syntax
/// sub-item and one or more transfer syntax sub-items.
pub(super) fn decode_context_rq(mut r: Reader<'_>) -> Result<PresentationContextRq> {
    let at = r.offset();
    let [context_id, _, _, _] = r.array("presentation context header")?;
    let mut abstract_syntax = None;
    let mut transfer_syntaxes = Vec::new();
    while !r.is_empty() {
        let (item_type, mut sub) = r.item()?;
        let sub_at = sub.offset();
        match item_type {
            it::ABSTRACT_SYNTAX if abstract_syntax.is_some() => {
                return Err(duplicate(sub_at, "abstract syntax sub-item"));
            }
            it::ABSTRACT_SYNTAX => {
                abstract_syntax = Some(decode_text(sub_at, sub.rest(), "abstract syntax")?);
            }
            it::TRANSFER_SYNTAX => {
                transfer_syntaxes.push(decode_text(sub_at, sub.rest(), "transfer syntax")?);
            }
            other => return Err(unexpected(sub_at, other, "a proposed presentation context")),
        }
    }
    let abstract_syntax = abstract_syntax.ok_or_else(|| {
        PduError::new(
            PduErrorKind::MissingItem,
            at,
            format!("presentation context {context_id} has no abstract syntax"),
        )
    })?;
    if transfer_syntaxes.is_empty() {
        return Err(PduError::new(
            PduErrorKind::MissingItem,
            at,
            format!("presentation context {context_id} proposes no transfer syntax"),
        ));
    }
    Ok(PresentationContextRq {
        context_id,
        abstract_syntax,
        transfer_syntaxes,
    })
}

fn unexpected(at: u64, item_type: u8, place: &str) -> PduError {
    PduError::new(
        PduErrorKind::UnexpectedItem,
        at.saturating_sub(4),
        format!("item 0x{item_type:02X} in {place}"),
    )
}

pub(super) fn put_context_rq(out: &mut Vec<u8>, pc: &PresentationContextRq) -> Result<()> {
    if pc.transfer_syntaxes.is_empty() {
        return Err(unencodable(
            out.len(),
            format!(
                "presentation context {} proposes no transfer syntax",
                pc.context_id
            ),
        ));
    }
    let start = begin_item(out, it::PRESENTATION_CONTEXT_RQ);
    out.extend_from_slice(&[pc.context_id, 0, 0, 0]);
    put_text_item(
        out,
        it::ABSTRACT_SYNTAX,
        &pc.abstract_syntax,
        "abstract syntax",
    )?;
    for ts in &pc.transfer_syntaxes {
        put_text_item(out, it::TRANSFER_SYNTAX, ts, "transfer syntax")?;
    }
    end_item(out, start, "presentation context")
}

/// Item 0x21: context id, reserved, result/reason, reserved, then the
/// accepted transfer syntax.
pub(super) fn decode_context_ac(mut r: Reader<'_>) -> Result<PresentationContextAc> {
    let [context_id, _, result, _] = r.array("presentation context header")?;
    let mut transfer_syntax = None;
    while !r.is_empty() {
        let (item_type, mut sub) = r.item()?;
        let sub_at = sub.offset();
        match item_type {
            it::TRANSFER_SYNTAX if transfer_syntax.is_some() => {
                return Err(duplicate(sub_at, "transfer syntax sub-item"));
            }
            it::TRANSFER_SYNTAX => {
                transfer_syntax = Some(decode_text(sub_at, sub.rest(), "transfer syntax")?);
            }
            other => {
                return Err(unexpected(
                    sub_at,
                    other,
                    "an answered presentation context",
                ))
            }
        }
    }
    Ok(PresentationContextAc {
        context_id,
        result,
        transfer_syntax,
    })
}

pub(super) fn put_context_ac(out: &mut Vec<u8>, pc: &PresentationContextAc) -> Result<()> {
    let start = begin_item(out, it::PRESENTATION_CONTEXT_AC);
    out.extend_from_slice(&[pc.context_id, 0, pc.result, 0]);
    if let Some(ts) = &pc.transfer_syntax {
        put_text_item(out, it::TRANSFER_SYNTAX, ts, "transfer syntax")?;
    }
    end_item(out, start, "presentation context")
}

/// Set a sub-item that may appear once.
fn once<T>(slot: &mut Option<T>, at: u64, what: &str, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(duplicate(at, what));
    }
    *slot = Some(value);
    Ok(())
}

/// Item 0x50: a sequence of sub-items, unknown ones kept raw.
pub(super) fn decode_user_information(mut r: Reader<'_>) -> Result<UserInformation> {
    let mut ui = UserInformation::default();
    while !r.is_empty() {
        let (item_type, mut sub) = r.item()?;
        let at = sub.offset();
        match item_type {
            it::MAXIMUM_LENGTH => {
                let value = sub.u32("maximum length")?;
                once(&mut ui.max_length, at, "maximum length sub-item", value)?;
            }
            it::IMPLEMENTATION_CLASS_UID => {
                let uid = decode_text(at, sub.rest(), "implementation class UID")?;
                once(
                    &mut ui.implementation_class_uid,
                    at,
                    "implementation class UID",
                    uid,
                )?;
            }
            it::ASYNC_OPS_WINDOW => {
                let window = AsyncOpsWindow {
                    max_operations_invoked: sub.u16("operations invoked")?,
                    max_operations_performed: sub.u16("operations performed")?,
                };
                once(
                    &mut ui.async_ops_window,
                    at,
                    "asynchronous operations window",
                    window,
                )?;
            }
            it::ROLE_SELECTION => ui.role_selections.push(RoleSelection {
                sop_class_uid: read_prefixed_text(&mut sub, "role selection SOP class UID")?,
                scu_role: sub.u8("SCU role")? != 0,
                scp_role: sub.u8("SCP role")? != 0,
            }),
            it::IMPLEMENTATION_VERSION_NAME => {
                let name = decode_text(at, sub.rest(), "implementation version name")?;
                once(
                    &mut ui.implementation_version_name,
                    at,
                    "implementation version name",
                    name,
                )?;
            }
            it::SOP_CLASS_EXTENDED => ui.sop_class_extended.push(SopClassExtended {
                sop_class_uid: read_prefixed_text(&mut sub, "extended negotiation SOP class UID")?,
                service_class_application_information: sub.rest().to_vec(),
            }),
            it::SOP_CLASS_COMMON_EXTENDED => {
                let sop_class_uid = read_prefixed_text(&mut sub, "common extended SOP class UID")?;
                let service_class_uid = read_prefixed_text(&mut sub, "service class UID")?;
                let (list_at, list) = sub.u16_prefixed("related general SOP classes")?;
                let mut list = Reader::new(list, list_at);
                let mut related = Vec::new();
                while !list.is_empty() {
                    related.push(read_prefixed_text(
                        &mut list,
                        "related general SOP class UID",
                    )?);
                }
                ui.sop_class_common_extended.push(SopClassCommonExtended {
                    sop_class_uid,
                    service_class_uid,
                    related_general_sop_class_uids: related,
                });
            }
            it::USER_IDENTITY_RQ => {
                let identity = UserIdentity {
                    identity_type: sub.u8("user identity type")?,
                    positive_response_requested: sub.u8("positive response requested")? != 0,
                    primary_field: sub.u16_prefixed("primary field")?.1.to_vec(),
                    secondary_field: sub.u16_prefixed("secondary field")?.1.to_vec(),
                };
                once(
                    &mut ui.user_identity,
                    at,
                    "user identity sub-item",
                    identity,
                )?;
            }
            it::USER_IDENTITY_AC => {
                let response = sub.u16_prefixed("server response")?.1.to_vec();
                once(
                    &mut ui.user_identity_response,
                    at,
                    "user identity response",
                    response,
                )?;
            }
            item_type => ui.unknown_items.push(RawItem {
                item_type,
                data: sub.rest().to_vec(),
            }),
        }
        sub.finish("a user information sub-item")?;
    }
    Ok(ui)
}

/// Sub-items in ascending type order, as PS3.7 lists them (and DCMTK and
/// pynetdicom send them); unknown ones last.
pub(super) fn put_user_information(out: &mut Vec<u8>, ui: &UserInformation) -> Result<()> {
    let start = begin_item(out, it::USER_INFORMATION);
    if let Some(max_length) = ui.max_length {
        let sub = begin_item(out, it::MAXIMUM_LENGTH);
        out.extend_from_slice(&max_length.to_be_bytes());
        end_item(out, sub, "maximum length")?;
    }
    if let Some(uid) = &ui.implementation_class_uid {
        put_text_item(
            out,
            it::IMPLEMENTATION_CLASS_UID,
            uid,
            "implementation class UID",
        )?;
    }
    if let Some(window) = ui.async_ops_window {
        let sub = begin_item(out, it::ASYNC_OPS_WINDOW);
        out.extend_from_slice(&window.max_operations_invoked.to_be_bytes());
        out.extend_from_slice(&window.max_operations_performed.to_be_bytes());
        end_item(out, sub, "asynchronous operations window")?;
    }
    for role in &ui.role_selections {
        let sub = begin_item(out, it::ROLE_SELECTION);
        put_prefixed_text(out, &role.sop_class_uid, "role selection SOP class UID")?;
        out.extend_from_slice(&[u8::from(role.scu_role), u8::from(role.scp_role)]);
        end_item(out, sub, "role selection")?;
    }
    if let Some(name) = &ui.implementation_version_name {
        put_text_item(
            out,
            it::IMPLEMENTATION_VERSION_NAME,
            name,
            "implementation version name",
        )?;
    }
    for ext in &ui.sop_class_extended {
        let sub = begin_item(out, it::SOP_CLASS_EXTENDED);
        put_prefixed_text(
            out,
            &ext.sop_class_uid,
            "extended negotiation SOP class UID",
        )?;
        out.extend_from_slice(&ext.service_class_application_information);
        end_item(out, sub, "SOP class extended negotiation")?;
    }
    for common in &ui.sop_class_common_extended {
        // The reserved byte of this item is its sub-item version, 0.
        let sub = begin_item(out, it::SOP_CLASS_COMMON_EXTENDED);
        put_prefixed_text(out, &common.sop_class_uid, "common extended SOP class UID")?;
        put_prefixed_text(out, &common.service_class_uid, "service class UID")?;
        let mut related = Vec::new();
        for uid in &common.related_general_sop_class_uids {
            put_prefixed_text(&mut related, uid, "related general SOP class UID")?;
        }
        put_u16_prefixed(out, &related, "related general SOP classes")?;
        end_item(out, sub, "SOP class common extended negotiation")?;
    }
    if let Some(identity) = &ui.user_identity {
        let sub = begin_item(out, it::USER_IDENTITY_RQ);
        out.extend_from_slice(&[
            identity.identity_type,
            u8::from(identity.positive_response_requested),
        ]);
        put_u16_prefixed(out, &identity.primary_field, "user identity primary field")?;
        put_u16_prefixed(
            out,
            &identity.secondary_field,
            "user identity secondary field",
        )?;
        end_item(out, sub, "user identity")?;
    }
    if let Some(response) = &ui.user_identity_response {
        let sub = begin_item(out, it::USER_IDENTITY_AC);
        put_u16_prefixed(out, response, "user identity server response")?;
        end_item(out, sub, "user identity response")?;
    }
    for raw in &ui.unknown_items {
        put_raw_item(
            out,
            raw,
            USER_INFORMATION_TYPES,
            "user information sub-item",
        )?;
    }
    end_item(out, start, "user information")
}

/// Sub-item types user information interprets: a raw sub-item cannot be one.
const USER_INFORMATION_TYPES: &[u8] = &[
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

/// An uninterpreted item, unless its type is one `interpreted` would read back
/// as something else.
pub(super) fn put_raw_item(
    out: &mut Vec<u8>,
    raw: &RawItem,
    interpreted: &[u8],
    what: &'static str,
) -> Result<()> {
    if interpreted.contains(&raw.item_type) {
        return Err(unencodable(
            out.len(),
            format!(
                "an unknown {what} cannot have the known type 0x{:02X}",
                raw.item_type
            ),
        ));
    }
    let start = begin_item(out, raw.item_type);
    out.extend_from_slice(&raw.data);
    end_item(out, start, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_information(bytes: &[u8]) -> Result<UserInformation> {
        decode_user_information(Reader::new(bytes, 0))
    }

    #[test]
    fn user_information_sub_items() {
        let ui = UserInformation {
            max_length: Some(0),
            user_identity: Some(UserIdentity {
                identity_type: 1,
                positive_response_requested: true,
                primary_field: b"bob".to_vec(),
                secondary_field: vec![],
            }),
            unknown_items: vec![RawItem {
                item_type: 0x70,
                data: vec![1, 2],
            }],
            ..UserInformation::default()
        };
        let mut out = Vec::new();
        put_user_information(&mut out, &ui).unwrap();
        assert_eq!(
            out,
            [
                &[0x50, 0, 0, 27][..],
                &[0x51, 0, 0, 4, 0, 0, 0, 0],
                &[0x58, 0, 0, 9, 1, 1, 0, 3, b'b', b'o', b'b', 0, 0],
                &[0x70, 0, 0, 2, 1, 2],
            ]
            .concat()
        );
        assert_eq!(user_information(&out[4..]).unwrap(), ui);
    }

    #[test]
    fn user_information_is_checked() {
        // A second maximum length.
        let twice = [[0x51, 0, 0, 4, 0, 0, 0x40, 0]; 2].concat();
        let err = user_information(&twice).unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::UnexpectedItem, 12));
        // A maximum length of 5 bytes.
        let err = user_information(&[0x51, 0, 0, 5, 0, 0, 0x40, 0, 0]).unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::LengthMismatch, 8));
        // A role selection whose UID length runs past the sub-item.
        let err = user_information(&[0x54, 0, 0, 4, 0, 9, b'1', 1]).unwrap_err();
        assert_eq!(err.kind, PduErrorKind::LengthMismatch);
        // Common extended negotiation with a related-classes list cut short.
        let cut = [0x57, 0, 0, 10, 0, 1, b'1', 0, 1, b'2', 0, 2, 0, 5];
        assert_eq!(
            user_information(&cut).unwrap_err().kind,
            PduErrorKind::LengthMismatch
        );
        // An unknown sub-item cannot take a known type on the way out.
        let raw = UserInformation {
            unknown_items: vec![RawItem {
                item_type: 0x51,
                data: vec![],
            }],
            ..UserInformation::default()
        };
        let err = put_user_information(&mut Vec::new(), &raw).unwrap_err();
        assert_eq!(err.kind, PduErrorKind::Unencodable);
    }

    #[test]
    fn presentation_contexts_are_checked() {
        let rq = |bytes: &[u8]| decode_context_rq(Reader::new(bytes, 0));
        let ok = [
            &[1, 0, 0xFF, 0][..],
            &[0x30, 0, 0, 1, b'1'],
            &[0x40, 0, 0, 1, b'2'],
        ]
        .concat();
        assert_eq!(rq(&ok).unwrap().transfer_syntaxes, vec!["2".to_owned()]);
        let no_ts = [&[1, 0, 0, 0][..], &[0x30, 0, 0, 1, b'1']].concat();
        assert_eq!(rq(&no_ts).unwrap_err().kind, PduErrorKind::MissingItem);
        let no_as = [&[1, 0, 0, 0][..], &[0x40, 0, 0, 1, b'1']].concat();
        assert_eq!(rq(&no_as).unwrap_err().kind, PduErrorKind::MissingItem);
        let stray = [&ok[..], &[0x51, 0, 0, 0]].concat();
        let err = rq(&stray).unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::UnexpectedItem, 14));
        assert_eq!(
            rq(&[1, 0, 0]).unwrap_err().kind,
            PduErrorKind::LengthMismatch
        );

        let ac = |bytes: &[u8]| decode_context_ac(Reader::new(bytes, 0));
        assert_eq!(ac(&[3, 0, 4, 0]).unwrap().transfer_syntax, None);
        let two = [
            &[1, 0, 0, 0][..],
            &[0x40, 0, 0, 1, b'1'],
            &[0x40, 0, 0, 1, b'2'],
        ]
        .concat();
        assert_eq!(ac(&two).unwrap_err().kind, PduErrorKind::UnexpectedItem);
    }
}
