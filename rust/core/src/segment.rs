//! An append-only store of records in large preallocated segment files, after
//! Haystack's volumes, SeaweedFS's and Kafka's log segments: many instances
//! per file, so storing one costs no inode, rename or directory sync.
//!
//! - **Appending** copies each record (a 64-byte header, the data, zero padding
//!   to 4 KiB) into a page-aligned buffer written with direct I/O; a record is
//!   found again by its [`Location`] (segment, offset, length).
//! - **Durability comes by rounds**: [`SegmentStore::commit`] fdatasyncs each
//!   segment written since the last commit and returns the new [`DurableEnd`],
//!   which the caller records (in its ledger, beside the locations) before
//!   acknowledging anything. A failed write or sync fails the round: nothing in
//!   it is reported durable, and the store takes no more records until opened
//!   again.
//! - **Recovery**: [`SegmentStore::open`] takes the last durable end the caller
//!   recorded, removes segments after it and cuts the tail of its segment back
//!   to it (zeroed, preallocated again), so a torn write is never read.
//! - **Compaction** copies the live records of a sealed segment into the
//!   active one ([`SegmentStore::compact`]); the caller commits, switches its
//!   index to the new locations, and only then removes the old segment
//!   ([`SegmentStore::remove_segment`]). A crash anywhere in between leaves the
//!   index pointing at one whole copy of every record.
//!
//! The file format is described in `segment/format.rs`.

mod error;
mod file;
mod format;
mod read;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use error::{Result, SegmentError};
pub use file::{segment_name, SegmentIo, SystemIo};
pub use format::{record_size, HeaderFault, BLOCK, FIRST_RECORD, MAX_RECORD, RECORD_HEADER};
pub use read::{Scan, ScanStop, ScannedRecord};

use crate::aligned::AlignedBytes;
use crate::DigestAlgorithm;
use file::{create_segment, lock_file, parse_segment_name, preallocate, sync_dir, WriteFile};
use format::SegmentHeader;
use read::Readers;
use writer::Writer;

/// Where a record is: its segment, the offset of its header in that segment's
/// file, and the length of its data (which starts [`RECORD_HEADER`] bytes later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub length: u64,
}

/// Everything before `end` in `segment`, and every segment before it, is
/// durable. The caller records it after each round and gives it back at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DurableEnd {
    pub segment: u64,
    pub end: u64,
}

/// How a store is laid out and written. Read once, at open.
#[derive(Clone)]
pub struct SegmentConfig {
    /// The size each new segment file is preallocated to (a record larger than
    /// this gets a segment of its own, as large as it needs).
    pub segment_size: u64,
    /// The append buffer: records are written to the file a buffer at a time.
    pub buffer_size: usize,
    /// The writes and syncs of segment data (a test can make them fail).
    pub io: Arc<dyn SegmentIo>,
}

pub const DEFAULT_SEGMENT_SIZE: u64 = 1 << 30;
pub const DEFAULT_BUFFER_SIZE: usize = 8 << 20;

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            segment_size: DEFAULT_SEGMENT_SIZE,
            buffer_size: DEFAULT_BUFFER_SIZE,
            io: Arc::new(SystemIo),
        }
    }
}

/// What opening a store found and undid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The durable end the store starts from.
    pub durable: DurableEnd,
    /// Segments after the durable end, removed: nothing in them was durable.
    pub removed_segments: Vec<u64>,
    /// Whole-looking records past the durable end, cut off.
    pub cut_records: u64,
}

/// A directory of segment files. Every method takes `&self`: reads run beside
/// appends and commits from other threads.
pub struct SegmentStore {
    dir: PathBuf,
    io: Arc<dyn SegmentIo>,
    readers: Readers,
    writer: Mutex<Writer>,
    /// Held while a commit syncs, so commits finish in the order they began.
    committing: Mutex<()>,
    durable: Mutex<DurableEnd>,
    _lock: std::fs::File,
}

const LOCK_FILE: &str = "segments.lock";

