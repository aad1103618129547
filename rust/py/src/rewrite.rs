//! `rewrite` and `rewrite_file`: edits as `dicomrelay.rewrite` hands them over
//! (each dataclass's `_op` tuple), the rewrite run with the GIL released.

use std::path::PathBuf;

use dicomrelay_core::rewrite::{
    self, Edit, NewElement, NewValue, RewriteError as CoreRewriteError, Rewritten, Value, Vr,
};
use dicomrelay_core::DigestAlgorithm;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::buf::{ByteView, MappedFile};
use crate::error::{rewrite_error, Failure};

/// `(header, pixel_offset, pixel_length, trailer, digest)`.
type Output<'py> = (
    Bound<'py, PyBytes>,
    usize,
    usize,
    Bound<'py, PyBytes>,
    Option<String>,
);

fn algorithm(digest: Option<&str>) -> PyResult<Option<DigestAlgorithm>> {
    digest
        .map(|name| {
            DigestAlgorithm::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("digest must be 'sha256' or 'blake3', not {name:?}"))
            })
        })
        .transpose()
}

fn output(py: Python<'_>, r: Rewritten) -> Output<'_> {
    (
        PyBytes::new(py, &r.header),
        r.pixel_offset,
        r.pixel_length,
        PyBytes::new(py, &r.trailer),
        r.digest,
    )
}

#[pyfunction]
#[pyo3(name = "rewrite", signature = (data, ops, *, digest=None))]
pub fn rewrite_bytes<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    ops: &Bound<'py, PyAny>,
    digest: Option<&str>,
) -> PyResult<Output<'py>> {
    let algorithm = algorithm(digest)?;
    let edits = edits(ops)?;
    let view = ByteView::new(data)?;
    let bytes = view.as_slice();
    let result = py.detach(|| rewrite::rewrite(bytes, &edits, algorithm));
    result.map(|r| output(py, r)).map_err(rewrite_error)
}

/// The rewrite of the file at `path`, mapped rather than read.
#[pyfunction]
#[pyo3(name = "rewrite_file", signature = (path, ops, *, digest=None))]
pub fn rewrite_path<'py>(
    py: Python<'py>,
    path: PathBuf,
    ops: &Bound<'py, PyAny>,
    digest: Option<&str>,
) -> PyResult<Output<'py>> {
    let algorithm = algorithm(digest)?;
    let edits = edits(ops)?;
    let result = py.detach(|| {
        let file = MappedFile::open(&path).map_err(|e| Failure::Io(e, path.clone()))?;
        rewrite::rewrite(file.as_slice(), &edits, algorithm).map_err(Failure::Rewrite)
    });
    result.map(|r| output(py, r)).map_err(PyErr::from)
}

fn edits(ops: &Bound<'_, PyAny>) -> PyResult<Vec<Edit>> {
    ops.try_iter()?.map(|op| edit(&op?)).collect()
}

/// One `_op` tuple: its kind, then the fields in the order the dataclass lists them.
fn edit(op: &Bound<'_, PyAny>) -> PyResult<Edit> {
    let op = op.cast::<PyTuple>()?;
    let kind: String = op.get_item(0)?.extract()?;
    let field = |n: usize| op.get_item(n);
    Ok(match kind.as_str() {
        "set" => Edit::Set {
            tag: field(1)?.extract()?,
            vr: vr(&field(2)?)?,
            value: value(&field(3)?)?,
        },
        "replace" => Edit::Replace {
            tag: field(1)?.extract()?,
            vr: vr(&field(2)?)?,
            value: value(&field(3)?)?,
            everywhere: field(4)?.extract()?,
        },
        "empty" => Edit::Empty {
            tag: field(1)?.extract()?,
            everywhere: field(2)?.extract()?,
        },
        "remove" => Edit::Remove {
            tag: field(1)?.extract()?,
            mask: field(2)?.extract()?,
            everywhere: field(3)?.extract()?,
        },
        "remove_private" => Edit::RemovePrivate {
            keep: sorted(field(1)?.extract()?),
            everywhere: field(2)?.extract()?,
        },
        "remap_uids" => Edit::RemapUids {
            tags: field(1)?.extract::<Option<Vec<u32>>>()?.map(sorted),
            key: field(2)?.extract()?,
            everywhere: field(3)?.extract()?,
        },
        "add_item" => Edit::AddItem {
            sequence: field(1)?.extract()?,
            elements: new_elements(&field(2)?, 0)?,
        },
        other => return Err(PyValueError::new_err(format!("unknown edit {other:?}"))),
    })
}

fn sorted(mut tags: Vec<u32>) -> Vec<u32> {
    tags.sort_unstable();
    tags
}

fn vr(obj: &Bound<'_, PyAny>) -> PyResult<Vr> {
    let s = obj.cast::<PyString>()?;
    match s.to_str()?.as_bytes() {
        &[a, b] => Ok([a, b]),
        _ => Err(PyValueError::new_err(format!(
            "a VR is two letters, not {s}"
        ))),
    }
}

fn value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Text(s.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "a value is bytes or str, not {}",
        obj.get_type().name()?
    )))
}

/// `(tag, vr, value)` elements; a value of VR SQ is a tuple of items. The
/// depth is checked by the core too; this bound only keeps the recursion here
/// from following a pathologically nested argument.
fn new_elements(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Vec<NewElement>> {
    let mut out = Vec::new();
    for element in obj.try_iter()? {
        let element = element?;
        let (tag, vr_obj, value_obj): (u32, Bound<'_, PyAny>, Bound<'_, PyAny>) =
            element.extract()?;
        let vr = vr(&vr_obj)?;
        let value = if value_obj.is_instance_of::<PyTuple>() {
            if depth >= dicomrelay_core::dataset::MAX_DEPTH {
                return Err(rewrite_error(CoreRewriteError::edit(
                    tag,
                    "items nested too deeply",
                )));
            }
            let items = value_obj
                .try_iter()?
                .map(|item| new_elements(&item?, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            NewValue::Items(items)
        } else {
            NewValue::Value(value(&value_obj)?)
        };
        out.push(NewElement { tag, vr, value });
    }
    Ok(out)
}
