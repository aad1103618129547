"""The DICOMweb application (Starlette): who calls, what they may see, and
the answers of STOW-RS, QIDO-RS and WADO-RS. Every call that reads or writes
patient data is audited in the node's audit trail: who (organisation and
how it proved it), what study, from where, and the outcome; so is every
caller turned away."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomrelay._native import InstanceInfo
from dicomrelay.audit import Outcome
from dicomrelay.config import NodeConfig
from dicomrelay.errors import BadRequest, InstanceNotStored
from dicomrelay.inbound import InboundRules
from dicomrelay.instance_store import InstanceStore
from dicomrelay.intake import QUARANTINE
from dicomrelay.ledger import Ledger
from dicomrelay.ledger.archive import StoredAttributes
from dicomrelay.ledger.search import Match, Search
from dicomrelay.web import auth, dicom_json, media, pixels, retrieve, stow
from dicomrelay.web.attributes import Level
from dicomrelay.web.links import PatientLinks
from dicomrelay.web.query import parse_qido

log = logging.getLogger("dicomrelay.web")

PEER_ORG = "dicomrelay.peer_org"  # the ASGI scope's key for a certificate's organisation
DICOM_JSON = "application/dicom+json"
JSON_OFFERS = [media.MediaType(DICOM_JSON), media.MediaType("application/json")]
RENDERED_OFFERS = [media.MediaType("image/jpeg"), media.MediaType("image/png")]


@dataclass(frozen=True, slots=True)
class _Call:
    caller: auth.Caller
    where: str

    @property
    def who(self) -> str:
        return f"{self.caller.org} ({self.caller.proof}) from {self.where}"


class Denied(Exception):
    """A request answered with ``status`` and nothing else (already audited)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}


