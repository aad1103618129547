//! Applying one edit to the tree: values replaced, elements removed or added,
//! and every element an edit reaches (and each sequence and item around it)
//! marked to be encoded again. Nothing is written here.

use crate::charset::Charset;
use crate::dataset::MAX_DEPTH;
use crate::element::Encoding;
use crate::rewrite::edit::{encode, Edit, NewElement, NewValue, Target, Vr};
use crate::rewrite::error::{Result, RewriteError};
use crate::rewrite::tree::{Body, Item, Node, Sequence, Tree, PIXEL_TAGS};
use crate::rewrite::uids::{is_class_uid_tag, is_uid_tag, UidMap};

const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;

/// Apply `edit` to `tree`, whose source bytes are `src`, encoded as `enc`.
pub fn apply(tree: &mut Tree, edit: &Edit, src: &[u8], enc: Encoding) -> Result<()> {
    let target = Target {
        encoding: enc,
        charset: charset(&tree.nodes, src),
    };
    let pixel = tree.pixel;
    let is_pixel = |node: &Node| node.source.is_some_and(|s| Some(s.header.offset) == pixel);
    let nodes = &mut tree.nodes;
    match edit {
        Edit::Set { tag, value, vr } => {
            let tag = editable(*tag)?;
            if PIXEL_TAGS.contains(&tag) {
                return Err(pixel_data(tag));
            }
            let bytes = encode(tag, *vr, value, &target)?;
            match nodes.iter_mut().find(|n| n.tag == tag) {
                Some(node) => set_value(node, *vr, bytes)?,
                None => insert(nodes, new_node(tag, *vr, Body::Value(bytes))),
            }
        }
        Edit::Replace {
            tag,
            value,
            vr,
            everywhere,
        } => {
            let tag = editable(*tag)?;
            let bytes = encode(tag, *vr, value, &target)?;
            each_dataset(nodes, *everywhere, &mut |nodes| {
                let mut changed = false;
                for node in nodes.iter_mut().filter(|n| n.tag == tag) {
                    if is_pixel(node) {
                        return Err(pixel_data(tag));
                    }
                    set_value(node, *vr, bytes.clone())?;
                    changed = true;
                }
                Ok(changed)
            })?;
        }
        Edit::Empty { tag, everywhere } => {
            let tag = editable(*tag)?;
            each_dataset(nodes, *everywhere, &mut |nodes| {
                let mut changed = false;
                for node in nodes.iter_mut().filter(|n| n.tag == tag) {
                    if is_pixel(node) {
                        return Err(pixel_data(tag));
                    }
                    match &mut node.body {
                        Body::Sequence(seq) => seq.items.clear(),
                        body => *body = Body::Value(Vec::new()),
                    }
                    node.edited = true;
                    changed = true;
                }
                Ok(changed)
            })?;
        }
        Edit::Remove {
            tag,
            mask,
            everywhere,
        } => {
            let wanted = tag & mask;
            each_dataset(nodes, *everywhere, &mut |nodes| {
                if let Some(node) = nodes.iter().find(|n| n.tag & mask == wanted && is_pixel(n)) {
                    return Err(pixel_data(node.tag));
                }
                let before = nodes.len();
                nodes.retain(|n| n.tag & mask != wanted);
                Ok(nodes.len() != before)
            })?;
        }
        Edit::RemovePrivate { keep, everywhere } => {
            each_dataset(nodes, *everywhere, &mut |nodes| {
                let before = nodes.len();
                nodes.retain(|n| n.tag & 0x0001_0000 == 0 || keep.binary_search(&n.tag).is_ok());
                Ok(nodes.len() != before)
            })?;
        }
        Edit::RemapUids {
            tags,
            key,
            everywhere,
        } => {
            let map = UidMap::new(key);
            let tags = tags.as_deref();
            each_dataset(nodes, *everywhere, &mut |nodes| {
                let mut changed = false;
                for node in nodes.iter_mut().filter(|n| holds_uids(n, tags)) {
                    let Some(old) = node.value(src).filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    node.body = Body::Value(map.remap_value(old));
                    node.edited = true;
                    changed = true;
                }
                Ok(changed)
            })?;
        }
        Edit::AddItem { sequence, elements } => {
            let tag = editable(*sequence)?;
            match nodes.iter_mut().find(|n| n.tag == tag) {
                Some(node) => {
                    let Body::Sequence(seq) = &mut node.body else {
                        return Err(RewriteError::edit(
                            tag,
                            "AddItem on an element that is not a sequence",
                        ));
                    };
                    let target = Target {
                        encoding: seq.inner,
                        ..target
                    };
                    seq.items.push(new_item(elements, &target, 1)?);
                    node.edited = true;
                }
                None => {
                    let item = new_item(elements, &target, 1)?;
                    let body = Body::Sequence(Sequence {
                        items: vec![item],
                        inner: enc,
                        undefined: false,
                    });
                    insert(nodes, new_node(tag, *b"SQ", body));
                }
            }
        }
    }
    Ok(())
}

