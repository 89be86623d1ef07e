"""The picked candidate's checkpoint, kept as a workdir a user can load and predict with.

A run keeps only its last two checkpoints, and the validator's pick is often an earlier
one. So while the grid trains, `PickKeeper` saves every candidate that beats the best so
far by the picking validator (the first best in grid order wins ties, as in
`dann_jax.select.scoring.score_cell`) into ``<cell>/picked/``: ``config.json``,
``run.json`` and ``seed_<k>/checkpoint/<step>``, the layout of any run's workdir, so that
``dann_jax.load_run`` and ``experiments/adapt.py --workdir ... --predict DIR`` take it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np

from dann_jax import checkpoint, experiment, io, validators
from dann_jax.loop import _run_info
from dann_jax.resume import bookkeeping

__all__ = ["PickKeeper", "kept_pick"]


@dataclasses.dataclass
class PickKeeper:
    """Saves the best candidate so far of one pair and seed by ``picker``."""

    folder: Path
    picker: str
    best: float = -math.inf

    def offer(self, config, data, state, record: dict, candidate_id: str) -> None:
        """Keep this candidate when the picker prefers it to every earlier one."""
        value = record.get("v_" + self.picker)
        if value is None:
            return
        preference = float(validators.preference(self.picker, np.asarray([value], float))[0])
        if not preference > self.best:  # NaN, or no better: the earlier one stays
            return
        self.best = preference
        shutil.rmtree(self.folder, ignore_errors=True)
        config = config.replace(workdir=str(self.folder))
        experiment.check_workdir(config, self.folder, lambda _: None)
        io.write_json(self.folder / "run.json", _run_info(data))
        ckpt = self.folder / f"seed_{config.seed}" / "checkpoint"
        checkpoint.save(ckpt, state, bookkeeping(config, [[record]]))
        pick = {"id": candidate_id, "validator": self.picker, "value": value}
        io.write_json(self.folder / "pick.json", pick)


def kept_pick(folder: Path, picked_id: str) -> Path | None:
    """`folder` when it holds the checkpoint of `picked_id`, else None (e.g. the grid
    was resumed, or rescored with another validator)."""
    try:
        kept = json.loads((folder / "pick.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if kept.get("id") == picked_id else None
