"""Mutation testing of the modules where a silent bug costs users most, one module at a time, with mutmut.

    python tools/mutate.py                       # every module in MODULES, all mutants (slow: hours on 2 cores)
    python tools/mutate.py scoring heads          # some modules
    python tools/mutate.py stores --sample 40     # a random sample of 40 of the module's mutants (seeded)
    python tools/mutate.py --list                 # the modules and the tests run against each

Each module runs in its own scratch copy of the repository (``--workdir``, default ``zsclip-mutate`` in the
system's temporary folder), with mutmut configured to mutate that module only and to run only the test files
that exercise it, so a mutant costs seconds, not the whole suite. The survivors are printed (``mutmut show
NAME`` in the module's scratch folder shows the diff) and a summary line per module is appended to ``--report``
(default ``mutation-report.txt`` in the working folder). Run again without ``--fresh``, it keeps mutmut's
verdicts and reruns only the mutants not yet detected against the working tree's current tests (the check that
new tests kill the survivors); a changed test list or mutated module needs ``--fresh``. Not part of CI: see
docs/testing.md for the last scores and the survivors judged equivalent.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module name → (file to mutate, test files that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "scoring": ("zsclip/scoring.py", ["tests/test_prompts_scoring.py", "tests/test_dds.py", "tests/test_controls.py"]),
    "stores": ("zsclip/stores.py", ["tests/test_stores.py", "tests/test_store_integrity.py"]),
    "llm": ("zsclip/llm.py", ["tests/test_llm.py"]),
    "methods-dds": ("zsclip/methods/dds.py", ["tests/test_dds.py"]),
    "methods-base": ("zsclip/methods/base.py", ["tests/test_method_params.py", "tests/test_method_contract.py"]),
    "methods-descriptions": ("zsclip/methods/descriptions.py", ["tests/test_prompts_scoring.py",
                                                                "tests/test_method_contract.py"]),
    "methods-waffle": ("zsclip/methods/waffle.py", ["tests/test_controls.py", "tests/test_method_contract.py"]),
    "methods-pool": ("zsclip/methods/pool.py", ["tests/test_pool.py", "tests/test_controls.py",
                                                "tests/test_method_contract.py"]),
    "audit": ("zsclip/audit.py", ["tests/test_audit.py"]),
    "context": ("zsclip/context.py", ["tests/test_heads_context.py", "tests/test_dds.py"]),
    "heads": ("zsclip/heads.py", ["tests/test_heads_context.py"]),
    "corpus-count": ("zsclip/corpus_count.py", ["tests/test_corpus.py", "tests/test_corpus_count.py",
                                                "tests/test_mutation_kills_corpus_count.py"]),
    # the evaluator's own tests: the rest of test_search.py runs whole searches (minutes per mutant)
    "search-evaluate": ("zsclip/search/evaluate.py", [
        "tests/test_search.py::test_template_set_fitness_equals_a_direct_numpy_computation",
        "tests/test_search.py::test_class_edits_recompute_only_edited_classes_and_match_a_full_evaluation",
        "tests/test_search.py::test_fitness_option_parsing", "tests/test_search_evaluator.py",
        "tests/test_mutation_kills_search_evaluate.py"]),
}


#: mutmut's verdicts that count as killed: a test failed, the tests ran past mutmut's timeout (a hang), or the
#: test process crashed (a segfault: e.g. a float array handed to a compiled kernel that expects integers)
DETECTED = ("killed", "timeout", "segfault")


def _copy_repository(dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files, copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    if dest.exists():
        shutil.rmtree(dest)
    for raw in files:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _configure(dest: Path, pattern: str, tests: list[str]) -> None:
    """Replace the copy's ``[tool.mutmut]`` table with one that mutates ``pattern`` and runs ``tests``."""
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    text = text.split("\n[tool.mutmut]")[0].rstrip() + "\n"
    quoted = lambda items: "[" + ", ".join(json.dumps(i) for i in items) + "]"  # noqa: E731
    text += ("\n[tool.mutmut]\nsource_paths = [\"zsclip\"]\n"
             f"only_mutate = {quoted([pattern])}\n"
             f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
             "pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-q\", \"-x\"]\n"
             # a mutant's tests may take far longer than in the stats run on a shared, loaded machine: a hang is
             # a verdict only after a minute more than mutmut's estimate
             "timeout_constant = 60.0\n"
             # mutmut's wall-clock deadline is (estimate + constant) · multiplier · 2: its default multiplier (15)
             # lets a mutant that sleeps or waits forever (a retry delay, an event never set) hold the worker
             # for half an hour; 2 gives such a hang about four minutes
             "timeout_multiplier = 2.0\n"
             # workers forked from a process that ran torch code can deadlock (seen: mean_std mutants stuck on a
             # futex for minutes); a fork server that has run no test is fork-safe
             "process_isolation = \"forkserver\"\n"
             "also_copy = [\"prompts\", \"datasets\"]\n")
    pyproject.write_text(text, encoding="utf-8")


