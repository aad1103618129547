//! UIDs remapped by `RemapUids`: the new UID a key gives an old one, and which
//! elements hold UIDs that name an instance (and so are remapped) rather than a
//! class, scheme or standard (and so are kept).

use ring::hmac;

/// The data dictionary's UI elements outside the command and meta groups
/// (PS3.6, as pydicom 3.0.2 lists them): implicit VR names no VR, so this
/// list says which values are UIDs.
const UID_TAGS: [u32; 97] = [
    0x0004_1432, // PrivateRecordUID
    0x0004_1510, // ReferencedSOPClassUIDInFile
    0x0004_1511, // ReferencedSOPInstanceUIDInFile
    0x0004_1512, // ReferencedTransferSyntaxUIDInFile
    0x0004_151A, // ReferencedRelatedGeneralSOPClassUIDInFile
    0x0008_0014, // InstanceCreatorUID
    0x0008_0016, // SOPClassUID
    0x0008_0017, // AcquisitionUID
    0x0008_0018, // SOPInstanceUID
    0x0008_0019, // PyramidUID
    0x0008_001A, // RelatedGeneralSOPClassUID
    0x0008_001B, // OriginalSpecializedSOPClassUID
    0x0008_0058, // FailedSOPInstanceUIDList
    0x0008_0062, // SOPClassesInStudy
    0x0008_010C, // CodingSchemeUID
    0x0008_010D, // ContextGroupExtensionCreatorUID
    0x0008_0117, // ContextUID
    0x0008_0118, // MappingResourceUID
    0x0008_040E, // StoredInstanceTransferSyntaxUID
    0x0008_1150, // ReferencedSOPClassUID
    0x0008_1155, // ReferencedSOPInstanceUID
    0x0008_115A, // SOPClassesSupported
    0x0008_1167, // MultiFrameSourceSOPInstanceUID
    0x0008_1195, // TransactionUID
    0x0008_3002, // AvailableTransferSyntaxUID
    0x0008_3010, // IrradiationEventUID
    0x0008_3012, // RadiopharmaceuticalAdministrationEventUID
    0x0008_9123, // CreatorVersionUID
    0x0018_1002, // DeviceUID
    0x0018_100B, // ManufacturerDeviceClassUID
    0x0018_2042, // TargetUID
    0x0018_991E, // TargetFrameOfReferenceUID
    0x0020_000D, // StudyInstanceUID
    0x0020_000E, // SeriesInstanceUID
    0x0020_0052, // FrameOfReferenceUID
    0x0020_0200, // SynchronizationFrameOfReferenceUID
    0x0020_0242, // SOPInstanceUIDOfConcatenationSource
    0x0020_9161, // ConcatenationUID
    0x0020_9164, // DimensionOrganizationUID
    0x0020_9312, // VolumeFrameOfReferenceUID
    0x0020_9313, // TableFrameOfReferenceUID
    0x0028_0304, // ReferencedColorPaletteInstanceUID
    0x0028_1199, // PaletteColorLookupTableUID
    0x0028_1214, // LargePaletteColorLookupTableUID
    0x0034_0003, // FlowTransferSyntaxUID
    0x003A_0310, // MultiplexGroupUID
    0x0040_0554, // SpecimenUID
    0x0040_4023, // ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
    0x0040_A021, // FindingsGroupUIDTrial
    0x0040_A022, // ReferencedFindingsGroupUIDTrial
    0x0040_A124, // UID
    0x0040_A171, // ObservationUID
    0x0040_A172, // ReferencedObservationUIDTrial
    0x0040_A402, // ObservationSubjectUIDTrial
    0x0040_DB0C, // TemplateExtensionOrganizationUID
    0x0040_DB0D, // TemplateExtensionCreatorUID
    0x0040_E011, // RetrieveLocationUID
    0x0040_E030, // RepositoryUniqueID
    0x0040_E031, // HomeCommunityID
    0x0044_0102, // AssertionUID
    0x0044_0108, // ReferencedAssertionUID
    0x0062_0021, // TrackingUID
    0x0064_0003, // SourceFrameOfReferenceUID
    0x0068_7004, // ModelGroupUID
    0x006A_0003, // AnnotationGroupUID
    0x0070_031A, // FiducialUID
    0x0070_031B, // ReferencedFiducialUID
    0x0070_1101, // PresentationDisplayCollectionUID
    0x0070_1102, // PresentationSequenceCollectionUID
    0x0070_1209, // VolumetricPresentationInputSetUID
    0x0070_1904, // ReferencedContentItem
    0x0072_007F, // SelectorUIValue
    0x0088_0140, // StorageMediaFileSetUID
    0x0400_0010, // MACCalculationTransferSyntaxUID
    0x0400_0100, // DigitalSignatureUID
    0x0400_0510, // EncryptedContentTransferSyntaxUID
    0x3006_0024, // ReferencedFrameOfReferenceUID
    0x3006_00C2, // RelatedFrameOfReferenceUID
    0x300A_0013, // DoseReferenceUID
    0x300A_0054, // TableTopPositionAlignmentUID
    0x300A_0083, // ReferencedDoseReferenceUID
    0x300A_0609, // TreatmentPositionGroupUID
    0x300A_0650, // PatientSetupUID
    0x300A_0675, // EquipmentFrameOfReferenceUID
    0x300A_0700, // TreatmentSessionUID
    0x300A_0785, // ReferencedTreatmentPositionGroupUID
    0x3010_0006, // ConceptualVolumeUID
    0x3010_000B, // ReferencedConceptualVolumeUID
    0x3010_0013, // ConstituentConceptualVolumeUID
    0x3010_0015, // SourceConceptualVolumeUID
    0x3010_001F, // SegmentationTemplateUID
    0x3010_0031, // ReferencedFiducialsUID
    0x3010_003B, // RTTreatmentPhaseUID
    0x3010_0052, // PertinentSOPClassesInStudy
    0x3010_0053, // PertinentSOPClassesInSeries
    0x3010_006E, // DosimetricObjectiveUID
    0x3010_006F, // ReferencedDosimetricObjectiveUID
];

