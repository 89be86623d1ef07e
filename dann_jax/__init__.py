"""dann_jax: Domain-Adversarial Neural Networks (Ganin et al., JMLR 2016) in JAX/Flax.

Public API:

* without the command line: `fit` (train on arrays), `load_run` (a finished workdir),
  `TrainedModel.predict`, `read_images` (an image folder or list as arrays);
* gradient reversal: `grad_reverse`, `GradientReversal` (module `dann_jax.grl`, usable
  on its own);
* models: `DANN` (any linen module as its extractor), `paper_model`, `FeatureExtractor`,
  `LabelClassifier`, `DomainDiscriminator`, `DomainBatchNorm`;
* losses: `classification_loss`, `domain_adversarial_loss`, `domain_accuracy`,
  `accuracy`, and the target terms `minimum_class_confusion` (MCC), `entropy`,
  `entropy_weights` (CDAN+E);
* your own extractor: any linen module, or an NNX one through `from_nnx`;
* schedules: `dann_lambda`, `grl_lambda`, `annealed_learning_rate`,
  `learning_rate_schedule`, `progress`;
* configuration: `Config`, `ConfigError`, `hyperparams`;
* training: `TrainState`, `TrainData`, `make_train_data`, `TrainSteps`, `make_model`,
  `make_optimizer`, `create_train_state`, `train_step`, `train_steps`,
  `compile_train_step`, `compile_train_steps`, `sample_batch`, `check_finite`,
  `NonFiniteLossError`, `stack_trees`, `tree_index` (several seeds in one program);
* evaluation (one extractor pass, both heads): `normalize`, `EvalSet`, `make_eval_set`,
  `evaluate`, `predict`, `compile_evaluate`, `compile_predict`;
* data parallelism: `make_mesh`, `put_replicated`, `put_sharded`, `fetch` (a
  ``shard_map`` over a device mesh, also across hosts) and the ``jax.pmap`` form:
  `replicate`, `shard`, `unreplicate`.

Every name above is imported on first use (PEP 562), so ``import dann_jax.grl`` loads
JAX and nothing else of the package, and ``import dann_jax`` costs nothing until a name
is used. Separate imports, so the core never imports TensorFlow Datasets, scikit-learn
or matplotlib: `dann_jax.data` (digit domains as TFDS data sets, the embedded default,
.npz domains), `dann_jax.experiment` (the digits job behind ``experiments/digits.py``),
`dann_jax.reproduce` (the paper's table), `dann_jax.analysis` (proxy A-distance, t-SNE,
confusion matrices), `dann_jax.plots` (figures), `dann_jax.validators` (label-free model
selection: DEV, reverse validation, ...) and `dann_jax.select` (the selection experiment
behind ``experiments/selection.py``), `dann_jax.io` (atomic writes, strict JSON).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first used)
_EXPORTS = {
    "RECOMMENDED": "dann_jax.api",
    "TrainedModel": "dann_jax.api",
    "fit": "dann_jax.api",
    "load_run": "dann_jax.api",
    "read_images": "dann_jax.data.folders",
    "TrainSteps": "dann_jax.compiled",
    "compile_train_step": "dann_jax.compiled",
    "compile_train_steps": "dann_jax.compiled",
    "Config": "dann_jax.config",
    "ConfigError": "dann_jax.config_fields",
    "hyperparams": "dann_jax.build",
    "EvalSet": "dann_jax.evaluate",
    "compile_evaluate": "dann_jax.evaluate",
    "compile_predict": "dann_jax.evaluate",
    "evaluate": "dann_jax.evaluate",
    "make_eval_set": "dann_jax.evaluate",
    "normalize": "dann_jax.evaluate",
    "predict": "dann_jax.evaluate",
    "GradientReversal": "dann_jax.grl",
    "grad_reverse": "dann_jax.grl",
    "accuracy": "dann_jax.losses",
    "classification_loss": "dann_jax.losses",
    "domain_accuracy": "dann_jax.losses",
    "domain_adversarial_loss": "dann_jax.losses",
    "entropy": "dann_jax.losses",
    "entropy_weights": "dann_jax.losses",
    "minimum_class_confusion": "dann_jax.losses",
    "from_nnx": "dann_jax.extractors",
    "DANN": "dann_jax.models",
    "DomainBatchNorm": "dann_jax.models",
    "DomainDiscriminator": "dann_jax.models",
    "FeatureExtractor": "dann_jax.paper_models",
    "LabelClassifier": "dann_jax.models",
    "paper_model": "dann_jax.paper_models",
    "annealed_learning_rate": "dann_jax.schedules",
    "dann_lambda": "dann_jax.schedules",
    "grl_lambda": "dann_jax.schedules",
    "learning_rate_schedule": "dann_jax.schedules",
    "progress": "dann_jax.schedules",
    "fetch": "dann_jax.sharding",
    "make_mesh": "dann_jax.sharding",
    "put_replicated": "dann_jax.sharding",
    "put_sharded": "dann_jax.sharding",
    "replicate": "dann_jax.sharding",
    "shard": "dann_jax.sharding",
    "unreplicate": "dann_jax.sharding",
    "NonFiniteLossError": "dann_jax.train",
    "TrainData": "dann_jax.train",
    "TrainState": "dann_jax.build",
    "check_finite": "dann_jax.train",
    "create_train_state": "dann_jax.build",
    "make_model": "dann_jax.build",
    "make_optimizer": "dann_jax.build",
    "make_train_data": "dann_jax.train",
    "sample_batch": "dann_jax.train",
    "stack_trees": "dann_jax.train",
    "train_step": "dann_jax.train",
    "train_steps": "dann_jax.train",
    "tree_index": "dann_jax.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines a public name on first use, and keep the name."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dann_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
