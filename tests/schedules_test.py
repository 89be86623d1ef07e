"""Schedules against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import pytest

from dann_jax import schedules


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_dann_lambda_hand_computed(p):
    expected = 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
    assert float(schedules.dann_lambda(p)) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert float(schedules.dann_lambda(p, lambda2=0.3)) == pytest.approx(
        0.3 * expected, rel=1e-6, abs=1e-7
    )


def test_dann_lambda_values():
    assert float(schedules.dann_lambda(0.0)) == 0.0
    assert float(schedules.dann_lambda(0.5)) == pytest.approx(0.98661429, rel=1e-6)
    assert float(schedules.dann_lambda(1.0)) == pytest.approx(0.99990920, rel=1e-6)


def test_lr_annealing_hand_computed():
    assert float(schedules.annealed_learning_rate(0.0, 0.01)) == pytest.approx(0.01)
    assert float(schedules.annealed_learning_rate(1.0, 0.01)) == pytest.approx(
        0.01 / 11**0.75, rel=1e-6
    )
    assert 0.01 / 11**0.75 == pytest.approx(0.0016556, rel=1e-4)


def test_lr_schedule_is_an_optax_schedule_of_global_step():
    sched = schedules.learning_rate_schedule(0.01, total_steps=1000)
    assert float(sched(0)) == pytest.approx(0.01)
    assert float(sched(500)) == pytest.approx(0.01 / 6**0.75, rel=1e-6)
    assert float(sched(1000)) == pytest.approx(0.01 / 11**0.75, rel=1e-6)
    assert float(sched(5000)) == pytest.approx(0.01 / 11**0.75, rel=1e-6)  # p clipped at 1


def test_progress_and_constant_schedule():
    assert float(schedules.progress(jnp.int32(250), 1000)) == 0.25
    assert float(schedules.grl_lambda("constant", 0.1, 0.7)) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unknown lambda2 schedule"):
        schedules.grl_lambda("cosine", 0.1, 0.7)


def test_schedules_trace_once_for_all_values():
    count = 0

    @jax.jit
    def f(step, total, lam, lr0):
        nonlocal count
        count += 1
        p = schedules.progress(step, total)
        return schedules.dann_lambda(p, lam), schedules.annealed_learning_rate(p, lr0)

    for i in range(5):
        f(
            jnp.int32(i * 10),
            jnp.float32(100.0 + i),
            jnp.float32(0.1 * i),
            jnp.float32(0.01 * i + 0.01),
        )
    assert count == 1
