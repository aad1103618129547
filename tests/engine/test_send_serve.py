"""``dicomrelay send`` beside a running ``serve`` (same TOML, same ledger):
send never listens, the serving node sends what it queued at once, a send
killed mid-transfer is finished by the serving node within its lease, and a
dead letter is queued again by ``dicomrelay retry``. Two organisations, each
its own ``serve`` process, over mutual TLS."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import orjson
import pytest
from anyio.from_thread import start_blocking_portal

from dicomrelay.receipt import Receipt

from .helpers import Pki, closed_port, make_study, query, relay
from .processes import Child, dicomrelay, last_json_line, node_toml, receiver_toml

SERVE_TIMEOUT = 30
PICKUP_LIMIT = 1.0  # seconds from queued to claimed by the serving node


def sender_toml(
    root: Path,
    orgs: Pki,
    rx2_port: int,
    limits: dict[str, float],
    node: dict[str, str] | None = None,
) -> Path:
    """RX1, listening on a port of its own (as ``serve`` does), sending to RX2."""
    return node_toml(
        root / "rx1.toml",
        orgs.identity("RX1"),
        data_dir=root / "rx1",
        peer=("RX2", rx2_port),
        listen_port=closed_port(),
        limits=limits,
        node=node,
    )


def serve(toml: Path) -> Child:
    child = Child.dicomrelay("serve", "--config", os.fspath(toml))
    child.expect(r"serving \(port \d+\)", timeout=SERVE_TIMEOUT)
    return child


def row(db: Path, transfer_id: str) -> tuple[str, str | None, int, int]:
    """(state, claimed_by, attempts, acked instances) of an outgoing transfer."""
    [(state, claimed_by, attempts)] = query(
        db, "SELECT state, claimed_by, attempts FROM outgoing WHERE id = ?", transfer_id
    )
    [(acked,)] = query(
        db,
        "SELECT count(*) FROM outgoing_instances WHERE transfer_id = ? AND acked IS NOT NULL",
        transfer_id,
    )
    return state, claimed_by, attempts, acked


def wait_for(what: str, timeout: float, check: object) -> float:
    """Poll ``check`` (a callable) every 5 ms until true; the seconds it took."""
    assert callable(check)
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.005)
    return time.monotonic() - start


def serving_worker(toml: Path) -> str:
    """The worker name of the node serving ``toml``'s data directory."""
    return f"{socket.gethostname()}:{toml.parent / 'rx1'}"


@pytest.mark.parametrize("worker", [None, "relay-1"], ids=["lone-node", "named-worker"])
def test_send_beside_a_running_serve_is_sent_by_it(tmp_path: Path, worker: str | None) -> None:
    orgs = Pki(tmp_path / "pki")
    rx2_port = closed_port()
    rx2_toml = receiver_toml(tmp_path, orgs.identity("RX2"), rx2_port)
    # Polls so rare that only the wake-up can explain a prompt start.
    rx1_toml = sender_toml(
        tmp_path,
        orgs,
        rx2_port,
        {"claim_poll_seconds": 120.0, "lease_seconds": 600.0},
        node=None if worker is None else {"worker": worker},
    )
    db = tmp_path / "rx1" / "ledger.sqlite"
    source = make_study(tmp_path / "study", 5, seed=1)
    receiver, node = serve(rx2_toml), serve(rx1_toml)
    try:
        send = Child.dicomrelay(
            "send", os.fspath(source), "--to", "RX2", "--config", os.fspath(rx1_toml)
        )
        transfer_id = send.expect(r"transfer (\w+) queued", timeout=60)[1]
        # Queued (the row's creation) to claimed by the serving node.
        [(created,)] = query(db, "SELECT created FROM outgoing WHERE id = ?", transfer_id)
        wait_for("claimed", 10, lambda: row(db, transfer_id)[:2] != ("queued", None))
        pickup = time.time() - created
        send.expect(r"started", timeout=30)
        send.expect(r"verified: 5/5", timeout=30)
        send.expect(r"committed", timeout=30)
        receipt = Receipt.from_json(send.expect(r"^\{.*\}$", timeout=30)[0])
        send.popen.wait(30)
        assert send.popen.returncode == 0, send.output()
        receipt.verify(orgs.cert_der("RX2"))
        assert receipt.transfer_id == transfer_id
        assert "from here" not in send.output(), "send sent it itself"
        assert pickup < PICKUP_LIMIT, f"the serving node took {pickup:.3f}s to start it"
        print(f"queued -> claimed by serve: {pickup * 1000:.0f} ms")

        # A send killed while it waits: the serving node finishes its transfer.
        other = make_study(tmp_path / "other", 5, seed=2)
        send = Child.dicomrelay(
            "send", os.fspath(other), "--to", "RX2", "--config", os.fspath(rx1_toml)
        )
        killed_id = send.expect(r"transfer (\w+) queued", timeout=60)[1]
        assert send.kill()
        wait_for("the serving node commits it", 30, lambda: row(db, killed_id)[0] == "done")
        assert node.alive()
        assert receiver.alive()
    finally:
        node.stop()
        receiver.stop()
    received = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(rx2_toml)))
    assert received["counts"]["received_committed"] == 2
    assert received["counts"]["stored_instances"] == 10