def _problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class DicomWebApp:
    """The ASGI app over a node's ledger and store (``asgi``)."""

    def __init__(self, config: NodeConfig, ledger: Ledger, store: InstanceStore) -> None:
        assert config.web is not None
        self.config = config
        self.ledger = ledger
        self.store = store
        self.peers = frozenset(p.code for p in config.peers)
        self.inbound_rules = InboundRules.of(config.policy)
        self.quarantine = config.data_dir / QUARANTINE
        # STOW-RS parts as they arrive; a round appends them to the store.
        # Left over by a crash: never acknowledged, nothing refers to them.
        self.incoming = config.data_dir / "web" / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        s, i = "/dicomweb/studies/{study}", "/series/{series}/instances/{sop}"
        routes = [
            Route("/dicomweb/studies", self._stow, methods=["POST"]),
            Route(s, self._stow, methods=["POST"]),
            Route("/dicomweb/studies", self._qido("study"), methods=["GET"]),
            Route("/dicomweb/series", self._qido("series"), methods=["GET"]),
            Route("/dicomweb/instances", self._qido("instance"), methods=["GET"]),
            Route(s + "/series", self._qido("series"), methods=["GET"]),
            Route(s + "/instances", self._qido("instance"), methods=["GET"]),
            Route(s + "/series/{series}/instances", self._qido("instance"), methods=["GET"]),
            Route(s, self._instances, methods=["GET"]),
            Route(s + "/series/{series}", self._instances, methods=["GET"]),
            Route(s + i, self._instances, methods=["GET"]),
            Route(s + "/metadata", self._metadata, methods=["GET"]),
            Route(s + "/series/{series}/metadata", self._metadata, methods=["GET"]),
            Route(s + i + "/metadata", self._metadata, methods=["GET"]),
            Route(s + i + "/frames/{frames}", self._frames, methods=["GET"]),
            Route(s + i + "/rendered", self._rendered, methods=["GET"]),
            Route(s + i + "/frames/{frames}/rendered", self._rendered, methods=["GET"]),
        ]
        routes.append(Route("/metrics", self._metrics, methods=["GET"]))
        routes.append(Route("/status", self._status, methods=["GET"]))
        routes.extend(PatientLinks(config, ledger, store).routes())
        self.asgi = Starlette(routes=routes)

    # Who calls, and the audit of what they did.
    async def _audit(self, org: str, action: str, detail: str) -> None:
        await self.ledger.audit(org, f"dicomweb-{action}", None, detail[:2000])

    async def _authenticate(self, request: Request, what: str) -> _Call:
        where = f"{request.client.host}:{request.client.port}" if request.client else "?"
        token = auth.bearer_token(request.headers.get("authorization"))
        peer_org = request.scope.get(PEER_ORG)
        if token is not None:
            found = await self.ledger.token(auth.token_hash(token))
            judged = auth.judge_token(found, now=time.time())
            if isinstance(judged, auth.Caller):
                return _Call(judged, where)
            reason = judged.reason
            challenge = 'Bearer error="invalid_token"'
        elif peer_org is not None:
            caller = auth.judge_certificate(peer_org, node_org=self.config.org, peers=self.peers)
            if caller is not None:
                return _Call(caller, where)
            reason = f"certificate of {peer_org}, not a peer"
            challenge = "Bearer"
        else:
            reason, challenge = "no credentials", "Bearer"
        org = found.org if token is not None and found is not None else (peer_org or "?")
        await self._audit(org, "refused", f"{reason}, from {where}: {what}: 401")
        raise Denied(401, reason, {"WWW-Authenticate": challenge})

    async def _handle(
        self, request: Request, what: str, serve: Callable[[_Call], Awaitable[Response]]
    ) -> Response:
        """Authenticate, then serve; every refusal answered and audited."""
        try:
            call = await self._authenticate(request, what)
        except Denied as e:
            return _problem(e.status, str(e), e.headers)
        try:
            return await serve(call)
        except BadRequest as e:
            await self._audit(call.caller.org, "failed", f"{call.who}: {what}: {e.status} {e}")
            return _problem(e.status, str(e))
        except Denied as e:
            return _problem(e.status, str(e), e.headers)
        except InstanceNotStored as e:  # indexed, then dropped by retention
            return _problem(404, str(e))

    def _base(self, request: Request) -> str:
        web = self.config.web
        assert web is not None
        if web.base_url is not None:
            return web.base_url.rstrip("/") + "/dicomweb"
        # The address the caller reached (a Host header may leave out the port).
        host, port = request.scope.get("server") or (web.host, web.port)
        return f"{request.url.scheme}://{host}:{port}/dicomweb"

    # Operators.
    async def _metrics(self, request: Request) -> Response:
        """Counts, no patient data: any caller the node admits may read them
        (a Prometheus server with a read token), unaudited."""
        from dicomrelay.web import metrics

        try:
            await self._authenticate(request, "metrics")
        except Denied as e:
            return _problem(e.status, str(e), e.headers)
        counts = await self.ledger.metrics()
        quarantined = metrics.quarantined(await self.ledger.held_counts())
        return Response(metrics.exposition(counts, quarantined), media_type=metrics.CONTENT_TYPE)

    async def _status(self, request: Request) -> Response:
        """What ``dicomrelay status`` reports, for the node's own operators
        only (a token, or the certificate of the node's own organisation)."""
        from dicomrelay.status_report import status_report
        from dicomrelay.web.status_page import status_page

        try:
            call = await self._authenticate(request, "status page")
        except Denied as e:
            return _problem(e.status, str(e), e.headers)
        if call.caller.org != self.config.org:
            await self._audit(call.caller.org, "denied", f"{call.who}: status page: 403")
            return _problem(403, "the status page is for this node's own organisation")
        report = await status_report(self.ledger)
        page = status_page(self.config.org, report)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    # STOW-RS.
    async def _stow(self, request: Request) -> Response:
        study = request.path_params.get("study")
        what = f"store into study {study}" if study else "store"

        async def serve(call: _Call) -> Response:
            if not call.caller.may_write():
                await self._audit(call.caller.org, "denied", f"{call.who}: {what}: 403 read only")
                raise Denied(403, "this token may read, not store")
            boundary = stow.check_content_type(request.headers.get("content-type"))
            if media.negotiate(request.headers.get("accept"), JSON_OFFERS) is None:
                raise BadRequest("STOW-RS answers application/dicom+json", 406)

            async def refused(f: stow.Failure) -> None:
                detail = f"{call.who}: {f.sop_instance_uid or '?'}: {f.why}"
                if f.kept is not None:
                    detail += f"; held in quarantine as {f.kept.id}"
                await self._audit(call.caller.org, "dataset-refused", detail)

            result = await stow.receive(
                request.stream(),
                boundary,
                store=self.store,
                incoming=self.incoming,
                ledger=self.ledger,
                quarantine=self.quarantine,
                digest=self.config.digest,
                sender=call.caller.org,
                study_uid=study,
                refused=refused,
                inbound=self._inbound(call),
            )
            base = self._base(request)
            studies = sorted({a.study_uid for a in result.stored})
            for uid in studies:
                n = sum(a.study_uid == uid for a in result.stored)
                await self._audit(
                    call.caller.org, "stored", f"{call.who}: study {uid}: {n} instances"
                )
            url = f"{base}/studies/{study or studies[0]}" if (study or len(studies) == 1) else None
            answer = dicom_json.stow_answer(
                url,
                [(a.sop_class_uid, a.sop_uid, _instance_url(base, a)) for a in result.stored],
                [(f.sop_class_uid, f.sop_instance_uid, f.reason) for f in result.failed],
            )
            # PS3.18 10.5.3: all stored 200, some 202, none 409.
            status = 200 if not result.failed else 202 if result.stored else 409
            return Response(orjson.dumps(answer), status_code=status, media_type=DICOM_JSON)

        return await self._handle(request, what, serve)

    def _inbound(self, call: _Call) -> stow.Inbound | None:
        """The node's inbound rules for a caller of another organisation (its
        certificate): each instance judged as one arriving over the exchange
        would be, refusals audited with their study and patient. A study its
        rule reconciles is refused: STOW-RS does not reconcile, and an
        unreconciled study must not be filed. None for the node's own callers."""
        org = call.caller.org
        if org == self.config.org or self.inbound_rules is None:
            return None
        rules = self.inbound_rules

        async def judge(info: InstanceInfo) -> stow.Failure | None:
            decision = rules.judge_info(info, sender=org, priority="routine").decision
            reason = decision.reason
            if decision.allowed and decision.reconcile is not None:
                reason = f"{reason}, which reconciles: send it over the exchange, not STOW-RS"
            elif decision.allowed:
                return None
            await self.ledger.audit(
                org,
                "policy-refused",
                None,
                f"{call.who}: STOW-RS of {info.sop_instance_uid}: {reason}",
                study_uid=info.study_instance_uid,
                patient_id=info.patient_id,
                remote=call.where,
                outcome=Outcome.MINOR_FAILURE,
            )
            return stow.Failure(
                info.sop_class_uid or "", info.sop_instance_uid or "", stow.NOT_AUTHORIZED, reason
            )

        return judge

    # QIDO-RS.
    def _qido(self, level: Level) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._search(request, level)

        return endpoint

    async def _search(self, request: Request, level: Level) -> Response:
        path = {
            k: v
            for k, v in (
                ("StudyInstanceUID", request.path_params.get("study")),
                ("SeriesInstanceUID", request.path_params.get("series")),
            )
            if v is not None
        }
        what = f"search {level} {request.url.query}"[:300]

        async def serve(call: _Call) -> Response:
            if media.negotiate(request.headers.get("accept"), JSON_OFFERS) is None:
                raise BadRequest("QIDO-RS answers application/dicom+json", 406)
            qido = parse_qido(
                level,
                request.query_params.multi_items(),
                visible_to=call.caller.visibility(self.config.org),
                path_uids=path,
            )
            rows = await self.ledger.search(qido.search)
            base = self._base(request)
            results = []
            for row in rows:
                attributes = dicom_json.row_attributes(level, row)
                item = dicom_json.dataset(attributes, qido.fields)
                item["00081190"] = {"vr": "UR", "Value": [_url(base, level, attributes)]}
                results.append(dict(sorted(item.items())))
            studies = sorted({r["0020000D"]["Value"][0] for r in results if "0020000D" in r})
            detail = f"{call.who}: {what}: 200, {len(results)} found"
            if studies:
                detail += f" in studies {' '.join(studies[:20])}"
            await self._audit(call.caller.org, "searched", detail)
            headers = {"Warning": ", ".join(f'299 dicomrelay "{w}"' for w in qido.warnings)}
            return Response(
                orjson.dumps(results),
                media_type=DICOM_JSON,
                headers=headers if qido.warnings else None,
            )

        return await self._handle(request, what, serve)

    # WADO-RS.
    async def _visible(self, request: Request, call: _Call, what: str) -> list[StoredAttributes]:
        """The instances a retrieval names that the caller may see; 404 (and
        audited) if none: a study of another organisation is not there for it."""
        p = request.path_params
        matches = [Match("study_uid", "uids", (p["study"],))]
        if "series" in p:
            matches.append(Match("series_uid", "uids", (p["series"],)))
        if "sop" in p:
            matches.append(Match("sop_uid", "uids", (p["sop"],)))
        search = Search(
            level="instance",
            visible_to=call.caller.visibility(self.config.org),
            matches=tuple(matches),
        )
        found = await self.ledger.stored_instances(search)
        if not found:
            await self._audit(call.caller.org, "denied", f"{call.who}: {what}: 404 not found")
            raise Denied(404, "no such study, series or instance here for this caller")
        return found

    async def _instances(self, request: Request) -> Response:
        what = _what(request, "retrieve")

        async def serve(call: _Call) -> Response:
            found = await self._visible(request, call, what)
            syntaxes = {a.transfer_syntax for a in found}
            params = {"type": "application/dicom"}
            if len(syntaxes) == 1:
                params["transfer-syntax"] = next(iter(syntaxes))
            offer = media.MediaType("multipart/related", params)
            if media.negotiate(request.headers.get("accept"), [offer]) is None:
                raise BadRequest(
                    "instances are sent as stored: multipart/related; type=application/dicom"
                    f" in {', '.join(sorted(syntaxes))}",
                    406,
                )
            size = sum(a.size for a in found)
            await self._audit(
                call.caller.org,
                "retrieved",
                f"{call.who}: {what}: 200, {len(found)} instances, {size} bytes",
            )
            located = await retrieve.Located.of(self.store, [a.digest for a in found])
            boundary = retrieve.new_boundary()
            return StreamingResponse(
                retrieve.instances_body(located, found, boundary),
                media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
            )

        return await self._handle(request, what, serve)

    async def _metadata(self, request: Request) -> Response:
        what = _what(request, "metadata of")

        async def serve(call: _Call) -> Response:
            if media.negotiate(request.headers.get("accept"), JSON_OFFERS) is None:
                raise BadRequest("metadata is application/dicom+json", 406)
            found = await self._visible(request, call, what)
            await self._audit(
                call.caller.org, "retrieved", f"{call.who}: {what}: 200, {len(found)} instances"
            )
            base = self._base(request)
            located = await retrieve.Located.of(self.store, [a.digest for a in found])

            def body() -> Any:
                yield b"["
                for n, a in enumerate(found):
                    header = retrieve.header_of(located, a)
                    uri = None
                    if a.pixel_offset is not None:
                        frames = ",".join(str(k) for k in range(1, pixels.frame_count(a) + 1))
                        uri = f"{_instance_url(base, a)}/frames/{frames}"
                    yield (b"," if n else b"") + orjson.dumps(dicom_json.metadata(header, uri))
                yield b"]"

            return StreamingResponse(body(), media_type=DICOM_JSON)

        return await self._handle(request, what, serve)

    async def _frames(self, request: Request) -> Response:
        what = _what(request, "frames of")

        async def serve(call: _Call) -> Response:
            numbers = pixels.parse_frame_list(request.path_params["frames"])
            [a] = await self._visible(request, call, what)
            kind = (
                pixels.FRAME_MEDIA_TYPES.get(a.transfer_syntax, "application/octet-stream")
                if a.encapsulated
                else "application/octet-stream"
            )
            offer = media.MediaType(
                "multipart/related", {"type": kind, "transfer-syntax": a.transfer_syntax}
            )
            if media.negotiate(request.headers.get("accept"), [offer]) is None:
                raise BadRequest(
                    f'frames are sent as stored: multipart/related; type="{kind}";'
                    f" transfer-syntax={a.transfer_syntax}",
                    406,
                )
            located = await retrieve.Located.of(self.store, [a.digest])
            frames = await anyio.to_thread.run_sync(self._frames_of, located, a, numbers)
            await self._audit(
                call.caller.org, "retrieved", f"{call.who}: {what}: 200, {len(frames)} frames"
            )
            boundary = retrieve.new_boundary()
            return StreamingResponse(
                retrieve.frames_body(located, a, frames, kind, boundary),
                media_type=f'multipart/related; type="{kind}"; boundary={boundary}',
            )

        return await self._handle(request, what, serve)

    def _frames_of(
        self, located: retrieve.Located, a: StoredAttributes, numbers: list[int]
    ) -> list[pixels.Frame]:
        return retrieve.frames(located, a, numbers)

    async def _rendered(self, request: Request) -> Response:
        what = _what(request, "rendered")

        async def serve(call: _Call) -> Response:
            numbers = pixels.parse_frame_list(request.path_params.get("frames", "1"))
            chosen = media.negotiate(request.headers.get("accept"), RENDERED_OFFERS)
            if chosen is None:
                raise BadRequest("rendered frames are image/jpeg or image/png", 406)
            [a] = await self._visible(request, call, what)
            located = await retrieve.Located.of(self.store, [a.digest])
            image = await anyio.to_thread.run_sync(
                retrieve.rendered, located, a, numbers[0], chosen.type
            )
            await self._audit(call.caller.org, "retrieved", f"{call.who}: {what}: 200")
            return Response(image, media_type=chosen.type)

        return await self._handle(request, what, serve)


def _what(request: Request, verb: str) -> str:
    p = request.path_params
    out = f"{verb} study {p.get('study')}"
    if "series" in p:
        out += f" series {p['series']}"
    if "sop" in p:
        out += f" instance {p['sop']}"
    if "frames" in p:
        out += f" frames {p['frames']}"
    return out


def _instance_url(base: str, a: StoredAttributes) -> str:
    return f"{base}/studies/{a.study_uid}/series/{a.series_uid}/instances/{a.sop_uid}"


def _url(base: str, level: Level, attributes: dict[str, Any]) -> str:
    url = f"{base}/studies/{attributes['StudyInstanceUID']}"
    if level in ("series", "instance"):
        url += f"/series/{attributes['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{attributes['SOPInstanceUID']}"
    return url
