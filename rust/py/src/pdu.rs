//! The DICOM Upper Layer PDU codec for the asyncio association layer: a
//! `PduDecoder` that turns bytes read from a socket into PDU objects, the PDU
//! classes (each with `encode()`), and `fragment_pdata` for DIMSE messages.
//! Errors in bytes from a peer raise `dicomrelay.errors.PduError`.

use dicomrelay_core::pdu as core;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::buf::ByteView;
use crate::error::pdu_error;
use crate::pdu_items::{encode_error, AssociateAc, AssociateRq};

/// Inputs shorter than this are handled without releasing the GIL: the
/// release costs more than the copy.
const DETACH_THRESHOLD: usize = 64 * 1024;

/// A-ASSOCIATE-RJ.
#[pyclass(frozen, eq, hash, module = "dicomrelay._native")]
#[derive(PartialEq, Eq, Hash)]
pub struct AssociateRj(core::AssociateRj);

#[pymethods]
impl AssociateRj {
    #[new]
    #[pyo3(signature = (*, result, source, reason))]
    fn new(result: u8, source: u8, reason: u8) -> Self {
        AssociateRj(core::AssociateRj {
            result,
            source,
            reason,
        })
    }
    #[getter]
    fn result(&self) -> u8 {
        self.0.result
    }
    #[getter]
    fn source(&self) -> u8 {
        self.0.source
    }
    #[getter]
    fn reason(&self) -> u8 {
        self.0.reason
    }
    fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.0.encode().map_err(encode_error)?;
        Ok(PyBytes::new(py, &bytes))
    }
    fn __repr__(&self) -> String {
        let rj = &self.0;
        format!(
            "AssociateRj(result={}, source={}, reason={})",
            rj.result, rj.source, rj.reason
        )
    }
}

/// A-ABORT.
#[pyclass(frozen, eq, hash, module = "dicomrelay._native")]
#[derive(PartialEq, Eq, Hash)]
pub struct Abort(core::Abort);

#[pymethods]
impl Abort {
    #[new]
    #[pyo3(signature = (*, source=0, reason=0))]
    fn new(source: u8, reason: u8) -> Self {
        Abort(core::Abort { source, reason })
    }
    #[getter]
    fn source(&self) -> u8 {
        self.0.source
    }
    #[getter]
    fn reason(&self) -> u8 {
        self.0.reason
    }
    fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.0.encode().map_err(encode_error)?;
        Ok(PyBytes::new(py, &bytes))
    }
    fn __repr__(&self) -> String {
        format!("Abort(source={}, reason={})", self.0.source, self.0.reason)
    }
}

/// A-RELEASE-RQ and A-RELEASE-RP: no fields, all instances equal.
macro_rules! release_pdu {
    ($ty:ident, $variant:ident) => {
        #[pyclass(frozen, eq, hash, module = "dicomrelay._native")]
        #[derive(PartialEq, Eq, Hash)]
        pub struct $ty;

        #[pymethods]
        impl $ty {
            #[new]
            fn new() -> Self {
                $ty
            }
            fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
                let bytes = core::Pdu::$variant.encode().map_err(encode_error)?;
                Ok(PyBytes::new(py, &bytes))
            }
            fn __repr__(&self) -> &'static str {
                concat!(stringify!($ty), "()")
            }
        }
    };
}

release_pdu!(ReleaseRq, ReleaseRq);
release_pdu!(ReleaseRp, ReleaseRp);

/// P-DATA-TF: `pdvs` is a tuple of `(context_id, is_command, is_last, data)`,
/// built once when decoded.
#[pyclass(frozen, module = "dicomrelay._native")]
pub struct PData {
    pdvs: Py<PyTuple>,
}

/// One PDV as Python gives it.
type PdvParts<'py> = (u8, bool, bool, Bound<'py, PyBytes>);

#[pymethods]
impl PData {
    #[new]
    #[pyo3(signature = (*, pdvs))]
    fn new(py: Python<'_>, pdvs: Vec<PdvParts<'_>>) -> PyResult<Self> {
        if pdvs.is_empty() {
            return Err(PyValueError::new_err(
                "a P-DATA-TF PDU needs at least one PDV",
            ));
        }
        // Normalised to tuples of exactly these types (a list in, tuples out).
        let pdvs = PyTuple::new(py, pdvs)?;
        Ok(PData {
            pdvs: pdvs.unbind(),
        })
    }

