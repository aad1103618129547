"""A QIDO-RS search as one SQL statement, for either backend: a pure function
of the search (matches already parsed and checked by the web layer) and the
dialect. Columns come from the fixed list below, never from the caller;
every value is a parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dicomrelay.ledger.archive import ATTRIBUTE_COLUMNS, Visibility
from dicomrelay.ledger.dialect import Dialect

Level = Literal["study", "series", "instance"]

# The attributes a search may match on, by the column that holds them.
COLUMNS = frozenset(
    {
        "study_uid",
        "series_uid",
        "sop_uid",
        "sop_class_uid",
        "patient_id",
        "patient_name",
        "accession_number",
        "modality",
        "study_date",
    }
)


@dataclass(frozen=True, slots=True)
class Match:
    """One attribute's condition (PS3.4 C.2.2.2): ``uids`` any of a list;
    ``exact`` one value; ``wildcard`` a value with * and ? (matched without
    regard to case); ``range`` from ``low`` to ``high`` (either open: None)."""

    column: str
    kind: Literal["uids", "exact", "wildcard", "range"]
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None

    def __post_init__(self) -> None:
        if self.column not in COLUMNS:
            raise ValueError(f"no such attribute column: {self.column!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Search:
    level: Level
    visible_to: Visibility
    matches: tuple[Match, ...] = ()
    modalities_in_study: tuple[str, ...] = ()  # studies with an instance of any of these
    limit: int | None = None  # None: every match
    offset: int = 0  # (with a limit)


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern (escape character ``\\``)."""
    out = []
    for c in value.upper():
        if c in "\\%_":
            out.append("\\" + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


def _condition(m: Match, dialect: Dialect) -> tuple[str, list[Any]]:
    col = f"a.{m.column}"
    if m.kind == "uids":
        return f"{col} {{in_texts}}", [dialect.array(m.values)]
    if m.kind == "exact":
        return f"{col} = ?", [m.values[0]]
    if m.kind == "wildcard":
        return f"upper({col}) LIKE ? ESCAPE '\\'", [like_pattern(m.values[0])]
    parts, params = [], []
    if m.low is not None:
        parts.append(f"{col} >= ?")
        params.append(m.low)
    if m.high is not None:
        parts.append(f"{col} <= ?")
        params.append(m.high)
    return " AND ".join(parts) or "1 = 1", params


# What each level returns, in this order (study attributes are one instance's:
# they are the same on every instance of a study).
STUDY_COLUMNS = (
    "a.study_uid, max(a.patient_id), max(a.patient_name), max(a.accession_number),"
    " max(a.study_date), max(a.charset), {distinct_modalities},"
    " count(DISTINCT a.series_uid), count(*)"
)
SERIES_COLUMNS = (
    "a.study_uid, max(a.patient_id), max(a.patient_name), max(a.accession_number),"
    " max(a.study_date), max(a.charset), a.series_uid, max(a.modality), count(*)"
)
INSTANCE_COLUMNS = ", ".join(f"a.{c.strip()}" for c in ATTRIBUTE_COLUMNS.split(","))


def search_sql(search: Search, dialect: Dialect) -> tuple[str, list[Any]]:
    """The statement and its parameters."""
    v = search.visible_to
    where = [
        "(CAST(? AS INTEGER) = 1 OR s.sender = ?"
        " OR s.study_uid IN (SELECT study_uid FROM outgoing WHERE destination = ?))"
    ]
    params: list[Any] = [int(v.everything), v.org, v.org]
    for m in search.matches:
        sql, p = _condition(m, dialect)
        where.append(sql)
        params += p
    if search.modalities_in_study:
        where.append(
            "a.study_uid IN (SELECT m.study_uid FROM instance_attributes m"
            " WHERE m.modality {in_texts})"
        )
        params.append(dialect.array(search.modalities_in_study))
    if search.level == "study":
        columns, group, order = STUDY_COLUMNS, " GROUP BY a.study_uid", "a.study_uid"
    elif search.level == "series":
        columns = SERIES_COLUMNS
        group, order = " GROUP BY a.study_uid, a.series_uid", "a.study_uid, a.series_uid"
    else:
        columns, group, order = INSTANCE_COLUMNS, "", "a.study_uid, a.series_uid, a.sop_uid"
    sql = (
        f"SELECT {columns} FROM store s JOIN instance_attributes a ON a.digest = s.digest"
        f" WHERE {' AND '.join(where)}{group} ORDER BY {order}"
    )
    if search.limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [search.limit, search.offset]
    return dialect.render(sql), params
