"""The pages a patient link shows a person: the study (its date,
description, modalities, number of images, each series with a preview),
the PIN form, and the pages of a link that does not open (unknown, expired,
revoked, locked). Plain HTML and one small stylesheet, no script, readable
on a phone (one column) and on a desktop (a grid of series). Pure: text in,
text out; every value from the study is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1d2430;background:#f3f5f8}
main{max-width:1100px;margin:0 auto;padding:16px}
header.study{background:#fff;border-radius:12px;padding:16px 20px;margin-bottom:16px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:1.4rem;margin:0 0 8px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#5b6575}dd{margin:0;font-weight:600}
a.download{display:block;margin:16px 0 0;padding:14px 16px;border-radius:10px;
background:#0b5fff;color:#fff;text-align:center;text-decoration:none;font-weight:700}
p.hint{color:#5b6575;font-size:.9rem;margin:8px 0 0}
ul.series{list-style:none;margin:0;padding:0;display:grid;gap:12px;
grid-template-columns:repeat(auto-fill,minmax(220px,1fr))}
ul.series li{background:#fff;border-radius:12px;overflow:hidden;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
ul.series img{display:block;width:100%;aspect-ratio:1/1;object-fit:contain;background:#000;
color:#ccc}
ul.series div{padding:8px 12px}
p.noimage{margin:0;aspect-ratio:1/1;display:flex;align-items:center;justify-content:center;
background:#e9edf3;color:#5b6575;padding:12px;text-align:center}
ul.series strong{display:block}
ul.series span{color:#5b6575;font-size:.9rem}
section.notice{background:#fff;border-radius:12px;padding:24px;max-width:560px;
margin:48px auto;box-shadow:0 1px 3px rgba(0,0,0,.08)}
form{display:flex;gap:8px;flex-wrap:wrap;margin-top:12px}
input{font-size:1.3rem;padding:10px;width:10ch;letter-spacing:.2em;border:1px solid #9aa4b2;
border-radius:8px}
button{font-size:1rem;padding:10px 18px;border:0;border-radius:8px;background:#0b5fff;
color:#fff;font-weight:700}
p.error{color:#b00020;font-weight:600}
@media (max-width:600px){main{padding:10px}h1{font-size:1.2rem}
ul.series{grid-template-columns:1fr 1fr}}
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class SeriesCard:
    uid: str
    number: str
    description: str
    modality: str
    images: int
    preview_url: str | None  # None: nothing in it to picture (a report, a document)


@dataclass(frozen=True, kw_only=True, slots=True)
class StudySummary:
    date: str  # as shown (``27 November 2026``), or empty
    description: str
    modalities: Sequence[str]
    images: int
    size: int  # bytes of the download's instances
    series: Sequence[SeriesCard]
    download_url: str


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex,nofollow">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError  # pragma: no cover


MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def human_date(dicom_date: str | None) -> str:
    """``20261127`` as ``27 November 2026``; anything else as it is."""
    months = MONTHS
    d = (dicom_date or "").strip()
    if len(d) == 8 and d.isdigit() and 1 <= int(d[4:6]) <= 12:
        return f"{int(d[6:])} {months[int(d[4:6]) - 1]} {d[:4]}"
    return d


def study_page(s: StudySummary) -> str:
    images = f"{s.images} image{'s' if s.images != 1 else ''}"
    facts = [
        ("Date", s.date or "not recorded"),
        ("Description", s.description or "none"),
        ("Modality", ", ".join(s.modalities) or "not recorded"),
        ("Images", f"{images} in {len(s.series)} series"),
    ]
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    cards = "".join(
        "<li>"
        + _preview(c)
        + f"<div><strong>{escape(c.description or 'Series ' + c.number)}</strong>"
        f"<span>Series {escape(c.number)} · {escape(c.modality or '?')} · {c.images} "
        f"image{'s' if c.images != 1 else ''}</span></div></li>"
        for c in s.series
    )
    body = (
        '<header class="study">'
        f"<h1>{escape(s.description or 'Your imaging study')}</h1><dl>{rows}</dl>"
        f'<a class="download" href="{escape(s.download_url)}" download>'
        f"Download all images (ZIP, {human_size(s.size)})</a>"
        '<p class="hint">The ZIP is laid out as on a CD from a hospital: unzip it and '
        "open the folder (or its DICOMDIR) in a DICOM viewer.</p></header>"
        f'<ul class="series">{cards}</ul>'
    )
    return _page(s.description or "Imaging study", body)


def _preview(c: SeriesCard) -> str:
    if c.preview_url is None:
        return '<p class="noimage">No picture: a report or document</p>'
    return (
        f'<img src="{escape(c.preview_url)}" alt="No preview of series {escape(c.number)}"'
        ' width="256" height="256">'
    )


def pin_page(action: str, *, error: str | None = None) -> str:
    problem = f'<p class="error">{escape(error)}</p>' if error else ""
    body = (
        '<section class="notice"><h1>Enter your PIN</h1>'
        "<p>This link to your images is protected by a PIN, sent to you separately "
        "from the link.</p>"
        f'{problem}<form method="post" action="{escape(action)}">'
        '<label for="pin" hidden>PIN</label>'
        '<input id="pin" name="pin" inputmode="numeric" autocomplete="one-time-code" '
        'pattern="[0-9]*" maxlength="12" required autofocus>'
        '<button type="submit">Open</button></form></section>'
    )
    return _page("Enter your PIN", body)


# The pages of a link that does not open: (status, title, what to tell the person).
REFUSALS = {
    "unknown": (
        404,
        "Link not found",
        "This link does not lead to any images. Check that it was copied whole, "
        "or ask whoever sent it for a new one.",
    ),
    "expired": (
        410,
        "This link has expired",
        "Links to images work for a limited time, and this one's has passed. "
        "Ask whoever sent it for a new link.",
    ),
    "revoked": (
        410,
        "This link was withdrawn",
        "Whoever shared these images has withdrawn the link. "
        "Ask them for a new one if you still need the images.",
    ),
    "locked": (
        403,
        "This link is locked",
        "A wrong PIN was entered too many times, so the link was locked to keep the "
        "images safe. Ask whoever sent it for a new link.",
    ),
    "gone": (
        410,
        "These images are no longer available",
        "The images this link led to are no longer kept here. Ask whoever sent it for a new link.",
    ),
    "pin": (
        403,
        "PIN needed",
        "Open the link itself and enter your PIN first.",
    ),
}


def refusal_page(kind: str) -> tuple[int, str]:
    status, title, text = REFUSALS[kind]
    body = f'<section class="notice"><h1>{escape(title)}</h1><p>{escape(text)}</p></section>'
    return status, _page(title, body)
