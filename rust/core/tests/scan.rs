//! Scanner behaviour on hand-built byte streams: each encoding, and each way a
//! stream can be malformed, ends in a result or a typed error at the right byte.

use dicomrelay_core::{scan, DigestAlgorithm, ErrorKind, ScanOptions};

const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQ_END: u32 = 0xFFFE_E0DD;
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Builds element streams in one encoding.
struct Writer {
    out: Vec<u8>,
    explicit: bool,
    little: bool,
}

impl Writer {
    fn new(explicit: bool, little: bool) -> Self {
        Writer {
            out: Vec::new(),
            explicit,
            little,
        }
    }
    fn u16(&mut self, v: u16) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.out.extend_from_slice(&b);
    }
    fn u32(&mut self, v: u32) {
        let b = if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        };
        self.out.extend_from_slice(&b);
    }
    fn tag(&mut self, tag: u32) {
        self.u16((tag >> 16) as u16);
        self.u16(tag as u16);
    }
    fn element(&mut self, tag: u32, vr: &[u8; 2], value: &[u8]) -> &mut Self {
        self.header(tag, vr, value.len() as u32);
        self.out.extend_from_slice(value);
        self
    }
    fn header(&mut self, tag: u32, vr: &[u8; 2], len: u32) -> &mut Self {
        self.tag(tag);
        if self.explicit {
            self.out.extend_from_slice(vr);
            if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
                self.u16(0);
                self.u32(len);
            } else {
                self.u16(len as u16);
            }
        } else {
            self.u32(len);
        }
        self
    }
    fn item(&mut self, tag: u32, len: u32) -> &mut Self {
        self.tag(tag);
        self.u32(len);
        self
    }
}

fn part10(ts: &str, dataset: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    let mut meta = Writer::new(true, true);
    let mut uid = ts.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0);
    }
    meta.element(0x0002_0010, b"UI", &uid);
    let mut group = Writer::new(true, true);
    group.element(0x0002_0000, b"UL", &(meta.out.len() as u32).to_le_bytes());
    out.extend_from_slice(&group.out);
    out.extend_from_slice(&meta.out);
    out.extend_from_slice(dataset);
    out
}

fn basic(w: &mut Writer) {
    w.element(0x0008_0018, b"UI", b"1.2.3.4\0")
        .element(0x0008_0060, b"CS", b"CT")
        .element(0x0010_0010, b"PN", b"Doe^Jane  ")
        .element(0x0010_0020, b"LO", b"P-1 ")
        .element(0x0028_0008, b"IS", b"3 ")
        .element(0x0028_0010, b"US", &[0, 2])
        .element(0x0028_0011, b"US", &[0, 1]);
}

fn opts() -> ScanOptions {
    ScanOptions::default()
}

