"""Where SQLite's SQL and PostgreSQL's differ: the only place.

Statements and tables are written once (``statements.py``, ``migrations.py``)
with ``?`` for each parameter and ``{name}`` for each of the fragments below;
``Dialect.render`` turns them into one backend's SQL, once, when a ledger opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class Dialect:
    name: str
    placeholder: str  # what ``?`` becomes
    fragments: dict[str, str]  # what each ``{name}`` becomes
    json_arrays: bool  # a list parameter is bound as JSON text (SQLite has no arrays)

    def render(self, template: str) -> str:
        rendered = template.format_map(self.fragments)
        # psycopg reads % as the start of a placeholder; no statement needs one.
        # A brace left over is a fragment's name mistyped (or escaped once too often).
        assert not {"%", "{", "}"} & set(rendered), template
        return rendered.replace("?", self.placeholder)

    def array(self, values: Iterable[Any]) -> Any:
        """A list bound to one parameter of ``{in_texts}`` or ``{in_integers}``."""
        return json.dumps(list(values)) if self.json_arrays else list(values)


# How much later than the last a repeated delivery request is stamped, at
# least (``add_delivery``: a newer request is always a later stamp).
STAMP_STEP = 1e-6

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    json_arrays=True,
    fragments={
        # Types. SQLite's REAL is 8 bytes, as PostgreSQL's double precision: a
        # stamp handed out (add_delivery) compares equal when it comes back.
        "real": "REAL",
        "blob": "BLOB",
        # The table is its primary key's b-tree: no rowid beside it.
        "without_rowid": " WITHOUT ROWID",
        "serial_key": "INTEGER PRIMARY KEY",
        # A list of values as one parameter, however long (no limit on variables).
        "in_texts": "IN (SELECT value FROM json_each(?))",
        "in_integers": "IN (SELECT value FROM json_each(?))",
        "greatest": "max",
        "distinct_modalities": "group_concat(DISTINCT a.modality)",
        # Row locks: BEGIN IMMEDIATE already makes every transaction the only writer.
        "for_update": "",
        "for_update_skip_locked": "",
        "columns_of_table": "SELECT name FROM pragma_table_info(?)",
        # A transfer's instances, for the store. SQLite applies an upsert's rows
        # in turn, so in index order the last version of a UID is the one kept.
        "received_in_commit_order": "incoming_instances WHERE sender = ? AND transfer_id = ?"
        " ORDER BY idx",
    },
)

POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    json_arrays=False,
    fragments={
        "real": "DOUBLE PRECISION",
        "blob": "BYTEA",
        "without_rowid": "",
        "serial_key": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "in_texts": "= ANY(?::text[])",
        "in_integers": "= ANY(?::integer[])",
        "greatest": "greatest",
        "distinct_modalities": "string_agg(DISTINCT a.modality, ',')",
        # A concurrent commit of the same transfer waits for this one, then sees its receipt.
        "for_update": " FOR UPDATE",
        # Claimers pass over each other's candidates instead of queueing on them.
        "for_update_skip_locked": " FOR UPDATE SKIP LOCKED",
        # Tables are found through search_path: the ledger's own schema.
        "columns_of_table": "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ?",
        # PostgreSQL refuses to update a row twice in one statement: only the last
        # index of each UID, in key order (so that concurrent commits cannot deadlock).
        "received_in_commit_order": "(SELECT DISTINCT ON (sop_uid) sop_uid, digest, size,"
        " sender, transfer_id FROM incoming_instances WHERE sender = ? AND transfer_id = ?"
        " ORDER BY sop_uid, idx DESC) AS latest ORDER BY sop_uid",
    },
)
