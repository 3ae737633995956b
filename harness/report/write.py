"""Writing a report folder: plots, report.md, then report.json — each file atomically, the JSON last."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.report.markdown import render_markdown
from harness.report.plots import PLOTS, draw_plots
from harness.report.schema import validate

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def write_report(out_dir: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``; returns the ``report.json`` path.

    The report is validated first. Each file is written atomically and ``report.json`` last, so a reader that
    finds it finds the rest; plots of an earlier run that this one does not draw are removed.
    """
    report = dict(report)
    validate(report, "report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = draw_plots(report, out)
    atomic_write_text(out / REPORT_MD, render_markdown(report, drawn))
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / REPORT_JSON, text + "\n")
    for stale in set(PLOTS) - set(drawn):  # only now: the report that showed them has been replaced
        (out / stale).unlink(missing_ok=True)
    return out / REPORT_JSON
