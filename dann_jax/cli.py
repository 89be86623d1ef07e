"""Error handling shared by the command-line entry points in ``experiments/``."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from typing import Any

from dann_jax.config import Config, ConfigError

__all__ = ["run_cli"]


def _fail(message: str) -> int:
    """Print one wrapped paragraph to stderr (no traceback) and return exit code 2."""
    print(textwrap.fill("error: " + " ".join(message.split()), width=100), file=sys.stderr)
    return 2


def run_cli(
    config: Config,
    *,
    multihost: bool = False,
    runner: Callable[[Config], Any] | None = None,
) -> int:
    """Validate `config`, run it, and map known failures to a clear message.

    Args:
      config: the run's settings.
      multihost: initialise ``jax.distributed`` first (multi-host TPU slices).
      runner: the function to run (default `dann_jax.experiment.run`).

    Returns:
      Process exit code: 0 on success, 2 on bad input or a failed run, 130 when
      interrupted.
    """
    try:
        config.validate()
    except ConfigError as e:
        return _fail(str(e))
    import jax

    if multihost:
        jax.distributed.initialize()
    from dann_jax import experiment
    from dann_jax.data import DataError
    from dann_jax.train import NonFiniteLossError

    runner = runner or experiment.run
    try:
        runner(config)
    except (ConfigError, DataError, experiment.RunError) as e:
        return _fail(str(e))
    except NonFiniteLossError as e:
        return _fail(f"training diverged: {e} No results.json was written.")
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the last checkpoint is kept; rerun the same command to resume.",
            file=sys.stderr,
        )
        return 130
    return 0
