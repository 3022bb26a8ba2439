"""``modi-serve --help`` and ``modi-client --help`` are complete, and ``modi-client`` shows a
progress bar while it runs."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")


def _check_parser(p: argparse.ArgumentParser) -> None:
    assert p.description and p.description.rstrip().endswith("."), p.description
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{p.prog} {action.option_strings}: no help text"
        assert not action.help.rstrip().endswith((",", "(", "-", "and", "or")), action.help


def test_modi_serve_help_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    from modi.experiments.serve import build_parser

    p = build_parser()
    _check_parser(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = capsys.readouterr().out
    for opt in ("--shadow", "--explore", "--allow-fallback", "--body-timeout-s", "--max-decodes"):
        assert opt in text


def test_modi_client_help_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    from modi.experiments import client

    with pytest.raises(SystemExit):
        client.main(["--help"])
    text = capsys.readouterr().out
    assert "--no-progress" in text and "Emulated mobile clients" in text
    # every option has its help: argparse prints it on the option's line or the next
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("--") and "  " not in line.strip():
            assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 10), line


def test_modi_client_shows_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx
    from serving_helpers import build_tiny_pool

    from modi.experiments.client import run_clients
    from modi.experiments.serve import create_app
    from modi.serving import InferenceServer, ServeConfig

    tiny = build_tiny_pool(tmp_path, selectors=False)
    app = create_app(InferenceServer(ServeConfig(pool_dir=tiny["dir"], pool_yaml=tiny["yaml"])))
    kw: dict[str, Any] = {"network": "campus", "images": "digits",
                          "transport": httpx.ASGITransport(app=app)}  # fmt: skip
    rep, _ = asyncio.run(run_clients("http://modi.test", 400.0, 6, 2, progress=True, **kw))
    assert rep.requests == 6 and rep.failed == 0, rep.errors
    err = capsys.readouterr().err
    assert "requests:" in err and "/6 [" in err, err
    asyncio.run(run_clients("http://modi.test", 400.0, 2, 1, progress=False, **kw))
    assert "requests" not in capsys.readouterr().err


def test_the_serving_module_imports_no_training_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, modi.serving, modi.serving.promote, modi.experiments.serve\n"
        "heavy = [m for m in ('torch', 'gymnasium', 'stable_baselines3', 'mlflow', 'hydra')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"modi.serving imported {out.stdout.strip()}"
