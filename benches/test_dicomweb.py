"""WADO-RS retrieval of a stored study against the loadtest's sending side,
over the same 1,000-slice CT study, in the same run, rounds interleaved.

- ``wado-rs``: a node (``dicomrelay serve``, its own process) serving
  DICOMweb over HTTP on loopback; one GET of the study, its multipart body
  read as it streams (the client counts the instances and bytes). Images/s
  from the request to the last byte; CPU is the serving node's.
- ``loadtest``: ``dicomrelay loadtest --from`` the same files (two nodes,
  mutual TLS, SHA-256, durable commit); images/s of its sending side.

The node's memory is watched over a large retrieval: the study streamed 8
times over on one connection (about 4.2 GB), its RSS before and after and its
peak; streaming from the store must hold it flat.

A patient link's download of the same study (the CD-like ZIP: every header
read for the DICOMDIR first, then each instance streamed from the store) is
raced against the WADO-RS retrieval, and its memory watched the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from benches import races
from benches.peers import ENV, Server, free_port, listening, rounds, settle_disk
from dicomrelay import pki
from dicomrelay.loadtest.run import LoadtestOptions, run_loadtest
from dicomrelay.web.multipart import MultipartParser, PartEnd

ROUNDS = 3
LARGE_REPEATS = 8


class WebNode:
    def __init__(
        self, server: Any, base: str, token: str, study: str, size: int, link: str
    ) -> None:
        self.pid = server.pid
        self.base = base
        self.token = token
        self.study = study
        self.size = size  # bytes of the study
        self.link = link  # a patient link to it

    def download(self, repeats: int = 1) -> tuple[int, int, float]:
        """The link's ZIP ``repeats`` times on one connection, streamed: the
        instances (the study's, as the archive holds each), bytes read, seconds."""
        received = 0
        with requests.Session() as session:
            session.trust_env = False
            start = time.perf_counter()
            for _ in range(repeats):
                answer = session.get(f"{self.link}/study.zip", stream=True)
                assert answer.status_code == 200
                length = int(answer.headers["content-length"])
                got = sum(len(chunk) for chunk in answer.iter_content(1 << 20))
                assert got == length > self.size
                received += got
            return 1000 * repeats, received, time.perf_counter() - start

    def retrieve(self, repeats: int = 1) -> tuple[int, int, float]:
        """GET the study ``repeats`` times on one connection, streamed: the
        instances and bytes read, and the seconds it took."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        }
        instances = received = 0
        with requests.Session() as session:
            session.trust_env = False
            start = time.perf_counter()
            for _ in range(repeats):
                answer = session.get(
                    f"{self.base}/studies/{self.study}", headers=headers, stream=True
                )
                assert answer.status_code == 200
                boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
                parser = MultipartParser(boundary)
                for chunk in answer.iter_content(1 << 20):
                    received += len(chunk)
                    instances += sum(isinstance(e, PartEnd) for e in parser.feed(chunk))
                parser.close()
            return instances, received, time.perf_counter() - start


def _rss(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith("Vm")}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


@pytest.fixture(scope="module")
def study_dir(study_paths: list[Path]) -> Path:
    return study_paths[0].parent


@pytest.fixture(scope="module")
def web_node(
    study_paths: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebNode]:
    root = tmp_path_factory.mktemp("dicomweb-node")
    pki.make_ca(root / "ca")
    rx1 = pki.issue_org(root / "ca", "RX1", root / "pki")
    port = free_port()
    config = root / "rx1.toml"
    config.write_text(
        f'[node]\norg = "RX1"\ndata_dir = "{root / "data"}"\n\n'
        f'[tls]\ncert = "{rx1.cert}"\nkey = "{rx1.key}"\nca = "{rx1.ca}"\n\n'
        f"[web]\nport = {port}\n"
    )
    command = [sys.executable, "-m", "dicomrelay"]
    made = subprocess.run(
        [*command, "token", "create", "bench", "--scope", "write", "--config", str(config)],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    with listening([*command, "serve", "--config", str(config)], port) as server:
        base = f"http://127.0.0.1:{port}/dicomweb"
        client = DICOMwebClient(base, headers={"Authorization": f"Bearer {token}"})
        for start in range(0, len(study_paths), 100):
            client.store_instances([dcmread(p) for p in study_paths[start : start + 100]])
        study = dcmread(study_paths[0], stop_before_pixels=True).StudyInstanceUID
        size = sum(p.stat().st_size for p in study_paths)
        shared = subprocess.run(
            [*command, "share", study, "--config", str(config)],
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        link = shared.stdout.strip().splitlines()[-1]
        yield WebNode(server, base, token, study, size, link)


def node_round(
    benchmark: Any, web_node: WebNode, fetch: Callable[[], tuple[int, int, float]]
) -> tuple[races.Round, int]:
    """One timed fetch of the 1,000-slice study from the node, the node's CPU
    per image for it, and the bytes received."""
    node = Server(web_node.pid)
    before = node.cpu()
    instances, received, seconds = benchmark.pedantic(fetch, rounds=1, iterations=1)
    spent = node.cpu() - before
    assert instances == 1000
    cpu = {"sender": spent.per_image_ms(instances)}
    return races.Round(images=instances, seconds=seconds, cpu_ms_per_image=cpu), received


def wado_race() -> races.Race:
    return races.race(
        report="dicomweb",
        name="wado-ct-1000",
        baseline="loadtest",
        describe="1,000 CT slices of 514 KB, one study:"
        " WADO-RS retrieval vs the loadtest's sending side",
        cpu_notes={
            "wado-rs": "the serving node's process during the retrieval",
            "loadtest": "the loadtest's sending node during the transfer",
        },
    )


@pytest.mark.parametrize(
    ("round_", "name"),
    rounds(["loadtest", "wado-rs"], ROUNDS),
    ids=[f"{name}-round{n}" for n, name in rounds(["loadtest", "wado-rs"], ROUNDS)],
)
def test_wado_retrieval_vs_loadtest(
    benchmark: Any, web_node: WebNode, study_dir: Path, tmp_path: Path, round_: int, name: str
) -> None:
    benchmark.group = "dicomweb-1000"
    if name == "loadtest":
        options = LoadtestOptions(source=study_dir, workdir=tmp_path)

        def send() -> dict[str, Any]:
            settle_disk()
            return run_loadtest(options)

        summary: dict[str, Any] = benchmark.pedantic(send, rounds=1, iterations=1)
        assert summary["failed"] == 0
        measured = races.Round(
            images=summary["images"],
            seconds=summary["seconds"],
            cpu_ms_per_image={
                "sender": {k: summary[f"sender_{k}_cpu_ms_per_image"] for k in races.KINDS}
            },
        )
    else:
        measured, received = node_round(benchmark, web_node, web_node.retrieve)
        assert received > web_node.size
    wado_race().record(name, measured)
    benchmark.extra_info.update(
        images=measured.images,
        seconds=round(measured.seconds, 3),
        images_per_second=round(measured.images_per_second, 1),
    )


def test_wado_memory_stays_flat(benchmark: Any, web_node: WebNode) -> None:
    """The study streamed 8 times over (about 4.2 GB): the node's RSS grows
    by less than 100 MB."""
    benchmark.group = "dicomweb-memory"
    web_node.retrieve()  # warm: the first retrieval's imports and buffers
    rss_before, _ = _rss(web_node.pid)
    instances, received, seconds = benchmark.pedantic(
        web_node.retrieve, args=(LARGE_REPEATS,), rounds=1, iterations=1
    )
    rss_after, peak = _rss(web_node.pid)
    assert instances == 1000 * LARGE_REPEATS
    growth = max(rss_after, peak) - rss_before
    benchmark.extra_info.update(
        gigabytes=round(received / 1e9, 2),
        images_per_second=round(instances / seconds, 1),
        rss_before_mb=round(rss_before, 1),
        rss_after_mb=round(rss_after, 1),
        peak_rss_mb=round(peak, 1),
        growth_mb=round(growth, 1),
    )
    assert growth < 100, f"RSS grew by {growth:.0f} MB over {received / 1e9:.1f} GB"


def link_race() -> races.Race:
    return races.race(
        report="dicomweb",
        name="link-zip-ct-1000",
        baseline="wado-rs",
        describe="1,000 CT slices of 514 KB, one study: a patient link's ZIP download"
        " (DICOMDIR made first) vs WADO-RS retrieval, from the same node",
        cpu_notes={"wado-rs": "the serving node's process", "link-zip": "the same"},
    )


@pytest.mark.parametrize(
    ("round_", "name"),
    rounds(["wado-rs", "link-zip"], ROUNDS),
    ids=[f"{name}-round{n}" for n, name in rounds(["wado-rs", "link-zip"], ROUNDS)],
)
def test_link_zip_vs_wado(benchmark: Any, web_node: WebNode, round_: int, name: str) -> None:
    benchmark.group = "dicomweb-link-zip"
    fetch = web_node.download if name == "link-zip" else web_node.retrieve
    measured, received = node_round(benchmark, web_node, fetch)
    instances, seconds = measured.images, measured.seconds
    link_race().record(name, measured)
    benchmark.extra_info.update(
        images=instances,
        megabytes=round(received / 1e6, 1),
        seconds=round(seconds, 3),
        images_per_second=round(measured.images_per_second, 1),
    )


def test_link_zip_memory_stays_flat(benchmark: Any, web_node: WebNode) -> None:
    """The link's ZIP downloaded 8 times over (about 4.2 GB): the node's RSS
    grows by less than 100 MB (the DICOMDIR's records are small; the
    instances are streamed)."""
    benchmark.group = "dicomweb-memory"
    web_node.download()  # warm
    rss_before, _ = _rss(web_node.pid)
    instances, received, seconds = benchmark.pedantic(
        web_node.download, args=(LARGE_REPEATS,), rounds=1, iterations=1
    )
    rss_after, peak = _rss(web_node.pid)
    growth = max(rss_after, peak) - rss_before
    benchmark.extra_info.update(
        gigabytes=round(received / 1e9, 2),
        images_per_second=round(instances / seconds, 1),
        rss_before_mb=round(rss_before, 1),
        peak_rss_mb=round(peak, 1),
        growth_mb=round(growth, 1),
    )
    assert growth < 100, f"RSS grew by {growth:.0f} MB over {received / 1e9:.1f} GB"
