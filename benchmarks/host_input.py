"""How fast the host-fed input path prepares batches, against how fast training eats them.

The host path (`dann_jax.feed`) draws each chunk's indices on the host CPU, gathers the
rows with numpy and puts them on the device; it keeps up when it prepares images faster
than the training step consumes them (steps/s x 2 x batch). This script measures both on
this machine, MNIST-size images (28 x 28 x 3), the paper's MNIST model, and the training
run fed each way (resident pools, host-fed with the background thread), and prints the
load average (the machine may be shared: the numbers are as measured).

    python -m benchmarks.host_input --out host_input.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import dann_jax as dj
from dann_jax import compiled, feed, sharding


def _pools(n: int, memmap: bool, folder: Path, side: int = 28) -> dj.TrainData:
    """Random uint8 pools of ``n`` side x side x 3 images a domain (memory-mapped files)."""
    rng = np.random.default_rng(0)
    shape = (n, side * side * 3)
    arrays = []
    for name in ("source", "target"):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        if memmap:
            np.save(folder / f"{name}.npy", x)
            x = np.load(folder / f"{name}.npy", mmap_mode="r")
        arrays.append(x)
    labels = rng.integers(0, 10, n).astype(np.int32)
    mean = np.full(3, 0.5, np.float32)
    return dj.TrainData(arrays[0], labels, arrays[1], mean, (side, side, 3))


def _prepare_rate(pools, rng, k: int, batch: int, chunks: int) -> float:
    """Images a second the host path prepares (draw, gather, put), one thread."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    put = feed._placer(mesh, False)
    jax.block_until_ready(feed._prepare(pools, rng, 0, k, batch, put))  # compile the draw
    start = time.perf_counter()
    for c in range(chunks):
        jax.block_until_ready(feed._prepare(pools, rng, (c + 1) * k, k, batch, put))
    return chunks * k * 2 * batch / (time.perf_counter() - start)


def _train_rate(pools, k: int, batch: int, chunks: int, how: str) -> float:
    """Training steps a second fed ``how`` (``device`` or ``host``), after a warm-up chunk."""
    config = dj.Config(batch_size=batch, steps=10**6)
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    state = dj.create_train_state(jax.random.key(0), model, tx, pools.image_shape)
    mesh = sharding.make_mesh(jax.devices()[:1])
    rng, hp = state.rng, sharding.put_replicated(dj.hyperparams(config), mesh)
    state = sharding.put_replicated(state, mesh)
    data = sharding.put_replicated(pools, mesh) if how == "device" else pools
    run = compiled.compile_train_steps(
        model, tx, num_steps=k, batch_size=batch, mesh=mesh, host_fed=how == "host"
    )
    schedule = [(c * k, k) for c in range(chunks + 1)]
    with feed.inputs(how, data, schedule, rng=rng, batch_size=batch, mesh=mesh) as chunks_in:
        for i, (_, _, batches) in enumerate(chunks_in):
            state, metrics = run(state, batches, hp)
            if i == 0:
                jax.block_until_ready(metrics)
                start = time.perf_counter()
    jax.block_until_ready(state.params)
    return chunks * k / (time.perf_counter() - start)


def _rate(x: float) -> float | None:
    return None if np.isnan(x) else round(x, 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=60_000, help="images a domain")
    parser.add_argument("--batch-size", type=int, default=64, help="images a domain a step")
    parser.add_argument("--steps-per-call", type=int, default=20, help="K")
    parser.add_argument("--chunks", type=int, default=5, help="timed chunks of each kind")
    parser.add_argument("--memmap", action="store_true", help="pools as memory-mapped .npy")
    parser.add_argument("--image-size", type=int, default=28, help="image side, pixels")
    parser.add_argument(
        "--prepare-only", action="store_true",
        help="only the host's rate (e.g. at 224 px, whose model a CPU trains too slowly to "
        "time: set it beside the accelerator's step_time images/s)",
    )  # fmt: skip
    parser.add_argument("--out", default="host_input.json")
    args = parser.parse_args(argv)
    k, b = args.steps_per_call, args.batch_size
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        pools = _pools(args.pool, args.memmap, Path(folder), args.image_size)
        rng = jax.random.key(0)
        prepared = _prepare_rate(pools, rng, k, b, args.chunks)
        device_steps = host_steps = float("nan")
        if not args.prepare_only:
            device_steps = _train_rate(pools, k, b, args.chunks, "device")
            host_steps = _train_rate(pools, k, b, args.chunks, "host")
    out = {
        "complete": True, "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "pool": args.pool,
        "memmap": args.memmap, "image_size": args.image_size, "batch_size": b,
        "steps_per_call": k, "chunks": args.chunks,
        "host_prepared_images_per_s": round(prepared),
        "resident_steps_per_s": _rate(device_steps),
        "resident_images_per_s": _rate(device_steps * 2 * b),
        "host_fed_steps_per_s": _rate(host_steps),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
