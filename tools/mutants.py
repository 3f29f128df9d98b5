"""``make mutants``: mutation testing of the core with cosmic-ray, module by module.

    .venv/bin/python tools/mutants.py [--only NAME ...] [--timeout S] [--json PATH] [--keep DIR]

cosmic-ray rewrites a module on disk for each mutant and runs a test command,
so the run happens in a scratch copy of the repository (``git ls-files``
copied to a temporary directory), with the copy's ``src`` first on
``PYTHONPATH``; the working tree is never touched.  Each scope is one module
(or, for the CPU kernel, its element function) and the tests that cover it,
so that a mutant costs seconds, not the whole suite.  A mutant is *killed*
when its tests fail or time out, *survives* when they pass.  Mutants on lines
marked ``# pragma: no mutate`` are skipped, and those listed in
:data:`EQUIVALENT` (no behaviour can tell them from the original; each is
explained in docs/testing.md) are left out of the score:

    score = killed / (total - skipped - equivalent)

Prints a table per scope and the survivors (file:line, operator, the diff's
changed line), and writes the results as JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# one -k per command: pytest keeps only the last
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider --no-header -W ignore"


@dataclass(frozen=True)
class Scope:
    name: str
    module: str  # path from the repository root
    tests: str  # pytest arguments
    functions: tuple[str, ...] = ()  # only mutants inside these functions or classes (all if empty)
    exclude: tuple[str, ...] = ()  # no mutants inside these (another scope's, with the tests they need)
    timeout: float = 120.0  # seconds per mutant's test run


ANNOTATION = "in an annotation, which nothing evaluates"  # the note on such mutants (see annotation_spans)
_NUMPY_TESTS = (
    "tests/test_numpy.py tests/test_lazy.py tests/test_compact.py "
    "tests/test_kernels.py::test_numpy_optimizer_uses_the_kernel_and_matches_the_reference "
    "tests/test_kernels.py::test_numpy_fused_true_refuses_what_the_kernel_cannot_take"
)
SCOPES = [
    Scope("_exact", "src/adamax/_exact.py", "tests/test_exact.py", timeout=60),
    Scope(
        "_algorithm",
        "src/adamax/_algorithm.py",  # the numba kernel is an independent implementation: its tests are oracles here
        "tests/test_reference.py tests/test_lp.py tests/test_kernels.py tests/test_torch.py "
        "-k 'reference or lp or one_half or infinite_params'",
        timeout=120,
    ),
    Scope("spec", "src/adamax/spec.py", "tests/test_spec.py tests/test_reference.py", timeout=60),
    Scope("reference", "src/adamax/reference.py", "tests/test_reference.py tests/test_numpy.py", timeout=90),
    Scope(
        "numpy",
        "src/adamax/numpy/_optimizer.py",
        _NUMPY_TESTS,
        timeout=240,
    ),
    Scope(
        "numpy: full state",
        "src/adamax/numpy/_full.py",
        _NUMPY_TESTS,
        timeout=240,
    ),
    Scope(
        "numpy: compact state",
        "src/adamax/numpy/_compact.py",
        _NUMPY_TESTS,
        timeout=240,
    ),
    Scope(
        "numpy: lazy rows",
        "src/adamax/numpy/_rows.py",
        _NUMPY_TESTS,
        timeout=240,
    ),
    Scope(
        "numpy: trees",
        "src/adamax/numpy/_trees.py",
        _NUMPY_TESTS,
        timeout=240,
    ),
    Scope(
        "kernels.cpu element",
        "src/adamax/kernels/cpu.py",
        "tests/test_kernels.py tests/test_torch.py "
        "-k '(matches_the_reference and float32) or eps_zero or one_half or sign_of_a_zero or "
        "((nan_gradient or infinite_params) and fused)'",
        functions=("_element", "_maximum"),
        timeout=240,
    ),
    Scope(
        "kernels.cpu",
        "src/adamax/kernels/cpu.py",  # the rest: chunking, 16-bit conversions, the launch and its arguments
        "tests/test_kernels.py tests/test_torch.py -k 'not no_per_step_allocation and (kernel or fused or 16 or "
        "bfloat16 or float16 or chunk or automatic or numba)'",
        exclude=("_element", "_maximum"),
        timeout=240,
    ),
    Scope(
        "kernels.gpu",
        "src/adamax/kernels/gpu.py",  # Triton's interpreter runs the kernels on CPU tensors
        "tests/test_triton.py -k 'not prepared_gpu_check and not freezes'",
        timeout=240,
    ),
    Scope(
        "torch adapter: fused",
        "src/adamax/torch/_fused.py",
        "tests/test_kernels.py tests/test_triton.py -k 'not no_per_step_allocation and not prepared_gpu_check and "
        "not freezes'",
        timeout=240,
    ),
    Scope("torch adapter: ops", "src/adamax/torch/_ops.py", "tests/test_torch.py -k 'not torch_compile'", timeout=240),
    Scope(
        "torch adapter: plan and cache",
        "src/adamax/torch/_cached.py",
        "tests/test_kernels.py tests/test_torch.py tests/test_triton.py tests/test_compact_torch.py -k 'cached or "
        "non_contiguous or skip_nonfinite or second_group or dispatches_to_triton or key_added'",
        timeout=240,
    ),
    Scope(
        "torch adapter: checks",
        "src/adamax/torch/_plan.py",
        "tests/test_torch.py tests/test_kernels.py "
        "tests/test_triton.py::test_bfloat16_state_from_a_torch_checkpoint_is_stepped_on_the_triton_path "
        "tests/test_distributed.py::test_fsdp2_steps_the_local_shards_with_the_fused_kernel "
        "-k 'not no_per_step_allocation and not torch_compile'",
        timeout=300,
    ),
    Scope(
        "torch adapter: config",
        "src/adamax/torch/_config.py",  # a group's hyperparameters and flags, validated
        "tests/test_torch.py tests/test_lazy_torch.py -k 'not torch_compile and not stay_within and not (equal_dense "
        "and (maximize or decoupled))'",
        timeout=300,
    ),
    Scope(
        "torch adapter: devices",
        "src/adamax/torch/_devices.py",  # which kernel serves a tensor; FSDP2's DTensors take two ranks
        "tests/test_kernels.py tests/test_triton.py tests/test_torch.py "
        "tests/test_distributed.py::test_fsdp2_steps_the_local_shards_with_the_fused_kernel "
        "-k 'not no_per_step_allocation and not prepared_gpu_check and not freezes and not torch_compile'",
        timeout=300,
    ),
    Scope(
        "torch adapter: state",
        "src/adamax/torch/_state.py",  # the tracked state mapping, a param's new entry
        "tests/test_kernels.py tests/test_torch.py -k 'not no_per_step_allocation and not torch_compile'",
        timeout=300,
    ),
    Scope(
        "distributed: loading",
        "src/adamax/distributed/_load.py",  # one process; SIGKILL tests repeat the in-process crash points
        "tests/test_checkpoints.py -k 'not sigkill'",
        timeout=300,
    ),
    Scope(
        "distributed: verification",
        "src/adamax/distributed/_verify.py",  # the manifest and the allow-list unpickler
        "tests/test_checkpoints.py -k 'not sigkill'",
        timeout=300,
    ),
    Scope(
        "distributed: files",
        "src/adamax/distributed/_files.py",  # names, limits, reading regular files, atomic writes
        "tests/test_checkpoints.py -k 'not sigkill'",
        timeout=300,
    ),
    Scope(
        "distributed: saving",
        "src/adamax/distributed/_save.py",  # hostile checkpoints test loads
        "tests/test_checkpoints.py -k 'not sigkill and not hostile'",
        timeout=300,
    ),
    Scope(
        "distributed: retention and the lock",
        "src/adamax/distributed/_retention.py",  # which checkpoints are kept, the pointer, one writer at a time
        "tests/test_checkpoints.py -k 'keep or kept or lock or lost or folder or pointer or two_processes or flock "
        "or partial or re_saving or deleted or dies or flipped'",
        timeout=120,  # a broken lock waits out its timeout: a mutant that hangs is killed here
    ),
    Scope(
        "distributed: collectives",
        "src/adamax/distributed/_collectives.py",  # no-ops in one process: two ranks
        "tests/test_checkpoints.py::test_a_checkpoint_round_trips_and_resumes_exactly "  # one process: rank 0 alone
        "tests/test_checkpoints.py::test_an_unsaveable_value_is_refused_before_anything_is_written "
        "tests/test_distributed.py::test_a_save_refused_on_one_rank_is_refused_on_every_rank_and_writes_nothing "
        "tests/test_distributed.py::test_dcp_resume_is_bit_identical",
        timeout=300,
    ),
    Scope(
        "compact",
        "src/adamax/compact.py",  # with the row blocks' tests of the definitions
        "tests/test_compact.py tests/test_lazy_compact.py -k 'not torch and not kernel'",
        timeout=120,
    ),
    Scope(
        "compact8",
        "src/adamax/compact8.py",
        "tests/test_compact8.py tests/test_lazy_compact.py -k 'not torch and not kernel'",
        timeout=120,
    ),
    Scope("_lazy", "src/adamax/_lazy.py", "tests/test_lazy.py", timeout=120),
    Scope(
        "_lazy_compact",
        "src/adamax/_lazy_compact.py",
        "tests/test_lazy_compact.py -k 'not torch and not kernel'",
        timeout=120,
    ),
    Scope(
        "kernels.lazy_compact",
        "src/adamax/kernels/lazy_compact.py",  # each mutant recompiles the kernel
        "tests/test_lazy_compact.py -k kernel",
        timeout=300,
    ),
    Scope(
        "kernels.lazy",
        "src/adamax/kernels/lazy.py",
        "tests/test_lazy.py tests/test_lazy_torch.py -k 'not stay_within and not (equal_dense and (maximize or "
        "decoupled))'",
        timeout=240,
    ),
    Scope(
        "kernels.compact",
        "src/adamax/kernels/compact.py",  # with compact8's kernel test: its random bits are made here
        "tests/test_compact.py tests/test_compact_torch.py tests/test_compact8.py",
        timeout=240,
    ),
    Scope(
        "torch adapter: lazy rows",
        "src/adamax/torch/_lazy.py",  # the float64 comparison's plain and short-window cases (the others: 60 s more)
        "tests/test_lazy_torch.py tests/test_lazy_compact.py -k 'not stay_within and not kernel and not (equal_dense "
        "and (maximize or decoupled))'",
        timeout=240,
    ),
    Scope(
        "kernels.compact8",
        "src/adamax/kernels/compact8.py",
        "tests/test_compact8.py tests/test_compact_torch.py -k 'kernel_steps_compact8 or (bit_for_bit and compact8)'",
        timeout=240,
    ),
    Scope(
        "torch adapter: compact",
        "src/adamax/torch/_compact.py",  # with the lazy tables' compact state: row blocks
        "tests/test_compact_torch.py tests/test_compact8.py tests/test_lazy_compact.py -k 'torch or "
        "lazy_compact_checkpoint or dense_compact_checkpoint or wrong_layout or dense_gradient_on_a_lazy_compact'",
        timeout=240,
    ),
    Scope(
        "torch adapter: sparse rows",
        "src/adamax/torch/_sparse.py",  # rows checked against the table, coalesced whatever the tensor claims
        "tests/test_lazy_torch.py -k 'not stay_within and not (equal_dense and (maximize or decoupled))'",
        timeout=240,
    ),
    Scope(
        "torch adapter: probe",
        "src/adamax/torch/_probe.py",  # the automatic choice's probe of the (interpreted) Triton kernel
        "tests/test_triton.py -k 'probe or automatic or disagrees'",
        timeout=240,
    ),
    Scope(
        "torch adapter: optimizer",
        "src/adamax/torch/_optimizer.py",
        "tests/test_torch.py tests/test_compact_torch.py::test_what_compact_state_cannot_do_is_refused "
        "tests/test_compact_torch.py::test_every_step_is_the_numpy_definitions_bit_for_bit "
        "tests/test_lazy_torch.py::test_a_dense_gradient_on_a_lazy_table_steps_every_row_and_sparse_steps_go_on_after_it"
        " -k 'not torch_compile'",
        timeout=300,
    ),
    Scope(
        "optax",
        "src/adamax/optax.py",  # the quicker tests against optax itself and the reference (each jits its own steps)
        "tests/test_optax.py tests/test_compact_optax.py -k 'eps_placements or invalid or what_optax_takes or "
        "update_dtype or converges or state_matches or (bit_exact and not MultiSteps and not clipping) or "
        "codes_and_scales or compact_state_cannot_take or rounds_to_zero or largest_float32 or below_the_smallest'",
        timeout=300,
    ),
    Scope(
        "_blocks",
        "src/adamax/_blocks.py",  # through the optax transforms, then function by function (JAX's namespace)
        "tests/test_compact_optax.py tests/test_blocks.py -k 'codes_and_scales or compact8_u or smallest or largest "
        "or shifted or trains or jax'",
        timeout=120,
    ),
    Scope(
        "keras",
        "src/adamax/keras.py",  # on the JAX backend (the torch rerun is left out: the same code, a second process)
        "tests/test_keras.py -k 'not torch_backend'",
        timeout=300,
    ),
]

# Mutants no behaviour can tell apart from the original, by module and the mutated line's text (robust to lines
# moving): data, each with why, in equivalent_mutants.json beside this file; docs/testing.md lists them.
EQUIVALENTS_FILE = Path(__file__).resolve().parent / "equivalent_mutants.json"


def load_equivalents(path: Path = EQUIVALENTS_FILE) -> dict[tuple[str, str], str]:
    """``{(module, mutated line): why}`` from the data file; refuses an entry without a reason or listed twice."""
    entries = json.loads(path.read_text())
    out: dict[tuple[str, str], str] = {}
    for entry in entries:
        key, why = (entry["module"], entry["line"]), entry["why"]
        if not (isinstance(why, str) and why.strip()):
            raise ValueError(f"{path.name}: {key} gives no reason")
        if key in out:
            raise ValueError(f"{path.name}: {key} is listed twice")
        out[key] = why
    return out


EQUIVALENT = load_equivalents()


def function_lines(path: Path, names: tuple[str, ...]) -> set[int]:
    """The line numbers of the named top-level functions and classes."""
    tree = ast.parse(path.read_text())
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of the annotations in a module that postpones them (``from __future__ import
    annotations``): there they are strings nothing evaluates, so a mutant inside one changes no behaviour."""
    tree = ast.parse(path.read_text())
    future = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
    postponed = any(a.name == "annotations" for node in future for a in node.names)
    if not postponed:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            found.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation is not None:
            found.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found]


