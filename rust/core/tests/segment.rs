//! The segment store: round trips, rollover, recovery of torn tails, corrupt
//! records refused, failed writes and syncs, compaction interrupted at every
//! step, and randomized runs of all of them (fixed seeds).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use dicomrelay_core::segment::{
    segment_name, DurableEnd, Location, ScanStop, SegmentConfig, SegmentError, SegmentIo,
    SegmentReader, SegmentStore, BLOCK, FIRST_RECORD, RECORD_HEADER,
};
use dicomrelay_core::DigestAlgorithm;

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("segment-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes and syncs that fail on demand: `writes_left` whole writes succeed,
/// then each write puts half its bytes on disk and fails (a torn write).
#[derive(Default)]
struct FaultIo {
    fail_sync: AtomicBool,
    writes_left: AtomicI64,
    syncs: AtomicI64,
}
impl FaultIo {
    fn new() -> Arc<FaultIo> {
        let io = FaultIo::default();
        io.writes_left.store(i64::MAX, Ordering::SeqCst);
        Arc::new(io)
    }
}
impl SegmentIo for FaultIo {
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.writes_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            let half = (buf.len() / 2) / BLOCK as usize * BLOCK as usize;
            file.write_all_at(&buf[..half], offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        file.write_all_at(buf, offset)
    }
    fn sync_data(&self, file: &std::fs::File) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_data()
    }
}

fn config(segment_size: u64, io: Arc<dyn SegmentIo>) -> SegmentConfig {
    SegmentConfig {
        segment_size,
        buffer_size: 64 << 10,
        io,
    }
}

fn small(segment_size: u64) -> SegmentConfig {
    config(segment_size, Arc::new(dicomrelay_core::segment::SystemIo))
}

/// BLAKE3: fast even in a debug build (its SIMD code is compiled optimized).
const ALGORITHM: DigestAlgorithm = DigestAlgorithm::Blake3;

fn digest_of(data: &[u8]) -> [u8; 32] {
    let mut h = ALGORITHM.hasher();
    h.update(data);
    h.finish()
}

fn record_data(rng: &mut Rng, max: u64) -> Vec<u8> {
    let len = rng.below(max) as usize;
    let seed = rng.next();
    (0..len)
        .map(|i| (seed as usize + i * 7 + i / 251) as u8)
        .collect()
}

/// The caller's index: digest to location, and the last durable end.
#[derive(Default, Clone)]
struct Ledger {
    rows: HashMap<[u8; 32], (Location, Vec<u8>)>,
    end: Option<DurableEnd>,
}

impl Ledger {
    fn check(&self, store: &SegmentStore) {
        for (digest, (location, data)) in &self.rows {
            // Compared byte for byte: hashing too would only slow the test.
            let got = store.read(location, digest, false).unwrap();
            assert_eq!(got.as_slice(), data.as_slice(), "{location:?}");
        }
    }
}

fn append(store: &SegmentStore, data: &[u8]) -> (Location, [u8; 32]) {
    let digest = digest_of(data);
    (store.append(ALGORITHM, &digest, data).unwrap(), digest)
}

