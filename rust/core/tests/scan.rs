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
    w.item(ITEM, 12);
    w.element(0x0008_1150, b"UI", b"1.2\0");
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
        (b"ISO_IR 192", "Müller ".as_bytes(), "Müller"),
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

// --- what is stored must be well-formed: sequences of defined length, odd
// lengths, and data that does not match its transfer syntax ---

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const SEQ: u32 = 0x0008_1115;

fn scan_error(ts: &str, w: &Writer) -> dicomrelay_core::ScanError {
    scan(&part10(ts, &w.out), &opts()).unwrap_err()
}

/// Where `w`'s bytes start in the file `part10` makes of them.
fn file_offset(ts: &str, at: usize) -> u64 {
    (part10(ts, &[]).len() + at) as u64
}

/// A defined-length sequence holding `items`, then an element after it.
fn defined_sequence(explicit: bool, items: &[u8]) -> Writer {
    let mut w = Writer::new(explicit, true);
    w.element(0x0008_0018, b"UI", b"1.2.3.4\0");
    w.element(SEQ, b"SQ", items);
    w.element(0x0010_0020, b"LO", b"AFTER ");
    w
}

fn items(explicit: bool, build: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new(explicit, true);
    build(&mut w);
    w.out
}

#[test]
fn defined_length_sequences_are_walked_item_by_item() {
    for explicit in [true, false] {
        let inner = items(explicit, |w| {
            w.item(ITEM, 12).element(0x0008_1150, b"UI", b"1.2\0");
        });
        let content = items(explicit, |w| {
            w.item(ITEM, 12).element(0x0008_1150, b"UI", b"1.2\0");
            w.item(ITEM, UNDEFINED)
                .element(0x0008_1155, b"UI", b"1.2.3\0");
            w.element(0x0008_1140, b"SQ", &inner);
            w.item(ITEM_END, 0);
            w.item(ITEM, 0);
        });
        let w = defined_sequence(explicit, &content);
        let ts = if explicit { EXPLICIT_LE } else { IMPLICIT_LE };
        let info = scan(&part10(ts, &w.out), &opts()).unwrap();
        assert_eq!(info.patient_id.as_deref(), Some("AFTER"), "{ts}");
    }
}

#[test]
fn an_item_overrunning_its_defined_length_sequence_is_refused() {
    for explicit in [true, false] {
        let content = items(explicit, |w| {
            w.item(ITEM, 100).element(0x0008_1150, b"UI", b"1.2\0");
        });
        let w = defined_sequence(explicit, &content);
        let ts = if explicit { EXPLICIT_LE } else { IMPLICIT_LE };
        let err = scan_error(ts, &w);
        assert_eq!(err.kind, ErrorKind::LengthOverflow, "{ts}: {err}");
        assert_eq!(err.tag, Some(SEQ));
        let item_at = w.out.len() - content.len() - 14; // the element after is 14 bytes
        assert_eq!(err.offset, file_offset(ts, item_at), "{err}");
    }
}

#[test]
fn a_defined_length_sequence_of_random_bytes_is_refused() {
    let noise: Vec<u8> = (0u32..64).map(|i| (i * 37 + 11) as u8).collect();
    for explicit in [true, false] {
        let w = defined_sequence(explicit, &noise);
        let ts = if explicit { EXPLICIT_LE } else { IMPLICIT_LE };
        let err = scan_error(ts, &w);
        assert_eq!(err.kind, ErrorKind::BadItem, "{ts}: {err}");
        assert_eq!(err.tag, Some(SEQ));
        assert_eq!(err.offset, file_offset(ts, w.out.len() - 14 - noise.len()));
    }
}

#[test]
fn an_item_must_hold_exactly_its_elements() {
    type Build = fn(&mut Writer);
    let cases: [(&str, Build, ErrorKind); 4] = [
        // an element running past the end of its item
        (
            "overrun",
            |w| {
                w.item(ITEM, 4).element(0x0008_1150, b"UI", b"1.2\0");
            },
            ErrorKind::Truncated,
        ),
        // bytes after the last item too few for another
        (
            "stray",
            |w| {
                w.item(ITEM, 0).out.extend_from_slice(&[0; 4]);
            },
            ErrorKind::LengthOverflow,
        ),
        // an undefined-length item whose delimiter lies past the sequence
        (
            "undelimited",
            |w| {
                w.item(ITEM, UNDEFINED)
                    .element(0x0008_1150, b"UI", b"1.2\0");
            },
            ErrorKind::Truncated,
        ),
        // a sequence delimiter inside a defined-length sequence
        (
            "delimiter",
            |w| {
                w.item(SEQ_END, 0);
            },
            ErrorKind::BadItem,
        ),
    ];
    for (what, build, kind) in cases {
        let w = defined_sequence(true, &items(true, build));
        assert_eq!(scan_error(EXPLICIT_LE, &w).kind, kind, "{what}");
    }
}