def test_a_send_killed_mid_transfer_is_finished_by_the_running_serve(tmp_path: Path) -> None:
    """No node serves RX1 when ``send`` starts, so it sends alone, on a lease,
    through a link that then hangs mid-study; a ``serve`` started meanwhile
    leaves it alone while the lease holds, and takes it over once ``send`` is
    killed and the lease runs out."""
    orgs = Pki(tmp_path / "pki")
    rx2_port = closed_port()
    rx2_toml = receiver_toml(tmp_path, orgs.identity("RX2"), rx2_port)
    lease, poll = 3.0, 0.5
    db = tmp_path / "rx1" / "ledger.sqlite"
    source = make_study(tmp_path / "study", 20, seed=3)
    receiver = serve(rx2_toml)
    node: Child | None = None
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(relay(rx2_port, freeze_after=600_000)) as link,
        ):
            limits = {"lease_seconds": lease, "claim_poll_seconds": poll, "stall_timeout": 120.0}
            rx1_toml = sender_toml(tmp_path, orgs, link.port, limits)
            send = Child.dicomrelay(
                "send", os.fspath(source), "--to", "RX2", "--config", os.fspath(rx1_toml)
            )
            transfer_id = send.expect(r"transfer (\w+) queued", timeout=60)[1]
            send.expect(r"no node serves this ledger here: sending it from here", timeout=10)
            send.expect(r"started", timeout=30)
            wait_for("the link hangs mid-study", 30, lambda: link.frozen)
            holder = row(db, transfer_id)[1]
            assert holder is not None
            assert holder.startswith("send-"), holder

            node = serve(rx1_toml)
            time.sleep(2 * lease)  # send renews its lease: the serving node keeps off
            assert row(db, transfer_id)[:2] == ("active", holder)

            assert send.kill()
            killed = time.monotonic()
            link.freeze_after = None
            link.frozen = False
            worker = serving_worker(rx1_toml)
            wait_for("taken over", lease + 10, lambda: row(db, transfer_id)[1] == worker)
            takeover = time.monotonic() - killed
            wait_for("committed", 60, lambda: row(db, transfer_id)[0] == "done")
        assert takeover <= lease + poll + 1.5, f"taken over {takeover:.2f}s after the kill"
        print(f"kill -> taken over by serve: {takeover:.2f} s (lease {lease} s)")
        assert node.alive()
    finally:
        if node is not None:
            node.stop()
        receiver.stop()
    status = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(rx1_toml)))
    [done] = [t for t in status["transfers"] if t["id"] == transfer_id]
    assert (done["state"], done["acked"], done["total"]) == ("done", 20, 20)
    received = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(rx2_toml)))
    assert received["counts"]["stored_instances"] == 20


def test_retry_requeues_a_dead_letter_and_status_names_its_reason(tmp_path: Path) -> None:
    orgs = Pki(tmp_path / "pki")
    rx2_port = closed_port()  # nobody there yet
    rx2_toml = receiver_toml(tmp_path, orgs.identity("RX2"), rx2_port)
    limits = {"max_attempts": 2, "backoff_base": 0.05, "backoff_cap": 0.2, "connect_timeout": 2.0}
    rx1_toml = sender_toml(tmp_path, orgs, rx2_port, limits)
    db = tmp_path / "rx1" / "ledger.sqlite"
    source = make_study(tmp_path / "study", 3, seed=4)
    node = serve(rx1_toml)
    receiver: Child | None = None
    try:
        sent = dicomrelay("send", os.fspath(source), "--to", "RX2", "--config", os.fspath(rx1_toml))
        assert sent.returncode == 1, sent.stderr
        [transfer_id] = [r[0] for r in query(db, "SELECT id FROM outgoing")]
        # Each retry told with its reason, then the failure.
        assert f"transfer {transfer_id} retrying: " in sent.stderr, sent.stderr
        assert "refused" in sent.stderr.lower(), sent.stderr
        assert "failed" in sent.stderr
        assert row(db, transfer_id)[0] == "dead"

        status = dicomrelay("status", "--json", "--config", os.fspath(rx1_toml))
        [dead] = orjson.loads(status.stdout)["dead_letters"]
        assert (dead["id"], dead["to"], dead["attempts"]) == (transfer_id, "RX2", 2)
        assert "refused" in (dead["reason"] or "").lower(), dead
        text = dicomrelay("status", "--config", os.fspath(rx1_toml)).stdout
        assert "dead letters" in text
        assert f"{transfer_id}  RX2" in text
        assert dead["reason"] in text

        # Only a dead letter, and only one the ledger has.
        unknown = dicomrelay("retry", "f" * 32, "--config", os.fspath(rx1_toml))
        assert unknown.returncode == 1
        assert "no transfer" in unknown.stderr

        receiver = serve(rx2_toml)
        again = dicomrelay("retry", transfer_id, "--config", os.fspath(rx1_toml))
        assert again.returncode == 0, again.stderr
        assert f"transfer {transfer_id} queued again" in again.stderr
        wait_for("the serving node delivers it", 30, lambda: row(db, transfer_id)[0] == "done")
        twice = dicomrelay("retry", transfer_id, "--config", os.fspath(rx1_toml))
        assert twice.returncode == 1
        assert "not a dead letter" in twice.stderr
    finally:
        node.stop()
        if receiver is not None:
            receiver.stop()
    audit = query(db, "SELECT action, transfer_id FROM audit WHERE action = 'requeued'")
    assert audit == [("requeued", transfer_id)]
    after = last_json_line(dicomrelay("status", "--json", "--config", os.fspath(rx1_toml)))
    assert after["dead_letters"] == []
