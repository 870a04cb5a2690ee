"""Low-level readers shared by every loader: they turn any malformed input into a ``DataFormatError``.

Each reader names the file and, where one exists, the 1-based line, so a user can open the file at the fault.
Files are read whole (the supported datasets fit in memory) and decoded at once; a decoding error is mapped back
to its line from the byte offset.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import DataFormatError


def read_bytes(path) -> bytes:
    """Raw bytes of ``path``, gunzipped when it ends in ``.gz``; missing / unreadable / truncated -> DataFormatError."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("file not found", path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"cannot read file ({err})", path) from None


def read_text(path, encoding: str = "utf-8") -> str:
    """Decoded text of ``path``; a byte sequence invalid in ``encoding`` is reported with its line."""
    data = read_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataFormatError(f"invalid {encoding} byte sequence ({err.reason})", path, line) from None
    if text.startswith("\ufeff"):  # a UTF-8 BOM is not part of the first field
        text = text[1:]
    return text


def iter_lines(path, encoding: str = "utf-8") -> Iterator[Tuple[int, str]]:
    """(line number, line without its end-of-line) for every non-blank line; only ``\\n`` ends a line."""
    for number, line in enumerate(read_text(path, encoding).split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def parse_int(value: str, what: str, path, line: Optional[int]) -> int:
    """``int(value)`` or a DataFormatError saying which field was not an integer."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataFormatError(f"{what} must be an integer, got {value!r}", path, line) from None


def parse_float(value, what: str, path, line: Optional[int]) -> float:
    """A finite float or a DataFormatError (``nan``/``inf`` ratings or timestamps are rejected)."""
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataFormatError(f"{what} must be a number, got {value!r}", path, line) from None
    if result != result or result in (float("inf"), float("-inf")):
        raise DataFormatError(f"{what} must be finite, got {value!r}", path, line)
    return result


def parse_timestamp(value, what: str, path, line: Optional[int]) -> int:
    """An integer Unix time (int, integral float or numeric string) or a DataFormatError."""
    number = parse_float(value, what, path, line)
    if abs(number) > 2**62:
        raise DataFormatError(f"{what} out of range: {value!r}", path, line)
    return int(number)


def split_fields(line: str, sep: str, expected: int, path, number: int, *, at_least: bool = False) -> List[str]:
    """Split a delimited line, checking the field count (a wrong delimiter shows up here as one field)."""
    fields = line.split(sep)
    if len(fields) < expected or (not at_least and len(fields) != expected):
        hint = " (wrong delimiter?)" if len(fields) == 1 else ""
        need = f"at least {expected}" if at_least else str(expected)
        raise DataFormatError(f"expected {need} {sep!r}-separated fields, got {len(fields)}{hint}", path, number)
    return fields


def load_json(path, encoding: str = "utf-8") -> Any:
    """One JSON document; a syntax error is reported with its line."""
    text = read_text(path, encoding)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"invalid JSON ({err.msg})", path, err.lineno) from None
    except RecursionError:
        raise DataFormatError("invalid JSON (nested too deeply)", path) from None


def iter_json_lines(path, encoding: str = "utf-8") -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file; each line must be an object."""
    for number, line in iter_lines(path, encoding):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"invalid JSON ({err.msg})", path, number) from None
        except RecursionError:
            raise DataFormatError("invalid JSON (nested too deeply)", path, number) from None
        if not isinstance(record, dict):
            raise DataFormatError(f"expected a JSON object, got {type(record).__name__}", path, number)
        yield number, record


def require_keys(record: Dict[str, Any], keys: Sequence[str], path, number: int) -> None:
    missing = [k for k in keys if k not in record or record[k] is None]
    if missing:
        raise DataFormatError(f"missing field(s) {missing}", path, number)


def sniff_delimiter(header_line: str, path, candidates: str = ",\t;|") -> str:
    """The delimiter of a CSV header line (the candidate that splits it into the most fields)."""
    counts = {c: header_line.count(c) for c in candidates}
    best = max(counts, key=lambda c: counts[c])
    if counts[best] == 0:
        raise DataFormatError(
            f"cannot tell the delimiter from the header {header_line[:80]!r} (tried {list(candidates)}); pass sep=", path, 1
        )
    return best


