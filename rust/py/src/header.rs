//! `header_values` / `header_values_file`: the text of chosen top-level
//! elements and the private creators, for decisions made in Python.

use std::collections::HashMap;
use std::path::PathBuf;

use dicomrelay_core::header_values::{header_values as core_header_values, HeaderValues};
use pyo3::prelude::*;

use crate::buf::{ByteView, MappedFile};
use crate::error::{parse_error, Failure};

type Values = (HashMap<u32, String>, HashMap<u32, String>);

fn to_maps(v: HeaderValues) -> Values {
    (
        v.values.into_iter().collect(),
        v.private_creators.into_iter().collect(),
    )
}

#[pyfunction]
pub fn header_values(py: Python<'_>, data: &Bound<'_, PyAny>, tags: Vec<u32>) -> PyResult<Values> {
    let view = ByteView::new(data)?;
    let bytes = view.as_slice();
    let result = py.detach(|| core_header_values(bytes, &tags));
    result.map(to_maps).map_err(parse_error)
}

#[pyfunction]
pub fn header_values_file(py: Python<'_>, path: PathBuf, tags: Vec<u32>) -> PyResult<Values> {
    let result = py.detach(|| -> Result<HeaderValues, Failure> {
        let file = MappedFile::open(&path).map_err(|e| Failure::Io(e, path.clone()))?;
        Ok(core_header_values(file.as_slice(), &tags)?)
    });
    result.map(to_maps).map_err(PyErr::from)
}
