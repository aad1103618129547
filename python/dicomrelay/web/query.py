"""QIDO-RS query parameters (PS3.18 8.3.4) as a ledger ``Search``: pure.

Matching follows PS3.4 C.2.2.2: a UID key matches any of a list (``,`` or
``\\`` between UIDs); a date a single date or a range (``a-b``, ``-b``,
``a-``); a text key its value exactly, or with ``*`` and ``?`` wildcards
(then without regard to case). An empty value matches everything. Keys
the index does not hold, though the DICOM dictionary knows them, are
ignored and named in a Warning header; anything else is a 400."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

from dicomrelay.errors import BadRequest
from dicomrelay.ledger.archive import Visibility
from dicomrelay.ledger.search import Match, Search
from dicomrelay.web.attributes import (
    AVAILABLE,
    DEFAULT_RESULT,
    MATCH_COLUMNS,
    SEARCH_KEYS,
    Level,
    keyword_of,
)

MAX_LIMIT = 10_000  # results a single answer holds at most
_DATE = re.compile(r"^[0-9]{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Qido:
    search: Search
    fields: tuple[str, ...]  # keywords to return, in order
    warnings: tuple[str, ...]


def _known_to_dictionary(key: str) -> str | None:
    """The keyword of a key the DICOM dictionary knows (but we do not index)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        tag = int(key, 16)
        return (keyword_for_tag(tag) or key) if dictionary_has_tag(tag) else None
    return key if tag_for_keyword(key) is not None else None


def _integer(name: str, value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"{name} must be a whole number, not {value[:20]!r}")
    return int(value)


def _match(keyword: str, value: str) -> Match | None:
    column = MATCH_COLUMNS[keyword]
    if keyword.endswith("UID"):
        uids = tuple(u for u in re.split(r"[,\\]", value) if u)
        if not all(_UID.match(u) and len(u) <= 64 for u in uids):
            raise BadRequest(f"{keyword} must be UIDs, not {value[:80]!r}")
        return Match(column, "uids", uids) if uids else None
    if keyword == "StudyDate":
        low, dash, high = value.partition("-")
        for d in (low, high):
            if d and not _DATE.match(d):
                raise BadRequest(f"StudyDate is YYYYMMDD or a range of them, not {value[:40]!r}")
        if not dash:
            return Match(column, "exact", (low,))
        return Match(column, "range", low=low or None, high=high or None)
    if "*" in value or "?" in value:
        return None if set(value) == {"*"} else Match(column, "wildcard", (value,))
    return Match(column, "exact", (value,))


def parse_qido(
    level: Level,
    params: list[tuple[str, str]],
    *,
    visible_to: Visibility,
    path_uids: dict[str, str],
) -> Qido:
    """``params`` as the query string gave them (repeats kept); ``path_uids``
    the UIDs the path names (StudyInstanceUID, SeriesInstanceUID)."""
    matches = [Match(MATCH_COLUMNS[k], "uids", (v,)) for k, v in path_uids.items()]
    modalities: tuple[str, ...] = ()
    limit, offset = MAX_LIMIT, 0
    fields = list(DEFAULT_RESULT[level])
    warnings = []
    for key, value in params:
        if key in _CONTROL:
            if key == "limit":
                limit = min(_integer(key, value), MAX_LIMIT)
            elif key == "offset":
                offset = _integer(key, value)
            elif key == "includefield":
                for item in filter(None, (f.strip() for f in value.split(","))):
                    if item == "all":
                        fields += sorted(AVAILABLE[level] - set(fields))
                        continue
                    keyword = keyword_of(item)
                    if keyword in AVAILABLE[level]:
                        if keyword not in fields:
                            fields.append(keyword)
                    elif keyword is not None or _known_to_dictionary(item) is not None:
                        warnings.append(f"{item} is not kept by this server: not returned")
                    else:
                        raise BadRequest(f"includefield names no DICOM attribute: {item[:40]!r}")
            elif value.lower() == "true":
                warnings.append("fuzzymatching is not supported: matched exactly")
            continue
        keyword = keyword_of(key)
        if keyword is None or keyword not in SEARCH_KEYS[level]:
            if _known_to_dictionary(key) is None and keyword is None:
                raise BadRequest(f"{key[:40]!r} is neither a query parameter nor a DICOM attribute")
            warnings.append(f"{key} is not a key this server matches at this level: ignored")
            continue
        if keyword == "ModalitiesInStudy":
            modalities += tuple(m for m in re.split(r"[,\\]", value) if m)
            continue
        match = _match(keyword, value)
        if match is not None:
            matches.append(match)
    search = Search(
        level=level,
        visible_to=visible_to,
        matches=tuple(matches),
        modalities_in_study=modalities,
        limit=limit,
        offset=offset,
    )
    return Qido(search=search, fields=tuple(fields), warnings=tuple(warnings))
