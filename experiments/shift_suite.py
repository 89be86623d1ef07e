"""The shift suite: ``python experiments/shift_suite.py --out runs/suite``.

Trains every candidate recipe (`dann_jax.suite.CANDIDATES`: source-only, DANN at several
lambda2, MCC, CDAN, CDAN+E, ...) on every shift of `dann_jax.data.shifts` for several
seeds, scores every model at every evaluation with the label-free validators
(`dann_jax.choose`), and writes OUT/suite.json (every record), OUT/logits/ and
OUT/suite.md (the tables; `dann_jax.suite_report`). Target labels are read only to
score. With --data-dir the real digit pairs join the suite. Rerun with more --shifts
or --candidates and the same --out to add to it: the records of other shifts and
candidates are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dann_jax import suite, suite_report
from dann_jax.choose import candidate_scores
from dann_jax.data.shifts import REAL_SHIFTS, SHIFTS, make_shift


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shifts", default=",".join(SHIFTS), help="comma-separated shift names")
    p.add_argument("--candidates", default=",".join(c.name for c in suite.CANDIDATES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--n", type=int, default=1500, help="images per domain")
    p.add_argument("--data-dir", default=None, help="the real digits (adds the real pairs)")
    p.add_argument("--out", default="runs/suite")
    return p


def _shift_records(name, args, base, candidates, out: Path, log) -> list[dict]:
    data = make_shift(name, seed=0, n=args.n, data_dir=args.data_dir)
    domains = {r: base.bn_domain(r) for r in ("source", "target")}
    records, logits = [], {}
    hidden = data.target_test_labels  # read only to score

    def on_eval(model, state, candidate, seed, step, metrics):
        scores, z = candidate_scores(model, state, data, domains, seed=seed)
        records.append({
            "shift": name, "candidate": candidate.name, "seed": seed, "step": step,
            "target_accuracy": float(np.mean(np.argmax(z, 1) == hidden)),
            "train_domain_accuracy": metrics.get("domain_accuracy"),
            "train_source_accuracy": metrics.get("source_accuracy"), "scores": scores,
        })  # fmt: skip
        logits[f"{candidate.name}/{seed}/{step}"] = z.astype(np.float16)

    start = time.perf_counter()
    log(f"{name}: {data.info['shift']['what']}, {len(data.source_train)} source / "
        f"{len(data.target_train)} target images, {len(candidates)} candidates x "
        f"{args.seeds} seeds")  # fmt: skip
    suite.train_shift(data, candidates, range(args.seeds), base, on_eval, log)
    (out / "logits").mkdir(parents=True, exist_ok=True)
    path = out / "logits" / f"{name}.npz"
    if path.exists():  # other candidates of this shift from an earlier run stay
        with np.load(path) as kept:
            logits = {**{k: kept[k] for k in kept.files if k != "labels"}, **logits}
    np.savez_compressed(path, labels=hidden, **logits)
    log(f"{name}: done in {time.perf_counter() - start:.0f} s")
    return records


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Path(args.out)
    names = args.shifts.split(",")
    unknown = [n for n in names if n not in SHIFTS and n not in REAL_SHIFTS]
    if unknown or (args.data_dir is None and any(n in REAL_SHIFTS for n in names)):
        print(f"unknown shifts {unknown} (or a real pair without --data-dir)", file=sys.stderr)
        return 2
    by_name = {c.name: c for c in suite.CANDIDATES}
    candidates = [by_name[c] for c in args.candidates.split(",")]
    base = suite.suite_config(args.steps, args.batch_size, args.eval_every)
    path = out / "suite.json"
    saved = json.loads(path.read_text()) if path.exists() else {"records": []}
    # Another run's records stay unless this one trains the same shift and candidate.
    mine = {(s, c.name) for s in names for c in candidates}
    records = [r for r in saved["records"] if (r["shift"], r["candidate"]) not in mine]
    # Every invocation's settings, so a suite added to in steps says how each part ran.
    runs = [*saved.get("runs", []), {k: v for k, v in vars(args).items() if k != "out"}]
    for name in names:
        records += _shift_records(name, args, base, candidates, out, print)
        suite.write_records(out, records, {"runs": runs})
        suite_report.write_report(out, records)
    suite_report.write_report(out, records, _choices(out, records))
    return 0


# The label-free scores whose choices the report measures, at two harm margins.
CHOOSERS = (
    "information_maximization", "bnm", "ensv", "mixval", "snd", "reverse_validation",
    "source_accuracy",
)  # fmt: skip
MARGINS = (0.05, 0.2)


def _choices(out: Path, records: list[dict]) -> list[dict]:
    """`suite_report.choice_rows` of the candidate sets a choosing run trains, on every
    shift where the whole set was run (none: no table)."""
    logits = {}
    for shift in dict.fromkeys(r["shift"] for r in records):
        with np.load(out / "logits" / f"{shift}.npz") as f:
            logits[shift] = {k: f[k] for k in f.files if k != "labels"}
    return suite_report.choice_rows(records, logits, suite_report.CHOICE_SETS, CHOOSERS, MARGINS)


if __name__ == "__main__":
    sys.exit(main())