fn segment_ids(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| SegmentError::io("list", dir, e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SegmentError::io("list", dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while holding the lock left the state as it was
    // between two whole operations; the failed flag guards what it wrote.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SegmentStore {
    /// Open the store in `dir` (created if missing) at `durable`, the last
    /// durable end the caller recorded; None for a store that has never
    /// recorded one (refused if any segment holds a record).
    pub fn open(
        dir: &Path,
        config: SegmentConfig,
        durable: Option<DurableEnd>,
    ) -> Result<(SegmentStore, Recovery)> {
        std::fs::create_dir_all(dir).map_err(|e| SegmentError::io("create", dir, e))?;
        let lock_file = lock_file(&dir.join(LOCK_FILE))?;
        let readers = Readers::new(dir);
        let ids = segment_ids(dir)?;
        let segment_size = config.segment_size.max(FIRST_RECORD + BLOCK);
        let io = config.io.clone();
        let (durable, removed, cut_records, capacity, file) = match durable {
            None => {
                for &id in &ids {
                    let file = readers.file(id)?;
                    if readers.header(&file, id, FIRST_RECORD)?.is_ok() {
                        return Err(SegmentError::Inconsistent(format!(
                            "segment {} holds records, but no durable end was given",
                            readers.path(id).display()
                        )));
                    }
                }
                for &id in &ids {
                    readers.forget(id);
                    let path = readers.path(id);
                    std::fs::remove_file(&path)
                        .map_err(|e| SegmentError::io("remove", &path, e))?;
                }
                let file = create_segment(dir, 1, segment_size, &*io)?;
                io.sync_data(&file.file)
                    .map_err(|e| SegmentError::SyncFailed {
                        path: file.path.clone(),
                        source: e,
                    })?;
                let start = DurableEnd {
                    segment: 1,
                    end: FIRST_RECORD,
                };
                (start, ids, 0, segment_size, file)
            }
            Some(d) => {
                let (removed, cut, capacity, file) = Self::recover(dir, &readers, &ids, d)?;
                (d, removed, cut, capacity, file)
            }
        };
        let writer = Writer::new(
            durable.segment,
            capacity,
            file,
            durable.end,
            segment_size,
            config.buffer_size,
        );
        let store = SegmentStore {
            dir: dir.to_owned(),
            io,
            readers,
            writer: Mutex::new(writer),
            committing: Mutex::new(()),
            durable: Mutex::new(durable),
            _lock: lock_file,
        };
        let recovery = Recovery {
            durable,
            removed_segments: removed,
            cut_records,
        };
        Ok((store, recovery))
    }

    /// Remove the segments after `d`, cut its segment back to it.
    fn recover(
        dir: &Path,
        readers: &Readers,
        ids: &[u64],
        d: DurableEnd,
    ) -> Result<(Vec<u64>, u64, u64, WriteFile)> {
        let path = readers.path(d.segment);
        if !ids.contains(&d.segment) {
            return Err(SegmentError::Inconsistent(format!(
                "the durable end names segment {}, which does not exist",
                path.display()
            )));
        }
        let file = readers.file(d.segment)?;
        let mut first = [0u8; BLOCK as usize];
        file::read_exact_at(&file, &mut first, 0)
            .map_err(|e| SegmentError::io("read", &path, e))?;
        let header =
            SegmentHeader::decode(&first, d.segment).map_err(|fault| SegmentError::Corrupt {
                path: path.clone(),
                offset: 0,
                fault,
            })?;
        let len = file
            .metadata()
            .map_err(|e| SegmentError::io("stat", &path, e))?
            .len();
        if d.end % BLOCK != 0 || d.end < FIRST_RECORD || d.end > len {
            return Err(SegmentError::Inconsistent(format!(
                "durable end {} is not a record boundary of {} ({len} bytes)",
                d.end,
                path.display()
            )));
        }
        let removed: Vec<u64> = ids.iter().copied().filter(|&id| id > d.segment).collect();
        for &id in &removed {
            readers.forget(id);
            let p = readers.path(id);
            std::fs::remove_file(&p).map_err(|e| SegmentError::io("remove", &p, e))?;
        }
        if !removed.is_empty() {
            sync_dir(dir)?;
        }
        let cut = readers.scan(d.segment, d.end, false)?.records.len() as u64;
        // Cut everything past the durable end, torn or whole, and allocate it
        // again as zeros: a later scan finds nothing there.
        let capacity = header.capacity.max(len);
        let write = WriteFile::open(&path)?;
        write
            .file
            .set_len(d.end)
            .map_err(|e| SegmentError::io("truncate", &path, e))?;
        preallocate(&write.file, &path, capacity)?;
        write
            .file
            .sync_all()
            .map_err(|e| SegmentError::io("sync", &path, e))?;
        readers.forget(d.segment);
        Ok((removed, cut, capacity, write))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a record of `data` under `digest` (the caller has verified it).
    /// It is durable once a later [`commit`](Self::commit) returns Ok.
    pub fn append(
        &self,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        data: &[u8],
    ) -> Result<Location> {
        lock(&self.writer).append(&self.dir, &*self.io, algorithm, digest, data)
    }

    /// Append a record of the `length` bytes `source` holds (a file too large
    /// to hold in memory), under `digest` (the caller has verified it).
    pub fn append_from(
        &self,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        length: u64,
        source: &mut dyn std::io::Read,
    ) -> Result<Location> {
        lock(&self.writer).append_from(&self.dir, &*self.io, algorithm, digest, length, source)
    }

    /// Append one record whose bytes are `parts`, one after another (a
    /// rewritten instance: its new header, the original pixel data, a
    /// trailer), under `digest` (of the whole; the caller made it), without
    /// joining them in memory first.
    pub fn append_parts(
        &self,
        algorithm: DigestAlgorithm,
        digest: &[u8; 32],
        parts: &[&[u8]],
    ) -> Result<Location> {
        let length = parts.iter().map(|p| p.len() as u64).sum();
        let mut source = PartsReader { parts, offset: 0 };
        self.append_from(algorithm, digest, length, &mut source)
    }

    /// Make every record appended so far durable: one fdatasync per segment
    /// written since the last commit. Returns the new durable end. On an error
    /// the round failed: none of its records is durable, the durable end stays
    /// where it was, and the store refuses appends until it is opened again.
    pub fn commit(&self) -> Result<DurableEnd> {
        let _one_at_a_time = lock(&self.committing);
        let (touched, end) = {
            let mut w = lock(&self.writer);
            let touched = w.prepare_commit(&*self.io)?;
            (
                touched,
                DurableEnd {
                    segment: w.segment,
                    end: w.end,
                },
            )
        };
        for t in &touched {
            if let Err(source) = self.io.sync_data(&t.file) {
                let e = SegmentError::SyncFailed {
                    path: t.path.clone(),
                    source,
                };
                return Err(lock(&self.writer).fail(e));
            }
        }
        *lock(&self.durable) = end;
        Ok(end)
    }

    /// The end of the last successful commit.
    pub fn durable_end(&self) -> DurableEnd {
        *lock(&self.durable)
    }

    /// The segment being appended to.
    pub fn active_segment(&self) -> u64 {
        lock(&self.writer).segment
    }

    fn check_durable(&self, location: &Location) -> Result<()> {
        let d = self.durable_end();
        let size = record_size(location.length).ok_or(SegmentError::BadLocation {
            location: *location,
            why: "declares a length larger than a record may be",
        })?;
        let past = location.segment > d.segment
            || (location.segment == d.segment && location.offset.saturating_add(size) > d.end);
        if past {
            return Err(SegmentError::BadLocation {
                location: *location,
                why: "is past the durable end",
            });
        }
        Ok(())
    }

    /// The data of the durable record at `location`, which must hold `digest`;
    /// with `verify`, the data is hashed and checked too.
    pub fn read(
        &self,
        location: &Location,
        digest: &[u8; 32],
        verify: bool,
    ) -> Result<AlignedBytes> {
        self.check_durable(location)?;
        Ok(self.readers.read(location, digest, verify)?.1)
    }

    /// The record at `location` as a file to stream from (sendfile, copy):
    /// an open descriptor of its segment, the data's offset and its length.
    pub fn open_record(
        &self,
        location: &Location,
        digest: &[u8; 32],
    ) -> Result<(std::fs::File, u64, u64)> {
        self.check_durable(location)?;
        let (file, header) = self.readers.record(location, digest)?;
        let path = self.readers.path(location.segment);
        let own = file
            .try_clone()
            .map_err(|e| SegmentError::io("duplicate", &path, e))?;
        Ok((own, location.offset + RECORD_HEADER as u64, header.length))
    }

    /// Walk the records of `segment` from `from` (not bounded by the durable
    /// end: for tools, and for finding what recovery would cut).
    pub fn scan(&self, segment: u64, from: u64, verify: bool) -> Result<Scan> {
        self.readers.scan(segment, from, verify)
    }

    /// The segment numbers, in order.
    pub fn segments(&self) -> Result<Vec<u64>> {
        segment_ids(&self.dir)
    }

    /// Copy the live records of sealed segment `segment` (their locations and
    /// digests) into the active segment; returns their new locations, in
    /// order. They are durable after the next commit; the old segment stays
    /// until [`remove_segment`](Self::remove_segment).
    pub fn compact(&self, segment: u64, live: &[(Location, [u8; 32])]) -> Result<Vec<Location>> {
        if segment >= self.active_segment() {
            return Err(SegmentError::Invalid(format!(
                "segment {segment} is being appended to: only sealed segments are compacted"
            )));
        }
        let mut moved = Vec::with_capacity(live.len());
        for (location, digest) in live {
            if location.segment != segment {
                return Err(SegmentError::Invalid(format!(
                    "a location in segment {} given to compact segment {segment}",
                    location.segment
                )));
            }
            self.check_durable(location)?;
            let (header, data) = self.readers.read(location, digest, false)?;
            moved.push(self.append(header.algorithm, digest, &data)?);
        }
        Ok(moved)
    }

    /// Remove sealed segment `segment`, durably: call it once the index no
    /// longer refers to any of its records.
    pub fn remove_segment(&self, segment: u64) -> Result<()> {
        if segment >= self.active_segment() {
            return Err(SegmentError::Invalid(format!(
                "segment {segment} is being appended to and cannot be removed"
            )));
        }
        let path = self.readers.path(segment);
        self.readers.forget(segment);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SegmentError::NoSegment { path })
            }
            Err(e) => return Err(SegmentError::io("remove", &path, e)),
        }
        sync_dir(&self.dir)
    }
}

