"""Where a verdict was earned: library versions, processor, torch's CPU kernels, GPU — and what drifted.

A 300-step training run amplifies float reduction order, so the stand-in's verdict can move with the processor's
vector unit (AVX-512 vs AVX2 kernels) or a library release even when nothing in the project changed. Every report
records this block; ``hearts gate --baseline`` and ``hearts env --lock`` print what differs, so a flipped check
comes with its likely cause next to it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import InputError

# The distributions whose versions shape a result (read from metadata: nothing is imported).
DISTRIBUTIONS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers",
                 "safetensors", "numpy", "emoji", "huggingface_hub", "matplotlib", "scipy", "sacrebleu",
                 "jsonschema", "gguf", "trl")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def versions(distributions: Iterable[str] = DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions of the libraries that shape a result; absent ones are left out."""
    from harness import __version__

    found = {"harness": __version__, "python": platform.python_version()}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def processor() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """The vector ISA torch's CPU kernels dispatch to (``AVX512``, ``AVX2``, ``DEFAULT``...).

    None when torch is not imported yet: the report must not pay a multi-second import for it.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return str(torch.backends.cpu.get_cpu_capability())


def describe() -> dict[str, Any]:
    """Where this process runs: platform, processor, torch's CPU capability, thread count and GPU."""
    env: dict[str, Any] = {"platform": platform.platform(), "processor": processor(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cpu_capability"] = cpu_capability()
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    return env


def read_lock(path: str | Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a pip constraints/requirements file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"--lock {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"--lock {path}: cannot read ({err.strerror or err})") from None
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    if not pins:
        raise InputError(f"--lock {path}: no 'name==version' lines (expected a pip constraints file)")
    return pins


def installed(names: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each distribution (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def drift(expected: Mapping[str, str | None], actual: Mapping[str, str | None]) -> list[tuple[str, str, str]]:
    """``(name, expected, actual)`` for every name whose version differs (a missing one reads "absent")."""
    exp = {_canonical(k): v for k, v in expected.items()}
    act = {_canonical(k): v for k, v in actual.items()}
    rows = []
    for name in sorted(set(exp) | set(act)):
        old, new = exp.get(name), act.get(name)
        if _base_version(old) != _base_version(new):
            rows.append((name, old or "absent", new or "absent"))
    return rows


def environment_drift(report: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """What differs between the versions and environment blocks of two reports (``name, baseline, report``)."""
    rows = drift(baseline.get("versions") or {}, report.get("versions") or {})
    old_env, new_env = baseline.get("environment") or {}, report.get("environment") or {}
    for key in ("processor", "cpu_capability", "gpu", "torch_threads"):
        old, new = old_env.get(key), new_env.get(key)
        if old != new:
            rows.append((key, str(old) if old is not None else "absent", str(new) if new is not None else "absent"))
    return rows


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _base_version(version: str | None) -> str | None:
    """``2.13.0+cpu`` and ``2.13.0`` are one release: the local build tag is not a version change."""
    return None if version is None else version.split("+", 1)[0]
