"""Content-addressed, crash-safe artifact cache for expensive stages (stand-in base, adapter, merged model).

An entry lives at ``root/kind/<key>`` where key hashes everything that determines the result. It is built in
a temp dir beside it and renamed into place only when complete, with ``manifest.json`` written last; the manifest
lists the sha256 of every file, so a truncated or tampered entry is detected and rebuilt. A killed build leaves
only a temp dir, which is never read and is swept on the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from harness import distributed
from harness.staging import swap_in

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def cache_key(material: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able key material."""
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """Content hash of a folder (a local base model): names and bytes of every file."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()[:16]


def write_manifest(folder: Path, material: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    files = {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"key": material, "files": files, "created": time.time(), **(extra or {})}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, default=str))


def is_complete(folder: Path) -> bool:
    """True when the manifest exists and every file it lists is present with the recorded hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(files) and all(
        (folder / name).is_file() and file_sha256(folder / name) == digest for name, digest in files.items()
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX + path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise builders of one entry across processes (parallel pytest workers, two CLI runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached(
    root: Path,
    kind: str,
    material: Mapping[str, Any],
    build: Callable[[Path], object],
    *,
    rebuild: bool = False,
) -> tuple[Path, bool]:
    """Return ``(entry folder, built_now)``, calling ``build(tmp_dir)`` only when no complete entry exists.

    Among the ranks of a launcher, rank 0 alone builds (libraries save only from the main process) while the
    others wait for it; ``build`` must then need no other rank (distributed training: ``harness.train``).
    """
    if distributed.coordinated():
        mine = _cached_here(root, kind, material, build, rebuild) if distributed.world().main else None
        # The others wait here until rank 0 has built; its word is final (a concurrent run may be replacing an
        # answers entry just now, and re-hashing a 7B merge on every rank costs minutes).
        return distributed.broadcast(mine)
    return _cached_here(root, kind, material, build, rebuild)


def _cached_here(root: Path, kind: str, material: Mapping[str, Any], build: Callable[[Path], object],
                 rebuild: bool) -> tuple[Path, bool]:
    with building(root, kind, material, rebuild=rebuild) as (final, tmp):
        if tmp is not None:
            build(tmp)
    return final, tmp is not None


@contextlib.contextmanager
def building(root: Path, kind: str, material: Mapping[str, Any], *, rebuild: bool = False
             ) -> Iterator[tuple[Path, Path | None]]:
    """Hold the entry's lock and yield ``(final, tmp)``: ``tmp`` is None when a complete entry exists, else an
    empty folder to build in, swapped into place (manifest last) when the block ends without an exception.

    For builds that need other processes while the lock is held (the ranks of a distributed training): the
    holder can tell them whether to build before it starts.
    """
    key = cache_key(material)
    final = Path(root) / kind / key
    with _lock(final.parent / f".{key}.lock"):
        if not rebuild and is_complete(final):
            yield final, None
            return
        _sweep_temps(final.parent, key)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_TMP_PREFIX}{key}-"))
        try:
            yield final, tmp
            write_manifest(tmp, material)
            swap_in(tmp, final)  # a stale, corrupt or --retrain entry is replaced only now the new one is whole
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def lookup(root: Path, kind: str, material: Mapping[str, Any]) -> Path | None:
    """The complete entry for ``material``, or None (nothing is built)."""
    final = Path(root) / kind / cache_key(material)
    return final if is_complete(final) else None


def _sweep_temps(folder: Path, key: str) -> None:
    for leftover in [*folder.glob(f"{_TMP_PREFIX}{key}-*"), *folder.glob(f"{_TMP_PREFIX}old-{key}-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def atomic_save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG via a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX + path.name, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_digest(folder: Path) -> str:
    """Content hash of a folder: from its manifest's file hashes when the cache built it (no re-reading of
    gigabytes of weights), else from every file's bytes."""
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return dir_fingerprint(Path(folder))
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
