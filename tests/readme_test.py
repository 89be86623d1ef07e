"""Every Python code block of the README and the docs runs as written (the blocks of one
page in order, in one fresh interpreter, as a reader would paste them), and gives what its
comments and the text around it say it gives (checked right after the block, the expected
values computed another way)."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# page -> block index -> (what the page says, code run before the block, checks run after
# it). Each `says` must still be in the block or its page, so a changed promise brings its
# check up to date. The code uses the page's names; ours start with an underscore.
STATED = {
    "README.md": {
        0: (
            ["identity forward, -lam * g backward", "lam is traced: no recompile"],
            "",
            """
            def _plain(params, x):  # the same loss without the reversal
                return jnp.mean(jax.nn.softplus(-(jnp.tanh(x @ params["w"]) @ params["d"])))

            _x = jnp.ones((2, 4))
            assert float(loss(params, _x, 0.5)) == float(_plain(params, _x))
            _g = jax.grad(_plain)(params, _x)
            assert float(jnp.abs(_g["w"]).max()) > 1e-6
            import numpy as _np

            _np.testing.assert_allclose(grads["d"], _g["d"], rtol=1e-6)
            _np.testing.assert_allclose(grads["w"], -0.5 * _g["w"], rtol=1e-6)
            _f = jax.jit(jax.grad(loss))
            for _lam in (0.5, 0.7, 1.0):
                _f(params, _x, _lam)
            assert _f._cache_size() == 1
            """,
        ),
        1: (
            [
                "flat uint8 pools, mean of both domains",
                'metrics["loss"]: (20,)',
                'out["predictions"]: the classes',
            ],
            "",
            """
            assert data.source_images.shape == (256, 28 * 28 * 3)
            assert data.source_images.dtype == data.target_images.dtype == np.uint8
            _mean = (source.mean((0, 1, 2)) + target.mean((0, 1, 2))) / 2 / 255  # equal sizes
            np.testing.assert_allclose(data.mean, _mean, rtol=1e-6)
            assert metrics["loss"].shape == (20,) and int(state.step) == 20
            _x = target[:100] / 255.0 - np.asarray(data.mean, np.float64)
            _logits = model.apply({"params": state.params}, _x.astype(np.float32),
                                  method=dj.DANN.predict)
            _pred = np.asarray(out["predictions"]).reshape(-1)[:100]
            np.testing.assert_array_equal(_pred, np.asarray(_logits).argmax(1))
            assert len(set(_pred.tolist())) > 1  # not one class for every image
            """,
        ),
        2: (
            ["the result equals one device's on the whole batch"],
            "_before = jax.tree.map(lambda a: a.copy(), state)",
            """
            assert mesh.size == jax.device_count() == 8  # the tests' 8 CPU devices
            assert metrics["loss"].shape == (20,)
            _alone = dj.compile_train_steps(model, tx, num_steps=20, batch_size=32)
            _one, _one_metrics = _alone(_before, data, dj.hyperparams(config))
            for _a, _b in zip(jax.tree.leaves(host_state.params), jax.tree.leaves(_one.params)):
                np.testing.assert_allclose(_a, _b, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(metrics["loss"], _one_metrics["loss"], rtol=1e-4)
            """,
        ),
        3: (
            ['metrics["loss"]: (5, 3)', "each seed draws its own batches"],
            "",
            """
            assert metrics["loss"].shape == (5, 3)
            _alone = dj.compile_train_steps(model, tx, num_steps=5, batch_size=32)
            _s1, _m1 = _alone(dj.create_train_state(jax.random.key(1), model, tx, (28, 28, 3)),
                              data, dj.hyperparams(config))
            for _a, _b in zip(jax.tree.leaves(dj.tree_index(seeds, 1).params),
                              jax.tree.leaves(_s1.params)):
                np.testing.assert_allclose(_a, _b, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(metrics["loss"][:, 1], _m1["loss"], rtol=1e-4)
            assert not np.allclose(metrics["loss"][:, 0], metrics["loss"][:, 1])
            """,
        ),
    },
    "real_images.md": {
        0: (["# (2, 512)"], "", "assert features.shape == (2, 512)"),
    },
    "own_data.md": {
        0: (
            ["class subfolders: labelled", "a flat folder: no labels", "a finished workdir of fit"],
            "",
            """
            import os as _os

            import numpy as _np

            assert source.class_names == tuple(sorted(_os.listdir("my_data/source")))
            assert source.labels is not None and target.labels is None
            assert model.class_names == source.class_names
            _z = model.logits(target.images).astype(_np.float64)
            _p = _np.exp(_z - _z.max(1, keepdims=True))
            _p /= _p.sum(1, keepdims=True)
            _np.testing.assert_array_equal(classes, _z.argmax(1))
            _np.testing.assert_allclose(probabilities, _p.max(1), rtol=1e-5)
            _again = again.predict(target.images)
            _np.testing.assert_array_equal(_again[0], classes)
            _np.testing.assert_allclose(_again[1], probabilities, rtol=1e-6)
            """,
        ),
    },
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


def test_the_readme_has_code_to_run():
    assert len(python_blocks(ROOT / "README.md")) >= 4


def test_every_page_with_code_has_its_stated_outputs_checked():
    pages = {p.name for p in PAGES if python_blocks(p)}
    assert pages == set(STATED)
    for page, checks in STATED.items():
        path = ROOT / page if page == "README.md" else ROOT / "docs" / page
        blocks, text = python_blocks(path), " ".join(path.read_text().split())
        for index, (says, _, _) in checks.items():
            for promise in says:
                assert promise in blocks[index] or promise in text, (page, index, promise)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run_as_written(page, tmp_path):
    parts = []
    for index, block in enumerate(python_blocks(page)):
        _, before, after = STATED.get(page.name, {}).get(index, ([], "", ""))
        parts += [textwrap.dedent(before), block, textwrap.dedent(after)]
    code = "\n\n".join(parts)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
