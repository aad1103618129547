//! The reading side: records by location, checked against their headers, and
//! walks over a segment's records.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::error::{Result, SegmentError};
use super::file::{read_exact_at, segment_name};
use super::format::{record_size, HeaderFault, RecordHeader, BLOCK, FIRST_RECORD, RECORD_HEADER};
use super::Location;
use crate::aligned::AlignedBytes;
use crate::DigestAlgorithm;

/// Read handles of segment files, opened when first read.
pub struct Readers {
    dir: PathBuf,
    files: RwLock<HashMap<u64, Arc<File>>>,
}

/// A record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub location: Location,
    pub algorithm: DigestAlgorithm,
    pub digest: [u8; 32],
}

/// Why a walk over a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// Zeros where the next header would be, or the end of the file.
    End,
    /// Bytes that are not a record header.
    BadHeader(HeaderFault),
    /// A header whose record runs past the end of the file.
    Truncated,
    /// A record whose data does not hash to its digest (when verifying).
    BadData,
}

/// The records of a segment from an offset, and where and why the walk stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<ScannedRecord>,
    /// Where the walk stopped: the end of the last good record.
    pub end: u64,
    pub stop: ScanStop,
}

impl Readers {
    pub fn new(dir: &Path) -> Readers {
        Readers {
            dir: dir.to_owned(),
            files: RwLock::new(HashMap::new()),
        }
    }

    pub fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(segment_name(segment))
    }

    pub fn file(&self, segment: u64) -> Result<Arc<File>> {
        if let Some(f) = self
            .files
            .read()
            .ok()
            .and_then(|m| m.get(&segment).cloned())
        {
            return Ok(f);
        }
        let path = self.path(segment);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SegmentError::NoSegment { path })
            }
            Err(e) => return Err(SegmentError::io("open", &path, e)),
        };
        if let Ok(mut m) = self.files.write() {
            m.insert(segment, file.clone());
        }
        Ok(file)
    }

    pub fn forget(&self, segment: u64) {
        if let Ok(mut m) = self.files.write() {
            m.remove(&segment);
        }
    }

    /// The header at `offset` of `segment`, decoded.
    pub fn header(
        &self,
        file: &File,
        segment: u64,
        offset: u64,
    ) -> Result<std::result::Result<RecordHeader, HeaderFault>> {
        let mut b = [0u8; RECORD_HEADER];
        match read_exact_at(file, &mut b, offset) {
            Ok(()) => Ok(RecordHeader::decode(&b, segment, offset)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Err(HeaderFault::Empty)),
            Err(e) => Err(SegmentError::io("read", &self.path(segment), e)),
        }
    }

    /// The header of the record at `location`, checked to hold `digest`.
    pub fn record(
        &self,
        location: &Location,
        digest: &[u8; 32],
    ) -> Result<(Arc<File>, RecordHeader)> {
        if location.offset % BLOCK != 0 || location.offset < FIRST_RECORD {
            return Err(SegmentError::BadLocation {
                location: *location,
                why: "is not on a record boundary",
            });
        }
        let file = self.file(location.segment)?;
        let header = self.header(&file, location.segment, location.offset)?;
        let header = header.map_err(|fault| SegmentError::Corrupt {
            path: self.path(location.segment),
            offset: location.offset,
            fault,
        })?;
        if header.length != location.length || &header.digest != digest {
            return Err(SegmentError::WrongRecord {
                path: self.path(location.segment),
                location: *location,
            });
        }
        Ok((file, header))
    }

    /// The data of the record at `location`, page-aligned; with `verify`,
    /// hashed and checked against the digest.
    pub fn read(
        &self,
        location: &Location,
        digest: &[u8; 32],
        verify: bool,
    ) -> Result<(RecordHeader, AlignedBytes)> {
        let (file, header) = self.record(location, digest)?;
        let length = usize::try_from(header.length)
            .map_err(|_| SegmentError::Invalid("record too large for this machine".into()))?;
        let mut data = AlignedBytes::zeroed(length);
        read_exact_at(
            &file,
            data.as_mut_slice(),
            location.offset + RECORD_HEADER as u64,
        )
        .map_err(|e| SegmentError::io("read", &self.path(location.segment), e))?;
        if verify && !hashes_to(&data, header.algorithm, digest) {
            return Err(SegmentError::CorruptData {
                path: self.path(location.segment),
                offset: location.offset,
            });
        }
        Ok((header, data))
    }

    /// Walk the records of `segment` from `from`, checking each header (and
    /// with `verify`, each record's data).
    pub fn scan(&self, segment: u64, from: u64, verify: bool) -> Result<Scan> {
        if from % BLOCK != 0 || from < FIRST_RECORD {
            return Err(SegmentError::Invalid(format!(
                "offset {from} is not on a record boundary"
            )));
        }
        let file = self.file(segment)?;
        let path = self.path(segment);
        let file_len = file
            .metadata()
            .map_err(|e| SegmentError::io("stat", &path, e))?
            .len();
        let mut records = Vec::new();
        let mut offset = from;
        let stop = loop {
            let header = match self.header(&file, segment, offset)? {
                Ok(h) => h,
                Err(HeaderFault::Empty) => break ScanStop::End,
                Err(fault) => break ScanStop::BadHeader(fault),
            };
            let Some(size) = record_size(header.length) else {
                break ScanStop::BadHeader(HeaderFault::TooLong(header.length));
            };
            if offset.saturating_add(size) > file_len {
                break ScanStop::Truncated;
            }
            let location = Location {
                segment,
                offset,
                length: header.length,
            };
            if verify {
                match self.read(&location, &header.digest, true) {
                    Ok(_) => {}
                    Err(SegmentError::CorruptData { .. }) => break ScanStop::BadData,
                    Err(e) => return Err(e),
                }
            }
            records.push(ScannedRecord {
                location,
                algorithm: header.algorithm,
                digest: header.digest,
            });
            offset += size;
        };
        Ok(Scan {
            records,
            end: offset,
            stop,
        })
    }
}

fn hashes_to(data: &[u8], algorithm: DigestAlgorithm, digest: &[u8; 32]) -> bool {
    let mut h = algorithm.hasher();
    h.update(data);
    &h.finish() == digest
}
