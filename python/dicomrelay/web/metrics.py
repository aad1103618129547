"""``/metrics``: what the node's ledger knows, in Prometheus's text format
(prometheus-client), read afresh at each scrape: transfers by destination,
priority and state (and their instances), a histogram of done transfers'
latency (queued to receipt) by destination, instances and bytes sent
(acknowledged) and received, the store, deliveries into the PACS, callers
and datasets refused (by the audit action that recorded them), and what
lies in quarantine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dicomrelay.ledger.base import TransferState
from dicomrelay.ledger.statements import LATENCY_BUCKETS

Counts = dict[str, list[tuple[Any, ...]]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    """One scrape's figures, already read."""

    def __init__(
        self, counts: dict[str, list[tuple[Any, ...]]], quarantined: dict[str, int]
    ) -> None:
        self.counts = counts
        self.quarantined = quarantined

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        transfers = GaugeMetricFamily(
            "dicomrelay_transfers",
            "Outgoing transfers by destination, priority and state",
            labels=["destination", "priority", "state"],
        )
        instances = GaugeMetricFamily(
            "dicomrelay_transfer_instances",
            "Instances in outgoing transfers by destination, priority and state",
            labels=["destination", "priority", "state"],
        )
        seen: set[tuple[str, str]] = set()
        by_key = {(d, p, s): (n, i) for d, p, s, n, i in c["transfers"]}
        for destination, priority, _state, _n, _i in c["transfers"]:
            seen.add((destination, priority))
        for destination, priority in sorted(seen):
            for state in TransferState:  # every state, zero included: a gauge that can drop
                n, i = by_key.get((destination, priority, state.value), (0, 0))
                transfers.add_metric([destination, priority, state.value], n)
                instances.add_metric([destination, priority, state.value], i)
        yield transfers
        yield instances
        latency = HistogramMetricFamily(
            "dicomrelay_transfer_latency_seconds",
            "Done transfers by destination: seconds from queued to the receiver's receipt",
            labels=["destination"],
        )
        for destination, *cumulative, count, total in c["latency"]:
            buckets = [(repr(b), int(n)) for b, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
            latency.add_metric([destination], [*buckets, ("+Inf", int(count))], float(total))
        yield latency
        sent_instances = CounterMetricFamily(
            "dicomrelay_sent_instances",
            "Instances acknowledged by destination",
            labels=["destination"],
        )
        sent_bytes = CounterMetricFamily(
            "dicomrelay_sent_bytes", "Bytes acknowledged by destination", labels=["destination"]
        )
        for destination, n, size in c["sent"]:
            sent_instances.add_metric([destination], n)
            sent_bytes.add_metric([destination], size)
        yield sent_instances
        yield sent_bytes
        received_instances = CounterMetricFamily(
            "dicomrelay_received_instances", "Instances received by sender", labels=["sender"]
        )
        received_bytes = CounterMetricFamily(
            "dicomrelay_received_bytes", "Bytes received by sender", labels=["sender"]
        )
        for sender, n, size in c["received"]:
            received_instances.add_metric([sender], n)
            received_bytes.add_metric([sender], size)
        yield received_instances
        yield received_bytes
        [(stored, stored_bytes)] = c["store"]
        yield GaugeMetricFamily("dicomrelay_store_instances", "Instances in the store", stored)
        yield GaugeMetricFamily("dicomrelay_store_bytes", "Bytes in the store", stored_bytes)
        deliveries = GaugeMetricFamily(
            "dicomrelay_deliveries", "Deliveries into the PACS by state", labels=["state"]
        )
        for state, n in c["deliveries"]:
            deliveries.add_metric([state], n)
        yield deliveries
        refusals = CounterMetricFamily(
            "dicomrelay_refusals", "Callers and datasets turned away, by reason", labels=["reason"]
        )
        for action, n in c["refusals"]:
            refusals.add_metric([action], n)
        yield refusals
        quarantine = GaugeMetricFamily(
            "dicomrelay_quarantined",
            "Instances held in quarantine, by the kind of hold",
            labels=["kind"],
        )
        for kind, n in sorted(self.quarantined.items()):
            quarantine.add_metric([kind], n)
        yield quarantine


# Kinds of hold always reported (zero included): a gauge that can drop.
HOLD_KINDS = ("burned-in-annotation", "dicom-refused", "not-storable", "unreadable")


def quarantined(held: dict[str, int]) -> dict[str, int]:
    """Instances held, by kind: the ledger's holds (``held_counts``), every
    kind named (the storage SCP's refusals are holds too, ``dicom-refused``)."""
    return dict.fromkeys(HOLD_KINDS, 0) | held


def exposition(counts: Counts, quarantine: dict[str, int]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counts, quarantine))
    return generate_latest(registry)
