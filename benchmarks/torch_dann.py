"""A PyTorch DANN of the same model and optimizer, for the step-time comparison.

Same layers and parameter shapes as dann_jax's paper models (see `handwritten.ARCHS`),
gradient reversal as a ``torch.autograd.Function``, the same losses (source cross-entropy +
0.5 * (BCE(D_s, 0) + BCE(D_t, 1))) and ``torch.optim.SGD`` with momentum 0.9 whose learning
rate is set every step to the paper's annealed value. Runs eagerly (float32, or bfloat16
under autocast) or under ``torch.compile`` (default mode, or ``reduce-overhead``: CUDA
graphs, the counterpart of XLA:GPU's command buffers). Importing this module imports
torch: callers catch the ImportError.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.handwritten import ARCHS, NUM_CLASSES, feature_dim


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -lam backward (lam: a 0-d tensor)."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.save_for_backward(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (lam,) = ctx.saved_tensors
        return -lam * grad, None


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear-ReLU stack; the last layer is linear."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TorchDANN(nn.Module):
    """DANN (extractor, label head, domain head) of the paper's MNIST or SVHN architecture."""

    def __init__(self, arch: str):
        super().__init__()
        spec = ARCHS[arch]
        layers: list[nn.Module] = []
        channels = 3
        for features, kernel, padding, window, stride, pool_padding in spec["convs"]:
            pad = 0 if padding == "VALID" else kernel // 2
            layers += [nn.Conv2d(channels, features, kernel, padding=pad), nn.ReLU()]
            if window is not None:
                # SAME 3/2 pooling on even sides pads one cell at the end only (as XLA does);
                # ceil_mode reproduces that output size and ignores the padded cell.
                ceil = pool_padding == "SAME"
                layers.append(nn.MaxPool2d(window, stride, ceil_mode=ceil))
            channels = features
        self.extractor = nn.Sequential(*layers, nn.Flatten())
        d = feature_dim(arch)
        self.label = _mlp([d, *spec["label"], NUM_CLASSES])
        self.domain = _mlp([d, *spec["domain"], 1])

    def forward(self, xs, ys, xt, lam):
        """The DANN loss of one step (float32)."""
        n = xs.shape[0]
        f = self.extractor(torch.cat([xs, xt]))
        logits = self.label(f[:n]).float()
        d = self.domain(GradReverse.apply(f, lam))[:, 0].float()
        ce = F.cross_entropy(logits, ys)
        bce_s = F.binary_cross_entropy_with_logits(d[:n], torch.zeros_like(d[:n]))
        bce_t = F.binary_cross_entropy_with_logits(d[n:], torch.ones_like(d[n:]))
        return ce + 0.5 * (bce_s + bce_t)


class TorchResNetDANN(nn.Module):
    """DANN on torchvision's ResNet (fc removed): a 256-wide Linear + BatchNorm + ReLU
    bottleneck, a linear label head and a 1024-1024 domain head, as dann_jax's office
    recipe (with joint BatchNorm statistics)."""

    def __init__(self, arch: str):
        super().__init__()
        import torchvision

        self.extractor = getattr(torchvision.models, arch)(weights=None)
        width = self.extractor.fc.in_features
        self.extractor.fc = nn.Identity()
        self.bottleneck = nn.Sequential(nn.Linear(width, 256), nn.BatchNorm1d(256), nn.ReLU())
        self.label = nn.Linear(256, NUM_CLASSES)
        self.domain = _mlp([256, 1024, 1024, 1])

    def forward(self, xs, ys, xt, lam):
        n = xs.shape[0]
        f = self.bottleneck(self.extractor(torch.cat([xs, xt])))
        logits = self.label(f[:n]).float()
        d = self.domain(GradReverse.apply(f, lam))[:, 0].float()
        ce = F.cross_entropy(logits, ys)
        bce_s = F.binary_cross_entropy_with_logits(d[:n], torch.zeros_like(d[:n]))
        bce_t = F.binary_cross_entropy_with_logits(d[n:], torch.ones_like(d[n:]))
        return ce + 0.5 * (bce_s + bce_t)