#[test]
fn odd_lengths_are_refused_with_their_tag() {
    let mut w = Writer::new(true, true);
    w.element(0x0008_0018, b"UI", b"1.2.3.4\0");
    let at = w.out.len();
    w.element(0x0010_0010, b"PN", b"Doe");
    let err = scan_error(EXPLICIT_LE, &w);
    assert_eq!(err.kind, ErrorKind::OddLength);
    assert_eq!(err.tag, Some(0x0010_0010));
    assert_eq!(err.offset, file_offset(EXPLICIT_LE, at));

    // An odd item length, inside a sequence of either kind of length.
    let content = items(true, |w| {
        w.item(ITEM, 13).element(0x0008_1150, b"UI", b"1.2\0");
        w.out.push(0);
    });
    let err = scan_error(EXPLICIT_LE, &defined_sequence(true, &content));
    assert_eq!((err.kind, err.tag), (ErrorKind::OddLength, Some(SEQ)));

    // An odd fragment of encapsulated pixel data.
    let mut w = Writer::new(true, true);
    w.header(0x7FE0_0010, b"OB", UNDEFINED);
    w.item(ITEM, 0)
        .item(ITEM, 3)
        .out
        .extend_from_slice(&[1, 2, 3]);
    w.item(SEQ_END, 0);
    let err = scan_error("1.2.840.10008.1.2.4.50", &w);
    assert_eq!(
        (err.kind, err.tag),
        (ErrorKind::OddLength, Some(0x7FE0_0010))
    );
}

#[test]
fn odd_lengths_of_private_values_are_read() {
    let mut w = Writer::new(true, true);
    w.element(0x0009_0010, b"LO", b"ACME 1.0");
    w.element(0x0009_1001, b"UN", b"abc");
    w.element(0x0010_0020, b"LO", b"AFTER ");
    let info = scan(&part10(EXPLICIT_LE, &w.out), &opts()).unwrap();
    assert_eq!(info.patient_id.as_deref(), Some("AFTER"));
}

#[test]
fn implicit_values_are_sequences_by_the_dictionary_or_a_private_item_tag() {
    // A standard value that is not a sequence may begin with an item's bytes.
    let mut w = Writer::new(false, true);
    let mut pixels = vec![0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0, 0, 0];
    pixels.extend_from_slice(&[0; 8]);
    w.element(0x7FE0_0010, b"OW", &pixels);
    assert!(scan(&part10(IMPLICIT_LE, &w.out), &opts()).is_ok());

    // A private value that begins with an item tag is read as a sequence.
    let mut w = Writer::new(false, true);
    let content = items(false, |w| {
        w.item(ITEM, 40).element(0x0009_1002, b"LO", b"X ");
    });
    w.element(0x0009_1001, b"SQ", &content);
    let err = scan_error(IMPLICIT_LE, &w);
    assert_eq!(
        (err.kind, err.tag),
        (ErrorKind::LengthOverflow, Some(0x0009_1001))
    );
}

#[test]
fn implicit_data_under_an_explicit_syntax_is_refused() {
    let mut w = Writer::new(false, true);
    basic(&mut w);
    for ts in [EXPLICIT_LE, "1.2.840.10008.1.2.4.50"] {
        let err = scan_error(ts, &w);
        assert_eq!(err.kind, ErrorKind::EncodingMismatch, "{ts}");
        assert_eq!(err.tag, Some(0x0008_0018));
        assert_eq!(err.offset, file_offset(ts, 0));
    }
    // ... and explicit data under the implicit syntax.
    let mut w = Writer::new(true, true);
    basic(&mut w);
    let err = scan_error(IMPLICIT_LE, &w);
    assert_eq!(err.kind, ErrorKind::EncodingMismatch);
    assert_eq!(err.offset, file_offset(IMPLICIT_LE, 0));
    // An element without a VR later in an explicit dataset.
    let mut w = Writer::new(true, true);
    w.element(0x0008_0018, b"UI", b"1.2.3.4\0");
    let at = w.out.len();
    w.tag(0x0010_0020);
    w.u32(2);
    w.out.extend_from_slice(b"ID");
    let err = scan_error(EXPLICIT_LE, &w);
    assert_eq!(err.kind, ErrorKind::EncodingMismatch);
    assert_eq!(
        (err.tag, err.offset),
        (Some(0x0010_0020), file_offset(EXPLICIT_LE, at))
    );
}

#[test]
fn defined_length_nesting_is_capped() {
    let mut content = Writer::new(true, true).out;
    for _ in 0..200 {
        let mut item = Writer::new(true, true);
        item.element(SEQ, b"SQ", &content);
        let mut wrapped = Writer::new(true, true);
        wrapped.item(ITEM, item.out.len() as u32);
        wrapped.out.extend_from_slice(&item.out);
        content = wrapped.out;
    }
    let w = defined_sequence(true, &content);
    assert_eq!(scan_error(EXPLICIT_LE, &w).kind, ErrorKind::TooDeep);
}

#[test]
fn every_byte_of_a_nested_defined_sequence_flipped_is_a_result() {
    let inner = items(true, |w| {
        w.item(ITEM, 12).element(0x0008_1150, b"UI", b"1.2\0");
    });
    let content = items(true, |w| {
        w.item(ITEM, (inner.len() + 12) as u32)
            .element(0x0008_1140, b"SQ", &inner);
    });
    let data = part10(EXPLICIT_LE, &defined_sequence(true, &content).out);
    assert!(scan(&data, &opts()).is_ok());
    for at in 0..data.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut bad = data.clone();
            bad[at] ^= flip;
            let _ = scan(&bad, &opts());
        }
    }
}
