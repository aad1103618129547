//! The A-ASSOCIATE-RQ/-AC classes and their items, as immutable Python
//! objects over the core types. Constructors take keyword arguments; an
//! association PDU is checked when it is built (it must encode), so a bad
//! AE title or UID fails where it is written, with a ValueError.

use dicomrelay_core::pdu as core;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

fn tuple_of<'py, T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>>>(
    py: Python<'py>,
    items: impl IntoIterator<Item = T>,
) -> PyResult<Bound<'py, PyTuple>> {
    let objects = items
        .into_iter()
        .map(|item| Bound::new(py, item))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, objects)
}

/// Encode to check a PDU built from Python: a ValueError names what is wrong.
fn checked<T>(value: T, encode: impl FnOnce(&T) -> core::Result<Vec<u8>>) -> PyResult<T> {
    encode(&value).map_err(|e| PyValueError::new_err(e.detail.into_owned()))?;
    Ok(value)
}

pub fn encode_error(e: core::PduError) -> PyErr {
    PyValueError::new_err(e.detail.into_owned())
}

/// A string as Python's repr() writes it (single quotes).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.escape_debug().to_string().replace("\\\"", "\""))
}

fn quote_all(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    match quoted.len() {
        1 => format!("({},)", quoted[0]),
        _ => format!("({})", quoted.join(", ")),
    }
}

