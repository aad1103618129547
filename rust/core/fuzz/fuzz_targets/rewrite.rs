//! Arbitrary bytes through the header rewrite: it must return, never panic;
//! what it returns must lie inside the input; and an input the scanner reads
//! must give an output the scanner reads, with the same pixel data.

#![no_main]

use dicomrelay_core::rewrite::{rewrite, Edit, NewElement, NewValue, Value};
use dicomrelay_core::{scan, DigestAlgorithm, ScanOptions};
use libfuzzer_sys::fuzz_target;

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Edits from the first byte (which, in a Part 10 file, lies in the preamble):
/// each bit adds one kind, so one input exercises one combination.
fn edits(data: &[u8]) -> Vec<Edit> {
    let b = data.first().copied().unwrap_or(0);
    let mut edits = Vec::new();
    let everywhere = b & 0x80 != 0;
    if b & 0x01 != 0 {
        edits.push(Edit::Set {
            tag: 0x0010_0020,
            value: text("FUZZED-ID"),
            vr: *b"LO",
        });
    }
    if b & 0x02 != 0 {
        edits.push(Edit::Replace {
            tag: 0x0008_1155,
            value: text("1.2.3"),
            vr: *b"UI",
            everywhere,
        });
    }
    if b & 0x04 != 0 {
        edits.push(Edit::Remove {
            tag: 0x6000_3000,
            mask: 0xFF00_FFFF,
            everywhere,
        });
        edits.push(Edit::Empty {
            tag: 0x0008_0050,
            everywhere,
        });
    }
    if b & 0x08 != 0 {
        edits.push(Edit::RemovePrivate {
            keep: vec![],
            everywhere,
        });
    }
    if b & 0x10 != 0 {
        edits.push(Edit::RemapUids {
            tags: None,
            key: b"fuzz".to_vec(),
            everywhere,
        });
    }
    if b & 0x20 != 0 {
        let inner = vec![NewElement {
            tag: 0x0010_0020,
            vr: *b"LO",
            value: NewValue::Value(text("OLD")),
        }];
        edits.push(Edit::AddItem {
            sequence: 0x0400_0561,
            elements: vec![NewElement {
                tag: 0x0400_0550,
                vr: *b"SQ",
                value: NewValue::Items(vec![inner]),
            }],
        });
    }
    if b & 0x40 != 0 {
        edits.push(Edit::Set {
            tag: 0x0018_1310,
            value: text("0\\256\\256\\0"),
            vr: *b"US",
        });
    }
    edits
}

fuzz_target!(|data: &[u8]| {
    let edits = edits(data);
    let result = match rewrite(data, &edits, Some(DigestAlgorithm::Blake3)) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let end = result
        .pixel_offset
        .checked_add(result.pixel_length)
        .expect("pixel end overflows");
    assert!(
        end <= data.len(),
        "pixel data {}+{} past {}",
        result.pixel_offset,
        result.pixel_length,
        data.len()
    );
    assert_eq!(result.digest.as_ref().map(String::len), Some(64));
    let before =
        scan(data, &ScanOptions::default()).expect("the rewrite read what the scanner refuses");
    let output = result
        .to_vec(data)
        .expect("the pixel range lies in the input");
    let after = match scan(&output, &ScanOptions::default()) {
        Ok(info) => info,
        Err(e) => panic!("the scanner refuses the rewrite's output: {e}"),
    };
    assert_eq!(before.pixel_data_length, after.pixel_data_length);
    assert_eq!(before.transfer_syntax_uid, after.transfer_syntax_uid);
});