#[test]
fn records_round_trip_many_to_a_segment() {
    let dir = TempDir::new("round-trip");
    let (store, recovery) = SegmentStore::open(&dir.0, small(64 << 20), None).unwrap();
    assert_eq!(
        recovery.durable,
        DurableEnd {
            segment: 1,
            end: FIRST_RECORD
        }
    );
    let mut rng = Rng(1);
    let mut ledger = Ledger::default();
    for _round in 0..5 {
        let mut pending = Vec::new();
        for _ in 0..40 {
            let data = record_data(&mut rng, 40_000);
            let (location, digest) = append(&store, &data);
            assert_eq!(location.offset % BLOCK, 0);
            pending.push((digest, location, data));
        }
        ledger.end = Some(store.commit().unwrap());
        for (digest, location, data) in pending {
            ledger.rows.insert(digest, (location, data));
        }
    }
    ledger.check(&store);
    assert_eq!(store.segments().unwrap(), vec![1]);
    let scan = store.scan(1, FIRST_RECORD, true).unwrap();
    assert_eq!(scan.records.len(), 200);
    assert_eq!(scan.stop, ScanStop::End);
    assert_eq!(scan.end, ledger.end.unwrap().end);
    for r in &scan.records {
        assert_eq!(ledger.rows[&r.digest].0, r.location);
    }
    // Streaming: the segment's descriptor, the data's offset and length.
    let (digest, (location, data)) = ledger.rows.iter().next().unwrap();
    let (file, offset, length) = store.open_record(location, digest).unwrap();
    assert_eq!(offset, location.offset + RECORD_HEADER as u64);
    let mut buf = vec![0; length as usize];
    file.read_exact_at(&mut buf, offset).unwrap();
    assert_eq!(&buf, data);
    // SHA-256 digests, verified on reading.
    let data = b"sha-256 record";
    let mut h = DigestAlgorithm::Sha256.hasher();
    h.update(data);
    let sha = h.finish();
    let at = store.append(DigestAlgorithm::Sha256, &sha, data).unwrap();
    store.commit().unwrap();
    assert_eq!(store.read(&at, &sha, true).unwrap().as_slice(), data);
    let scan = store.scan(1, at.offset, true).unwrap();
    assert_eq!(scan.records[0].algorithm, DigestAlgorithm::Sha256);
    // Empty records too.
    let (empty, d) = append(&store, b"");
    store.commit().unwrap();
    assert!(store.read(&empty, &d, true).unwrap().is_empty());
}

#[test]
fn full_segments_roll_over_and_large_records_get_their_own() {
    let dir = TempDir::new("rollover");
    let (store, _) = SegmentStore::open(&dir.0, small(256 << 10), None).unwrap();
    let mut rng = Rng(2);
    let mut ledger = Ledger::default();
    let mut pending = Vec::new();
    for i in 0..60 {
        let data = if i == 30 {
            vec![0xA5; 1 << 20] // larger than a segment
        } else {
            record_data(&mut rng, 50_000)
        };
        let (location, digest) = append(&store, &data);
        pending.push((digest, location, data));
        if i % 7 == 6 {
            ledger.end = Some(store.commit().unwrap());
            for (digest, location, data) in pending.drain(..) {
                ledger.rows.insert(digest, (location, data));
            }
        }
    }
    ledger.end = Some(store.commit().unwrap());
    for (digest, location, data) in pending.drain(..) {
        ledger.rows.insert(digest, (location, data));
    }
    ledger.check(&store);
    let segments = store.segments().unwrap();
    assert!(segments.len() > 5, "{segments:?}");
    assert_eq!(*segments.last().unwrap(), ledger.end.unwrap().segment);
    let big = ledger
        .rows
        .values()
        .find(|(l, _)| l.length == 1 << 20)
        .unwrap()
        .0;
    let scan = store.scan(big.segment, FIRST_RECORD, true).unwrap();
    assert_eq!(
        scan.records.len(),
        1,
        "the large record is alone in its segment"
    );
    let total: usize = segments
        .iter()
        .map(|&s| store.scan(s, FIRST_RECORD, true).unwrap().records.len())
        .sum();
    assert_eq!(total, 60);
    drop(store);
    let (store, recovery) = SegmentStore::open(&dir.0, small(256 << 10), ledger.end).unwrap();
    assert!(recovery.removed_segments.is_empty());
    assert_eq!(recovery.cut_records, 0);
    ledger.check(&store);
}

