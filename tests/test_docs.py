"""Every ``bash``/``sh`` and ``python`` block of README.md and docs/*.md runs as written.

Each block runs from its own scratch folder that holds this repository's files (symlinks: the
bundled data, ``run_backtest.py``, ``benchmarks/``, ``.venv``...), so what a block writes
(``results/``, a CSV of its own) lands in the scratch folder, never in the repository; the
package itself is imported from the repository (``PYTHONPATH``). Shell blocks run in
``bash -euo pipefail``, two at a time; python blocks run one after another in one process (one
import of pandas, backtrader and numba for all of them), each in a fresh namespace.

A block that cannot run offline (it installs, needs a server, a gateway, a cluster, or runs the
whole test suite) carries ``<!-- not run: the reason -->`` on the line right above its fence; the
reason must say something. The glob picks up every page in ``docs/`` as it lands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_LANGS = {"bash", "sh", "python"}
#: Fence languages that look runnable but would escape the runner: write bash/python instead.
MISSPELT_LANGS = {"shell", "console", "zsh", "py", "python3", "pycon", "sh-session"}
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(.*?)-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
#: Pages other engineers are writing; a link to them may point at nothing yet.
PENDING_PAGES: set[str] = set()
#: Top-level entries not linked into a scratch folder: the package comes from PYTHONPATH (so
#: numba's cache and imports see one path), outputs and VCS data stay out.
NOT_LINKED = {"m2k_bt", "results", ".git", ".pytest_cache", ".ruff_cache", "__pycache__"}
BLOCK_TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    reason: str | None  # why it is not run; None: it runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their language and not-run reason.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.md"
    >>> _ = p.write_text("<!-- not run: needs IB -->\\n```bash\\nls\\n```\\n\\n"
    ...                  "  ```python\\n  x = 1\\n  ```\\n")
    >>> [(b.line, b.lang, b.code, b.reason) for b in fenced_blocks(p)]
    [(2, 'bash', 'ls\\n', 'needs IB'), (6, 'python', 'x = 1\\n', None)]
    """
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^{indent}```\s*$", lines[j]):
            j += 1
        body = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NOT_RUN.match(lines[k]) if k >= 0 else None
        out.append(Block(path, i + 1, lang, body, marker.group(1).strip() if marker else None))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in doc_pages() for b in fenced_blocks(p)]


def scratch_folder(base: Path) -> Path:
    """A folder with the repository's files linked in (see NOT_LINKED) and ``.venv`` pointing
    at the Python running the tests."""
    base.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED and entry.name != ".venv":
            (base / entry.name).symlink_to(entry)
    (base / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return base


def block_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    env.pop("M2K_BT_OPEN", None)
    return env


# -------------------------------------------------------------------------------------------
# the convention itself
# -------------------------------------------------------------------------------------------


def test_blocks_are_found_and_every_not_run_marker_gives_a_reason():
    blocks = all_blocks()
    langs = {b.lang for b in blocks}
    assert not langs & MISSPELT_LANGS, f"write ```bash or ```python: {langs & MISSPELT_LANGS}"
    runnable = [b for b in blocks if b.lang in RUN_LANGS]
    assert len([b for b in runnable if b.reason is None]) >= 15  # the README alone has 13
    for b in runnable:
        if b.reason is not None:
            assert len(b.reason.split()) >= 2, f"{b.where}: say why it is not run"
    # a marker always sits right above a runnable fence (not a stray comment)
    for path in doc_pages():
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if NOT_RUN.match(line):
                following = next((x for x in lines[n + 1:] if x.strip()), "")
                m = FENCE.match(following)
                assert m and m.group(2) in RUN_LANGS, f"{path.name}:{n + 1}: marker on no block"


def test_readme_starts_with_the_two_commands_that_ci_runs():
    first = fenced_blocks(ROOT / "README.md")[0]
    commands = first.code.strip().splitlines()
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[all]" && .venv/bin/python '
        "run_backtest.py",
        '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest',
    ]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [ln for ln in ci if ln in commands] == commands  # both, in this order
    assert first.reason  # installs and runs every test: not run from here


def test_readme_fits_a_first_hour():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 400
    heads = [ln for ln in lines if ln.startswith("## ")]
    for wanted in ("## Your own strategy", "## Your data", "## Reading the report",
                   "## Research", "## Scale-out", "## Live"):
        assert any(h.startswith(wanted) for h in heads), wanted
    assert heads.index("## Your own strategy") <= 1  # near the top


def test_all_is_a_users_install_and_test_adds_the_tools():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: set(v.split()) for k, v in cfg["options.extras_require"].items()}

    def names(reqs: set[str]) -> set[str]:
        return {re.split(r"[\[<>=]", r)[0] for r in reqs}

    tools = {"pytest", "ruff", "selenium", "hypothesis", "jsonschema", "psutil",
             "pytest-xdist"}
    assert not names(extras["all"]) & tools
    assert {"optuna", "dask", "scipy", "psycopg", "ib_async"} <= names(extras["all"])
    assert extras["all"] <= extras["test"] and tools <= names(extras["test"])


def test_links_between_pages_resolve():
    link = re.compile(r"\]\(([^)#\s]+\.(?:md|png))(?:#[^)]*)?\)")
    for path in doc_pages():
        for target in link.findall(path.read_text()):
            if target.startswith("http"):
                continue
            resolved = (path.parent / target).resolve()
            rel = resolved.relative_to(ROOT).as_posix()
            assert resolved.exists() or rel in PENDING_PAGES, f"{path.name}: {target}"


def test_every_public_name_and_cli_flag_is_documented():
    import m2k_bt
    from m2k_bt.cli import backtest, ib, live, optimize

    text = "\n".join(p.read_text() for p in doc_pages())
    missing = [n for n in m2k_bt.__all__ if n[0].isupper()
               and not re.search(rf"[`.]{n}\b", text)]
    assert missing == [], f"public classes not in README/docs: {missing}"
    parsers = [backtest.build_parser(), optimize.build_optimize_parser(),
               optimize.build_walkforward_parser(), live.build_parser(), ib.build_ib_parser()]
    flags = {s for p in parsers for a in p._actions for s in a.option_strings
             if s.startswith("--") and s != "--help"}
    assert sorted(f for f in flags if f"`{f}" not in text and f"{f} " not in text) == []


