"""``modi-profile``: measure a folder of ONNX models on this machine and write the pool YAML the
simulators and the server load (the *measured model pool*).

For each ``*.onnx`` in the folder (in manifest order when a ``manifest.json`` from
:mod:`modi.experiments.zoo` is there), onnxruntime runs ``--warmup`` untimed inferences and then
``--runs`` timed ones on a random input of the model's shape, batch 1, ``--threads`` intra-op
threads; the YAML records μ, σ, min, p50, p90, p99 and max (ms). Accuracy comes, in order of
preference, from a labelled set (``--labels FILE.npz`` with float arrays ``x`` of shape
``(N, C, H, W)`` and integer ``y``; used for every model whose input shape matches ``x``),
from the manifest (e.g. an architecture's published top-1), or from ``--default-accuracy``;
each entry says which (``accuracy_source``). Usage::

    modi-profile serving_pool/digits --runs 200 --warmup 20 \\
        --labels serving_pool/digits/digits_test.npz --out digits_pool.yaml
    modi-profile serving_pool/imagenet --runs 50 --warmup 5 --out imagenet_pool.yaml

The output loads with ``ModelPool.from_config(name, path="digits_pool.yaml")``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modi.experiments.zoo import (
    MANIFEST,
    ZooEntry,
    logging_with_progress,
    progress_bar,
    read_manifest,
)

log = logging.getLogger(__name__)


@dataclass
class Profile:
    """Measured execution time of one model (ms) and its accuracy."""

    id: str
    file: str
    times_ms: np.ndarray
    accuracy: float
    accuracy_source: str

    def as_entry(self) -> dict[str, Any]:
        """The pool-YAML entry (``top1_accuracy`` in percent, as the pool configs use)."""
        t = self.times_ms
        q = np.percentile(t, [50, 90, 99])
        return {
            "id": self.id,
            "file": self.file,
            "top1_accuracy": round(100.0 * self.accuracy, 3),
            "accuracy_source": self.accuracy_source,
            "mean_ms": round(float(t.mean()), 4),
            "std_ms": round(float(t.std(ddof=1)) if t.size > 1 else 0.0, 4),
            "min_ms": round(float(t.min()), 4),
            "p50_ms": round(float(q[0]), 4),
            "p90_ms": round(float(q[1]), 4),
            "p99_ms": round(float(q[2]), 4),
            "max_ms": round(float(t.max()), 4),
            "runs": int(t.size),
        }


def open_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def input_shape(sess: Any) -> tuple[int, ...]:
    """The model's input shape with dynamic dimensions set to 1."""
    shape = sess.get_inputs()[0].shape
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


def time_model(sess: Any, runs: int, warmup: int, seed: int = 0) -> np.ndarray:
    """``runs`` timed batch-1 inferences (ms) after ``warmup`` untimed ones."""
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(seed).standard_normal(input_shape(sess)).astype(np.float32)
    feed = {name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a labelled ``.npz`` (plain arrays; pickles are refused)."""
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise ValueError(f"{path}: a labelled set needs arrays 'x' and 'y', has {list(z)}")
        x, y = z["x"].astype(np.float32), z["y"].astype(np.int64)
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"{path}: expected x (N, C, H, W) and y (N,), got {x.shape}, {y.shape}")
    return x, y


def measure_accuracy(sess: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``sess`` on ``(x, y)``, one sample at a time (batch-1 graphs)."""
    name = sess.get_inputs()[0].name
    hits = 0
    for i in range(len(x)):
        logits = sess.run(None, {name: x[i : i + 1]})[0]
        hits += int(np.argmax(logits) == y[i])
    return hits / len(x)


def profile_dir(
    pool_dir: Path,
    runs: int = 100,
    warmup: int = 10,
    labels: Path | None = None,
    threads: int = 1,
    default_accuracy: float | None = None,
    progress: bool = False,
) -> list[Profile]:
    """Measure every model of ``pool_dir``; see the module docstring. ``progress`` shows a bar
    (one tick per model)."""
    if runs < 2 or warmup < 0:
        raise ValueError(f"need runs >= 2 and warmup >= 0, got runs={runs} warmup={warmup}")
    manifest: dict[str, ZooEntry] = {}
    if (pool_dir / MANIFEST).is_file():
        manifest = {e.file: e for e in read_manifest(pool_dir)}
        files = [pool_dir / f for f in manifest]
    else:
        files = sorted(pool_dir.glob("*.onnx"))
    if not files:
        raise ValueError(f"{pool_dir} holds no .onnx models")
    xy = load_labels(labels) if labels is not None else None
    out = []
    for f in progress_bar(files, f"profiling {pool_dir.name}", progress):
        sess = open_session(f, threads)
        entry = manifest.get(f.name)
        acc: float | None
        if xy is not None and input_shape(sess)[1:] == xy[0].shape[1:]:
            acc = measure_accuracy(sess, *xy)
            src = f"measured on {len(xy[1])} labelled samples of {labels.name if labels else ''}"
        elif entry is not None:
            acc, src = entry.accuracy, entry.accuracy_source
        elif default_accuracy is not None:
            acc, src = default_accuracy, "--default-accuracy (not measured)"
        else:
            raise ValueError(
                f"no accuracy for {f.name}: give --labels with matching inputs, a manifest.json, "
                "or --default-accuracy"
            )
        t = time_model(sess, runs, warmup)
        mid = entry.id if entry is not None else f.stem
        out.append(Profile(mid, f.name, t, acc, src))
        log.info(
            "%-20s mean %8.3f ms  std %6.3f  p99 %8.3f  acc %.3f",
            mid, t.mean(), t.std(ddof=1), np.percentile(t, 99), acc,
        )  # fmt: skip
    return out


def write_pool_yaml(
    profiles: list[Profile], out: Path, name: str, runs: int, warmup: int, threads: int
) -> Path:
    """Write the pool YAML (``ModelPool.from_config`` reads ``models``; the rest is provenance)."""
    import onnxruntime as ort
    import yaml

    doc = {
        "name": name,
        "measured": {
            "tool": "modi-profile",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
            "processor": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__,
            "runs": runs,
            "warmup": warmup,
            "intra_op_threads": threads,
            "batch": 1,
        },
        "models": [p.as_entry() for p in profiles],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False, width=100))
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="modi-profile",
        description=(__doc__ or "").replace("``", "`").replace(":mod:", "").replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pool_dir", type=Path, help="folder of .onnx models (with manifest.json)")
    p.add_argument(
        "--runs",
        type=int,
        default=100,
        help="timed inferences per model, >= 2 (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed inferences before them (default: %(default)s)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labelled .npz (float x of shape (N, C, H, W), integer y) to measure accuracy on",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (default: %(default)s)"
    )
    p.add_argument(
        "--default-accuracy",
        type=float,
        default=None,
        help="accuracy (fraction in [0, 1]) of models with no labels and no manifest entry; "
        "recorded as not measured",
    )
    p.add_argument("--name", default=None, help="pool name (default: the folder's name)")
    p.add_argument("--out", type=Path, required=True, help="pool YAML to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not a.pool_dir.is_dir():
        p.error(f"{a.pool_dir} is not a folder")
    show = not a.no_progress
    try:
        with logging_with_progress(show):
            profiles = profile_dir(
                a.pool_dir, a.runs, a.warmup, a.labels, a.threads, a.default_accuracy, show
            )
    except ValueError as e:
        p.error(str(e))
    path = write_pool_yaml(profiles, a.out, a.name or a.pool_dir.name, a.runs, a.warmup, a.threads)
    log.info("wrote %s (%d models)", path, len(profiles))


if __name__ == "__main__":
    main()