fn quote_opt(s: Option<&String>) -> String {
    s.map_or("None".to_owned(), |s| quote(s))
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PresentationContextRq(pub core::PresentationContextRq);

#[pymethods]
impl PresentationContextRq {
    #[new]
    #[pyo3(signature = (*, context_id, abstract_syntax, transfer_syntaxes))]
    fn new(context_id: u8, abstract_syntax: String, transfer_syntaxes: Vec<String>) -> Self {
        PresentationContextRq(core::PresentationContextRq {
            context_id,
            abstract_syntax,
            transfer_syntaxes,
        })
    }
    #[getter]
    fn context_id(&self) -> u8 {
        self.0.context_id
    }
    #[getter]
    fn abstract_syntax(&self) -> &str {
        &self.0.abstract_syntax
    }
    #[getter]
    fn transfer_syntaxes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.transfer_syntaxes)
    }
    fn __repr__(&self) -> String {
        let pc = &self.0;
        format!(
            "PresentationContextRq(context_id={}, abstract_syntax={}, transfer_syntaxes={})",
            pc.context_id,
            quote(&pc.abstract_syntax),
            quote_all(&pc.transfer_syntaxes)
        )
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PresentationContextAc(pub core::PresentationContextAc);

#[pymethods]
impl PresentationContextAc {
    #[new]
    #[pyo3(signature = (*, context_id, result, transfer_syntax=None))]
    fn new(context_id: u8, result: u8, transfer_syntax: Option<String>) -> Self {
        PresentationContextAc(core::PresentationContextAc {
            context_id,
            result,
            transfer_syntax,
        })
    }
    #[getter]
    fn context_id(&self) -> u8 {
        self.0.context_id
    }
    #[getter]
    fn result(&self) -> u8 {
        self.0.result
    }
    #[getter]
    fn transfer_syntax(&self) -> Option<&str> {
        self.0.transfer_syntax.as_deref()
    }
    fn __repr__(&self) -> String {
        let pc = &self.0;
        format!(
            "PresentationContextAc(context_id={}, result={}, transfer_syntax={})",
            pc.context_id,
            pc.result,
            quote_opt(pc.transfer_syntax.as_ref())
        )
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoleSelection(pub core::RoleSelection);

#[pymethods]
impl RoleSelection {
    #[new]
    #[pyo3(signature = (*, sop_class_uid, scu_role, scp_role))]
    fn new(sop_class_uid: String, scu_role: bool, scp_role: bool) -> Self {
        RoleSelection(core::RoleSelection {
            sop_class_uid,
            scu_role,
            scp_role,
        })
    }
    #[getter]
    fn sop_class_uid(&self) -> &str {
        &self.0.sop_class_uid
    }
    #[getter]
    fn scu_role(&self) -> bool {
        self.0.scu_role
    }
    #[getter]
    fn scp_role(&self) -> bool {
        self.0.scp_role
    }
    fn __repr__(&self) -> String {
        let r = &self.0;
        format!(
            "RoleSelection(sop_class_uid={}, scu_role={}, scp_role={})",
            quote(&r.sop_class_uid),
            py_bool(r.scu_role),
            py_bool(r.scp_role)
        )
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SopClassExtended(pub core::SopClassExtended);

#[pymethods]
impl SopClassExtended {
    #[new]
    #[pyo3(signature = (*, sop_class_uid, service_class_application_information))]
    fn new(sop_class_uid: String, service_class_application_information: Vec<u8>) -> Self {
        SopClassExtended(core::SopClassExtended {
            sop_class_uid,
            service_class_application_information,
        })
    }
    #[getter]
    fn sop_class_uid(&self) -> &str {
        &self.0.sop_class_uid
    }
    #[getter]
    fn service_class_application_information<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.service_class_application_information)
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SopClassCommonExtended(pub core::SopClassCommonExtended);

#[pymethods]
impl SopClassCommonExtended {
    #[new]
    #[pyo3(signature = (*, sop_class_uid, service_class_uid, related_general_sop_class_uids=Vec::new()))]
    fn new(
        sop_class_uid: String,
        service_class_uid: String,
        related_general_sop_class_uids: Vec<String>,
    ) -> Self {
        SopClassCommonExtended(core::SopClassCommonExtended {
            sop_class_uid,
            service_class_uid,
            related_general_sop_class_uids,
        })
    }
    #[getter]
    fn sop_class_uid(&self) -> &str {
        &self.0.sop_class_uid
    }
    #[getter]
    fn service_class_uid(&self) -> &str {
        &self.0.service_class_uid
    }
    #[getter]
    fn related_general_sop_class_uids<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.related_general_sop_class_uids)
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserIdentity(pub core::UserIdentity);

#[pymethods]
impl UserIdentity {
    #[new]
    #[pyo3(signature = (*, identity_type, primary_field, secondary_field=Vec::new(), positive_response_requested=false))]
    fn new(
        identity_type: u8,
        primary_field: Vec<u8>,
        secondary_field: Vec<u8>,
        positive_response_requested: bool,
    ) -> Self {
        UserIdentity(core::UserIdentity {
            identity_type,
            positive_response_requested,
            primary_field,
            secondary_field,
        })
    }
    #[getter]
    fn identity_type(&self) -> u8 {
        self.0.identity_type
    }
    #[getter]
    fn positive_response_requested(&self) -> bool {
        self.0.positive_response_requested
    }
    #[getter]
    fn primary_field<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.primary_field)
    }
    #[getter]
    fn secondary_field<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.secondary_field)
    }
    fn __repr__(&self) -> String {
        // Never the fields themselves: they hold passwords and tokens.
        format!(
            "UserIdentity(identity_type={}, primary_field=<{} bytes>, secondary_field=<{} bytes>)",
            self.0.identity_type,
            self.0.primary_field.len(),
            self.0.secondary_field.len()
        )
    }
}

#[pyclass(frozen, eq, hash, from_py_object, module = "dicomrelay._native")]
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct UserInformation(pub core::UserInformation);

#[pymethods]
impl UserInformation {
    #[new]
    #[pyo3(signature = (
        *,
        max_length=None,
        implementation_class_uid=None,
        implementation_version_name=None,
        async_ops_window=None,
        role_selections=Vec::new(),
        sop_class_extended=Vec::new(),
        sop_class_common_extended=Vec::new(),
        user_identity=None,
        user_identity_response=None,
        unknown_items=Vec::new(),
    ))]
    #[allow(clippy::too_many_arguments)] // one keyword argument per sub-item
    fn new(
        max_length: Option<u32>,
        implementation_class_uid: Option<String>,
        implementation_version_name: Option<String>,
        async_ops_window: Option<(u16, u16)>,
        role_selections: Vec<RoleSelection>,
        sop_class_extended: Vec<SopClassExtended>,
        sop_class_common_extended: Vec<SopClassCommonExtended>,
        user_identity: Option<UserIdentity>,
        user_identity_response: Option<Vec<u8>>,
        unknown_items: Vec<(u8, Vec<u8>)>,
    ) -> Self {
        UserInformation(core::UserInformation {
            max_length,
            implementation_class_uid,
            async_ops_window: async_ops_window.map(|(invoked, performed)| core::AsyncOpsWindow {
                max_operations_invoked: invoked,
                max_operations_performed: performed,
            }),
            role_selections: role_selections.into_iter().map(|r| r.0).collect(),
            implementation_version_name,
            sop_class_extended: sop_class_extended.into_iter().map(|e| e.0).collect(),
            sop_class_common_extended: sop_class_common_extended.into_iter().map(|e| e.0).collect(),
            user_identity: user_identity.map(|u| u.0),
            user_identity_response,
            unknown_items: unknown_items
                .into_iter()
                .map(|(item_type, data)| core::RawItem { item_type, data })
                .collect(),
        })
    }
    #[getter]
    fn max_length(&self) -> Option<u32> {
        self.0.max_length
    }
    #[getter]
    fn implementation_class_uid(&self) -> Option<&str> {
        self.0.implementation_class_uid.as_deref()
    }
    #[getter]
    fn implementation_version_name(&self) -> Option<&str> {
        self.0.implementation_version_name.as_deref()
    }
    /// (maximum operations invoked, maximum operations performed).
    #[getter]
    fn async_ops_window(&self) -> Option<(u16, u16)> {
        self.0
            .async_ops_window
            .map(|w| (w.max_operations_invoked, w.max_operations_performed))
    }
    #[getter]
    fn role_selections<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple_of(
            py,
            self.0.role_selections.iter().cloned().map(RoleSelection),
        )
    }
    #[getter]
    fn sop_class_extended<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple_of(
            py,
            self.0
                .sop_class_extended
                .iter()
                .cloned()
                .map(SopClassExtended),
        )
    }
    #[getter]
    fn sop_class_common_extended<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let items = self.0.sop_class_common_extended.iter().cloned();
        tuple_of(py, items.map(SopClassCommonExtended))
    }
    #[getter]
    fn user_identity(&self) -> Option<UserIdentity> {
        self.0.user_identity.clone().map(UserIdentity)
    }
    #[getter]
    fn user_identity_response<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0
            .user_identity_response
            .as_ref()
            .map(|r| PyBytes::new(py, r))
    }
    /// Sub-items of other types, as (item type, value) pairs.
    #[getter]
    fn unknown_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        raw_items(py, &self.0.unknown_items)
    }
    fn __repr__(&self) -> String {
        let ui = &self.0;
        format!(
            "UserInformation(max_length={}, implementation_class_uid={}, implementation_version_name={}, ...)",
            ui.max_length.map_or("None".to_owned(), |n| n.to_string()),
            quote_opt(ui.implementation_class_uid.as_ref()),
            quote_opt(ui.implementation_version_name.as_ref()),
        )
    }
}

