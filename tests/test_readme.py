"""The README as a user guide: its code blocks run as written.

Every ```python block runs, as written, in a fresh interpreter in a scratch directory (with an
exported selector there as ``selector.onnx``, as after ``modi-train``). Every command of every
```bash block is checked without doing the long work: make targets exist (``make -n``), Hydra
apps accept the overrides (``--cfg job`` composes the config and validates every key and group
without running), other commands exist and know every ``--option`` used (``--help``). A block
that no longer runs fails the test that carries its number and first line. The README stays a
guide: at most 250 lines.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
MAX_LINES = 250

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence

    @property
    def name(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"README.md:{self.line} ```{self.lang}: {first.strip()[:60]}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced ``bash`` and ``python`` blocks of ``text`` in order."""
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in _FENCE.finditer(text)
        if m.group(1) in ("bash", "python")
    ]


BLOCKS = readme_blocks(README.read_text())
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def test_readme_is_a_short_guide_with_runnable_blocks() -> None:
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}); move detail to docs/"
    assert PYTHON and BASH, "the README lost its quickstart code blocks"


def test_readme_links_point_to_files() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


@pytest.mark.parametrize("block", PYTHON, ids=[b.name for b in PYTHON])
def test_python_block_runs_as_written(
    block: Block, tmp_path: Path, bandit_selector_files: dict[str, Path]
) -> None:
    shutil.copy(bandit_selector_files["linucb"], tmp_path / "selector.onnx")
    script = tmp_path / "block.py"
    script.write_text(block.code)
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, f"{block.name} fails:\n{r.stdout}\n{r.stderr}"


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments and ``VAR=value`` prefixes
    dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n", " ", code)
    out: list[list[str]] = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            cmd, words = words[:cut], words[cut + 1 :]
            while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
                cmd = cmd[1:]
            if cmd:
                out.append(cmd)
    return out


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _executable(name: str) -> list[str] | None:
    if name == "python":
        return [sys.executable]
    path = BIN / name
    if path.exists():
        return [str(path)]
    found = shutil.which(name)
    return [found] if found else None


def _is_hydra_app(name: str) -> bool:
    """Whether console script ``name`` is a Hydra app (its module uses ``@hydra.main``)."""
    eps = importlib.metadata.entry_points(group="console_scripts", name=name)
    for ep in eps:
        spec = importlib.util.find_spec(ep.module)
        if spec is not None and spec.origin and "hydra.main" in Path(spec.origin).read_text():
            return True
    return False


def check_command(cmd: list[str], where: str) -> None:
    """Check one README shell command without running its work (see the module docstring)."""
    if cmd[0] == "make":
        targets = [w for w in cmd[1:] if not w.startswith("-") and "=" not in w]
        r = _run(["make", "-n", *targets])
        assert r.returncode == 0, f"{where}: `{shlex.join(cmd)}`: {r.stderr}"
        return
    exe = _executable(cmd[0])
    assert exe is not None, f"{where}: `{cmd[0]}` is not installed (not a console script?)"
    args = cmd[1:]
    if cmd[0] == "python":
        assert args[:1] == ["-m"], f"{where}: only `python -m module` commands are checked"
        exe, args = [*exe, "-m", args[1]], args[2:]
    elif cmd[0] == "mlflow":
        exe, args = [*exe, args[0]], args[1:]
    if _is_hydra_app(cmd[0]):
        overrides = [a for a in args if a not in ("-m", "--multirun", "--help")]
        overrides = [re.sub(r"=([^=\[,]+),[^\[]*$", r"=\1", a) for a in overrides]  # a sweep
        r = _run([*exe, *overrides, "--cfg", "job"])
        assert r.returncode == 0, (
            f"{where}: `{shlex.join(cmd)}` is refused by Hydra:\n{r.stdout[-2000:]}\n"
            f"{r.stderr[-2000:]}"
        )
        return
    help_ = _run([*exe, "--help"])
    assert help_.returncode == 0, f"{where}: `{shlex.join(cmd)} --help` fails:\n{help_.stderr}"
    for a in args:
        if a.startswith("--"):
            option = a.split("=", 1)[0]
            assert option in help_.stdout, (
                f"{where}: `{shlex.join(cmd)}` uses {option}, which `--help` does not list"
            )


@pytest.mark.parametrize("block", BASH, ids=[b.name for b in BASH])
def test_bash_block_commands_exist_with_their_options(block: Block) -> None:
    cmds = commands(block.code)
    assert cmds, f"{block.name}: no command"
    for cmd in cmds:
        check_command(cmd, block.name)


def test_a_broken_block_is_caught_and_named(tmp_path: Path) -> None:
    """The checks fail on a command or option that does not exist, naming the block."""
    text = "x\n```bash\nmodi-profile pool --no-such-option 3\n```\n"
    (block,) = readme_blocks(text)
    assert block.name.startswith("README.md:2 ```bash: modi-profile")
    with pytest.raises(AssertionError, match=r"README\.md:2 .*--no-such-option"):
        check_command(commands(block.code)[0], block.name)
    with pytest.raises(AssertionError, match="not installed"):
        check_command(["modi-no-such-app"], block.name)
    with pytest.raises(AssertionError, match="refused by Hydra"):
        check_command(["modi-compare", "no_such_key=1"], block.name)
