"""Figures for papers and reports (PNG), one module and one style.

Every figure shares :data:`STYLE` (font sizes, grid, spines) and :func:`policy_style` (a fixed
colour, line style and marker per policy): the same policy looks the same in every figure, and
two policies with identical numbers stay visible (hollow markers of different shapes and sizes
nest instead of hiding each other). Legends sit outside the data; axis labels are words with
units. Where a results frame carries ``<metric>_lo`` / ``<metric>_hi`` columns (95 % intervals,
same units as ``<metric>``), the points get error bars; without them the plain points are drawn.

Callers: ``modi-compare`` (:func:`latency_accuracy`, :func:`usage`, :func:`cv_sweep`),
``modi-calibration`` (:func:`calibration`),
``modi-train`` (:func:`training_curve`), ``modi-compare-offload`` (:func:`offload_scenario`,
:func:`offload_preexec`), ``modi-reproduce`` (through ``modi-compare``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "STYLE",
    "calibration",
    "cv_sweep",
    "device_frontier",
    "effective_accuracy",
    "latency_accuracy",
    "offload_preexec",
    "offload_scenario",
    "policy_style",
    "training_curve",
    "usage",
]

#: Matplotlib settings shared by every figure of this module.
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "lines.linewidth": 1.6,
}

_COLORS = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # green
    "#CC79A7",  # purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#8C564B",  # brown
    "#999933",  # olive
    "#882255",  # wine
    "#17BECF",  # cyan
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))
#: Fixed style slots of the published rules (server side, then device side: policies of the two
#: sides share slots only where they never meet in one figure).
_SLOTS: dict[str, int] = {
    "static_greedy": 0,
    "dynamic_greedy": 1,
    "modipick": 2,
    "mdinference": 3,
    "calibrated_greedy": 4,
    "model_switching": 5,
    "pure_random": 6,
    "related_random": 7,
    "related_accurate": 8,
    "static_local": 0,
    "static_remote": 1,
    "pieslicer": 4,
    "on_device": 5,
    "deepdecision": 6,
    "modipick_backup": 7,
    "random_prep": 8,
}
#: Strong colours of learned (and any other unlisted) policies, drawn on top of the rules.
_LEARNED_COLORS = ("#C00000", "#6A3D9A", "#1B7837", "#B35806", "#2166AC")
#: Reference policies (clairvoyant or informed bounds): grey and dashed.
_REFERENCE_MARKS = ("oracle", "ceiling")

# The percent metrics of results frames (stored as fractions) and their axis labels.
_PCT_LABELS = {
    "effective_accuracy": "effective accuracy (%)",
    "attainment": "SLA attainment (%)",
    "accuracy": "top-1 accuracy of chosen models (%)",
}


def policy_style(policy: str, index: int) -> dict[str, Any]:
    """Line keyword arguments of ``policy``: colour, line style, marker and marker size.

    References (names containing ``oracle`` or ``ceiling``) are black or grey and dashed; the
    published rules keep one style across figures; any other policy (a learned one) is a strong
    solid line with filled markers, coloured by its ``index`` among the figure's policies.
    Hollow markers shrink with ``index`` so that identical curves show as nested markers.
    """
    if any(mark in policy for mark in _REFERENCE_MARKS):
        k = 0 if policy == "oracle" else 1 + sum(map(ord, policy)) % 3
        return {
            "color": ("#000000", "#555555", "#333333", "#777777")[k],
            "linestyle": "--" if k == 0 else (0, (3, 1, 1, 1)),
            "marker": ("*", "X", "p", "h")[k],
            "markersize": 10.0 - 1.0 * k,
            "markerfacecolor": "none",
            "markeredgewidth": 1.3,
            "zorder": 3,
        }
    if policy not in _SLOTS:
        return {
            "color": _LEARNED_COLORS[index % len(_LEARNED_COLORS)],
            "linestyle": "-",
            "linewidth": 2.2,
            "marker": ("o", "s", "^", "D", "v")[index % 5],
            "markersize": 6.0,
            "zorder": 4,
        }
    slot = _SLOTS[policy]
    return {
        "color": _COLORS[slot % len(_COLORS)],
        "linestyle": _LINESTYLES[slot % len(_LINESTYLES)],
        "marker": _MARKERS[slot % len(_MARKERS)],
        "markersize": max(4.0, 9.5 - 1.1 * (index % 6)),
        "markerfacecolor": "none",
        "markeredgewidth": 1.3,
        "zorder": 2,
    }


def _styled(extra: Mapping[str, Any] | None = None) -> Any:
    """A context manager applying :data:`STYLE` (plus ``extra``) to the figures made inside."""
    rc: Any = {**STYLE, **(extra or {})}
    return plt.rc_context(rc)


def _interval(df: pd.DataFrame, col: str, scale: float) -> np.ndarray | None:
    """Asymmetric error-bar lengths from ``<col>_lo`` / ``<col>_hi`` columns, or None."""
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo not in df.columns or hi not in df.columns:
        return None
    y = scale * df[col].to_numpy(dtype=float)
    lower = scale * df[lo].to_numpy(dtype=float)
    upper = scale * df[hi].to_numpy(dtype=float)
    if np.isnan(lower).all() and np.isnan(upper).all():
        return None
    err = np.vstack([np.clip(y - lower, 0.0, None), np.clip(upper - y, 0.0, None)])
    return np.nan_to_num(err, nan=0.0)


def _line(
    ax: Axes,
    df: pd.DataFrame,
    x: str,
    col: str,
    style: Mapping[str, Any],
    label: str,
    scale: float = 1.0,
    xscale: float = 1.0,
) -> None:
    """One policy's curve of ``col`` vs ``x`` with its 95 % interval when the frame has one."""
    xs = xscale * df[x].to_numpy(dtype=float)
    ys = scale * df[col].to_numpy(dtype=float)
    err = _interval(df, col, scale)
    if err is None:
        ax.plot(xs, ys, label=label, **style)
    else:
        ax.errorbar(xs, ys, yerr=err, label=label, capsize=2.5, elinewidth=1.0, **style)