def in_spans(mutation, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    """Whether a cosmic-ray mutation lies wholly inside one of ``spans`` (see :func:`annotation_spans`)."""
    return any(a <= tuple(mutation.start_pos) and tuple(mutation.end_pos) <= b for a, b in spans)


def scratch_env(copy: Path) -> dict[str, str]:
    """The environment a scratch copy's tests run in: its ``src`` (and root) first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": str(copy / "src") + os.pathsep + str(copy), "ADAMAX_MUTANTS": "1"}


def scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)


def run_scope(scope: Scope, copy: Path, cosmic: Path, timeout: float | None, minutes: float | None = None) -> dict:
    """Run a scope's mutants, all of them, or for ``minutes`` at most: cosmic-ray runs them in random order, so
    a run cut short has run a uniform random sample of them (its score comes with a 95% interval)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    session = session_of(scope, copy)
    config = session.with_suffix(".toml")
    session.unlink(missing_ok=True)
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{scope.module}"\n'
        f"timeout = {timeout or scope.timeout}\n"
        "excluded-modules = []\n"
        f'test-command = "{PYTEST} {scope.tests}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    env = scratch_env(copy)
    # the tests must pass on the unmutated code (pytest exits 5 when the selection collects nothing): otherwise every
    # mutant would count as killed
    baseline = subprocess.run(f"{PYTEST} {scope.tests}", shell=True, cwd=copy, env=env, capture_output=True, text=True)
    if baseline.returncode:
        sys.exit(
            f"{scope.name}: the tests fail without a mutant (exit {baseline.returncode}):\n{baseline.stdout[-2000:]}"
        )
    subprocess.run([str(cosmic), "init", str(config), str(session)], cwd=copy, env=env, check=True)
    source = (copy / scope.module).read_text().splitlines()
    inside = function_lines(copy / scope.module, scope.functions) if scope.functions else None
    outside = function_lines(copy / scope.module, scope.exclude)
    annotations = annotation_spans(copy / scope.module)
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.work_items:
            line = item.mutations[0].start_pos[0]
            text = source[line - 1] if line <= len(source) else ""
            if (inside is not None and line not in inside) or line in outside or "pragma: no mutate" in text:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
            elif in_spans(item.mutations[0], annotations):  # counted as equivalent: see annotation_spans
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=ANNOTATION))
    started = time.monotonic()
    original = (copy / scope.module).read_text()
    with subprocess.Popen([str(cosmic), "exec", str(config), str(session)], cwd=copy, env=env,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            proc.wait(timeout=minutes * 60 if minutes else None)
        except subprocess.TimeoutExpired:  # the mutant in flight is not recorded, and is left on disk
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            (copy / scope.module).write_text(original)
        else:
            if proc.returncode:
                raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return score(scope, copy, time.monotonic() - started)


def session_of(scope: Scope, copy: Path) -> Path:
    return copy / f".mutants-{''.join(c if c.isalnum() else '-' for c in scope.name)}.sqlite"


def score(scope: Scope, copy: Path, elapsed: float | None) -> dict:
    """Count a scope's session: killed, survived (listed), skipped, equivalent, and not yet run."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    session = session_of(scope, copy)
    annotations = annotation_spans(copy / scope.module)
    killed = survived = skipped = equivalent = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = {item.job_id: item for item in db.work_items}
        not_run = db.num_work_items - db.num_results
        for job_id, result in db.results:
            mutation = items[job_id].mutations[0]
            line = mutation.start_pos[0]
            diff = (result.diff or "").splitlines()
            changed = [text for text in diff if text.startswith("+") and not text.startswith("+++")]
            removed = [text for text in diff if text.startswith("-") and not text.startswith("---")]
            mutated = changed[0][1:].strip() if changed else ""
            key = (scope.module, mutated)
            if result.worker_outcome == WorkerOutcome.SKIPPED:  # out of scope, or (see run_scope) an annotation
                if result.output == ANNOTATION:
                    equivalent += 1
                else:
                    skipped += 1
            elif in_spans(mutation, annotations) or key in EQUIVALENT:  # (earlier runs did not skip annotations)
                equivalent += 1
            elif result.worker_outcome == WorkerOutcome.NORMAL and result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                operator = mutation.operator_name.split("/")[-1]
                original = removed[0][1:].strip() if len(removed) == len(changed) == 1 else None
                survivors.append({"line": line, "operator": operator, "change": mutated, "original": original})
            else:
                killed += 1  # failed tests, a timeout, or a mutant that cannot even be imported
    total = killed + survived
    interval = None
    if not_run and total:  # a random sample of the scope's mutants (see run_scope)
        from scipy.stats import binomtest

        low, high = binomtest(killed, total).proportion_ci(confidence_level=0.95, method="wilson")
        interval = [round(float(low), 4), round(float(high), 4)]
    return {
        "scope": scope.name,
        "module": scope.module,
        "tests": scope.tests,
        "killed": killed,
        "survived": survived,
        "skipped": skipped,
        "equivalent": equivalent,
        "not_run": not_run,
        "score": killed / total if total else None,  # None: no mutant ran (not a perfect score)
        "interval": interval,  # 95% (Wilson) for the whole scope's score, when only a sample ran
        "seconds": None if elapsed is None else round(elapsed),
        "survivors": sorted(survivors, key=lambda s: s["line"]),
    }


def recheck(scope: Scope, result: dict, copy: Path, timeout: float | None, tests: str | None = None) -> None:
    """Run a scope's survivors again against the tests as they are now, in a fresh scratch copy: each survivor's
    line is found by its text (lines move as the code changes) and replaced by the mutant's.  Marks each survivor
    ``now`` = "killed", "survives", or "not found" (its line changed or is no longer unique)."""
    module = copy / scope.module
    source = module.read_text()
    lines = source.splitlines(keepends=True)
    env = scratch_env(copy)
    for survivor in result["survivors"]:
        at = [i for i, text in enumerate(lines) if text.strip() == survivor.get("original")]
        if len(at) != 1:
            survivor["now"] = "not found"
            print(f"   {scope.module}:{survivor['line']} not found: {survivor['change']}", flush=True)
            continue
        text = lines[at[0]]
        mutated = lines[:]
        mutated[at[0]] = text[: len(text) - len(text.lstrip())] + survivor["change"] + "\n"
        module.write_text("".join(mutated))
        try:
            command = f"{PYTEST} {tests or scope.tests}"
            done = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True,
                                  timeout=timeout or scope.timeout)  # fmt: skip
            survivor["now"] = "survives" if done.returncode == 0 else "killed"
        except subprocess.TimeoutExpired:
            survivor["now"] = "killed"
        finally:
            module.write_text(source)
        print(f"   {scope.module}:{survivor['line']} {survivor['now']}: {survivor['change']}", flush=True)
    killed_now = sum(s.get("now") == "killed" for s in result["survivors"])
    total = result["killed"] + result["survived"]
    result["score_now"] = (result["killed"] + killed_now) / total if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="scope names to run (default: all)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant's tests (default: each scope's own)")
    parser.add_argument("--json", default="mutants.json", help="where to write the results")
    parser.add_argument("--keep", help="run in this directory and keep it (default: a temporary one)")
    parser.add_argument("--report", help="run nothing: score the sessions a --keep run left in this directory")
    parser.add_argument("--recheck", action="store_true", help="with --report: run the survivors against the tests "
                        "as they are now (score_now)")  # fmt: skip
    parser.add_argument("--equivalents", action="store_true", help="print the equivalent mutants as a Markdown table")
    parser.add_argument("--tests", help="with --recheck: pytest arguments to run the survivors against instead of "
                        "each scope's (a wider selection)")  # fmt: skip
    parser.add_argument("--minutes", type=float, help="run each scope for this long at most: a random sample of its "
                        "mutants, scored with a 95%% interval (default: all of them)")  # fmt: skip
    parser.add_argument("--functions", nargs="*", help="only the mutants inside these top-level functions or classes "
                        "of each scope's module (to rerun code rewritten since a run)")  # fmt: skip
    args = parser.parse_args()
    if args.equivalents:
        print("| module | mutated line | why no behaviour can tell it apart |\n|---|---|---|")
        for (module, line), why in EQUIVALENT.items():
            cells = [f"`{module.removeprefix('src/adamax/')}`", f"`{line}`", why]
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return
    if args.report:
        scopes = [
            s for s in SCOPES if (not args.only or s.name in args.only) and session_of(s, Path(args.report)).exists()
        ]
        results = [score(s, Path(args.report), None) for s in scopes]
        if args.recheck:
            with tempfile.TemporaryDirectory(prefix="adamax-recheck-") as fresh:
                scratch_copy(Path(fresh))
                for scope, result in zip(scopes, results):
                    recheck(scope, result, Path(fresh), args.timeout, args.tests)
                    if args.tests:
                        result["rechecked_against"] = args.tests
        Path(args.json).write_text(json.dumps(results, indent=1))
        summary(results)
        return
    cosmic = Path(sys.executable).parent / "cosmic-ray"
    if not cosmic.exists():
        sys.exit("cosmic-ray is not installed here: make mutants installs it (pip install -e '.[mutants]')")
    scopes = [s for s in SCOPES if not args.only or s.name in args.only]
    if args.functions:
        scopes = [replace(s, functions=tuple(args.functions), exclude=()) for s in scopes]
    if not scopes:
        sys.exit(f"no scope named {args.only}; scopes: {', '.join(s.name for s in SCOPES)}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="adamax-mutants-"))
    work.mkdir(parents=True, exist_ok=True)
    scratch_copy(work)
    results = []
    try:
        for scope in scopes:
            print(f"== {scope.name}: {scope.module} against {scope.tests}", flush=True)
            results.append(run_scope(scope, work, cosmic, args.timeout, args.minutes))
            r = results[-1]
            print(f"   killed {r['killed']}, survived {r['survived']}, skipped {r['skipped']}, equivalent "
                  f"{r['equivalent']}, not run {r['not_run']}: score {percent(r['score']).strip()}{sampled(r)} "
                  f"in {r['seconds']} s", flush=True)  # fmt: skip
            for s in r["survivors"]:
                print(f"   survivor {scope.module}:{s['line']} {s['operator']}: {s['change']}", flush=True)
    finally:
        Path(args.json).write_text(json.dumps(results, indent=1))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary(results)


def percent(score: float | None) -> str:
    """A score for printing; "-" when no mutant ran."""
    return f"{score:7.1%}" if score is not None else f"{'-':>7}"


def sampled(result: dict) -> str:
    """The 95% interval of a sampled scope's score, for printing."""
    if not result.get("interval"):
        return ""
    low, high = result["interval"]
    return f" (a sample: 95% interval {low:.1%} to {high:.1%})"


def summary(results: list[dict]) -> None:
    for r in results:
        for s in r["survivors"]:
            print(f"survivor {r['module']}:{s['line']} {s['operator']}: {s['change']}")
    killed = sum(r["killed"] for r in results)
    total = killed + sum(r["survived"] for r in results)
    print(f"\n{'scope':32} {'killed':>7} {'survived':>9} {'equivalent':>11} {'not run':>8} {'score':>7} {'now':>7} "
          f"{'seconds':>8}")  # fmt: skip
    for r in results:
        now = percent(r.get("score_now"))
        seconds = r["seconds"] if r["seconds"] is not None else "-"
        print(f"{r['scope']:32} {r['killed']:7d} {r['survived']:9d} {r['equivalent']:11d} {r['not_run']:8d} "
              f"{percent(r['score'])} {now:>7} {seconds:>8}{sampled(r)}")  # fmt: skip
    print(f"{'all':32} {killed:7d} {total - killed:9d} {'':11} {'':8} {percent(killed / total if total else None)}")


if __name__ == "__main__":
    main()