# -------------------------------------------------------------------------------------------
# running them
# -------------------------------------------------------------------------------------------

_PY_RUNNER = r"""
import json, os, sys, traceback, io, contextlib
jobs = json.load(sys.stdin)
out = []
for job in jobs:
    os.chdir(job["cwd"])
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(job["code"], job["where"], "exec"), {"__name__": "__main__"})
        out.append({"where": job["where"], "ok": True, "log": buf.getvalue()[-2000:]})
    except BaseException:
        out.append({"where": job["where"], "ok": False,
                    "log": buf.getvalue()[-2000:] + traceback.format_exc()[-4000:]})
print("\n@@RESULTS@@" + json.dumps(out))
"""


def _run_bash(block: Block, cwd: Path) -> tuple[Block, bool, str]:
    try:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd,
                              env=block_env(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return block, False, f"timed out after {BLOCK_TIMEOUT} s"
    return block, proc.returncode == 0, (proc.stdout[-1500:] + proc.stderr[-3000:])


def _run_python(blocks: list[Block], cwds: list[Path]) -> list[tuple[Block, bool, str]]:
    jobs = [{"where": b.where, "code": b.code, "cwd": str(c)} for b, c in zip(blocks, cwds,
                                                                             strict=True)]
    proc = subprocess.run([sys.executable, "-c", _PY_RUNNER], input=json.dumps(jobs),
                          env=block_env(), capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT * 2)
    if "@@RESULTS@@" not in proc.stdout:
        return [(b, False, proc.stderr[-3000:]) for b in blocks]
    results = json.loads(proc.stdout.split("@@RESULTS@@", 1)[1])
    return [(b, r["ok"], r["log"]) for b, r in zip(blocks, results, strict=True)]


def test_every_unmarked_block_runs(tmp_path):
    runnable = [b for b in all_blocks() if b.lang in RUN_LANGS and b.reason is None]
    shell = [b for b in runnable if b.lang in ("bash", "sh")]
    python = [b for b in runnable if b.lang == "python"]
    folders = [scratch_folder(tmp_path / f"b{i}") for i in range(len(runnable))]
    shell_dirs, python_dirs = folders[:len(shell)], folders[len(shell):]
    with ThreadPoolExecutor(max_workers=2) as pool:
        py_future = pool.submit(_run_python, python, python_dirs)
        shell_results = list(pool.map(_run_bash, shell, shell_dirs))
        results = shell_results + py_future.result()
    failed = [f"--- {b.where} ({b.lang})\n{b.code}\n{log}" for b, ok, log in results if not ok]
    assert not failed, "blocks that do not run as written:\n" + "\n".join(failed)
    assert len(results) == len(runnable)


if __name__ == "__main__":  # list the blocks: python tests/test_docs.py
    for b in all_blocks():
        print(f"{b.where:32} {b.lang:8} {'run' if b.reason is None else 'not run: ' + b.reason}")
    sys.exit(pytest.main([__file__, "-q"]) if "--run" in sys.argv else 0)
