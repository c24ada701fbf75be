"""Mutation testing of the pure cores with mutmut 3 (`make mutate`): score per module.

Scope: a module is in when it is a *core* in the sense of STYLE.md point 2: plain
classes and functions with no I/O of their own and time passed in, so its unit tests can
pin every branch with exact values and a surviving mutant means a missing test.  That is
the limiter; the header, path, body-scanning and usage rules; the tokenizer's counting
and the texts it counts; the Prometheus maths, the counter maths of the collector
(readings.py, moved out of collector.py), the snapshot and its downsampler; the store
(SQLite, but synchronous and given `now`) and the hub's fan-out (memory channels only).
A core's shell functions are listed in its `skip` (the ASGI body reader, the store's
thread and maintenance wrappers).  Shells (the app, the forwarder, the servers, the
scrape loop, the CLI, the simulator) are out: their unit tests are slow or need sockets,
and a score there would mostly measure timeouts.

Every mutant runs only the selected unit tests that reached its function (mutmut's stats
phase finds which), forked from one process on every core.  A whole run is bounded by
--budget; mutants not reached by then count as not checked and fail the run.

Mutants that no behaviour can tell apart from the original are listed with the reason in
tests/mutation_equivalents.txt and left out of the score.  Each entry also quotes the
mutated line, so an entry whose mutant number moved (the source changed) is reported as
stale instead of silently excusing another mutant.  The run fails below MIN_SCORE.

    python bench/mutate.py                        # everything in SCOPE, fresh
    python bench/mutate.py proxy/paths.py         # one module (its own tests only)
    python bench/mutate.py --survivors            # retry the last run's survivors
    python bench/mutate.py --report               # print the last run's results again
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "zai_proxy"
EQUIVALENTS = ROOT / "tests" / "mutation_equivalents.txt"
MIN_SCORE = 90.0


@dataclass(frozen=True)
class Scope:
    tests: tuple[str, ...]  # files under tests/unit/
    skip: tuple[str, ...] = ()  # its shell: "name", "Class.method" or a glob ("Class.*")


# The modules in scope (paths under src/zai_proxy/) and the unit tests that pin them.
# Edit here when code moves between modules.
SCOPE: dict[str, Scope] = {
    "proxy/limiter.py": Scope(("test_limiter.py",)),
    "proxy/headers.py": Scope(("test_headers.py",)),
    "proxy/paths.py": Scope(("test_paths.py",)),
    "proxy/usage.py": Scope(("test_usage.py",)),
    # The JSON scanning that finds "model" and "stream"; read_body is the ASGI shell.
    "proxy/body.py": Scope(("test_usage.py",), skip=("read_body", "drain")),
    "proxy/tokenizer.py": Scope(("test_tokenizer.py", "test_accounting.py")),
    "proxy/texts.py": Scope(("test_tokenizer.py",)),
    "dashboard/promparse.py": Scope(("test_dashboard_promparse.py",)),
    "dashboard/snapshot.py": Scope(("test_dashboard_snapshot.py",)),
    # `Store` is the core (synchronous, `now` passed in); AsyncStore and the maintenance
    # loop are its trio shell.
    "dashboard/store.py": Scope(
        ("test_dashboard_store.py",), skip=("AsyncStore.*", "run_maintenance")
    ),
    "dashboard/hub.py": Scope(("test_dashboard_hub.py",)),
    # Relaying whole SSE events (pure).
    "proxy/sse.py": Scope(("test_sse.py",)),
    # Per-target state and per-variant tick bookkeeping (pure; time passed in).
    "dashboard/collector.py": Scope(("test_dashboard_collector.py", "test_dashboard_discovery.py")),
    # The counter maths that was collector.py's: reading two scrapes, summing readings.
    "dashboard/readings.py": Scope(("test_dashboard_collector.py", "test_dashboard_hardening.py")),
}

# Tests that assert wall-clock speed: mutmut's trampolines slow every call in scope, so
# they fail on the unmutated code and would count every mutant they reach as killed.
DESELECT = (
    "tests/unit/test_tokenizer.py::test_counting_a_200k_token_request_never_blocks_the_loop_over_10ms",
)

KILLED = {"killed", "timeout", "segfault"}  # the tests noticed (a hang or a crash counts)


def module_name(path: str) -> str:
    return f"{PACKAGE}." + path.removesuffix(".py").replace("/", ".")


def check_scope(paths: list[str]) -> None:
    """Stop before a long run when SCOPE no longer matches the code (code moved)."""
    problems = []
    for path in paths:
        if not (ROOT / "src" / PACKAGE / path).exists():
            problems.append(f"{path} does not exist")
            continue
        names = functions(path)
        problems += [
            f"{path} has no {pattern}"
            for pattern in SCOPE[path].skip
            if not fnmatch.filter(names, pattern)
        ]
        problems += [
            f"tests/unit/{test} does not exist"
            for test in SCOPE[path].tests
            if not (ROOT / "tests" / "unit" / test).exists()
        ]
    if problems:
        sys.exit("SCOPE in bench/mutate.py is out of date: " + "; ".join(problems))


def functions(path: str) -> list[str]:
    """Top-level functions and methods of a module, as "name" or "Class.method"."""
    tree = ast.parse((ROOT / "src" / PACKAGE / path).read_text())
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append(node.name)
        elif isinstance(node, ast.ClassDef):
            out += [
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
    return out


def mutant_globs(path: str, scope: Scope) -> list[str]:
    prefix = module_name(path)
    if not scope.skip:
        return [f"{prefix}.*"]
    names = functions(path)
    globs = []
    for function in names:
        if any(fnmatch.fnmatchcase(function, pattern) for pattern in scope.skip):
            continue
        cls, _, name = function.rpartition(".")
        mangled = f"xǁ{cls}ǁ{name}" if cls else f"x_{name}"
        globs.append(f"{prefix}.{mangled}__mutmut_*")
    return globs


@dataclass(frozen=True)
class Equivalent:
    name: str
    line: str  # the mutated line, stripped, as the mutant has it
    reason: str


def load_equivalents() -> list[Equivalent]:
    """`name | mutated line | reason` per line (a deleting mutant's line is "- " and the
    line it deletes); `#` starts a comment line."""
    out = []
    if not EQUIVALENTS.exists():
        return out
    for number, raw in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        # The line itself may hold " | " (a union type): split off the name and the reason.
        name, _, rest = raw.partition(" | ")
        line, _, reason = rest.rpartition(" | ")
        parts = [name.strip(), line.strip(), reason.strip()]
        if not all(parts):
            sys.exit(f"{EQUIVALENTS}:{number}: expected 'name | mutated line | reason'")
        out.append(Equivalent(*parts))
    return out


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    return (
        [line[1:].strip() for line in body if line.startswith("-")],
        [line[1:].strip() for line in body if line.startswith("+")],
    )


def fingerprint(diff: str) -> str:
    """The mutated line, or "- " and the line a mutant deletes."""
    removed, added = changed_lines(diff)
    if added:
        return added[0]
    return "- " + removed[0] if removed else ""


def configure(paths: list[str]) -> None:
    from mutmut.configuration import config

    cfg = config()  # defaults ([tool.mutmut] is not used: this file is the one config)
    cfg.source_paths = [Path("src")]
    cfg.resolved_mutated_source_paths = [ROOT / "mutants" / "src"]
    cfg.only_mutate = [f"src/{PACKAGE}/{path}" for path in paths]
    tests = sorted({f"tests/unit/{test}" for path in paths for test in SCOPE[path].tests})
    cfg.pytest_add_cli_args_test_selection = tests
    cfg.pytest_add_cli_args = ["-p", "no:cacheprovider"]
    cfg.pytest_add_cli_args += [arg for test in DESELECT for arg in ("--deselect", test)]
    cfg.use_git_change_detection = False


class OutOfTime(Exception):
    pass


def run(globs: list[str], budget: float, children: int) -> bool:
    """Run mutmut on `globs`; False if the budget ran out first."""
    import mutmut.__main__ as mutmut_main

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # mutmut stops its workers and keeps what it has

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        mutmut_main._run(globs, children)
    except KeyboardInterrupt:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return True


@dataclass
class Row:
    total: int = 0
    killed: int = 0
    survived: int = 0
    unchecked: int = 0
    equivalent: int = 0

    @property
    def score(self) -> float:
        scored = self.killed + self.survived
        return 100.0 * self.killed / scored if scored else 100.0


def report(paths: list[str], show_diffs: bool) -> bool:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    equivalents = {e.name: e for e in load_equivalents()}
    rows: dict[str, Row] = {}
    survivors: list[tuple[str, str]] = []
    stale: list[str] = []
    for path in paths:
        row = rows[path] = Row()
        source = Path("src") / PACKAGE / path
        data = SourceFileMutationData(path=source)
        data.load()
        globs = mutant_globs(path, SCOPE[path])
        for name, exit_code in sorted(data.exit_code_by_key.items()):
            if not any(fnmatch.fnmatch(name, glob) for glob in globs):
                continue
            row.total += 1
            status = status_by_exit_code[exit_code]
            if name in equivalents:
                if equivalents[name].line == fingerprint(get_diff_for_mutant(name, path=source)):
                    row.equivalent += 1
                    continue
                stale.append(name)
            if status in KILLED:
                row.killed += 1
            elif status == "not checked":
                row.unchecked += 1
            else:  # survived, no tests, suspicious
                row.survived += 1
                survivors.append((name, get_diff_for_mutant(name, path=source)))
    known = {name for path in paths for name in _names(path)}
    stale += [name for name in equivalents if name not in known and _in_paths(name, paths)]

    if survivors:
        print("\nSurviving mutants (`.venv/bin/mutmut show NAME` shows one again):")
        for name, diff in survivors:
            removed, added = changed_lines(diff)
            print(f"  {name}")
            if show_diffs:
                for line in removed:
                    print(f"      - {line}")
                for line in added:
                    print(f"      + {line}")
    if stale:
        print(f"\nStale entries in {EQUIVALENTS.relative_to(ROOT)} (mutant gone or changed):")
        for name in stale:
            print(f"  {name}")

    print(f"\n{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} {'equiv':>6} ", end="")
    print(f"{'unchecked':>10} {'score':>7}")
    ok = True
    for path, row in rows.items():
        print(
            f"{path:28} {row.total:8} {row.killed:7} {row.survived:9} {row.equivalent:6} ", end=""
        )
        print(f"{row.unchecked:10} {row.score:6.1f}%")
        ok = ok and row.score >= MIN_SCORE and row.unchecked == 0
    total = Row(*(sum(getattr(r, f) for r in rows.values()) for f in Row.__dataclass_fields__))
    print(f"{'all':28} {total.total:8} {total.killed:7} {total.survived:9} ", end="")
    print(f"{total.equivalent:6} {total.unchecked:10} {total.score:6.1f}%")
    print(f"\nscore = killed / (killed + survived); equivalents excluded; goal >= {MIN_SCORE:g}%")
    return ok and not stale


def _names(path: str) -> list[str]:
    from mutmut.mutation.data import SourceFileMutationData

    data = SourceFileMutationData(path=Path("src") / PACKAGE / path)
    data.load()
    return list(data.exit_code_by_key)


def _in_paths(name: str, paths: list[str]) -> bool:
    return any(name.startswith(module_name(path) + ".") for path in paths)


def last_survivors(paths: list[str]) -> list[str]:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    names = []
    for path in paths:
        data = SourceFileMutationData(path=Path("src") / PACKAGE / path)
        data.load()
        globs = mutant_globs(path, SCOPE[path])
        names += [
            name
            for name, code in data.exit_code_by_key.items()
            if any(fnmatch.fnmatch(name, g) for g in globs)
            and status_by_exit_code[code] not in KILLED
        ]
    return sorted(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="paths under src/zai_proxy/ (default: SCOPE)")
    parser.add_argument("--budget", type=float, default=18 * 60, help="seconds for the whole run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--survivors", action="store_true", help="rerun last run's survivors")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument("--no-diffs", action="store_true", help="list survivors without lines")
    args = parser.parse_args()

    paths = args.modules or list(SCOPE)
    unknown = [path for path in paths if path not in SCOPE]
    if unknown:
        parser.error(f"not in SCOPE: {', '.join(unknown)}")
    os.chdir(ROOT)
    last_run = ROOT / "mutants" / "scope.json"
    if args.survivors or args.report:
        # mutmut forgets every verdict when the test selection changes: keep the last run's.
        if not last_run.exists():
            parser.error("no previous run")
        ran = json.loads(last_run.read_text())
        paths = [path for path in paths if path in ran] if args.modules else ran
        configure(ran)
    else:
        check_scope(paths)
        configure(paths)

    started = time.monotonic()
    finished = True
    if args.survivors:
        names = last_survivors(paths)
        if names:
            finished = run(names, args.budget, args.jobs)
        else:
            print("no survivors to rerun")
    elif not args.report:
        # Fresh: mutmut's cache keeps old verdicts when only the tests changed.  Every
        # mutant of the modules runs (a `skip`ped shell function's too, but no unit test
        # reaches those, so they cost nothing); the report counts SCOPE's only.
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        last_run.parent.mkdir()
        last_run.write_text(json.dumps(paths))
        finished = run([], args.budget, args.jobs)
    elapsed = time.monotonic() - started

    ok = report(paths, show_diffs=not args.no_diffs)
    if not args.report:
        print(f"run took {elapsed:.0f} s on {args.jobs} worker(s)", end="")
        print("" if finished else f" and was stopped by the {args.budget:g} s budget")
    return 0 if ok and finished else 1


if __name__ == "__main__":
    sys.exit(main())
