//! Why a rewrite failed: the input is not a dataset the scanner reads, or an
//! edit cannot be applied to it.

use std::fmt;

use crate::error::ScanError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    /// The input is refused by the scanner.
    Parse(ScanError),
    /// An edit that cannot be applied: the element it names and why.
    Edit { tag: u32, detail: String },
}

impl RewriteError {
    #[cold]
    #[inline(never)]
    pub fn edit(tag: u32, detail: impl Into<String>) -> Self {
        RewriteError::Edit {
            tag,
            detail: detail.into(),
        }
    }
}

impl From<ScanError> for RewriteError {
    #[cold]
    fn from(e: ScanError) -> Self {
        RewriteError::Parse(e)
    }
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::Parse(e) => e.fmt(f),
            RewriteError::Edit { tag, detail } => {
                write!(
                    f,
                    "cannot edit ({:04X},{:04X}): {detail}",
                    tag >> 16,
                    tag & 0xFFFF
                )
            }
        }
    }
}

impl std::error::Error for RewriteError {}

pub type Result<T> = std::result::Result<T, RewriteError>;
