//! Encoding the tree again: untouched elements, items and sequences copied as
//! they lie in the source; edited ones encoded with lengths recomputed; group
//! lengths recomputed; the pixel data's value skipped, never copied.

use crate::element::{
    has_long_length, Encoding, ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER, UNDEFINED_LENGTH,
};
use crate::rewrite::edit::Vr;
use crate::rewrite::error::{Result, RewriteError};
use crate::rewrite::tree::{Body, Item, Node, Sequence};

/// The bytes written: the header, then (once the pixel data's value has been
/// skipped) the trailer. Positions count the skipped bytes, so a group length
/// around the pixel data comes out right.
#[derive(Default)]
pub struct Output {
    pub header: Vec<u8>,
    pub trailer: Vec<u8>,
    /// The source range of the skipped pixel data value.
    pub skipped: Option<(usize, usize)>,
}

impl Output {
    pub fn with_capacity(n: usize) -> Self {
        Output {
            header: Vec::with_capacity(n),
            ..Output::default()
        }
    }

    fn skipped_len(&self) -> usize {
        self.skipped.map_or(0, |(start, end)| end - start)
    }

    pub fn pos(&self) -> usize {
        self.header.len() + self.skipped_len() + self.trailer.len()
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.skipped.is_some() {
            self.trailer.extend_from_slice(bytes);
        } else {
            self.header.extend_from_slice(bytes);
        }
    }

    /// Overwrite the four bytes written at `at`.
    pub fn patch(&mut self, at: usize, bytes: [u8; 4]) {
        let (buf, at) = if at < self.header.len() {
            (&mut self.header, at)
        } else {
            let skipped = self.header.len() + self.skipped_len();
            (&mut self.trailer, at - skipped)
        };
        if let Some(slot) = buf.get_mut(at..at + 4) {
            slot.copy_from_slice(&bytes);
        }
    }

    /// Patch the 32-bit length at `at` to the bytes written since `start`.
    pub fn patch_length(&mut self, at: usize, start: usize, little: bool, tag: u32) -> Result<()> {
        let len = self.pos() - start;
        let len = u32::try_from(len)
            .ok()
            .filter(|&n| n != UNDEFINED_LENGTH)
            .ok_or_else(|| {
                RewriteError::edit(tag, format!("{len} bytes do not fit a 32-bit length"))
            })?;
        self.patch(at, u32_bytes(len, little));
        Ok(())
    }
}

fn u16_bytes(v: u16, little: bool) -> [u8; 2] {
    if little {
        v.to_le_bytes()
    } else {
        v.to_be_bytes()
    }
}

fn u32_bytes(v: u32, little: bool) -> [u8; 4] {
    if little {
        v.to_le_bytes()
    } else {
        v.to_be_bytes()
    }
}

/// Writes a dataset's nodes, reading unchanged bytes from `src`.
pub struct Writer<'a> {
    pub src: &'a [u8],
    pub out: Output,
    /// The source offset of the pixel data element whose value is skipped.
    pub skip: Option<usize>,
}

