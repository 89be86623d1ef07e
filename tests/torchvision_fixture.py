"""torchvision's ResNet features, frozen, so that CI checks parity without installing torch.

``python -m tests.torchvision_fixture`` (needs torch and torchvision) writes
``tests/data/torchvision_resnet.npz``: for ResNet-18 and ResNet-50, torchvision's state-dict
keys and shapes in its order, and its pooled features of a seeded input under seeded
random weights (random BatchNorm statistics too, so a wrong mapping cannot hide behind
mean 0 / var 1). `state_dict` draws those weights with numpy alone, so a test can load the
same weights into `dann_jax.pretrained.resnet` and compare with the frozen features; with
torch installed, tests/backbones_test.py also compares live.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "torchvision_resnet.npz"
CASES = {"resnet18": (0, 64), "resnet50": (1, 64)}  # name -> (seed, image size)


def state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights for torch keys -> shapes (drawn in the keys' order)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 4:  # a conv kernel, OIHW: kaiming-normal fan-out, as torchvision's
            o, _, h, w = shape
            value = rng.normal(0.0, math.sqrt(2.0 / (o * h * w)), shape)
        elif key.endswith(".weight"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, running_mean
            value = rng.normal(0.0, 0.2, shape)
        out[key] = value.astype(np.float32)
    return out


def image(seed: int, size: int) -> np.ndarray:
    """The seeded input, NHWC float32 (2 images)."""
    return np.random.default_rng(100 + seed).normal(size=(2, size, size, 3)).astype(np.float32)


def load() -> dict[str, dict]:
    """name -> {"shapes": torch key -> shape in torchvision's order, "features", "x"}."""
    with np.load(FIXTURE) as f:
        shapes = json.loads(str(f["shapes"]))
        out = {}
        for name, (seed, size) in CASES.items():
            out[name] = {
                "shapes": {k: tuple(v) for k, v in shapes[name]},
                "features": f[f"{name}_features"],
                "x": image(seed, size),
                "seed": seed,
            }
    return out


def main() -> None:
    import torch
    import torchvision

    shapes, arrays = {}, {}
    for name, (seed, size) in CASES.items():
        model = getattr(torchvision.models, name)(weights=None).eval()
        keys = {
            k: tuple(v.shape)
            for k, v in model.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
        }
        weights = {k: torch.from_numpy(v) for k, v in state_dict(keys, seed).items()}
        missing = model.load_state_dict(weights, strict=False).missing_keys
        assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing)
        x = torch.from_numpy(image(seed, size)).permute(0, 3, 1, 2)
        with torch.no_grad():
            body = torch.nn.Sequential(*list(model.children())[:-1])  # everything before fc
            arrays[f"{name}_features"] = torch.flatten(body(x), 1).numpy()
        shapes[name] = [[k, list(v)] for k, v in keys.items()]
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, shapes=json.dumps(shapes), **arrays)
    print(f"wrote {FIXTURE} (torch {torch.__version__}, torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
