"""Write a whole output folder or nothing, and never replace a folder the harness did not make.

Every command that writes a folder (``prepare --out``, ``merge --out``, ``eval/run --out``, ``upload
--dry-run``) goes through ``replace_dir``: the new folder is built in a temp sibling, a marker file naming its
kind is written into it last, and it is renamed into place; an earlier folder is moved aside and deleted only
once the new one is in. ``check_out_dir`` is the same refusal logic, run before any heavy work, so a bad
``--out`` fails in a second rather than after an hour of training.

A folder is only ever replaced when it is empty, or when ``overwrite`` allows it and it holds the marker of
an earlier output of the same kind: the working folder, its parents, the home folder, a symlink, or a folder
that holds (or lies inside) one of the command's inputs is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from harness.errors import InputError
from harness.inputs import check_not_empty

MARKER = ".hearts-output.json"
TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def output_errors(flag: str, target: Path) -> Iterator[None]:
    """An OSError while writing ``target`` is bad output location: named by the flag and the path, not by
    whatever temp file the writer happened to be on."""
    try:
        yield
    except OSError as err:
        raise InputError(f"{flag} {target}: cannot write ({err.strerror or type(err).__name__})") from None


def check_out_dir(target: Path, *, flag: str, kind: str | None, overwrite: bool = False,
                  protect: Iterable[tuple[str, Path | str | None]] = (), hint: str = "") -> Path:
    """``target`` resolved, if ``replace_dir`` may write it; else InputError saying why not.

    ``protect`` pairs a name (``--dataset``) with a path the command reads; ``hint`` ends the "not empty"
    message (e.g. how to allow a replacement).
    """
    check_not_empty(target, flag)
    if target.is_symlink():
        raise InputError(f"{flag} {target}: is a symbolic link; give the folder it points to")
    resolved = target.resolve()
    _refuse_special(target, resolved, flag)
    _refuse_inputs(target, resolved, flag, protect)
    if resolved.exists() and not resolved.is_dir():
        raise InputError(f"{flag} {target}: exists and is not a folder")
    above = next(p for p in resolved.parents if p.exists())
    if not above.is_dir():
        raise InputError(f"{flag} {target}: cannot write ({above} is a file, not a folder)")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {target}: cannot write ({above} is read-only)")
    if resolved.is_dir() and any(resolved.iterdir()):
        _check_replaceable(target, resolved, flag, kind, overwrite, hint)
    return resolved


def _refuse_special(target: Path, resolved: Path, flag: str) -> None:
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{flag} {target}: is the working folder or holds it; choose a new folder")
    if resolved == Path.home().resolve():
        raise InputError(f"{flag} {target}: is the home folder; choose a new folder")


def _refuse_inputs(target: Path, resolved: Path, flag: str, protect: Iterable[tuple[str, Path | str | None]]
                   ) -> None:
    for name, path in protect:
        if path is None or not str(path).strip() or not Path(path).expanduser().exists():
            continue  # a name (bundled, a Hub id) or a folder not made yet: nothing there to lose
        other = Path(path).expanduser().resolve()
        if other == resolved:
            raise InputError(f"{flag} {target}: is {name}; choose a folder apart from the inputs")
        if resolved in other.parents:
            raise InputError(f"{flag} {target}: holds {name} {path}; choose a folder apart from the inputs")
        if other in resolved.parents:
            raise InputError(f"{flag} {target}: lies inside {name} {path}; choose a folder apart from the inputs")


def _check_replaceable(target: Path, resolved: Path, flag: str, kind: str | None, overwrite: bool,
                       hint: str) -> None:
    if not overwrite or kind is None:
        raise InputError(f"{flag} {target}: folder exists and is not empty{hint}")
    made = marker_kind(resolved)
    if made is None:
        raise InputError(f"{flag} {target}: folder is not empty and was not written by hearts (no {MARKER}); "
                         "refusing to replace it")
    if made != kind:
        raise InputError(f"{flag} {target}: holds a hearts {made} output, not a {kind} one; refusing to replace it")


def marker_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None when it has none (or a broken one)."""
    try:
        kind = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def replace_dir(target: Path, build: Callable[[Path], object], *, flag: str, kind: str | None,
                overwrite: bool = False, protect: Iterable[tuple[str, Path | str | None]] = (),
                hint: str = "") -> Path:
    """Run ``build(tmp)`` in a temp sibling of ``target``, mark it as a ``kind`` output, swap it in.

    ``kind=None`` writes no marker (a release folder is uploaded as it is, and never replaced). An OSError
    on the way is reported against ``flag`` and ``target``; whatever was made for the attempt is removed.
    """
    resolved = check_out_dir(target, flag=flag, kind=kind, overwrite=overwrite, protect=protect, hint=hint)
    made = _missing_parents(resolved)
    tmp: Path | None = None
    try:
        with output_errors(flag, target):
            resolved.parent.mkdir(parents=True, exist_ok=True)
            _sweep(resolved)
            tmp = Path(tempfile.mkdtemp(dir=resolved.parent, prefix=f"{TMP_PREFIX}{resolved.name}-"))
            build(tmp)
            if kind is not None:  # last: a folder with the marker is a whole output
                (tmp / MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
            swap_in(tmp, resolved)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return target


def _sweep(target: Path) -> None:
    """What a replace_dir of ``target`` killed part-way left: an earlier output moved aside but never replaced
    is put back; a half-built temp folder is removed (both carry this target's name, so they are ours)."""
    for aside in target.parent.glob(f"{TMP_PREFIX}old-{target.name}-*"):
        if (aside / target.name).exists() and not target.exists():
            os.replace(aside / target.name, target)
        shutil.rmtree(aside, ignore_errors=True)
    for tmp in target.parent.glob(f"{TMP_PREFIX}{target.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first (removed again on failure)."""
    return [p for p in reversed(path.parents) if not p.exists()]


def swap_in(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``; an earlier ``target`` is moved aside first and deleted
    only once ``tmp`` is in place, or moved back if that rename fails."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # a rename cannot replace a folder on every platform
        os.replace(tmp, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{TMP_PREFIX}old-{target.name}-"))
    os.replace(target, aside / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside / target.name, target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