def _legend_outside(fig: Figure, axes: Sequence[Axes], title: str | None = None) -> None:
    """One legend for the figure, just right of the panels (handles of ``axes``, deduplicated).

    Call after the layout is final (it reads the axes' positions)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        right = max(a.get_position().x1 for a in fig.axes)
        fig.legend(
            list(handles.values()),
            list(handles.keys()),
            loc="center left",
            bbox_to_anchor=(right + 0.01, 0.5),
            frameon=False,
            title=title,
        )


def _save(
    fig: Figure,
    out: Path,
    title: str = "",
    legend_axes: Sequence[Axes] = (),
    legend_title: str | None = None,
    layout: bool = True,
) -> Path:
    """Title, layout, the legend right of the panels, then the PNG (trimmed to its content)."""
    if title:
        fig.suptitle(title)
    if layout:
        fig.tight_layout()
    _legend_outside(fig, legend_axes, legend_title)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def _policies(results: pd.DataFrame) -> list[tuple[int, str, pd.DataFrame]]:
    return [
        (i, str(policy), df.sort_values("sla_ms"))
        for i, (policy, df) in enumerate(results.groupby("policy", sort=False))
    ]


def _sla_lines(
    ax: Axes,
    results: pd.DataFrame,
    col: str,
    *,
    scale: float = 100.0,
    title: str = "",
    ylabel: str | None = None,
) -> None:
    for i, policy, df in _policies(results):
        _line(ax, df, "sla_ms", col, policy_style(policy, i), policy, scale)
    ax.set(xlabel="SLA (ms)", ylabel=ylabel or _PCT_LABELS.get(col, col), title=title)


def effective_accuracy(results: pd.DataFrame, out: Path, title: str = "") -> Path:
    """The headline figure: effective accuracy and SLA attainment (%) vs SLA, one curve per
    policy, with 95 % intervals as error bars when ``results`` has the ``_lo``/``_hi``
    columns."""
    with _styled():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.9))
        _sla_lines(ax1, results, "effective_accuracy", title="(a) effective accuracy")
        _sla_lines(ax2, results, "attainment", title="(b) SLA attainment")
        return _save(fig, out, title, [ax1], "policy")


def calibration(table: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Reliability of a selector's ``P(met)``: per model and SLA (one colour per SLA), the mean
    predicted ``P(met)`` (filled) and the informed ceiling's (hollow) against the
    realised rate on the same requests; points on the diagonal are calibrated. ``table``: the
    ``calibration.csv`` of ``modi-calibration`` (one split)."""
    with _styled():
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        ax.plot([0, 100], [0, 100], color="#999999", linewidth=0.8, linestyle=":")
        for i, (sla, df) in enumerate(table.groupby("sla_ms", sort=True)):
            color = _COLORS[i % len(_COLORS)]
            ax.scatter(
                100 * df.realised,
                100 * df.predicted,
                color=color,
                marker=_MARKERS[i % len(_MARKERS)],
                s=22,
                label=f"{sla:g} ms: selector",
            )
            ax.scatter(
                100 * df.realised,
                100 * df.ceiling,
                facecolors="none",
                edgecolors=color,
                marker=_MARKERS[i % len(_MARKERS)],
                s=40,
                linewidths=0.9,
                label=f"{sla:g} ms: informed ceiling",
            )
        ax.set(
            xlabel="realised: the model met the SLA (%)",
            ylabel="predicted P(met) (%)",
            xlim=(-2, 102),
            ylim=(-2, 102),
        )
        ax.set_aspect("equal")
        return _save(fig, out, title, [ax], "SLA")


