"""The whole chain for tests/engine/test_chain.py: DCMTK storescu -> node A's
SCP -> the wire -> node B -> its SCU -> a DCMTK storescp standing for the
receiving hospital's PACS ("PACSB"); when the chain has gone quiet; and which of
pydicom's bundled files DCMTK can send, asked of DCMTK itself file by file."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from dicomrelay import scan_file
from dicomrelay.config import DicomConfig, DicomTls, NodeConfig, Pacs, Peer, Route
from dicomrelay.node import Node

from .helpers import LOCALHOST, Pki, closed_port, node_config, query

DCMTK = Path("/usr/bin")  # not the PATH: pynetdicom installs a storescu of its own
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # else Nagle costs DCMTK 40 ms a message
# A PACS that takes every SOP class (-pm) in every syntax DCMTK knows (+xa) and
# writes each dataset exactly as it came off the wire (+B).
PACS_OPTIONS = ("-pm", "+xa", "+B", "-dhl")
# storescu proposes the uncompressed syntaxes unless told otherwise, and sends
# a compressed file only in its own syntax: the option that proposes that one.
PROPOSE = {
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}
PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC


# DCMTK's two ends.
def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited ({proc.returncode}) before listening")
        try:
            socket.create_connection((LOCALHOST, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def storescp(
    out: Path, port: int, *, aet: str = "PACSB", options: Sequence[str] = PACS_OPTIONS
) -> Iterator[None]:
    """A DCMTK storescp writing into ``out``, listening once this returns."""
    out.mkdir(parents=True, exist_ok=True)
    args = [str(DCMTK / "storescp"), "-od", str(out), "-aet", aet, *options, str(port)]
    proc = subprocess.Popen(
        args, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(proc, port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def storescu_args(
    port: int,
    inputs: Iterable[str | Path],
    *,
    proposal: str | None,
    called: str = "RELAYA",
    tls: Sequence[str] = (),
) -> list[str]:
    """One association: ``-R`` proposes only the SOP classes of the files given;
    ``tls``: DCMTK's TLS options (``+tls KEY CERT +cf CA``), if any."""
    options = ["-R", *([proposal] if proposal else []), *tls, "-aet", "PACSA", "-aec", called]
    return [str(DCMTK / "storescu"), *options, LOCALHOST, str(port), *map(str, inputs)]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=300)


# Reading what a PACS holds.
def dataset(path: Path) -> bytes:
    """The bytes after the file meta information."""
    return path.read_bytes()[scan_file(path).dataset_offset :]


def transfer_syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def held(pacs: Path) -> dict[str, Path]:
    """SOP Instance UID -> the file the PACS holds for it (one each, or fail)."""
    files = sorted(p for p in pacs.iterdir() if p.is_file())
    out = {scan_file(p).sop_instance_uid or "": p for p in files}
    assert len(out) == len(files), "the PACS holds two files for one SOP Instance UID"
    return out


