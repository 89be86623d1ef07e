"""How a selection result is written (``selection.json``, and ``selection.md``'s tables and
lines), apart from `dann_jax.select.scoring`, which computes what they show.
"""

from __future__ import annotations

import math
from pathlib import Path

from dann_jax import io, validators

__all__ = ["write_outputs"]


def _fmt(stat: dict, digits: int = 3) -> str:
    """``mean ± std`` (or a dash)."""
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_outputs(out: Path, result: dict) -> None:
    """``selection.json`` and ``selection.md`` (atomically, via `dann_jax.io`)."""
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "selection.json", result)
    status = "" if result["complete"] else "INCOMPLETE: not every pair and seed finished. "
    io.write_text(
        out / "selection.md",
        f"{status}Label-free selection, {result['date']}. {result['protocol']}\n\n"
        f"{_settings(result)}\n\n"
        + "\n".join(_table(result["rows"])) + "\n\n" + "\n".join(_pick_lines(result))
        + "\n".join(_score_tables(result)) + "\n",
    )  # fmt: skip


def _table(rows: list[dict]) -> list[str]:
    """The Markdown table: ρ and regret per pair and overall, then harmful picks overall."""
    pairs = list(rows[0]["pairs"]) if rows else []
    head = "| validator | better | " + " | ".join(f"{p} ρ | {p} regret" for p in pairs)
    lines = [head + " | harmful picks |", "| --- | --- |" + " --- | --- |" * len(pairs) + " --- |"]
    for r in rows:
        cols = " | ".join(
            f"{_fmt(r['pairs'][p]['spearman'], 2)} | {_fmt(r['pairs'][p]['regret'])}" for p in pairs
        )
        harm = r["pairs"]["all"].get("harmful") if pairs else None
        harm = "—" if harm is None else f"{harm['picks']} of {harm['cells']}"
        lines.append(f"| {r['validator']} | {r['better']} | {cols} | {harm} |")
    return lines


def _pick_lines(result: dict) -> list[str]:
    """One line per pair and seed: the pick, the best candidate, the guard's verdict."""
    lines = []
    for c in result["cells"]:
        s, pick = c["score"], c["score"]["picked"]
        what = "—" if pick is None else pick["id"]
        if pick is not None and pick["target_accuracy"] is not None:
            what += f" (target acc {pick['target_accuracy']:.4f})"
        best = s["oracle"]
        best = "no target labels" if best is None else (
            f"best {best['id']} ({best['target_accuracy']:.4f})"
        )  # fmt: skip
        guard = f" **{s['guard']['message']}**" if s["guard"]["harmful"] else ""
        tied = (s["validators"].get(result["picker"]) or {}).get("tied_ids") or []
        if len(tied) > 1:
            what += f", tied with {', '.join(t for t in tied if t != pick['id'])} (the first "
            what += "in grid order is taken)"
        lines.append(
            f"* {c['pair']} seed {c['seed']}: {result['picker']} picked {what}; {best}.{guard}"
        )
    return lines


def _score_tables(result: dict) -> list[str]:
    """For each cell whose target has no labels, every candidate's validator values (the
    pick in bold): what there is to read when nothing can be measured against labels."""
    lines = []
    for c in result["cells"]:
        if c["score"]["oracle"] is not None:
            continue
        names = [n for n in validators.VALIDATORS if any(n in x["scores"] for x in c["candidates"])]
        pick = (c["score"]["picked"] or {}).get("id")
        better = ", ".join(
            f"{n} {'lower' if validators.VALIDATORS[n].lower_is_better else 'higher'}"
            for n in names
        )
        lines += [
            "",
            f"{c['pair']} seed {c['seed']} (no target labels): every candidate's scores "
            f"(better: {better})",
            "",
            "| candidate | " + " | ".join(names) + " |",
            "| --- " * (len(names) + 1) + "|",
        ]
        for x in c["candidates"]:
            values = [x["scores"].get(n) for n in names]
            cells = ["—" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in values]
            label = f"**{x['id']}**" if x["id"] == pick else x["id"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _settings(result: dict) -> str:
    """One line: run length, checkpoints, grid, validation size, data."""
    cfg, g = result.get("base_config", {}), result.get("grid", {})
    return (
        f"Runs of {cfg.get('steps')} steps, a candidate every {cfg.get('eval_every')} steps; "
        f"recipes {g.get('recipes')}, lambda2 {g.get('lambda2')}, seeds {g.get('seeds')}; "
        f"{result.get('val_size')} examples per validation subset; "
        f"guard consults {result.get('guard_use') or 'every validator'}; "
        f"{result.get('data_variant', '?')} data; "
        f"{sum(c.get('wall_seconds', 0.0) for c in result['cells']) / 60:.1f} min of training "
        f"and scoring on {result.get('device', {}).get('kind', '?')}."
    )
