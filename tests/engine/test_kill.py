"""kill -9, over and over: a sending node and a receiving node as real processes,
each killed with SIGKILL at random moments and started again (the sender resumes
from its ledger; the receiver comes back on the same port). At the end every
study must have arrived exactly once, byte-identical.

DICOMRELAY_KILLS sets the kills per side (default 50); DICOMRELAY_KILL_SEED the
random seed of the kill moments and study sizes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dicomrelay.receipt import Receipt, ReceiptError

from .helpers import (
    Pki,
    closed_port,
    corrupt_records,
    digest_of,
    incoming_files,
    make_study,
    query,
    read_stored,
    stored_records,
)
from .processes import Child, node_toml, receiver_toml

KILLS = int(os.environ.get("DICOMRELAY_KILLS", "50"))
SEED = int(os.environ.get("DICOMRELAY_KILL_SEED", "20261127"))
MAX_DELAY = 0.3  # seconds between a node being up and its SIGKILL
STUDY_SIZES = (20, 30)  # mr instances per study (about 130 KB each)
HELPER = Path(__file__).with_name("kill_sender.py")
LIMITS = {
    "max_attempts": 1_000_000,  # kills must never turn a transfer into a dead letter
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "connect_timeout": 3.0,
    "stall_timeout": 5.0,
}
UNFINISHED = "SELECT count(*) FROM outgoing WHERE state IN ('queued', 'active')"


@dataclass
class Tally:
    sender_kills: int = 0
    receiver_kills: int = 0
    busy_kills: int = 0  # kills while the sender still had transfers to finish
    sender_crashes: list[str] = field(default_factory=list)
    receiver_crashes: list[str] = field(default_factory=list)
    cycles: int = 0


class KillRun:
    """Both nodes, their configuration, the studies made so far, and the tally."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.orgs = Pki(root / "pki")
        self.port = closed_port()
        self.sender_db = root / "sender" / "ledger.sqlite"
        self.receiver_db = root / "receiver" / "ledger.sqlite"
        self.receiver_toml = receiver_toml(root, self.orgs.identity("RX2"), self.port)
        self.sender_toml = node_toml(
            root / "sender.toml",
            self.orgs.identity("RX1"),
            data_dir=root / "sender",
            peer=("RX2", self.port),
            limits=LIMITS,
        )
        self.studies: dict[Path, dict[str, str]] = {}  # folder -> {file name: sha256}
        self.tally = Tally()
        self.sender: Child | None = None
        self.receiver: Child | None = None

    # Processes.
    def start_receiver(self) -> Child:
        child = Child.dicomrelay("serve", "--config", os.fspath(self.receiver_toml))
        child.expect(rf"serving \(port {self.port}\)", timeout=30)
        return child

    def start_sender(self, *, cli: bool = False) -> Child:
        """The real ``dicomrelay serve``, or the helper that can also queue studies.
        Alternate asyncio and uvloop, and whole-instance and 64 KiB chunks."""
        self.tally.cycles += 1
        if cli:
            child = Child.dicomrelay("serve", "--config", os.fspath(self.sender_toml))
            child.expect(r"serving \(no listener\)", timeout=30)
            return child
        child = Child.script(
            HELPER,
            *("--config", os.fspath(self.sender_toml), "--to", "RX2"),
            *("--loop", "uvloop" if self.tally.cycles % 2 else "asyncio"),
            *("--chunk-size", str(65536 if self.tally.cycles % 3 == 0 else 1 << 20)),
            stdin=True,
        )
        child.expect(r"^ready", timeout=30)
        return child

    def ensure_sender(self, *, cli: bool = False) -> Child:
        if self.sender is not None and not self.sender.alive():
            self.tally.sender_crashes.append(self.sender.output())
            self.sender = None
        if self.sender is None:
            self.sender = self.start_sender(cli=cli)
        return self.sender

    def ensure_receiver(self) -> Child:
        if self.receiver is not None and not self.receiver.alive():
            self.tally.receiver_crashes.append(self.receiver.output())
            self.receiver = None
        if self.receiver is None:
            self.receiver = self.start_receiver()
        return self.receiver

    def kill_sender(self) -> None:
        assert self.sender is not None
        busy = self.unfinished() > 0
        if self.sender.kill():
            self.tally.busy_kills += busy
            self.tally.sender_kills += 1
        else:
            self.tally.sender_crashes.append(self.sender.output())
        self.sender = None

    def kill_receiver(self) -> None:
        assert self.receiver is not None
        busy = self.unfinished() > 0
        if self.receiver.kill():
            self.tally.busy_kills += busy
            self.tally.receiver_kills += 1
        else:
            self.tally.receiver_crashes.append(self.receiver.output())
        self.receiver = None

    # Work.
    def unfinished(self) -> int:
        if not self.sender_db.exists():
            return 0
        return int(query(self.sender_db, UNFINISHED)[0][0])

    def queued(self, folder: Path) -> bool:
        rows = query(
            self.sender_db,
            "SELECT count(*) FROM outgoing_instances WHERE path LIKE ?",
            os.fspath(folder) + os.sep + "%",
        )
        return bool(rows[0][0])

    def queue_study(self) -> None:
        """Make a new study and have the helper sender queue it."""
        n = len(self.studies)
        folder = self.root / "studies" / f"s{n:03d}"
        make_study(folder, self.rng.randint(*STUDY_SIZES), seed=n)
        self.studies[folder] = {p.name: digest_of(p.read_bytes()) for p in folder.iterdir()}
        for _ in range(5):
            sender = self.ensure_sender()
            try:
                sender.send_line(os.fspath(folder))
                sender.expect(rf"^queued [0-9a-f]{{32}} {re.escape(os.fspath(folder))}$", 30)
                return
            except (BrokenPipeError, AssertionError):
                if sender.alive():
                    raise
                if self.queued(folder):  # in the ledger before the crash
                    return
        raise AssertionError(f"could not queue {folder}")

    def wait_all_done(self, timeout: float) -> str:
        """Both nodes up until the sender has nothing left to do; else what is stuck."""
        deadline = time.monotonic() + timeout
        while self.unfinished():
            if time.monotonic() > deadline:
                rows = query(
                    self.sender_db,
                    "SELECT id, state, attempts, last_error FROM outgoing"
                    " WHERE state IN ('queued', 'active')",
                )
                sender = self.sender.output()[-3000:] if self.sender else ""
                return f"unfinished after {timeout:.0f}s: {rows}\nsender output:\n{sender}"
            self.ensure_receiver()
            self.ensure_sender(cli=True)
            time.sleep(0.2)
        return ""

    def stop(self) -> None:
        for child in (self.sender, self.receiver):
            if child is not None:
                child.stop()