/// UI elements that name a SOP class, transfer syntax, coding scheme, context
/// group or device class: the same in every instance of a kind, and what a
/// receiver needs to read the instance, so `RemapUids` without a tag list
/// keeps them. Every other UI element names an instance (a study, series,
/// frame of reference, referenced instance, ...) and is remapped. The file
/// meta group is never remapped, except that (0002,0003) follows (0008,0018).
pub const CLASS_UID_TAGS: [u32; 15] = [
    0x0004_1510, // Referenced SOP Class UID in File
    0x0004_1512, // Referenced Transfer Syntax UID in File
    0x0008_0016, // SOP Class UID
    0x0008_001A, // Related General SOP Class UID
    0x0008_001B, // Original Specialized SOP Class UID
    0x0008_0062, // SOP Classes in Study
    0x0008_010C, // Coding Scheme UID
    0x0008_010D, // Context Group Extension Creator UID
    0x0008_0117, // Context UID
    0x0008_0118, // Mapping Resource UID
    0x0008_1150, // Referenced SOP Class UID
    0x0008_115A, // SOP Classes Supported
    0x0018_100B, // Manufacturer's Device Class UID
    0x0400_0010, // MAC Calculation Transfer Syntax UID
    0x0400_0510, // Encrypted Content Transfer Syntax UID
];

/// Is `tag` a UI element in the data dictionary?
pub fn is_uid_tag(tag: u32) -> bool {
    UID_TAGS.binary_search(&tag).is_ok()
}

/// Does `tag` name a class, scheme or standard rather than an instance?
pub fn is_class_uid_tag(tag: u32) -> bool {
    CLASS_UID_TAGS.binary_search(&tag).is_ok()
}

/// A keyed remapping of UIDs: `2.25.` and the first 16 bytes of
/// HMAC-SHA256(key, old UID) as a decimal integer (PS3.5 B.2).
pub struct UidMap {
    key: hmac::Key,
}

impl UidMap {
    pub fn new(key: &[u8]) -> Self {
        UidMap {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The new UID of `old` (without its padding).
    pub fn remap(&self, old: &[u8]) -> String {
        let tag = hmac::sign(&self.key, old);
        let mut first = [0u8; 16];
        first.copy_from_slice(&tag.as_ref()[..16]);
        format!("2.25.{}", u128::from_be_bytes(first))
    }

    /// A UI value remapped value by value (backslash-separated), padding
    /// dropped, empty values kept empty; padded again to an even length.
    pub fn remap_value(&self, value: &[u8]) -> Vec<u8> {
        let value = crate::charset::trim_text(value);
        let mut out = Vec::with_capacity(64);
        for (n, uid) in value.split(|&b| b == b'\\').enumerate() {
            if n > 0 {
                out.push(b'\\');
            }
            let uid = crate::charset::trim_text(uid);
            if !uid.is_empty() {
                out.extend_from_slice(self.remap(uid).as_bytes());
            }
        }
        if out.len() % 2 == 1 {
            out.push(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charset::trim_text;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(UID_TAGS.windows(2).all(|w| w[0] < w[1]));
        assert!(CLASS_UID_TAGS.windows(2).all(|w| w[0] < w[1]));
        assert!(CLASS_UID_TAGS.iter().all(|&t| is_uid_tag(t)));
        assert!(is_uid_tag(0x0020_000D) && !is_class_uid_tag(0x0020_000D));
    }

    #[test]
    fn remapping_is_keyed_and_deterministic() {
        let a = UidMap::new(b"key a");
        let b = UidMap::new(b"key b");
        assert_eq!(a.remap(b"1.2.3"), a.remap(b"1.2.3"));
        assert_ne!(a.remap(b"1.2.3"), b.remap(b"1.2.3"));
        assert_ne!(a.remap(b"1.2.3"), a.remap(b"1.2.4"));
        let uid = a.remap(b"1.2.3");
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
        // Padding is not part of the UID; values are remapped one by one.
        let value = a.remap_value(b"1.2.3\\4.5\0");
        let expected = format!("{}\\{}", a.remap(b"1.2.3"), a.remap(b"4.5"));
        assert_eq!(trim_text(&value), expected.as_bytes());
        assert_eq!(value.len() % 2, 0);
        assert_eq!(a.remap_value(b""), b"");
    }
}