    #[getter]
    fn pdvs<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        self.pdvs.bind(py).clone()
    }

    /// The PDU's bytes, written straight into the `bytes` object returned.
    fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let pdvs: Vec<PdvParts<'py>> = self.pdvs.bind(py).extract()?;
        let body = pdvs.iter().try_fold(0usize, |n, (_, _, _, data)| {
            n.checked_add(6)?.checked_add(data.as_bytes().len())
        });
        let body = body
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| PyValueError::new_err("a P-DATA-TF PDU holds at most 4 GiB"))?;
        PyBytes::new_with(py, body as usize + 6, |out| {
            out[0] = core::pdu_type::P_DATA_TF;
            out[2..6].copy_from_slice(&body.to_be_bytes());
            let mut at = 6;
            for (context_id, is_command, is_last, data) in &pdvs {
                let data = data.as_bytes();
                let item_len = (data.len() + 2) as u32; // within the checked body
                out[at..at + 4].copy_from_slice(&item_len.to_be_bytes());
                out[at + 4] = *context_id;
                out[at + 5] = u8::from(*is_command) | u8::from(*is_last) << 1;
                out[at + 6..at + 6 + data.len()].copy_from_slice(data);
                at += 6 + data.len();
            }
            Ok(())
        })
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        match other.cast::<PData>() {
            Ok(other) => self.pdvs.bind(py).eq(other.get().pdvs.bind(py)),
            Err(_) => Ok(false),
        }
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.pdvs.bind(py).hash()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let parts: Vec<PdvParts<'_>> = self.pdvs.bind(py).extract()?;
        let shown: Vec<String> = parts
            .iter()
            .map(|(id, command, last, data)| {
                let flag = |b: &bool| if *b { "True" } else { "False" };
                format!(
                    "({id}, {}, {}, <{} bytes>)",
                    flag(command),
                    flag(last),
                    data.as_bytes().len()
                )
            })
            .collect();
        let comma = if shown.len() == 1 { "," } else { "" };
        Ok(format!("PData(pdvs=({}{comma}))", shown.join(", ")))
    }
}

/// A decoded PDU as its Python class.
fn to_python(py: Python<'_>, pdu: core::Pdu) -> PyResult<Bound<'_, PyAny>> {
    match pdu {
        core::Pdu::AssociateRq(rq) => AssociateRq(rq).into_bound_py_any(py),
        core::Pdu::AssociateAc(ac) => AssociateAc(ac).into_bound_py_any(py),
        core::Pdu::AssociateRj(rj) => AssociateRj(rj).into_bound_py_any(py),
        core::Pdu::PData(pdata) => {
            let pdvs = pdata.pdvs.into_iter().map(|pdv| {
                let data = PyBytes::new(py, &pdv.data);
                (pdv.context_id, pdv.is_command, pdv.is_last, data)
            });
            let pdvs = PyTuple::new(py, pdvs)?.unbind();
            PData { pdvs }.into_bound_py_any(py)
        }
        core::Pdu::ReleaseRq => ReleaseRq.into_bound_py_any(py),
        core::Pdu::ReleaseRp => ReleaseRp.into_bound_py_any(py),
        core::Pdu::Abort(abort) => Abort(abort).into_bound_py_any(py),
    }
}

/// A streaming decoder of the PDUs one peer sends.
#[pyclass(module = "dicomrelay._native")]
pub struct PduDecoder(core::PduDecoder);

#[pymethods]
impl PduDecoder {
    /// `max_pdu_length`: the Maximum Length this side advertised (0 = none).
    #[new]
    fn new(max_pdu_length: u32) -> Self {
        PduDecoder(core::PduDecoder::new(max_pdu_length))
    }

    /// Feed bytes read from the socket; returns the PDUs they complete, in
    /// order. Raises PduError on bytes that are not PDUs; the decoder then
    /// stays failed (the association must be aborted).
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let view = ByteView::new(data)?;
        let bytes = view.as_slice();
        let decoder = &mut self.0;
        let mut pdus = Vec::new();
        let result = if bytes.len() >= DETACH_THRESHOLD {
            py.detach(|| decoder.feed(bytes, &mut pdus))
        } else {
            decoder.feed(bytes, &mut pdus)
        };
        result.map_err(pdu_error)?;
        let out = PyList::empty(py);
        for pdu in pdus {
            out.append(to_python(py, pdu)?)?;
        }
        Ok(out)
    }

    #[getter]
    fn max_pdu_length(&self) -> u32 {
        self.0.max_pdu_length()
    }

    /// Bytes received of a PDU not yet complete: 0 at a PDU boundary (where
    /// a peer may close the connection without losing anything).
    #[getter]
    fn pending(&self) -> u64 {
        self.0.pending()
    }
}

/// Split a DIMSE message into P-DATA-TF PDUs of one PDV each, every one within
/// the peer's `max_pdu_length` (0 = no limit), returned back to back in one
/// `bytes`. Without `last`, the final fragment is not marked as the message's
/// last: the message goes on in a later call.
#[pyfunction]
#[pyo3(signature = (context_id, is_command, data, max_pdu_length, *, last=true))]
pub fn fragment_pdata<'py>(
    py: Python<'py>,
    context_id: u8,
    is_command: bool,
    data: &Bound<'py, PyAny>,
    max_pdu_length: u32,
    last: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let view = ByteView::new(data)?;
    let bytes = view.as_slice();
    let len = core::fragmented_len(bytes.len(), max_pdu_length, last).map_err(encode_error)?;
    PyBytes::new_with(py, len, |out| {
        let mut write =
            || core::fragment_pdata_into(context_id, is_command, bytes, max_pdu_length, last, out);
        // The new bytes object is not shared yet: filling it needs no GIL.
        let written = if bytes.len() >= DETACH_THRESHOLD {
            py.detach(write)
        } else {
            write()
        };
        written.map(drop).map_err(encode_error)
    })
}