/// Apply `f` to a dataset and, with `everywhere`, to every item of every
/// sequence in it, however deep; marks what changed on the way back up.
fn each_dataset(
    nodes: &mut Vec<Node>,
    everywhere: bool,
    f: &mut impl FnMut(&mut Vec<Node>) -> Result<bool>,
) -> Result<bool> {
    let mut changed = f(nodes)?;
    if !everywhere {
        return Ok(changed);
    }
    for node in nodes.iter_mut() {
        let Body::Sequence(seq) = &mut node.body else {
            continue;
        };
        let mut inside = false;
        for item in &mut seq.items {
            if each_dataset(&mut item.nodes, true, f)? {
                item.edited = true;
                inside = true;
            }
        }
        if inside {
            node.edited = true;
            changed = true;
        }
    }
    Ok(changed)
}

/// Is `node` a UI element `RemapUids` remaps? Explicit VR says so; in implicit
/// VR (and for a value of VR UN) a listed tag is taken as one, and without a
/// list the dictionary decides.
fn holds_uids(node: &Node, tags: Option<&[u32]>) -> bool {
    if node.is_sequence() {
        return false;
    }
    let selected = match tags {
        Some(tags) => tags.binary_search(&node.tag).is_ok(),
        None => !is_class_uid_tag(node.tag),
    };
    selected
        && match node.vr {
            Some(vr) if vr != *b"UN" => vr == *b"UI",
            _ => tags.is_some() || is_uid_tag(node.tag),
        }
}

/// The repertoire of the top-level (0008,0005), as it stands.
fn charset(nodes: &[Node], src: &[u8]) -> Charset {
    nodes
        .iter()
        .find(|n| n.tag == SPECIFIC_CHARACTER_SET)
        .and_then(|n| n.value(src))
        .map_or(Charset::Latin1, Charset::from_value)
}

/// Tags an edit may name: the file meta group is the writer's, and item tags
/// are not elements.
fn editable(tag: u32) -> Result<u32> {
    match tag >> 16 {
        0x0002 => Err(RewriteError::edit(
            tag,
            "the file meta group is not edited (0002,0003 follows 0008,0018)",
        )),
        0xFFFE => Err(RewriteError::edit(
            tag,
            "an item or delimiter tag is not an element",
        )),
        _ => Ok(tag),
    }
}

#[cold]
fn pixel_data(tag: u32) -> RewriteError {
    RewriteError::edit(tag, "the pixel data is never edited")
}

fn set_value(node: &mut Node, vr: Vr, bytes: Vec<u8>) -> Result<()> {
    if node.is_sequence() {
        return Err(RewriteError::edit(
            node.tag,
            "the element is a sequence: a value cannot be set on it",
        ));
    }
    node.body = Body::Value(bytes);
    node.vr = Some(vr);
    node.edited = true;
    Ok(())
}

fn new_node(tag: u32, vr: Vr, body: Body) -> Node {
    Node {
        tag,
        source: None,
        vr: Some(vr),
        body,
        edited: true,
    }
}

/// Insert in tag order: before the first element with a greater tag.
fn insert(nodes: &mut Vec<Node>, node: Node) {
    let at = nodes
        .iter()
        .position(|n| n.tag > node.tag)
        .unwrap_or(nodes.len());
    nodes.insert(at, node);
}

/// An item made of `elements` (nested sequences included), its elements in
/// tag order; `depth` is capped as the scanner caps what it reads.
fn new_item(elements: &[NewElement], target: &Target, depth: usize) -> Result<Item> {
    let mut nodes = Vec::with_capacity(elements.len());
    for e in elements {
        let tag = editable(e.tag)?;
        let body = match &e.value {
            NewValue::Value(value) => Body::Value(encode(tag, e.vr, value, target)?),
            NewValue::Items(items) if e.vr == *b"SQ" => {
                if depth >= MAX_DEPTH {
                    return Err(RewriteError::edit(
                        tag,
                        format!("items nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
                let items = items
                    .iter()
                    .map(|item| new_item(item, target, depth + 1))
                    .collect::<Result<Vec<_>>>()?;
                Body::Sequence(Sequence {
                    items,
                    inner: target.encoding,
                    undefined: false,
                })
            }
            NewValue::Items(_) => {
                return Err(RewriteError::edit(
                    tag,
                    format!(
                        "items given for VR {}: only SQ holds items",
                        String::from_utf8_lossy(&e.vr)
                    ),
                ))
            }
        };
        nodes.push(new_node(tag, e.vr, body));
    }
    nodes.sort_by_key(|n| n.tag);
    if let Some(pair) = nodes.windows(2).find(|w| w[0].tag == w[1].tag) {
        return Err(RewriteError::edit(
            pair[0].tag,
            "the same element twice in one item",
        ));
    }
    Ok(Item {
        source: None,
        nodes,
        edited: true,
    })
}
