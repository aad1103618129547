"""``/status``: what ``dicomrelay status`` reports (``status_report``), as
a page for the node's own operators: transfers by destination, priority and
state, the latest transfers, and every dead letter with its reason. It
refreshes itself every 30 s. No patient names are shown (studies by UID)."""

from __future__ import annotations

from html import escape
from typing import Any

from dicomrelay.web.link_pages import CSS

TABLE_CSS = """
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0 24px;font-size:.9rem}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e7ee;vertical-align:top}
th{background:#e9edf3}td.n{text-align:right;font-variant-numeric:tabular-nums}
div.scroll{overflow-x:auto}
ul.counts{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0}
ul.counts li{background:#fff;border-radius:8px;padding:8px 12px}
"""


def _table(headings: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{v}</td>' if isinstance(v, int) else f"<td>{escape(str(v or ''))}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def status_page(org: str, report: dict[str, Any]) -> str:
    counts = "".join(
        f"<li>{escape(k)}: <strong>{v}</strong></li>" for k, v in report["counts"].items()
    )
    by_destination = _table(
        ["destination", "priority", "state", "transfers", "instances"],
        [
            [r["to"], r["priority"], r["state"], r["transfers"], r["instances"]]
            for r in report["by_destination"]
        ],
        "No transfers.",
    )
    latest = _table(
        ["transfer", "destination", "state", "priority", "acknowledged", "attempts", "error"],
        [
            [
                r["id"],
                r["to"],
                r["state"],
                r["priority"],
                f"{r['acked']}/{r['total']}",
                r["attempts"],
                r["error"] if r["state"] != "done" else "",
            ]
            for r in report["transfers"]
        ],
        "No transfers.",
    )
    dead = _table(
        ["transfer", "destination", "study", "attempts", "reason"],
        [
            [d["id"], d["to"], d["study"], d["attempts"], d["reason"]]
            for d in report["dead_letters"]
        ],
        "No dead letters.",
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="refresh" content="30">'
        f"<title>{escape(org)}: status</title><style>{CSS}{TABLE_CSS}</style></head><body><main>"
        f'<h1>{escape(org)}: transfers</h1><ul class="counts">{counts}</ul>'
        f"<h2>By destination, priority and state</h2>{by_destination}"
        f"<h2>Dead letters</h2><p>Each waits for <code>dicomrelay retry TRANSFER_ID</code>.</p>"
        f"{dead}<h2>Latest transfers</h2>{latest}</main></body></html>\n"
    )