def _model_and_optimizer(arch: str, dev: torch.device, lr0: float):
    """The model and its SGD: the paper's for the CNNs; the office recipe's for ResNets
    (Nesterov, weight decay 1e-3, the backbone at 0.1x the heads' learning rate)."""
    if not arch.startswith("resnet"):
        model = TorchDANN(arch).to(dev)
        return model, torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9), [1.0]
    model = TorchResNetDANN(arch).to(dev)
    backbone = list(model.extractor.parameters())
    heads = [p for n, p in model.named_parameters() if not n.startswith("extractor.")]
    groups = [{"params": backbone}, {"params": heads}]
    opt = torch.optim.SGD(groups, lr=lr0, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return model, opt, [0.1, 1.0]


def device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(dev: torch.device) -> None:
    """Wait for queued kernels (a no-op on CPU, where torch runs synchronously)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def configure(tf32: bool) -> None:
    """The settings that match what XLA does by default on a GPU.

    TF32 for float32 matmuls and convolutions (both backend flags and the matmul
    precision, which newer PyTorch consults instead), and cuDNN's autotuner: XLA
    autotunes its convolutions at compile time, so PyTorch gets to pick its algorithms
    too (during the warm-up calls, outside the timing).
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = True


def reset_compiler() -> None:
    """Forget every torch.compile graph (once per shape: each shape compiles afresh)."""
    torch._dynamo.reset()


def to_torch(batch: dict[str, np.ndarray], dev: torch.device) -> tuple[Any, Any, Any]:
    """(xs, ys, xt) on `dev`: NHWC float images to NCHW, labels to int64."""

    def images(x):
        return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(dev)

    ys = torch.from_numpy(np.asarray(batch["source_labels"], np.int64)).to(dev)
    return images(batch["source_images"]), ys, images(batch["target_images"])


def _compiled(model: nn.Module, mode: str | None) -> Callable[..., Any]:
    """`model` itself (eager), or torch.compile of it in `mode` for static shapes."""
    if mode is None:
        return model
    # dynamic=False: one shape per compilation, as XLA specialises each program.
    return torch.compile(model, mode=mode, dynamic=False)


def make_step(
    arch: str,
    total_steps: int,
    dev: torch.device,
    compile_mode: str | None = None,
    bf16: bool = False,
    lr0: float = 0.01,
    alpha: float = 10.0,
    beta: float = 0.75,
    gamma: float = 10.0,
    seed: int = 0,
) -> Callable[[Any, Any, Any], Any]:
    """A closure ``step(xs, ys, xt) -> loss`` training a fresh model by one SGD step per call.

    ``compile_mode``: None (eager), ``"default"`` or ``"reduce-overhead"`` (torch.compile
    with CUDA graphs). ``bf16``: the forward under ``torch.autocast`` to bfloat16, the
    counterpart of dann_jax's ``precision="bf16"`` (float32 parameters and update).
    """
    torch.manual_seed(seed)
    model, opt, multipliers = _model_and_optimizer(arch, dev, lr0)
    loss_fn = _compiled(model, compile_mode)
    graphs = compile_mode == "reduce-overhead"
    # lambda is a device tensor so that torch.compile does not specialise (and recompile)
    # on each new Python float.
    lam = torch.zeros((), device=dev)
    count = [0]

    def step(xs, ys, xt):
        p = min(count[0] / total_steps, 1.0)
        lam.fill_(2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
        for group, mult in zip(opt.param_groups, multipliers, strict=True):
            group["lr"] = mult * lr0 / (1.0 + alpha * p) ** beta
        opt.zero_grad(set_to_none=True)
        if graphs:  # a new iteration: earlier graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(xs, ys, xt, lam)
        loss.backward()
        opt.step()
        count[0] += 1
        return loss

    step.model = model  # for tests and parameter loading
    return step


def _tensor(x: Any) -> torch.Tensor:
    """A float32 torch copy of an array (JAX arrays are read-only for torch.from_numpy)."""
    return torch.tensor(np.array(x, np.float32))


def load_params(model: TorchDANN, hw_params: dict, arch: str) -> None:
    """Copy `handwritten`-layout (JAX) parameters into `model` (for equivalence checks)."""
    spec = ARCHS[arch]
    convs = [m for m in model.extractor if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for m, (w, b) in zip(convs, hw_params["convs"], strict=True):
            m.weight.copy_(_tensor(np.transpose(np.asarray(w), (3, 2, 0, 1))))
            m.bias.copy_(_tensor(b))
        # JAX flattens features in (h, w, c) order, torch in (c, h, w): permute the rows
        # of the first dense layer of each head.
        channels = spec["convs"][-1][0]
        side = math.isqrt(feature_dim(arch) // channels)
        perm = np.arange(feature_dim(arch)).reshape(side, side, channels).transpose(2, 0, 1)
        for head, layers in (("label", model.label), ("domain", model.domain)):
            linears = [m for m in layers if isinstance(m, nn.Linear)]
            for i, (m, (w, b)) in enumerate(zip(linears, hw_params[head], strict=True)):
                w = np.asarray(w)
                if i == 0:
                    w = w[perm.reshape(-1)]
                m.weight.copy_(_tensor(w.T))
                m.bias.copy_(_tensor(b))
