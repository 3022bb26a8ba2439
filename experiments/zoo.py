"""``modi-zoo``: build the real ONNX model pools the reference server hosts (no downloads).

Two pools, each a folder of ``<id>.onnx`` files plus a ``manifest.json`` the server and
``modi-profile`` read (JSON, never a pickle):

* ``imagenet``: real image-classification architectures written here in torch and exported with
  random weights — MobileNetV1 at widths 0.25/0.5/0.75/1.0, SqueezeNet 1.1, ResNet-18/34/50 and
  GoogLeNet (Inception v1) — spanning roughly 1–100 ms on a CPU. Weights cannot be downloaded
  here and latency is what the selector needs, so each model's accuracy is the *published*
  ImageNet top-1 of its architecture, and the manifest says so (``accuracy_source``).
* ``digits``: four classifiers of increasing size (logistic regression, two MLPs, a small CNN)
  trained here on scikit-learn's handwritten digits; their accuracy is *measured* on a held-out
  split that is saved beside them (``digits_test.npz``, plain arrays) so ``modi-profile`` can
  re-measure it. This pool is real end to end.

Manifest entry: ``id``, ``file``, ``input`` (``[C, H, W]``), ``color`` (``"rgb"`` or ``"gray"``),
``scale`` (multiplier of the 0..1 pixel value), ``mean``/``std`` (per channel, applied after the
scale), ``accuracy`` (fraction), ``accuracy_source``, ``labels`` (``"imagenet-1k"`` or
``"digits"``). Usage::

    python -m modi.experiments.zoo serving_pool   # serving_pool/imagenet and /digits
    python -m modi.experiments.zoo serving_pool --only digits
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def progress_bar(items: Sequence[_T], desc: str, enabled: bool = True) -> Iterator[_T]:
    """``items`` with a progress bar on stderr (tqdm, one tick per model, the current model as
    the bar's postfix) when ``enabled`` and tqdm is installed; plain iteration otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is optional (tqdm comes with the train extra)
        enabled = False
    if not enabled:
        yield from items
        return
    with tqdm(total=len(items), desc=desc, unit="model", dynamic_ncols=True) as bar:
        for item in items:
            bar.set_postfix_str(str(getattr(item, "name", item)), refresh=True)
            yield item
            bar.update(1)


def logging_with_progress(enabled: bool) -> AbstractContextManager[Any]:
    """Route log lines through tqdm so they do not break a progress bar (a no-op without)."""
    if enabled:
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm

            return logging_redirect_tqdm()
        except ImportError:
            pass
    return nullcontext()


MANIFEST = "manifest.json"
DIGITS_TEST = "digits_test.npz"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ZooEntry:
    """One model of a pool folder, as written to ``manifest.json``."""

    id: str
    file: str
    input: list[int]
    color: str
    scale: float
    mean: list[float]
    std: list[float]
    accuracy: float
    accuracy_source: str
    labels: str
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(pool_dir: str | Path) -> list[ZooEntry]:
    """The entries of ``pool_dir/manifest.json``; raises ``ValueError`` naming the problem."""
    path = Path(pool_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: build the pool with python -m modi.experiments.zoo first"
        )
    try:
        doc = json.loads(path.read_text())
        entries = [ZooEntry(**e) for e in doc["models"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid pool manifest: {e}") from None
    return entries


def write_manifest(pool_dir: Path, name: str, entries: list[ZooEntry]) -> Path:
    """Write ``manifest.json`` for ``entries``."""
    path = pool_dir / MANIFEST
    doc = {"name": name, "models": [asdict(e) for e in entries]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- architectures (torch)
def _nets() -> dict[str, Callable[[], Any]]:
    """Constructors of the ImageNet architectures (torch imported here, not at module import)."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    class MobileNetV1(nn.Module):
        """Howard et al. 2017, width multiplier ``alpha``, 224x224 input."""

        CFG = (
            ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
            + ((512, 1),) * 5
            + (
                (1024, 2),
                (1024, 1),
            )
        )

        def __init__(self, alpha: float) -> None:
            super().__init__()
            c = int(32 * alpha)
            layers: list[nn.Module] = [conv_bn(3, c, 3, 2)]
            for out, s in self.CFG:
                o = int(out * alpha)
                layers += [conv_bn(c, c, 3, s, groups=c), conv_bn(c, o, 1)]
                c = o
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    class Fire(nn.Module):
        def __init__(self, cin: int, sq: int, e1: int, e3: int) -> None:
            super().__init__()
            self.sq = nn.Sequential(nn.Conv2d(cin, sq, 1), nn.ReLU(inplace=True))
            self.e1 = nn.Sequential(nn.Conv2d(sq, e1, 1), nn.ReLU(inplace=True))
            self.e3 = nn.Sequential(nn.Conv2d(sq, e3, 3, padding=1), nn.ReLU(inplace=True))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.sq(x)
            return torch.cat([self.e1(x), self.e3(x)], 1)

    class SqueezeNet11(nn.Module):
        """Iandola et al. 2016, version 1.1."""

        def __init__(self) -> None:
            super().__init__()
            pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool,
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool,
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool,
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
            )  # fmt: skip
            self.head = nn.Sequential(nn.Conv2d(512, 1000, 1), nn.ReLU(inplace=True))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x)).mean((2, 3))

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin: int, c: int, s: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                conv_bn(cin, c, 3, s), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            )
            self.short = _shortcut(cin, c, s)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.short(x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, c: int, s: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                conv_bn(cin, c, 1), conv_bn(c, c, 3, s),
                nn.Conv2d(c, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c),
            )  # fmt: skip
            self.short = _shortcut(cin, 4 * c, s)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.short(x))

    def _shortcut(cin: int, cout: int, s: int) -> nn.Module:
        if s == 1 and cin == cout:
            return nn.Identity()
        return nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))

    class ResNet(nn.Module):
        """He et al. 2015 (ResNet-18/34 basic blocks, ResNet-50 bottlenecks)."""

        def __init__(self, block: Any, depths: tuple[int, ...]) -> None:
            super().__init__()
            layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
            cin = 64
            for i, (c, n) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
                for j in range(n):
                    layers.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                    cin = c * block.expansion
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    class Inception(nn.Module):
        def __init__(
            self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int
        ) -> None:
            super().__init__()
            self.b1 = conv_bn(cin, c1, 1)
            self.b2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
            self.b3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, pp, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    class GoogLeNet(nn.Module):
        """Szegedy et al. 2014 (Inception v1, torchvision's layout, no auxiliary heads)."""

        def __init__(self) -> None:
            super().__init__()
            mp = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.features = nn.Sequential(
                conv_bn(3, 64, 7, 2), mp, conv_bn(64, 64, 1), conv_bn(64, 192, 3), mp,
                Inception(192, 64, 96, 128, 16, 32, 32),
                Inception(256, 128, 128, 192, 32, 96, 64), mp,
                Inception(480, 192, 96, 208, 16, 48, 64),
                Inception(512, 160, 112, 224, 24, 64, 64),
                Inception(512, 128, 128, 256, 24, 64, 64),
                Inception(512, 112, 144, 288, 32, 64, 64),
                Inception(528, 256, 160, 320, 32, 128, 128),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                Inception(832, 256, 160, 320, 32, 128, 128),
                Inception(832, 384, 192, 384, 48, 128, 128),
            )  # fmt: skip
            self.fc = nn.Linear(1024, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).mean((2, 3)))

    return {
        "mobilenet_v1_0.25": lambda: MobileNetV1(0.25),
        "mobilenet_v1_0.5": lambda: MobileNetV1(0.5),
        "mobilenet_v1_0.75": lambda: MobileNetV1(0.75),
        "mobilenet_v1_1.0": lambda: MobileNetV1(1.0),
        "squeezenet_1.1": SqueezeNet11,
        "resnet18": lambda: ResNet(Basic, (2, 2, 2, 2)),
        "resnet34": lambda: ResNet(Basic, (3, 4, 6, 3)),
        "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
        "googlenet": GoogLeNet,
    }


#: Published ImageNet-1k top-1 (%) of each architecture and where the number comes from.
PUBLISHED_TOP1: dict[str, tuple[float, str]] = {
    "mobilenet_v1_0.25": (49.8, "published top-1, TF-Slim MobileNet_v1_0.25_224"),
    "mobilenet_v1_0.5": (63.3, "published top-1, TF-Slim MobileNet_v1_0.5_224"),
    "mobilenet_v1_0.75": (68.4, "published top-1, TF-Slim MobileNet_v1_0.75_224"),
    "mobilenet_v1_1.0": (70.9, "published top-1, TF-Slim MobileNet_v1_1.0_224"),
    "squeezenet_1.1": (58.2, "published top-1, torchvision squeezenet1_1 IMAGENET1K_V1"),
    "resnet18": (69.8, "published top-1, torchvision resnet18 IMAGENET1K_V1"),
    "resnet34": (73.3, "published top-1, torchvision resnet34 IMAGENET1K_V1"),
    "resnet50": (76.1, "published top-1, torchvision resnet50 IMAGENET1K_V1"),
    "googlenet": (69.8, "published top-1, torchvision googlenet IMAGENET1K_V1"),
}


def _export(model: Any, example: Any, path: Path) -> None:
    """Export ``model`` (eval mode) to a single self-contained ONNX file, batch size 1."""
    import torch

    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            external_data=False,
        )


def build_imagenet(
    out: Path, ids: list[str] | None = None, seed: int = 0, progress: bool = False
) -> list[ZooEntry]:
    """Export the ImageNet architectures (random weights) into ``out``; ``progress`` shows a
    bar (one tick per model)."""
    import torch

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    nets = _nets()
    entries = []
    todo = list(ids or nets)
    for mid in todo:
        if mid not in nets:
            raise ValueError(f"unknown architecture {mid!r}; known: {list(nets)}")
    for mid in progress_bar(todo, "exporting ImageNet models", progress):
        t0 = time.perf_counter()
        model = nets[mid]()
        _export(model, torch.randn(1, 3, 224, 224), out / f"{mid}.onnx")
        top1, src = PUBLISHED_TOP1[mid]
        n_params = sum(p.numel() for p in model.parameters())
        entries.append(
            ZooEntry(
                id=mid, file=f"{mid}.onnx", input=[3, 224, 224], color="rgb", scale=1.0,
                mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), accuracy=top1 / 100.0,
                accuracy_source=src + " (weights here are random: latency only)",
                labels="imagenet-1k", extra={"params": int(n_params)},
            )
        )  # fmt: skip
        log.info(
            "exported %s (%.1f M params) in %.1f s", mid, n_params / 1e6, time.perf_counter() - t0
        )
    write_manifest(out, "imagenet", entries)
    return entries


def _digits_nets() -> dict[str, Callable[[], Any]]:
    from torch import nn

    return {
        "digits_logreg": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
        "digits_mlp64": lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        ),
        "digits_mlp1024": lambda: nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        ),
        "digits_cnn": lambda: nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        ),
    }


