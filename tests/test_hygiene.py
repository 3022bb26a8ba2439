"""Repository hygiene: what the documented commands write is ignored by git, `make test` does not
reinstall when nothing changed (and does when a module is added), packaging raises no
deprecation warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Written by the commands of README.md and docs/ (serving quickstart, MLflow store, run folders,
# the documentation site).
WRITTEN_BY_DOCUMENTED_COMMANDS = (
    "serving_pool/",
    "selector.onnx",
    "selectors/",
    "decisions.jsonl",
    "runs/",
    "mlflow.db",
    "outputs/",
    "site/",
    "outputs/docs_screenshots/home.png",
)


def _git_checkout() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


@pytest.mark.skipif(not _git_checkout(), reason="not a git checkout (no .git or no git)")
@pytest.mark.parametrize("path", WRITTEN_BY_DOCUMENTED_COMMANDS)
def test_documented_outputs_are_git_ignored(path: str) -> None:
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, check=False)
    assert r.returncode == 0, f"{path} is written by a documented command but not in .gitignore"


def _make(*args: str, cwd: Path) -> str:
    r = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_test_does_not_reinstall_when_nothing_changed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    stamp = Path(_make("-s", "print-stamp", f"VENV={venv}", cwd=ROOT).strip())
    assert stamp.parent == venv
    stamp.parent.mkdir(parents=True)
    stamp.touch()  # newer than pyproject.toml: the install is up to date
    plan = _make("-n", "test", f"VENV={venv}", cwd=ROOT)
    assert "pytest" in plan
    assert "pip install" not in plan, f"`make test` reinstalls with an up-to-date stamp:\n{plan}"
    stamp.unlink()
    plan = _make("-n", "test", f"VENV={venv}", cwd=ROOT)
    assert "pip install" in plan, "`make test` without a stamp must install the project"


@needs_make
def test_install_stamp_follows_the_package_files(tmp_path: Path) -> None:
    """Strict editable installs do not see new modules: the stamp must change with them."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "a.py").write_text("")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("a: 1\n")

    def stamp() -> str:
        return _make("-s", "print-stamp", cwd=tmp_path).strip()

    first = stamp()
    assert stamp() == first
    (tmp_path / "runtime" / "a.py").write_text("x = 1\n")  # an edit: the symlink sees it
    assert stamp() == first
    (tmp_path / "runtime" / "b.py").write_text("")  # a new module
    second = stamp()
    assert second != first
    (tmp_path / "conf" / "y.yaml").write_text("b: 2\n")  # a new config file
    assert stamp() != second
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert stamp() not in (first, second)


def test_packaging_metadata_raises_no_deprecation_warning() -> None:
    code = (
        "import warnings\n"
        "from setuptools.config.pyprojecttoml import apply_configuration\n"
        "from setuptools.dist import Distribution\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    apply_configuration(Distribution(), 'pyproject.toml')\n"
        "for x in w:\n"
        "    if issubclass(x.category, DeprecationWarning):\n"
        "        print(x.category.__name__, str(x.message).splitlines()[0])\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == "", f"pyproject.toml deprecation warnings:\n{r.stdout}"


def test_wheel_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    """A wheel of the project (from a copy of its packaged files) builds with no warning from
    setuptools (deprecations, "package would be ignored", ...) and ships every config file."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = set(meta["tool"]["setuptools"]["package-dir"].values())
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for d in sorted(dirs):
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "w"), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    warnings = [
        line.strip()
        for line in (r.stdout + r.stderr).splitlines()
        if "Warning:" in line and ("setuptools" in line or "BuildBackend" in line)
    ]
    assert not warnings, "setuptools warns while building the wheel:\n" + "\n".join(warnings)
    import zipfile

    (wheel,) = (tmp_path / "w").glob("modi-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    expected = {
        f"modi/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert expected <= shipped, f"config files missing from the wheel: {sorted(expected - shipped)}"
