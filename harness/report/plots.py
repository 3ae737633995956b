"""The report's plots: compliance per check, the heart distribution, the loss curve, retention per prompt.

Drawn with matplotlib's object API (no pyplot: no global state, no GUI backend), each saved atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cache import atomic_save_figure
from harness.checks import NAMES as CHECKS

PLOTS = ("compliance.png", "hearts.png", "loss.png", "retention.png", "sampling.png")


def draw_plots(report: Mapping[str, Any], out: Path) -> list[str]:
    """Draw each plot the report has data for; returns the file names written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    drawn = []
    losses = [p for p in (report.get("training") or {}).get("loss") or []
              if isinstance(p, Mapping) and p.get("loss") is not None]
    plots: list[tuple[str, Callable[[Any, Any], None], Any]] = [
        ("compliance.png", _plot_compliance, report), ("hearts.png", _plot_hearts, report["hearts"])]
    if losses:
        plots.append(("loss.png", _plot_loss, losses))
    kept = [s["retention"] for s in report["samples"] if isinstance(s.get("retention"), Mapping)]
    if kept:
        plots.append(("retention.png", _plot_retention, kept))
    if report.get("sampled"):
        plots.append(("sampling.png", _plot_sampling, report))
    for name, draw, data in plots:
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig.subplots(), data)
        atomic_save_figure(fig, out / name)
        drawn.append(name)
    return drawn


def _plot_compliance(ax: Any, report: Mapping[str, Any]) -> None:
    height = 0.38
    runs = (("adapter (merged)", report["metrics"], -height / 2), ("base (control)",
            report["control"]["metrics"], height / 2))
    for label, metrics, offset in runs:
        rows = [(i, metrics[c]) for i, c in enumerate(CHECKS) if c in metrics]
        rates = [m["rate"] for _, m in rows]
        errors = [[m["rate"] - m["ci_low"] for _, m in rows], [m["ci_high"] - m["rate"] for _, m in rows]]
        ax.barh([i + offset for i, _ in rows], rates, height=height, xerr=errors, capsize=3, label=label)
    ax.set_yticks(range(len(CHECKS)), CHECKS)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    confidence = report["metrics"]["single_emoji"].get("confidence", 0.95)
    ax.set_xlabel(f"rate with {confidence:.0%} Wilson interval (malformed, template_leak: lower is better)")
    ax.set_title("compliance per check")
    ax.figure.legend(loc="outside lower center", ncols=2)  # outside: a full bar would hide it


def _plot_hearts(ax: Any, counts: Mapping[str, int]) -> None:
    # Code points, not glyphs: the default font has no colour-emoji hearts, and a missing glyph warns.
    labels = [" ".join(f"U+{ord(ch):04X}" for ch in heart) for heart in counts]
    ax.bar(labels, list(counts.values()))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylabel("responses with exactly this heart")
    ax.set_title("heart distribution (merged model)")


def _plot_loss(ax: Any, losses: Sequence[Mapping[str, Any]]) -> None:
    ax.plot([p["step"] for p in losses], [p["loss"] for p in losses], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")


def _plot_retention(ax: Any, rows: Sequence[Mapping[str, float]]) -> None:
    base, tuned = [r["nll_base"] for r in rows], [r["nll_tuned"] for r in rows]
    dots = ax.scatter(base, tuned, c=[r["chrf"] for r in rows], cmap="viridis", vmin=0, vmax=100, s=14)
    low, high = min(base + tuned), max(base + tuned)
    ax.plot([low, high], [low, high], color="grey", linewidth=1, label="tuned = base")
    ax.set_xlabel("base model's NLL of its own answer (nats/token)")
    ax.set_ylabel("base model's NLL of the tuned answer, de-hearted")
    ax.set_title("capability retention per prompt")
    ax.figure.colorbar(dots, ax=ax, label="chrF vs the base answer")
    ax.legend(loc="upper left")


def _plot_sampling(ax: Any, report: Mapping[str, Any]) -> None:
    """The behaviour's pass rate against temperature: greedy at 0, then each sampled temperature."""
    blocks = [b for b in report["sampled"] if "behaviour" in b["checks"]]
    greedy = sum(s["verdict"]["passed"] for s in report["samples"]) / len(report["samples"])
    temps = [0.0] + [b["temperature"] for b in blocks]
    for key, label in (("mean", "mean over samples"), ("pass_k", "pass^K: all K samples pass")):
        values = [greedy] + [b["checks"]["behaviour"][key]["mean" if key == "mean" else "rate"] for b in blocks]
        lows = [greedy] + [b["checks"]["behaviour"][key]["ci_low"] for b in blocks]
        highs = [greedy] + [b["checks"]["behaviour"][key]["ci_high"] for b in blocks]
        ax.errorbar(temps, values, yerr=[[v - lo for v, lo in zip(values, lows, strict=True)],
                                         [h - v for v, h in zip(values, highs, strict=True)]],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel("temperature (0: greedy)")
    ax.set_ylabel("share passing all three checks")
    ax.set_ylim(0, 1.05)
    ax.set_title("behaviour under sampling")
    ax.legend(loc="lower left")