def latency_accuracy(results: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Effective accuracy, SLA attainment, accuracy of the chosen models and mean end-to-end
    latency vs SLA per policy (the headline panels first; Figs. 6a and 9 of ModiPick).

    ``results`` has one row per (policy, SLA) with ``sla_ms``, ``effective_accuracy``,
    ``attainment``, ``accuracy`` (fractions) and ``latency_mean_ms``; optional
    ``<metric>_lo``/``<metric>_hi`` columns are drawn as 95 % error bars.
    """
    with _styled():
        fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.4))
        (ax1, ax2), (ax3, ax4) = axes
        _sla_lines(ax1, results, "effective_accuracy", title="(a) effective accuracy")
        _sla_lines(ax2, results, "attainment", title="(b) SLA attainment")
        _sla_lines(ax3, results, "accuracy", title="(c) accuracy of the chosen models")
        _sla_lines(
            ax4,
            results,
            "latency_mean_ms",
            scale=1.0,
            title="(d) mean end-to-end latency",
            ylabel="mean end-to-end latency (ms)",
        )
        lo, hi = float(results.sla_ms.min()), float(results.sla_ms.max())
        ax4.plot([lo, hi], [lo, hi], color="0.4", lw=1.0, ls=":", label="latency = SLA")
        return _save(fig, out, title, [ax1, ax4], "policy")


def _ordered_models(df: pd.DataFrame, x: str) -> list[str]:
    """Models ordered by the usage-weighted mean of ``x`` (used at small SLAs first)."""
    w = df.groupby("model").apply(
        lambda g: float(np.average(g[x].astype(float), weights=g["fraction"] + 1e-12)),
        include_groups=False,
    )
    return [str(m) for m in w.sort_values().index]


def usage(usage_df: pd.DataFrame, x: str, out: Path, title: str = "") -> Path:
    """Stacked share of requests per model vs ``x`` (``sla_ms`` or ``cv``), one panel per
    value of the other sweep axis (Figs. 6b and 8); one colour per model across panels, the
    legend right of the bars."""
    if x not in ("sla_ms", "cv"):
        raise ValueError(f"usage: x must be 'sla_ms' or 'cv', got {x!r}")
    facet = "sla_ms" if x == "cv" else "cv"
    groups = (
        list(usage_df.groupby(facet, dropna=False))
        if usage_df[facet].notna().any()
        else [(None, usage_df)]
    )
    used = usage_df[usage_df.fraction > 0]
    models = _ordered_models(used, x) if len(used) else []
    cmap = plt.get_cmap("tab20")
    colors = {m: cmap(i % 20) for i, m in enumerate(models)}
    xlabel = "SLA (ms)" if x == "sla_ms" else "network latency CV (%)"
    with _styled({"axes.grid": False}):
        fig, axes = plt.subplots(1, len(groups), figsize=(5.8 * len(groups), 4.0), squeeze=False)
        for ax, (key, df) in zip(axes[0], groups, strict=True):
            table = df.pivot_table(index=x, columns="model", values="fraction", aggfunc="sum")
            table = table.fillna(0.0)
            cols = [m for m in models if m in table.columns and (table[m] > 0).any()]
            xs = np.arange(len(table.index))
            bottom = np.zeros(len(xs))
            for model in cols:
                vals = 100 * table[model].to_numpy(dtype=float)
                ax.bar(xs, vals, bottom=bottom, label=model, color=colors[model], width=0.8)
                bottom += vals
            ticks = [f"{(100 * v if x == 'cv' else v):g}" for v in table.index]
            ax.set_xticks(xs, ticks)
            sub = ""
            if key is not None:
                sub = f"SLA {key:g} ms" if facet == "sla_ms" else f"network CV {100 * key:g} %"
            ax.set(xlabel=xlabel, ylabel="share of requests (%)", title=sub, ylim=(0, 100))
        return _save(fig, out, title, list(axes[0]), "model")


def cv_sweep(results: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Effective accuracy and attainment vs network CV, one curve per (policy, SLA) (Fig. 7):
    colour and marker by policy, line style by SLA."""
    slas = sorted(results.sla_ms.unique())
    dashes = {s: _LINESTYLES[i % len(_LINESTYLES)] for i, s in enumerate(slas)}
    with _styled():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.9))
        for i, policy, _ in _policies(results):
            for sla in slas:
                df = results[(results.policy == policy) & (results.sla_ms == sla)]
                if df.empty:
                    continue
                df = df.sort_values("cv")
                style = policy_style(policy, i) | {"linestyle": dashes[sla]}
                label = f"{policy}, SLA {sla:g} ms"
                _line(ax1, df, "cv", "effective_accuracy", style, label, 100.0, 100.0)
                _line(ax2, df, "cv", "attainment", style, label, 100.0, 100.0)
        ax1.set(xlabel="network latency CV (%)", ylabel=_PCT_LABELS["effective_accuracy"])
        ax2.set(xlabel="network latency CV (%)", ylabel=_PCT_LABELS["attainment"])
        ax1.set_title("(a) effective accuracy")
        ax2.set_title("(b) SLA attainment")
        return _save(fig, out, title, [ax1])


