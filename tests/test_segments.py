"""The native segment store: records in preallocated segment files, durable by
rounds, tails past the recorded durable end cut at open, compaction, and
kill -9 of a process appending to it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from child_process import run_child
from dicomrelay._native import Hasher, SegmentStore
from dicomrelay.errors import CorruptRecord, StorageError

APPENDER = Path(__file__).parent / "segment_appender.py"
FIRST_RECORD = 4096

Location = tuple[int, int, int]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def segment_path(root: Path, segment: int) -> Path:
    return root / f"{segment:016x}.seg"


def test_records_round_trip_read_stream_and_scan(tmp_path: Path) -> None:
    rng = random.Random(1)
    records = [rng.randbytes(n) for n in (0, 1, 4031, 4032, 4033, 100_000, 700_000, 16_384)]
    with SegmentStore(tmp_path, durable_end=None, segment_size=1 << 20) as store:
        assert store.durable_end == (1, FIRST_RECORD)
        locations = store.append_many([(d, sha256(d)) for d in records[:-1]])
        locations.append(store.append(memoryview(records[-1]), sha256(records[-1])))
        end = store.commit()
        assert end == store.durable_end
        assert [loc[2] for loc in locations] == [len(d) for d in records]
        assert all(offset % 4096 == 0 for _, offset, _ in locations)
        for location, data in zip(locations, records, strict=True):
            assert bytes(store.read(location, sha256(data), verify=True)) == data
            fd, offset, length = store.open_record(location, sha256(data))
            try:
                assert length == len(data)
                assert os.pread(fd, length, offset) == data
            finally:
                os.close(fd)
        found = [
            (location, digest, algorithm)
            for segment in store.segments()
            for location, digest, algorithm in store.scan(segment, verify=True)[0]
        ]
        assert found == [
            (loc, sha256(d), "sha256") for loc, d in zip(locations, records, strict=True)
        ]
        assert store.segments() == sorted({loc[0] for loc in locations})
        # BLAKE3 digests too.
        hasher = Hasher("blake3")
        hasher.update(b"blake3 record")
        digest = hasher.hexdigest()
        location = store.append(b"blake3 record", digest, algorithm="blake3")
        store.commit()
        assert bytes(store.read(location, digest, verify=True)) == b"blake3 record"
        assert store.scan(location[0], location[1])[0][0][2] == "blake3"


def test_reopening_cuts_the_rounds_the_ledger_never_recorded(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, durable_end=None, segment_size=256 << 10)
    kept = [(store.append(d, sha256(d)), d) for d in (b"a" * 5000, b"b" * 70_000)]
    recorded = store.commit()
    lost = [store.append(d, sha256(d)) for d in (os.urandom(100_000) for _ in range(8))]
    store.commit()  # durable, but the ledger never learned of it
    assert store.active_segment > recorded[0]
    store.close()

    store = SegmentStore(tmp_path, durable_end=recorded, segment_size=256 << 10)
    assert store.cut_records >= 1
    assert store.removed_segments == list(range(recorded[0] + 1, lost[-1][0] + 1))
    assert store.segments() == [recorded[0]]
    assert store.scan(recorded[0], recorded[1])[0] == []
    for location, data in kept:
        assert bytes(store.read(location, sha256(data), verify=True)) == data
    with pytest.raises(ValueError, match="past the durable end"):
        store.read(lost[0], "0" * 64)
    assert store.append(b"next", sha256(b"next"))[:2] == recorded
    store.close()


def test_errors_are_the_exceptions_of_dicomrelay_errors(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, durable_end=None, segment_size=1 << 20)
    location = store.append(b"payload", sha256(b"payload"))
    with pytest.raises(ValueError, match="past the durable end"):
        store.read(location, sha256(b"payload"))
    end = store.commit()
    with pytest.raises(CorruptRecord) as caught:
        store.read(location, sha256(b"other"))
    assert isinstance(caught.value, StorageError)
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EBADMSG
    assert os.fspath(caught.value.filename) == str(segment_path(tmp_path, 1))
    with pytest.raises(ValueError, match="not a hex digest"):
        store.read(location, "xyz")
    with pytest.raises(ValueError, match="digest must be"):
        store.append(b"x", sha256(b"x"), algorithm="md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="appended to"):
        store.compact(1, [(location, sha256(b"payload"))])
    with pytest.raises(StorageError) as locked:
        SegmentStore(tmp_path, durable_end=end)
    assert locked.value.errno == errno.EWOULDBLOCK
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.commit()
    with pytest.raises(StorageError, match="no durable end"):
        SegmentStore(tmp_path, durable_end=None)
    with pytest.raises(StorageError, match="does not exist"):
        SegmentStore(tmp_path, durable_end=(9, FIRST_RECORD))
    with pytest.raises(StorageError, match="record boundary"):
        SegmentStore(tmp_path, durable_end=(1, 5000))
    reopened = SegmentStore(tmp_path, durable_end=end)
    assert bytes(reopened.read(location, sha256(b"payload"))) == b"payload"
    reopened.close()


def test_a_damaged_record_is_refused_not_served(tmp_path: Path) -> None:
    data = os.urandom(30_000)
    with SegmentStore(tmp_path, durable_end=None) as store:
        location = store.append(data, sha256(data))
        store.commit()
        with open(segment_path(tmp_path, 1), "r+b") as f:
            f.seek(location[1] + 20)  # inside the header's digest
            byte = f.read(1)
            f.seek(location[1] + 20)
            f.write(bytes([byte[0] ^ 1]))
        with pytest.raises(CorruptRecord, match="checksum"):
            store.read(location, sha256(data))
        records, end, stop = store.scan(1)
        assert (records, end) == ([], FIRST_RECORD)
        assert stop.startswith("bad header")
        with open(segment_path(tmp_path, 1), "r+b") as f:
            f.seek(location[1] + 20)
            f.write(byte)
            f.seek(location[1] + 64 + 1000)  # inside the data
            f.write(b"\0\0\0\0")
        assert len(store.read(location, sha256(data))) == len(data)
        with pytest.raises(CorruptRecord, match="does not match its digest"):
            store.read(location, sha256(data), verify=True)
        assert store.scan(1, verify=True)[2] == "bad data"


def test_a_failed_write_fails_the_round_and_stops_the_store(tmp_path: Path) -> None:
    """A write the kernel refuses (here EFBIG, past RLIMIT_FSIZE, as a full
    disk would): a StorageError, nothing of the round durable, no more appends
    until the store is opened again."""
    result = run_child(
        f"""
        import errno, hashlib, resource, signal
        from dicomrelay._native import SegmentStore
        from dicomrelay.errors import StorageError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        root = {str(tmp_path)!r}
        store = SegmentStore(root, durable_end=None, segment_size=256 << 10)
        small = b"a" * 1000
        kept = store.append(small, hashlib.sha256(small).hexdigest())
        end = store.commit()
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, hard))
        big = b"b" * (600 << 10)  # needs a segment of its own, past the limit
        try:
            store.append(big, hashlib.sha256(big).hexdigest())
        except StorageError as e:
            print("refused", errno.errorcode[e.errno])
        try:
            store.append(small, hashlib.sha256(small).hexdigest())
        except StorageError as e:
            print("stopped", "open the store again" in str(e))
        print("durable end kept", store.durable_end == end)
        store.close()
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        store = SegmentStore(root, durable_end=end, segment_size=256 << 10)
        print("reopened", bytes(store.read(kept, hashlib.sha256(small).hexdigest())) == small)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == [
        "refused EFBIG",
        "stopped True",
        "durable end kept True",
        "reopened True",
    ]


