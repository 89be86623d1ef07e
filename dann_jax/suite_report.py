"""The shift suite's tables (`dann_jax.suite`): last-step target accuracy per shift and
candidate, and what label-free rules choose on the same runs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import io

__all__ = ["last_step_table", "write_report"]


def _last(records: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(shift, candidate) -> each seed's target accuracy at its last step."""
    final: dict[tuple[str, str, int], dict] = {}
    for r in records:
        key = (r["shift"], r["candidate"], r["seed"])
        if key not in final or r["step"] > final[key]["step"]:
            final[key] = r
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (shift, cand, _), r in sorted(final.items()):
        out[shift, cand].append(r["target_accuracy"])
    return out


def last_step_table(records: list[dict]) -> list[str]:
    """Markdown: target accuracy at the last step, mean +- std over seeds, per shift and
    candidate, with the mean over shifts and its gain over source-only."""
    acc = _last(records)
    shifts = list(dict.fromkeys(s for s, _ in acc))
    cands = list(dict.fromkeys(c for _, c in acc))
    head = ["candidate", *shifts, "mean", "vs source-only", "worst vs source-only"]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    base = {s: np.mean(acc.get((s, "source_only"), [np.nan])) for s in shifts}
    for c in cands:
        means = [np.mean(acc[s, c]) if (s, c) in acc else np.nan for s in shifts]
        cells = [
            f"{np.mean(acc[s, c]):.3f} ± {np.std(acc[s, c]):.3f}" if (s, c) in acc else "–"
            for s in shifts
        ]
        gains = np.asarray(means) - np.asarray([base[s] for s in shifts])
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {np.nanmean(means):.3f} | "
                     f"{np.nanmean(gains):+.3f} | {np.nanmin(gains):+.3f} |")  # fmt: skip
    return lines


def write_report(out: Path, records: list[dict[str, Any]]) -> None:
    """``suite.md``."""
    intro = "Target accuracy at the last step (hidden labels, reporting only), mean ± std:"
    text = ["# Shift suite", "", intro, "", *last_step_table(records), ""]
    io.write_text(out / "suite.md", "\n".join(text))
