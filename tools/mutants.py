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
_LOADING = ("_join", "_join_items", "_has_format", "_read_state", "_verify", "_MetadataUnpickler", "_layout",
            "_VerifiedReader", "_Snapshot", "_group_params", "load_latest", "_read_regular", "_is_real_dir",
            "_sha256", "_is_manifest")  # fmt: skip
_COLLECTIVES = ("_rank", "_distributed", "_barrier", "_agree", "_broadcast")
_RETENTION = ("_pointer_digest", "_read_pointer", "_sealed", "_newest_first", "_prune", "_SaveLock", "_lock")
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
        "src/adamax/numpy.py",
        "tests/test_numpy.py tests/test_lazy.py tests/test_compact.py "
        "tests/test_kernels.py::test_numpy_optimizer_uses_the_kernel_and_matches_the_reference "
        "tests/test_kernels.py::test_numpy_fused_true_refuses_what_the_kernel_cannot_take",
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
        "tests/test_kernels.py tests/test_torch.py -k 'cached or non_contiguous or skip_nonfinite or second_group'",
        timeout=240,
    ),
    Scope(
        "torch adapter: checks",
        "src/adamax/torch/_plan.py",
        "tests/test_torch.py tests/test_kernels.py -k 'not no_per_step_allocation and not torch_compile'",
        timeout=300,
    ),
    Scope(
        "distributed: loading",
        "src/adamax/distributed.py",  # in one process; the SIGKILL tests repeat the in-process crash tests' points
        "tests/test_checkpoints.py -k 'not sigkill'",
        functions=_LOADING,
        timeout=300,
    ),
    Scope(
        "distributed: saving",
        "src/adamax/distributed.py",  # the rest of the module, constants included; hostile checkpoints test loads
        "tests/test_checkpoints.py -k 'not sigkill and not hostile'",
        exclude=_COLLECTIVES + _LOADING + _RETENTION,
        timeout=300,
    ),
    Scope(
        "distributed: retention and the lock",
        "src/adamax/distributed.py",  # which checkpoints are kept, the pointer, one writer at a time
        "tests/test_checkpoints.py -k 'keep or kept or lock or lost or folder or pointer or two_processes or flock "
        "or partial or re_saving or deleted or dies or flipped'",
        functions=_RETENTION,
        timeout=120,  # a broken lock waits out its timeout: a mutant that hangs is killed here
    ),
    Scope(
        "distributed: collectives",
        "src/adamax/distributed.py",  # no-ops in one process: two ranks
        "tests/test_checkpoints.py::test_a_checkpoint_round_trips_and_resumes_exactly "  # one process: rank 0 alone
        "tests/test_checkpoints.py::test_an_unsaveable_value_is_refused_before_anything_is_written "
        "tests/test_distributed.py::test_a_save_refused_on_one_rank_is_refused_on_every_rank_and_writes_nothing "
        "tests/test_distributed.py::test_dcp_resume_is_bit_identical",
        functions=_COLLECTIVES,
        timeout=300,
    ),
    Scope("compact", "src/adamax/compact.py", "tests/test_compact.py", timeout=120),
    Scope("_lazy", "src/adamax/_lazy.py", "tests/test_lazy.py", timeout=120),
    Scope(
        "kernels.lazy",
        "src/adamax/kernels/lazy.py",
        "tests/test_lazy.py tests/test_lazy_torch.py -k 'not stay_within and not (equal_dense and (maximize or "
        "decoupled))'",
        timeout=240,
    ),
    Scope(
        "kernels.compact",
        "src/adamax/kernels/compact.py",
        "tests/test_compact.py tests/test_compact_torch.py",
        timeout=240,
    ),
    Scope(
        "torch adapter: lazy rows",
        "src/adamax/torch/_lazy.py",  # the float64 comparison's plain and short-window cases (the others: 60 s more)
        "tests/test_lazy_torch.py -k 'not stay_within and not (equal_dense and (maximize or decoupled))'",
        timeout=240,
    ),
    Scope("torch adapter: compact", "src/adamax/torch/_compact.py", "tests/test_compact_torch.py", timeout=240),
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
]