fn raw_items<'py>(py: Python<'py>, items: &[core::RawItem]) -> PyResult<Bound<'py, PyTuple>> {
    let pairs = items
        .iter()
        .map(|raw| (raw.item_type, PyBytes::new(py, &raw.data)));
    PyTuple::new(py, pairs)
}

fn raw_items_from(items: Vec<(u8, Vec<u8>)>) -> Vec<core::RawItem> {
    items
        .into_iter()
        .map(|(item_type, data)| core::RawItem { item_type, data })
        .collect()
}

/// The getters and `encode` an A-ASSOCIATE-RQ and -AC share.
macro_rules! associate_methods {
    ($ty:ident, $context:ident, $name:literal) => {
        #[pymethods]
        impl $ty {
            #[new]
            #[pyo3(signature = (
                *,
                called_ae_title,
                calling_ae_title,
                presentation_contexts,
                user_information=UserInformation::default(),
                application_context=core::APPLICATION_CONTEXT.to_owned(),
                protocol_version=core::PROTOCOL_VERSION,
                unknown_items=Vec::new(),
            ))]
            #[allow(clippy::too_many_arguments)] // the PDU's fields as keyword arguments
            fn new(
                called_ae_title: String,
                calling_ae_title: String,
                presentation_contexts: Vec<$context>,
                user_information: UserInformation,
                application_context: String,
                protocol_version: u16,
                unknown_items: Vec<(u8, Vec<u8>)>,
            ) -> PyResult<Self> {
                let pdu = core::$ty {
                    protocol_version,
                    called_ae_title: called_ae_title.trim_matches(' ').to_owned(),
                    calling_ae_title: calling_ae_title.trim_matches(' ').to_owned(),
                    application_context,
                    presentation_contexts: presentation_contexts.into_iter().map(|pc| pc.0).collect(),
                    user_information: user_information.0,
                    unknown_items: raw_items_from(unknown_items),
                };
                checked(pdu, core::$ty::encode).map($ty)
            }
            #[getter]
            fn protocol_version(&self) -> u16 {
                self.0.protocol_version
            }
            #[getter]
            fn called_ae_title(&self) -> &str {
                &self.0.called_ae_title
            }
            #[getter]
            fn calling_ae_title(&self) -> &str {
                &self.0.calling_ae_title
            }
            #[getter]
            fn application_context(&self) -> &str {
                &self.0.application_context
            }
            #[getter]
            fn presentation_contexts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                tuple_of(py, self.0.presentation_contexts.iter().cloned().map($context))
            }
            #[getter]
            fn user_information(&self) -> UserInformation {
                UserInformation(self.0.user_information.clone())
            }
            /// Variable items of other types, as (item type, value) pairs.
            #[getter]
            fn unknown_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                raw_items(py, &self.0.unknown_items)
            }
            /// The PDU's bytes.
            fn encode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
                let bytes = self.0.encode().map_err(encode_error)?;
                Ok(PyBytes::new(py, &bytes))
            }
            fn __repr__(&self) -> String {
                format!(
                    concat!($name, "(called_ae_title={}, calling_ae_title={}, presentation_contexts=<{}>, ...)"),
                    quote(&self.0.called_ae_title),
                    quote(&self.0.calling_ae_title),
                    self.0.presentation_contexts.len()
                )
            }
        }
    };
}

/// A-ASSOCIATE-RQ.
#[pyclass(frozen, eq, hash, module = "dicomrelay._native")]
#[derive(PartialEq, Eq, Hash)]
pub struct AssociateRq(pub core::AssociateRq);

associate_methods!(AssociateRq, PresentationContextRq, "AssociateRq");

/// A-ASSOCIATE-AC.
#[pyclass(frozen, eq, hash, module = "dicomrelay._native")]
#[derive(PartialEq, Eq, Hash)]
pub struct AssociateAc(pub core::AssociateAc);

associate_methods!(AssociateAc, PresentationContextAc, "AssociateAc");
