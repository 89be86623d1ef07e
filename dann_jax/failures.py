"""What the entry points do when a run cannot go on: one paragraph naming the fix, exit 2.

`guarded` runs a job and maps every failure a user can act on to a message: bad input
and a refused workdir, a diverged loss, out of memory (however the backend words it), no
space left on a disk, an environment JAX cannot start with, and a stop by Ctrl-C,
SIGTERM or SIGHUP (the checkpoints so far are kept, and a training loop saves the step
it got to before it stops: the same command resumes). Nothing
of a run that stops is left looking complete: ``results.json`` is written last.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable
from typing import Any

__all__ = ["Stopped", "deferred_stops", "fail", "guarded"]

_OOM = re.compile(r"RESOURCE_EXHAUSTED|out of memory|\bOOM\b", re.IGNORECASE)
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP); raised where it is running.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` of the
    libraries underneath swallows it.
    """


def fail(message: str) -> int:
    """Print one wrapped paragraph to stderr (no traceback) and return exit code 2."""
    # Paths and flags are never broken across lines (no split at hyphens or inside words).
    text = textwrap.fill(
        "error: " + " ".join(message.split()), width=100, break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip
    print(text, file=sys.stderr)
    return 2


def last_checkpoint(workdir: str | os.PathLike) -> int | None:
    """The newest step checkpointed in a workdir (any seed), or None."""
    from dann_jax import storage

    steps = [
        int(p.name)
        for ckpt in storage.as_path(workdir).glob("seed*/checkpoint")
        for p in ckpt.iterdir()
        if p.name.isdigit()
    ]
    return max(steps, default=None)


def _resume_note(config) -> str:
    step = last_checkpoint(config.workdir)
    if step is None:
        return "no checkpoint was saved yet"
    return f"the checkpoints so far are kept (the last: step {step}); the same command resumes"


def _out_of_memory(config, error: Exception) -> str:
    """The message for a run that did not fit in memory: which flags to lower."""
    # A MemoryError raised by Python itself has no message at all.
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    seeds = (
        f" or train fewer seeds at once (--seeds {config.seeds} with --vmap-seeds)"
        if config.vmap_seeds and config.seeds > 1
        else ""
    )
    return (
        f"out of memory ({first}). Lower --batch-size (now {config.batch_size} per "
        f"domain){seeds}; the training images also live in device memory, so a smaller "
        "--image-size or domain helps too. No results.json was written; add --restart to "
        "rerun in the same --workdir with the new settings."
    )


def _no_space(config, error: Exception) -> str:
    where = getattr(error, "filename", None) or config.workdir
    return (
        f"no space left on the device writing {where}. Free space there (or use another "
        f"--workdir) and rerun the same command: {_resume_note(config)}. No results.json "
        "was written."
    )


def platform_problem() -> str | None:
    """Why JAX cannot start its backend here (e.g. ``JAX_PLATFORMS`` naming a platform the
    machine lacks), or None when it can."""
    import jax

    try:
        jax.devices()
    except Exception as e:  # RuntimeError, or an AssertionError when no backend is left
        asked = os.environ.get("JAX_PLATFORMS")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        fix = (
            f"JAX_PLATFORMS={asked!r} names a platform JAX cannot start here ({first}). "
            "Unset JAX_PLATFORMS (JAX then uses what this machine has) or set it to cpu."
        )
        return fix if asked else f"JAX cannot start a backend here ({first})."
    return None


class _Deferral:
    """Whether a training loop is running that saves before it stops (`deferred_stops`),
    and the stop it was asked for."""

    active = False
    asked: str | None = None


_DEFERRAL = _Deferral()  # the process's signal disposition: one per process, like signals


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _DEFERRAL.active:  # the loop saves a checkpoint at its next chunk, then stops
        _DEFERRAL.asked = name
        return
    raise Stopped(name)


@contextlib.contextmanager
def deferred_stops():
    """Inside, SIGTERM and SIGHUP (a preempted VM's notice) only ask for a stop: the
    training loop checks ``asked()`` after each chunk, saves a checkpoint of the step it
    got to, and raises `Stopped`, so the same command resumes with nothing lost. Yields
    ``asked``: the signal's name once one came, else None."""
    before = (_DEFERRAL.active, _DEFERRAL.asked)
    _DEFERRAL.active, _DEFERRAL.asked = True, None
    try:
        yield lambda: _DEFERRAL.asked
    finally:
        _DEFERRAL.active, _DEFERRAL.asked = before


def _stop_in(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or `Stopped` an error came from, if any: Ctrl-C while orbax
    deletes an old checkpoint surfaces as ``OSError: Bad file descriptor``, raised while
    handling the interrupt."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (KeyboardInterrupt, Stopped)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _stopped(config, stop: BaseException) -> int:
    """Say the run stopped (its checkpoints kept) and return 130, 143 or 129."""
    name = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else str(stop)
    print(f"\nstopped by {name}: {_resume_note(config)}.", file=sys.stderr)
    return 130 if isinstance(stop, KeyboardInterrupt) else 128 + signal.Signals[str(stop)].value


class _Held(logging.Filter):
    """Holds the errors orbax's writer threads log with their tracebacks (a 40-line
    traceback of a full disk, or of a save cut by Ctrl-C): the failure reaches the main
    thread too, which says it in one paragraph. Released (logged) if the run ends well."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            self.held.append(record)
            return False
        return True


def _quiet_unraisable(hook):
    """`sys.unraisablehook` without asyncio's 'Event loop is closed' of orbax's finished
    event loops, collected late (harmless; printed as a traceback beside the run's output)."""

    def quiet(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):  # fmt: skip
            hook(unraisable)

    return quiet


def guarded(config, runner: Callable[[Any], Any]) -> int:
    """Run ``runner(config)``; the exit code (0, or 2 with one paragraph; 130, 143 and 129
    for a stop by SIGINT, SIGTERM and SIGHUP), the run's checkpoints kept whatever
    happens, and no background thread's traceback beside the paragraph."""
    handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    held, absl, unraisable = _Held(), logging.getLogger("absl"), sys.unraisablehook
    for stale in [f for f in absl.filters if isinstance(f, _Held)]:
        absl.removeFilter(stale)  # an earlier run's in this process (it is over)
    absl.addFilter(held)
    sys.unraisablehook = _quiet_unraisable(unraisable)
    code = 1
    try:
        code = _run(config, runner)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if code == 0:
            absl.removeFilter(held)
            for record in held.held:  # nothing said them: a writer failed, the run did not
                absl.handle(record)
        # Else it stays: a writer cut short by the stop logs its error as the process ends.
    return code


def _run(config, runner: Callable[[Any], Any]) -> int:
    """`guarded`'s work: each failure a user can act on mapped to its paragraph."""
    import jax

    from dann_jax.checkpoint import CheckpointError
    from dann_jax.config_fields import ConfigError
    from dann_jax.data import DataError
    from dann_jax.io import Busy, NotWritable
    from dann_jax.train import NonFiniteLossError
    from dann_jax.workdir import RunError

    try:
        runner(config)
    except (ConfigError, DataError, RunError, CheckpointError, Busy, NotWritable) as e:
        return fail(str(e))
    except NonFiniteLossError as e:
        return fail(f"training diverged: {e} No results.json was written.")
    except (KeyboardInterrupt, Stopped) as e:
        return _stopped(config, e)
    except MemoryError as e:
        return fail(_out_of_memory(config, e))
    except Exception as e:  # also orbax / tensorstore, which word a full disk their own way
        stop = _stop_in(e)
        if stop is not None:
            return _stopped(config, stop)
        if isinstance(e, jax.errors.JaxRuntimeError) and _OOM.search(str(e)):
            return fail(_out_of_memory(config, e))
        if getattr(e, "errno", None) in _NO_SPACE or "No space left on device" in str(e):
            return fail(_no_space(config, e))
        raise
    return 0
