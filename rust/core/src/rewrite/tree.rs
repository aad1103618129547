//! The dataset as a tree of spans into the source bytes, built in one walk of
//! the scanner's own parser. Values are never copied into it: an element
//! holds where it lies, and only what an edit changes holds new bytes.

use crate::dataset::{walk_dataset, Element, Visit};
use crate::element::{Encoding, Header};
use crate::error::Result;
use crate::rewrite::edit::Vr;

/// Where an element lies in the source.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub header: Header,
    /// The end of its value (before the delimiter, for an undefined length).
    pub value_end: usize,
    /// The end of the element, its delimiter included.
    pub end: usize,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// The source's value, unchanged.
    Source,
    /// A value an edit gave it.
    Value(Vec<u8>),
    Sequence(Sequence),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub tag: u32,
    /// Where it came from; `None` for an element an edit added.
    pub source: Option<Span>,
    /// Its VR: the source's (explicit VR only) or the edit's.
    pub vr: Option<Vr>,
    pub body: Body,
    /// This element or something inside it changed: it must be encoded again.
    pub edited: bool,
}

#[derive(Debug, Clone)]
pub struct Sequence {
    pub items: Vec<Item>,
    /// How its items are encoded (implicit VR little endian in an
    /// undefined-length UN, else the dataset's encoding).
    pub inner: Encoding,
    pub undefined: bool,
}

#[derive(Debug, Clone)]
pub struct Item {
    /// The item's header and its end (its delimiter included); `None` if added.
    pub source: Option<(Header, usize)>,
    pub nodes: Vec<Node>,
    pub edited: bool,
}

impl Item {
    pub fn undefined(&self) -> bool {
        self.source.is_some_and(|(h, _)| h.is_undefined())
    }
}

impl Node {
    /// The element's current value, unless it is a sequence.
    pub fn value<'a>(&'a self, src: &'a [u8]) -> Option<&'a [u8]> {
        match (&self.body, &self.source) {
            (Body::Value(v), _) => Some(v),
            (Body::Source, Some(span)) => Some(&src[span.header.value_offset..span.value_end]),
            _ => None,
        }
    }

    pub fn is_sequence(&self) -> bool {
        matches!(self.body, Body::Sequence(_))
    }
}

/// The top-level dataset, and which of its elements is the pixel data.
pub struct Tree {
    pub nodes: Vec<Node>,
    /// The source offset of the first top-level (7FE0,0010), (7FE0,0008) or
    /// (7FE0,0009) element: its value is never copied or edited.
    pub pixel: Option<usize>,
}

pub const PIXEL_TAGS: [u32; 3] = [0x7FE0_0008, 0x7FE0_0009, 0x7FE0_0010];

enum Frame {
    Sequence(Encoding, Vec<Item>),
    Item(Header, Vec<Node>),
}

struct Builder {
    top: Vec<Node>,
    stack: Vec<Frame>,
    pixel: Option<usize>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Frame::Item(_, nodes)) => nodes.push(node),
            _ => self.top.push(node),
        }
    }
}

impl Visit for Builder {
    const NESTED: bool = true;

    fn element(&mut self, e: &Element, depth: usize) -> Result<()> {
        let header = e.header;
        let end = if header.is_undefined() {
            e.value_end + 8
        } else {
            e.value_end
        };
        let span = Span {
            header,
            value_end: e.value_end,
            end,
        };
        // Elements lie inside items, so a sequence frame on top is this element's own.
        let body = match self.stack.pop() {
            Some(Frame::Sequence(inner, items)) => Body::Sequence(Sequence {
                items,
                inner,
                undefined: header.is_undefined(),
            }),
            other => {
                self.stack.extend(other);
                if depth == 0 && self.pixel.is_none() && PIXEL_TAGS.contains(&header.tag) {
                    self.pixel = Some(header.offset);
                }
                Body::Source
            }
        };
        self.push(Node {
            tag: header.tag,
            source: Some(span),
            vr: header.vr,
            body,
            edited: false,
        });
        Ok(())
    }

    fn begin_sequence(&mut self, _seq: &Header, inner: Encoding, _depth: usize) -> Result<()> {
        self.stack.push(Frame::Sequence(inner, Vec::new()));
        Ok(())
    }

    fn begin_item(&mut self, item: &Header) -> Result<()> {
        self.stack.push(Frame::Item(*item, Vec::new()));
        Ok(())
    }

    fn end_item(&mut self, _item: &Header, end: usize) -> Result<()> {
        if let Some(Frame::Item(header, nodes)) = self.stack.pop() {
            if let Some(Frame::Sequence(_, items)) = self.stack.last_mut() {
                items.push(Item {
                    source: Some((header, end)),
                    nodes,
                    edited: false,
                });
            }
        }
        Ok(())
    }
}

/// Walk the dataset at `buf[start..]` with the scanner, into a tree.
pub fn build(buf: &[u8], start: usize, enc: Encoding) -> Result<Tree> {
    let mut builder = Builder {
        top: Vec::with_capacity(64),
        stack: Vec::new(),
        pixel: None,
    };
    walk_dataset(buf, start, enc, &mut builder)?;
    Ok(Tree {
        nodes: builder.top,
        pixel: builder.pixel,
    })
}
