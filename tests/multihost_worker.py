"""One process of the multi-host test (`tests/multihost_test.py`); not a test itself.

    python tests/multihost_worker.py WORKDIR NUM_PROCESSES PROCESS_ID PORT [STOP_AT]

Runs the main job on the embedded default (6 steps), on 2 CPU devices per process (4 for
a single process), and prints the curves it returns and the lines it logged as one JSON
line. With STOP_AT it stops as a Ctrl-C would when training reaches that step. With
$FAKE_GCS_ROOT, a gs:// WORKDIR is kept in that folder (`tests.fake_bucket`); with
$WORKER_INPUT, that --input.
"""

import json
import os
import sys

workdir, num_processes, process_id, port = sys.argv[1], *map(int, sys.argv[2:5])
stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )

from dann_jax import experiment  # noqa: E402
from dann_jax.config import Config  # noqa: E402

lines = []


def log(line):
    lines.append(line)
    if stop_at is not None and f" step {stop_at}/" in line:
        raise KeyboardInterrupt


config = Config(steps=6, steps_per_call=2, eval_every=2, batch_size=8, workdir=workdir,
                input=os.environ.get("WORKER_INPUT", "auto"))  # fmt: skip
try:
    if "FAKE_GCS_ROOT" in os.environ:  # gs:// workdirs live in this folder (one for all)
        from tests import fake_bucket

        with fake_bucket.installed(os.environ["FAKE_GCS_ROOT"]):
            results = experiment.run(config, log=log)
    else:
        results = experiment.run(config, log=log)
except KeyboardInterrupt:
    print("RESULT " + json.dumps({"interrupted": True, "log": lines}))
    sys.exit(0)
out = {"devices": jax.device_count(), "seeds": results["seeds"], "log": lines}
print("RESULT " + json.dumps(out))