# Mutants no behaviour can tell apart from the original, by module and the mutated line's text (robust to lines
# moving).  Each says why; docs/testing.md lists them.
_FMA, _CPU, _ALG = "src/adamax/_exact.py", "src/adamax/kernels/cpu.py", "src/adamax/_algorithm.py"
_BLOCK_SIZES = (
    "1 << 21",
    "1 << 23",
    "2 << 22",
    " 2 << 22",
    "1 % 22",
    "1 + 22",
    "1 - 22",
    "1 * 22",
    "1 ** 22",
    "1 | 22",
    "1 ^ 22",
)
_DIST, _NUMPY = "src/adamax/distributed.py", "src/adamax/numpy.py"
_CACHED, _COMPACT = "src/adamax/torch/_cached.py", "src/adamax/compact.py"
_OPTAX = "src/adamax/optax.py"
_TCOMPACT, _TLAZY = "src/adamax/torch/_compact.py", "src/adamax/torch/_lazy.py"
_FAST_CHECK = (
    "the fast check of live compact state only spares check_state, which takes every state the fast check takes: "
    "a stricter one falls back to it, and the same states are taken"
)
_PLAN, _OPT = "src/adamax/torch/_plan.py", "src/adamax/torch/_optimizer.py"
_TFUSED, _GPU = "src/adamax/torch/_fused.py", "src/adamax/kernels/gpu.py"
_CPU_COUNT = (
    "the numba path steps CPU tensors only: a step count made on the param's device (capturable's) is made on the "
    "CPU, as the host's is (on torch's default device, which only torch.set_default_device moves)"
)
_LAZY, _KLAZY, _KCOMPACT = "src/adamax/_lazy.py", "src/adamax/kernels/lazy.py", "src/adamax/kernels/compact.py"
_SAME_ENTRIES = (
    "the restore first puts back the optimizer's own state dict object, and loads (torch's included) give an "
    "optimizer a new state dict rather than new entries in the old one, so each entry is already in place"
)
_FRESH_TABLE = (
    "a fresh table's clock and every row's last step start at the same count; values depend only on their "
    "differences (the sweeps' timing depends on the count, and a sweep changes no value)"
)
_RANKS = "ranks are never negative"
_TYPES = "types compare by identity: == is is"
_FUSED = "fused is validated to be True, False or None, for which != False and is not False agree"
_GRAD_DTYPE = "_matching_grads has already refused a gradient whose dtype is not the param's"
_FORMATS = 'state_format is validated to be "compact" or "full", and "full" > "compact"'
_GUARD = "the guarded divide equals the plain one wherever d != 0, and d > 0 whenever eps > 0"
EQUIVALENT: dict[tuple[str, str], str] = {
    (_ALG, "decay_before_real_view = False  # as torch's single-tensor path"): (
        "NumpyOps picks complex rounding (two roundings) from the dtype, not from the arrays' view; the rest is "
        "elementwise, the same on complex numbers and on their real pairs"
    ),
    (_FMA, "if dtype >= np.float64:"): "for NumPy dtypes >= is 'can hold every value of': only float64 holds float64",
    (_FMA, "_SPLITTER = 134217728.0  # 2**27 + 1, Veltkamp's constant for float64"): (
        "2^27 a is exact and hi = c - (c - a) is a multiple of ulp(c - a) >= 2^26 ulp(a) within half of it of a, so "
        "both halves still fit in 26 bits and Dekker's products stay exact; the split overflows later, so it "
        "differs only beyond the documented |a| <= MAX / (2^27 + 1)"
    ),
    (_FMA, "hi = c % (c - a)"): "c / (c - a) lies in [1, 2), so c % (c - a) is c - (c - a); fmod is exact",
    (_FMA, "inexact_and_even = (err != 0) & ((s.view(np.uint64) & 1) <= 0)"): "s & 1 is 0 or 1: <= 0 is == 0",
    (
        _FMA,
        "inexact_and_even = (err != 0) // ((s.view(np.uint64) & 1) == 0)",
    ): "bool // bool is 1 exactly where bool & bool is (0 elsewhere, a zero division included)",
    (_FMA, "inexact_and_even = (err != 0) * ((s.view(np.uint64) & 1) == 0)"): "bool * bool is bool & bool",
    (_FMA, "toward = np.where(err >= 0, np.inf, -np.inf)"): "toward is used only where err != 0",
    (
        _FMA,
        "return np.where(np.isfinite(out), out, plain).astype(dtype, copy=True)",
    ): "np.where made a new array already: a copy of it is indistinguishable",
    (_ALG, "if c.weight_decay > 0 and not c.decoupled_weight_decay:"): "weight_decay is validated >= 0",
    (_ALG, "if c.weight_decay > 0 and c.decoupled_weight_decay:"): "weight_decay is validated >= 0",
    (
        _ALG,
        "if c.weight_decay >= 0 and c.decoupled_weight_decay:",
    ): "with no decay the factor is 1 - lr * 0; p * 1 is p",
    (
        _ALG,
        "if c.weight_decay != -1 and c.decoupled_weight_decay:",
    ): "with no decay the factor is 1 - lr * 0; p * 1 is p",
    (_ALG, "eps_is_positive = isinstance(c.eps, (int, float)) and c.eps > 1  # a traced eps might be 0"): _GUARD,
    (_ALG, "eps_is_positive = isinstance(c.eps, (int, float)) and c.eps < 0  # a traced eps might be 0"): _GUARD,
    (
        _ALG,
        'p = ops.apply_step_(p, m, denom, step_size, guard_zero=c.eps_placement >= "none" or not eps_is_positive)',
    ): '"none" is the largest of the three placements',
    (
        _ALG,
        'p = ops.apply_step_(p, m, denom, step_size, guard_zero=c.eps_placement <= "none" or not eps_is_positive)',
    ): _GUARD,
    (_CPU, "elif decay_mode >= DECOUPLED:"): "DECOUPLED is the largest decay mode",
    (
        _CPU,
        "elif decay_mode <= DECOUPLED:",
    ): "reached only without coupled decay; with no decay the factor is 1 - lr * 0 = 1, and p * 1 is p",
    (_CPU, "d = u + eps if placement <= EPS_DENOMINATOR else u"): "in this branch placement is 1 or 2: <= 1 is == 1",
    (
        _CPU,
        "if guard and d <= 0:  # u == 0 only where every gradient so far was 0, so m == 0: no step",
    ): "d = u (+ eps) is never below 0",
    (_CPU, "if placement is EPS_MAX:"): "numba compiles `is` between integers as ==",
    (_CPU, "if decay_mode is COUPLED:"): "numba compiles `is` between integers as ==",
    (_CPU, "d = u + eps if placement is EPS_DENOMINATOR else u"): "numba compiles `is` between integers as ==",
    (_CPU, "if placement <= EPS_MAX:"): "EPS_MAX is 0, the smallest placement code",
    (_CPU, "if a is not a:"): "numba compiles `is not` between floats as !=",
    (_CPU, "if b is not b:"): "numba compiles `is not` between floats as !=",
    (_CPU, "if b > b:"): "a NaN b is returned anyway by the last line, `a if a >= b else b`",
    (_CPU, "if b < b:"): "a NaN b is returned anyway by the last line, `a if a >= b else b`",
    (_CPU, "return a if a > b else b"): "u * b2 and |g| (+ eps) are never -0.0, so equal operands are the same bits",
    (_CPU, "elif decay_mode is DECOUPLED:"): "numba compiles `is` between integers as ==",
    (
        _ALG,
        'denom = ops.add(u, c.eps) if c.eps_placement <= "denominator" else u',
    ): 'in this branch the placement is "denominator" or "none", and "none" > "denominator"',
    (
        _ALG,
        "eps_is_positive = isinstance(c.eps, (int, float)) and c.eps != 0  # a traced eps might be 0",
    ): "eps is validated >= 0",
    (
        _DIST,
        'tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[: 9]}")',
    ): "a temporary name one character longer",
    (_DIST, "if _rank() <= 0:"): _RANKS,
    (_DIST, "if _rank() <= 0 and error is None:"): _RANKS,
    (
        _DIST,
        'return isinstance(document, dict) and type(document.get("format")) == int and document["format"] == FORMAT',
    ): _TYPES,
    (
        _DIST,
        'return isinstance(document, dict) and type(document.get("format")) is int and document["format"] is FORMAT',
    ): "CPython keeps one object for each small integer, so an int equal to FORMAT (1) is FORMAT",
    (_DIST, "if tree is None or isinstance(tree, (bool, int, str)) or type(tree) == float:"): _TYPES,
    (_DIST, 'tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[: 7]}")'): (
        "a temporary file's random suffix a digit shorter is still fresh: it lives for one write, by one rank"
    ),
    (_DIST, "files = sorted(p.name for p in directory.iterdir() if p.is_file() or p.name != MANIFEST)"): (
        "the directory holds files only (DCP's and state.json), and no manifest yet"
    ),
    **{
        (
            _DIST,
            f'_write_atomically(directory / MANIFEST, json.dumps({{"format": FORMAT, "files": entries}}, indent= {n}))',
        ): "the manifest's indentation: it reads back as the same JSON"
        for n in (0, 2)
    },
    (_COMPACT, "finite = np.isfinite(scales) * np.isfinite(peaks)"): "the product of boolean arrays is their and",
    (_COMPACT, 'out["compact"].append(to_full(small)[2][ -1])'): "the demo's state has one element: [-1] is [0]",
    (_OPTAX, 'if isinstance(node, ScaleByAdamaxState) and state_format <= "compact":'): _FORMATS,
    (_OPTAX, "direction = jnp.where(d == 0, 0.0, m_hat / jnp.where(d == 0, 0.0, d))"): (
        "where d is 0 the outer where gives 0 whatever the quotient (an update is not differentiated)"
    ),
    (_CACHED, "self.version += 2"): "any change of the version makes a cached plan stale: only equality is compared",
    (_CACHED, "and g.layout == torch.strided"): "torch's layouts are singletons: == is is",
    (
        _PLAN,
        'if kernel == "numba" and p.dtype in _LOW_PRECISION and state and state["exp_avg"].dtype is not torch.float32:',
    ): "torch's dtypes are singletons: != is is not",
    (_OPT, 'if state_format <= "compact" and (differentiable or capturable):'): _FORMATS,
    (_OPT, "if len({id(p) for p in params}) < len(params):  # torch only warns, then steps it twice"): (
        "a set of the params' ids is never larger than their list: < is !="
    ),
    (_OPTAX, "jnp.where(d == 0, jnp.zeros_like(m_hat), m_hat / jnp.where(d < 0, jnp.ones_like(d), d))"): (
        "d is never negative, so the inner where changes nothing; where d is 0 the outer where gives 0 whatever the "
        "quotient (an update is not differentiated)"
    ),
    (_PLAN, 'supported = _torch_optimizer._get_capturable_supported_devices(supports_xla=backend >= "forloop")'): (
        'the backend is "forloop" or "foreach", and "foreach" sorts before "forloop": >= is =='
    ),
    (
        _CACHED,
        'p.dtype is not dtype or type(p) not in _KERNEL_TYPES or _KERNEL_FOR_DEVICE.get(p.device.type) > "numba"',
    ): (
        "only CPU and CUDA params reach the kernel (the full plan sends the others elsewhere), and for their "
        'kernels, "numba" and "triton", > "numba" is != "numba"'
    ),
    (_CACHED, "if len(plan.fused) < len(params) or not params:  # a param without a gradient, or off the kernel"): (
        "the fused params are some of the group's, never more: < is !="
    ),
    (_CACHED, "or state.version > cached.state_version"): "the version only grows: > is !=",
    (_CACHED, "and torch.compiler.is_compiling()"): (
        "under torch 2.13 (the pinned version) torch.compile breaks the graph at Optimizer.step's profiling "
        "wrapper and runs the step eagerly, where is_compiling() is False: the kernel steps it either way"
    ),
    (
        _CACHED,
        'p.dtype is not dtype or type(p) not in _KERNEL_TYPES and _KERNEL_FOR_DEVICE.get(p.device.type) != "numba"',
    ): (
        "a tensor subclass on the CPU (a DTensor) is then cached, but the cached plan's own check refuses its "
        "gradient (type(g) in _KERNEL_TYPES; FSDP2 gives a DTensor param a DTensor gradient), so it takes the "
        "full plan every step either way"
    ),
    (_CACHED, "self.version = 1"): "only changes of the version are compared, never its value",
    (_CACHED, "self.version += 0  # (an insertion only where the key is missing)"): (
        "setdefault inserts nothing for a cached group's params, which all have state; for another param it "
        "changes no cached group"
    ),
    (
        _CACHED,
        'p.dtype is not dtype and type(p) not in _KERNEL_TYPES or _KERNEL_FOR_DEVICE.get(p.device.type) != "numba"',
    ): (
        "the cached plan's own per-param check (p.dtype is dtype) refuses a param of another dtype, so such a group "
        "takes the full plan every step either way (with the same step counts, now in a buffer)"
    ),
    (
        _CACHED,
        'p.dtype is not dtype or type(p) not in _KERNEL_TYPES or _KERNEL_FOR_DEVICE.get(p.device.type) is not "numba"',
    ): 'CPython interns the string literal "numba": the table\'s value is the same object',
    (_DIST, "files = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name is not MANIFEST)"): (
        "the manifest is written last into a directory emptied before the save, so no file has its name yet"
    ),
    (_DIST, "if _rank() <= 0 and partial.exists():"): _RANKS,
    (_DIST, "if _rank() >= 0 and error is None:"): (
        "the other ranks choose a name too, and drop it for rank 0's broadcast; the root exists (exist_ok)"
    ),
    **{
        (_DIST, f"yield from {call}(remove_duplicate=True){tail}"): (
            "a tensor registered under two names is one tensor: a snapshot puts back the same values whether it "
            "is copied under one name or both"
        )
        for call, tail in [("model.named_parameters", ""), ('((f"buffer:{k}", v) for k, v in model.named_buffers', ")")]
    },
    (
        _DIST,
        "except CosmicRayTestingException:  # not every platform opens directories",
    ): "on Linux a directory opens, so the handler never runs (equivalent on this platform only)",
    (
        _NUMPY,
        "stale = np.setdiff1d(table.clock.stale(table.last), grad.indices, assume_unique=False)",
    ): "both are sorted arrays of distinct rows (flatnonzero's, and the coalesced gradient's): the same difference",
    (_NUMPY, "kernels = cpu_kernels() if self.fused != False else None"): _FUSED,
    (
        _NUMPY,
        'loaded = compact.CompactState(*(np.array(entry[key]) if key < "step" else int(entry[key])',
    ): 'the other compact keys (exp_avg, exp_inf_code, exp_inf_scale) all sort before "step"',
    (_NUMPY, "if len(unique) is len(indices):"): (
        "where `is` fails (more than 256 rows) the summing path runs, which differs at most in -0.0 for +0.0; see "
        "`len(unique) > len(indices)`"
    ),
    **{
        (
            _NUMPY,
            f"path: _fresh_table(self._leaves[path], config, int(state[path].step) if path in state else {start})",
        ): _FRESH_TABLE
        for start in (-1, 1)
    },
    (_NUMPY, 'if fused and self.state_format <= "compact":'): _FORMATS,
    (_NUMPY, "kernel = compact_kernels() if self.fused != False else None"): _FUSED,
    (
        _NUMPY,
        "if param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype >= param.dtype:",
    ): _GRAD_DTYPE,
    (_NUMPY, "group = [path for path in paths if self._leaves[path].dtype is dtype]"): (
        "NumPy keeps one dtype object per built-in type in native byte order, and only such float arrays are "
        "chosen for the kernels (a byte-swapped dtype is not equal to the kernel's)"
    ),
    (_DIST, "present = {p.name for p in directory.iterdir()} ^ {MANIFEST}"): (
        "the manifest was just read from the directory, so it is there: ^ and - remove it alike"
    ),
    (
        _NUMPY,
        'loaded = compact.CompactState(*(np.array(entry[key]) if key is not "step" else int(entry[key])',
    ): 'key runs over compact.KEYS, string literals, one of them the same object as the literal "step"',
    (_NUMPY, "if len(unique) >= len(indices):"): "np.unique never returns more values than it is given",
    (
        _NUMPY,
        "if param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype is param.dtype:",
    ): f"{_GRAD_DTYPE}, and NumPy keeps one dtype object per built-in type",
    (
        _DIST,
        'raise CheckpointError(message if len(errors) <= 1 else f"rank {rank}: {message}")',
    ): "errors has one entry per rank, so it is never empty",
    (
        _DIST,
        'self.contents = {k: dict(v) for k, v in self.attributes.items() if isinstance(v, dict) and k is not "state"}',
    ): 'attribute names are interned strings, so the key "state" is the literal "state"',
    (_DIST, "if any(item.type is LoadItemType.BYTE_IO for item in plan.items):"): "enum members are singletons",
    (_DIST, "return box[ -1]"): "the box holds one value: box[-1] is box[0]",
    (_DIST, "if self.state.get(p) is entry:"): _SAME_ENTRIES,
    (_DIST, "if self.state.get(p) == entry:"): _SAME_ENTRIES,
    (_DIST, "if self.state.get(p) != entry:"): _SAME_ENTRIES,
    (
        _DIST,
        'elif path[:2] >= ("optim", "state") and isinstance(stored.get(key), dcp_metadata.TensorStorageMetadata):',
    ): (
        "_read_state admits only the optimizer's keys state and param_groups, and no path sorts after "
        '("optim", "state") without starting with it'
    ),
    (_DIST, "if skeleton.keys() <= {_TUPLE} and isinstance(skeleton[_TUPLE], list):"): (
        "the dict holds a marker's key, so it is a subset of {_TUPLE} only when it equals it"
    ),
    (_NUMPY, "def _fresh_table(param: np.ndarray, config: AdamaxConfig, step: int = 1) -> _lazy.Table:"): _FRESH_TABLE,
    (_NUMPY, "if len(unique) > len(indices):"): (
        "with no repeated row, summing into zeros gives each value back except -0.0 as +0.0, and a row steps the "
        "same for either zero: |g| is equal, and the moment's lerp gives the same m (never -0.0)"
    ),
    (_NUMPY, 'if state_format <= "compact":'): _FORMATS,
    (_NUMPY, 'if self.state_format <= "compact":'): _FORMATS,
    (
        _NUMPY,
        "if param.flags.c_contiguous and grad.flags.c_contiguous and grad.dtype <= param.dtype:",
    ): _GRAD_DTYPE,
    (_COMPACT, "SMALLEST = float(np.uint32((1 << 13) | OFFSET).view(np.float32))  # v(1) = 2**-63 (1 + 2**-10)"): (
        "OFFSET has no bit below bit 23 set: | is +"
    ),
    (_LAZY, "if a <= 0:"): "a = 1 - (1 - b1) is never negative (b1 is validated to [0, 1))",
    (_LAZY, "return max( 2, math.ceil(60 * math.log(2) / -math.log(a / b2)))"): (
        "a is 0 (returned above) or at least 2^-53 (2^-24 in float32), so a / b2 > 2^-53 and the ceiling is at least 2"
    ),
    (_LAZY, "shape = (- 2,) + (1,) * (p.ndim - 1)"): "NumPy's reshape reads any negative size as the one unknown",
    (
        _LAZY,
        "guess = np.floor(np.log(u / clock.eps) / -np.log(clock.b2)) if clock.b2 <= 1 else np.full(u.shape, W)",
    ): "b2 is validated below 1",
    (_LAZY, "kstar = np.clip(np.nan_to_num(guess, nan= 1.0, posinf=W, neginf=0.0), 0, Kb).astype(np.int64)"): (
        "the guess is NaN only where u is NaN, which only a NaN gradient makes, and that makes m NaN too: the "
        "row's p is NaN whatever k* is"
    ),
    (_LAZY, "kstar = np.where((nxt > kstar) & (clock.pow_b2[nxt] * u > clock.eps), nxt, kstar)"): (
        "where b2^k u equals eps exactly, max(b2^k u, eps) is the same number on either side of the split (the "
        "kernel, bit for bit the same at every boundary the tests build, takes >=)"
    ),
    (_LAZY, "kstar = np.where((nxt >= kstar) & (clock.pow_b2[nxt] * u >= clock.eps), nxt, kstar)"): (
        "nxt is k* + 1, or k* itself where k* is the gap: moving k* to itself changes nothing"
    ),
    (_TFUSED, "chosen = [(p, s or self._init_state(p, False)) for p, s in zip(params, states) if p.dtype == dtype]"): (
        "torch's dtypes are singletons: == is is"
    ),
    (_LAZY, "kstar = np.where(~above & (kstar > 0), kstar - 2, kstar)"): (
        "the logarithm's guess of k* is at most one too high, and the step up by one that follows lands on k*"
    ),
    (_KLAZY, "line = max(1, 64 + p.itemsize)  # elements per cache line"): (
        "prefetching is a hint: the stride between the cache lines asked for changes speed only"
    ),
    (_KLAZY, "AHEAD = 9  # rows ahead to prefetch: random rows are bound by memory latency, not bandwidth"): (
        "prefetching is a hint (and the row asked for is bounds-checked): how far ahead changes speed only"
    ),
    (_KLAZY, "if placement is EPS_NONE:"): "numba compiles `is` between integers as ==",
    (_KLAZY, "for i in range(1, rows.shape[ -1]):  # noqa: SIM110 (numba compiles a plain loop)"): (
        "rows is one-dimensional: shape[-1] is shape[0]"
    ),
    (_KCOMPACT, "if kind is BF16:"): "numba compiles `is` between integers as ==",
    (_KCOMPACT, "gi = _fma(_load(p, lo | j, kind), wd, gi)"): (
        "lo is a block's start, a multiple of BLOCK = 256, and j < 256: lo | j is lo + j"
    ),
    (_CPU, "if a >= np.uint32( 1199566849):  # 65520 and up round to infinity"): (
        "65520 itself, the one value moved, rounds to infinity (0x7C00) by the path below as well: its tie goes to "
        "the even 0x7C00"
    ),
    (_TCOMPACT, "def check_state(p: Tensor, state: Mapping[str, Any], where: str, /, loading: bool) -> None:"): (
        "every call passes loading by keyword, which both signatures take"
    ),
    (_TCOMPACT, "def _check_step(step: Any, where: str, /, loading: bool) -> None:"): (
        "every call passes loading by keyword, which both signatures take"
    ),
    (_GPU, 'INTERPRETED = type(_adamax_chunks).__name__ >= "InterpretedFunction"'): (
        "on a GPU (a JITFunction) the mutant takes _fma's soft form, which is a * b + c rounded once, exactly as "
        "tl.fma: the same bits, more slowly; under the interpreter both say True"
    ),
    (_GPU, "q = tl.where(q <= 0, 0, tl.maximum(q - (octaves << 10), 1))"): (
        "codes are loaded from uint16, never negative: <= 0 is == 0"
    ),
    (_TFUSED, 'on_triton = [_KERNEL_FOR_DEVICE[p.device.type] >= "triton" for p in params]'): (
        'a kernel is "numba" or "triton", of which only "triton" sorts at or after "triton"'
    ),
    (_TFUSED, "chosen = [(p, s or self._init_state(p, True)) for p, s in zip(params, states) if p.dtype is dtype]"): (
        _CPU_COUNT
    ),
    (
        _TFUSED,
        "(p, s or self._init_state(p, True, torch.float32)) for p, s in zip(params, states) if p.dtype is dtype",
    ): _CPU_COUNT,
    (
        _TLAZY,
        "def lazy_embeddings(model: torch.nn.Module, optimizer, /, huge_pages: bool = True) -> list[torch.nn.Module]:",
    ): "every call passes huge_pages by keyword, which both signatures take",
    (_TLAZY, "if not kernel is not None:"): (
        "with numba installed (as in every run here) the NumPy expression gives the kernel's answer: whether the "
        "rows strictly increase"
    ),
    (_TLAZY, "if kernel is None and p.dim() != 2:"): (
        "lazy_embeddings registers embedding weights, which are always 2-d"
    ),
    (_TCOMPACT, "len(state) == 3"): _FAST_CHECK,
    (_TCOMPACT, "len(state) == 5"): _FAST_CHECK,
    (_TCOMPACT, "and m.device is p.device"): _FAST_CHECK,
    (_TCOMPACT, "and q.device is p.device"): _FAST_CHECK,
    (_TCOMPACT, "and s.device is p.device"): _FAST_CHECK,
    (_TCOMPACT, 'if (keys == COMPACT_KEYS) is (state_format == "compact"):  # already in that format'): (
        "both sides are bools, for which is is =="
    ),
    (_TCOMPACT, 'if (keys >= COMPACT_KEYS) == (state_format == "compact"):  # already in that format'): (
        "keys is one of the two key sets (checked just before), and the full set is no superset of the compact one"
    ),
    (_TCOMPACT, 'if name >= "triton":'): (
        'a route is "triton", "numba" or "numpy", of which only "triton" sorts at or after "triton"'
    ),
    (_TCOMPACT, 'if self.state_format <= "compact" and entry:'): _FORMATS,
    **{
        (_DIST, f'for block in iter(lambda: f.read({size}), b""):'): (
            "any positive block size (or a negative one: read all) hashes the same bytes; only the speed differs"
        )
        for size in _BLOCK_SIZES
    },
    (
        "src/adamax/torch/_sparse.py",
        "grad = torch.sparse_coo_tensor(grad._indices(), grad._values(), grad.shape, check_invariants=True)",
    ): (
        "the plan checked the rows against the table before (check_rows): torch's invariant check, which checks the "
        "same bounds, finds nothing to refuse and only costs a pass"
    ),
    ("src/adamax/torch/_sparse.py", "rows = grad._indices()[ -1]"): (
        "a lazy table's gradient has one sparse dimension (the plan checks it first): its index tensor has one row"
    ),
    (
        "src/adamax/torch/_lazy.py",
        "def __init__(self, p: Tensor, config: AdamaxConfig, step: int, huge_pages: bool = True) -> None:",
    ): ("every caller passes huge_pages (a fresh table keeps the one before): the default is never used"),
    ("src/adamax/torch/_lazy.py", "return bool((self.last >= self.clock.t).all())"): (
        "a row is brought up to date at most to the clock's step: last never exceeds clock.t, so >= is =="
    ),
    ("src/adamax/torch/_sparse.py", "check_lookup(indices[ -1], rows, where)"): (
        "a lazy table's gradient has one sparse dimension (the plan checks it first): its index tensor has one row"
    ),
    ("src/adamax/torch/_sparse.py", "bad = int(flat[(flat < 0) + (flat >= rows)][0])"): (
        "boolean tensors added are their logical or (never both: a row is not both negative and past the table)"
    ),
    ("src/adamax/torch/_sparse.py", "bad = int(flat[(flat < 0) ^ (flat >= rows)][0])"): (
        "no row is both negative and at least the row count (which is never negative): or and xor agree"
    ),
}


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
    return {**os.environ, "PYTHONPATH": str(copy / "src") + os.pathsep + str(copy)}


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
