"""Break each guarantee on purpose and check that its tests notice.

Each `tests/mutants/*.patch` is a small patch that breaks one row of `docs/guarantees.md`. Before its diff it says
which row it breaks and which tests must then fail:

    Row: one-charge-per-confirm
    Tests: tests/discord/test_confirm.py::test_confirm_pressed_twice_at_once_makes_one_job

    diff --git a/cogs/video.py b/cogs/video.py
    ...

`python -m tests.mutants` copies the working tree (tracked and untracked files, not ignored ones) into a temporary
folder once per patch, applies the patch there, runs the row's tests and reports every patch whose tests still pass
("survived"), every patch that no longer applies, and every row of the guarantees table without a patch. The
unmutated tests are run first: a test that fails without a patch proves nothing. Exit status 1 if anything is off.

    python -m tests.mutants                 # every patch
    python -m tests.mutants confirm-twice   # only the patches whose file name contains one of these words
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GUARANTEES = ROOT / "docs" / "guarantees.md"


@dataclass(frozen=True)
class Mutant:
    path: Path
    row: str
    tests: tuple[str, ...]
    text: str  # read once at the start: the run does not see edits made while it goes

    @property
    def name(self) -> str:
        return self.path.stem


def read_mutant(path: Path) -> Mutant:
    text = path.read_text()
    header = text.split("\ndiff --git", 1)[0]
    fields = dict(re.findall(r"^(Row|Tests):\s*(.+)$", header, re.MULTILINE))
    if "Row" not in fields or "Tests" not in fields or "diff --git" not in text:
        raise SystemExit(f"{path.name}: needs a 'Row:' line, a 'Tests:' line and a diff")
    return Mutant(path, fields["Row"].strip(), tuple(fields["Tests"].split()), text)


def table_rows() -> set[str]:
    """The row ids the guarantees table names: each row ends with its mutant's file, `tests/mutants/ID.patch`."""
    return set(re.findall(r"tests/mutants/([\w.-]+)\.patch", GUARANTEES.read_text()))


def rows_without_patch() -> list[str]:
    """The table's rows whose last cell names no patch (the start of each, to say which)."""
    rows = [line for line in GUARANTEES.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return [row[2:70] for row in rows[1:] if "tests/mutants/" not in row.rsplit("|", 2)[-2]]


def copy_tree(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def run_tests(tree: Path, tests: tuple[str, ...], workers: str) -> subprocess.CompletedProcess[str]:
    # The copy's own code comes first on the path (the editable install points at the checkout).
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", workers, *tests]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)


def verdict(outcome: subprocess.CompletedProcess[str]) -> str:
    # Only a failing test counts: an error while collecting (a patch that breaks the syntax) proves nothing.
    if outcome.returncode == 0:
        return "SURVIVED"
    if re.search(r"\b\d+ failed\b", outcome.stdout):
        return "caught"
    return f"pytest exit {outcome.returncode} with no failing test: " + outcome.stdout.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", help="only the patches whose name contains one of these")
    parser.add_argument("--workers", default="2", help="pytest-xdist workers per run (default 2)")
    args = parser.parse_args()

    mutants = [read_mutant(p) for p in sorted(HERE.glob("*.patch"))]
    if args.words:
        mutants = [m for m in mutants if any(w in m.name for w in args.words)]
    problems: list[str] = []
    if not args.words:
        rows, named = table_rows(), {m.name for m in mutants}
        problems += [f"{r}: named in docs/guarantees.md but has no patch" for r in sorted(rows - named)]
        problems += [f"{n}: a patch that no row of docs/guarantees.md names" for n in sorted(named - rows)]
        problems += [f"a row with no patch: {row}..." for row in rows_without_patch()]

    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        baseline_tree = Path(scratch) / "baseline"
        copy_tree(baseline_tree)
        every_test = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
        started = time.monotonic()
        baseline = run_tests(baseline_tree, every_test, args.workers)
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:])
            print("the unmutated tests fail: fix them first", file=sys.stderr)
            return 1
        print(f"baseline: {len(every_test)} test selections pass ({time.monotonic() - started:.0f} s)")

        print("| mutant | row | result | seconds |")
        print("|---|---|---|---|")
        for mutant in mutants:
            tree = Path(scratch) / mutant.name
            shutil.copytree(baseline_tree, tree)
            applied = subprocess.run(["git", "apply"], input=mutant.text, cwd=tree, capture_output=True, text=True)
            started = time.monotonic()
            if applied.returncode != 0:
                result = "does not apply: " + applied.stderr.strip().splitlines()[0]
            else:
                outcome = run_tests(tree, mutant.tests, args.workers)
                result = verdict(outcome)
            print(f"| {mutant.name} | {mutant.row} | {result} | {time.monotonic() - started:.0f} |", flush=True)
            if result != "caught":
                problems.append(f"{mutant.name}: {result}")
            shutil.rmtree(tree, ignore_errors=True)

    for problem in problems:
        print("problem:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