#[test]
fn open_cuts_what_is_past_the_durable_end() {
    let dir = TempDir::new("torn");
    let mut rng = Rng(3);
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    let mut ledger = Ledger::default();
    for _ in 0..10 {
        let data = record_data(&mut rng, 30_000);
        let (location, digest) = append(&store, &data);
        ledger.rows.insert(digest, (location, data));
    }
    ledger.end = Some(store.commit().unwrap());
    // A round written (and even synced) but never recorded by the ledger,
    // rolling over into new segments; then a torn record by hand.
    let mut unrecorded = Vec::new();
    for _ in 0..80 {
        let data = record_data(&mut rng, 60_000);
        unrecorded.push(append(&store, &data));
    }
    let late = store.commit().unwrap();
    assert!(late.segment > 1);
    drop(store);
    let last = dir.0.join(segment_name(late.segment));
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(b"DRrc garbage of a torn header", late.end)
        .unwrap();
    drop(file);

    let (store, recovery) = SegmentStore::open(&dir.0, small(1 << 20), ledger.end).unwrap();
    assert_eq!(recovery.durable, ledger.end.unwrap());
    assert_eq!(
        recovery.removed_segments,
        (2..=late.segment).collect::<Vec<_>>()
    );
    assert!(recovery.cut_records > 0);
    assert_eq!(store.segments().unwrap(), vec![1]);
    let scan = store.scan(1, ledger.end.unwrap().end, false).unwrap();
    assert!(
        scan.records.is_empty(),
        "nothing past the durable end: {scan:?}"
    );
    assert_eq!(scan.stop, ScanStop::End);
    ledger.check(&store);
    for (location, digest) in &unrecorded {
        assert!(store.read(location, digest, false).is_err());
    }
    // Appending resumes at the durable end.
    let (location, digest) = append(&store, b"after recovery");
    assert_eq!(
        location,
        Location {
            segment: 1,
            offset: ledger.end.unwrap().end,
            length: 14
        }
    );
    store.commit().unwrap();
    assert_eq!(
        store.read(&location, &digest, true).unwrap().as_slice(),
        b"after recovery"
    );
    ledger.check(&store);
}

#[test]
fn open_refuses_what_does_not_match_the_durable_end() {
    let dir = TempDir::new("refuse");
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    assert!(matches!(
        SegmentStore::open(&dir.0, small(1 << 20), None),
        Err(SegmentError::Locked { .. })
    ));
    append(&store, b"one");
    let end = store.commit().unwrap();
    drop(store);
    let reopen = |d| SegmentStore::open(&dir.0, small(1 << 20), d).map(|_| ());
    assert!(
        matches!(reopen(None), Err(SegmentError::Inconsistent(_))),
        "records and no end"
    );
    let missing = DurableEnd {
        segment: 7,
        end: FIRST_RECORD,
    };
    assert!(matches!(
        reopen(Some(missing)),
        Err(SegmentError::Inconsistent(_))
    ));
    let unaligned = DurableEnd {
        segment: 1,
        end: FIRST_RECORD + 100,
    };
    assert!(matches!(
        reopen(Some(unaligned)),
        Err(SegmentError::Inconsistent(_))
    ));
    let beyond = DurableEnd {
        segment: 1,
        end: 1 << 40,
    };
    assert!(matches!(
        reopen(Some(beyond)),
        Err(SegmentError::Inconsistent(_))
    ));
    // A segment header damaged on disk.
    let path = dir.0.join(segment_name(1));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"X", 3).unwrap();
    assert!(matches!(
        reopen(Some(end)),
        Err(SegmentError::Corrupt { offset: 0, .. })
    ));
    file.write_all_at(b"e", 3).unwrap(); // "DRsegmnt"
    reopen(Some(end)).unwrap();
}

/// A store opened new, then again before its caller recorded any durable end
/// (a crash in between): nothing was durable, so it starts over.
#[test]
fn a_new_store_reopened_before_any_end_was_recorded_starts_over() {
    let dir = TempDir::new("unrecorded");
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    append(&store, b"appended, never committed"); // still in the append buffer
    drop(store);
    let (store, recovery) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    assert_eq!(recovery.removed_segments, vec![1]);
    assert_eq!(
        recovery.durable,
        DurableEnd {
            segment: 1,
            end: FIRST_RECORD
        }
    );
    assert!(store
        .scan(1, FIRST_RECORD, false)
        .unwrap()
        .records
        .is_empty());
}

