"""Peak host memory of the main job on a folder pair larger than it should hold.

Writes (once) a pair of image folders: a labelled source of ``--images / 2`` PNGs in 10
class folders and an unlabelled flat target of as many, ``--size`` pixels square. Then
runs ``experiments/adapt.py`` on it (the defaults, ``--input host``, ``--steps`` steps) in
a child process while sampling its ``/proc/<pid>/status`` every 20 ms, in three forms:

* ``small``: the same command on a pair of ``--small`` images (the model, the runtime
  and the compiled programs: what any run holds);
* ``mapped``: the large pair as the job reads it (a decoded domain above
  `dann_jax.data.image_cache.MAP_ABOVE` memory-mapped, a run's first read decoding it);
  and the same again from the cache;
* ``in_memory``: the large pair read into memory (``MAP_ABOVE`` raised past it), the
  way every domain was read before.

The process's own memory is ``RssAnon`` (its peak as sampled); pages of mapped files
(``RssFile``) are the page cache's, dropped by the kernel when memory is needed, and are
reported beside it, with ``VmHWM`` (the kernel's peak of both). Prints and writes JSON
with the load average before and after.

    python -m benchmarks.host_memory --folder /tmp/pair --out host_memory.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent


def _image(i: int, label: int, size: int, domain: int) -> np.ndarray:
    """A smooth image (PNG compresses it): a class-dependent blob on a gradient."""
    rng = np.random.default_rng([domain, i])
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.3 + 0.4 * rng.random(2)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * (8 + 4 * label))
    base = np.stack([xx, yy, blob], -1) if domain == 0 else np.stack([blob, 1 - xx, yy], -1)
    return (255 * np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)).astype(np.uint8)


def _write(args) -> None:
    from PIL import Image

    folder, start, stop, size, domain = args
    for i in range(start, stop):
        label = i % 10
        where = folder / (f"class_{label}" if domain == 0 else "")
        Image.fromarray(_image(i, label, size, domain)).save(where / f"{i:06d}.png")


def make_pair(folder: Path, images: int, size: int) -> tuple[Path, Path]:
    """(source, target) folders of ``images / 2`` images each, written once."""
    source, target = folder / "source", folder / "target"
    done = folder / f"complete-{images}-{size}"
    if done.exists():
        return source, target
    for label in range(10):
        (source / f"class_{label}").mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    half, step = images // 2, 2000
    jobs = [(d, s, min(s + step, half), size, k) for k, d in enumerate((source, target))
            for s in range(0, half, step)]  # fmt: skip
    # Spawned, not forked: the caller may run JAX's threads (a fork of them can deadlock).
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(os.cpu_count(), mp_context=spawn) as pool:
        list(pool.map(_write, jobs))
    done.touch()
    return source, target


def _status(pid: int) -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``VmHWM`` of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _run(args: list[str], map_above: int | None) -> dict:
    """The job's wall time and the peaks of its memory, sampled every 20 ms."""
    patch = "" if map_above is None else f"image_cache.MAP_ABOVE = {map_above}; "
    code = ("import runpy, sys; from dann_jax.data import image_cache; " + patch +
            f"sys.argv = {['adapt.py', *args]!r}; "
            "runpy.run_path('experiments/adapt.py', run_name='__main__')")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], cwd=_ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    while child.poll() is None:
        try:
            last = _status(child.pid)  # a process that has ended has none of these
        except (FileNotFoundError, ProcessLookupError):
            break
        for k in peak:
            peak[k] = max(peak[k], last.get(k, 0))
        time.sleep(0.02)
    child.wait()
    reader.join()
    if child.returncode:
        raise SystemExit(f"the job failed ({child.returncode}):\n" + "".join(lines[-30:]))
    said = [x.strip() for x in lines if x.startswith(("input:", "memory for", "note:"))]
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_anon_mb": round(peak["RssAnon"] / 1e6),
        "peak_rss_file_mb": round(peak["RssFile"] / 1e6),
        "vm_hwm_mb": round(peak["VmHWM"] / 1e6),
        "said": said,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, help="where the pairs are written")
    parser.add_argument("--images", type=int, default=100_000, help="images of the pair")
    parser.add_argument("--small", type=int, default=2_000, help="images of the small pair")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="host_memory.json")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    load_before = os.getloadavg()
    runs = {}
    for name, n, map_above in (("small", args.small, None), ("mapped", args.images, None),
                               ("mapped_cached", args.images, None),
                               ("in_memory", args.images, 2**62)):  # fmt: skip
        source, target = make_pair(folder / str(n), n, args.size)
        flags = ["--source", str(source), "--target", str(target), "--target-unlabelled",
                 "--input", "host", "--steps", str(args.steps), "--eval-every", str(args.steps),
                 "--tfds-dir", str(folder / f"cache-{name}" if name != "mapped_cached"
                                   else folder / "cache-mapped"),
                 "--workdir", str(folder / f"run-{name}"), "--restart"]  # fmt: skip
        runs[name] = {"images": n, **_run(flags, map_above)}
        print(name, json.dumps(runs[name]), flush=True)
    out = {
        "complete": True, "size": args.size, "steps": args.steps, "cpus": os.cpu_count(),
        "image_bytes_mb": round(args.images * args.size**2 * 3 / 1e6), "runs": runs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
