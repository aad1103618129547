"""Patient links in the node's web server (``dicomrelay.sharing`` makes
them): ``/s/{token}`` shows the study to a person, ``/s/{token}/preview/
{series}`` a preview of each series, ``/s/{token}/study.zip`` the whole
study as a CD-like ZIP, streamed.

Each request looks its link up by the token's hash and serves the one study
it names, nothing else: an unknown link is 404, an expired or revoked one
410, a locked one 403, each a page a person understands. A link with a PIN
first asks for it (wrong PINs counted in the ledger, locked at the limit);
the right one sets a cookie scoped to the link's path. Every view, preview
and download is audited under the link's id, with the study, the remote
address and the outcome; so is every refusal."""

from __future__ import annotations

import hmac
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from pydicom import Dataset
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomrelay import sharing
from dicomrelay.audit import Outcome
from dicomrelay.config import NodeConfig
from dicomrelay.errors import BadRequest, InstanceNotStored
from dicomrelay.instance_store import InstanceStore
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.archive import StoredAttributes, Visibility
from dicomrelay.ledger.search import Match, Search
from dicomrelay.ledger.shares import ShareLink
from dicomrelay.web import dicom_json, link_pages, pixels, retrieve, study_zip

PREVIEW_SIDE = 384  # pixels, the longer side of a series' preview
PIN_COOKIE = "pin"
MAX_FORM = 1024  # bytes of a PIN form's body
# Nothing a link serves is cached, indexed, framed, or sent on as a referrer.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class _Refused(Exception):
    """A request a link does not serve: the page for ``kind`` (already audited)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _refusal(kind: str) -> Response:
    status, page = link_pages.refusal_page(kind)
    return HTMLResponse(page, status_code=status, headers=HEADERS)


def _natural(uid: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in uid.split("."))


class PatientLinks:
    """The link routes over a node's ledger and store."""

    def __init__(self, config: NodeConfig, ledger: Ledger, store: InstanceStore) -> None:
        self.config = config
        self.ledger = ledger
        self.store = store

    def routes(self) -> list[Route]:
        return [
            Route("/s/{token}", self._page, methods=["GET"]),
            Route("/s/{token}", self._pin, methods=["POST"]),
            Route("/s/{token}/preview/{series}", self._preview, methods=["GET"]),
            Route("/s/{token}/study.zip", self._download, methods=["GET"]),
        ]

    # Which link, and whether it opens.
    async def _audit(
        self,
        who: str,
        action: str,
        detail: str,
        request: Request,
        *,
        study: str | None = None,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None:
        remote = request.client.host if request.client else None
        await self.ledger.audit(
            who, action, None, detail[:2000], study_uid=study, remote=remote, outcome=outcome
        )

    async def _link(self, request: Request, what: str) -> ShareLink:
        """The link the path names, if it opens; else audited and refused."""
        token = request.path_params["token"]
        link = await self.ledger.share_link(sharing.token_hash(token))
        verdict = sharing.judge(link, now=time.time())
        if verdict == "open":
            assert link is not None
            return link
        who = link.id if link is not None else "unknown-link"
        await self._audit(
            who,
            "share-refused",
            f"{what}: link {verdict}",
            request,
            study=link.study_uid if link is not None else None,
            outcome=Outcome.MINOR_FAILURE,
        )
        raise _Refused(verdict)

    def _pin_given(self, request: Request, link: ShareLink) -> bool:
        if link.pin_hash is None:
            return True
        held = request.cookies.get(PIN_COOKIE, "").encode("utf-8", "replace")
        return hmac.compare_digest(held, sharing.pin_cookie(link).encode())

    async def _opened(self, request: Request, what: str) -> ShareLink:
        """An open link whose PIN, if it has one, this browser gave."""
        link = await self._link(request, what)
        if not self._pin_given(request, link):
            await self._audit(
                link.id,
                "share-refused",
                f"{what}: no PIN given",
                request,
                study=link.study_uid,
                outcome=Outcome.MINOR_FAILURE,
            )
            raise _Refused("pin")
        return link

    async def _instances(self, link: ShareLink) -> list[StoredAttributes]:
        search = Search(
            level="instance",
            visible_to=Visibility(org=self.config.org, everything=True),
            matches=(Match("study_uid", "uids", (link.study_uid,)),),
        )
        return await self.ledger.stored_instances(search)

    def _public_path(self, request: Request) -> str:
        """The link's path as the browser sees it (under ``base_url``'s own path)."""
        web = self.config.web
        prefix = urllib.parse.urlsplit(web.base_url).path if web and web.base_url else ""
        return prefix.rstrip("/") + sharing.PATH + str(request.path_params["token"])

    # The page.
    async def _page(self, request: Request) -> Response:
        try:
            link = await self._link(request, "page")
            if not self._pin_given(request, link):
                return HTMLResponse(link_pages.pin_page(_relative(request)), headers=HEADERS)
            found = await self._instances(link)
            if not found:
                raise _Refused(await self._gone(request, link, "page"))
            located = await retrieve.Located.of(self.store, [a.digest for a in found])
            summary = await anyio.to_thread.run_sync(_summary, located, found, _relative(request))
        except _Refused as e:
            return _refusal(e.kind)
        except InstanceNotStored:
            return _refusal(await self._gone(request, link, "page"))
        await self._audit(
            link.id,
            "share-viewed",
            f"link {link.id}: page of study {link.study_uid}: {summary.images} images"
            f" in {len(summary.series)} series",
            request,
            study=link.study_uid,
        )
        return HTMLResponse(link_pages.study_page(summary), headers=HEADERS)

    async def _gone(self, request: Request, link: ShareLink, what: str) -> str:
        await self._audit(
            link.id,
            "share-refused",
            f"{what}: study {link.study_uid} no longer in the store",
            request,
            study=link.study_uid,
            outcome=Outcome.MINOR_FAILURE,
        )
        return "gone"

    async def _pin(self, request: Request) -> Response:
        try:
            link = await self._link(request, "PIN")
        except _Refused as e:
            return _refusal(e.kind)
        if link.pin_hash is None:  # nothing to enter: back to the page
            return RedirectResponse(_relative(request), status_code=303, headers=HEADERS)
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_FORM:
                return _refusal("pin")
        given = urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("pin", [""])[0]
        if await anyio.to_thread.run_sync(sharing.pin_matches, given, link.pin_hash):
            await self.ledger.share_pin_passed(link.id)
            await self._audit(
                link.id, "share-pin-accepted", f"link {link.id}", request, study=link.study_uid
            )
            answer = RedirectResponse(_relative(request), status_code=303, headers=HEADERS)
            answer.set_cookie(
                PIN_COOKIE,
                sharing.pin_cookie(link),
                max_age=max(1, int(min(link.expires - time.time(), 12 * 3600))),
                path=self._public_path(request),
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return answer
        failures, locked = await self.ledger.share_pin_failed(link.id, limit=sharing.PIN_ATTEMPTS)
        await self._audit(
            link.id,
            "share-pin-refused",
            f"link {link.id}: wrong PIN ({failures} in a row)" + (", locked" if locked else ""),
            request,
            study=link.study_uid,
            outcome=Outcome.MINOR_FAILURE,
        )
        if locked:
            return _refusal("locked")
        left = sharing.PIN_ATTEMPTS - failures
        error = f"That PIN is not right. {left} attempt{'s' if left != 1 else ''} left."
        return HTMLResponse(
            link_pages.pin_page(_relative(request), error=error), status_code=403, headers=HEADERS
        )

    # A series' preview.
    async def _preview(self, request: Request) -> Response:
        series = request.path_params["series"]
        try:
            link = await self._opened(request, f"preview of series {series}")
            members = [
                a
                for a in await self._instances(link)
                if a.series_uid == series and a.pixel_offset is not None
            ]
            if not members:
                raise _Refused("unknown")
            chosen = _representative(members)
            located = await retrieve.Located.of(self.store, [chosen.digest])
            image = await anyio.to_thread.run_sync(_preview_jpeg, located, chosen)
        except _Refused as e:
            return _refusal(e.kind)
        except (BadRequest, InstanceNotStored) as e:
            return Response(f"no preview: {e}", status_code=404, headers=HEADERS)
        await self._audit(
            link.id,
            "share-viewed",
            f"link {link.id}: preview of series {series} (instance {chosen.sop_uid})",
            request,
            study=link.study_uid,
        )
        return Response(image, media_type="image/jpeg", headers=HEADERS)

    # The whole study.
    async def _download(self, request: Request) -> Response:
        try:
            link = await self._opened(request, "download")
            found = await self._instances(link)
            if not found:
                raise _Refused(await self._gone(request, link, "download"))
            located = await retrieve.Located.of(self.store, [a.digest for a in found])
            archive = await anyio.to_thread.run_sync(study_zip.study_zip, located, found)
        except _Refused as e:
            return _refusal(e.kind)
        except InstanceNotStored:
            return _refusal(await self._gone(request, link, "download"))
        size = len(archive)
        head = request.method == "HEAD"  # its size asked, nothing sent
        await self._audit(
            link.id,
            "share-viewed" if head else "share-downloaded",
            f"link {link.id}: study {link.study_uid} as ZIP: {len(found)} instances,"
            f" {size} bytes{' (its size only: HEAD)' if head else ''}",
            request,
            study=link.study_uid,
        )
        date = "".join(c for c in found[0].study_date or "" if c.isdigit())[:8]
        name = f"study-{date or 'images'}.zip"
        headers = HEADERS | {
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        return StreamingResponse(iter(archive), media_type="application/zip", headers=headers)


def _relative(request: Request) -> str:
    """The link's page relative to itself (its token): the pages' links hold
    whatever a proxy in front of the node put before ``/s/``."""
    return str(request.path_params["token"])


def _text(header: Dataset, keyword: str) -> str:
    """A header's value as text; empty if absent or not what its VR holds."""
    try:
        return str(header.get(keyword, "") or "").strip()
    except (ValueError, TypeError, OverflowError):
        return ""


def _representative(members: Sequence[StoredAttributes]) -> StoredAttributes:
    """The series' middle instance (by UID, numerically): for a stack of
    slices, one from its middle rather than its edge."""
    ordered = sorted(members, key=lambda a: (_natural(a.sop_uid), a.sop_uid))
    return ordered[len(ordered) // 2]


def _preview_jpeg(located: retrieve.Located, a: StoredAttributes) -> bytes:
    frames = pixels.frame_count(a)
    picture = retrieve.rendered_image(located, a, (frames + 1) // 2)
    return pixels.encode(pixels.shrunk(picture, PREVIEW_SIDE), "image/jpeg")


def _summary(
    located: retrieve.Located, found: Sequence[StoredAttributes], base: str
) -> link_pages.StudySummary:
    """What the page shows, from the ledger's records and one header per
    series (descriptions and numbers are not indexed). Runs on a worker thread."""
    by_series: dict[str, list[StoredAttributes]] = {}
    for a in found:
        by_series.setdefault(a.series_uid, []).append(a)
    cards: list[tuple[int, link_pages.SeriesCard]] = []
    study: dict[str, Any] = {}
    for uid, members in by_series.items():
        header = dicom_json.header_dataset(retrieve.header_of(located, members[0]))
        if not study:
            study = {
                "date": _text(header, "StudyDate") or members[0].study_date,
                "description": _text(header, "StudyDescription"),
            }
        number = _text(header, "SeriesNumber")
        card = link_pages.SeriesCard(
            uid=uid,
            number=number or "?",
            description=_text(header, "SeriesDescription"),
            modality=members[0].modality or "",
            images=len(members),
            preview_url=f"{base}/preview/{urllib.parse.quote(uid)}"
            if any(a.pixel_offset is not None for a in members)
            else None,
        )
        cards.append((int(number) if number.lstrip("-").isdigit() else 1 << 31, card))
    cards.sort(key=lambda c: (c[0], c[1].uid))
    return link_pages.StudySummary(
        date=link_pages.human_date(str(study.get("date") or "")),
        description=study.get("description", ""),
        modalities=sorted({a.modality for a in found if a.modality}),
        images=len(found),
        size=sum(a.size for a in found),
        series=[c for _, c in cards],
        download_url=f"{base}/study.zip",
    )