#[test]
fn corrupt_or_mismatched_records_are_refused() {
    let dir = TempDir::new("corrupt");
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    let (a, da) = append(&store, &data);
    let (b, db) = append(&store, &data[..5000]);
    store.commit().unwrap();
    let path = dir.0.join(segment_name(1));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();

    // The caller's index disagrees with the store.
    let wrong = |r: Result<_, SegmentError>| matches!(r, Err(SegmentError::WrongRecord { .. }));
    assert!(wrong(store.read(&a, &db, false)));
    assert!(wrong(store.read(
        &Location {
            length: 19_999,
            ..a
        },
        &da,
        false
    )));
    let misaligned = Location {
        offset: a.offset + 64,
        ..a
    };
    assert!(matches!(
        store.read(&misaligned, &da, false),
        Err(SegmentError::BadLocation { .. })
    ));
    let past = Location {
        offset: b.offset + BLOCK * 10,
        ..b
    };
    assert!(matches!(
        store.read(&past, &db, false),
        Err(SegmentError::BadLocation { .. })
    ));
    let huge = Location {
        length: u64::MAX,
        ..a
    };
    assert!(matches!(
        store.read(&huge, &da, false),
        Err(SegmentError::BadLocation { .. })
    ));
    let gone = Location { segment: 0, ..a };
    assert!(matches!(
        store.read(&gone, &da, false),
        Err(SegmentError::NoSegment { .. })
    ));

    // A flipped data byte: served unverified, refused verified.
    file.write_all_at(&[data[100] ^ 1], a.offset + RECORD_HEADER as u64 + 100)
        .unwrap();
    assert!(store.read(&a, &da, false).is_ok());
    assert!(matches!(
        store.read(&a, &da, true),
        Err(SegmentError::CorruptData { .. })
    ));
    assert_eq!(
        store.scan(1, FIRST_RECORD, true).unwrap().stop,
        ScanStop::BadData
    );

    // Every byte of a header, flipped in turn.
    for i in 0..RECORD_HEADER as u64 {
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, b.offset + i).unwrap();
        file.write_all_at(&[byte[0] ^ 0x10], b.offset + i).unwrap();
        let r = store.read(&b, &db, false);
        assert!(
            matches!(
                r,
                Err(SegmentError::Corrupt { .. } | SegmentError::WrongRecord { .. })
            ),
            "byte {i}: {r:?}"
        );
        let scan = store.scan(1, FIRST_RECORD, false).unwrap();
        assert_eq!(scan.records.len(), 1, "byte {i}");
        assert!(matches!(scan.stop, ScanStop::BadHeader(_)), "byte {i}");
        file.write_all_at(&byte, b.offset + i).unwrap();
    }
    assert!(store.read(&b, &db, true).is_ok());
    // A header declaring more than the file holds.
    let scan = store.scan(1, b.offset, false).unwrap();
    assert_eq!(scan.records.len(), 1);
    assert!(matches!(
        store.scan(1, FIRST_RECORD + 1, false),
        Err(SegmentError::Invalid(_))
    ));
}

