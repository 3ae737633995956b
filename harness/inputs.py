"""The one validation layer: every file, folder and value a user names is checked here, before any heavy work.

Libraries are poor judges of bad input: a JSON Lines row that is ``null`` crashes the Arrow reader, deep JSON
overflows Python's stack, a folder without tokenizer files gets a traceback from deep inside transformers.
So the commands check what they are given first (a preflight), and each problem is an InputError that names
the input (a flag or a file), where in it (a 1-based line) and what was expected. Nothing here imports torch,
transformers or datasets, so a bad input is reported before they load.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import InputError

MAX_DEPTH = 64  # no report, benchmark run or dataset row nests deeper; Python's own parser gives up near 1000
INT64 = 2**63  # Arrow stores integers as int64: a larger one is no count, id or seed the harness can use
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
Places = list[str]  # where each loaded row came from, 1-based: "line 7" (JSON Lines, CSV) or "item 3" (a JSON array)


# --- values ------------------------------------------------------------------------------------------


def check_not_empty(value: Any, flag: str) -> str:
    """``value`` as a string; '' or whitespace is refused (``Path('')`` would silently mean the current folder)."""
    text = "" if value is None else str(value)
    if not text.strip():
        raise InputError(f"{flag} {text!r}: expected a value, got an empty string")
    return text


def text_arg(text: str) -> str:
    """argparse ``type`` for a name or path given as a string: never empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a value, got {text!r}")
    return text


def path_arg(text: str) -> Path:
    """argparse ``type`` for a path: never empty, so ``--out ''`` cannot become the current folder."""
    return Path(text_arg(text)).expanduser()


def kind_of(value: Any) -> str:
    """A JSON value's type, in JSON's words."""
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- files: bytes, text, JSON, TOML -----------------------------------------------------------------


def read_bytes(path: str | Path, label: str | None = None) -> bytes:
    label = label or str(path)
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{label}: cannot read ({err.strerror or type(err).__name__})") from None


def decode_utf8(raw: bytes, label: str) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); a bad byte is named by its line."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InputError(f"{label}: not UTF-8 text (line {line}, byte {err.start})") from None


class _NonFinite(str):
    """What the parser makes of NaN / Infinity, so the check can name the key that holds one."""


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str, *, big_ints: bool = False) -> Any:
    """``json.loads`` that refuses what the libraries downstream mishandle; ValueError says what, in words.

    Refused: duplicate keys (the last would win silently), NaN/Infinity, integers beyond int64 (unless
    ``big_ints``), nesting deeper than MAX_DEPTH. A ``json.JSONDecodeError`` (a ValueError) is left for the
    caller to place.
    """
    try:
        value = json.loads(text, parse_constant=_NonFinite, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except _DuplicateKey as err:
        raise ValueError(f"duplicate key {err.args[0]!r}") from None
    problem = tree_problem(value, big_ints=big_ints)
    if problem:
        raise ValueError(problem)
    return value


def tree_problem(value: Any, at: str = "", *, big_ints: bool = False) -> str | None:
    """The first non-finite number, out-of-range integer or too-deep nesting, named by its key path."""
    stack: list[tuple[Any, str, int]] = [(value, at, 0)]
    while stack:  # iterative: a recursive walk would overflow on exactly the input it exists to reject
        item, where, depth = stack.pop()
        if isinstance(item, _NonFinite) or (isinstance(item, float) and not math.isfinite(item)):
            return f"{where or 'the document'} is {item} (expected a finite number)"
        if not big_ints and isinstance(item, int) and not isinstance(item, bool) and not -INT64 <= item < INT64:
            return f"{where or 'the document'} is an integer beyond 64 bits"
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack += [(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k), depth + 1)
                      for k, v in reversed(list(pairs))]
    return None


def read_json(path: str | Path, label: str | None = None, *, expected: str = "a JSON document",
              big_ints: bool = False) -> Any:
    """A JSON file, strictly: UTF-8, valid, not empty, and what ``parse_json`` accepts."""
    label = label or str(path)
    text = decode_utf8(read_bytes(path, label), label)
    if not text.strip():
        raise InputError(f"{label}: file is empty (expected {expected})")
    try:
        return parse_json(text, big_ints=big_ints)
    except json.JSONDecodeError as err:
        raise InputError(f"{label}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") \
            from None
    except ValueError as err:
        raise InputError(f"{label}: {err}") from None


