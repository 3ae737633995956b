"""Stage 8: the report — verdicts and statistics of one evaluation as ``report.json``, plus ``report.md``.

- ``build``: ``build_report`` judges every model's generations on the same prompts (the merged model, the base
  control and, optionally, the 4-bit adapter model) into rates with Wilson intervals, samples and extras;
- ``write``: ``write_report`` writes the plots (``plots``), the Markdown (``markdown``) and ``report.json``
  last, each file atomically;
- ``schema``: ``load_report`` reads one back and ``validate`` rejects a malformed one with a single line naming
  the file and the key.
"""

from __future__ import annotations

from harness.report.build import SCHEMA, build_report, judge
from harness.report.markdown import render_markdown
from harness.report.plots import PLOTS
from harness.report.schema import load_report, validate
from harness.report.write import REPORT_JSON, REPORT_MD, write_report

__all__ = ["PLOTS", "REPORT_JSON", "REPORT_MD", "SCHEMA", "build_report", "judge", "load_report",
           "render_markdown", "validate", "write_report"]
