//! Header rewriting: a list of edits applied to a Part 10 instance, in every
//! encoding the scanner reads, without copying the pixel data.
//!
//! The scanner's own walk builds a tree of spans into the input; the edits
//! change the tree; the writer encodes it again, copying what no edit touched
//! as it lay and recomputing every length around what one did. The output is
//! the new header, then the input's pixel data value (by offset and length,
//! for the caller to stream), then a trailer (the elements after the pixel
//! data, usually none). A deflated dataset is inflated, edited and deflated
//! again, all of it in the header.

pub mod apply;
pub mod edit;
pub mod error;
pub mod tree;
pub mod uids;
pub mod write;

use crate::digest::{to_hex, DigestAlgorithm};
use crate::element::{Encoding, Header};
use crate::error::{ErrorKind, ScanError};
use crate::scan::{inflate, layout, DEFAULT_MAX_INFLATED};
use crate::syntax::check_vr_axis;

pub use edit::{Edit, NewElement, NewValue, Value, Vr};
pub use error::{Result, RewriteError};

use tree::Tree;
use write::{Output, Writer};

const MEDIA_STORAGE_SOP_INSTANCE_UID: u32 = 0x0002_0003;
const META_GROUP_LENGTH: u32 = 0x0002_0000;
const SOP_INSTANCE_UID: u32 = 0x0008_0018;

/// The rewritten instance: `header`, then the input's bytes
/// `pixel_offset..pixel_offset + pixel_length`, then `trailer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub header: Vec<u8>,
    pub pixel_offset: usize,
    pub pixel_length: usize,
    pub trailer: Vec<u8>,
    /// Hex digest of the whole output, when one was asked for.
    pub digest: Option<String>,
}

impl Rewritten {
    /// The whole output, for tests and small instances (this copies the pixel
    /// data); `None` if `input` is not long enough to be the one rewritten.
    pub fn to_vec(&self, input: &[u8]) -> Option<Vec<u8>> {
        let pixels =
            input.get(self.pixel_offset..self.pixel_offset.checked_add(self.pixel_length)?)?;
        Some([self.header.as_slice(), pixels, &self.trailer].concat())
    }
}

/// Apply `edits`, in order, to the Part 10 instance (or bare dataset) `data`.
pub fn rewrite(data: &[u8], edits: &[Edit], digest: Option<DigestAlgorithm>) -> Result<Rewritten> {
    let mut meta: Vec<(Header, usize)> = Vec::with_capacity(8);
    let layout = layout(data, &mut |h, end| meta.push((*h, end)))?;
    let enc = layout.syntax.encoding;
    let inflated;
    let (buf, start) = if layout.syntax.deflated {
        inflated = inflate(data, layout.dataset_start, DEFAULT_MAX_INFLATED)?;
        (inflated.as_slice(), 0)
    } else {
        (data, layout.dataset_start)
    };
    check_vr_axis(buf, start, enc)?;
    let mut tree = tree::build(buf, start, enc)?;
    refuse_meta_elements(&tree)?;
    for edit in edits {
        apply::apply(&mut tree, edit, buf, enc)?;
    }

    let header_size = tree.pixel.unwrap_or(buf.len()).min(buf.len());
    let mut out = Output::with_capacity(layout.dataset_start + header_size + 256);
    out.write(&data[..layout.meta_start]);
    write_meta(&mut out, data, &meta, new_sop_instance_uid(&tree, buf))?;

    let mut rewritten = if layout.syntax.deflated {
        let mut writer = Writer {
            src: buf,
            out: Output::with_capacity(buf.len() + 256),
            skip: None,
        };
        writer.write_nodes(&tree.nodes, enc)?;
        let mut deflated = miniz_oxide::deflate::compress_to_vec(&writer.out.header, 6);
        // Part 10 streams are of even length (PS3.10 7.1).
        if deflated.len() % 2 == 1 {
            deflated.push(0);
        }
        out.header.extend_from_slice(&deflated);
        Rewritten {
            header: out.header,
            pixel_offset: 0,
            pixel_length: 0,
            trailer: Vec::new(),
            digest: None,
        }
    } else {
        let mut writer = Writer {
            src: buf,
            out,
            skip: tree.pixel,
        };
        writer.write_nodes(&tree.nodes, enc)?;
        let out = writer.out;
        let (pixel_offset, end) = out.skipped.unwrap_or((0, 0));
        Rewritten {
            header: out.header,
            pixel_offset,
            pixel_length: end - pixel_offset,
            trailer: out.trailer,
            digest: None,
        }
    };
    if let Some(algorithm) = digest {
        let mut hasher = algorithm.hasher();
        hasher.update(&rewritten.header);
        hasher
            .update(&data[rewritten.pixel_offset..rewritten.pixel_offset + rewritten.pixel_length]);
        hasher.update(&rewritten.trailer);
        rewritten.digest = Some(to_hex(&hasher.finish()));
    }
    Ok(rewritten)
}

/// A file meta element (group 0002) after the dataset began is malformed
/// (PS3.10 7.1), and an edit that removed what lies before it would turn it
/// into the output's meta group: refused.
fn refuse_meta_elements(tree: &Tree) -> Result<()> {
    match tree.nodes.iter().find(|n| n.tag >> 16 == 0x0002) {
        Some(node) => Err(RewriteError::Parse(ScanError::new(
            ErrorKind::BadMeta,
            node.source.map_or(0, |s| s.header.offset),
            Some(node.tag),
            "a file meta group element inside the dataset",
        ))),
        None => Ok(()),
    }
}

/// The top-level (0008,0018) an edit gave a new value, which the meta
/// group's (0002,0003) then follows.
fn new_sop_instance_uid<'a>(tree: &'a Tree, src: &'a [u8]) -> Option<&'a [u8]> {
    tree.nodes
        .iter()
        .find(|n| n.tag == SOP_INSTANCE_UID && n.edited)
        .and_then(|n| n.value(src))
        .filter(|v| !v.is_empty())
}

/// The file meta group (always explicit VR little endian) as it was, its
/// (0002,0003) following a new SOP Instance UID, its group length recomputed.
fn write_meta(
    out: &mut Output,
    data: &[u8],
    meta: &[(Header, usize)],
    sop_instance_uid: Option<&[u8]>,
) -> Result<()> {
    let mut group_length_at = None;
    for &(header, end) in meta {
        match (header.tag, sop_instance_uid) {
            (MEDIA_STORAGE_SOP_INSTANCE_UID, Some(uid)) => {
                let len = u16::try_from(uid.len())
                    .map_err(|_| RewriteError::edit(SOP_INSTANCE_UID, "UID too long"))?;
                out.write(&[0x02, 0x00, 0x03, 0x00, b'U', b'I']);
                out.write(&len.to_le_bytes());
                out.write(uid);
            }
            _ => out.write(&data[header.offset..end]),
        }
        if header.tag == META_GROUP_LENGTH && end - header.value_offset == 4 {
            group_length_at = Some(out.pos() - 4);
        }
    }
    if let Some(at) = group_length_at {
        out.patch_length(
            at,
            at + 4,
            Encoding::EXPLICIT_LE.little_endian,
            META_GROUP_LENGTH,
        )?;
    }
    Ok(())
}