impl Writer<'_> {
    /// Write a dataset (the top level, or an item's), recomputing the group
    /// length elements (gggg,0000) it holds.
    pub fn write_nodes(&mut self, nodes: &[Node], enc: Encoding) -> Result<()> {
        let mut group: Option<(u32, usize)> = None;
        for node in nodes {
            if let Some((g, at)) = group.filter(|&(g, _)| g != node.tag >> 16) {
                self.out
                    .patch_length(at, at + 4, enc.little_endian, g << 16)?;
                group = None;
            }
            self.write_node(node, enc)?;
            if node.tag & 0xFFFF == 0 && node.value(self.src).is_some_and(|v| v.len() == 4) {
                group = Some((node.tag >> 16, self.out.pos() - 4));
            }
        }
        if let Some((g, at)) = group {
            self.out
                .patch_length(at, at + 4, enc.little_endian, g << 16)?;
        }
        Ok(())
    }

    fn write_node(&mut self, node: &Node, enc: Encoding) -> Result<()> {
        let unchanged = !node.edited || matches!(node.body, Body::Source);
        if let Some(span) = node.source.filter(|_| unchanged) {
            let (start, value) = (span.header.offset, span.header.value_offset);
            if self.skip == Some(start) && self.out.skipped.is_none() {
                self.out.write(&self.src[start..value]);
                self.out.skipped = Some((value, span.end));
            } else {
                self.out.write(&self.src[start..span.end]);
            }
            return Ok(());
        }
        match &node.body {
            Body::Sequence(seq) => self.write_sequence(node, seq, enc),
            body => {
                let value = match body {
                    Body::Value(v) => v.as_slice(),
                    _ => &[],
                };
                let len = u32::try_from(value.len())
                    .map_err(|_| RewriteError::edit(node.tag, "value too long"))?;
                self.element_header(node.tag, node.vr, len, enc)?;
                self.out.write(value);
                Ok(())
            }
        }
    }

    fn write_sequence(&mut self, node: &Node, seq: &Sequence, enc: Encoding) -> Result<()> {
        let little = enc.little_endian;
        if seq.undefined {
            self.element_header(node.tag, node.vr, UNDEFINED_LENGTH, enc)?;
            for item in &seq.items {
                self.write_item(item, seq.inner)?;
            }
            self.delimiter(SEQUENCE_DELIMITER, seq.inner);
            return Ok(());
        }
        // A sequence's length is always the last four bytes of its header.
        self.element_header(node.tag, node.vr.or(Some(*b"SQ")), 0, enc)?;
        let (at, start) = (self.out.pos() - 4, self.out.pos());
        for item in &seq.items {
            self.write_item(item, seq.inner)?;
        }
        self.out.patch_length(at, start, little, node.tag)
    }

    fn write_item(&mut self, item: &Item, enc: Encoding) -> Result<()> {
        if let Some((header, end)) = item.source.filter(|_| !item.edited) {
            self.out.write(&self.src[header.offset..end]);
            return Ok(());
        }
        let little = enc.little_endian;
        self.tag(ITEM, enc);
        if item.undefined() {
            self.out.write(&u32_bytes(UNDEFINED_LENGTH, little));
            self.write_nodes(&item.nodes, enc)?;
            self.delimiter(ITEM_DELIMITER, enc);
            return Ok(());
        }
        self.out.write(&[0; 4]);
        let (at, start) = (self.out.pos() - 4, self.out.pos());
        self.write_nodes(&item.nodes, enc)?;
        self.out.patch_length(at, start, little, ITEM)
    }

    fn tag(&mut self, tag: u32, enc: Encoding) {
        let little = enc.little_endian;
        self.out.write(&u16_bytes((tag >> 16) as u16, little));
        self.out.write(&u16_bytes(tag as u16, little));
    }

    fn delimiter(&mut self, tag: u32, enc: Encoding) {
        self.tag(tag, enc);
        self.out.write(&[0; 4]);
    }

    /// Tag, VR (explicit encodings) and length, in the encoding's byte order.
    fn element_header(&mut self, tag: u32, vr: Option<Vr>, len: u32, enc: Encoding) -> Result<()> {
        let little = enc.little_endian;
        self.tag(tag, enc);
        if !enc.explicit_vr {
            self.out.write(&u32_bytes(len, little));
            return Ok(());
        }
        let vr = vr.unwrap_or(*b"UN");
        self.out.write(&vr);
        if has_long_length(vr) {
            self.out.write(&[0, 0]);
            self.out.write(&u32_bytes(len, little));
            return Ok(());
        }
        let short = u16::try_from(len).map_err(|_| {
            RewriteError::edit(
                tag,
                format!(
                    "a value of {len} bytes is too long for VR {}",
                    String::from_utf8_lossy(&vr)
                ),
            )
        })?;
        self.out.write(&u16_bytes(short, little));
        Ok(())
    }
}
