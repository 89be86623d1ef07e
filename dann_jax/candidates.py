"""A run that chooses its own model without target labels (``adapt.py``'s default).

With ``config.choose`` every seed trains a few candidates together in one program
(`dann_jax.loop.Members`): source-only and ``config``'s method at each lambda2 of
``config.choose_lambdas``, from the same initial state and batches. At every evaluation
each candidate is scored without target labels (`dann_jax.choose.candidate_scores`, EnsV
across them) and the candidate ``config.choose_by`` prefers is kept as the seed's
checkpoint: at every evaluation its latest checkpoint replaces the kept one
(``choose_checkpoint="last"``, the default), or the best (candidate, evaluation) of the
whole run stays (``"any"``), (``seed_<k>/checkpoint``: what `dann_jax.load_run` and
``--predict`` read). A candidate that looks harmful next to source-only (its source
accuracy fell, or its target predictions collapsed) is never kept, so the run falls back
to source-only when every adapted candidate does. ``seed_<k>/choice.json`` and
``results.json`` say which candidate was kept, at which step, its scores and why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import checkpoint, choose, io, loop, train
from dann_jax.config import Config
from dann_jax.config_fields import parse_floats
from dann_jax.resume import bookkeeping
from dann_jax.workdir import is_writer

__all__ = ["Keeper", "candidate_configs", "train_choosing"]


def candidate_configs(config: Config) -> list[tuple[str, Config]]:
    """(name, settings) of each candidate: source-only, then ``config`` at each lambda2."""
    out = [(choose.SOURCE_ONLY, config.replace(mode="source_only"))]
    for lam in parse_floats(config.choose_lambdas, "--choose-lambdas"):
        out.append((f"lambda2_{lam:g}", config.replace(lambda2=lam)))
    return out


@dataclasses.dataclass
class Keeper:
    """The best (candidate, evaluation) of one seed so far, saved as its checkpoint."""

    folder: Path
    config: Config
    best: dict[str, Any] | None = None
    state: Any = None

    def __post_init__(self):
        try:
            self.best = json.loads((self.folder / "choice.json").read_text())
        except (OSError, ValueError):
            self.best = None

    def offer(self, step: int, host, names, prefs, records) -> None:
        """Keep the candidate this evaluation prefers when it beats every earlier one."""
        i = int(np.argmax([p for p, _ in prefs]))
        value = prefs[i][0]
        # "any": the best (candidate, evaluation) so far stays (ties: the earlier one);
        # "last": this evaluation's choice replaces it (the latest checkpoints compete).
        if self.config.choose_checkpoint == "any" and self.best is not None:
            if not value > self.best["value"]:
                return
        self.state = train.tree_index(host, i)
        self.best = {
            "member": names[i].rsplit("/", 1)[-1], "step": step, "value": value,
            "by": self.config.choose_by, "record": records[i],
            "excluded": _excluded(names, prefs),
        }  # fmt: skip
        if is_writer():
            checkpoint.save(
                self.folder / "checkpoint", self.state, bookkeeping(self.config, [[records[i]]])
            )
            io.write_json(self.folder / "choice.json", self.best)


def _excluded(names, prefs) -> dict[str, str]:
    """{candidate: why it was excluded} of one evaluation."""
    return {n.rsplit("/", 1)[-1]: why for n, (_, why) in zip(names, prefs, strict=True) if why}


def _hook(model, data, config: Config, seed: int, names, keeper: Keeper):
    """The evaluation hook: score every candidate, record the scores, offer the best."""
    domains = {r: config.bn_domain(r) for r in ("source", "target")}

    def on_eval(host, records):
        pairs = [
            choose.candidate_scores(model, train.tree_index(host, i), data, domains, seed)
            for i in range(len(names))
        ]
        scores = choose.with_ensemble([p[0] for p in pairs], [p[1] for p in pairs])
        short = [n.rsplit("/", 1)[-1] for n in names]
        prefs = choose.preferences(short, scores, config.choose_by, config.choose_margin)
        for r, s, (p, why) in zip(records, scores, prefs, strict=True):
            r["choice"] = {**s, "preference": p, "excluded": why}
        keeper.offer(records[0]["step"], host, names, prefs, records)

    return on_eval


def train_choosing(
    config: Config, data, workdir: Path, seed: int, log, model=None
) -> dict[str, Any]:
    """One seed's candidates trained together; the result of the one kept (with
    ``choice``: which, when, its scores and why; ``candidates``: each one's last step).
    ``model`` replaces ``config``'s (e.g. a `DANN` over your own extractor)."""
    members = candidate_configs(config)
    names = tuple(f"seed_{seed}/candidates/{n}" for n, _ in members)
    folder = workdir / f"seed_{seed}"
    keeper = Keeper(folder, config)
    model = model or train.make_model(config, num_classes=data.num_classes)
    log(
        f"seed {seed}: training {len(members)} candidates together ("
        + ", ".join(n for n, _ in members)
        + f"); keeping the one {config.choose_by} prefers"
    )
    group = loop.Members(names, tuple(c for _, c in members), f"seed_{seed}/candidates")
    hook = _hook(model, data, config, seed, names, keeper)
    results = loop.train_and_evaluate(config, data, workdir, (seed,), log, hook, model, group)
    best = keeper.best
    state = keeper.state
    if state is None:  # a finished run rerun: the kept checkpoint is on disk
        state = checkpoint.restore_latest(folder / "checkpoint", results[0]["state"], log)[0]
    picked = next(r for r in results if r["member"].endswith("/" + best["member"]))
    record = best["record"]
    excluded = "; ".join(f"{k}: {v}" for k, v in best["excluded"].items())
    among = ("every candidate and evaluation" if config.choose_checkpoint == "any"
             else "the candidates at the last evaluation")  # fmt: skip
    log(f"seed {seed}: kept {best['member']} at step {best['step']} ({best['by']} "
        f"{best['value']:.4f}, the highest of {among}"
        + (f"; looked harmful then: {excluded}" if excluded else "") + ")")  # fmt: skip
    if best["member"] == choose.SOURCE_ONLY:
        log(
            f"seed {seed}: adaptation did not help here by {best['by']}, so this run falls "
            "back to the source-only model: its predictions are that model's. To try "
            "more, add candidates (--choose-lambdas 0.1,0.3,1) or see docs/own_data.md."
        )
    return {
        **picked,
        "member": f"seed_{seed}/candidates/{best['member']}",
        "state": state,
        "target_accuracy": record.get("target_accuracy"),
        "source_accuracy": record.get("source_accuracy"),
        "domain_accuracy": record.get("train_domain_accuracy"),
        "choice": {k: best[k] for k in ("member", "step", "by", "value", "excluded")},
        "candidates": {
            r["member"].rsplit("/", 1)[-1]: {
                "target_accuracy": r["target_accuracy"],
                "source_accuracy": r["source_accuracy"],
                "choice": r["curves"][-1].get("choice") if r["curves"] else None,
            }
            for r in results
        },
    }