def test_compaction_moves_live_records_then_the_old_segment_goes(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, durable_end=None, segment_size=256 << 10)
    ledger: dict[str, tuple[Location, bytes]] = {}
    for i in range(40):
        data = f"record {i}".encode() * 2000
        ledger[sha256(data)] = (store.append(data, sha256(data)), data)
        store.commit()
    first = [d for d, (loc, _) in ledger.items() if loc[0] == 1]
    for digest in first[1::2]:
        del ledger[digest]  # dropped by retention
    live = [(ledger[d][0], d) for d in first[::2]]
    moved = store.compact(1, live)
    store.commit()
    for (old, digest), new in zip(live, moved, strict=True):
        assert new[0] > 1
        assert new[2] == old[2]
        ledger[digest] = (new, ledger[digest][1])
    store.remove_segment(1)
    assert 1 not in store.segments()
    for digest, (location, data) in ledger.items():
        assert bytes(store.read(location, digest, verify=True)) == data
    with pytest.raises(StorageError) as gone:
        store.read(live[0][0], live[0][1])
    assert gone.value.errno == errno.ENOENT
    store.close()


def test_reads_run_while_another_thread_appends(tmp_path: Path) -> None:
    with SegmentStore(tmp_path, durable_end=None, segment_size=1 << 20) as store:
        data = os.urandom(50_000)
        location = store.append(data, sha256(data))
        store.commit()
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(200):
                    assert bytes(store.read(location, sha256(data))) == data
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(50):
            more = os.urandom(30_000)
            store.append(more, sha256(more))
            store.commit()
        for t in threads:
            t.join()
        assert failures == []


