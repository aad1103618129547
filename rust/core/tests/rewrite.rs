//! Header rewriting on datasets built byte by byte: what is copied, what is
//! encoded again, where the pixel data lies, and the errors.

use dicomrelay_core::rewrite::{rewrite, Edit, NewElement, NewValue, RewriteError, Value};
use dicomrelay_core::{scan, DigestAlgorithm, ErrorKind, ScanOptions};

const UNDEFINED: u32 = 0xFFFF_FFFF;

fn el(tag: u32, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

fn header(tag: u32, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

fn undefined_sequence(tag: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(tag as u16).to_le_bytes());
    out.extend_from_slice(b"SQ\0\0");
    out.extend_from_slice(&UNDEFINED.to_le_bytes());
    for item in items {
        out.extend(header(0xFFFE_E000, UNDEFINED));
        out.extend_from_slice(item);
        out.extend(header(0xFFFE_E00D, 0));
    }
    out.extend(header(0xFFFE_E0DD, 0));
    out
}

/// Preamble, a meta group with its group length, and `dataset`.
fn part10(dataset: &[u8]) -> Vec<u8> {
    let mut body = el(0x0002_0003, b"UI", b"1.2.3.4\0");
    body.extend(el(0x0002_0010, b"UI", b"1.2.840.10008.1.2.1\0"));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(el(0x0002_0000, b"UL", &(body.len() as u32).to_le_bytes()));
    out.extend(body);
    out.extend_from_slice(dataset);
    out
}

fn pixels() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8).collect()
}

