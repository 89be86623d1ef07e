"""The shift suite's pairs, and the suite run in miniature."""

import json

import numpy as np
import pytest

from dann_jax.data import shifts

SYNTHETIC = list(shifts.SHIFTS)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_each_shift_is_a_labelled_source_and_a_target_with_hidden_labels(name):
    pair = shifts.make_shift(name, seed=1, n=60)
    n_classes = len(pair.class_names)
    for x in (pair.source_train, pair.source_test, pair.target_train, pair.target_test):
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28, 3)
    # The own-folders protocol: the target whole, unlabelled in training and as test set.
    assert pair.target_train is pair.target_test
    assert len(pair.target_test_labels) == len(pair.target_test)
    assert set(np.unique(pair.source_labels)) == set(range(n_classes))
    assert pair.info["shift"]["name"] == name
    again = shifts.make_shift(name, seed=1, n=60)
    np.testing.assert_array_equal(again.target_train, pair.target_train)  # deterministic
    other = shifts.make_shift(name, seed=2, n=60)  # scikit-learn's digits are used whole
    part = "target_train" if name == "sklearn_mnist" else "source_train"
    assert not np.array_equal(getattr(other, part), getattr(pair, part))


def test_digit_shifts_keep_the_digits_and_change_their_look():
    inverted = shifts.make_shift("invert", n=60)
    assert inverted.source_train.mean() < 80 < inverted.target_train.mean()  # dark -> light
    scaled = shifts.make_shift("scale", n=60)
    ink = lambda x: (x[..., 0] > 64).mean()
    assert ink(scaled.target_train) < 0.6 * ink(scaled.source_train)  # smaller digits
    with pytest.raises(ValueError, match="data_dir"):
        shifts.make_shift("real_mnist_usps")
    with pytest.raises(ValueError, match="unknown shift"):
        shifts.make_shift("nope")


def test_the_suite_in_miniature_writes_records_and_tables(tmp_path):
    from dann_jax import suite_report
    from experiments import shift_suite

    out = tmp_path / "suite"
    args = ["--shifts", "invert", "--candidates", "source_only,dann_l0.3", "--seeds", "1",
            "--steps", "4", "--eval-every", "2", "--batch-size", "8", "--n", "100",
            "--out", str(out)]  # fmt: skip
    assert shift_suite.main(args) == 0
    records = json.loads((out / "suite.json").read_text())["records"]
    assert sorted((r["candidate"], r["step"]) for r in records) == [
        ("dann_l0.3", 2), ("dann_l0.3", 4), ("source_only", 2), ("source_only", 4),
    ]  # fmt: skip
    logits = np.load(out / "logits" / "invert.npz")
    hidden = logits["labels"]
    for r in records:
        z = logits[f"{r['candidate']}/0/{r['step']}"]
        assert r["target_accuracy"] == pytest.approx(np.mean(np.argmax(z, 1) == hidden), abs=0.03)
        assert {"mixval", "reverse_validation", "source_accuracy"} <= set(r["scores"])
    table = (out / "suite.md").read_text()
    assert "| source_only |" in table and "| dann_l0.3 |" in table
    # The choice replayed on these records agrees with the pick it says it made.
    with np.load(out / "logits" / "invert.npz") as f:
        stored = {k: f[k] for k in f.files if k != "labels"}
    members = ("source_only", "dann_l0.3")
    (row,) = suite_report.choice_rows(
        records, {"invert": stored}, {"pair": members}, ["source_accuracy"], [1.0]
    )
    pick = suite_report.simulate_choice(
        records, stored, "invert", 0, members, "source_accuracy", 1.0
    )
    acc = {(r["candidate"], r["step"]): r["target_accuracy"] for r in records}
    assert pick in acc
    best = max(acc[m, 4] for m in members)
    assert row["gain"] == pytest.approx(acc[pick] - acc["source_only", 4])
    assert row["regret"] == pytest.approx(best - acc[pick])
    assert row["worst"] == row["gain"] and row["shifts"] == 1
    assert "| pair | source_accuracy | 1.0 | last |" in "\n".join(suite_report.choice_table([row]))
    # Another candidate later, into the same folder: the earlier ones' records stay.
    more = [a if a != "source_only,dann_l0.3" else "mcc" for a in args]
    assert shift_suite.main(more) == 0
    saved = json.loads((out / "suite.json").read_text())
    assert sorted({r["candidate"] for r in saved["records"]}) == ["dann_l0.3", "mcc", "source_only"]
    assert len(saved["runs"]) == 2 and "source_only/0/4" in np.load(out / "logits" / "invert.npz")