def _generate(dest: Path) -> list[str]:
    """Generate the mutants (no test is run) and return their names."""
    code = ("from mutmut.__main__ import create_mutants\n"
            "from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths\n"
            "import os\nos.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(2)\n")
    subprocess.run([sys.executable, "-c", code], cwd=dest, check=True, capture_output=True)
    names = []
    for meta in (dest / "mutants").rglob("*.py.meta"):
        names += list(json.loads(meta.read_text())["exit_code_by_key"])
    return sorted(names)


def _results(dest: Path) -> dict[str, str]:
    """Mutant name → status (killed, survived, timeout, no tests, ...) from ``mutmut results --all``."""
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=dest, capture_output=True, text=True).stdout
    status = {}
    for line in out.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            status[name] = state
    return status


def _sync_tests(dest: Path) -> None:
    """Copy the working tree's ``tests/`` over the scratch copy's, so a resumed run sees the tests as they are.

    mutmut maps each function to the tests that call it once, and on a resume only maps tests with new names:
    an existing test that now calls a function would not be run against its mutants. The map is therefore
    dropped and made again (one run of the module's test files).
    """
    shutil.copytree(ROOT / "tests", dest / "tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


def run_module(name: str, workdir: Path, sample: int | None, seed: int, children: int, report: Path,
               fresh: bool) -> None:
    """Mutate one module, run the (sampled) mutants, print and append the score and the survivors.

    Resuming (no ``fresh``) keeps the verdicts mutmut has and re-runs only the chosen mutants that are not yet
    detected, against the working tree's current tests: the cheap way to check that new tests kill survivors.
    """
    pattern, tests = MODULES[name]
    dest = workdir / name
    if fresh or not (dest / "mutants").is_dir():
        _copy_repository(dest)
    else:
        _sync_tests(dest)
    _configure(dest, pattern, tests)
    names = _generate(dest)
    chosen = sorted(random.Random(seed).sample(names, sample)) if sample and sample < len(names) else names
    known = _results(dest)
    todo = [n for n in chosen if known.get(n) not in DETECTED]
    print(f"== {name}: {len(names)} mutants, {len(chosen)} chosen, running {len(todo)} not yet detected; "
          f"tests: {' '.join(tests)}", flush=True)
    if todo:
        subprocess.run(["mutmut", "run", "--max-children", str(children), *todo], cwd=dest)
    status = {k: v for k, v in _results(dest).items() if k in set(chosen)}
    killed = sum(v in DETECTED for v in status.values())
    timeouts = sum(v == "timeout" for v in status.values())
    survivors = sorted(k for k, v in status.items() if v not in DETECTED)
    score = 100 * killed / max(1, len(status))
    line = (f"{name} ({pattern}): {killed}/{len(status)} killed ({score:.1f}%; {timeouts} of them by a timeout)"
            f"{f', sample of {len(chosen)} of {len(names)} (seed {seed})' if len(chosen) < len(names) else ''}")
    print(line)
    for s in survivors:
        print(f"   {status[s]}: {s}")
    with report.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n" + "".join(f"   {status[s]}: {s}\n" for s in survivors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"of: {', '.join(MODULES)} (default: all)")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--children", type=int, default=1, help="mutants run at once")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zsclip-mutate")
    parser.add_argument("--report", type=Path, default=Path("mutation-report.txt"))
    parser.add_argument("--fresh", action="store_true",
                        help="start over (default: resume: keep verdicts, rerun the undetected with the current tests)")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    args = parser.parse_args()
    if args.list:
        for name, (pattern, tests) in MODULES.items():
            print(f"{name:21} {pattern:31} {' '.join(tests)}")
        return
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    for name in args.modules or list(MODULES):
        run_module(name, args.workdir, args.sample, args.seed, args.children, args.report, args.fresh)


if __name__ == "__main__":
    main()
