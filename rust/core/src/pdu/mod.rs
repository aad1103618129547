//! The DICOM Upper Layer protocol data units (PS3.8 section 9.3), sans-IO:
//! types for the seven PDUs and their items, an encoder, a streaming
//! [`PduDecoder`] that takes bytes in any fragmentation, and
//! [`fragment_pdata`], which splits a DIMSE message into P-DATA-TF PDUs.
//!
//! The codec checks structure: every length against what is left, items
//! against their parents, text fields for printable ASCII. What a PDU means
//! (odd context ids, AE titles this side answers to, results and reasons) is
//! the association state machine's to judge. Reserved fields are ignored on
//! decoding and written as zero. Text fields are decoded without their padding
//! (AE titles trimmed of spaces, UIDs of trailing NULs and spaces).

mod codec;
mod decoder;
mod error;
mod fragment;
mod items;
mod read;
mod text;

pub use decoder::{decode_all, PduDecoder, PdvSink, MAX_ASSOCIATE_LENGTH};
pub use error::{PduError, PduErrorKind, Result};
pub use fragment::{fragment_pdata, fragment_pdata_into, fragmented_len, PDV_OVERHEAD};

/// The DICOM application context name, the only one PS3.7 defines.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Protocol version 1: bit 0 of the version field (PS3.8 9.3.2).
pub const PROTOCOL_VERSION: u16 = 1;

/// PDU types, PS3.8 table 9-1.
pub mod pdu_type {
    pub const ASSOCIATE_RQ: u8 = 0x01;
    pub const ASSOCIATE_AC: u8 = 0x02;
    pub const ASSOCIATE_RJ: u8 = 0x03;
    pub const P_DATA_TF: u8 = 0x04;
    pub const RELEASE_RQ: u8 = 0x05;
    pub const RELEASE_RP: u8 = 0x06;
    pub const ABORT: u8 = 0x07;
}

/// Item types of the A-ASSOCIATE PDUs, PS3.8 9.3.2 and PS3.7 annex D.3.3.
pub mod item_type {
    pub const APPLICATION_CONTEXT: u8 = 0x10;
    pub const PRESENTATION_CONTEXT_RQ: u8 = 0x20;
    pub const PRESENTATION_CONTEXT_AC: u8 = 0x21;
    pub const ABSTRACT_SYNTAX: u8 = 0x30;
    pub const TRANSFER_SYNTAX: u8 = 0x40;
    pub const USER_INFORMATION: u8 = 0x50;
    pub const MAXIMUM_LENGTH: u8 = 0x51;
    pub const IMPLEMENTATION_CLASS_UID: u8 = 0x52;
    pub const ASYNC_OPS_WINDOW: u8 = 0x53;
    pub const ROLE_SELECTION: u8 = 0x54;
    pub const IMPLEMENTATION_VERSION_NAME: u8 = 0x55;
    pub const SOP_CLASS_EXTENDED: u8 = 0x56;
    pub const SOP_CLASS_COMMON_EXTENDED: u8 = 0x57;
    pub const USER_IDENTITY_RQ: u8 = 0x58;
    pub const USER_IDENTITY_AC: u8 = 0x59;
}

/// One Upper Layer PDU.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pdu {
    AssociateRq(AssociateRq),
    AssociateAc(AssociateAc),
    AssociateRj(AssociateRj),
    PData(PData),
    ReleaseRq,
    ReleaseRp,
    Abort(Abort),
}

/// A-ASSOCIATE-RQ (PS3.8 9.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssociateRq {
    pub protocol_version: u16,
    /// Up to 16 printable ASCII characters, not all spaces.
    pub called_ae_title: String,
    pub calling_ae_title: String,
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextRq>,
    pub user_information: UserInformation,
    /// Variable items of types PS3.8 does not define, kept as they came.
    pub unknown_items: Vec<RawItem>,
}

/// A-ASSOCIATE-AC (PS3.8 9.3.3). Its AE titles echo the request's and are
/// not tested on receipt: they are decoded leniently (a byte outside printable
/// ASCII becomes `?`) and never make decoding fail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssociateAc {
    pub protocol_version: u16,
    pub called_ae_title: String,
    pub calling_ae_title: String,
    pub application_context: String,
    pub presentation_contexts: Vec<PresentationContextAc>,
    pub user_information: UserInformation,
    pub unknown_items: Vec<RawItem>,
}

/// A-ASSOCIATE-RJ (PS3.8 9.3.4). `result`: 1 permanent, 2 transient.
/// `source` and `reason`: 1 service user (1 no reason, 2 application context
/// not supported, 3 calling AE not recognised, 7 called AE not recognised);
/// 2 service provider, ACSE (1 no reason, 2 protocol version not supported);
/// 3 service provider, presentation (1 temporary congestion, 2 local limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AssociateRj {
    pub result: u8,
    pub source: u8,
    pub reason: u8,
}

/// A-ABORT (PS3.8 9.3.8). `source`: 0 service user, 2 service provider;
/// `reason` (provider only): see [`PduErrorKind::abort_reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Abort {
    pub source: u8,
    pub reason: u8,
}