def build_digits(
    out: Path,
    seed: int = 0,
    epochs: int = 25,
    ids: list[str] | None = None,
    progress: bool = False,
) -> list[ZooEntry]:
    """Train the digits classifiers (scikit-learn's data set), export them and the test split;
    ``progress`` shows a bar (one tick per model)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel value in 0..1
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    # Held-out split as the server sees pixels (0..1, gray, 8x8): plain arrays, no pickle.
    np.savez(out / DIGITS_TEST, x=xte.astype(np.float32), y=yte.astype(np.int64))
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64))
    entries = []
    nets = _digits_nets()
    todo = list(ids or nets)
    for mid in todo:
        if mid not in nets:
            raise ValueError(f"unknown digits model {mid!r}; known: {list(nets)}")
    for mid in progress_bar(todo, "training digits models", progress):
        model = nets[mid]()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 128):
                b = perm[i : i + 128]
                loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(xte)).argmax(1).numpy()
        acc = float((pred == yte).mean())
        _export(model, torch.zeros(1, 1, 8, 8), out / f"{mid}.onnx")
        entries.append(
            ZooEntry(
                id=mid, file=f"{mid}.onnx", input=[1, 8, 8], color="gray", scale=1.0,
                mean=[0.0], std=[1.0], accuracy=acc,
                accuracy_source=f"measured on {len(yte)} held-out scikit-learn digits "
                f"({DIGITS_TEST}, seed {seed})",
                labels="digits",
            )
        )  # fmt: skip
        log.info("trained %s: held-out accuracy %.3f", mid, acc)
    write_manifest(out, "digits", entries)
    return entries


def main(argv: list[str] | None = None) -> None:
    """``python -m modi.experiments.zoo OUT [--only imagenet|digits] [--models ID ...]``."""
    p = argparse.ArgumentParser(
        prog="python -m modi.experiments.zoo",
        description=(__doc__ or "").replace("``", "`").replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="folder; pools go to OUT/imagenet and OUT/digits")
    p.add_argument(
        "--only",
        choices=("imagenet", "digits"),
        default=None,
        help="build one pool only (default: both)",
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=None,
        help=f"subset of the ImageNet models (default: all of {', '.join(PUBLISHED_TOP1)})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the weights and the digits split (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    show = not a.no_progress
    with logging_with_progress(show):
        if a.only in (None, "imagenet"):
            build_imagenet(a.out / "imagenet", a.models, a.seed, progress=show)
        if a.only in (None, "digits"):
            build_digits(a.out / "digits", a.seed, progress=show)
    log.info("wrote %s", a.out)


if __name__ == "__main__":
    main()
