"""benchmarks/device_check.sh in miniature on CPU: every part, every output well-formed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, ROW_FIELDS

# -------------------------------------------------------------- device_check.sh

# Every part shrunk to a few steps on tiny shapes (later flags win over the script's).
_TINY = {
    "REPRODUCE_ARGS": "--steps 4 --seeds 2 --steps-per-call 2 --eval-every 2 --batch-size 8 "
    "--pairs mnist:mnist_m --modes dann --recipes improved --vmap-seeds on",
    # 0.0 is reached at the first evaluation, 1.01 never: every field of the report filled.
    "TTA_ARGS": "--steps 4 --eval-every 2 --steps-per-call 2 --batch-size 8 "
    "--target-accuracy 0.0 --milestones 0.6,1.01",
    "STEP_ARGS": "--quick --impls jit handwritten --repeats 1 --batch-sizes 8",
    # After STEP_ARGS: a ResNet-18 at 32 x 32 stands for the ResNet-50 at 224 on CPU.
    "RESNET_ARGS": "--archs resnet18 --resnet-size 32 --impls jit --steps-per-call 2",
    "HOST_ARGS": "--pool 200 --batch-size 8 --steps-per-call 2 --chunks 1",
}


def _hidden(tmp_path: Path, names: tuple[str, ...]) -> Path:
    """A folder of stub packages that fail to import, to put first on PYTHONPATH."""
    hidden = tmp_path / "hidden"
    for name in names:
        (hidden / name).mkdir(parents=True, exist_ok=True)
        (hidden / name / "__init__.py").write_text(f'raise ImportError("{name} hidden")\n')
    return hidden


def _device_check(out: Path, parts: list[str], env: dict[str, str]):
    """Run benchmarks/device_check.sh from the repo root; the process."""
    return subprocess.run(
        ["bash", "benchmarks/device_check.sh", str(out), *parts],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _check_outputs(out: Path, parts: list[str]) -> None:
    """Every file a device_check.sh call wrote is well-formed and complete on its own."""
    env_txt = (out / "env.txt").read_text()
    assert "preflight ok" in env_txt and "jax " in env_txt, env_txt
    log = (out / "log.txt").read_text()
    assert "== plan:" in log and "== done in" in log
    expected = {"env.txt", "log.txt"}
    for part in parts:
        names = ["tta_improved", "tta_paper"] if part == "tta" else [part]
        for name in names:
            assert re.search(rf"== {name} \(at \d+ s; expected ~\d+ s, limit \d+ s\)", log)
            assert f"== {name}: exit 0" in log, log[-3000:]
        if part == "reproduce":
            expected |= {"table.json", "table.md"}
            table = json.loads((out / "table.json").read_text())
            assert table["complete"] and len(table["rows"]) == table["cells"]
            md = (out / "table.md").read_text()
            assert md.startswith("Digits, ") and "| pair | recipe | mode |" in md
        for name in names if part != "reproduce" else []:
            expected.add(f"{name}.json")
            report = json.loads((out / f"{name}.json").read_text())
            assert report["complete"] is True and report["device_kind"], name
            if name == "host_input":
                assert report["pool"] == 200 and report["host_fed_steps_per_s"] > 0
            elif name.startswith("tta_"):
                assert report["settings"]["recipe"] == name[4:] and report["curve"]
                assert report["steps_run"] == 4
            else:
                arch = "resnet18" if name == "step_resnet50" else name[5:]  # (see _TINY)
                assert report["settings"]["archs"] == [arch] and report["rows"]
                assert all(set(r) == ROW_FIELDS and r["status"] == "ok" for r in report["rows"])
    assert {p.name for p in out.iterdir()} == expected


def _check_time_to_accuracy(report: dict) -> None:
    """benchmarks/time_to_accuracy.py's tiny run (the improved recipe: BatchNorm state
    through the benchmark's loop too), read without tensorflow_datasets (the raw loader,
    the path of the GPU machine)."""
    assert report["settings"]["recipe"] == "improved"
    assert report["data"] == {
        "loader": "raw", "source_train": 192, "target_train": 192, "target_test": 64,
    }  # fmt: skip
    assert [c["step"] for c in report["curve"]] == [2, 4]
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in report["curve"])
    assert report["reached"] is True and report["step_at_target"] == 2
    assert 0 < report["time_to_target_s"] <= report["total_s"]
    assert report["steps_run"] == 4 and report["steps_per_call"] == 2
    for key in ("load_s", "to_device_s", "init_s", "compile_s", "train_loop_s", "eval_s"):
        assert report["timings"][key] >= 0
    for key in ("device_kind", "jax_version", "date", "command"):
        assert key in report
    assert [m["accuracy"] for m in report["milestones"]] == [0.0, 0.6, 1.01]
    assert report["milestones"][0]["step"] == 2 and report["milestones"][2]["step"] is None


def test_device_check_two_documented_calls_in_miniature(tmp_path, digits_dir):
    """The README's two calls (every part), every part shrunk to a few steps, on an image
    without tensorflow_datasets, mlxtend, array_record, torch (its rows are tested in
    benchmarks_test) or tqdm: nothing optional may stop a run; then a failing preflight
    stops everything."""
    # matplotlib is not hidden here: without it `dann_jax.experiment.run` still fails
    # when it draws curves.png (its ImportError guard covers `import dann_jax.plots`,
    # which imports matplotlib lazily, not the drawing).
    names = ("torch", "tensorflow_datasets", "mlxtend", "array_record", "tqdm")
    env = dict(
        os.environ,
        PYTHONPATH=str(_hidden(tmp_path, names)),
        PYTHON=sys.executable,
        XLA_FLAGS="",
        JAX_PLATFORMS="cpu",
        PLATFORM="cpu",
        DATA_DIR=str(digits_dir),
        PAIRS="mnist:mnist_m",
        **_TINY,
    )
    first = ["step_mnist", "step_svhn", "step_resnet50", "tta"]
    second = ["reproduce", "host_input"]
    for parts in (first, second):
        out = tmp_path / parts[0]
        proc = _device_check(out, parts, env)
        assert proc.returncode == 0, (out / "log.txt").read_text()[-3000:]
        _check_outputs(out, parts)
        assert "warning: tqdm does not import" in (out / "env.txt").read_text()
        # The summary at the end: the step tables, or the reproduction table.
        summary = r"^svhn +8 " if parts == first else r"^\| mnist → mnist_m \| improved \|"
        assert re.search(summary, proc.stdout, re.MULTILINE), proc.stdout[-2000:]
    # What the parts ran: the tiny settings of _TINY, through the script's own flags.
    table = json.loads((tmp_path / "reproduce" / "table.json").read_text())
    assert table["complete"] and [r["recipe"] for r in table["rows"]] == ["improved"]
    assert all(r["vmap_seeds"] and len(r["per_seed"]) == 2 for r in table["rows"])
    _check_time_to_accuracy(json.loads((tmp_path / "step_mnist" / "tta_improved.json").read_text()))
    rows = json.loads((tmp_path / "step_mnist" / "step_mnist.json").read_text())["rows"]
    assert {r["impl"] for r in rows if r["status"] == "ok"} == {"jit", "handwritten"}
    # A preflight failure (here: the wrong platform) ends the call before any part.
    out = tmp_path / "failed"
    proc = _device_check(out, ["tta"], dict(env, PLATFORM="gpu"))
    assert proc.returncode == 3
    assert "PREFLIGHT FAILED: JAX runs on cpu, expected gpu" in (out / "env.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "log.txt"]
