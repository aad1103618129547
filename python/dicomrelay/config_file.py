"""Reading a node's TOML file with errors a person can act on.

Every mistake is one ConfigurationError that names the file and, as far as
known, the line and column, the table and the key: ``rx1.toml:3:7: ...`` for
TOML syntax, ``rx1.toml: [node] needs 'org'`` for a missing key, ``rx1.toml:
[limits] has no setting 'lease_second'`` for a misspelt one.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar, cast

from dicomrelay.errors import ConfigurationError

T = TypeVar("T")
_REQUIRED: Any = object()
_AT = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def load(path: Path) -> Table:
    """The file's top-level table; relative paths in it resolve against its folder."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror.lower() if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigurationError(f"{path}: cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _AT.match(str(e))
        where = f"{path}:{m.group(2)}:{m.group(3)}" if m else str(path)
        message = m.group(1) if m else str(e)
        raise ConfigurationError(f"{where}: {message[:1].lower()}{message[1:]}") from None
    return Table(data, name="", file=path)


class Table:
    """One TOML table, read key by key with its type checked; ``finish``
    refuses the keys nobody read (a misspelt setting is an error, not a default)."""

    def __init__(self, data: dict[str, Any], *, name: str, file: Path) -> None:
        self._data = data
        self._read: set[str] = set()
        self.name = name
        self.file = file

    def error(self, message: str) -> ConfigurationError:
        where = f"[{self.name}] " if self.name else ""
        return ConfigurationError(f"{self.file}: {where}{message}")

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        self._read.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise self.error(f"needs {key!r}")
            return default
        value = self._data[key]
        # bool is an int in Python, never in TOML.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(f"{key} must be {what}, not {value!r}")
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        return self._get(key, default, str, "a string")

    def flag(self, key: str, default: bool) -> bool:
        return cast(bool, self._get(key, default, bool, "true or false"))

    def integer(
        self, key: str, default: Any = _REQUIRED, *, low: int = 0, high: int = 2**63
    ) -> Any:
        value = self._get(key, default, int, f"a whole number from {low} to {high}")
        if value is not None and value is not default and not low <= value <= high:
            raise self.error(f"{key} must be a whole number from {low} to {high}, not {value}")
        return value

    def port(self, key: str, default: Any = _REQUIRED) -> Any:
        return self.integer(key, default, low=0, high=65535)

    def number(self, key: str, default: float) -> float:
        return float(self._get(key, default, (int, float), "a number"))

    def texts(self, key: str) -> tuple[str, ...]:
        values = self._get(key, [], list, "a list of strings")
        if not all(isinstance(v, str) for v in values):
            raise self.error(f"{key} must be a list of strings, not {values!r}")
        return tuple(values)

    def path(self, key: str, default: Any = _REQUIRED, *, exists: bool = False) -> Any:
        """A path relative to the file's folder; with ``exists``, one that must be there."""
        value = self.text(key, default)
        if value is default:
            return value
        path = (self.file.parent / value).resolve()
        if exists and not path.exists():
            raise self.error(f"{key}: {path} does not exist")
        return path

    def paths(self, key: str, *, exists: bool = False) -> tuple[Path, ...]:
        found = []
        for value in self.texts(key):
            path = (self.file.parent / value).resolve()
            if exists and not path.exists():
                raise self.error(f"{key}: {path} does not exist")
            found.append(path)
        return tuple(found)

    def table(self, key: str, *, required: bool = False) -> Table | None:
        value = self._get(key, _REQUIRED if required else None, dict, "a table")
        if value is None:
            return None
        return Table(value, name=self._child(key), file=self.file)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[key]]``)."""
        values = self._get(key, [], list, "an array of tables")
        if not all(isinstance(v, dict) for v in values):
            raise self.error(f"{key} must be an array of tables ([[{self._child(key)}]])")
        return [Table(v, name=self._child(key), file=self.file) for v in values]

    def _child(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            raise self.error(f"has no setting {names}" if self.name else f"unknown table {names}")
