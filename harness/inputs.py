"""The one validation layer: every file, folder and value a user names is checked here, before any heavy work.

Libraries are poor judges of bad input: a JSON Lines row that is ``null`` crashes the Arrow reader, deep JSON
overflows Python's stack, a folder without tokenizer files gets a traceback from deep inside transformers.
So the commands check what they are given first (a preflight), and each problem is an InputError that names
the input (a flag or a file), where in it (a 1-based line) and what was expected. Nothing here imports torch,
transformers or datasets, so a bad input is reported before they load.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import InputError

MAX_DEPTH = 64  # no report, benchmark run or dataset row nests deeper; Python's own parser gives up near 1000
INT64 = 2**63  # Arrow stores integers as int64: a larger one is no count, id or seed the harness can use
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


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
