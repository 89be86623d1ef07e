"""The shift suite's tables (`dann_jax.suite`): last-step target accuracy per shift and
candidate, and what label-free rules choose on the same runs."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import io

__all__ = ["choice_rows", "choice_table", "last_step_table", "simulate_choice", "write_report"]


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
    candidate, with the mean over shifts and its gain over source-only (the mean only for
    a candidate run on every shift; the gains over the shifts it was run on, counted)."""
    acc = _last(records)
    shifts = list(dict.fromkeys(s for s, _ in acc))
    cands = list(dict.fromkeys(c for _, c in acc))
    head = ["candidate", *shifts, "mean", "shifts", "vs source-only", "worst vs source-only"]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    base = {s: np.mean(acc.get((s, "source_only"), [np.nan])) for s in shifts}
    for c in cands:
        means = np.asarray([np.mean(acc[s, c]) if (s, c) in acc else np.nan for s in shifts])
        cells = [
            f"{np.mean(acc[s, c]):.3f} ± {np.std(acc[s, c]):.3f}" if (s, c) in acc else "–"
            for s in shifts
        ]
        gains = means - np.asarray([base[s] for s in shifts])
        ran = int(np.sum(~np.isnan(means)))
        mean = f"{np.mean(means):.3f}" if ran == len(shifts) else "–"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {mean} | {ran} | "
                     f"{np.nanmean(gains):+.3f} | {np.nanmin(gains):+.3f} |")  # fmt: skip
    return lines


def choice_table(rows: list[dict]) -> list[str]:
    """Markdown of `choice_rows`: per candidate set, validator and margin, the kept
    model's mean regret, its mean and worst gain over source-only, and each shift's gain."""
    if not rows:
        return []
    shifts = list(rows[0]["per_shift"])
    head = ["set", "chosen by", "margin", "checkpoints", "regret", "gain", "worst", *shifts]
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for r in rows:
        cells = [f"{r['per_shift'].get(s, math.nan):+.3f}" for s in shifts]
        first = [r["set"], r["validator"], str(r["margin"]), r.get("checkpoint", "last")]
        first += [f"{r[k]:+.3f}" for k in ("regret", "gain", "worst")]
        lines.append("| " + " | ".join(first + cells) + " |")
    return lines


def write_report(out: Path, records: list[dict[str, Any]], choices: list[dict] = ()) -> None:
    """``suite.md``: the last-step table, and `choice_table` of `choices` when given."""
    intro = "Target accuracy at the last step (hidden labels, reporting only), mean ± std:"
    text = ["# Shift suite", "", intro, "", *last_step_table(records), ""]
    if choices:
        what = ("The kept model against the set's best candidate at the last step (regret) "
                "and against source-only (gain, worst; per shift), means over seeds:")  # fmt: skip
        text += ["## Choosing without target labels", "", what, "", *choice_table(choices), ""]
    io.write_text(out / "suite.md", "\n".join(text))


# ----------------------------------------------------------------- choosing, measured

# The candidate sets a choosing run can train together (`dann_jax.candidates`): source-only
# and one method at one or several lambda2 (the names of `dann_jax.suite.CANDIDATES`).
CHOICE_SETS = {
    "dann+mcc 1": ("source_only", "dann_mcc"),
    "dann+mcc 0.3,1": ("source_only", "dann_l0.3_mcc", "dann_mcc"),
    "dann+mcc 0.1,0.3,1": ("source_only", "dann_l0.1_mcc", "dann_l0.3_mcc", "dann_mcc"),
    "dann 1": ("source_only", "dann"),
    "dann 0.1,0.3,1": ("source_only", "dann_l0.1", "dann_l0.3", "dann"),
}


def _by_model(records: list[dict]) -> dict[tuple, dict]:
    return {(r["shift"], r["candidate"], r["seed"], r["step"]): r for r in records}


def simulate_choice(
    records, logits, shift: str, seed: int, members, validator, margin, checkpoint="last"
):
    """The (candidate, step) a choosing run of `members` keeps on this shift and seed:
    `dann_jax.choose.preferences` at every evaluation, each evaluation's choice replacing
    the kept one (``checkpoint="last"``) or the best so far kept (``"any"``; ties: the
    earlier), exactly as `dann_jax.candidates.Keeper` does. Returns (candidate, step)."""
    from dann_jax import choose

    index = _by_model(records)
    steps = sorted({r["step"] for r in records if r["shift"] == shift and r["seed"] == seed})
    best = None
    for step in steps:
        rows = [index.get((shift, m, seed, step)) for m in members]
        if any(r is None for r in rows):
            continue
        scores = [dict(r["scores"]) for r in rows]
        scores = choose.with_ensemble(scores, [logits[f"{m}/{seed}/{step}"] for m in members])
        scores = [{k: (math.nan if v is None else v) for k, v in s.items()} for s in scores]
        prefs = choose.preferences(list(members), scores, validator, margin)
        i = int(np.argmax([p for p, _ in prefs]))
        if best is None or checkpoint == "last" or prefs[i][0] > best[0]:
            best = (prefs[i][0], members[i], step)
    return None if best is None else best[1:]


def _shift_outcome(index, logits, shift, seeds, last, members, validator, margin, checkpoint):
    """(the kept model's accuracy, the set's best last-step one, source-only's last-step
    one) on one shift, each a mean over seeds."""
    acc = lambda c, seed, step: index[(shift, c, seed, step)]["target_accuracy"]
    records = [r for k, r in index.items() if k[0] == shift]
    picks = [simulate_choice(records, logits, shift, seed, members, validator, margin,
                             checkpoint) for seed in seeds]  # fmt: skip
    kept = np.mean([acc(c, seed, step) for seed, (c, step) in zip(seeds, picks, strict=True)])
    best = max(np.mean([acc(m, seed, last) for seed in seeds]) for m in members)
    return kept, best, np.mean([acc("source_only", seed, last) for seed in seeds])


def choice_rows(
    records, logits_by_shift, sets=CHOICE_SETS, validators=(), margins=(), checkpoints=("last",)
):
    """Per candidate set, validator, margin and rule (`simulate_choice`'s ``checkpoint``):
    over the suite's shifts, the kept model's target accuracy against the set's best
    candidate at the last step (``regret``) and against source-only's last step (``gain``,
    ``worst``); means over seeds first."""
    index = _by_model(records)
    shifts = list(dict.fromkeys(r["shift"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    last = max(r["step"] for r in records)
    rows = []
    for set_name, members in sets.items():
        usable = [s for s in shifts if all((s, m, seeds[0], last) in index for m in members)]
        for validator, margin, rule in itertools.product(validators, margins, checkpoints):
            out = [_shift_outcome(index, logits_by_shift[s], s, seeds, last, members,
                                  validator, margin, rule) for s in usable]  # fmt: skip
            if not out:
                continue
            gains = [kept - source for kept, _, source in out]
            rows.append({
                "set": set_name, "validator": validator, "margin": margin, "checkpoint": rule,
                "shifts": len(usable),
                "regret": float(np.mean([best - kept for kept, best, _ in out])),
                "gain": float(np.mean(gains)), "worst": float(np.min(gains)),
                "per_shift": {s: float(g) for s, g in zip(usable, gains, strict=True)},
            })  # fmt: skip
    return rows
