"""Charts people would rather look at than read, drawn with matplotlib (Agg: no display needed).

``accuracy_curve``: held-out accuracy (overall, per question type, optionally a compositional split)
against wall-clock minutes, with the training stages shaded, the target drawn, and a ceiling
(e.g. what the LLM answers from the scene told in words) as a reference line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

#: one colour per question type, in the order the synthetic task lists them
TYPE_COLOURS = ("#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e")
SPAN_COLOURS = ("#f2f2f2", "#e4ecf7", "#eaf5e6", "#fbeee0", "#f3e8f7", "#e8f6f5")


def accuracy_curve(
    points: Sequence[dict],
    path: str | Path,
    *,
    title: str,
    types: Sequence[str],
    spans: Sequence[tuple[str, float, float]] = (),
    target: tuple[float, float] | None = (0.9, 10.0),
    ceiling: float | None = None,
    chance: dict[str, float] | None = None,
) -> Path:
    """Write a PNG of ``points`` (each ``{"seconds", "accuracy", "by_type": {type: acc}}`` and
    optionally ``"compositional"``) to ``path``.

    ``spans`` shades ``(label, start_s, end_s)`` intervals (the training stages); ``target`` is
    ``(accuracy, minutes)``, drawn as a dashed level and a deadline; ``ceiling`` a dotted level.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if not points:
        raise ValueError("accuracy_curve needs at least one point")
    path = Path(path)
    minutes = [p["seconds"] / 60 for p in points]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    try:
        for i, (label, start, end) in enumerate(spans):
            ax.axvspan(start / 60, end / 60, color=SPAN_COLOURS[i % len(SPAN_COLOURS)], zorder=0)
            # Upright along the span's left edge: short spans sit side by side without overlapping.
            ax.text(start / 60, 0.985, f" {label}", rotation=90, ha="left", va="top", fontsize=7, color="#555555",
                    transform=ax.get_xaxis_transform())
        for colour, kind in zip(TYPE_COLOURS * (len(types) // len(TYPE_COLOURS) + 1), types, strict=False):
            values = [p["by_type"].get(kind) for p in points]
            shown = [(m, v) for m, v in zip(minutes, values, strict=True) if v is not None]
            if shown:
                ax.plot(*zip(*shown, strict=True), color=colour, lw=1.2, marker=".", label=kind)
        if any("compositional" in p for p in points):
            shown = [(m, p["compositional"]) for m, p in zip(minutes, points, strict=True) if "compositional" in p]
            ax.plot(*zip(*shown, strict=True), color="#7f7f7f", lw=1.6, ls="--", marker="x",
                    label="unseen colour-shape pairs")
        ax.plot(minutes, [p["accuracy"] for p in points], color="black", lw=2.6, marker="o", label="all")
        if ceiling is not None:
            ax.axhline(ceiling, color="#444444", lw=1, ls=":", label=f"scene told in words ({ceiling:.0%})")
        if target is not None:
            level, deadline = target
            ax.axhline(level, color="#888888", lw=1, ls="--")
            ax.axvline(deadline, color="#888888", lw=1, ls="--")
            ax.annotate(f"target: {level:.0%} in {deadline:g} min", (deadline, level), xytext=(-6, -4),
                        textcoords="offset points", ha="right", va="top", fontsize=8, color="#555555")
        if chance:
            overall = sum(chance.values()) / len(chance)
            ax.axhline(overall, color="#bbbbbb", lw=0.8, label=f"chance (mean over types, {overall:.0%})")
        right = max([*minutes, *(end / 60 for _, _, end in spans), (target[1] if target else 0)])
        ax.set_xlim(0, right * 1.02 or 1)
        ax.set_ylim(0, 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("minutes since the start (evaluation time left out)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(True, color="#dddddd", lw=0.6)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
