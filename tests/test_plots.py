"""The figures: every policy visible, intervals drawn when the results carry them, legends outside
the data, worded axis labels, reference lines on the training curve."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from modi.experiments import plots

POLICIES = ["static_greedy", "dynamic_greedy", "modipick", "mdinference", "oracle", "linucb"]
SLAS = [100.0, 150.0, 200.0, 300.0]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plotting functions save (inspected after the call)."""
    figs: list[Figure] = []
    original = Figure.savefig

    def capture(self: Figure, *args: Any, **kwargs: Any) -> None:
        figs.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    return figs


def _results(intervals: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, policy in enumerate(POLICIES):
        for sla in SLAS:
            # dynamic_greedy and mdinference identical, as they often are
            k = 1 if policy == "mdinference" else i
            eff = min(0.9, 0.2 + 0.1 * k + sla / 1000)
            rows.append(
                {
                    "policy": policy,
                    "sla_ms": sla,
                    "effective_accuracy": eff,
                    "attainment": min(1.0, eff + 0.1),
                    "accuracy": 0.7,
                    "latency_mean_ms": sla * 0.8 + rng.normal(),
                }
            )
    df = pd.DataFrame(rows)
    if intervals:
        for c in ("effective_accuracy", "attainment"):
            df[c + "_lo"] = df[c] - 0.02
            df[c + "_hi"] = df[c] + 0.03
    return df


def _legend_right_of_axes(fig: Figure) -> None:
    canvas = FigureCanvasAgg(fig)  # the saved figure is closed: draw it again off-screen
    canvas.draw()
    renderer = canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes)
    assert box.x0 >= right - 1, "the legend overlaps the panels"


def test_policy_styles_are_distinct() -> None:
    styles = [plots.policy_style(p, i) for i, p in enumerate(POLICIES)]
    keys = [(s["color"], str(s["linestyle"]), s["marker"]) for s in styles]
    assert len(set(keys)) == len(keys)
    for a, b in itertools.combinations(styles, 2):
        assert a["marker"] != b["marker"] or a["color"] != b["color"]


@pytest.mark.parametrize("intervals", [False, True])
def test_latency_accuracy_headline_panels_and_intervals(
    tmp_path: Path, saved: list[Figure], intervals: bool
) -> None:
    out = plots.latency_accuracy(_results(intervals), tmp_path / "la.png", "t")
    assert out.stat().st_size > 10_000
    (fig,) = saved
    axes = fig.axes
    assert axes[0].get_ylabel() == "effective accuracy (%)"
    assert axes[1].get_ylabel() == "SLA attainment (%)"
    assert all(ax.get_xlabel() == "SLA (ms)" for ax in axes)
    # every policy is a line of its own in the headline panel, with its own marker/colour
    labels = [lab for lab in axes[0].get_legend_handles_labels()[1] if lab in POLICIES]
    assert sorted(labels) == sorted(POLICIES)
    # error bars are drawn exactly when the frame has the interval columns
    has_bars = any(c.__class__.__name__ == "ErrorbarContainer" for c in axes[0].containers)
    assert has_bars == intervals
    assert not axes[3].collections, "no filled mean ± std bands"
    _legend_right_of_axes(fig)


def test_usage_legend_outside_and_worded_axis(tmp_path: Path, saved: list[Figure]) -> None:
    usage = pd.DataFrame(
        [
            {"sla_ms": s, "cv": np.nan, "model": m, "fraction": f}
            for s in SLAS
            for m, f in (("small", 0.6), ("large", 0.4))
        ]
    )
    plots.usage(usage, "sla_ms", tmp_path / "u.png", "usage")
    (fig,) = saved
    assert fig.axes[0].get_xlabel() == "SLA (ms)"
    _legend_right_of_axes(fig)
    with pytest.raises(ValueError, match="x must be"):
        plots.usage(usage, "sla", tmp_path / "bad.png")


