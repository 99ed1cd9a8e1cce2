"""Long fuzz run of the parsers and validators (issues 11 and 24): the suite's property tests,
many more examples, random (or ``--seed``) instead of derandomized.

    .venv/bin/python benchmarks/fuzz_parsers.py                      # 2,000 examples per test
    .venv/bin/python benchmarks/fuzz_parsers.py --examples 20000 --seed 7 -k gzip

Runs ``tests/test_fuzz_parsers.py`` under pytest with ``M2K_FUZZ_EXAMPLES``/``M2K_FUZZ_SEED``
set, prints one line per test (result, seconds) and hypothesis' statistics, and exits with
pytest's status. A failure prints the falsifying example; add it to the suite as a regression
test before fixing it.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000, help="examples per test (2000)")
    p.add_argument("--seed", type=int, help="hypothesis seed (default: a random one, printed)")
    p.add_argument("-k", dest="select", help="only tests matching this pytest -k expression")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    env = dict(os.environ, M2K_FUZZ_EXAMPLES=str(args.examples), M2K_FUZZ_SEED=str(seed))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_fuzz_parsers.py"),
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--durations=0",
           "--hypothesis-show-statistics", "-W", "ignore::UserWarning"]  # fmt: skip
    if args.select:
        cmd += ["-k", args.select]
    print(f"fuzz: {args.examples} examples per test, seed {seed}", flush=True)
    return subprocess.call(cmd, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
