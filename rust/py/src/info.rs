//! `InstanceInfo`: an immutable Python view of what the scanner found.

use dicomrelay_core::InstanceInfo as CoreInfo;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::IntoPyObjectExt;

#[pyclass(frozen, eq, hash, module = "dicomrelay", name = "InstanceInfo")]
#[derive(PartialEq, Eq, Hash)]
pub struct InstanceInfo(pub CoreInfo);

/// One `#[pymethods]` block: a getter per listed field (handed out as Python
/// gives it back: str, int, bool or None), then the methods written out below.
macro_rules! instance_info_methods {
    ({ $($name:ident: $ty:ty),* $(,)? } { $($methods:tt)* }) => {
        #[pymethods]
        impl InstanceInfo {
            $(
                #[getter]
                fn $name(&self) -> $ty {
                    self.0.$name.clone()
                }
            )*

            /// Every attribute in a plain dict (for JSON, logs and tables).
            fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let dict = PyDict::new(py);
                $(dict.set_item(stringify!($name), self.0.$name.clone().into_bound_py_any(py)?)?;)*
                dict.set_item("chunk_digests", self.chunk_digests(py)?)?;
                Ok(dict)
            }

            #[classattr]
            fn __match_args__(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
                PyTuple::new(py, [$(stringify!($name),)* "chunk_digests"])
            }

            $($methods)*
        }
    };
}

instance_info_methods!({
    sop_class_uid: Option<String>,
    sop_instance_uid: Option<String>,
    study_instance_uid: Option<String>,
    series_instance_uid: Option<String>,
    patient_id: Option<String>,
    issuer_of_patient_id: Option<String>,
    patient_name: Option<String>,
    accession_number: Option<String>,
    modality: Option<String>,
    study_date: Option<String>,
    specific_character_set: Option<String>,
    transfer_syntax_uid: Option<String>,
    rows: Option<u16>,
    columns: Option<u16>,
    number_of_frames: Option<i64>,
    bits_allocated: Option<u16>,
    pixel_data_offset: Option<u64>,
    pixel_data_length: Option<u64>,
    encapsulated: bool,
    fragments: Option<u32>,
    dataset_offset: u64,
    size: u64,
    has_meta: bool,
    deflated: bool,
    digest: Option<String>,
} {
    /// Chunk digests in order, empty unless a chunk size was given.
    #[getter]
    fn chunk_digests<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.chunk_digests)
    }

    fn __repr__(&self) -> String {
        fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
            v.as_ref().map_or("None".to_owned(), |v| format!("{v:?}"))
        }
        format!(
            "InstanceInfo(sop_instance_uid={}, modality={}, transfer_syntax_uid={}, rows={}, columns={}, pixel_data_length={})",
            show(&self.0.sop_instance_uid),
            show(&self.0.modality),
            show(&self.0.transfer_syntax_uid),
            show(&self.0.rows),
            show(&self.0.columns),
            show(&self.0.pixel_data_length),
        )
    }
});
