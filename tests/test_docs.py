"""The documentation site: a strict MkDocs build (warnings are errors), a page that references a
missing symbol fails it by name, and the rendered pages checked in headless Chromium."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "outputs" / "docs_screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e .[docs])")


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built from mkdocs.yml with ``--strict``."""
    out = tmp_path_factory.mktemp("site")
    r = _mkdocs_build(ROOT / "mkdocs.yml", out)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    return out


def test_strict_build_has_every_page_and_the_generated_tables(site: Path) -> None:
    from modi.runtime import device_features, features

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: Any) -> Iterator[str]:
        for item in nav:
            for value in item.values():
                if isinstance(value, str):
                    yield value
                else:
                    yield from pages(value)

    for page in pages(config["nav"]):
        html = site / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert html.is_file(), f"{page} was not rendered"
    env_page = (site / "environments" / "index.html").read_text()
    for schema in (
        features.REQUEST_FEATURES,
        features.MODEL_FEATURES,
        device_features.DEVICE_REQUEST_FEATURES,
        device_features.DEVICE_MODEL_FEATURES,
    ):
        for name, _unit, _ in schema:
            assert f"<code>{name}</code>" in env_page, f"environments: no row for {name}"
    assert "{{" not in env_page, "an unexpanded {{ ... }} call is left in environments.md"
    api = (site / "api" / "runtime" / "index.html").read_text()
    assert "modi.runtime.selector.Selector" in api


def _broken_site(tmp_path: Path, page: str) -> subprocess.CompletedProcess[str]:
    """Build a one-page site with the real configuration (theme, plugins, hooks)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    config.update(
        docs_dir=str(docs),
        nav=[{"Home": "index.md"}],
        hooks=[str(ROOT / "docs" / "hooks.py")],
    )
    config.pop("exclude_docs", None)
    for plugin in config["plugins"]:  # extension paths are relative to the config file
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            options = plugin["mkdocstrings"]["handlers"]["python"]["options"]
            options["extensions"] = [
                str(ROOT / e) if isinstance(e, str) and e.startswith("docs/") else e
                for e in options.get("extensions", [])
            ]
    cfg = tmp_path / "mkdocs.yml"
    cfg.write_text(yaml.safe_dump(config))
    return _mkdocs_build(cfg, tmp_path / "site")


@pytest.mark.parametrize(
    ("page", "named"),
    [
        ("# API\n\n::: modi.runtime.no_such_module\n", "modi.runtime.no_such_module"),
        (
            '# Env\n\n{{ feature_table("modi.runtime.features.NO_SUCH_TABLE") }}\n',
            "NO_SUCH_TABLE",
        ),
        ("# Links\n\nSee [the missing page](missing.md).\n", "missing.md"),
    ],
    ids=["missing-api-symbol", "missing-feature-schema", "missing-page-link"],
)
def test_a_page_with_a_broken_reference_fails_the_build_and_names_it(
    tmp_path: Path, page: str, named: str
) -> None:
    r = _broken_site(tmp_path, page)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"the build passed with a broken reference:\n{out}"
    assert named in out, f"the failure does not name {named!r}:\n{out}"


@pytest.fixture(scope="module")
def served_site(site: Path) -> Iterator[str]:
    """The built site on a localhost port (a thread of this process)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
)
@pytest.mark.parametrize(
    ("path", "shot", "needle"),
    [
        ("/", "home.png", "Where to start"),
        ("/environments/", "environments.png", "sla_ms"),
    ],
    ids=["home", "environments"],
)
def test_rendered_pages_in_headless_chromium(
    served_site: str, path: str, shot: str, needle: str
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
            response = page.goto(served_site + path, wait_until="networkidle")
            assert response is not None and response.ok, f"{path}: HTTP {response}"
            page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)

            # Layout: header, the navigation sidebar and the article are visible, side by side.
            for selector in (
                "header.md-header",
                "nav.md-nav--primary",
                "article.md-content__inner",
            ):
                assert page.locator(selector).first.is_visible(), f"{path}: {selector} hidden"
            nav = page.locator("nav.md-nav--primary").first.bounding_box()
            main = page.locator("article.md-content__inner").first.bounding_box()
            assert nav is not None and main is not None
            assert nav["x"] + nav["width"] <= main["x"] + 1, f"{path}: navigation overlaps content"
            assert main["width"] > 400, f"{path}: content column is {main['width']} px wide"
            assert page.locator("nav.md-nav--primary a").count() >= 10, "navigation links missing"
            text = page.locator("article.md-content__inner").inner_text()
            assert needle in text, f"{path}: {needle!r} not in the rendered content"

            images = page.evaluate(
                "Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete,"
                " i.naturalWidth])"
            )
            broken = [src for src, complete, width in images if not complete or width == 0]
            assert not broken, f"{path}: images that did not load: {broken}"
            if path == "/":
                assert images, "the home page shows no figure"
        finally:
            browser.close()
    assert not errors, f"{path}: console errors: {errors}"
    assert (SCREENSHOTS / shot).stat().st_size > 10_000
