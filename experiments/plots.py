"""Figures in the style of the ModiPick paper (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def latency_accuracy(results: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Mean end-to-end latency (± one std) and accuracy vs SLA per policy (Figs. 6a and 9)."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for policy, df in results.groupby("policy", sort=False):
        df = df.sort_values("sla_ms")
        ax1.plot(df.sla_ms, df.latency_mean_ms, marker="o", label=policy)
        ax1.fill_between(
            df.sla_ms,
            df.latency_mean_ms - df.latency_std_ms,
            df.latency_mean_ms + df.latency_std_ms,
            alpha=0.12,
        )
        ax2.plot(df.sla_ms, 100 * df.accuracy, marker="o", label=policy)
        ax3.plot(df.sla_ms, 100 * df.attainment, marker="o", label=policy)
    lo, hi = results.sla_ms.min(), results.sla_ms.max()
    ax1.plot([lo, hi], [lo, hi], "k--", lw=1, label="SLA")
    ax1.set(xlabel="SLA (ms)", ylabel="end-to-end latency (ms)", title="latency (mean ± std)")
    ax2.set(xlabel="SLA (ms)", ylabel="top-1 accuracy (%)", title="accuracy of chosen models")
    ax3.set(xlabel="SLA (ms)", ylabel="SLA attainment (%)", title="attainment")
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def usage(usage_df: pd.DataFrame, x: str, out: Path, title: str = "") -> Path:
    """Stacked share of requests per model vs ``x`` (``sla_ms`` or ``cv``), one panel per
    value of the other sweep axis (Figs. 6b and 8)."""
    facet = "sla_ms" if x == "cv" else "cv"
    groups = (
        list(usage_df.groupby(facet, dropna=False))
        if usage_df[facet].notna().any()
        else [(None, usage_df)]
    )
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.2), squeeze=False)
    for ax, (key, df) in zip(axes[0], groups, strict=True):
        table = df.pivot_table(index=x, columns="model", values="fraction", aggfunc="sum").fillna(0)
        table = table.loc[:, (table > 0).any()]
        xs = list(range(len(table.index)))
        bottom = None
        cmap = plt.get_cmap("tab20")
        for i, model in enumerate(table.columns):
            vals = 100 * table[model].to_numpy()
            ax.bar(xs, vals, bottom=bottom, label=model, color=cmap(i % 20))
            bottom = vals if bottom is None else bottom + vals
        ax.set_xticks(xs, [f"{v:g}" for v in table.index])
        ax.set(xlabel=x, ylabel="requests (%)", title=f"{facet}={key:g}" if key is not None else "")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cv_sweep(results: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Effective accuracy and attainment vs network CV, one line per (policy, SLA) (Fig. 7)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (policy, sla), df in results.groupby(["policy", "sla_ms"], sort=False):
        df = df.sort_values("cv")
        ax1.plot(
            100 * df.cv, 100 * df.effective_accuracy, marker="o", label=f"{policy} SLA {sla:g}"
        )
        ax2.plot(100 * df.cv, 100 * df.attainment, marker="o", label=f"{policy} SLA {sla:g}")
    ax1.set(xlabel="network CV (%)", ylabel="effective accuracy (%)")
    ax2.set(xlabel="network CV (%)", ylabel="SLA attainment (%)")
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def training_curve(curve: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Reward, attainment and effective accuracy per logging chunk vs requests seen."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for col in ("effective_accuracy", "attainment", "reward"):
        ax.plot(curve.requests, 100 * curve[col], marker=".", label=col)
    ax.set(xlabel="requests seen", ylabel="%", title=f"training: {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
