"""What the entry points do when a run cannot go on: one paragraph naming the fix, exit 2.

`guarded` runs a job and maps every failure a user can act on to a message: bad input
and a refused workdir, a diverged loss, out of memory (however the backend words it), no
space left on a disk, an environment JAX cannot start with, and a stop by Ctrl-C,
SIGTERM or SIGHUP (the checkpoints so far are kept: the same command resumes). Nothing
of a run that stops is left looking complete: ``results.json`` is written last.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Stopped", "fail", "guarded"]

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
    steps = [
        int(p.name)
        for ckpt in Path(workdir).glob("seed*/checkpoint")
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


def _on_signal(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def guarded(config, runner: Callable[[Any], Any]) -> int:
    """Run ``runner(config)``; the exit code (0, or 2 with one paragraph; 130 and 143 for a
    stop by SIGINT and SIGTERM), the run's checkpoints kept whatever happens."""
    import jax

    from dann_jax import experiment
    from dann_jax.checkpoint import CheckpointError
    from dann_jax.config import ConfigError
    from dann_jax.data import DataError
    from dann_jax.io import Busy, NotWritable
    from dann_jax.train import NonFiniteLossError

    handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        runner(config)
    except (ConfigError, DataError, experiment.RunError, CheckpointError, Busy, NotWritable) as e:
        return fail(str(e))
    except NonFiniteLossError as e:
        return fail(f"training diverged: {e} No results.json was written.")
    except (jax.errors.JaxRuntimeError, MemoryError) as e:
        if not isinstance(e, MemoryError) and not _OOM.search(str(e)):
            raise
        return fail(_out_of_memory(config, e))
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        return fail(_no_space(config, e))
    except (KeyboardInterrupt, Stopped) as e:
        name = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"\nstopped by {name}: {_resume_note(config)}.", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 128 + signal.Signals[str(e)].value
    except Exception as e:  # orbax / tensorstore word a full disk their own way
        if "No space left on device" not in str(e):
            raise
        return fail(_no_space(config, e))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return 0