def sender_phase(run: KillRun) -> None:
    """The receiver stays up; the sender is killed at random moments."""
    run.ensure_receiver()
    for _ in range(4 * KILLS + 20):
        if run.tally.sender_kills >= KILLS:
            break
        if run.unfinished() < 2:
            run.ensure_sender()
            run.queue_study()
        else:
            run.ensure_sender(cli=True)
        time.sleep(run.rng.uniform(0, MAX_DELAY))
        run.kill_sender()
        run.ensure_receiver()


def receiver_phase(run: KillRun) -> None:
    """The sender stays up (resuming, and queueing new studies); the receiver is
    killed at random moments and started again on the same port."""
    for _ in range(4 * KILLS + 20):
        if run.tally.receiver_kills >= KILLS:
            break
        run.ensure_sender()
        while run.unfinished() < 2:
            run.queue_study()
        run.ensure_receiver()
        time.sleep(run.rng.uniform(0, MAX_DELAY))
        run.kill_receiver()


def verify(run: KillRun) -> dict[str, object]:
    """Count what was lost, duplicated or corrupted."""
    receiver_cert = run.orgs.cert_der("RX2")
    data_dir = run.root / "receiver"
    outgoing = query(run.sender_db, "SELECT id, study_uid, state, total, receipt FROM outgoing")
    folder_of = {
        tid: Path(path).parent
        for tid, path in query(run.sender_db, "SELECT transfer_id, path FROM outgoing_instances")
    }
    incoming = {
        tid: (committed, receipt)
        for tid, committed, receipt in query(
            run.receiver_db, "SELECT transfer_id, committed, receipt FROM incoming"
        )
    }
    rows_of: dict[str, int] = {}
    for tid, n in query(
        run.receiver_db, "SELECT transfer_id, count(*) FROM incoming_instances GROUP BY transfer_id"
    ):
        rows_of[tid] = n
    problems: list[str] = []
    lost = duplicated = corrupted = 0
    referenced: set[str] = set()
    for folder, files in run.studies.items():
        transfers = [t for t in outgoing if folder_of.get(t[0]) == folder]
        if len(transfers) != 1:
            problems.append(f"{folder.name}: queued {len(transfers)} times")
            lost += not transfers
            continue
        tid, study_uid, state, total, receipt = transfers[0]
        committed = tid in incoming and incoming[tid][0] is not None
        store = query(
            run.receiver_db, "SELECT digest, size FROM store WHERE study_uid = ?", study_uid
        )
        if state != "done" or not committed or len(store) < len(files):
            lost += 1
            problems.append(f"{folder.name}: {state}, {len(store)}/{len(files)} stored")
            continue
        if len(store) > len(files) or rows_of.get(tid, 0) != len(files):
            duplicated += 1
            problems.append(f"{folder.name}: {len(store)} store rows, {rows_of.get(tid)} received")
        digests = sorted(d for d, _ in store)
        referenced.update(digests)
        # Every received instance's bytes, read out of the segment store,
        # against the source file's.
        by_digest = {digest: folder / name for name, digest in files.items()}
        bad = [d for d, size in store if not stored_ok(data_dir, d, size, by_digest.get(d))]
        if bad or digests != sorted(files.values()):
            corrupted += 1
            problems.append(f"{folder.name}: {len(bad)} bad records, digests match: {not bad}")
        try:
            signed = Receipt.from_json(receipt)
            signed.verify(receiver_cert)
            assert len(signed.instances) == total == len(files)
            assert incoming[tid][1] == receipt
        except (ReceiptError, AssertionError, TypeError, ValueError) as e:
            problems.append(f"{folder.name}: receipt: {e!r}")
    unknown = set(incoming) - {t[0] for t in outgoing}
    located = set(stored_records(data_dir))
    return {
        "studies": len(run.studies),
        "instances": sum(len(f) for f in run.studies.values()),
        "lost": lost,
        "duplicated": duplicated,
        "corrupted": corrupted,
        "committed_transfers": sum(1 for c, _ in incoming.values() if c is not None),
        "unknown_transfers_at_receiver": len(unknown),
        "stray_records": len(located - referenced),
        "damaged_records": len(corrupt_records(data_dir)),
        "leftover_incoming_files": len(incoming_files(data_dir / "store")),
        "problems": problems[:20],
    }


