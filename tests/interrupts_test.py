"""Interrupts and background threads: a stop that surfaces as another error (Ctrl-C while
orbax deletes an old checkpoint: OSError 'Bad file descriptor') is still a stop; orbax's
writer threads print no traceback beside the run's one paragraph (released if the run
ends well); a benchmark's --out may name a folder that does not exist yet."""

import contextlib
import errno
import io
import json
import logging
import sys
import threading

import numpy as np
import pytest

from benchmarks import step_time
from dann_jax import cli, failures
from dann_jax.config import Config
from tests.helpers import paragraph


def _cli(runner, config=None):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(config or Config(steps=10), runner=runner)
    return code, paragraph(err.getvalue())


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [(KeyboardInterrupt(), 130, "stopped by Ctrl-C"),
     (failures.Stopped("SIGTERM"), 143, "stopped by SIGTERM")],
)  # fmt: skip
def test_a_stop_that_surfaces_as_another_error_is_a_stop(stop, code, said):
    def runner(config):
        try:
            raise stop
        except BaseException:  # orbax's cleanup, cut short, fails in its own way
            raise OSError(errno.EBADF, "Bad file descriptor") from None

    got, err = _cli(runner)
    assert got == code and said in err and "Bad file descriptor" not in err


# orbax's writer threads log their failure with absl from orbax's own files: a function
# compiled under such a file name logs as they do.
_ORBAX = compile(
    "def write(message):\n"
    "    import logging\n"
    "    try:\n"
    "        raise ValueError(message)\n"
    "    except ValueError:\n"
    "        logging.getLogger('absl').exception('_SignalingThread.run() raised an exception')\n",
    "/site-packages/orbax/checkpoint/_src/futures/future.py",
    "exec",
)


def _orbax_thread_logs(message):
    scope = {}
    exec(_ORBAX, scope)
    thread = threading.Thread(target=scope["write"], args=(message,))
    thread.start()
    thread.join()


def test_an_orbax_writer_thread_prints_no_traceback_beside_the_paragraph(caplog):
    def full_disk(config):
        _orbax_thread_logs("RESOURCE_EXHAUSTED: No space left on device")
        raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device")

    with caplog.at_level(logging.ERROR, logger="absl"):
        code, err = _cli(full_disk)
    assert code == 2 and err.startswith("error: no space left on the device writing")
    assert not [r for r in caplog.records if "orbax" in r.pathname]  # held, never printed


def test_an_orbax_writer_error_of_a_run_that_ends_well_is_still_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="absl"):
        code, _ = _cli(lambda config: _orbax_thread_logs("a writer failed"))
    assert code == 0
    assert [r.exc_info[1].args[0] for r in caplog.records if "orbax" in r.pathname] == [
        "a writer failed"
    ]


def test_asyncios_closed_loop_note_is_dropped_and_nothing_else():
    seen = []
    hook = failures._quiet_unraisable(seen.append)

    class Unraisable:
        def __init__(self, error):
            self.exc_value = error

    hook(Unraisable(RuntimeError("Event loop is closed")))
    other = Unraisable(RuntimeError("something else"))
    hook(other)
    assert seen == [other]
    assert sys.unraisablehook is not hook  # installed only while a run is guarded


def test_step_time_writes_its_report_into_a_new_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "step.json"
    step_time.write_json(str(out), {"env": 1}, [{"row": np.float32(2.0)}])
    assert json.loads(out.read_text()) == {"env": 1, "rows": [{"row": 2.0}]}
