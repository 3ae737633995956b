"""Stage 3a: sources — records from anywhere, loaded through one ``datasets.load_dataset`` call and validated.

"bundled", a Hub dataset id, a local folder or a local file: every source is checked by ``harness.inputs``
before the loader sees it (a ``null`` line must never reach native code), loaded, then validated row by row
(``validate``: error listing the first bad rows by source line, or drop and count). The fingerprint helpers
here make every later ``Dataset.map`` reuse its cache files when nothing that determines them changed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, Features, Value

from harness import datafiles, prompts, transform
from harness.errors import InputError

TRAIN_FILE = "train.jsonl"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # datafiles.DATA_SUFFIXES
REQUIRED = ("instruction", "response")
OPTIONAL = ("context", "category")
COLUMNS = ("instruction", "context", "response", "category")  # output order of validate
SHOWN_BAD_ROWS = 5


def resource(name: str) -> Path:
    """A bundled file under ``harness/resources``."""
    return Path(str(importlib.resources.files("harness") / "resources" / name))


# ---------------------------------------------------------------------------------------------------- loading


def load_records(source: str = "bundled", split: str = "train", *, cache_dir: str | Path | None = None
                 ) -> Dataset:
    """The raw records of ``source``: "bundled", a Hub id, a local folder or .jsonl/.json/.parquet/.csv."""
    return _load(source, split, cache_dir, resource(TRAIN_FILE))[0]


def load_eval_prompts(source: str = "bundled", *, cache_dir: str | Path | None = None
                      ) -> list[dict[str, str]]:
    """The held-out prompts (instruction, context, category): validated like training rows, no response."""
    label = f"eval prompts {source!r}"
    raw, places = _load(source, "train", cache_dir, resource(EVAL_PROMPTS_FILE), label)
    ds, _ = validate(raw, "error", required=("instruction",), label=label, places=places)
    return ds.select_columns(["instruction", "context", "category"]).to_list()


def _load(source: str, split: str, cache_dir: str | Path | None, bundled: Path, label: str | None = None
          ) -> tuple[Dataset, datafiles.Places | None]:
    """The loaded split and, for a local file, where each row came from (see ``datafiles.check_data_source``)."""
    label = label or f"dataset {source!r}"
    if not source.strip():  # Path("") is the current folder: never what an empty value meant
        raise InputError(f"{label}: expected a name or a path, got an empty string")
    kwargs, places = _load_kwargs(bundled if source == "bundled" else source, label, split)
    try:
        with _quiet_loader(local="data_files" in kwargs or Path(kwargs["path"]).is_dir()):
            ds = datasets.load_dataset(**kwargs, split=split,
                                       cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as err:  # any failure of a user's input is one line naming it, not a traceback
        raise InputError(f"{label}: {_read_problem(kwargs, err)}") from None
    if not isinstance(ds, Dataset):
        raise InputError(f"{label}: expected one split, got {type(ds).__name__}")
    return ds, places if places is not None and len(places) == len(ds) else None


def _load_kwargs(target: str | Path, label: str, split: str) -> tuple[dict[str, Any], datafiles.Places | None]:
    """``load_dataset`` arguments: builder + data_files for a file, the folder or Hub id otherwise. Local files
    are checked first (``datafiles.check_dataset``): the loader crashes or misreports on rows it cannot take."""
    path, places = datafiles.check_dataset(str(target), label)
    if path is None:
        return {"path": str(target)}, None  # a Hub dataset id
    if path.is_dir():
        return {"path": str(path)}, places
    return {"path": BUILDERS[path.suffix.lower()], "data_files": {split: str(path)}}, places


@contextlib.contextmanager
def _quiet_loader(local: bool) -> Iterator[None]:
    # The packaged builders log a parse failure at ERROR before raising; we report it once, as InputError.
    # A local file loads in a moment, so its progress bar is only noise before a possible one-line error.
    logger = logging.getLogger("datasets.packaged_modules")
    level, bars_off = logger.level, datasets.are_progress_bars_disabled()
    logger.setLevel(logging.CRITICAL)
    if local:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if local and not bars_off:
            datasets.enable_progress_bars()


def _read_problem(kwargs: dict[str, Any], err: BaseException) -> str:
    """The root cause of a loader failure in one line (local files were checked before loading)."""
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    what = f"cannot be read as {kwargs['path']}" if kwargs.get("data_files") else "cannot be loaded"
    detail = " ".join(str(root).split())[:300]
    return f"{what} ({type(root).__name__}: {detail})" if detail else f"{what} ({type(root).__name__})"


# ------------------------------------------------------------------------------------------------- validation


def validate(ds: Dataset, on_bad_rows: str = "error", *, required: Sequence[str] = REQUIRED,
             label: str = "dataset", places: Sequence[str] | None = None) -> tuple[Dataset, int]:
    """Check every row; return ``(clean dataset, rows dropped)``.

    ``required`` fields must be non-empty strings, ``context``/``category`` strings or null (null → ""). The
    result has the columns of ``COLUMNS`` that apply plus ``row``, the 0-based index in the source. With
    ``on_bad_rows="error"`` any bad row raises InputError listing the first few; ``"drop"`` drops and counts.
    A bad row is named by ``places[row]`` (its source line) when given, else as "row N", counted from 1.
    """
    if on_bad_rows not in ("error", "drop"):
        raise InputError(f"on_bad_rows {on_bad_rows!r}: expected 'error' or 'drop'")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        found = ", ".join(ds.column_names) or "none"
        raise InputError(f"{label}: no {missing[0]!r} column (columns: {found})")
    columns = [c for c in COLUMNS if c in required or c in OPTIONAL or c in ds.column_names]
    problems = _row_problems(ds, required, [c for c in OPTIONAL if c in ds.column_names])
    if problems and on_bad_rows == "error":
        raise InputError(_bad_rows_message(label, problems, places))
    features = Features({**{c: Value("string") for c in columns}, "row": Value("int64")})
    clean = _map(ds, _normalise_row, features, with_indices=True, fn_kwargs={"columns": columns},
                 remove_columns=ds.column_names,
                 new_fingerprint=_fingerprint(ds._fingerprint, "validate", columns))
    if problems:
        bad = {row for row, _ in problems}
        keep = [i for i in range(len(ds)) if i not in bad]
        clean = clean.select(keep, new_fingerprint=_fingerprint(clean._fingerprint, "drop", sorted(bad)))
    return clean, len(problems)


def _row_problems(ds: Dataset, required: Sequence[str], optional: Sequence[str]
                  ) -> list[tuple[int, list[str]]]:
    by_row: dict[int, list[str]] = {}
    for field in (*required, *optional):
        for row, value in enumerate(ds[field]):
            problem = _field_problem(field, value, field in required)
            if problem:
                by_row.setdefault(row, []).append(problem)
    return sorted(by_row.items())


def _field_problem(field: str, value: Any, required: bool) -> str | None:
    if value is None:
        return f"{field!r} is missing" if required else None
    if not isinstance(value, str):
        return f"{field!r} is not a string ({type(value).__name__} {str(value)[:30]!r})"
    if required and not value.strip():
        return f"{field!r} is empty"
    return None


def _bad_rows_message(label: str, problems: list[tuple[int, list[str]]], places: Sequence[str] | None) -> str:
    def where(row: int) -> str:
        return places[row] if places is not None else f"row {row + 1}"

    shown = "; ".join(f"{label} {where(row)}: {', '.join(msgs)}" for row, msgs in problems[:SHOWN_BAD_ROWS])
    if len(problems) == 1:
        return shown
    first = f", first {SHOWN_BAD_ROWS} shown" if len(problems) > SHOWN_BAD_ROWS else ""
    return f"{shown} ({len(problems)} bad rows{first}; on_bad_rows='drop' drops them)"


def _normalise_row(row: dict[str, Any], index: int, columns: Sequence[str]) -> dict[str, Any]:
    # Bad rows (dropped right after) get "" so the string schema holds for every row.
    out = {c: row.get(c) if isinstance(row.get(c), str) else "" for c in columns}
    out["row"] = index
    return out


def _map(ds: Dataset, function: Any, features: Features, **kwargs: Any) -> Dataset:
    """``ds.map`` with an explicit schema, which also holds for an empty dataset (map skips those)."""
    if len(ds) == 0:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return ds.map(function, features=features, **kwargs)


# ----------------------------------------------------------------------------------------------- fingerprints


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides the token ids: the backend's full JSON (vocab, merges, normaliser, post-processor)
    or the vocabulary, plus class and special tokens.

    The backend's padding and truncation are left out: a call with ``padding=True`` switches them on in the
    backend and they stay, so one generation would change the fingerprint of a tokenizer that encodes as before.
    """
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None), state.pop("truncation", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    meta = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
            "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
            "add_bos": getattr(tokenizer, "add_bos_token", None),
            "add_eos": getattr(tokenizer, "add_eos_token", None)}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@functools.cache
def _code_version() -> str:
    """Hash of the code that computes rows (this module, harness.data, the transform, the prompt template)."""
    digest = hashlib.sha256()
    for file in (__file__, str(Path(__file__).with_name("data.py")), transform.__file__, prompts.__file__):
        digest.update(Path(file or "").read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps([_code_version(), datasets.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