def stored_ok(data_dir: Path, digest: str, size: int, source: Path | None) -> bool:
    try:
        data = read_stored(data_dir, digest)
    except (KeyError, OSError):
        return False
    return source is not None and len(data) == size and data == source.read_bytes()


@pytest.mark.timeout(300 + 12 * KILLS)
def test_kill_sender_and_receiver_at_random_moments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = KillRun(tmp_path, random.Random(SEED))
    started = time.monotonic()
    try:
        sender_phase(run)
        sender_seconds = time.monotonic() - started
        run.ensure_sender()
        receiver_phase(run)
        receiver_seconds = time.monotonic() - started - sender_seconds
        stuck = run.wait_all_done(timeout=60)
    finally:
        run.stop()
    result = verify(run)
    tally = run.tally
    summary = (
        f"kill test (seed {SEED}): {tally.sender_kills} sender kills"
        f" ({sender_seconds:.0f}s), {tally.receiver_kills} receiver kills"
        f" ({receiver_seconds:.0f}s), {tally.busy_kills} of them mid-transfer,"
        f" {result['studies']} studies,"
        f" {result['instances']} instances: lost {result['lost']},"
        f" duplicated {result['duplicated']}, corrupted {result['corrupted']};"
        f" crashes: sender {len(tally.sender_crashes)}, receiver {len(tally.receiver_crashes)};"
        f" stray records {result['stray_records']},"
        f" damaged records {result['damaged_records']},"
        f" leftover temporary files {result['leftover_incoming_files']};"
        f" {time.monotonic() - started:.0f}s"
    )
    with capsys.disabled():
        print("\n" + summary)
    details = "\n".join(
        [
            f"problems: {result['problems']}",
            stuck,
            *(f"first sender crash:\n{c[-3000:]}" for c in tally.sender_crashes[:1]),
            *(f"first receiver crash:\n{c[-3000:]}" for c in tally.receiver_crashes[:1]),
        ]
    )
    assert tally.sender_kills >= KILLS, f"{summary}\n{details}"
    assert tally.receiver_kills >= KILLS, f"{summary}\n{details}"
    assert (result["lost"], result["duplicated"], result["corrupted"]) == (0, 0, 0), (
        f"{summary}\n{details}"
    )
    assert not stuck, f"{summary}\n{details}"
    assert not tally.sender_crashes, f"{summary}\n{details}"
    assert not tally.receiver_crashes, f"{summary}\n{details}"
    assert result["problems"] == [], f"{summary}\n{details}"
    assert result["committed_transfers"] == result["studies"], f"{summary}\n{details}"
    assert result["unknown_transfers_at_receiver"] == 0, f"{summary}\n{details}"
    assert result["damaged_records"] == 0, f"{summary}\n{details}"
    # Passed: drop the few hundred megabytes of studies and blobs (kept when failing).
    for name in ("studies", "sender", "receiver"):
        shutil.rmtree(tmp_path / name, ignore_errors=True)
