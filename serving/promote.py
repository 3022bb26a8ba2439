"""``modi-promote``: move the MLflow registry alias ``@champion`` to a challenger only when
off-policy evaluation says it is better, then tell the server to reload.

The evidence is the JSON file ``modi-ope --out`` writes::

    {"candidates": [{"name", "path", "estimates": {"dr": {"value", "lo", "hi"}, ...}}, ...],
     "logging_policy": {"value", ...}}

The challenger is promoted when its estimate's lower bound (``lo`` of ``--estimator``, default
``dr``) beats the champion's estimate by more than ``--margin``. The champion's estimate is the
logging policy's value (the log was served by the champion) or, with ``--champion NAME``,
another candidate's ``value``. Then the registered model's ``@champion`` alias moves to the
version that ``@challenger`` (or ``--challenger-version``) names, the old champion keeps the
alias ``previous-champion``, and with ``--server URL`` the server reloads (``POST
/v1/admin/reload``; a server started with ``--selector models:/NAME@champion`` re-resolves the
alias). One JSON line on stdout says what was decided; exit 0 whether promoted or not, 2 on an
error (one line on stderr).

Usage::

    modi-promote ope.json --challenger learned.onnx --model modi-selector \\
        --tracking-uri sqlite:///mlflow.db --server http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class PromotionError(ValueError):
    """The evidence or the registry does not allow a decision; the message says why."""


@dataclass
class Verdict:
    """What ``modi-promote`` decided and why."""

    promote: bool
    challenger: str
    estimator: str
    challenger_lo: float
    challenger_value: float
    champion_value: float
    champion_from: str
    margin: float
    reason: str
    version: str | None = None
    previous_version: str | None = None
    reloaded: bool | None = None


def _num(doc: Any, key: str, where: str) -> float:
    if not isinstance(doc, dict) or key not in doc:
        raise PromotionError(f"{where}: missing {key!r}")
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PromotionError(f"{where}.{key}: expected a finite number, got {v!r:.60}")
    return float(v)


def decide(
    evidence: Any,
    challenger: str,
    estimator: str = "dr",
    champion: str | None = None,
    margin: float = 0.0,
) -> Verdict:
    """Compare the challenger's lower bound with the champion's estimate in ``evidence`` (the
    parsed ``modi-ope --out`` JSON); :class:`PromotionError` names a missing or bad field."""
    if not isinstance(evidence, dict) or not isinstance(evidence.get("candidates"), list):
        raise PromotionError("evidence: expected an object with a 'candidates' list")
    cands = evidence["candidates"]

    def find(name: str) -> tuple[int, dict[str, Any]]:
        for i, c in enumerate(cands):
            if isinstance(c, dict) and name in (c.get("name"), c.get("path"),
                                                 Path(str(c.get("path", ""))).name):  # fmt: skip
                return i, c
        names = [c.get("name") for c in cands if isinstance(c, dict)]
        raise PromotionError(f"evidence: no candidate {name!r} (candidates: {names})")

    i, cand = find(challenger)
    ests = cand.get("estimates")
    if not isinstance(ests, dict) or estimator not in ests:
        have = sorted(ests) if isinstance(ests, dict) else []
        raise PromotionError(
            f"evidence: candidates[{i}] has no {estimator!r} estimate (has {have}): the log may "
            "not support it"
        )
    where = f"candidates[{i}].estimates.{estimator}"
    if isinstance(ests[estimator], dict) and "error" in ests[estimator]:
        raise PromotionError(
            f"evidence: {where} is refused by modi-ope: {str(ests[estimator]['error'])[:200]}"
        )
    lo = _num(ests[estimator], "lo", where)
    value = _num(ests[estimator], "value", where)
    if champion is None:
        champ = _num(evidence.get("logging_policy"), "value", "logging_policy")
        champ_from = "logging_policy"
    else:
        j, c = find(champion)
        cest = c.get("estimates")
        if not isinstance(cest, dict) or estimator not in cest:
            raise PromotionError(f"evidence: candidates[{j}] has no {estimator!r} estimate")
        champ = _num(cest[estimator], "value", f"candidates[{j}].estimates.{estimator}")
        champ_from = f"candidate {champion}"
    ok = lo > champ + margin
    reason = f"{estimator} lower bound {lo:.4f} {'>' if ok else '<='} champion {champ:.4f}" + (
        f" + margin {margin:g}" if margin else ""
    )
    return Verdict(ok, challenger, estimator, lo, value, champ, champ_from, margin, reason)


def move_alias(
    model: str,
    challenger_alias: str = "challenger",
    challenger_version: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[str, str | None]:
    """Point ``@champion`` of registered ``model`` at the challenger's version (keeping the old
    one as ``@previous-champion``); returns ``(new, previous)`` versions."""
    try:
        from mlflow import MlflowClient
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PromotionError(
            f"moving the alias needs mlflow ({e}): pip install 'modi[train]'"
        ) from None
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if challenger_version is None:
            version = str(client.get_model_version_by_alias(model, challenger_alias).version)
        else:
            version = str(client.get_model_version(model, challenger_version).version)
    except Exception as e:
        raise PromotionError(f"registry: no challenger version of {model!r}: {e}") from None
    previous: str | None
    try:
        previous = str(client.get_model_version_by_alias(model, "champion").version)
    except Exception:
        previous = None
    client.set_registered_model_alias(model, "champion", version)
    if previous is not None and previous != version:
        client.set_registered_model_alias(model, "previous-champion", previous)
    return version, previous


def reload_server(url: str, token: str, selector: str | None = None, http: Any = None) -> None:
    """``POST {url}/v1/admin/reload`` (body ``{"selector": NAME}`` when given);
    :class:`PromotionError` if the server refuses."""
    import httpx

    body = {} if selector is None else {"selector": selector}
    client = http or httpx.Client(timeout=30.0)
    try:
        r = client.post(f"{url.rstrip('/')}/v1/admin/reload", json=body,
                        headers={"authorization": f"Bearer {token}"})  # fmt: skip
    except httpx.HTTPError as e:
        raise PromotionError(f"server {url}: {e}") from None
    if r.status_code != 200:
        raise PromotionError(f"server {url} refused the reload ({r.status_code}): {r.text[:200]}")


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="modi-promote",
        description="Move the MLflow alias @champion to a challenger only when its off-policy "
        "estimate's lower bound beats the champion's estimate, then reload the server.",
    )
    p.add_argument("evidence", type=Path, help="JSON written by modi-ope --out")
    p.add_argument("--challenger", required=True,
                   help="the candidate's name (or path) in the evidence")  # fmt: skip
    p.add_argument("--estimator", default="dr", help="estimate compared (default dr)")
    p.add_argument(
        "--champion",
        default=None,
        help="compare with this candidate's value instead of the logging policy's",
    )
    p.add_argument("--margin", type=float, default=0.0,
                   help="the lower bound must beat the champion by more than this")  # fmt: skip
    p.add_argument(
        "--model",
        default=None,
        help="registered MLflow model whose alias moves (omit: decide only)",
    )
    p.add_argument(
        "--challenger-alias",
        default="challenger",
        help="alias naming the challenger's version (default challenger)",
    )
    p.add_argument("--challenger-version", default=None, help="the version, instead of an alias")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI")
    p.add_argument("--server", default=None, help="server URL to reload after promotion")
    p.add_argument(
        "--reload-selector",
        default=None,
        help="file name the server reloads (default: its configured source)",
    )
    p.add_argument("--admin-token-env", default="MODI_ADMIN_TOKEN",
                   help="environment variable holding the server's admin token")  # fmt: skip
    a = p.parse_args(argv)
    try:
        try:
            evidence = json.loads(a.evidence.read_text())
        except OSError as e:
            raise PromotionError(f"{a.evidence}: {e.strerror or e}") from None
        except ValueError as e:
            raise PromotionError(f"{a.evidence}: not JSON: {e}") from None
        if not (math.isfinite(a.margin) and a.margin >= 0):
            raise PromotionError(f"--margin must be >= 0, got {a.margin}")
        v = decide(evidence, a.challenger, a.estimator, a.champion, a.margin)
        if v.promote and a.model:
            v.version, v.previous_version = move_alias(
                a.model, a.challenger_alias, a.challenger_version, a.tracking_uri
            )
        if v.promote and a.server:
            token = os.environ.get(a.admin_token_env)
            if not token:
                raise PromotionError(f"--server needs the admin token in ${a.admin_token_env}")
            reload_server(a.server, token, a.reload_selector)
            v.reloaded = True
    except PromotionError as e:
        print(f"modi-promote: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(asdict(v)))


if __name__ == "__main__":
    main()
