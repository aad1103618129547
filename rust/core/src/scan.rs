//! The Part 10 scanner: preamble, file meta group, dataset, and what an exchange
//! needs to know about the instance, in one bounded pass.

use crate::charset::{trim_text, Charset};
use crate::dataset::{walk_top_level, Element, PIXEL_DATA};
use crate::digest::{digest, DigestAlgorithm};
use crate::element::{read_header, value_end, Encoding, Header};
use crate::error::{ErrorKind, Result, ScanError};
use crate::syntax::{check_vr_axis, DatasetSyntax};

/// The largest inflated dataset a deflated file may expand to by default.
pub const DEFAULT_MAX_INFLATED: usize = 256 << 20;

const PREAMBLE: usize = 128;
const MAGIC: &[u8; 4] = b"DICM";
const TRANSFER_SYNTAX_UID: u32 = 0x0002_0010;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    pub digest: Option<DigestAlgorithm>,
    /// Chunk size of the chunk plan; chunk digests are made only when this and
    /// `digest` are both set.
    pub chunk_size: Option<usize>,
    pub max_inflated: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            digest: None,
            chunk_size: None,
            max_inflated: DEFAULT_MAX_INFLATED,
        }
    }
}

/// What the scanner found. Strings are decoded and stripped of padding; absent
/// or empty elements are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct InstanceInfo {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub patient_id: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub study_date: Option<String>,
    pub specific_character_set: Option<String>,
    /// From the meta group, or the syntax the scanner inferred when there is none.
    pub transfer_syntax_uid: Option<String>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    pub number_of_frames: Option<i64>,
    pub bits_allocated: Option<u16>,
    /// Byte offset of the pixel data value in the input; `None` without pixel
    /// data, and for deflated files (where it lies in the inflated stream).
    pub pixel_data_offset: Option<u64>,
    pub pixel_data_length: Option<u64>,
    pub encapsulated: bool,
    /// Items of encapsulated pixel data after the basic offset table.
    pub fragments: Option<u32>,
    /// Where the dataset after the meta group starts.
    pub dataset_offset: u64,
    /// Bytes in the whole input.
    pub size: u64,
    pub has_meta: bool,
    pub deflated: bool,
    pub digest: Option<String>,
    pub chunk_digests: Vec<String>,
}

/// Where a Part 10 input's parts lie, and how its dataset is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Where the file meta group starts: after the preamble and `DICM`, or 0.
    pub meta_start: usize,
    /// Where the dataset after the meta group starts.
    pub dataset_start: usize,
    pub has_meta: bool,
    /// The meta group's transfer syntax UID, if it names one.
    pub transfer_syntax: Option<String>,
    pub syntax: DatasetSyntax,
}

/// Find the preamble, meta group and dataset of `data`, calling `meta_element`
/// with each meta group element's header and the end of its value.
pub fn layout(data: &[u8], meta_element: &mut impl FnMut(&Header, usize)) -> Result<Layout> {
    if data.is_empty() {
        return Err(ScanError::new(ErrorKind::Empty, 0, None, "empty input"));
    }
    let meta_start = if data.len() >= PREAMBLE + 4 && &data[PREAMBLE..PREAMBLE + 4] == MAGIC {
        PREAMBLE + 4
    } else {
        0
    };
    let meta = read_meta(data, meta_start, meta_element)?;
    let syntax = match &meta.transfer_syntax {
        Some(uid) => DatasetSyntax::from_uid(uid),
        None => DatasetSyntax::guess(data, meta.end),
    };
    Ok(Layout {
        meta_start,
        dataset_start: meta.end,
        has_meta: meta.present,
        transfer_syntax: meta.transfer_syntax,
        syntax,
    })
}

/// Inflate a deflated dataset (from `start` to the end of `data`), at most `cap` bytes.
pub fn inflate(data: &[u8], start: usize, cap: usize) -> Result<Vec<u8>> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(&data[start..], cap).map_err(|e| {
        ScanError::new(
            ErrorKind::BadDeflate,
            start,
            None,
            format!("{:?} (limit {} bytes)", e.status, cap),
        )
    })
}

