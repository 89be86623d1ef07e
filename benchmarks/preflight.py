"""Preflight of `benchmarks/device_check.sh`: fail in seconds, not after minutes of device time.

Imports every module the parts use, runs one small computation on JAX's default device
(and on PyTorch's, where torch is installed), checks that the platform is the expected
one (a broken CUDA install makes JAX fall back to the CPU: every timing would be
wrong) and that the data of the parts are present. Prints one line per check; exit
status 1 when a required check fails, 0 otherwise (optional extras missing only warn).

    python -m benchmarks.preflight --platform gpu --data-dir .devdata --domains mnist mnist_m
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

START = time.perf_counter()

# Imported by the parts; any missing one fails the preflight.
REQUIRED = (
    "numpy", "jax", "flax", "optax", "orbax.checkpoint", "PIL", "dann_jax",
    "dann_jax.experiment", "dann_jax.reproduce", "benchmarks.rows", "benchmarks.step_time",
    "benchmarks.time_to_accuracy",
)  # fmt: skip
# Missing ones cost a feature, never the run: what is lost without each.
OPTIONAL = {
    "torch": "the PyTorch rows of step_time say 'not installed'",
    "tqdm": "no progress bar",
    "matplotlib": "no curves.png per reproduction cell",
    "h5py": "no USPS from usps.h5 (the LIBSVM usps.bz2 files need nothing)",
}


def check_imports(names: tuple[str, ...] | list[str]) -> list[str]:
    """The failures among importing `names`, one 'name: error' string each."""
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a module that fails while importing
            failures.append(f"{name}: {type(e).__name__}: {e}")
    return failures


def check_jax(platform: str | None) -> tuple[str, str | None]:
    """(description of JAX's devices after one computation, error or None)."""
    import jax
    import jax.numpy as jnp

    devices = jax.devices()
    value = float(jax.block_until_ready(jnp.arange(8.0).sum()))
    line = (
        f"jax {jax.__version__}: {len(devices)} x {devices[0].device_kind} "
        f"({devices[0].platform}); 0+...+7 = {value:g}"
    )
    if value != 28.0:
        return line, "a small computation on the device gave a wrong result"
    if platform and devices[0].platform != platform:
        return line, f"JAX runs on {devices[0].platform}, expected {platform}"
    return line, None


def check_torch(platform: str | None) -> str:
    """One line on PyTorch: version and device (with a warning where it lacks the GPU)."""
    try:
        import torch
    except ImportError as e:
        return f"warning: torch does not import ({e}): {OPTIONAL['torch']}"
    if not torch.cuda.is_available():
        warn = " -- warning: no CUDA, its rows will fail" if platform == "gpu" else ""
        return f"torch {torch.__version__} on cpu{warn}"
    value = float((torch.arange(8.0, device="cuda")).sum())
    return f"torch {torch.__version__} on {torch.cuda.get_device_name()}; 0+...+7 = {value:g}"


def check_data(data_dir: str | None, domains: list[str]) -> list[str]:
    """The missing domains' one-line errors (empty when every domain's files are there)."""
    if not domains:
        return []
    if not data_dir:
        return ["no --data-dir given"]
    from dann_jax.data import DataError, raw

    errors = []
    for name in domains:
        try:
            raw.check_files(name, data_dir)
        except (DataError, KeyError) as e:
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else 'unknown domain'}")
    return errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", help="JAX platform the run must use (gpu, cpu, tpu)")
    p.add_argument("--data-dir", help="folder with the upstream digit files")
    p.add_argument("--domains", nargs="*", default=[], help="domains whose files must be there")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every check, print one line each; 1 if a required one failed."""
    args = parse_args(argv)
    errors = [f"import {f}" for f in check_imports(REQUIRED)]
    for name, lost in OPTIONAL.items():
        if name != "torch" and check_imports([name]):
            print(f"warning: {name} does not import: {lost}")
    if not errors:
        line, error = check_jax(args.platform)
        print(line)
        errors += [error] if error else []
        print(check_torch(args.platform))
    for error in check_data(args.data_dir, args.domains):
        errors.append(f"data in {args.data_dir}: {error}")
    print(f"python {sys.version.split()[0]}")
    if args.domains:
        print(f"data in {args.data_dir}: {' '.join(args.domains)}")
    for error in errors:
        print(f"PREFLIGHT FAILED: {error}")
    print(f"preflight {'FAILED' if errors else 'ok'} in {time.perf_counter() - START:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