def _elements(ds: Dataset, at: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.element == 0 or tag == TRAILING_PADDING:
            continue  # group lengths DCMTK recomputes, trailing padding it drops
        where = (*at, tag)
        if elem.VR == "SQ":
            yield where, ("SQ", len(elem.value))
            for n, item in enumerate(elem.value):
                yield from _elements(item, (*where, n))
        elif tag == PIXEL_DATA and elem.is_undefined_length:
            yield where, ("OB", elem.value)  # encapsulated: OB, whatever the file said
        else:
            yield where, (elem.VR, elem.value)


def elements(path: Path) -> dict[tuple[int, ...], Any]:
    """Every element, in sequences too: (tags and item numbers) -> (VR, value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on the test files' oddities
        return dict(_elements(pydicom.dcmread(path, force=True)))


def assert_same_elements(source: Path, final: Path) -> None:
    want, got = elements(source), elements(final)
    differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    shown = [
        (".".join(f"{t:08X}" for t in k), repr(want.get(k))[:60], repr(got.get(k))[:60])
        for k in differ[:3]
    ]
    assert not differ, f"{final.name}: {len(differ)} elements differ from {source.name}: {shown}"


# What DCMTK can send.
@dataclass(frozen=True, kw_only=True)
class Sendable:
    name: str  # relative to pydicom's test_files
    source: Path
    proposal: str | None  # the storescu option that proposes its syntax
    reference: Path  # DCMTK storescu -> storescp (+B): exactly the dataset on the wire
    sop_instance_uid: str
    study_instance_uid: str | None
    transfer_syntax: str  # the one negotiated


@dataclass(frozen=True, kw_only=True)
class Verdict:
    sendable: list[Sendable]
    refused: dict[str, str]  # name -> what DCMTK said


def proposal(path: Path) -> str | None:
    try:
        syntax = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # no file meta, or not DICOM at all: DCMTK will judge
        return None
    return PROPOSE.get(str(syntax))


def _reason(result: subprocess.CompletedProcess[str], path: Path) -> str:
    """DCMTK's errors, without the file's path."""
    said = [line for line in result.stderr.splitlines() if line.startswith(("E:", "F:"))]
    text = "; ".join(said).replace(f": {path}", "") or f"storescu exited {result.returncode}"
    return text[:200]


def _probe(
    root: Path, worker: int, files: list[tuple[int, str, Path]]
) -> list[Sendable | tuple[str, str]]:
    """Send each file alone to a storescp of this worker's own; what it stored
    (bit-preserving) becomes the file's reference."""
    out, port = root / f"probe-{worker}", closed_port()
    verdicts: list[Sendable | tuple[str, str]] = []
    with storescp(out, port, aet="PROBE"):
        for n, name, path in files:
            option = proposal(path)
            result = run(storescu_args(port, [path], proposal=option, called="PROBE"))
            stored = list(out.iterdir())
            if result.returncode != 0 or len(stored) != 1:
                for p in stored:
                    p.unlink()
                verdicts.append((name, _reason(result, path)))
                continue
            reference = stored[0].rename(root / f"{n:03d}.dcm")
            meta = pydicom.dcmread(reference, stop_before_pixels=True)
            verdicts.append(
                Sendable(
                    name=name,
                    source=path,
                    proposal=option,
                    reference=reference,
                    sop_instance_uid=str(meta.SOPInstanceUID),
                    study_instance_uid=meta.get("StudyInstanceUID"),
                    transfer_syntax=str(meta.file_meta.TransferSyntaxUID),
                )
            )
    return verdicts


def ask_dcmtk(files: dict[str, Path], root: Path, workers: int = 4) -> Verdict:
    """Which of ``files`` (name -> path) DCMTK storescu sends to DCMTK storescp."""
    root.mkdir(parents=True, exist_ok=True)
    numbered = [(n, name, path) for n, (name, path) in enumerate(sorted(files.items()))]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(
            _probe, [root] * workers, range(workers), [numbered[w::workers] for w in range(workers)]
        )
        verdicts = [v for part in parts for v in part]
    sendable = sorted((v for v in verdicts if isinstance(v, Sendable)), key=lambda s: s.name)
    refused = dict(sorted(v for v in verdicts if not isinstance(v, Sendable)))
    return Verdict(sendable=sendable, refused=refused)


def associations(files: Sequence[Sendable]) -> list[list[Sendable]]:
    """The files in storescu runs: one per proposal, in order of first appearance."""
    runs: dict[str | None, list[Sendable]] = {}
    for s in files:
        runs.setdefault(s.proposal, []).append(s)
    return list(runs.values())


# Nodes A and B.
def delivering_node(
    orgs: Pki,
    data_dir: Path,
    pacs_port: int,
    *,
    delivery_attempts: int = 5,
    tls: DicomTls | None = None,
) -> NodeConfig:
    """RX2, listening, delivering what it commits into the PACS "PACSB" (over
    DICOM TLS when ``tls`` is given)."""
    return dataclasses.replace(
        node_config(
            "RX2",
            data_dir,
            identity=orgs.identity("RX2"),
            peers=(Peer(code="RX1", host=LOCALHOST, port=1),),
            listen_port=0,
        ),
        dicom=DicomConfig(
            ae_title="RELAYB",
            deliver_to=Pacs(ae_title="PACSB", host=LOCALHOST, port=pacs_port),
            delivery_attempts=delivery_attempts,
            tls=tls,
        ),
    )


def routing_node(
    orgs: Pki,
    data_dir: Path,
    b_port: int,
    routes: tuple[Route, ...],
    *,
    tls: DicomTls | None = None,
) -> NodeConfig:
    """RX1, whose SCP "RELAYA" (DICOM TLS only, when ``tls`` is given) takes
    studies from "PACSA" and routes them on."""
    return dataclasses.replace(
        node_config(
            "RX1",
            data_dir,
            identity=orgs.identity("RX1"),
            peers=(Peer(code="RX2", host=LOCALHOST, port=b_port),),
        ),
        dicom=DicomConfig(
            ae_title="RELAYA", listen_port=0, allowed_calling=("PACSA",), routes=routes, tls=tls
        ),
    )


@dataclass
class Chain:
    a: Node
    b: Node
    pacs: Path  # where PACSB writes
    routed: int = 0  # (association, study) pairs node A must have routed by now

    @property
    def port(self) -> int:
        assert self.a.dicom_port is not None
        return self.a.dicom_port

    async def storescu(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return await anyio.to_thread.run_sync(run, args)

    async def store(self, args: list[str], *, studies: int) -> None:
        """Run storescu, which must succeed: one association carrying ``studies``
        studies, each of which node A routes on its own."""
        result = await self.storescu(args)
        assert result.returncode == 0, result.stderr[-2000:]
        self.routed += studies

    async def send(self, files: Sequence[Sendable], *, settle: bool = False) -> None:
        for group in associations(files):
            args = storescu_args(self.port, [s.source for s in group], proposal=group[0].proposal)
            await self.store(args, studies=len({s.study_instance_uid or "" for s in group}))
            if settle:
                await self.settle()

    async def settle(self, timeout: float = 120.0) -> None:
        """Until node A has routed every study it was sent, node B has committed
        every transfer, and B has finished one delivery for each commit."""
        a_db = self.a.config.data_dir / "ledger.sqlite"
        b_db = self.b.config.data_dir / "ledger.sqlite"

        def count(db: Path, sql: str) -> int:
            return int(query(db, sql)[0][0])

        def quiet() -> bool:
            decided = "('routed', 'route-failed', 'unrouted')"
            ended = "('delivered', 'delivery-dead')"
            return (
                count(a_db, f"SELECT count(*) FROM audit WHERE action IN {decided}") >= self.routed
                and not count(
                    a_db, "SELECT count(*) FROM outgoing WHERE state IN ('queued', 'active')"
                )
                and count(b_db, f"SELECT count(*) FROM audit WHERE action IN {ended}")
                >= count(b_db, "SELECT count(*) FROM audit WHERE action = 'received'")
            )

        with anyio.fail_after(timeout):
            while not quiet():
                await anyio.sleep(0.05)

    def problems(self) -> list[tuple[Any, ...]]:
        """Audit rows of anything the chain failed to do."""
        bad = "('unrouted', 'route-failed', 'dead-letter', 'delivery-dead')"
        sql = f"SELECT org, action, detail FROM audit WHERE action IN {bad}"
        return [
            *query(self.a.config.data_dir / "ledger.sqlite", sql),
            *query(self.b.config.data_dir / "ledger.sqlite", sql),
        ]


@asynccontextmanager
async def chain(
    orgs: Pki,
    root: Path,
    *,
    routes: tuple[Route, ...] = (Route(to="RX2"),),
    a_tls: DicomTls | None = None,
    b_tls: DicomTls | None = None,
    pacs_tls: Sequence[str] = (),
) -> AsyncIterator[Chain]:
    """PACSB's storescp, node B delivering into it, node A routing to B. DICOM
    TLS: ``a_tls`` for node A's SCP, ``b_tls`` for B's deliveries, and
    ``pacs_tls`` DCMTK's options for PACSB (``+tls KEY CERT +cf CA``)."""
    pacs_port = closed_port()
    with storescp(root / "pacs-b", pacs_port, options=(*pacs_tls, *PACS_OPTIONS)):
        async with Node(delivering_node(orgs, root / "b", pacs_port, tls=b_tls)) as b:
            assert b.port is not None
            async with Node(routing_node(orgs, root / "a", b.port, routes, tls=a_tls)) as a:
                assert a.dicom_port is not None
                yield Chain(a=a, b=b, pacs=root / "pacs-b")
