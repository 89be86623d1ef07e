"""dann_jax: Domain-Adversarial Neural Networks (Ganin et al., JMLR 2016) in JAX/Flax.

Public API:

* gradient reversal: `grad_reverse`, `GradientReversal` (module `dann_jax.grl`, usable
  on its own);
* models: `DANN`, `FeatureExtractor`, `LabelClassifier`, `DomainDiscriminator`;
* losses: `classification_loss`, `domain_adversarial_loss`, `domain_accuracy`,
  `accuracy`;
* schedules: `dann_lambda`, `grl_lambda`, `annealed_learning_rate`,
  `learning_rate_schedule`, `progress`;
* configuration: `Config`, `ConfigError`, `hyperparams`;
* training: `TrainState`, `TrainSteps`, `make_model`, `make_optimizer`,
  `create_train_state`, `train_step`, `train_steps`, `compile_train_step`,
  `compile_train_steps`, `sample_batch`, `check_finite`, `NonFiniteLossError`,
  `stack_trees`, `tree_index` (several seeds in one program);
* evaluation (one extractor pass, both heads): `normalize`, `make_eval_set`,
  `evaluate`, `predict`, `compile_evaluate`, `compile_predict`;
* data parallelism: `make_mesh`, `put_replicated`, `fetch` (jit over a device mesh, also
  across hosts) and the ``jax.pmap`` form: `replicate`, `shard`, `unreplicate`.

Separate imports, so the core never imports TensorFlow Datasets, scikit-learn or
matplotlib: `dann_jax.data` (digit domains as TFDS data sets, the embedded default,
.npz domains), `dann_jax.experiment` (the digits job behind ``experiments/digits.py``),
`dann_jax.reproduce` (the paper's table), `dann_jax.analysis` (proxy A-distance, t-SNE,
confusion matrices), `dann_jax.plots` (figures), `dann_jax.validators` (label-free model
selection: DEV, reverse validation, ...) and `dann_jax.select` (the selection experiment
behind ``experiments/selection.py``), `dann_jax.io` (atomic writes, strict JSON).
"""

from dann_jax.compiled import TrainSteps, compile_train_step, compile_train_steps
from dann_jax.config import Config, ConfigError, hyperparams
from dann_jax.evaluate import (
    compile_evaluate,
    compile_predict,
    evaluate,
    make_eval_set,
    normalize,
    predict,
)
from dann_jax.grl import GradientReversal, grad_reverse
from dann_jax.losses import (
    accuracy,
    classification_loss,
    domain_accuracy,
    domain_adversarial_loss,
)
from dann_jax.models import DANN, DomainDiscriminator, FeatureExtractor, LabelClassifier
from dann_jax.schedules import (
    annealed_learning_rate,
    dann_lambda,
    grl_lambda,
    learning_rate_schedule,
    progress,
)
from dann_jax.sharding import fetch, make_mesh, put_replicated, replicate, shard, unreplicate
from dann_jax.train import (
    NonFiniteLossError,
    TrainState,
    check_finite,
    create_train_state,
    make_model,
    make_optimizer,
    sample_batch,
    stack_trees,
    train_step,
    train_steps,
    tree_index,
)

__version__ = "0.1.0"

__all__ = [
    "DANN",
    "Config",
    "ConfigError",
    "DomainDiscriminator",
    "FeatureExtractor",
    "GradientReversal",
    "LabelClassifier",
    "NonFiniteLossError",
    "TrainState",
    "TrainSteps",
    "accuracy",
    "annealed_learning_rate",
    "check_finite",
    "classification_loss",
    "compile_evaluate",
    "compile_predict",
    "compile_train_step",
    "compile_train_steps",
    "create_train_state",
    "dann_lambda",
    "domain_accuracy",
    "domain_adversarial_loss",
    "evaluate",
    "fetch",
    "grad_reverse",
    "grl_lambda",
    "hyperparams",
    "learning_rate_schedule",
    "make_eval_set",
    "make_mesh",
    "make_model",
    "make_optimizer",
    "normalize",
    "predict",
    "progress",
    "put_replicated",
    "replicate",
    "sample_batch",
    "shard",
    "stack_trees",
    "train_step",
    "train_steps",
    "tree_index",
    "unreplicate",
]
