"""``modi-promote``: the decision from ``modi-ope --out``'s JSON, the MLflow alias move and the
server's reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modi.serving.promote import PromotionError, decide, main


def _evidence(lo: float, value: float = 0.7, champion: float = 0.6) -> dict[str, Any]:
    return {
        "candidates": [
            {"name": "learned", "path": "/x/learned.onnx",
             "estimates": {"dr": {"value": value, "lo": lo, "hi": value + 0.05},
                           "ips": {"value": value, "lo": lo - 0.1, "hi": value + 0.1}}},
            {"name": "other", "path": "other.onnx",
             "estimates": {"dr": {"value": 0.65, "lo": 0.6, "hi": 0.7}}},
        ],
        "logging_policy": {"value": champion, "n": 100},
    }  # fmt: skip


def test_promotes_only_when_the_lower_bound_beats_the_champion() -> None:
    assert decide(_evidence(lo=0.62), "learned").promote
    assert not decide(_evidence(lo=0.59), "learned").promote
    assert not decide(_evidence(lo=0.62), "learned", margin=0.05).promote
    assert not decide(_evidence(lo=0.62), "learned", estimator="ips").promote
    v = decide(_evidence(lo=0.66), "learned.onnx", champion="other")
    assert v.promote and v.champion_value == 0.65 and v.champion_from == "candidate other"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("candidates"), "'candidates' list"),
        (lambda d: d["candidates"][0]["estimates"].pop("dr"), "no 'dr' estimate"),
        (lambda d: d["candidates"][0]["estimates"]["dr"].pop("lo"), "missing 'lo'"),
        (
            lambda d: d["candidates"][0]["estimates"].update(dr={"error": "cannot estimate"}),
            "refused by modi-ope: cannot estimate",
        ),
        (lambda d: d["candidates"][0]["estimates"]["dr"].update(lo="high"), "finite number"),
        (lambda d: d["logging_policy"].update(value=None), "logging_policy.value"),
        (lambda d: d.pop("logging_policy"), "logging_policy: missing 'value'"),
        (lambda d: d["candidates"][0].update(name="zzz", path="zzz"), "no candidate 'learned'"),
    ],
)
def test_bad_evidence_names_the_field(mutate: Any, needle: str) -> None:
    d = _evidence(lo=0.62)
    mutate(d)
    with pytest.raises(PromotionError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        decide(d, "learned")


def test_cli_prints_one_json_line_and_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "ope.json"
    f.write_text(json.dumps(_evidence(lo=0.61)))
    main([str(f), "--challenger", "learned"])
    out = json.loads(capsys.readouterr().out)
    assert out["promote"] is True and out["version"] is None
    f.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        main([str(f), "--challenger", "learned"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not JSON" in err[0]


def test_the_alias_moves_in_the_registry_and_the_server_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient
    from serving_helpers import TOKEN, build_tiny_pool

    import modi.serving.promote as promote
    from modi.experiments.serve import create_app
    from modi.serving import InferenceServer, ServeConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("modi-selector")
    tiny = build_tiny_pool(tmp_path / "pool")
    v1 = client.create_model_version("modi-selector", str(tiny["sel"] / "a.onnx"))
    v2 = client.create_model_version("modi-selector", str(tiny["sel"] / "b.onnx"))
    client.set_registered_model_alias("modi-selector", "champion", v1.version)
    client.set_registered_model_alias("modi-selector", "challenger", v2.version)

    server = InferenceServer(
        ServeConfig(
            pool_dir=tiny["dir"],
            pool_yaml=tiny["yaml"],
            selector=tiny["sel"] / "a.onnx",
            admin_token=TOKEN,
        )
    )
    f = tmp_path / "ope.json"
    with TestClient(create_app(server), base_url="http://modi.test") as http:
        monkeypatch.setenv("MODI_ADMIN_TOKEN", TOKEN)
        real = promote.reload_server
        monkeypatch.setattr(
            promote, "reload_server", lambda url, token, sel=None: real(url, token, sel, http=http)
        )
        args = ["--challenger", "learned", "--model", "modi-selector", "--tracking-uri", uri,
                "--server", "http://modi.test", "--reload-selector", "b.onnx"]  # fmt: skip
        f.write_text(json.dumps(_evidence(lo=0.5)))  # not better: nothing moves
        main([str(f), *args])
        out = json.loads(capsys.readouterr().out)
        assert out["promote"] is False and out["reloaded"] is None
        champ = client.get_model_version_by_alias("modi-selector", "champion").version
        assert champ == v1.version and "a.onnx" in server.selector_label
        f.write_text(json.dumps(_evidence(lo=0.65)))
        main([str(f), *args])
        out = json.loads(capsys.readouterr().out)
    assert out["promote"] is True and out["reloaded"] is True
    assert out["version"] == str(v2.version) and out["previous_version"] == str(v1.version)
    assert client.get_model_version_by_alias("modi-selector", "champion").version == v2.version
    prev = client.get_model_version_by_alias("modi-selector", "previous-champion").version
    assert prev == v1.version
    assert "b.onnx" in server.selector_label