/// P-DATA-TF (PS3.8 9.3.5): one or more presentation data values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PData {
    pub pdvs: Vec<Pdv>,
}

/// One presentation data value: a fragment of a DIMSE command or data set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pdv {
    pub context_id: u8,
    /// Bit 0 of the message control header: a command, not a data set.
    pub is_command: bool,
    /// Bit 1 of the message control header: the message's last fragment.
    pub is_last: bool,
    pub data: Vec<u8>,
}

impl Pdv {
    /// The message control header byte (PS3.8 annex E.2).
    pub fn control_header(&self) -> u8 {
        u8::from(self.is_command) | u8::from(self.is_last) << 1
    }
}

/// A proposed presentation context (item 0x20).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresentationContextRq {
    pub context_id: u8,
    pub abstract_syntax: String,
    /// One or more.
    pub transfer_syntaxes: Vec<String>,
}

/// An answered presentation context (item 0x21). `result`: 0 acceptance,
/// 1 user rejection, 2 no reason, 3 abstract syntax not supported,
/// 4 transfer syntaxes not supported (PS3.8 table 9-18).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PresentationContextAc {
    pub context_id: u8,
    pub result: u8,
    /// Significant only on acceptance; some peers omit it otherwise.
    pub transfer_syntax: Option<String>,
}

/// The user information item (0x50) and its sub-items (PS3.7 annex D.3.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserInformation {
    /// 0x51: the longest P-DATA-TF variable field the sender accepts; 0 = no limit.
    pub max_length: Option<u32>,
    /// 0x52.
    pub implementation_class_uid: Option<String>,
    /// 0x53.
    pub async_ops_window: Option<AsyncOpsWindow>,
    /// 0x54, one per SOP class.
    pub role_selections: Vec<RoleSelection>,
    /// 0x55.
    pub implementation_version_name: Option<String>,
    /// 0x56, one per SOP class.
    pub sop_class_extended: Vec<SopClassExtended>,
    /// 0x57, one per SOP class (requests only).
    pub sop_class_common_extended: Vec<SopClassCommonExtended>,
    /// 0x58 (requests only).
    pub user_identity: Option<UserIdentity>,
    /// 0x59: the server response (acceptances only).
    pub user_identity_response: Option<Vec<u8>>,
    /// Sub-items of types PS3.7 does not define, kept as they came.
    pub unknown_items: Vec<RawItem>,
}

/// Asynchronous Operations Window (0x53); 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsyncOpsWindow {
    pub max_operations_invoked: u16,
    pub max_operations_performed: u16,
}

/// SCP/SCU Role Selection (0x54): in a request the roles proposed, in an
/// acceptance the roles accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleSelection {
    pub sop_class_uid: String,
    pub scu_role: bool,
    pub scp_role: bool,
}

/// SOP Class Extended Negotiation (0x56).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SopClassExtended {
    pub sop_class_uid: String,
    pub service_class_application_information: Vec<u8>,
}

/// SOP Class Common Extended Negotiation (0x57).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SopClassCommonExtended {
    pub sop_class_uid: String,
    pub service_class_uid: String,
    pub related_general_sop_class_uids: Vec<String>,
}

/// User Identity Negotiation request (0x58). `identity_type`: 1 username,
/// 2 username and passcode, 3 Kerberos, 4 SAML, 5 JWT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserIdentity {
    pub identity_type: u8,
    pub positive_response_requested: bool,
    pub primary_field: Vec<u8>,
    /// Only meaningful for type 2; empty otherwise.
    pub secondary_field: Vec<u8>,
}

/// An item or sub-item of a type this codec does not interpret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawItem {
    pub item_type: u8,
    pub data: Vec<u8>,
}

impl Pdu {
    /// The PDU type byte.
    pub fn pdu_type(&self) -> u8 {
        match self {
            Pdu::AssociateRq(_) => pdu_type::ASSOCIATE_RQ,
            Pdu::AssociateAc(_) => pdu_type::ASSOCIATE_AC,
            Pdu::AssociateRj(_) => pdu_type::ASSOCIATE_RJ,
            Pdu::PData(_) => pdu_type::P_DATA_TF,
            Pdu::ReleaseRq => pdu_type::RELEASE_RQ,
            Pdu::ReleaseRp => pdu_type::RELEASE_RP,
            Pdu::Abort(_) => pdu_type::ABORT,
        }
    }

    /// The PS3.8 name, for logs and errors.
    pub fn name(&self) -> &'static str {
        pdu_name(self.pdu_type())
    }
}

/// The PS3.8 name of a PDU type.
pub fn pdu_name(pdu_type: u8) -> &'static str {
    match pdu_type {
        pdu_type::ASSOCIATE_RQ => "A-ASSOCIATE-RQ",
        pdu_type::ASSOCIATE_AC => "A-ASSOCIATE-AC",
        pdu_type::ASSOCIATE_RJ => "A-ASSOCIATE-RJ",
        pdu_type::P_DATA_TF => "P-DATA-TF",
        pdu_type::RELEASE_RQ => "A-RELEASE-RQ",
        pdu_type::RELEASE_RP => "A-RELEASE-RP",
        pdu_type::ABORT => "A-ABORT",
        _ => "unknown PDU",
    }
}
