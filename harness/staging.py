"""Write a whole output folder or nothing: build it beside the target, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.errors import InputError


def check_empty_target(path: Path, label: str = "output folder") -> Path:
    """``path`` must be absent or an empty folder; ``label`` names it in the error (e.g. ``--dry-run``)."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{label} {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"{label} {path}: folder exists and is not empty")
    return path


def publish_dir(target: Path, build: Callable[[Path], object], label: str = "output folder") -> Path:
    """Run ``build(tmp)`` in a temp sibling of ``target`` and rename it to ``target`` when it succeeds.

    An OSError on the way (disk full, permissions) is bad output location, reported as one line.
    """
    target = Path(target)
    check_empty_target(target, label)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    except OSError as err:
        raise InputError(f"{target}: cannot create the staging folder ({err.strerror or err})") from None
    try:
        build(tmp)
        if target.exists():
            target.rmdir()  # empty (checked above); a rename cannot replace a folder on every platform
        os.replace(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{target}: staging failed ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
