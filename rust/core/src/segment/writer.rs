//! The appending side: records copied into a page-aligned buffer and written
//! a whole buffer (or a round's end) at a time, rolling over to a new segment
//! when the active one is full.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Result, SegmentError};
use super::file::{create_segment, SegmentIo, WriteFile};
use super::format::{record_size, RecordHeader, BLOCK, FIRST_RECORD};
use super::Location;
use crate::aligned::AlignedBytes;
use crate::DigestAlgorithm;

/// A segment written to since the last commit: what a commit syncs.
pub struct Touched {
    pub file: Arc<std::fs::File>,
    pub path: PathBuf,
}

pub struct Writer {
    pub segment: u64,
    capacity: u64,
    file: WriteFile,
    /// Where the next record starts.
    pub end: u64,
    buf: AlignedBytes,
    /// The file offset of the buffer's first byte.
    buf_start: u64,
    filled: usize,
    /// Segments sealed since the last commit, their writes not yet synced.
    sealed: Vec<Touched>,
    /// Records appended since the last commit.
    pub dirty: bool,
    /// The first write or sync that failed: nothing is appended after it.
    pub failed: Option<(PathBuf, Option<i32>)>,
    segment_size: u64,
}

impl Writer {
    pub fn new(
        segment: u64,
        capacity: u64,
        file: WriteFile,
        end: u64,
        segment_size: u64,
        buffer: usize,
    ) -> Writer {
        let buffer = (buffer.max(BLOCK as usize)).div_ceil(BLOCK as usize) * BLOCK as usize;
        Writer {
            segment,
            capacity,
            file,
            end,
            buf: AlignedBytes::zeroed(buffer),
            buf_start: end,
            filled: 0,
            sealed: Vec::new(),
            dirty: false,
            failed: None,
            segment_size,
        }
    }

    pub fn check(&self) -> Result<()> {
        match &self.failed {
            Some((path, errno)) => Err(SegmentError::Failed {
                path: path.clone(),
                errno: *errno,
            }),
            None => Ok(()),
        }
    }

    /// Remember a failure: the store takes nothing more until it is reopened.
    pub fn fail(&mut self, e: SegmentError) -> SegmentError {
        if self.failed.is_none() {
            let path = e
                .path()
                .map_or_else(|| self.file.path.clone(), Path::to_owned);
            self.failed = Some((path, e.errno()));
        }
        e
    }

    /// Append one record; it is durable once a commit after it succeeds.
    pub fn append(
        &mut self,
        dir: &Path,
        io: &dyn SegmentIo,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        data: &[u8],
    ) -> Result<Location> {
        self.check()?;
        let length = data.len() as u64;
        let size = record_size(length).ok_or_else(|| {
            SegmentError::Invalid(format!(
                "a record of {length} bytes is larger than a record may be"
            ))
        })?;
        let mut source = data;
        let result = self.append_checked(dir, io, algorithm, digest, length, size, &mut source);
        result.map_err(|e| self.fail(e))
    }

    /// Append one record of `length` bytes read from `source` (a file too
    /// large to hold in memory); it is durable once a commit after it succeeds.
    pub fn append_from(
        &mut self,
        dir: &Path,
        io: &dyn SegmentIo,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        length: u64,
        source: &mut dyn Read,
    ) -> Result<Location> {
        self.check()?;
        let size = record_size(length).ok_or_else(|| {
            SegmentError::Invalid(format!(
                "a record of {length} bytes is larger than a record may be"
            ))
        })?;
        let result = self.append_checked(dir, io, algorithm, digest, length, size, source);
        result.map_err(|e| self.fail(e))
    }

    #[allow(clippy::too_many_arguments)]
    fn append_checked(
        &mut self,
        dir: &Path,
        io: &dyn SegmentIo,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        length: u64,
        size: u64,
        source: &mut dyn Read,
    ) -> Result<Location> {
        if self.end.saturating_add(size) > self.capacity {
            self.roll_over(dir, io, size)?;
        }
        let offset = self.end;
        let header = RecordHeader {
            algorithm,
            length,
            digest: *digest,
            offset,
        }
        .encode(self.segment);
        self.dirty = true;
        self.put(io, &header)?;
        self.put_from(io, source, length)?;
        let padding = size - header.len() as u64 - length;
        self.put_zeros(io, padding as usize)?;
        self.end = offset + size;
        Ok(Location {
            segment: self.segment,
            offset,
            length,
        })
    }

    /// Seal the active segment and start the next, large enough for a record
    /// of `size` bytes (a record larger than a segment gets one of its own).
    fn roll_over(&mut self, dir: &Path, io: &dyn SegmentIo, size: u64) -> Result<()> {
        self.flush(io)?;
        let next = self
            .segment
            .checked_add(1)
            .ok_or_else(|| SegmentError::Invalid("no segment numbers left".into()))?;
        let capacity = self.segment_size.max(FIRST_RECORD + size);
        let file = create_segment(dir, next, capacity, io)?;
        let old = std::mem::replace(&mut self.file, file);
        if self.dirty {
            self.sealed.push(Touched {
                file: old.file,
                path: old.path,
            });
        }
        self.segment = next;
        self.capacity = capacity;
        self.end = FIRST_RECORD;
        self.buf_start = FIRST_RECORD;
        Ok(())
    }

    fn put(&mut self, io: &dyn SegmentIo, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let room = self.buf.len() - self.filled;
            let n = room.min(bytes.len());
            self.buf.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == self.buf.len() {
                self.flush(io)?;
            }
        }
        Ok(())
    }

    /// Copy exactly `length` bytes of `source` into the buffer, writing it as it fills.
    fn put_from(&mut self, io: &dyn SegmentIo, source: &mut dyn Read, length: u64) -> Result<()> {
        let mut left = length;
        while left > 0 {
            let room = self.buf.len() - self.filled;
            let want = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            let into = &mut self.buf.as_mut_slice()[self.filled..self.filled + want];
            let n = match source.read(into) {
                Ok(0) => {
                    return Err(SegmentError::Invalid(format!(
                        "the source ended {left} bytes short of its record"
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SegmentError::io("read", &self.file.path, e)),
            };
            self.filled += n;
            left -= n as u64;
            if self.filled == self.buf.len() {
                self.flush(io)?;
            }
        }
        Ok(())
    }

    fn put_zeros(&mut self, io: &dyn SegmentIo, mut n: usize) -> Result<()> {
        while n > 0 {
            let room = self.buf.len() - self.filled;
            let k = room.min(n);
            self.buf.as_mut_slice()[self.filled..self.filled + k].fill(0);
            self.filled += k;
            n -= k;
            if self.filled == self.buf.len() {
                self.flush(io)?;
            }
        }
        Ok(())
    }

    /// Write what the buffer holds: whole blocks, since records end on one.
    pub fn flush(&mut self, io: &dyn SegmentIo) -> Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let whole = self.buf.padded().unwrap_or(self.buf.as_slice());
        let bytes = &whole[..self.filled];
        self.file.write_blocks(io, bytes, self.buf_start)?;
        self.buf_start += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    /// Flush, and hand over every segment written since the last commit (the
    /// active one last) with the end the commit will make durable.
    pub fn prepare_commit(&mut self, io: &dyn SegmentIo) -> Result<Vec<Touched>> {
        self.check()?;
        if let Err(e) = self.flush(io) {
            return Err(self.fail(e));
        }
        let mut touched = std::mem::take(&mut self.sealed);
        if self.dirty {
            touched.push(Touched {
                file: self.file.file.clone(),
                path: self.file.path.clone(),
            });
        }
        self.dirty = false;
        Ok(touched)
    }
}