def iter_csv_rows(path, sep: Optional[str] = None, encoding: str = "utf-8") -> Tuple[List[str], Iterator[Tuple[int, List[str]]]]:
    """The header and an iterator of (line number, fields) of a delimited file with a header row.

    Quoted fields may hold the delimiter or line breaks (``movies.csv`` titles do); the line number is the
    record's first physical line. Rows whose field count differs from the header's are errors.
    """
    text = read_text(path, encoding)
    first = next((line for line in text.split("\n") if line.strip()), None)
    if first is None:
        raise DataFormatError("empty file (a header row is required)", path, 1)
    if sep is None:
        sep = sniff_delimiter(first, path)
    if len(sep) != 1:
        raise DataFormatError(f"the delimiter must be one character, got {sep!r}", path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except (csv.Error, StopIteration) as err:
        raise DataFormatError(f"malformed header ({err})", path, 1) from None

    def rows() -> Iterator[Tuple[int, List[str]]]:
        start = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataFormatError(f"malformed CSV ({err})", path, reader.line_num) from None
            if fields and any(f.strip() for f in fields):
                if len(fields) != len(header):
                    raise DataFormatError(
                        f"expected {len(header)} {sep!r}-separated fields like the header, got {len(fields)}", path, start
                    )
                yield start, fields
            start = reader.line_num + 1

    return header, rows()


def column_positions(header: Sequence[str], required: Sequence[str], optional: Sequence[str], path) -> Dict[str, int]:
    """Index of each named column in ``header``; a missing required column is a DataFormatError on line 1."""
    position = {name: i for i, name in enumerate(header)}
    missing = [c for c in required if c not in position]
    if missing:
        raise DataFormatError(f"missing column(s) {missing}; the header has {list(header)}", path, 1)
    return {c: position[c] for c in list(required) + list(optional) if c in position}


def as_id(value: Any, what: str, path, line: Optional[int]) -> str:
    """An external id from a JSON value: a non-empty string or an integer (not a bool, list, dict or null)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(f"{what} must be a string or integer id, got {value!r}", path, line)
    text = str(value).strip()
    if not text:
        raise DataFormatError(f"{what} is empty", path, line)
    return text


def as_text(value: Any, what: str, path, line: Optional[int]) -> Any:
    """A text field: a string, a list of strings, or null; anything else is a DataFormatError."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise DataFormatError(f"{what} must be a string or a list of strings, got {type(value).__name__}", path, line)


def find_file(data_dir, patterns: Sequence[str], what: str, exclude_prefix: Optional[str] = None,
              explicit=None, required: bool = True) -> Optional[Path]:
    """The one file of ``data_dir`` matching ``patterns`` (or ``explicit``, relative to ``data_dir``)."""
    data_dir = Path(data_dir)
    if explicit is not None:
        path = data_dir / explicit
        if not path.is_file():
            raise DataFormatError(f"{what} file not found", path)
        return path
    found = sorted({p for pattern in patterns for p in data_dir.glob(pattern) if p.is_file()
                    and not (exclude_prefix and p.name.startswith(exclude_prefix))})
    if not found:
        if not required:
            return None
        raise DataFormatError(f"no {what} file (looked for {list(patterns)})", data_dir)
    if len(found) > 1:
        raise DataFormatError(f"several {what} files {[p.name for p in found]}; name one with the loader option", data_dir)
    return found[0]


class OptionalColumn:
    """Values of a field that a format may omit: present on every record, or on none (then ``values()`` is None)."""

    def __init__(self, name: str, path) -> None:
        self.name, self.path = name, path
        self._values: List[Any] = []
        self._first_missing: Optional[int] = None
        self._first_present: Optional[int] = None

    def add(self, value: Any, line: int) -> None:
        if value is None:
            self._first_missing = self._first_missing or line
            self._values.append(None)
        else:
            self._first_present = self._first_present or line
            self._values.append(value)

    def values(self) -> Optional[List[Any]]:
        if self._first_present is None:
            return None
        if self._first_missing is not None:
            raise DataFormatError(f"{self.name} is missing here but given on line {self._first_present}", self.path,
                                  self._first_missing)
        return self._values