def _location(value: Any) -> Location:
    segment, offset, length = value
    return (int(segment), int(offset), int(length))


def _reported(
    path: Path,
) -> tuple[tuple[int, int] | None, list[tuple[Location, str]], list[Location]]:
    """What a killed appender reported: its last durable end, the records of
    its durable rounds, and the records appended after the last of them."""
    durable: tuple[int, int] | None = None
    records: list[tuple[Location, str]] = []
    pending: list[Location] = []
    for line in path.read_text().split("\n"):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the torn last line of a process killed while printing
        if "durable" in event:
            durable = (event["durable"][0], event["durable"][1])
            records.extend((_location(loc), str(digest)) for loc, digest in event["records"])
            pending = []
        else:
            pending.append(_location(event["pending"][0]))
    return durable, records, pending


def test_kill_9_while_appending_loses_nothing_reported_and_serves_nothing_torn(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    segment_size = 2 << 20
    rng = random.Random(20261202)
    ledger: dict[str, Location] = {}
    durable: tuple[int, int] | None = None
    kills = torn = 0
    for attempt in range(60):
        output = tmp_path / f"appender-{attempt}.jsonl"
        command = [sys.executable, str(APPENDER), str(root), str(segment_size), str(attempt)]
        if durable is not None:
            command += [str(durable[0]), str(durable[1])]
        with open(output, "wb") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while output.stat().st_size == 0 and child.poll() is None:
                assert time.monotonic() < deadline, "the appender never started"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            _, stderr = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, stderr.decode()
        kills += 1
        reported, records, pending = _reported(output)
        new = {digest: location for location, digest in records}
        if reported is not None:
            durable = reported
        ledger.update(new)
        assert durable is not None

        with SegmentStore(root, durable_end=durable, segment_size=segment_size) as store:
            torn += bool(store.cut_records or store.removed_segments)
            for digest, location in new.items():
                assert len(store.read(location, digest, verify=True)) == location[2]
            for location in pending:
                with pytest.raises(ValueError, match="past the durable end"):
                    store.read(location, "0" * 64)
            assert store.scan(durable[0], durable[1]) == ([], durable[1], "end")
    assert kills == 60
    assert torn >= 10, f"only {torn} kills cut a round short"
    with SegmentStore(root, durable_end=durable, segment_size=segment_size) as store:
        for digest, location in ledger.items():
            assert len(store.read(location, digest, verify=True)) == location[2]
        scanned = [record for s in store.segments() for record in store.scan(s)[0]]
        assert sorted((r[0], r[1]) for r in scanned) == sorted(
            (loc, d) for d, loc in ledger.items()
        ), "every record on disk is one the ledger holds, once"