#[test]
fn reads_each_uncompressed_encoding() {
    for (ts, explicit, little) in [
        ("1.2.840.10008.1.2", false, true),
        ("1.2.840.10008.1.2.1", true, true),
        ("1.2.840.10008.1.2.2", true, false),
    ] {
        let mut w = Writer::new(explicit, little);
        basic(&mut w);
        w.element(0x7FE0_0010, b"OW", &[7u8; 16]);
        let data = part10(ts, &w.out);
        let info = scan(&data, &opts()).unwrap();
        assert_eq!(info.sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(info.patient_name.as_deref(), Some("Doe^Jane"));
        assert_eq!(info.patient_id.as_deref(), Some("P-1"));
        assert_eq!(info.number_of_frames, Some(3));
        let rows = if little { 512 } else { 2 };
        assert_eq!(info.rows, Some(rows), "{ts}");
        assert_eq!(info.transfer_syntax_uid.as_deref(), Some(ts));
        assert_eq!(info.pixel_data_length, Some(16));
        assert_eq!(info.pixel_data_offset, Some((data.len() - 16) as u64));
        assert!(!info.encapsulated);
    }
}

#[test]
fn raw_dataset_without_meta_is_guessed() {
    let mut w = Writer::new(true, false);
    basic(&mut w);
    let info = scan(&w.out, &opts()).unwrap();
    assert!(!info.has_meta);
    assert_eq!(
        info.transfer_syntax_uid.as_deref(),
        Some("1.2.840.10008.1.2.2")
    );
    assert_eq!(info.modality.as_deref(), Some("CT"));
}

#[test]
fn encapsulated_fragments_are_walked() {
    let mut w = Writer::new(true, true);
    basic(&mut w);
    w.header(0x7FE0_0010, b"OB", UNDEFINED);
    w.item(ITEM, 0);
    for len in [10u32, 4] {
        w.item(ITEM, len);
        w.out.extend(std::iter::repeat_n(0xAB, len as usize));
    }
    let value_len = 8 + 18 + 12;
    w.item(SEQ_END, 0);
    let data = part10("1.2.840.10008.1.2.4.50", &w.out);
    let info = scan(&data, &opts()).unwrap();
    assert!(info.encapsulated);
    assert_eq!(info.fragments, Some(2));
    assert_eq!(info.pixel_data_length, Some(value_len));
    assert_eq!(
        info.pixel_data_offset,
        Some((data.len() - 8 - value_len as usize) as u64)
    );
}

#[test]
fn undefined_length_sequences_and_items_are_followed() {
    let mut w = Writer::new(false, true);
    w.header(0x0008_1140, b"SQ", UNDEFINED);
    w.item(ITEM, UNDEFINED);
    w.element(0x0008_1150, b"UI", b"1.2\0");
    w.item(ITEM_END, 0);
    w.item(ITEM, 4).out.extend_from_slice(b"abcd");
    w.item(SEQ_END, 0);
    w.element(0x0010_0020, b"LO", b"AFTER ");
    let info = scan(&part10("1.2.840.10008.1.2", &w.out), &opts()).unwrap();
    assert_eq!(info.patient_id.as_deref(), Some("AFTER"));
}

fn error_kind(data: &[u8]) -> ErrorKind {
    scan(data, &opts()).unwrap_err().kind
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    let mut w = Writer::new(true, true);
    basic(&mut w);
    w.element(0x7FE0_0010, b"OW", &[1u8; 64]);
    let data = part10("1.2.840.10008.1.2.1", &w.out);
    for cut in 1..data.len() {
        let _ = scan(&data[..cut], &opts());
    }
    let err = scan(&data[..data.len() - 1], &opts()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::LengthOverflow);
    assert_eq!(err.tag, Some(0x7FE0_0010));
}

#[test]
fn huge_declared_length_is_refused_without_allocating() {
    let mut w = Writer::new(true, true);
    w.header(0x7FE0_0010, b"OB", 0xFFFF_FFF0);
    w.out.extend_from_slice(&[0; 8]);
    let err = scan(&part10("1.2.840.10008.1.2.1", &w.out), &opts()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::LengthOverflow);
    assert_eq!(err.offset, 128 + 4 + 12 + 28);
}

#[test]
fn undefined_length_without_delimiter_is_truncated() {
    let mut w = Writer::new(true, true);
    w.header(0x0008_1140, b"SQ", UNDEFINED);
    w.item(ITEM, UNDEFINED);
    w.element(0x0008_1150, b"UI", b"1.2\0");
    assert_eq!(
        error_kind(&part10("1.2.840.10008.1.2.1", &w.out)),
        ErrorKind::Truncated
    );
}

#[test]
fn deep_nesting_is_capped() {
    let mut w = Writer::new(true, true);
    for _ in 0..10_000 {
        w.header(0x0008_1140, b"SQ", UNDEFINED);
        w.item(ITEM, UNDEFINED);
    }
    assert_eq!(
        error_kind(&part10("1.2.840.10008.1.2.1", &w.out)),
        ErrorKind::TooDeep
    );
}

#[test]
fn stray_delimiters_are_bad_items() {
    let mut w = Writer::new(true, true);
    w.item(ITEM_END, 0);
    assert_eq!(
        error_kind(&part10("1.2.840.10008.1.2.1", &w.out)),
        ErrorKind::BadItem
    );
}

#[test]
fn deflated_dataset_is_inflated_within_the_cap() {
    let mut w = Writer::new(true, true);
    basic(&mut w);
    w.element(0x0009_0010, b"OB", &vec![0u8; 1 << 20]);
    let deflated = miniz_oxide::deflate::compress_to_vec(&w.out, 6);
    let data = part10("1.2.840.10008.1.2.1.99", &deflated);
    let info = scan(&data, &opts()).unwrap();
    assert!(info.deflated);
    assert_eq!(info.sop_instance_uid.as_deref(), Some("1.2.3.4"));
    let capped = ScanOptions {
        max_inflated: 1 << 16,
        ..opts()
    };
    assert_eq!(
        scan(&data, &capped).unwrap_err().kind,
        ErrorKind::BadDeflate
    );
}

#[test]
fn text_is_decoded_in_the_declared_character_set() {
    for (charset, name, expected) in [
        (&b"ISO_IR 100"[..], &b"M\xfcller"[..], "Müller"),
        (b"ISO_IR 192", "Müller".as_bytes(), "Müller"),
        (b"", b"M\xfcller", "Müller"),
    ] {
        let mut w = Writer::new(true, true);
        w.element(0x0008_0005, b"CS", charset);
        w.element(0x0010_0010, b"PN", name);
        let info = scan(&part10("1.2.840.10008.1.2.1", &w.out), &opts()).unwrap();
        assert_eq!(info.patient_name.as_deref(), Some(expected));
    }
}

#[test]
fn digests_cover_the_whole_input() {
    let mut w = Writer::new(true, true);
    basic(&mut w);
    let data = part10("1.2.840.10008.1.2.1", &w.out);
    let options = ScanOptions {
        digest: Some(DigestAlgorithm::Sha256),
        chunk_size: Some(100),
        ..opts()
    };
    let info = scan(&data, &options).unwrap();
    assert_eq!(info.chunk_digests.len(), data.len().div_ceil(100));
    assert_eq!(
        info.digest,
        Some(dicomrelay_core::digest(&data, DigestAlgorithm::Sha256, None).whole)
    );
}

#[test]
fn empty_input_is_an_error() {
    assert_eq!(error_kind(b""), ErrorKind::Empty);
}