def training_curve(
    curve: pd.DataFrame,
    out: Path,
    title: str = "",
    references: Mapping[str, float] | None = None,
) -> Path:
    """Effective accuracy and attainment per logging chunk vs requests seen.

    The reward is drawn only where it differs from the effective accuracy (with the default
    objective the two are the same number: the legend then says so). ``references`` draws
    horizontal lines, e.g. ``{"best rule": 0.71, "oracle (ceiling)": 0.80}`` (fractions, as
    the curve). The x axis is logarithmic when the chunks span two decades or more, so the
    first chunks' learning is visible.
    """
    req = curve.requests.to_numpy(dtype=float)
    with _styled():
        fig, ax = plt.subplots(figsize=(7.5, 4.0))
        same = "reward" in curve and np.allclose(
            curve.reward.to_numpy(dtype=float),
            curve.effective_accuracy.to_numpy(dtype=float),
            atol=1e-9,
            equal_nan=True,
        )
        ax.plot(
            req,
            100 * curve.effective_accuracy,
            color=_COLORS[0],
            marker="o",
            markersize=4,
            label="effective accuracy (= reward)" if same else "effective accuracy",
        )
        ax.plot(
            req,
            100 * curve.attainment,
            color=_COLORS[1],
            linestyle="--",
            marker="s",
            markersize=4,
            markerfacecolor="none",
            label="SLA attainment",
        )
        if "reward" in curve and not same:
            ax.plot(
                req, 100 * curve.reward, color=_COLORS[2], linestyle="-.", marker="^",
                markersize=4, markerfacecolor="none", label="reward (× 100)",
            )  # fmt: skip
        ref_styles = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (8, 2, 1, 2, 1, 2)))
        for j, (name, value) in enumerate((references or {}).items()):
            ax.axhline(
                100 * float(value),
                color=("#222222", "#8C564B", "#555555", "#7B3294")[j % 4],
                linestyle=ref_styles[j % len(ref_styles)],
                linewidth=1.2,
                label=f"{name}: {100 * float(value):.1f} %",
            )
        positive = req[req > 0]
        if len(positive) > 1 and positive.max() / positive.min() >= 100:
            ax.set_xscale("log")
        ax.set(
            xlabel="training requests seen",
            ylabel="percent of requests (%)",
            title=f"training: {title}" if title else "training",
        )
        return _save(fig, out, "", [ax])


