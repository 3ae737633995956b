"""What a report.json must hold: read and validate, one line naming the file and the key on any problem.

Hand-written rather than a declared JSON Schema: every message says the key path, what was expected and what
was found ("metrics.in_list.k must be a non-negative integer, got a boolean"), which 50 fault cases pin, and the
checks that matter most cross fields (k <= n, rate = k/n inside its interval, one sample per judged prompt).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.checks import NAMES as CHECKS
from harness.errors import InputError
from harness.inputs import read_json, tree_problem
from harness.report.build import SCHEMA

_VERDICT_FLAGS = ("single_emoji", "in_list", "between_every_word", "applicable", "malformed", "template_leak")
_EPS = 1e-9  # float slack when checking that a rate lies inside its own interval
MAX_N = 2**31  # beyond this scipy's exact tests overflow; no evaluation set comes near it


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``report.json``; any problem is an InputError naming the file and the key."""
    report = read_json(path, expected="a JSON report")
    validate(report, str(path))
    return report


def validate(report: Any, src: str) -> None:
    """Raise InputError (``src: key.path problem``) unless ``report`` has the report schema."""
    problem = tree_problem(report)  # NaN, ±inf, huge integers, deep nesting: before any key is read
    if problem is not None:
        raise InputError(f"{src}: {problem}")
    r = _obj(report, src, "", "the top level")
    schema = _field(r, "schema", src, "")
    if schema != SCHEMA:
        raise InputError(f"{src}: schema {schema!r} is not supported (expected {SCHEMA})")
    if not isinstance(_field(r, "created", src, ""), str):
        raise InputError(f"{src}: created must be a string")
    model = _obj(_field(r, "model", src, ""), src, "model")
    for key in ("base", "adapter_path", "merged_path"):
        _field(model, key, src, "model")
    for key in ("config", "versions"):
        _obj(_field(r, key, src, ""), src, key)
    n = _metrics_block(_field(r, "metrics", src, ""), src, "metrics", CHECKS)
    _hearts(_field(r, "hearts", src, ""), src)
    if _field(r, "uniformity", src, "") is not None:
        _obj(r["uniformity"], src, "uniformity")
    control = _obj(_field(r, "control", src, ""), src, "control")
    _metrics_block(_field(control, "metrics", src, "control"), src, "control.metrics", ("single_emoji",))
    if "samples" in control:
        _samples_block(control["samples"], src, "control.samples")
    if "adapter" in r:
        adapter = _obj(r["adapter"], src, "adapter")
        _metrics_block(_field(adapter, "metrics", src, "adapter"), src, "adapter.metrics", ("single_emoji",))
    if "agreement" in r:
        _rate(r["agreement"], src, "agreement")
        if "fp32" in r["agreement"]:
            _fp32_agreement(r["agreement"]["fp32"], src)
    for key in ("training", "data"):
        if key in r:
            _obj(r[key], src, key)
    samples = _samples_block(_field(r, "samples", src, ""), src, "samples")
    if len(samples) != n:
        raise InputError(f"{src}: samples has {len(samples)} entries but metrics.single_emoji.n is {n}")


def _fp32_agreement(value: Any, src: str) -> None:
    """The fp32 agreement: a rate, and how many of its n answer pairs are the same text."""
    n = _rate(value, src, "agreement.fp32")
    same = _count(_field(value, "same_text", src, "agreement.fp32"), src, "agreement.fp32.same_text")
    if same > n:
        raise InputError(f"{src}: agreement.fp32.same_text = {same} is more than its n = {n}")


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _obj(value: Any, src: str, at: str, label: str | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{src}: {label or at} must be a JSON object, got {_kind(value)}")
    return value


def _field(d: Mapping[str, Any], key: str, src: str, at: str) -> Any:
    if key not in d:
        raise InputError(f"{src}: {_join(at, key)} is missing")
    return d[key]


def _number(value: Any, src: str, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{src}: {at} must be a number, got {_got(value)}")
    return float(value)


def _count(value: Any, src: str, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{src}: {at} must be a non-negative integer, got {_got(value)}")
    return value


def _got(value: Any) -> str:
    return _kind(value) if value is None else f"{_kind(value)} {json.dumps(value)[:40]}"


def _rate(value: Any, src: str, at: str) -> int:
    """Validate one ``{rate, k, n, ci_low, ci_high[, confidence]}`` block; returns n."""
    block = _obj(value, src, at)
    k = _count(_field(block, "k", src, at), src, f"{at}.k")
    n = _count(_field(block, "n", src, at), src, f"{at}.n")
    if n == 0:
        raise InputError(f"{src}: {at}.n is 0 (a rate needs at least one judged response)")
    if n > MAX_N:
        raise InputError(f"{src}: {at}.n = {n} is more responses than any evaluation judges (at most {MAX_N})")
    if "confidence" in block:  # the Wilson interval's level; the gate recomputes bounds with it
        c = _number(block["confidence"], src, f"{at}.confidence")
        if not 0.0 < c < 1.0:
            raise InputError(f"{src}: {at}.confidence = {c:g} is outside (0, 1) (e.g. 0.95)")
    if k > n:
        raise InputError(f"{src}: {at}.k = {k} exceeds {at}.n = {n}")
    rate, low, high = (_number(_field(block, key, src, at), src, f"{at}.{key}") for key in ("rate", "ci_low",
                                                                                           "ci_high"))
    for key, v in (("rate", rate), ("ci_low", low), ("ci_high", high)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{src}: {at}.{key} = {v} is outside [0, 1]")
    if abs(rate - k / n) > _EPS:
        raise InputError(f"{src}: {at}.rate = {rate} is not k/n = {k}/{n}")
    if not low - _EPS <= rate <= high + _EPS:
        raise InputError(f"{src}: {at}: rate {rate} lies outside its interval [{low}, {high}]")
    return n


def _metrics_block(value: Any, src: str, at: str, required: Sequence[str]) -> int:
    """Validate each rate block of a metrics object (``required`` must be there); returns single_emoji's n."""
    metrics = _obj(value, src, at)
    for check in required:
        _field(metrics, check, src, at)
    ns = {check: _rate(block, src, f"{at}.{check}") for check, block in metrics.items()}
    return ns["single_emoji"]


def _hearts(value: Any, src: str) -> None:
    hearts = _obj(value, src, "hearts")
    for heart, count in hearts.items():
        _count(count, src, f"hearts[{heart!r}]")


def _samples_block(value: Any, src: str, at: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"{src}: {at} must be a list, got {_kind(value)}")
    for i, sample in enumerate(value):
        here = f"{at}[{i}]"
        s = _obj(sample, src, here)
        for key in ("prompt", "response"):
            if not isinstance(_field(s, key, src, here), str):
                raise InputError(f"{src}: {here}.{key} must be a string, got {_kind(s[key])}")
        _count(_field(s, "new_tokens", src, here), src, f"{here}.new_tokens")
        verdict = _obj(_field(s, "verdict", src, here), src, f"{here}.verdict")
        for flag in (*_VERDICT_FLAGS, "passed"):
            if not isinstance(_field(verdict, flag, src, f"{here}.verdict"), bool):
                got = _kind(verdict[flag])
                raise InputError(f"{src}: {here}.verdict.{flag} must be true/false, got {got}")
        for key, holder in (("terminated", s), ("terminated", verdict)):
            if not isinstance(holder.get(key), bool | None):
                raise InputError(f"{src}: {here}.{key} must be true/false/null, got {_kind(holder[key])}")
    return value