/// Reads the durable records of a store that another process (or another
/// open in this one) appends to: no lock, no recovery. Every location it is
/// given must come from the caller's index, which names only records a
/// commit made durable; each read is still checked against its header.
pub struct SegmentReader {
    readers: Readers,
}

impl SegmentReader {
    pub fn new(dir: &Path) -> SegmentReader {
        SegmentReader {
            readers: Readers::new(dir),
        }
    }

    /// The data of the record at `location`, which must hold `digest`; with
    /// `verify`, hashed and checked too.
    pub fn read(
        &self,
        location: &Location,
        digest: &[u8; 32],
        verify: bool,
    ) -> Result<AlignedBytes> {
        if record_size(location.length).is_none() {
            return Err(SegmentError::BadLocation {
                location: *location,
                why: "declares a length larger than a record may be",
            });
        }
        Ok(self.readers.read(location, digest, verify)?.1)
    }
}

/// Reads byte slices one after another, as if they were one.
struct PartsReader<'a> {
    parts: &'a [&'a [u8]],
    offset: usize, // into parts[0]
}

impl std::io::Read for PartsReader<'_> {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        while let Some((first, rest)) = self.parts.split_first() {
            let left = &first[self.offset.min(first.len())..];
            if left.is_empty() {
                self.parts = rest;
                self.offset = 0;
                continue;
            }
            let n = left.len().min(into.len());
            into[..n].copy_from_slice(&left[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod parts_tests {
    use super::PartsReader;
    use std::io::Read;

    #[test]
    fn parts_read_as_one() {
        let parts: [&[u8]; 4] = [b"head", b"", b"pixels", b"!"];
        let mut reader = PartsReader {
            parts: &parts,
            offset: 0,
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"headpixels!");
    }
}