_OFFLOAD_PANELS = (
    ("effective_accuracy", 100.0, "effective accuracy (%)", False),
    ("attainment", 100.0, "SLA attainment (%)", False),
    ("energy_mj", 1.0, "device energy per request (mJ)", True),
    ("kb_sent", 1.0, "data sent per request (KB)", True),
)


def offload_scenario(df: pd.DataFrame, out: Path, title: str = "", ncols: int = 5) -> Path:
    """Device-side policies of one scenario (``modi-compare-offload``).

    Top row: effective accuracy, attainment, energy and data sent per request vs SLA, every
    policy with its own style. Below: small multiples of effective accuracy, one panel per
    policy with the others in grey, so that policies with identical numbers are each seen.
    """
    pols = _policies(df)
    n = len(pols)
    rows = int(np.ceil(n / ncols)) if n else 0
    with _styled():
        fig = plt.figure(figsize=(3.3 * max(ncols, 4), 3.6 + 2.5 * rows))
        grid = fig.add_gridspec(
            1 + rows, 1, height_ratios=[1.45] + [1.0] * rows, hspace=0.45, top=0.92, right=0.98
        )
        top = grid[0].subgridspec(1, 4, wspace=0.35)
        main_axes = [fig.add_subplot(top[0, k]) for k in range(4)]
        for i, policy, part in pols:
            for ax, (col, scale, _, _) in zip(main_axes, _OFFLOAD_PANELS, strict=True):
                if col in part.columns:
                    _line(ax, part, "sla_ms", col, policy_style(policy, i), policy, scale)
        for ax, (_, _, ylabel, log_y) in zip(main_axes, _OFFLOAD_PANELS, strict=True):
            ax.set(xlabel="SLA (ms)", ylabel=ylabel)
            if log_y:
                ax.set_yscale("log")
        if rows:
            small = grid[1:].subgridspec(rows, ncols, hspace=0.55, wspace=0.25)
            first: Axes | None = None
            for k, (i, policy, part) in enumerate(pols):
                ax = fig.add_subplot(small[k // ncols, k % ncols], sharex=first, sharey=first)
                first = first or ax
                for _, other, o in pols:
                    if other != policy:
                        ax.plot(o.sla_ms, 100 * o.effective_accuracy, color="0.8", lw=1.0)
                style = policy_style(policy, i) | {"markersize": 4.0}
                _line(ax, part, "sla_ms", "effective_accuracy", style, policy, 100.0)
                ax.set_title(policy, fontsize=9.5)
                if k % ncols == 0:
                    ax.set_ylabel("effective\naccuracy (%)")
                if k // ncols == rows - 1 or k + ncols >= n:
                    ax.set_xlabel("SLA (ms)")
        return _save(fig, out, title, main_axes, "policy", layout=False)


def offload_preexec(
    results: pd.DataFrame,
    out: Path,
    policies: Iterable[str] = ("static_local", "static_remote", "pieslicer"),
) -> Path:
    """Median and p99 pre-execution time per scenario of the preprocessing-location choices
    (the largest SLA point: pre-execution does not depend on the SLA), grouped bars."""
    pols = [p for p in policies if p in set(results.policy)]
    top = results[results.sla_ms == results.sla_ms.max()]
    scenarios = list(dict.fromkeys(top.scenario))
    width = 0.8 / max(1, len(pols))
    xs = np.arange(len(scenarios))
    with _styled({"axes.grid": False}):
        fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.5 * len(scenarios) * 2), 4.2))
        for ax, (col, what) in zip(
            axes, (("preexec_p50_ms", "median"), ("preexec_p99_ms", "p99")), strict=True
        ):
            for j, pol in enumerate(pols):
                vals = [
                    float(top[(top.scenario == s) & (top.policy == pol)][col].iloc[0])
                    if ((top.scenario == s) & (top.policy == pol)).any()
                    else np.nan
                    for s in scenarios
                ]
                ax.bar(xs + j * width, vals, width, label=pol, color=_COLORS[j % len(_COLORS)])
            ax.set_xticks(xs + width * (len(pols) - 1) / 2, scenarios, rotation=30, ha="right")
            ax.set(ylabel=f"{what} pre-execution time (ms)", yscale="log")
            ax.set_title(f"{what} pre-execution time")
        return _save(fig, out, "", list(axes[:1]), "policy")


