"""A node serving DICOMweb on loopback, in a thread of the test's own (its
event loop on uvloop), configured from a TOML file as an operator would."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from anyio.from_thread import BlockingPortal, start_blocking_portal
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from dicomrelay.config import NodeConfig
from dicomrelay.node import Node
from peers import dicomrelay_command, run

from .helpers import Pki, closed_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_picture(data: bytes) -> tuple[str, np.ndarray]:
    """A picture's format, by its signature, and its pixels decoded: rows x
    columns (grey) or rows x columns x channels."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG", np.asarray(imagecodecs.png_decode(data))
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", np.asarray(imagecodecs.jpeg8_decode(data))
    raise AssertionError(f"neither PNG nor JPEG: {data[:8]!r}")


def size_of(pixels: np.ndarray) -> tuple[int, int]:
    """(width, height), as an image viewer says it."""
    return pixels.shape[1], pixels.shape[0]


def write_config(root: Path, orgs: Pki, *, https: bool = False, rules: str = "") -> Path:
    """RX1's TOML file (a peer RX2; ``rules``, TOML of its own), its DICOMweb on a free port."""
    rx1 = orgs.identity("RX1")
    web = "[web]\nport = 0\n"
    if https:
        web += f'cert = "{rx1.cert}"\nkey = "{rx1.key}"\n'
    path = root / "rx1.toml"
    path.write_text(
        f"""[node]
org = "RX1"
data_dir = "{root / "data"}"

[tls]
cert = "{rx1.cert}"
key = "{rx1.key}"
ca = "{rx1.ca}"

[[peers]]
org = "RX2"
host = "127.0.0.1"
port = {closed_port()}

{web}
{rules}"""
    )
    return path


@dataclass(frozen=True)
class Serving:
    node: Node
    base: str  # the DICOMweb root URL
    portal: BlockingPortal  # runs the node's coroutines from the test's thread

    def client(self, token: str | None) -> DICOMwebClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return DICOMwebClient(self.base, headers=headers)


@contextmanager
def serving(config_path: Path) -> Iterator[Serving]:
    config = NodeConfig.from_toml(config_path)
    with (
        start_blocking_portal("asyncio", {"use_uvloop": True}) as portal,
        portal.wrap_async_context_manager(Node(config)) as node,
    ):
        scheme = "https" if config.web is not None and config.web.cert else "http"
        yield Serving(node, f"{scheme}://127.0.0.1:{node.web_port}/dicomweb", portal)


def create_token(config_path: Path, name: str, scope: str, *extra: str) -> str:
    """``dicomrelay token create``, as an operator runs it: the token is its last line."""
    done = run(
        dicomrelay_command(
            "token", "create", name, "--scope", scope, "--config", str(config_path), *extra
        )
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def revoke_token(config_path: Path, name: str) -> None:
    done = run(dicomrelay_command("token", "revoke", name, "--config", str(config_path)))
    assert done.returncode == 0, done.stderr


def read_datasets(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def encoded(ds: Dataset) -> bytes:
    """A dataset as dicomweb-client sends it (pydicom writes it as read)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