#[test]
fn a_failed_sync_fails_the_round_and_stops_the_store() {
    let dir = TempDir::new("sync-fails");
    let io = FaultIo::new();
    let (store, _) = SegmentStore::open(&dir.0, config(128 << 10, io.clone()), None).unwrap();
    let mut rng = Rng(4);
    let mut ledger = Ledger::default();
    for _ in 0..5 {
        let data = record_data(&mut rng, 20_000);
        let (location, digest) = append(&store, &data);
        ledger.rows.insert(digest, (location, data));
    }
    ledger.end = Some(store.commit().unwrap());
    let mut lost = Vec::new();
    for _ in 0..20 {
        let data = record_data(&mut rng, 20_000);
        lost.push(append(&store, &data)); // rolls over into new segments
    }
    io.fail_sync.store(true, Ordering::SeqCst);
    let err = store.commit().unwrap_err();
    assert!(matches!(err, SegmentError::SyncFailed { .. }), "{err}");
    assert_eq!(err.errno(), Some(libc::EIO));
    assert_eq!(
        store.durable_end(),
        ledger.end.unwrap(),
        "nothing of the round is durable"
    );
    for (location, digest) in &lost {
        assert!(matches!(
            store.read(location, digest, false),
            Err(SegmentError::BadLocation { .. })
        ));
    }
    io.fail_sync.store(false, Ordering::SeqCst);
    let refused = store.append(DigestAlgorithm::Sha256, &[0; 32], b"x");
    assert!(matches!(
        refused,
        Err(SegmentError::Failed {
            errno: Some(libc::EIO),
            ..
        })
    ));
    assert!(matches!(store.commit(), Err(SegmentError::Failed { .. })));
    ledger.check(&store);
    drop(store);

    let (store, recovery) = SegmentStore::open(&dir.0, config(128 << 10, io), ledger.end).unwrap();
    assert!(!recovery.removed_segments.is_empty());
    ledger.check(&store);
    let (location, _) = append(&store, b"again");
    assert_eq!(location.offset, ledger.end.unwrap().end);
    store.commit().unwrap();
}

