"""DANN on digit domains: ``python experiments/digits.py --lambda2 1.0``.

Trains a domain-adversarial network from a labelled source digit domain to an
unlabelled target domain and reports the target test accuracy at the last step.
Without --data-dir and without network it runs MNIST -> MNIST-M on the embedded
default (small, real MNIST digits and an MNIST-M-style target synthesised from them)
and says so. See `dann_jax.experiment` for what is written to --workdir.

Multi-host TPU slices: run the same command on every host with --multihost (it calls
``jax.distributed.initialize()``); each host feeds its local devices and the pmapped
step averages gradients over all devices of the slice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dann_jax.config import (
    ARCHS,
    LAMBDA2_SCHEDULES,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    RESIZES,
    Config,
)

D = Config()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (dashes), defaults from `dann_jax.config.Config`."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--source", default=D.source, help="source domain (mnist, mnist_m, usps, svhn) or .npz path")
    a("--target", default=D.target, help="target domain (mnist, mnist_m, usps, svhn) or .npz path")
    a(
        "--data-dir",
        default=None,
        help="folder with the raw upstream files: mnist/, mnist_m/, "
        "usps/, svhn/ (see README); without it: prepared TFDS data, download, or embedded default",
    )
    a(
        "--tfds-dir",
        default=None,
        help="where prepared TFDS records go (default ~/tensorflow_datasets)",
    )
    a(
        "--bsds-dir",
        default=None,
        help="colour photos (e.g. BSDS500) for the embedded MNIST-M target",
    )
    a("--arch", default=D.arch, choices=ARCHS, help="paper architecture (input 28 or 32)")
    a(
        "--resize",
        default=D.resize,
        choices=RESIZES,
        help="images of another size: bilinear resampling, centre crop / zero pad, "
        "MNIST's 20-px digit box, or auto: crop MNIST-M (MNIST padded to 32), box USPS "
        "(its digits fill the frame), bilinear for the rest",
    )
    a("--mode", default=D.mode, choices=MODES, help="dann, source_only, or target_only (oracle)")
    a("--lambda2", type=float, default=D.lambda2, help="GRL coefficient (final value of the ramp)")
    a(
        "--lambda2-schedule",
        default=D.lambda2_schedule,
        choices=LAMBDA2_SCHEDULES,
        help="dann: 2/(1+exp(-10p))-1 ramp; constant",
    )
    a("--lambda3", type=float, default=D.lambda3, help="weight of the adversarial loss")
    a("--label-smoothing", type=float, default=D.label_smoothing, help="on the source CE loss")
    a(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: 12000 on full data, 3000 on the embedded default)",
    )
    a("--batch-size", type=int, default=D.batch_size, help="images per domain per step")
    a("--lr", type=float, default=D.lr, help="initial learning rate mu0 (annealed)")
    a("--optimizer", default=D.optimizer, choices=OPTIMIZERS)
    a("--momentum", type=float, default=D.momentum, help="SGD momentum")
    a("--batchnorm", action="store_true", help="BatchNorm in the extractor (not in the paper)")
    a(
        "--bn-stats",
        default=D.bn_stats,
        choices=("joint", "per_domain"),
        help="BatchNorm statistics over the joint batch or per domain",
    )
    a("--dropout", type=float, default=D.dropout, help="dropout on the extractor features")
    a("--precision", default=D.precision, choices=PRECISIONS, help="compute dtype")
    a("--seed", type=int, default=D.seed, help="first seed")
    a("--seeds", type=int, default=D.seeds, help="number of seeds (reports mean and std)")
    a(
        "--vmap-seeds",
        action="store_true",
        help="train all seeds in one vmapped program (faster on GPU/TPU, slower on CPU)",
    )
    a("--eval-every", type=int, default=D.eval_every, help="evaluate/checkpoint every N steps")
    a("--steps-per-call", type=int, default=D.steps_per_call, help="steps per device dispatch")
    a("--workdir", default=D.workdir, help="outputs; rerun with the same workdir to resume")
    a("--analyze", action="store_true", help="also write analysis.json and figures")
    a("--multihost", action="store_true", help="call jax.distributed.initialize() first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, and turn known errors into one paragraph and exit code 2."""
    args = parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in vars(args).items() if k in fields})
    from dann_jax.cli import run_cli

    return run_cli(config, multihost=args.multihost)


if __name__ == "__main__":
    sys.exit(main())
