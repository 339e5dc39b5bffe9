"""The model test (tests/integration/test_model.py), long: many more examples and steps than CI.

    .venv/bin/python bench/model.py                            # 300 examples of up to 50 steps
    .venv/bin/python bench/model.py --examples 1000 --steps 80 --seed 7
    .venv/bin/python bench/model.py --database-url URL         # a server on which it may create databases

Random seeds (a new one each run unless --seed), and shrinking: a
discrepancy is reported as a minimal sequence of steps. Runs the test through
pytest with METERING_MODEL_PROFILE=long against a real service, and prints
the time it took, the outcomes by RPC it reached and the verdict.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=50, help="at most this many steps per example")
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: a new one)")
    parser.add_argument(
        "--database-url", help="PostgreSQL server URL (default: METERING_TEST_DATABASE_URL, else embedded)"
    )
    args = parser.parse_args()
    env = {
        **os.environ,
        "METERING_MODEL_PROFILE": "long",
        "METERING_MODEL_EXAMPLES": str(args.examples),
        "METERING_MODEL_STEPS": str(args.steps),
    }
    if args.database_url:
        env["METERING_TEST_DATABASE_URL"] = args.database_url
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/integration/test_model.py"]
    if args.seed is not None:
        command.append(f"--hypothesis-seed={args.seed}")
    print(f"model: {args.examples} examples of up to {args.steps} steps, seed {args.seed or 'random'}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    elapsed = time.monotonic() - started
    verdict = "the service agrees with the model" if result.returncode == 0 else "DISCREPANCY (see above)"
    print(f"model: {verdict}; {elapsed:.0f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