#[test]
fn a_torn_write_fails_the_round_and_is_cut_at_open() {
    let dir = TempDir::new("write-fails");
    let io = FaultIo::new();
    let (store, _) = SegmentStore::open(&dir.0, config(1 << 20, io.clone()), None).unwrap();
    let mut rng = Rng(5);
    let mut ledger = Ledger::default();
    for _ in 0..5 {
        let data = record_data(&mut rng, 20_000);
        let (location, digest) = append(&store, &data);
        ledger.rows.insert(digest, (location, data));
    }
    ledger.end = Some(store.commit().unwrap());
    io.writes_left.store(1, Ordering::SeqCst);
    let mut failed = None;
    for _ in 0..30 {
        let data = record_data(&mut rng, 30_000);
        match store.append(ALGORITHM, &digest_of(&data), &data) {
            Ok(_) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed
        .or_else(|| store.commit().err())
        .expect("a write failed");
    assert_eq!(failed.errno(), Some(libc::ENOSPC), "{failed}");
    assert!(matches!(store.commit(), Err(SegmentError::Failed { .. })));
    io.writes_left.store(i64::MAX, Ordering::SeqCst);
    drop(store);
    let (store, recovery) = SegmentStore::open(&dir.0, config(1 << 20, io), ledger.end).unwrap();
    assert!(recovery.cut_records > 0, "{recovery:?}");
    ledger.check(&store);
    assert!(store
        .scan(1, ledger.end.unwrap().end, false)
        .unwrap()
        .records
        .is_empty());
}

/// Compaction of a sparse segment, interrupted after each of its steps
/// (copy, commit, index switch, removal): every live record reads back from
/// where the index says, whole, and when finished exists exactly once.
#[test]
fn compaction_interrupted_at_any_step_loses_and_duplicates_nothing() {
    for crash_after in 0..=4 {
        let dir = TempDir::new(&format!("compact-{crash_after}"));
        let cfg = || small(512 << 10);
        let mut rng = Rng(6 + crash_after);
        let (store, _) = SegmentStore::open(&dir.0, cfg(), None).unwrap();
        let mut ledger = Ledger::default();
        let mut order = Vec::new();
        for _ in 0..90 {
            let data = record_data(&mut rng, 30_000);
            let (location, digest) = append(&store, &data);
            if ledger.rows.insert(digest, (location, data)).is_none() {
                order.push(digest);
            }
            ledger.end = Some(store.commit().unwrap());
        }
        assert!(store.segments().unwrap().len() >= 3);
        // Retention drops two thirds of segment 1's records.
        let in_first: Vec<_> = order
            .iter()
            .filter(|d| ledger.rows[*d].0.segment == 1)
            .copied()
            .collect();
        for (i, d) in in_first.iter().enumerate() {
            if i % 3 != 0 {
                ledger.rows.remove(d);
            }
        }
        let live: Vec<_> = in_first
            .iter()
            .filter(|d| ledger.rows.contains_key(*d))
            .map(|d| (ledger.rows[d].0, *d))
            .collect();
        assert!(live.len() >= 2);

        let mut store = Some(store);
        let mut step = 0;
        let mut crash = |store: &mut Option<SegmentStore>, ledger: &Ledger| {
            step += 1;
            if step == crash_after {
                *store = None; // the process dies here
                let (s, _) = SegmentStore::open(&dir.0, cfg(), ledger.end).unwrap();
                ledger.check(&s);
                *store = Some(s);
                return true;
            }
            false
        };
        // Run (or, after a crash, resume) the compaction to its end.
        loop {
            let s = store.as_ref().unwrap();
            let still_old = live.iter().any(|(_, d)| ledger.rows[d].0.segment == 1);
            if still_old {
                let moved = s.compact(1, &live).unwrap();
                if crash(&mut store, &ledger) {
                    continue;
                }
                let end = store.as_ref().unwrap().commit().unwrap();
                if crash(&mut store, &ledger) {
                    continue;
                }
                for ((_, d), to) in live.iter().zip(&moved) {
                    ledger.rows.get_mut(d).unwrap().0 = *to; // one transaction with the end
                }
                ledger.end = Some(end);
                if crash(&mut store, &ledger) {
                    continue;
                }
            }
            if store.as_ref().unwrap().segments().unwrap().contains(&1) {
                store.as_ref().unwrap().remove_segment(1).unwrap();
                if crash(&mut store, &ledger) {
                    continue;
                }
            }
            break;
        }
        let store = store.unwrap();
        ledger.check(&store);
        assert!(!store.segments().unwrap().contains(&1));
        let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
        for s in store.segments().unwrap() {
            for r in store.scan(s, FIRST_RECORD, true).unwrap().records {
                *seen.entry(r.digest).or_default() += 1;
            }
        }
        for (_, d) in &live {
            assert_eq!(seen.get(d), Some(&1), "crash after step {crash_after}");
        }
        for d in &in_first {
            if !ledger.rows.contains_key(d) {
                assert_eq!(seen.get(d), None, "a dropped record survived compaction");
            }
        }
    }
}

#[test]
fn only_sealed_segments_are_compacted_or_removed() {
    let dir = TempDir::new("sealed");
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    let (a, da) = append(&store, b"abc");
    store.commit().unwrap();
    assert!(matches!(
        store.compact(1, &[(a, da)]),
        Err(SegmentError::Invalid(_))
    ));
    assert!(matches!(
        store.remove_segment(1),
        Err(SegmentError::Invalid(_))
    ));
    assert!(matches!(
        store.remove_segment(0),
        Err(SegmentError::NoSegment { .. })
    ));
}

/// Random rounds of random records, with syncs and writes failing and the
/// process "dying" at random points, always reopened at the last recorded
/// end: every record the ledger holds reads back whole, nothing past it does.
#[test]
fn randomized_rounds_failures_and_crashes() {
    let dir = TempDir::new("random");
    let io = FaultIo::new();
    let cfg = || config(192 << 10, io.clone());
    let mut rng = Rng(0x5EED);
    let (mut store, _) = SegmentStore::open(&dir.0, cfg(), None).unwrap();
    let mut ledger = Ledger {
        end: Some(store.durable_end()),
        ..Ledger::default()
    };
    for _ in 0..300 {
        let mut pending = Vec::new();
        let mut broken = false;
        match rng.below(10) {
            0 => io.fail_sync.store(true, Ordering::SeqCst),
            1 => io.writes_left.store(rng.below(4) as i64, Ordering::SeqCst),
            _ => {}
        }
        for _ in 0..rng.below(12) {
            let max = if rng.below(8) == 0 { 300_000 } else { 20_000 };
            let data = record_data(&mut rng, max);
            let digest = digest_of(&data);
            match store.append(ALGORITHM, &digest, &data) {
                Ok(location) => pending.push((digest, location, data)),
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        let died = rng.below(8) == 0;
        if !broken && !died {
            match store.commit() {
                Ok(end) => {
                    ledger.end = Some(end);
                    for (digest, location, data) in pending.drain(..) {
                        ledger.rows.insert(digest, (location, data));
                    }
                }
                Err(_) => broken = true,
            }
        }
        io.fail_sync.store(false, Ordering::SeqCst);
        io.writes_left.store(i64::MAX, Ordering::SeqCst);
        if broken || died {
            drop(store);
            let (s, recovery) = SegmentStore::open(&dir.0, cfg(), ledger.end).unwrap();
            store = s;
            assert_eq!(recovery.durable, ledger.end.unwrap());
            let d = ledger.end.unwrap();
            assert!(store
                .scan(d.segment, d.end, false)
                .unwrap()
                .records
                .is_empty());
            ledger.check(&store);
        }
        for (digest, location, _) in &pending {
            // Never reported durable: refused (or, once overwritten, another record).
            if let Ok(data) = store.read(location, digest, true) {
                panic!(
                    "an unrecorded record was served: {location:?} {} bytes",
                    data.len()
                );
            }
        }
    }
    ledger.check(&store);
    assert!(ledger.rows.len() > 100);
}

#[test]
fn reads_run_beside_appends_and_commits() {
    let dir = TempDir::new("threads");
    let (store, _) = SegmentStore::open(&dir.0, small(1 << 20), None).unwrap();
    let store = Arc::new(store);
    let (first, digest) = append(&store, &[9u8; 10_000]);
    store.commit().unwrap();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            for _ in 0..500 {
                assert_eq!(
                    store.read(&first, &digest, true).unwrap().as_slice(),
                    &[9u8; 10_000]
                );
            }
        })
    };
    let mut rng = Rng(7);
    for _ in 0..200 {
        append(&store, &record_data(&mut rng, 20_000));
        if rng.below(5) == 0 {
            store.commit().unwrap();
        }
    }
    store.commit().unwrap();
    reader.join().unwrap();
}

#[test]
fn filesystems_without_direct_io_are_written_through_the_cache() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let dir = shm.join(format!("dicomrelay-segment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = SegmentStore::open(&dir, small(256 << 10), None).unwrap();
    let mut rng = Rng(8);
    let mut ledger = Ledger::default();
    for _ in 0..30 {
        let data = record_data(&mut rng, 40_000);
        let (location, digest) = append(&store, &data);
        ledger.rows.insert(digest, (location, data));
    }
    ledger.end = Some(store.commit().unwrap());
    ledger.check(&store);
    drop(store);
    let (store, _) = SegmentStore::open(&dir, small(256 << 10), ledger.end).unwrap();
    ledger.check(&store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Compaction on one thread while another appends and commits rounds, both
/// recording in one index: every record the index holds reads back whole,
/// and the segments hold each of them exactly once.
#[test]
fn compaction_runs_beside_appending_rounds() {
    use std::sync::Mutex;
    let dir = TempDir::new("compact-live");
    let (store, _) = SegmentStore::open(&dir.0, small(256 << 10), None).unwrap();
    let store = Arc::new(store);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let record =
        |ledger: &Mutex<Ledger>, end: DurableEnd, rows: Vec<([u8; 32], Location, Vec<u8>)>| {
            let mut l = ledger.lock().unwrap();
            l.end = Some(l.end.map_or(end, |e| e.max(end)));
            for (digest, location, data) in rows {
                l.rows.insert(digest, (location, data));
            }
        };
    let appender = {
        let (store, ledger) = (store.clone(), ledger.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(9);
            for _ in 0..60 {
                let rows: Vec<_> = (0..6)
                    .map(|_| {
                        let data = record_data(&mut rng, 30_000);
                        let (location, digest) = append(&store, &data);
                        (digest, location, data)
                    })
                    .collect();
                let end = store.commit().unwrap();
                record(&ledger, end, rows);
            }
        })
    };
    let mut compacted = 0;
    let mut rng = Rng(10);
    while !appender.is_finished() || compacted == 0 {
        let active = store.active_segment();
        let Some(&oldest) = store.segments().unwrap().first() else {
            continue;
        };
        if oldest + 1 >= active {
            std::thread::yield_now();
            continue;
        }
        // Retention drops some of the oldest segment's records; the rest move.
        let live: Vec<(Location, [u8; 32])> = {
            let mut l = ledger.lock().unwrap();
            let in_oldest: Vec<_> = l
                .rows
                .iter()
                .filter(|(_, (loc, _))| loc.segment == oldest)
                .map(|(d, (loc, _))| (*loc, *d))
                .collect();
            let mut kept = Vec::new();
            for (loc, d) in in_oldest {
                if rng.below(2) == 0 {
                    l.rows.remove(&d);
                } else {
                    kept.push((loc, d));
                }
            }
            kept
        };
        let moved = store.compact(oldest, &live).unwrap();
        let end = store.commit().unwrap();
        let rows = live
            .iter()
            .zip(&moved)
            .map(|((_, d), to)| (*d, *to, ledger.lock().unwrap().rows[d].1.clone()))
            .collect();
        record(&ledger, end, rows);
        store.remove_segment(oldest).unwrap();
        compacted += 1;
    }
    appender.join().unwrap();
    assert!(compacted >= 1);
    let ledger = ledger.lock().unwrap();
    ledger.check(&store);
    let mut on_disk = Vec::new();
    for s in store.segments().unwrap() {
        on_disk.extend(
            store
                .scan(s, FIRST_RECORD, false)
                .unwrap()
                .records
                .into_iter()
                .map(|r| (r.digest, r.location)),
        );
    }
    on_disk.sort();
    let mut indexed: Vec<_> = ledger.rows.iter().map(|(d, (loc, _))| (*d, *loc)).collect();
    indexed.sort();
    assert_eq!(
        on_disk, indexed,
        "each record the index holds is on disk once, and nothing else"
    );
}

#[test]
fn records_streamed_from_a_reader_read_back_whole_and_a_short_one_stops_the_store() {
    let dir = TempDir::new("append-from");
    let (store, _) = SegmentStore::open(&dir.0, config(1 << 20, FaultIo::new()), None).unwrap();
    let mut rng = Rng(7);
    // Larger than the 64 KiB append buffer: written a buffer at a time.
    let data = record_data(&mut rng, 300_000);
    let digest = digest_of(&data);
    let location = store
        .append_from(ALGORITHM, &digest, data.len() as u64, &mut &data[..])
        .unwrap();
    let (small_location, small_digest) = append(&store, b"after it");
    let end = store.commit().unwrap();
    assert_eq!(
        &store.read(&location, &digest, true).unwrap()[..],
        &data[..]
    );
    let reader = SegmentReader::new(&dir.0);
    assert_eq!(
        &reader.read(&location, &digest, true).unwrap()[..],
        &data[..]
    );
    assert_eq!(
        &reader.read(&small_location, &small_digest, true).unwrap()[..],
        b"after it"
    );
    assert!(matches!(
        reader.read(&small_location, &digest, false),
        Err(SegmentError::WrongRecord { .. })
    ));

    // A source that ends before the length it was given: refused, and the
    // round with it; the store takes nothing more until opened again.
    let short = &data[..1000];
    let e = store
        .append_from(ALGORITHM, &digest, 5000, &mut &short[..])
        .unwrap_err();
    assert!(matches!(e, SegmentError::Invalid(_)), "{e:?}");
    assert!(store.commit().is_err());
    drop(store);
    let (store, recovery) =
        SegmentStore::open(&dir.0, config(1 << 20, FaultIo::new()), Some(end)).unwrap();
    assert_eq!(recovery.cut_records, 0);
    assert_eq!(
        &store.read(&location, &digest, true).unwrap()[..],
        &data[..]
    );
}
