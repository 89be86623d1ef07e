"""The compiled data-parallel program on 8 CPU devices, accelerator model: per-device work
is 1/8 of the batch, the only collectives are all-reduces (one per step without
BatchNorm, moving the gradients), and --precision fp32 is full float32 in the program."""

import re

import jax
import numpy as np
import pytest

import dann_jax as dj
from benchmarks import collectives as hlo
from benchmarks.xla_cost import collectives
from dann_jax import config
from tests.helpers import HLO_ONLY, RECIPES, setup_run, synthetic_images

CASES = [(recipe, seeds) for recipe in ("paper", "improved") for seeds in (1, 4)]
ONE_DEVICE = [("paper", 1), ("improved", 4)]  # also compiled on one device (FLOPs ratio)


@pytest.fixture(scope="module")
def reports():
    """Each (recipe, seeds) step compiled once for the module over 8 devices (and, for
    `ONE_DEVICE`, on one device too), to be read, not run (`HLO_ONLY`)."""
    assert jax.device_count() == 8
    return {
        case: hlo.report(*case, batch_size=64, one_device=case in ONE_DEVICE,
                         compiler_options=HLO_ONLY)
        for case in CASES
    }  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}seeds")
def test_no_all_gather_or_collective_permute(reports, case):
    counts = {op: c["count"] for op, c in reports[case].collectives.items()}
    assert counts["all-gather"] == counts["collective-permute"] == 0, counts
    assert counts["all-to-all"] == counts["reduce-scatter"] == 0, counts
    # Without BatchNorm one all-reduce per step; per-domain BatchNorm adds one per layer
    # for its batch statistics forward and one backward (2 layers).
    assert counts["all-reduce"] == (1 if case[0] == "paper" else 5), counts


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}seeds")
def test_the_all_reduces_move_the_gradients_and_little_else(reports, case):
    r = reports[case]
    moved = r.collectives["all-reduce"]["elements"]
    gradients = r.params * r.seeds
    # Gradients, a few scalar metrics and (improved) the BatchNorm moments: 0.31% extra.
    assert gradients <= moved <= 1.004 * gradients, (moved, gradients)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}seeds")
def test_per_device_work_is_one_eighth_of_the_batch(reports, case):
    r = reports[case]
    assert r.conv_batch == 2 * r.batch_size // 8 == 16  # 64 source + 64 target over 8
    if case in ONE_DEVICE:
        # FLOPs per device against one device on the whole batch: 1/8, plus the optimizer
        # update every device repeats on its copy of the parameters.
        assert 1 / 8 <= r.flops / r.flops_one_device <= 1 / 8 * 1.02


def test_mesh_evaluation_has_no_gather_and_one_reduction():
    mesh = dj.make_mesh()
    _, model, _, state = setup_run("gpu", **RECIPES["improved"])
    xs, ys, *_ = synthetic_images(64)
    es = dj.put_sharded(dj.make_eval_set(xs, ys, 32, multiple_of=8), mesh, axis=1)
    put = lambda t: dj.put_replicated(t, mesh)
    ev = dj.compile_evaluate(model, mesh=mesh)
    mean = np.full((3,), 0.5, np.float32)
    lowered = ev.lower(put(state.params), put(state.batch_stats), es, put(mean))
    text = lowered.compile().as_text()
    # What the other tests of this file read at HLO_ONLY is the default level's program.
    assert lowered.compile(HLO_ONLY).as_text() == text
    counts = {op: c["count"] for op, c in collectives(text).items()}
    assert counts == {**dict.fromkeys(counts, 0), "all-reduce": 1}, counts


def _precisions(precision: str) -> tuple[int, list[str]]:
    """(convolutions and dots in the lowered accelerator step, their precision configs)."""
    config, model, tx, state = setup_run("gpu", precision=precision)
    batch = dj.sample_batch(jax.random.key(0), dj.make_train_data(*synthetic_images(16)[:3]), 8)
    text = dj.compile_train_step(model, tx).lower(state, batch, dj.hyperparams(config)).as_text()
    ops = re.findall(r"stablehlo\.(?:convolution|dot_general).*", text)
    return len(ops), [m for op in ops for m in re.findall(r"precision\w*\s*=\s*\[[^\]]*\]", op)]


def test_fp32_is_full_float32_on_every_convolution_and_dot():
    n, configs = _precisions("fp32")
    assert n >= 10  # forward and backward of 2 convolutions and 5 dense layers
    assert len(configs) == n and all(c.count("HIGHEST") == 2 for c in configs), configs
    # tf32: the backend's default (TF32 on recent NVIDIA GPUs): no precision asked for.
    n, configs = _precisions("tf32")
    assert not any("HIGHEST" in c for c in configs)


def test_the_default_precision_is_each_backends_own():
    # auto: TF32 (no precision asked for) in the accelerator program, full float32 on CPU.
    assert dj.Config().precision == "auto"
    n, configs = _precisions("auto")
    assert n >= 10 and not any("HIGHEST" in c for c in configs)
    assert config.resolved_precision("auto", "cpu") == "fp32"
    assert config.resolved_precision("auto", "tpu") == "tf32"
    assert config.resolved_precision("bf16", "gpu") == "bf16"
    assert dj.make_model(dj.Config(), backend="cpu").precision == jax.lax.Precision.HIGHEST
