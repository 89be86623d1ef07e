"""What the training loop writes and says while it runs: ``metrics.jsonl``, TensorBoard
event files, the progress bar, the time left and the evaluation lines.

`Queue` holds the chunk dispatched last and reads it (NaN check, records written) once the
next is queued, so the host's work on chunk i overlaps the device's on chunk i+1.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import checkpoint, io, sharding, storage, train
from dann_jax.config import Config
from dann_jax.workdir import is_writer

__all__ = ["Eta", "Queue", "log_eval", "open_boards", "open_metrics", "progress", "read_chunk"]


def progress(total: int, initial: int, desc: str):
    """A tqdm bar on a terminal; None when stderr is a log file or tqdm is missing."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr)


def _records(path: Path, log) -> list[dict]:
    """The records of a metrics.jsonl; a partial last line (an append cut by a kill or a
    full disk) is dropped with a note, damage anywhere else names --restart."""
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise checkpoint.CheckpointError(
                    f"{path} is damaged at line {i + 1} of {len(lines)}. Add --restart to "
                    "start the run over, or use another --workdir."
                ) from None
            log(f"note: dropped a partial last line of {path} (cut by a kill or a full disk)")
    return records


def open_metrics(stack: contextlib.ExitStack, workdir: Path, names, step: int, log) -> list:
    """Each model's metrics.jsonl cut back to `step` and opened for appending (process 0;
    on a bucket, whose objects cannot be appended to, a `dann_jax.storage.ObjectLog`)."""
    if not is_writer():
        return []
    files = []
    for name in names:
        path = storage.as_path(workdir) / name / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in _records(path, log) if r.get("step", step + 1) <= step]
        text = "".join(io.dumps(r, indent=None) + "\n" for r in kept)
        io.write_text(path, text)
        if storage.is_url(path):
            files.append(stack.enter_context(storage.ObjectLog(path, text)))
        else:
            files.append(stack.enter_context(path.open("a")))
    return files


class Eta:
    """Says once, early, how long the rest of the run should take (from its step time).

    The first chunk is left out of the estimate: it includes compilation.
    """

    def __init__(self, remaining: int, log, name: str):
        self.remaining, self.log, self.name = remaining, log, name
        self.chunks, self.start, self.steps, self.said = 0, 0.0, 0, False

    def chunk_done(self, n: int) -> None:
        self.chunks += 1
        self.remaining -= n
        if self.said or self.chunks == 1:
            self.start = time.perf_counter()
            return
        self.steps += n
        seconds = time.perf_counter() - self.start
        if seconds > 2.0 or self.remaining == 0:
            per_step = seconds / self.steps
            self.log(
                f"{self.name}: {1e3 * per_step:.0f} ms per step; about "
                f"{per_step * self.remaining / 60:.1f} min of training left (evaluations extra)"
            )
            self.said = True


def read_chunk(metrics, names, first_step: int) -> list[dict[str, float]]:
    """Each model's mean metrics over one chunk, after the NaN check (host sync)."""
    metrics = sharding.fetch(metrics)
    out = []
    for i, name in enumerate(names):
        mine = {k: v[:, i] if len(names) > 1 else v for k, v in metrics.items()}
        try:
            train.check_finite(mine, first_step=first_step)
        except train.NonFiniteLossError as e:
            raise train.NonFiniteLossError(f"{name.replace('_', ' ')}: {e}") from None
        out.append({k: float(np.mean(v)) for k, v in mine.items()})
    return out


def log_eval(log, names, step: int, total: int, records) -> None:
    """One plain line per model and evaluation (when no progress bar is shown)."""
    for name, r in zip(names, records, strict=True):
        target = r["target_accuracy"]
        log(
            f"{name.replace('_', ' ', 1)} step {step}/{total}: loss {r['train_loss']:.4f} "
            f"domain_acc {r['train_domain_accuracy']:.3f} source_acc {r['source_accuracy']:.4f} "
            f"target_acc {'n/a (no labels)' if target is None else f'{target:.4f}'}"
        )


class Queue:
    """The chunk dispatched last, read (NaN check, records written) once the next is queued.

    ``push`` queues a chunk's metrics and reads the one before it, so the host's work on
    chunk i overlaps the device's on chunk i+1; ``drain`` reads the queued chunk now
    (before an evaluation and a checkpoint, which must follow the NaN check).
    """

    def __init__(self, names, files, bar, eta, boards=()):
        self.names, self.files, self.bar, self.eta, self.pending = names, files, bar, eta, None
        self.boards = boards  # one TensorBoard writer per seed (--tensorboard), or none
        self.last = [{} for _ in names]  # each model's mean metrics over the last chunk read

    def push(self, first_step: int, n: int, metrics) -> None:
        if self.pending is not None:
            self.write(self.drain())
        self.pending = (first_step, n, metrics)

    def drain(self) -> list[dict[str, Any]]:
        """The queued chunk's records (one per seed), after its NaN check."""
        first, n, metrics = self.pending
        self.pending = None
        self.last = read_chunk(metrics, self.names, first)
        self.eta.chunk_done(n)
        if self.bar is not None:
            self.bar.update(n)
        return [{"step": first + n, **{f"train_{k}": v for k, v in m.items()}} for m in self.last]

    def write(self, records, durable: bool = False) -> None:
        """Append `records` to each model's metrics.jsonl (``durable``: a checkpoint was
        just saved; on a bucket the file is then written out at once)."""
        for f, record in zip(self.files, records, strict=bool(self.files)):  # none off process 0
            f.write(io.dumps(record, indent=None) + "\n")
            f.flush()
            if durable and isinstance(f, storage.ObjectLog):
                f.sync()
        for board, record in zip(self.boards, records, strict=bool(self.boards)):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    board.add_scalar(key.replace("_", "/", 1), value, record["step"])


def open_boards(stack: contextlib.ExitStack, config: Config, workdir: Path, names, step: int):
    """One TensorBoard writer per model with ``--tensorboard`` (process 0), else none.

    ``purge_step``: after a resume, TensorBoard drops what the stopped run wrote past the
    checkpoint, so the curves show each step once.
    """
    if not config.tensorboard or not is_writer():
        return ()
    from tensorboardX import SummaryWriter

    return tuple(
        stack.enter_context(
            SummaryWriter(str(workdir / name / "tensorboard"), purge_step=step or None)
        )
        for name in names
    )
