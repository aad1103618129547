"""Media types as HTTP carries them (RFC 9110): a Content-Type's parameters,
and the choice among what a resource can be sent as that an Accept header
prefers (PS3.18 8.7). Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomrelay.errors import BadRequest


@dataclass(frozen=True, slots=True)
class MediaType:
    type: str  # "multipart/related", lower case
    params: dict[str, str] = field(default_factory=dict)  # names lower case, unquoted
    q: float = 1.0

    def matches(self, offered: MediaType) -> bool:
        """Does this (a range from an Accept header) admit ``offered``? Its
        parameters must agree with the offer's, where the offer has them;
        ``transfer-syntax=*`` admits any."""
        major, _, minor = self.type.partition("/")
        o_major, _, o_minor = offered.type.partition("/")
        if major != "*" and (major != o_major or minor not in ("*", o_minor)):
            return False
        for name, value in self.params.items():
            have = offered.params.get(name)
            if have is None or (value == "*" and name == "transfer-syntax"):
                continue
            if name == "type":  # a multipart's type is itself a range: */*, image/*
                if not MediaType(value.lower()).matches(MediaType(have.lower())):
                    return False
            elif have.lower() != value.lower():
                return False
        return True


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(c)
    out.append("".join(current))
    return out


def parse(value: str) -> MediaType:
    """One media type (or range) with its parameters; BadRequest if malformed."""
    first, *rest = _split(value, ";")
    kind = first.strip().lower()
    if kind.count("/") != 1 or not all(kind.split("/")):
        raise BadRequest(f"not a media type: {value[:80]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for p in rest:
        if not p.strip():
            continue
        name, sep, v = p.partition("=")
        if not sep:
            raise BadRequest(f"a media type parameter without a value: {p[:40]!r}")
        name, v = name.strip().lower(), v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        if name == "q":
            try:
                q = float(v)
            except ValueError:
                raise BadRequest(f"a quality value is a number, not {v[:20]!r}") from None
        else:
            params[name] = v
    return MediaType(kind, params, q)


def parse_accept(header: str | None) -> list[MediaType]:
    """The ranges an Accept header lists (none: ``*/*``)."""
    if not header or not header.strip():
        return [MediaType("*/*")]
    return [parse(v) for v in _split(header, ",") if v.strip()]


def negotiate(header: str | None, offers: list[MediaType]) -> MediaType | None:
    """The offer the Accept header prefers: the highest quality any range
    gives it (the most specific range deciding, as RFC 9110 says), ties going
    to the earlier offer; None if nothing offered is acceptable (406)."""
    ranges = parse_accept(header)
    best: tuple[float, int, MediaType] | None = None
    for n, offer in enumerate(offers):
        fitting = [r for r in ranges if r.matches(offer)]
        if not fitting:
            continue
        most_specific = max(fitting, key=_specificity)
        q = most_specific.q
        if q <= 0:
            continue
        if best is None or q > best[0]:
            best = (q, n, offer)
    return None if best is None else best[2]


def _specificity(r: MediaType) -> tuple[int, int]:
    major, _, minor = r.type.partition("/")
    return (major != "*") + (minor != "*"), len(r.params)
