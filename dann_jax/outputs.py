"""A trained model's outputs on host images: per-example predictions, label-free scores,
``predictions.csv``.

Shared by the main job (predictions of an image-folder target, validator scores of a run
whose target has no labels), ``--analyze`` and the selection experiment, which all run a
model over host arrays in fixed-size chunks (`dann_jax.evaluate.compile_predict`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax.evaluate import SLAB_BYTES, compile_predict, eval_slabs

__all__ = [
    "LOGITS",
    "csv_text",
    "label_free_scores",
    "predict_host",
    "predictions_csv",
    "set_domains",
    "validation_sets",
    "write_predictions",
]


LOGITS = ("class_logits",)  # `predict_host(keep=LOGITS)`: what most callers read


def predict_host(
    model, state, images: np.ndarray, mean, labels=None, chunk: int = 250, domain=None,
    keep: Sequence[str] | None = None,
):  # fmt: skip
    """Features, class and domain logits and per-example loss of host uint8 images.

    Returns numpy arrays with one row per image (``loss`` is against ``labels``, zeros
    when None, so meaningless then). The images go to the device `SLAB_BYTES` at a time
    (a memory-mapped domain is read a slab at a time). ``domain``: the images' domain,
    for per-domain BatchNorm statistics (`dann_jax.Config.bn_domain`). ``keep``: only
    these outputs (`LOGITS`: a large set's features, N x D floats, are not kept).
    """
    fn, mean = compile_predict(model, domain), np.asarray(mean, np.float32)
    parts = []
    for es in eval_slabs(images, labels, chunk, max_bytes=SLAB_BYTES):  # a slab at a time
        out = fn(state.params, state.batch_stats, es, mean)
        out = jax.device_get({k: v for k, v in out.items() if keep is None or k in keep})
        parts.append({k: np.asarray(v)[: int(es.mask.sum())] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def validation_sets(data, seed: int, size: int) -> dict[str, tuple]:
    """Fixed random subsets (images, labels) the validators see; target labels are zeros.

    The labelled source validation split, target *training* images (their labels are
    never read) and source training images (DEV's discriminator, as in You et al. 2019).
    """
    rng = np.random.default_rng(seed)

    def pick(images, labels):
        idx = np.sort(rng.permutation(len(images))[:size])
        return images[idx], (np.zeros(len(idx), np.int32) if labels is None else labels[idx])

    return {
        "source_val": pick(data.source_test, data.source_test_labels),
        "target": pick(data.target_train, None),  # unlabelled: no labels are read
        "source_train": pick(data.source_train, data.source_labels),
    }


def set_domains(config) -> dict[str, int | None]:
    """The BatchNorm domain of each of `validation_sets`' subsets under `config`."""
    source, target = config.bn_domain("source"), config.bn_domain("target")
    return {"source_val": source, "target": target, "source_train": source}


def label_free_scores(
    model, state, data, seed: int, size: int = 1000, domains=None
) -> dict[str, float]:
    """Every training-free validator of `dann_jax.validators` for one model (NaN: failed).

    What a run reports about its target when the target has no labels (each value in
    its validator's own direction; `dann_jax.validators.VALIDATORS` says which is better).
    ``domains``: `set_domains` of the run's config.
    """
    from dann_jax import validators  # scikit-learn and SciPy: only when asked

    sets, domains = validation_sets(data, seed, size), domains or {}
    out = {
        k: predict_host(model, state, x, data.mean, y, domain=domains.get(k))
        for k, (x, y) in sets.items()
    }
    out["source_val"]["labels"] = sets["source_val"][1]
    return validators.compute_validators(
        out["source_val"], out["target"], out["source_train"]["features"], seed=seed
    )


# A cell that starts with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A name as a CSV cell: bytes that are not UTF-8 as ``\\xNN`` escapes
    (`dann_jax.data.decode.printable`), and a leading ``'`` before a formula's first
    character (``=``, ``+``, ``-``, ``@``, tab, carriage return), which spreadsheets would
    otherwise run."""
    from dann_jax.data.decode import printable

    text = printable(value)
    return "'" + text if text.startswith(_FORMULA) else text


def predictions_csv(paths: Sequence[str], class_names: Sequence[str], logits: np.ndarray) -> str:
    """``path,prediction,probability`` rows: the predicted class name and its softmax.

    Names are quoted (a comma, a quote, a newline or a carriage return in a file name
    stays in its cell) and written as `csv_text` says; probabilities are plain numbers.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    best = p.argmax(axis=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(("path", "prediction", "probability"))
    for path, k, prob in zip(paths, best, p[np.arange(len(best)), best], strict=True):
        writer.writerow((csv_text(path), csv_text(class_names[k]), round(float(prob), 6)))
    return buffer.getvalue()


def write_predictions(
    path: Path, model, state, images, mean, paths, class_names, domain=None
) -> Any:
    """Predict `images` (of `domain`) and write ``predictions.csv`` at `path` (atomically)."""
    from dann_jax import io as dj_io

    logits = predict_host(model, state, images, mean, domain=domain, keep=LOGITS)["class_logits"]
    dj_io.write_text(path, predictions_csv(paths, class_names, logits))
    return logits