def device_frontier(frontier: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The accuracy-energy frontier of a learned device policy, one figure per scenario
    (``frontier_<scenario>.png``) and one panel per SLA (``modi-train env=offload``).

    ``frontier`` has columns ``scenario, policy, kind, sla_ms, effective_accuracy, energy_mj``
    and optionally ``w_energy_per_j`` and ``dominated_by``: the learned points (``kind ==
    "learned"``, one per energy weight) are joined in energy order; every rule (``kind ==
    "rule"``) is one point in its fixed style; learned points a rule strictly dominates are
    ringed in red (with ``dominated_by_ci``: by the paired intervals; those dominated on the
    means only, in grey)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for scen, g in frontier.groupby("scenario", sort=False):
        slas = sorted(g.sla_ms.unique())
        with _styled():
            fig, axes = plt.subplots(1, len(slas), figsize=(3.6 * len(slas), 3.4), squeeze=False)
            for ax, sla in zip(axes[0], slas, strict=True):
                part = g[g.sla_ms == sla]
                lr = part[part.kind == "learned"].sort_values("energy_mj")
                ax.plot(
                    lr.energy_mj,
                    100 * lr.effective_accuracy,
                    color=_LEARNED_COLORS[0],
                    marker="o",
                    ms=4.0,
                    label="learned (energy weight sweep)",
                    zorder=4,
                )

                # red: a rule dominates the point (paired 95 % intervals where the frontier
                # has them, dominated_by_ci); grey: on the means only, within the noise
                def hit(col: str, lr: pd.DataFrame = lr) -> pd.Series:
                    if col not in lr.columns:
                        return pd.Series(False, index=lr.index)
                    return lr[col].fillna("").astype(str) != ""

                if "dominated_by_ci" in lr.columns:
                    rings = [
                        (hit("dominated_by") & ~hit("dominated_by_ci"), "0.6",
                         "dominated on the means only"),
                        (hit("dominated_by_ci"), "red", "dominated by a rule (paired 95 %)"),
                    ]  # fmt: skip
                else:
                    rings = [(hit("dominated_by"), "red", "learned point dominated by a rule")]
                for mask, color, label in rings:
                    if not mask.any():
                        continue
                    dom = lr[mask]
                    ax.plot(
                        dom.energy_mj,
                        100 * dom.effective_accuracy,
                        "o",
                        ms=9.0,
                        mfc="none",
                        mec=color,
                        label=label,
                        zorder=5,
                    )
                rules = part[part.kind == "rule"]
                for i, (_, r) in enumerate(rules.iterrows()):
                    style = policy_style(str(r.policy), i) | {"linestyle": "none"}
                    ax.plot(r.energy_mj, 100 * r.effective_accuracy, label=str(r.policy), **style)
                ax.set(
                    xscale="log",
                    xlabel="device energy per request (mJ)",
                    ylabel="effective accuracy (%)",
                    title=f"SLA {sla:g} ms",
                )
            path = out_dir / f"frontier_{scen}.png"
            paths.append(_save(fig, path, str(scen), list(axes[0]), "policy"))
    return paths