fn instance() -> Vec<u8> {
    let item = [
        el(0x0008_1155, b"UI", b"1.2.3.4.5\0"),
        el(0x0010_0020, b"LO", b"INNER "),
    ]
    .concat();
    let mut dataset = el(0x0008_0018, b"UI", b"1.2.3.4\0");
    dataset.extend(undefined_sequence(0x0008_1115, &[item]));
    dataset.extend(el(0x0010_0020, b"LO", b"TOP "));
    dataset.extend(el(0x7FE0_0010, b"OW", &pixels()));
    dataset.extend(el(0xFFFC_FFFC, b"OB", &[0; 4]));
    part10(&dataset)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

#[test]
fn no_edits_give_the_input_back_and_point_at_its_pixel_data() {
    let data = instance();
    let r = rewrite(&data, &[], Some(DigestAlgorithm::Sha256)).unwrap();
    assert_eq!(r.to_vec(&data).unwrap(), data);
    let info = scan(&data, &ScanOptions::default()).unwrap();
    assert_eq!(Some(r.pixel_offset as u64), info.pixel_data_offset);
    assert_eq!(Some(r.pixel_length as u64), info.pixel_data_length);
    assert_eq!(r.header.len(), r.pixel_offset);
    assert_eq!(r.trailer, el(0xFFFC_FFFC, b"OB", &[0; 4]));
    let expected = dicomrelay_core::digest(&data, DigestAlgorithm::Sha256, None).whole;
    assert_eq!(r.digest, Some(expected));
}

#[test]
fn an_edit_changes_only_its_element_and_the_lengths_around_it() {
    let data = instance();
    let edits = [
        Edit::Replace {
            tag: 0x0010_0020,
            value: text("A LONGER VALUE"),
            vr: *b"LO",
            everywhere: true,
        },
        Edit::RemovePrivate {
            keep: vec![],
            everywhere: true,
        },
    ];
    let r = rewrite(&data, &edits, None).unwrap();
    let out = r.to_vec(&data).unwrap();
    // Same pixel bytes, now 18 bytes further on (values of 6 and 4 bytes became 14).
    assert_eq!(
        r.pixel_offset,
        scan(&data, &ScanOptions::default())
            .unwrap()
            .pixel_data_offset
            .unwrap() as usize
    );
    let info = scan(&out, &ScanOptions::default()).unwrap();
    assert_eq!(info.patient_id.as_deref(), Some("A LONGER VALUE"));
    assert_eq!(info.pixel_data_offset, Some(r.pixel_offset as u64 + 18));
    assert_eq!(
        out.windows(16)
            .filter(|w| w.starts_with(b"A LONGER VALUE"))
            .count(),
        2
    );
    // The meta group's length still counts the meta group.
    assert_eq!(&out[140..144], &data[140..144]);
}

#[test]
fn a_new_sop_instance_uid_is_followed_by_the_meta_group() {
    let data = instance();
    let set = Edit::Set {
        tag: 0x0008_0018,
        value: text("9.8.7.6.5.4.3"),
        vr: *b"UI",
    };
    let out = rewrite(&data, &[set], None).unwrap().to_vec(&data).unwrap();
    assert_eq!(
        out.windows(14).filter(|w| w == b"9.8.7.6.5.4.3\0").count(),
        2
    );
    let meta_length = u32::from_le_bytes(out[140..144].try_into().unwrap());
    assert_eq!(
        meta_length,
        u32::from_le_bytes(data[140..144].try_into().unwrap()) + 6
    );
}

#[test]
fn items_are_added_in_tag_order_with_defined_lengths() {
    let data = instance();
    let old = NewElement {
        tag: 0x0010_0020,
        vr: *b"LO",
        value: NewValue::Value(text("OLD")),
    };
    let add = Edit::AddItem {
        sequence: 0x0400_0561,
        elements: vec![
            NewElement {
                tag: 0x0400_0565,
                vr: *b"CS",
                value: NewValue::Value(text("COERCE")),
            },
            NewElement {
                tag: 0x0400_0550,
                vr: *b"SQ",
                value: NewValue::Items(vec![vec![old]]),
            },
        ],
    };
    let r = rewrite(&data, &[add], None).unwrap();
    let out = r.to_vec(&data).unwrap();
    scan(&out, &ScanOptions::default()).unwrap();
    // (0400,0561) goes after (0010,0020), before the pixel data: in the header.
    let at = r
        .header
        .windows(4)
        .position(|w| w == [0x00, 0x04, 0x61, 0x05])
        .unwrap();
    assert!(at > r.header.windows(4).position(|w| w == b"TOP ").unwrap());
    let length = u32::from_le_bytes(r.header[at + 8..at + 12].try_into().unwrap()) as usize;
    assert_eq!(at + 12 + length + 12, r.header.len());
}

#[test]
fn refused_input_and_edits_are_typed_errors() {
    let e = rewrite(b"", &[], None).unwrap_err();
    assert!(matches!(e, RewriteError::Parse(ref s) if s.kind == ErrorKind::Empty));
    let mut data = instance();
    data.truncate(data.len() - 100);
    assert!(matches!(
        rewrite(&data, &[], None),
        Err(RewriteError::Parse(_))
    ));
    let too_long = Edit::Set {
        tag: 0x0010_0020,
        value: Value::Bytes(vec![b'x'; 70_000]),
        vr: *b"LO",
    };
    let e = rewrite(&instance(), &[too_long], None).unwrap_err();
    assert!(
        matches!(
            e,
            RewriteError::Edit {
                tag: 0x0010_0020,
                ..
            }
        ),
        "{e}"
    );
    let on_sequence = Edit::Replace {
        tag: 0x0008_1115,
        value: text("x"),
        vr: *b"LO",
        everywhere: false,
    };
    assert!(matches!(
        rewrite(&instance(), &[on_sequence], None),
        Err(RewriteError::Edit {
            tag: 0x0008_1115,
            ..
        })
    ));
    let pixel = Edit::Remove {
        tag: 0x7FE0_0000,
        mask: 0xFFFF_0000,
        everywhere: false,
    };
    assert!(matches!(
        rewrite(&instance(), &[pixel], None),
        Err(RewriteError::Edit { .. })
    ));
}

#[test]
fn uids_are_remapped_the_same_way_in_every_instance() {
    let a = rewrite(
        &instance(),
        &[Edit::RemapUids {
            tags: None,
            key: b"k".to_vec(),
            everywhere: true,
        }],
        None,
    )
    .unwrap();
    let b = rewrite(
        &instance(),
        &[Edit::RemapUids {
            tags: None,
            key: b"k".to_vec(),
            everywhere: true,
        }],
        None,
    )
    .unwrap();
    assert_eq!(a, b);
    let header = String::from_utf8_lossy(&a.header);
    assert!(!header.contains("1.2.3.4.5"));
    assert_eq!(header.matches("2.25.").count(), 3); // (0002,0003), (0008,0018), (0008,1155)
}

#[test]
fn meta_elements_inside_the_dataset_are_refused() {
    // Removing what lies before them would make them the output's meta group.
    let mut dataset = el(0x0009_0010, b"LO", b"PRIVATE ");
    dataset.extend(el(0x0002_0010, b"UI", b"1.2.840.10008.1.2\0"));
    let mut data = vec![0u8; 128];
    data.extend_from_slice(b"DICM");
    data.extend(dataset);
    assert!(scan(&data, &ScanOptions::default()).is_ok());
    let edits = [Edit::RemovePrivate {
        keep: vec![],
        everywhere: true,
    }];
    let e = rewrite(&data, &edits, None).unwrap_err();
    assert!(
        matches!(e, RewriteError::Parse(ref s) if s.kind == ErrorKind::BadMeta && s.tag == Some(0x0002_0010)),
        "{e}"
    );
}