def test_training_curve_reward_and_references(tmp_path: Path, saved: list[Figure]) -> None:
    req = np.arange(1, 40) * 2048
    curve = pd.DataFrame(
        {"requests": req, "effective_accuracy": 0.6 + 0.1 * (1 - np.exp(-req / 2e4))}
    )
    curve["reward"] = curve["effective_accuracy"]
    curve["attainment"] = 0.9
    refs = {"best rule": 0.62, "oracle (ceiling)": 0.75}
    plots.training_curve(curve, tmp_path / "tc.png", "linucb", references=refs)
    labels = [ln.get_label() for ln in saved[0].axes[0].get_lines()]
    assert "effective accuracy (= reward)" in labels
    assert not any(lab.startswith("reward") for lab in labels), "reward drawn over eff. acc."
    assert sum(lab.startswith(("best rule", "oracle")) for lab in labels) == 2

    curve["reward"] = curve["effective_accuracy"] - 0.05  # e.g. with a miss penalty
    plots.training_curve(curve, tmp_path / "tc2.png", "linucb")
    labels = [ln.get_label() for ln in saved[1].axes[0].get_lines()]
    assert "effective accuracy" in labels and "reward (× 100)" in labels


def test_offload_scenario_shows_every_policy(tmp_path: Path, saved: list[Figure]) -> None:
    pols = [
        "static_local", "static_remote", "pieslicer", "on_device", "deepdecision",
        "modipick", "modipick_backup", "mdinference", "oracle", "oracle_mdinference",
    ]  # fmt: skip
    df = pd.DataFrame(
        [
            {
                "policy": p,
                "sla_ms": s,
                "effective_accuracy": 0.8,  # all identical: the worst case for visibility
                "attainment": 1.0,
                "energy_mj": 900.0,
                "kb_sent": 20.0,
            }
            for p in pols
            for s in (300.0, 500.0, 1000.0)
        ]
    )
    plots.offload_scenario(df, tmp_path / "o.png", "mid_wifi")
    (fig,) = saved
    titles = {ax.get_title() for ax in fig.axes}
    assert set(pols) <= titles, "a policy has no panel of its own"
    _legend_right_of_axes(fig)


def test_device_frontier_rings_dominated_points_by_interval_and_by_mean(
    tmp_path: Path, saved: list[Figure]
) -> None:
    """Learned points a rule dominates on the paired intervals ringed red, those dominated on
    the means only grey; without the interval column, the means' dominance in red as before."""
    rows = [
        {"scenario": "mid_link_5g", "policy": f"learned_w{w}", "kind": "learned", "sla_ms": 300.0,
         "effective_accuracy": 0.6 - w / 10, "energy_mj": 300.0 - 100 * w, "w_energy_per_j": w,
         "dominated_by": dom, "dominated_by_ci": ci}
        for w, dom, ci in ((0.0, "", ""), (0.3, "static_local", ""),
                           (1.0, "pieslicer", "pieslicer"))
    ] + [
        {"scenario": "mid_link_5g", "policy": p, "kind": "rule", "sla_ms": 300.0,
         "effective_accuracy": a, "energy_mj": e, "w_energy_per_j": np.nan,
         "dominated_by": "", "dominated_by_ci": ""}
        for p, a, e in (("static_local", 0.58, 260.0), ("pieslicer", 0.55, 190.0))
    ]  # fmt: skip
    frontier = pd.DataFrame(rows)
    (path,) = plots.device_frontier(frontier, tmp_path)
    assert path.is_file()
    (ax,) = saved[-1].axes
    rings = {str(ln.get_label()): ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "none"}
    red = rings["dominated by a rule (paired 95 %)"]
    grey = rings["dominated on the means only"]
    assert list(red.get_xdata()) == [200.0] and red.get_markeredgecolor() == "red"
    assert list(grey.get_xdata()) == [270.0]  # the means only: not the red one again
    plots.device_frontier(frontier.drop(columns="dominated_by_ci"), tmp_path)
    (ax,) = saved[-1].axes
    labels = [str(ln.get_label()) for ln in ax.get_lines()]
    assert "learned point dominated by a rule" in labels
    assert "dominated on the means only" not in labels
