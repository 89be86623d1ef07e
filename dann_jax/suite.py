"""The shift suite: every candidate recipe on every shift of `dann_jax.data.shifts`.

Behind ``experiments/shift_suite.py``. Per shift, the candidates (source-only, DANN at
several lambda2, MCC, CDAN, ...: `CANDIDATES`) and the seeds train together: those that
differ only in traced values (weights, lambda2, learning-rate multiples) are stacked in
one compiled program (`dann_jax.train.train_steps` with per-model hparams), the others
(CDAN's discriminator, a wider discriminator, augmentations) in one program per kind.
Every model of a seed starts from the same initial state and draws the same batches, so
candidates are compared on equal terms.

At every evaluation each model is scored on the target (accuracy from the hidden labels:
reporting only) and by the label-free validators a run can compute without them
(`dann_jax.choose.label_free_scores`), and its target logits are kept, so that a rule
for choosing among candidates can be measured afterwards on the very same runs
(`dann_jax.choose`). Outputs in ``out``: ``suite.json`` (every record), ``logits/`` (the
target logits, float16 ``.npz``) and ``suite.md`` (the tables), rewritten after every
shift so a cut run keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import io, train
from dann_jax.build import hyperparams
from dann_jax.cli import RECIPES
from dann_jax.compiled import compile_train_steps
from dann_jax.config import Config

__all__ = ["CANDIDATES", "Candidate", "suite_config", "train_shift"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A named recipe: `Config` settings on top of the suite's base config."""

    name: str
    settings: tuple[tuple[str, Any], ...]
    what: str

    def config(self, base: Config) -> Config:
        return base.replace(**dict(self.settings))


def _c(name: str, what: str, **settings) -> Candidate:
    return Candidate(name, tuple(sorted(settings.items())), what)


CANDIDATES: tuple[Candidate, ...] = (
    _c("source_only", "no adaptation", mode="source_only"),
    _c("dann", "DANN, lambda2 1 (the paper's ramp)", lambda2=1.0),
    _c("dann_l0.3", "DANN, lambda2 0.3", lambda2=0.3),
    _c("dann_l0.1", "DANN, lambda2 0.1", lambda2=0.1),
    _c(
        "dann_dlr0.1",
        "DANN, the discriminator at 0.1x the learning rate",
        lambda2=1.0,
        discriminator_lr_mult=0.1,
    ),
    _c(
        "dann_heads10",
        "DANN, heads at 10x the extractor's learning rate (tllib)",
        lambda2=1.0,
        lr=0.1,
        backbone_lr_mult=0.1,
    ),
    _c("mcc", "MCC alone (no discriminator in the extractor's loss)", lambda2=0.0, mcc=1.0),
    _c("dann_mcc", "DANN + MCC", lambda2=1.0, mcc=1.0),
    _c("dann_l0.3_mcc", "DANN lambda2 0.3 + MCC", lambda2=0.3, mcc=1.0),
    _c(
        "entropy", "target entropy minimisation alone (weight 0.1)", lambda2=0.0, entropy_weight=0.1
    ),
    _c("dann_l0.1_mcc", "DANN lambda2 0.1 + MCC", lambda2=0.1, mcc=1.0),
    _c("cdan", "CDAN", lambda2=1.0, adversary="cdan"),
    _c("cdan_l0.3", "CDAN, lambda2 0.3", lambda2=0.3, adversary="cdan"),
    _c("cdan_l0.1", "CDAN, lambda2 0.1", lambda2=0.1, adversary="cdan"),
    _c("cdan_mcc", "CDAN + MCC", lambda2=1.0, adversary="cdan", mcc=1.0),
    _c("cdan_e", "CDAN+E", lambda2=1.0, adversary="cdan", cdan_entropy=1.0),
    _c("dann_wide", "DANN, a 1024-1024 discriminator", lambda2=1.0, domain_head="1024,1024"),
    _c("dann_color", "DANN + colour jitter and greyscale", lambda2=1.0, color_jitter=True),
    _c("dann_rotate", "DANN + 90-degree rotations and vertical flips", lambda2=1.0, rotate=True),
)


def suite_config(steps: int, batch_size: int, eval_every: int) -> Config:
    """The base every candidate modifies: `adapt.py`'s recipe (the improved one) at 28 x 28."""
    return Config(
        source="suite", target="suite", **RECIPES["improved"], steps=steps,
        batch_size=batch_size, eval_every=eval_every, workdir="unused",
    ).validate()  # fmt: skip


def _program_key(config: Config) -> tuple:
    """What makes candidates need separate programs (shapes and code, not values)."""
    return (config.adversary, config.domain_head, config.augment_ops)


def _groups(candidates: Sequence[Candidate], base: Config) -> list[list[Candidate]]:
    groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(_program_key(c.config(base)), []).append(c)
    return list(groups.values())


def _train_group(group, base, data, seeds, log) -> tuple[Any, Any, list[tuple[Candidate, int]]]:
    """Train one program's candidates x seeds; yield (step, host state, train metrics)."""
    config = group[0].config(base)
    model = train.make_model(config, num_classes=data.num_classes)
    tx = train.make_optimizer(config)
    models = [(c, s) for c in group for s in seeds]
    shape = tuple(data.source_train.shape[1:])
    inits = {s: train.create_train_state(jax.random.key(s), model, tx, shape) for s in seeds}
    state = train.stack_trees([inits[s] for _, s in models])
    hp = train.stack_trees([hyperparams(c.config(base)) for c, _ in models])
    stack = "loop" if jax.default_backend() == "cpu" else "vmap"
    run = compile_train_steps(
        model, tx, num_steps=base.eval_interval, batch_size=base.batch_size,
        vmap_seeds=True, augment=config.augment_ops, stack=stack,
    )  # fmt: skip
    return model, (state, jax.device_put(data.train_data()), hp, run), models


def train_shift(
    data,
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    base: Config,
    on_eval: Callable[[Any, Any, Candidate, int, int, dict], None],
    log: Callable[[str], None] = print,
) -> None:
    """Train every candidate x seed on one shift; call ``on_eval(model, state, candidate,
    seed, step, train_metrics)`` for every model at every evaluation.

    ``train_metrics``: the model's mean training metrics over the last chunk (the
    discriminator's accuracy among them).
    """
    for group in _groups(candidates, base):
        start = time.perf_counter()
        model, (state, pools, hp, run), models = _train_group(group, base, data, seeds, log)
        step = 0
        while step < base.steps:
            state, metrics = run(state, pools, hp)
            step += base.eval_interval
            host, metrics = jax.device_get((state, metrics))
            for i, (c, s) in enumerate(models):
                mine = {k: float(np.mean(v[:, i])) for k, v in metrics.items()}
                on_eval(model, train.tree_index(host, i), c, s, step, mine)
        log(f"  {', '.join(c.name for c in group)} x {len(seeds)} seeds: "
            f"{time.perf_counter() - start:.0f} s")  # fmt: skip


def write_records(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``suite.json``: the settings and every (shift, candidate, seed, step) record."""
    io.write_json(out / "suite.json", {**meta, "records": records}, make_parents=True)