/// Scan a whole Part 10 file (or a raw dataset with no preamble and meta group).
pub fn scan(data: &[u8], options: &ScanOptions) -> Result<InstanceInfo> {
    let layout = layout(data, &mut |_, _| {})?;
    let dataset_start = layout.dataset_start;
    let syntax = layout.syntax;

    let mut info = if syntax.deflated {
        let inflated = inflate(data, dataset_start, options.max_inflated)?;
        check_vr_axis(&inflated, 0, syntax.encoding)?;
        let mut info = scan_dataset(&inflated, 0, syntax.encoding)?;
        info.pixel_data_offset = None;
        info.deflated = true;
        info
    } else {
        check_vr_axis(data, dataset_start, syntax.encoding)?;
        scan_dataset(data, dataset_start, syntax.encoding)?
    };
    info.has_meta = layout.has_meta;
    info.size = data.len() as u64;
    info.dataset_offset = dataset_start as u64;
    info.transfer_syntax_uid = Some(match layout.transfer_syntax {
        Some(uid) => uid,
        None => syntax.uid().to_owned(),
    });
    if let Some(algorithm) = options.digest {
        let d = digest(data, algorithm, options.chunk_size);
        info.digest = Some(d.whole);
        info.chunk_digests = d.chunks;
    }
    Ok(info)
}

struct Meta {
    present: bool,
    transfer_syntax: Option<String>,
    end: usize,
}

/// Read group 0002 elements (always explicit VR little endian) until another group begins.
fn read_meta(data: &[u8], start: usize, visit: &mut impl FnMut(&Header, usize)) -> Result<Meta> {
    let mut pos = start;
    let mut meta = Meta {
        present: false,
        transfer_syntax: None,
        end: start,
    };
    while pos + 8 <= data.len() && u16::from_le_bytes([data[pos], data[pos + 1]]) == 0x0002 {
        let header =
            read_header(data, pos, data.len(), Encoding::EXPLICIT_LE).map_err(|e| ScanError {
                kind: ErrorKind::BadMeta,
                ..e
            })?;
        if header.is_undefined() {
            return Err(ScanError::new(
                ErrorKind::BadMeta,
                pos,
                Some(header.tag),
                "undefined length in the file meta group",
            ));
        }
        let end = value_end(&header, data.len())?;
        if header.tag == TRANSFER_SYNTAX_UID {
            let uid = trim_text(&data[header.value_offset..end]);
            if !uid.is_empty() {
                meta.transfer_syntax = Some(Charset::Latin1.decode(uid));
            }
        }
        visit(&header, end);
        meta.present = true;
        pos = end;
    }
    meta.end = pos;
    Ok(meta)
}

/// Byte ranges of the top-level values the scanner reports.
#[derive(Default)]
struct Found<'a> {
    charset: Option<&'a [u8]>,
    sop_class_uid: Option<&'a [u8]>,
    sop_instance_uid: Option<&'a [u8]>,
    study_date: Option<&'a [u8]>,
    accession_number: Option<&'a [u8]>,
    modality: Option<&'a [u8]>,
    patient_name: Option<&'a [u8]>,
    patient_id: Option<&'a [u8]>,
    issuer_of_patient_id: Option<&'a [u8]>,
    study_instance_uid: Option<&'a [u8]>,
    series_instance_uid: Option<&'a [u8]>,
    number_of_frames: Option<&'a [u8]>,
    rows: Option<&'a [u8]>,
    columns: Option<&'a [u8]>,
    bits_allocated: Option<&'a [u8]>,
    pixel: Option<Element>,
}

