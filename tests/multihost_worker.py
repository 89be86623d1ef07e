"""One process of the multi-host test (`tests/multihost_test.py`); not a test itself.

    python tests/multihost_worker.py WORKDIR NUM_PROCESSES PROCESS_ID PORT

Runs a few steps of the main job on the embedded default, on 2 CPU devices per process
(4 for a single process), and prints the curves it returns as one JSON line.
"""

import json
import os
import sys

workdir, num_processes, process_id, port = sys.argv[1], *map(int, sys.argv[2:5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
    )

from dann_jax import experiment  # noqa: E402
from dann_jax.config import Config  # noqa: E402

config = Config(steps=6, steps_per_call=2, eval_every=2, batch_size=8, workdir=workdir)
results = experiment.run(config, log=lambda line: None)
print("RESULT " + json.dumps({"devices": jax.device_count(), "seeds": results["seeds"]}))
