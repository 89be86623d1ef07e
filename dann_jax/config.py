"""All settings of a DANN run in one place, with their validation.

`Config` holds both what shapes the compiled program (architecture, batch size,
precision, steps per dispatch) and the numeric hyperparameters. The numeric ones
(`lambda2`, `lambda3`, `label_smoothing`, learning rate and schedule constants) reach the
train step as traced arrays through `hyperparams`, so changing them never recompiles.

Each field carries its help text and, for an enumeration, its choices in its metadata:
the one source of the class docstring, of `Config.validate` and of the command-line
flags built by `dann_jax.cli`. What works from that metadata (declaring a field, the
docstring, the checks) and `ConfigError` live in `dann_jax.config_fields`.
"""

from __future__ import annotations

import dataclasses

# ConfigError is the error of Config.validate: importable from here too, as it always was.
from dann_jax.config_fields import ConfigError, attributes_doc, check_config, setting
from dann_jax.schedules import LAMBDA_SCHEDULES

__all__ = [
    "ADVERSARIES",
    "ARCHS",
    "BN_STATS",
    "CHOOSE_BY",
    "INPUTS",
    "LAMBDA2_SCHEDULES",
    "MODES",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RESIZES",
    "RESNETS",
    "Config",
    "ConfigError",
]

MODES = ("dann", "source_only", "target_only")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
ARCHS = ("mnist", "svhn", "resnet18", "resnet34", "resnet50", "resnet101")
RESNETS = ARCHS[2:]
NORMALIZATIONS = ("mean", "imagenet")
BN_EVALS = ("domain", "mean")
RESIZES = ("auto", "bilinear", "crop_pad", "mnist_box")  # see dann_jax.data.resize_method
BN_STATS = ("joint", "per_domain")
ADVERSARIES = ("dann", "cdan")  # dann_jax.models.ADVERSARIES
# The label-free scores a run can choose its candidate by (all higher-is-better).
CHOOSE_BY = (
    "ensv", "mixval", "information_maximization", "bnm", "snd", "reverse_validation",
    "source_accuracy",
)  # fmt: skip
LAMBDA2_SCHEDULES = LAMBDA_SCHEDULES  # defined once, with the schedules
CHOOSE_CHECKPOINTS = ("last", "any")  # dann_jax.candidates.Keeper
INPUTS = ("auto", "host", "device")  # dann_jax.feed


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one DANN run (defaults: the DANN paper's MNIST -> MNIST-M recipe).

    Each field's meaning is its ``help`` metadata (listed below, and by ``--help``).
    """

    source: str = setting(
        "mnist",
        "labelled source domain: a digit domain (mnist, mnist_m, usps, svhn), an .npz "
        "(x_train, y_train, x_test, y_test), an image folder with one subfolder per class, "
        "or an image-list file ('relative/path label' lines)",
    )
    target: str = setting(
        "mnist_m",
        "target domain, the same forms; labels optional (used only to report): an .npz "
        "without y_*, a flat folder of images, or an image list without labels",
    )
    target_unlabelled: bool = setting(
        False,
        "read the target without labels: every image under its folder, subfolders "
        "included (e.g. images kept in dated subfolders), or a list's or .npz's images only",
    )
    data_dir: str | None = setting(
        None,
        "folder with the raw upstream files: mnist/, mnist_m/, usps/, svhn/ (see README); "
        "unset: prepared TFDS data, a download, or the embedded default",
    )
    tfds_dir: str | None = setting(
        None,
        "where prepared data live (TFDS records of the digits, decoded image folders); "
        "unset: the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    bsds_dir: str | None = setting(
        None, "colour photos (e.g. BSDS500) for synthesising the embedded MNIST-M target"
    )
    arch: str = setting(
        "mnist",
        "feature extractor: the paper's CNNs mnist (28x28 digit inputs) or svhn (32x32), "
        "which take any size from about 16x16, or a ResNet (torchvision's layout: "
        "dann_jax.backbones) with a linear label head and a 1024-1024 domain head",
        ARCHS,
    )
    pretrained: str | None = setting(
        None,
        "ResNet weights: imagenet (torchvision's IMAGENET1K_V1 file, downloaded once, "
        "checksum verified) or a .pth / .safetensors state dict; unset: random init",
    )
    bottleneck: int = setting(
        0, "width of a Dense + BatchNorm + ReLU layer before both heads (0: none; office: 256)"
    )
    image_size: int | None = setting(
        None,
        "bring every image to N x N: own images' shorter side resized to N, then a centre "
        "crop; digit domains as --resize says; unset: the architecture's input size for "
        "the digit domains, the native size for your own (which must then be one size)",
    )
    resize: str = setting(
        "auto",
        "how images of another size reach the input size: bilinear resampling, crop_pad "
        "(centre crop / zero padding), mnist_box (scaled into MNIST's 20-pixel digit box, "
        "then padded), or auto: crop MNIST-M (MNIST padded to 32, so its crop to 28 is "
        "MNIST's own digits), box USPS (its digits fill the frame), bilinear for the rest "
        "(see dann_jax.data.resize_method)",
        RESIZES,
    )
    mode: str = setting(
        "dann",
        "dann (domain-adversarial); source_only (lambda2 = 0: the discriminator still "
        "trains on detached features as a probe, the extractor ignores it); target_only "
        "(train on labelled target data: the oracle)",
        MODES,
    )
    lambda2: float = setting(1.0, "GRL coefficient (final value of the ramp, or the constant)")
    lambda2_schedule: str = setting(
        "dann",
        "dann: the ramp lambda2 * (2/(1+exp(-gamma p))-1) over progress p = step/steps; "
        "constant: lambda2 throughout",
        LAMBDA2_SCHEDULES,
    )
    gamma: float = setting(10.0, "steepness of the lambda2 ramp (paper: 10)")
    lambda3: float = setting(1.0, "weight of the adversarial loss")
    label_smoothing: float = setting(0.0, "label smoothing of the source classification loss")
    adversary: str = setting(
        "dann",
        "what the domain discriminator sees: dann (the features) or cdan (the multilinear "
        "map of features and class predictions: CDAN, Long et al. 2018)",
        ADVERSARIES,
    )
    cdan_entropy: float = setting(
        0.0,
        "weight examples in the domain loss by 1 + s * exp(-entropy of their prediction): "
        "s = 1 with --adversary cdan is CDAN+E (Long et al. 2018); 0: equal weights",
    )
    mcc: float = setting(
        0.0,
        "weight of the Minimum Class Confusion loss on target predictions (Jin et al. "
        "2020; 1.0 in the paper; 0: off); with --lambda2 0 it adapts without a discriminator",
    )
    mcc_temperature: float = setting(2.5, "softmax temperature of the MCC loss (paper: 2.5)")
    entropy_weight: float = setting(
        0.0, "weight of target prediction entropy minimisation (Grandvalet & Bengio 2004; 0: off)"
    )
    steps: int | None = setting(
        None,
        "total training steps (p = step / steps); unset: the experiment's default for the "
        "data found, 12000 on full data, 2000 on the embedded default "
        "(dann_jax.experiment.DEFAULT_STEPS)",
    )
    batch_size: int = setting(64, "images per domain per step (global, split over devices)")
    lr: float = setting(
        0.01, "initial learning rate mu0, annealed to mu0 / (1 + lr_alpha p)^lr_beta"
    )
    lr_alpha: float = setting(
        10.0, "learning-rate annealing alpha (paper: 10); 0 gives a constant learning rate"
    )
    lr_beta: float = setting(0.75, "learning-rate annealing beta (paper: 0.75)")
    optimizer: str = setting("sgd", "sgd (with momentum) or adam", OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum (paper: 0.9)")
    nesterov: bool = setting(False, "Nesterov momentum")
    weight_decay: float = setting(0.0, "L2 weight decay added to the gradients (0: none)")
    backbone_lr_mult: float = setting(
        1.0, "the extractor's learning rate as a multiple of the heads' (pretrained: 0.1)"
    )
    discriminator_lr_mult: float = setting(
        1.0,
        "the domain discriminator's learning rate as a multiple of the label head's: the "
        "balance between discriminator and extractor",
    )
    domain_head: str | None = setting(
        None,
        "hidden widths of the domain discriminator, comma-separated (e.g. 1024,1024); "
        "unset: the architecture's (mnist: 100; svhn and the ResNets: 1024,1024)",
    )
    batchnorm: bool = setting(False, "BatchNorm in the extractor (not in the paper)")
    bn_stats: str = setting(
        "joint",
        "BatchNorm statistics over the joint source + target batch or per domain",
        BN_STATS,
    )
    bn_sync: bool = setting(
        True,
        "over several devices, synchronise BatchNorm statistics (SyncBN: the result equals "
        "one device's on the whole batch); --no-bn-sync: each device normalises its own "
        "share, as DDP without SyncBN (fewer all-reduces; the result depends on the device "
        "count)",
    )
    bn_eval: str = setting(
        "domain",
        "with per-domain BatchNorm, which running statistics normalise a domain's images at "
        "test time: domain (each domain its own, as in training: the target's for target "
        "images, as AdaBN does) or mean (the mean of both domains')",
        BN_EVALS,
    )
    dropout: float = setting(0.0, "dropout rate on the extractor features (0 = paper)")
    augment: bool = setting(
        False,
        "random resized crop (area 8-100%, aspect 3/4-4/3, back to the stored size) and "
        "horizontal flip of every training image, on the device",
    )
    rotate: bool = setting(
        False,
        "random 90-degree rotations and vertical flips of every training image, on the "
        "device: for images whose orientation means nothing (plankton, cells, tiles from "
        "above); square images only",
    )
    color_jitter: bool = setting(
        False,
        "random brightness, contrast and saturation (each x0.6-1.4) and greyscale (p = 0.2) "
        "of every training image, on the device",
    )
    normalize: str = setting(
        "mean",
        "input normalisation: mean (subtract the per-channel mean of both domains' "
        "training images: the paper) or imagenet ((x - mean) / std with ImageNet's "
        "statistics, for pretrained backbones)",
        NORMALIZATIONS,
    )
    precision: str = setting(
        "auto",
        "compute precision (parameters stay float32): auto = what each backend's users get "
        "by default (fp32 on CPU; tf32 on GPUs and TPUs, as PyTorch's cuDNN convolutions "
        "and JAX's defaults); fp32 = float32 with full-precision convolutions and matmuls "
        "on every backend (exact reproduction); tf32 = float32 at the backend's default "
        "matmul precision (TF32 on NVIDIA Ampere and later, one bfloat16 pass on TPU, "
        "float32 on CPU); bf16 = bfloat16 compute (the ResNets on GPUs and TPUs)",
        PRECISIONS,
    )
    choose: bool = setting(
        False,
        "train source-only and the method at each --choose-lambdas value together and keep, "
        "without target labels, the candidate and checkpoint --choose-by prefers; a "
        "candidate that looks harmful next to source-only is never kept "
        "(dann_jax.candidates)",
    )
    choose_lambdas: str = setting(
        "1", "the lambda2 values of the candidates (the shift suite: one, 1, chose best)"
    )
    choose_by: str = setting(
        "information_maximization",
        "the label-free score that chooses (higher is better): ensv (agreement with the "
        "candidates' ensemble), mixval, information_maximization, bnm, snd, "
        "reverse_validation or source_accuracy (dann_jax.choose)",
        CHOOSE_BY,
    )
    choose_margin: float = setting(
        0.2,
        "a candidate whose source validation accuracy falls more than this below "
        "source-only's is treated as harmful and never kept",
    )
    choose_checkpoint: str = setting(
        "last",
        "which checkpoints compete: last = the candidates' latest ones at every evaluation "
        "(what is kept at the end is the last evaluation's choice); any = every "
        "(candidate, evaluation) of the run, the best so far kept (an early confident "
        "but unaligned checkpoint can win: docs/results.md)",
        CHOOSE_CHECKPOINTS,
    )
    seed: int = setting(0, "first random seed")
    seeds: int = setting(1, "number of seeds (seed, seed+1, ...); reports mean and std")
    vmap_seeds: bool = setting(
        False,
        "train all seeds at once in one vmapped program (faster on GPU/TPU, where one "
        "paper-size model cannot fill the chip; slower on CPU, where the per-seed "
        "convolutions become grouped ones)",
    )
    eval_every: int = setting(
        500,
        "evaluate and checkpoint every this many steps (rounded down to a multiple of "
        "--steps-per-call when that is set and does not divide it)",
    )
    steps_per_call: int | None = setting(
        None,
        "training steps per device dispatch (lax.scan); unset: the largest divisor of "
        "--eval-every up to 50",
    )
    input: str = setting(
        "auto",
        "where the training images live: device (every device holds them all and draws "
        "its batches itself), host (they stay in host memory, memory-mapped where cached, "
        "and a background thread gathers each dispatch's batches: the same batches), or "
        "auto: device when they fit in its memory, host otherwise",
        INPUTS,
    )
    workdir: str = setting(
        "runs/digits",
        "output folder (results.json, metrics.jsonl, curves.png, checkpoints), or a bucket "
        "(gs://bucket/run, with the gcs extra); rerun with the same workdir to resume",
    )
    tensorboard: bool = setting(
        False,
        "also write every record's scalars as TensorBoard event files (WORKDIR/seed_<k>/"
        "tensorboard; tensorboardX, no TensorFlow needed: pip install tensorboardX)",
    )
    analyze: bool = setting(
        False,
        "also write the adaptation analysis (analysis.json and figures: proxy A-distance, "
        "embeddings, confusion matrix); it trains a source-only reference model alongside "
        "(same seed and steps), so the run takes about twice as long",
    )
    multihost: bool = setting(
        False,
        "call jax.distributed.initialize() first: multi-host TPU slices / several processes",
    )
    restart: bool = setting(
        False,
        "start over in a workdir that holds an earlier run: its checkpoints, metrics and "
        "results are deleted first (e.g. after a failed run, to retry with other settings)",
    )

    @property
    def call_steps(self) -> int:
        """Steps per dispatch: ``steps_per_call``, or when unset the largest divisor of
        ``eval_every`` up to 50 (so a default never contradicts the user's --eval-every)."""
        if self.steps_per_call is not None:
            return self.steps_per_call
        return max(d for d in range(1, min(50, self.eval_every) + 1) if self.eval_every % d == 0)

    @property
    def augment_ops(self) -> tuple[str, ...]:
        """The on-device augmentations of this run (`dann_jax.augment.OPS` names)."""
        on = {"crop_flip": self.augment, "rotate": self.rotate, "color": self.color_jitter}
        return tuple(op for op, wanted in on.items() if wanted)

    def bn_domain(self, role: str) -> int | None:
        """The per-domain BatchNorm statistics a ``"source"`` or ``"target"`` image is
        normalised with at test time (`dann_jax.models.select_domain`): 0, 1 or None
        (the mean of both)."""
        if self.bn_stats != "per_domain" or self.bn_eval == "mean":
            return None
        return {"source": 0, "target": 1}[role]

    @property
    def eval_interval(self) -> int:
        """Steps between evaluations: ``eval_every`` rounded down to a multiple of
        `call_steps` (evaluations happen between dispatches)."""
        k = self.call_steps
        return max(k, (self.eval_every // k) * k)

    def replace(self, **changes) -> Config:
        """A copy with some fields changed, validated."""
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> Config:
        """Raise `ConfigError` naming the bad setting; return self when all is well."""
        check_config(self, RESNETS)
        return self


def resolved_precision(precision: str, backend: str) -> str:
    """The precision a run uses on `backend` (``cpu``, ``gpu``, ``tpu``): ``auto`` is fp32 on
    CPU (where TF32 does not exist) and tf32 elsewhere (what the ecosystem's users get:
    cuDNN's TF32 convolutions, XLA's default precision); the others as they are."""
    if precision != "auto":
        return precision
    return "fp32" if backend == "cpu" else "tf32"


# Generated so that `help(Config)` documents every field from the same text as `--help`.
Config.__doc__ = attributes_doc(Config)