def read_json_object(path: str | Path, label: str | None = None, *, expected: str = "a JSON object",
                     big_ints: bool = False) -> dict[str, Any]:
    label = label or str(path)
    value = read_json(path, label, expected=expected, big_ints=big_ints)
    if not isinstance(value, dict):
        raise InputError(f"{label}: expected {expected}, got {kind_of(value)}")
    return value


def read_toml(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """A whole TOML document; a missing file, a folder, bad UTF-8 or bad TOML is one line naming the file."""
    label = label or str(path)
    if Path(path).is_dir():
        raise InputError(f"{label}: is a folder, not a TOML file")
    if not Path(path).exists():
        raise InputError(f"{label}: no such config file")
    text = decode_utf8(read_bytes(path, label), label)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{label}: not valid TOML ({err})") from None
    except RecursionError:
        raise InputError(f"{label}: not valid TOML (nested too deeply)") from None


# --- data files ----------------------------------------------------------------------------------------


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
        return _parquet(path, label)
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
    duplicated = sorted({n for n in names if names.count(n) > 1})
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
    return None


# --- folders -----------------------------------------------------------------------------------------------


def check_folder(path: Path, flag: str) -> Path:
    if not path.exists():
        raise InputError(f"{flag} {path}: no such folder")
    if not path.is_dir():
        raise InputError(f"{flag} {path}: is not a folder")
    return path


def check_base_model(name: str, flag: str = "--base-model") -> Path | None:
    """A local base model folder, checked (a readable config.json object); None for a stand-in or a Hub id."""
    from harness.config import PACKAGED_BASES, STANDINS

    check_not_empty(name, flag)
    if name in STANDINS or name in PACKAGED_BASES:
        return None
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"{flag} {name!r}: no such GGUF file")
        return None
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {name!r}: is not a folder")
        if not (path / "config.json").is_file():
            raise InputError(f"{flag} {name!r}: folder has no config.json")
        read_json_object(path / "config.json", f"{flag} {name!r}: config.json")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"{flag} {name!r}: no such folder")
    return None


def check_model_dir(path: Path, flag: str = "--model", *, tokenizer: bool = True,
                    weights: Iterable[str] = ("*.safetensors",)) -> Path:
    """A model folder from_pretrained can read: weights, a config.json object, and (by default) a tokenizer."""
    check_folder(path, flag)
    patterns = tuple(weights)
    if not any(any(path.glob(p)) for p in patterns):
        what = " or ".join(patterns)
        raise InputError(f"{flag} {path}: no {what} weights (expected a merged model folder)")
    if not (path / "config.json").is_file():
        raise InputError(f"{flag} {path}: no config.json")
    config = read_json_object(path / "config.json", f"{flag} {path}: config.json")
    if not isinstance(config.get("model_type", ""), str):
        raise InputError(f"{flag} {path}: config.json model_type must be a string")
    if tokenizer:
        check_tokenizer_dir(path, flag)
    return path


def check_tokenizer_dir(path: Path, flag: str = "--tokenizer") -> Path:
    """A folder with tokenizer files; the JSON ones must parse (a broken one is a traceback in transformers)."""
    check_folder(path, flag)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{flag} {path}: no tokenizer ({', '.join(TOKENIZER_FILES)})")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).is_file():  # transformers writes model_max_length = int(1e30) for "no limit"
            read_json_object(path / name, f"{flag} {path}: {name}", big_ints=True)
    return path


def check_adapter_dir(path: Path, flag: str = "--adapter", *, safetensors_only: bool = True) -> Path:
    """A PEFT adapter folder: an adapter_config.json object and the adapter weights."""
    check_folder(path, flag)
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"{flag} {path}: no adapter_config.json (not a PEFT adapter folder)")
    read_json_object(path / "adapter_config.json", f"{flag} {path}: adapter_config.json")
    names = ("adapter_model.safetensors",) if safetensors_only else ("adapter_model.safetensors",
                                                                      "adapter_model.bin")
    if not any((path / name).is_file() for name in names):
        raise InputError(f"{flag} {path}: no {' or '.join(names)}")
    return path


def check_out_file(path: Path, flag: str, *, suffix: str | None = None, protect: Iterable[Path] = ()) -> Path:
    """A file the command will write: not a folder, not one of its inputs, under a folder (or a path to one)."""
    check_not_empty(path, flag)
    if suffix is not None and path.suffix.lower() != suffix:
        raise InputError(f"{flag} {str(path)!r}: expected a file path ending in {suffix}")
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r}: is a folder")
    for other in protect:
        if other.exists() and path.resolve() == other.resolve():
            raise InputError(f"{flag} {path}: is also an input of this command; write elsewhere")
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: cannot write ({parent} is a file, not a folder)")
    return path
