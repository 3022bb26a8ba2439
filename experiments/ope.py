"""``modi-ope LOG CANDIDATE... [--out DIR]``: estimate candidate selectors on logged traffic.

Reads a decision log (``modi-serve --decision-log``; :mod:`modi.runtime.decision_log`) and
estimates each candidate's effective accuracy and attainment on the logged requests with IPS,
self-normalised IPS, the direct method, doubly robust and Switch-DR
(:mod:`modi.agents.ope`), each with a 95 % confidence interval, next to the logging policy's
own (on-policy) value. A candidate is an exported ``.onnx`` selector (served as the runtime
serves it, shield included unless ``--no-shield``), a ``models:/name@alias`` URI, a saved
learned policy (``.pt``), a baseline name (``dynamic_greedy``, ``modipick``, ...) or
``shadow`` (the challenger the server ran in shadow mode, from the probabilities it logged).

Writes ``DIR/ope.json``::

    {"candidates": [{"name", "path", "estimates": {"ips"|"snips"|"dm"|"dr"|"switch_dr":
        {"value", "lo", "hi"} or {"error": "..."}}, "attainment": {...},
        "unsupported_share"}], "logging_policy": {"value", "lo", "hi"},
     "logging_policy_attainment": {...}, "n": N, ...}

(values are fractions) and ``DIR/ope.csv`` (one row per candidate × metric × estimator).

Exit codes: 0 estimates written (an estimator may still refuse: *cannot estimate*, in the
table and the JSON); 2 bad input: a truncated or foreign log, a log without probabilities, a
candidate for another pool or schema — the message names the line or field and why.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modi.agents.ope import (
    DEFAULT_FLOOR,
    DEFAULT_MAX_UNSUPPORTED,
    ESTIMATORS,
    METRICS,
    CannotEstimate,
    OPEError,
    OPEReport,
    evaluate,
    load_candidate,
)
from modi.runtime.decision_log import DecisionLogError, read_decision_log

log = logging.getLogger(__name__)

PROG = "modi-ope"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}" if math.isfinite(x) else str(x)


def format_report(report: OPEReport) -> str:
    """The estimates as a text table (percent)."""
    lines = []
    lp = report.logging_policy
    e, a = lp["effective_accuracy"], lp["attainment"]
    lines.append(
        f"logging policy (on-policy, n = {report.n}): effective accuracy {_pct(e.value)} % "
        f"[{_pct(e.lo)}, {_pct(e.hi)}], attainment {_pct(a.value)} % [{_pct(a.lo)}, {_pct(a.hi)}]"
    )
    if report.dropped:
        lines.append(f"({report.dropped} records with an unknown outcome left out)")
    head = f"{'candidate':<24} {'estimator':<10} {'eff. accuracy % [95% CI]':<30} {'attainment %'}"
    lines += ["", head, "-" * len(head)]
    for c in report.candidates:
        for est in ESTIMATORS:
            if est not in c.estimates["effective_accuracy"]:
                continue
            cells = []
            for m in METRICS:
                r = c.estimates[m][est]
                if isinstance(r, CannotEstimate):
                    cells.append("cannot estimate")
                else:
                    cells.append(f"{_pct(r.value)} [{_pct(r.lo)}, {_pct(r.hi)}]")
            lines.append(f"{c.name:<24} {est:<10} {cells[0]:<30} {cells[1]}")
        notes = {r.error for r in c.estimates["effective_accuracy"].values()
                 if isinstance(r, CannotEstimate)}  # fmt: skip
        notes |= {r.note for r in c.estimates["effective_accuracy"].values()
                  if not isinstance(r, CannotEstimate) and r.note}  # fmt: skip
        lines += [f"  {c.name}: {n}" for n in sorted(notes)]
    return "\n".join(lines)


def write_outputs(report: OPEReport, out: Path) -> tuple[Path, Path]:
    """``ope.json`` and ``ope.csv`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    jp = out / "ope.json"
    jp.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=_finite) + "\n")
    cp = out / "ope.csv"
    with open(cp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["candidate", "path", "metric", "estimator", "value", "lo", "hi", "error",
                    "note", "unsupported_share", "n"])  # fmt: skip
        lp = report.logging_policy
        for m in METRICS:
            e = lp[m]
            w.writerow(["logging_policy", report.log_path, m, "on_policy", e.value, e.lo, e.hi,
                        "", "", 0.0, report.n])  # fmt: skip
        for c in report.candidates:
            for m in METRICS:
                for est, r in c.estimates[m].items():
                    if isinstance(r, CannotEstimate):
                        row: list[Any] = ["", "", "", r.error, ""]
                    else:
                        row = [r.value, r.lo, r.hi, "", r.note]
                    w.writerow([c.name, c.path, m, est, *row, c.support.share, report.n])
    return jp, cp


def _finite(x: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {x!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modi-ope``; returns the exit code."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path, help="decision log (JSON lines)")
    p.add_argument(
        "candidates", nargs="+", help=".onnx file, models:/ URI, .pt, baseline name or 'shadow'"
    )
    p.add_argument("--out", type=Path, default=Path("ope"), help="output folder (default ./ope)")
    p.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                   help="a logged probability below this counts as never taken")  # fmt: skip
    p.add_argument("--max-unsupported", type=float, default=DEFAULT_MAX_UNSUPPORTED,
                   help="largest share of requests the candidate may take unlogged actions on "
                        "before IPS/SNIPS/DR refuse (default 0.01)")  # fmt: skip
    p.add_argument("--no-shield", action="store_true",
                   help="evaluate .onnx selectors without the runtime's shield")  # fmt: skip
    p.add_argument("--drop-unknown", action="store_true",
                   help="leave out records with unknown outcomes instead of refusing")  # fmt: skip
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if not (0.0 <= a.floor < 1.0) or not (0.0 <= a.max_unsupported <= 1.0):
        print(f"{PROG}: error: --floor must be in [0, 1) and --max-unsupported in [0, 1]",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        lg = read_decision_log(a.log)
        cands = [load_candidate(c, lg, shield=not a.no_shield) for c in a.candidates]
        names = [c.name for c in cands]
        for i, c in enumerate(cands):  # distinct names in the table and the JSON
            if names.count(c.name) > 1:
                c.name = f"{c.name}#{i + 1}"
        report = evaluate(lg, cands, floor=a.floor, max_unsupported=a.max_unsupported,
                          drop_unknown=a.drop_unknown)  # fmt: skip
    except (DecisionLogError, OPEError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    jp, cp = write_outputs(report, a.out)
    print(f"\nwrote {jp} and {cp}")
    return 0


def cli() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
