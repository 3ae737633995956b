"""Data files checked before ``datasets`` reads them: JSON Lines, JSON, CSV and Parquet, row by row.

Part of the validation layer (``harness.inputs``): the Arrow reader crashes on a ``null`` row and misreports
others ("position 361" for line 41), so every local file is read here first, strictly, and each problem names
the file and the 1-based line. What is returned — where each loaded row came from — lets later row errors
name source lines too.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections import Counter
from pathlib import Path

from harness.errors import InputError
from harness.inputs import decode_utf8, kind_of, parse_json, read_bytes

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
Places = list[str]  # where each loaded row came from, 1-based: "line 7" (JSON Lines, CSV) or "item 3" (a JSON array)


def check_dataset(source: str, label: str) -> tuple[Path | None, Places | None]:
    """A local dataset file or folder, checked: ``(path, places)``; ``(None, None)`` for a Hub id.

    "bundled" is the caller's to resolve; a name that looks like a path but is not there is refused here
    rather than sent to the Hub.
    """
    if not source.strip():
        raise InputError(f"{label}: expected a name or a path, got an empty string")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() not in DATA_SUFFIXES:
        raise InputError(f"{label}: unknown file type {path.suffix!r} (expected {', '.join(DATA_SUFFIXES)})")
    if path.exists():
        return path, check_data_source(path, label)
    if looks_like_path(source):
        raise InputError(f"{label}: no such file")
    return None, None


def looks_like_path(source: str) -> bool:
    """A path, not a Hub id (``owner/name``): ./~ prefix, 2+ slashes, a backslash or a letters-only suffix.

    ``data.jsonl`` and ``a/b/c`` are paths; ``databricks/databricks-dolly-15k`` and ``org/set-v1.2`` are ids.
    """
    suffix = Path(source).suffix
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or (suffix[1:].isalpha() and suffix[1:].isascii()) or not _HUB_ID.match(source))


def check_data_source(path: Path, label: str) -> Places | None:
    """Check a local data file, or every data file in a folder, before ``datasets`` reads it.

    Returns where each row comes from (1-based lines) when that is known, for the messages about rows.
    """
    if path.is_dir():
        files = data_files(path)
        if not files:
            raise InputError(f"{label}: folder has no data files ({', '.join(DATA_SUFFIXES)})")
        places = [_checked(f, f"{label}: {f.relative_to(path)}") for f in files]
        only = places[0] if len(files) == 1 else None  # a folder's files are concatenated in the loader's order
        return [f"{files[0].relative_to(path)} {p}" for p in only] if only else None
    return _checked(path, label)


def data_files(folder: Path) -> list[Path]:
    """The data files ``datasets`` would read from a folder: known suffixes, no hidden files or folders."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _checked(path: Path, label: str) -> Places | None:
    stat = path.stat()
    return _check_file(str(path.resolve()), stat.st_size, stat.st_mtime_ns, label)


@functools.lru_cache(maxsize=32)
def _check_file(path: str, size: int, mtime_ns: int, label: str) -> Places | None:
    """check_data_file, once per file version (a command checks early, the loader again just before reading)."""
    return check_data_file(Path(path), label)


def check_data_file(path: Path, label: str) -> Places | None:
    """One data file by its suffix: rows that the loader can read without crashing, at least one of them."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        _parquet(path, label)  # a parquet file's rows have no line numbers to report
        return None
    text = decode_utf8(read_bytes(path, label), label)
    if suffix == ".csv":
        return _csv(text, label)
    if suffix == ".json":
        return _json_document(text, label)
    return _json_lines(text, label)


def _json_lines(text: str, label: str) -> Places:
    places = []
    for number, line in enumerate(text.split("\n"), start=1):  # "\n" only: U+2028 may sit inside a string
        if not line.strip():
            continue  # the loader skips blank lines too
        try:
            row = parse_json(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{label}: line {number} is not valid JSON ({err.msg} at column {err.colno})") \
                from None
        except ValueError as err:
            raise InputError(f"{label}: line {number}: {err}") from None
        if not isinstance(row, dict):
            raise InputError(f"{label}: line {number} is not a JSON object (got {kind_of(row)})")
        places.append(f"line {number}")
    if not places:
        raise InputError(f"{label}: has no rows (the file is {'empty' if not text else 'only blank lines'})")
    return places


def _json_document(text: str, label: str) -> Places | None:
    """A .json file is one document (an array of objects, or an object), or JSON Lines under another name."""
    if not text.strip():
        raise InputError(f"{label}: has no rows (the file is empty)")
    try:
        doc = parse_json(text)
    except json.JSONDecodeError as err:
        first = next(line for line in text.split("\n") if line.strip())
        if _is_json(first):  # the first line stands alone: JSON Lines
            return _json_lines(text, label)
        raise InputError(f"{label}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") \
            from None
    except ValueError as err:
        raise InputError(f"{label}: {err}") from None
    if isinstance(doc, dict):
        return None  # one record, or columns of equal length: the loader decides
    if not isinstance(doc, list):
        raise InputError(f"{label}: expected an array of objects, got {kind_of(doc)}")
    if not doc:
        raise InputError(f"{label}: has no rows (an empty array)")
    for i, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{label}: item {i} is not a JSON object (got {kind_of(item)})")
    return [f"item {i}" for i in range(1, len(doc) + 1)]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _csv(text: str, label: str) -> Places:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    places, previous = [], 0
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue  # blank lines are skipped by the loader
            if header is None:
                header = _csv_header(record, label)
            elif len(record) > len(header):
                raise InputError(f"{label}: line {start} has {len(record)} fields, the header has {len(header)}")
            else:
                places.append(f"line {start}")
    except csv.Error as err:
        raise InputError(f"{label}: line {reader.line_num} is not valid CSV ({err})") from None
    if header is None:
        raise InputError(f"{label}: has no rows (the file is empty)")
    if not places:
        raise InputError(f"{label}: has no rows (only a header)")
    return places


def _csv_header(record: list[str], label: str) -> list[str]:
    names = [cell.strip() for cell in record]
    if any(not name for name in names):
        raise InputError(f"{label}: line 1 (the header) has an empty column name")
    duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicated:
        raise InputError(f"{label}: the header names column {duplicated[0]!r} twice")
    return names


def _parquet(path: Path, label: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as err:
        detail = " ".join(str(err).split())[:200]
        raise InputError(f"{label}: cannot be read as parquet (not a Parquet file: {detail})") from None
    if rows == 0:
        raise InputError(f"{label}: has no rows")


