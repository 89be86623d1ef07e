"""dann_jax: Domain-Adversarial Neural Networks (Ganin et al., JMLR 2016) in JAX/Flax.

Public API:

* gradient reversal: `grad_reverse`, `GradientReversal` (module `dann_jax.grl`, usable
  on its own);
* models: `DANN` (any linen module as its extractor), `paper_model`, `FeatureExtractor`,
  `LabelClassifier`, `DomainDiscriminator`, `DomainBatchNorm`;
* losses: `classification_loss`, `domain_adversarial_loss`, `domain_accuracy`,
  `accuracy`;
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
    EvalSet,
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
from dann_jax.models import (
    DANN,
    DomainBatchNorm,
    DomainDiscriminator,
    FeatureExtractor,
    LabelClassifier,
    paper_model,
)
from dann_jax.schedules import (
    annealed_learning_rate,
    dann_lambda,
    grl_lambda,
    learning_rate_schedule,
    progress,
)
from dann_jax.sharding import (
    fetch,
    make_mesh,
    put_replicated,
    put_sharded,
    replicate,
    shard,
    unreplicate,
)
from dann_jax.train import (
    NonFiniteLossError,
    TrainData,
    TrainState,
    check_finite,
    create_train_state,
    make_model,
    make_optimizer,
    make_train_data,
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
    "DomainBatchNorm",
    "DomainDiscriminator",
    "EvalSet",
    "FeatureExtractor",
    "GradientReversal",
    "LabelClassifier",
    "NonFiniteLossError",
    "TrainData",
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
    "make_train_data",
    "normalize",
    "paper_model",
    "predict",
    "progress",
    "put_replicated",
    "put_sharded",
    "replicate",
    "sample_batch",
    "shard",
    "stack_trees",
    "train_step",
    "train_steps",
    "tree_index",
    "unreplicate",
]