fn scan_dataset(buf: &[u8], start: usize, enc: Encoding) -> Result<InstanceInfo> {
    let mut found = Found::default();
    walk_top_level(buf, start, enc, &mut |e: &Element| {
        let value = &buf[e.header.value_offset..e.value_end];
        let slot = match e.header.tag {
            0x0008_0005 => &mut found.charset,
            0x0008_0016 => &mut found.sop_class_uid,
            0x0008_0018 => &mut found.sop_instance_uid,
            0x0008_0020 => &mut found.study_date,
            0x0008_0050 => &mut found.accession_number,
            0x0008_0060 => &mut found.modality,
            0x0010_0010 => &mut found.patient_name,
            0x0010_0020 => &mut found.patient_id,
            0x0010_0021 => &mut found.issuer_of_patient_id,
            0x0020_000D => &mut found.study_instance_uid,
            0x0020_000E => &mut found.series_instance_uid,
            0x0028_0008 => &mut found.number_of_frames,
            0x0028_0010 => &mut found.rows,
            0x0028_0011 => &mut found.columns,
            0x0028_0100 => &mut found.bits_allocated,
            PIXEL_DATA | 0x7FE0_0008 | 0x7FE0_0009 => {
                found.pixel.get_or_insert(*e);
                return Ok(());
            }
            _ => return Ok(()),
        };
        *slot = Some(value);
        Ok(())
    })?;

    let charset = found.charset.map_or(Charset::Latin1, Charset::from_value);
    let ascii = |v: Option<&[u8]>| text(v, Charset::Latin1, Values::Whole);
    let local = |v: Option<&[u8]>| text(v, charset, Values::EachTrimmed);
    let name = |v: Option<&[u8]>| text(v, charset, Values::PersonNames);
    let us = |v: Option<&[u8]>| v.filter(|v| v.len() >= 2).map(|v| enc.u16_at(v, 0));
    let pixel = found.pixel;
    Ok(InstanceInfo {
        sop_class_uid: ascii(found.sop_class_uid),
        sop_instance_uid: ascii(found.sop_instance_uid),
        study_instance_uid: ascii(found.study_instance_uid),
        series_instance_uid: ascii(found.series_instance_uid),
        patient_id: local(found.patient_id),
        issuer_of_patient_id: local(found.issuer_of_patient_id),
        patient_name: name(found.patient_name),
        accession_number: local(found.accession_number),
        modality: ascii(found.modality),
        study_date: ascii(found.study_date),
        specific_character_set: ascii(found.charset),
        transfer_syntax_uid: None,
        rows: us(found.rows),
        columns: us(found.columns),
        number_of_frames: found.number_of_frames.and_then(parse_integer_string),
        bits_allocated: us(found.bits_allocated),
        pixel_data_offset: pixel.map(|p| p.header.value_offset as u64),
        pixel_data_length: pixel.map(|p| (p.value_end - p.header.value_offset) as u64),
        encapsulated: pixel.is_some_and(|p| p.header.is_undefined()),
        fragments: pixel
            .filter(|p| p.header.is_undefined())
            .map(|p| p.fragments.saturating_sub(1)),
        dataset_offset: start as u64,
        size: 0,
        has_meta: false,
        deflated: false,
        digest: None,
        chunk_digests: Vec::new(),
    })
}

/// How a string value's padding is read, per VR, as pydicom reads it.
#[derive(Clone, Copy)]
enum Values {
    /// UI, CS, DA: padding stripped from the end of the whole value.
    Whole,
    /// LO, SH: padding stripped from each of several values.
    EachTrimmed,
    /// PN: as `Whole`, and empty trailing component groups (`=`) dropped from each name.
    PersonNames,
}

fn text(value: Option<&[u8]>, charset: Charset, values: Values) -> Option<String> {
    let v = trim_text(value?);
    if v.is_empty() {
        return None;
    }
    let decoded = charset.decode(v);
    let join = |f: &dyn Fn(&str) -> &str| decoded.split('\\').map(f).collect::<Vec<_>>().join("\\");
    let out = match values {
        Values::Whole => decoded,
        Values::EachTrimmed if decoded.contains('\\') => join(&|s| s.trim_end_matches([' ', '\0'])),
        Values::EachTrimmed => decoded,
        Values::PersonNames => join(&|s| s.trim_end_matches('=')),
    };
    (!out.is_empty()).then_some(out)
}

/// An IS value: a decimal integer, padded with spaces; `None` when it is not one.
fn parse_integer_string(value: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(trim_text(value)).ok()?.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    // A value such as "1.0" is read as the integer it names.
    let f = s.parse::<f64>().ok()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}
