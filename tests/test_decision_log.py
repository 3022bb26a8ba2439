"""The decision-log format: round trip of records, and every kind of bad log refused with the
line, the field and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modi.runtime.decision_log import (
    DecisionLogError,
    DecisionRecord,
    Exploration,
    Outcome,
    SelectorInfo,
    Shadow,
    read_decision_log,
)
from modi.runtime.features import ObsLayout
from modi.runtime.metadata import pool_hash

POOL = ("a", "b", "c")
SCHEMA = ObsLayout.schema


def record(i: int, **over: Any) -> dict[str, Any]:
    """A valid record as a JSON object (fields overridden by ``over``)."""
    rng = np.random.default_rng(i)
    probs = rng.dirichlet(np.ones(len(POOL)))
    action = int(rng.integers(len(POOL)))
    met = bool(rng.random() < 0.7)
    lin = SelectorInfo("lin", "sha256:00", Exploration("none"))
    rec = DecisionRecord(
        ts=1000.0 + i,
        request_id=f"r{i}",
        schema=SCHEMA,
        pool=POOL,
        pool_hash=pool_hash(POOL),
        selector=SelectorInfo("modipick", "modipick", Exploration("rule")),
        features=tuple(float(x) for x in rng.normal(size=ObsLayout(len(POOL)).dim)),
        action=action,
        model_id=POOL[action],
        probabilities=tuple(float(p) for p in probs),
        source="fallback",
        reason="no selector",
        outcome=Outcome(latency_ms=float(rng.uniform(10, 99)), met=met, accuracy=0.5 + action / 9),
        shadow=Shadow(lin, 1, "b", (0.0, 1.0, 0.0)) if i % 2 else None,
    ).to_dict()
    rec.update(over)
    return rec


def write(path: Path, recs: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return path


def test_round_trip_arrays(tmp_path: Path) -> None:
    recs = [record(i) for i in range(20)]
    recs[3]["outcome"]["correct"] = True
    recs[4]["outcome"]["correct"] = False
    recs[5]["outcome"]["met"] = None
    lg = read_decision_log(write(tmp_path / "log.jsonl", recs))
    assert lg.n == 20 and lg.pool == POOL and lg.schema == SCHEMA
    assert lg.features.shape == (20, ObsLayout(3).dim)
    np.testing.assert_array_equal(lg.actions, [r["action"] for r in recs])
    np.testing.assert_allclose(lg.probabilities, [r["probabilities"] for r in recs])
    np.testing.assert_allclose(lg.propensities, [r["probabilities"][r["action"]] for r in recs])
    for i, r in enumerate(recs):
        o = r["outcome"]
        if o["met"] is None:
            want = np.nan
        elif o.get("correct") is not None:
            want = float(o["correct"] and o["met"])
        else:
            want = o["accuracy"] if o["met"] else 0.0
        np.testing.assert_equal(lg.rewards[i], want)
    assert lg.first_unknown_reward() == 6
    assert lg.has_shadow.tolist() == [bool(i % 2) for i in range(20)]
    assert lg.shadow_actions[1] == 1 and lg.shadow_actions[0] == -1
    assert len(lg.selectors) == 1 and len(lg.shadow_selectors) == 1
    assert lg.line_numbers.tolist() == list(range(1, 21))
    # The dataclass parses what it writes.
    r0 = DecisionRecord.from_dict(json.loads(DecisionRecord.from_dict(recs[1]).to_json_line()))
    assert r0.to_dict() == recs[1]


def bad(tmp_path: Path, recs: list[dict[str, Any]], tail: str = "") -> DecisionLogError:
    with pytest.raises(DecisionLogError) as e:
        read_decision_log(write(tmp_path / "bad.jsonl", recs, tail))
    return e.value


def test_truncated_last_line(tmp_path: Path) -> None:
    full = json.dumps(record(3))
    e = bad(tmp_path, [record(0), record(1), record(2)], tail=full[: len(full) // 2])
    assert e.line == 4 and "truncated" in str(e)


def test_torn_line_in_the_middle(tmp_path: Path) -> None:
    full = json.dumps(record(1))
    path = tmp_path / "torn.jsonl"
    path.write_text(json.dumps(record(0)) + "\n" + full[:50] + json.dumps(record(2)) + "\n")
    with pytest.raises(DecisionLogError) as e:
        read_decision_log(path)
    assert e.value.line == 2 and "torn" in str(e.value)


def test_foreign_json(tmp_path: Path) -> None:
    e = bad(tmp_path, [{"event": "click", "user": 3}])
    assert e.line == 1 and e.field == "v" and "foreign" in str(e)
    e = bad(tmp_path, [record(0), [1, 2, 3]])  # type: ignore[list-item]
    assert e.line == 2 and "object" in str(e)


def test_old_log_without_probabilities(tmp_path: Path) -> None:
    r = record(0)
    del r["probabilities"]
    e = bad(tmp_path, [record(1), r])
    assert e.line == 2 and e.field == "probabilities" and "propensities" in str(e)


@pytest.mark.parametrize(
    ("change", "fld", "why"),
    [
        ({"probabilities": [0.5, 0.3, 0.1]}, "probabilities", "sum to 0.9"),
        ({"probabilities": [0.5, 0.5]}, "probabilities", "expected 3 values"),
        ({"probabilities": [0.5, "x", 0.5]}, "probabilities[1]", "finite number"),
        ({"action": 3}, "action", "[0, 3)"),
        ({"action": 0, "model_id": "b"}, "model_id", "not pool[0]"),
        ({"features": [1.0, 2.0]}, "features", f"expected {ObsLayout(3).dim} values"),
        ({"schema": "other v9"}, "schema", "unknown feature schema"),
        ({"pool_hash": "sha256:00"}, "pool_hash", "not the hash"),
        ({"source": "magic"}, "source", "expected one of"),
        ({"v": 2}, "v", "not supported"),
        ({"outcome": {"met": "yes"}}, "outcome.met", "true, false or null"),
        ({"outcome": {"met": True, "accuracy": 75.0}}, "outcome.accuracy", "fraction"),
        ({"selector": {"name": "x", "version": "y"}}, "selector.exploration", "missing"),
    ],
)
def test_bad_field(tmp_path: Path, change: dict[str, Any], fld: str, why: str) -> None:
    r = record(0)
    r.update(change)
    if "model_id" not in change and "action" in change and change["action"] < 3:
        r["model_id"] = POOL[change["action"]]
    e = bad(tmp_path, [record(1), record(2), r])
    assert e.line == 3 and e.field == fld and why in str(e), str(e)


def test_zero_propensity_of_logged_action(tmp_path: Path) -> None:
    r = record(0, action=0, model_id="a", probabilities=[0.0, 0.5, 0.5])
    e = bad(tmp_path, [r])
    assert e.field == "probabilities" and "probability 0" in str(e)


def test_pool_or_schema_changes_mid_log(tmp_path: Path) -> None:
    other = ("a", "b", "d")
    r = record(5, pool=list(other), pool_hash=pool_hash(other), model_id=None)
    r["model_id"] = other[r["action"]]
    e = bad(tmp_path, [record(0), record(1), r])
    assert e.line == 3 and e.field == "pool" and "changes mid-log" in str(e)


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DecisionLogError, match="empty"):
        read_decision_log(tmp_path / "empty.jsonl")
    with pytest.raises(DecisionLogError, match="cannot open"):
        read_decision_log(tmp_path / "nope.jsonl")


def test_runtime_module_stays_light() -> None:
    code = (
        "import sys, modi.runtime.decision_log\n"
        "heavy = ['torch', 'gymnasium', 'stable_baselines3', 'mlflow', 'hydra', 'scipy']\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_log_written_before_the_upload_relative_sla_reads_as_the_encoders_write_now(
    tmp_path: Path,
) -> None:
    """A record whose elapsed time counts from capture (``elapsed > t_input``, as logs were
    written before) reads with the time that is not the upload off the SLA; a current record
    (``elapsed == t_input``, or nothing before the upload) reads as it is."""
    from modi.runtime import features as F

    recs = [record(i) for i in range(3)]
    rows = [(300.0, 260.0, 50.0), (300.0, 50.0, 50.0), (200.0, 10.0, 40.0)]
    for r, (sla, el, up) in zip(recs, rows, strict=True):
        r["features"][F.SLA], r["features"][F.ELAPSED], r["features"][F.T_INPUT] = sla, el, up
    lg = read_decision_log(write(tmp_path / "old.jsonl", recs))
    np.testing.assert_array_equal(lg.features[:, F.SLA], [90.0, 300.0, 200.0])
    np.testing.assert_array_equal(lg.features[:, F.ELAPSED], [50.0, 50.0, 10.0])
    kept = [*range(F.T_INPUT, F.QUEUE), *range(F.R, lg.features.shape[1])]
    np.testing.assert_array_equal(lg.features[:, kept], [[r["features"][c] for c in kept]
                                                         for r in recs])  # fmt: skip
    assert DecisionRecord.from_dict(recs[0]).to_dict() == recs[0], "the record itself as logged"
