"""The prepared GPU check: correctness against torch.optim.Adamax on CUDA, step time, and the HBM limit.

Run on a machine with one CUDA GPU (a few minutes); writes JSON:

    python benchmarks/gpu_check.py --out gpu_check.json

Everything is measured in this one run: the bandwidth limit (an in-place ``a += s * b`` Triton kernel,
12 bytes per element, and ``copy_``, 8 bytes per element; the faster sets the limit), and the median
CUDA-event time of a step for one 10M and one 100M-element float32 tensor and a ~195-tensor model-like
list totalling 10M: ``adamax.torch.Adamax(fused=True)``, ``torch.optim.Adamax(foreach=True)``, and
``torch.compile`` of the foreach step.  A fused step moves 28 bytes per element (read p, g, m, u;
write p, m, u); each method's time is also given as the bandwidth that byte count implies.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import triton
import triton.language as tl

from adamax.cli.bench import model_like_sizes
from adamax.torch import Adamax


@triton.jit
def _scaled_add(a_ptr, b_ptr, n, scale, BLOCK: tl.constexpr):  # noqa: N803
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask)
    tl.store(a_ptr + offsets, a + scale * tl.load(b_ptr + offsets, mask=mask), mask=mask)


DEVICE = "cuda"


def cuda_median_ms(fn, rounds: int = 30, warmup: int = 5) -> float:
    if DEVICE != "cuda":  # the CPU dry run (see --dry-run): wall-clock, meaningless as a figure; few rounds
        rounds, warmup = 3, 1
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[len(times) // 2]
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bandwidth_gbps(numel: int) -> dict[str, float]:
    a, b = torch.rand(numel, device=DEVICE), torch.rand(numel, device=DEVICE)
    grid = (triton.cdiv(numel, 4096),)
    add_ms = cuda_median_ms(lambda: _scaled_add[grid](a, b, numel, 1e-3, BLOCK=4096))
    copy_ms = cuda_median_ms(lambda: a.copy_(b))
    return {"scaled_add_GBps": 12 * numel / add_ms / 1e6, "copy_GBps": 8 * numel / copy_ms / 1e6}


def make_params(sizes: list[int], dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    params = [torch.rand(n, device=DEVICE, dtype=dtype, generator=gen).requires_grad_() for n in sizes]
    for p in params:
        p.grad = torch.rand(p.shape, device=DEVICE, dtype=dtype, generator=gen)
    return params


def correctness() -> dict[str, float]:
    """Ours (fused) against torch.optim.Adamax (foreach=False) on CUDA, after 20 steps of fresh gradients."""
    out = {}
    for label, kwargs in {"default": {}, "weight_decay+maximize": {"weight_decay": 0.1, "maximize": True}}.items():
        sizes = [4097, 1, 70_000, 3 * 1024 + 5] if DEVICE == "cuda" else [300, 1, 513, 3 * 64 + 5]  # a dry run
        ours, theirs = make_params(sizes), make_params(sizes)
        opt_a = Adamax(ours, lr=1e-2, fused=True, **kwargs)
        opt_b = torch.optim.Adamax(theirs, lr=1e-2, foreach=False, **kwargs)
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        for _ in range(20 if DEVICE == "cuda" else 5):
            for a, b in zip(ours, theirs):
                g = torch.randn(a.shape, device=DEVICE, generator=gen)
                a.grad, b.grad = g.clone(), g.clone()
            opt_a.step()
            opt_b.step()
        worst = 0.0
        for a, b in zip(ours, theirs):
            for x, y in ((a.detach(), b.detach()), (opt_a.state[a]["exp_avg"], opt_b.state[b]["exp_avg"])):
                ulp = torch.finfo(torch.float32).eps * y.abs().clamp_min(torch.finfo(torch.float32).tiny)
                worst = max(worst, float(((x - y).abs() / ulp).max()))
        out[f"max_ulps_vs_torch_{label}"] = worst
        out[f"states_equal_exp_inf_{label}"] = all(
            torch.equal(opt_a.state[a]["exp_inf"], opt_b.state[b]["exp_inf"]) for a, b in zip(ours, theirs)
        )
    out.update(compact_correctness())
    bf16 = make_params([100_000 if DEVICE == "cuda" else 1000], dtype=torch.bfloat16)
    opt = Adamax(bf16, fused=True)
    for _ in range(5):
        opt.step()
    out["bf16_state_dtype"] = str(opt.state[bf16[0]]["exp_inf"].dtype)
    out["bf16_params_finite"] = bool(torch.isfinite(bf16[0]).all())
    return out


def compact_correctness() -> dict[str, bool]:
    """Compact and compact8 state on the device against their definitions (NumPy, on the host): every bit, after
    10 steps."""
    import numpy as np

    from adamax import compact, compact8
    from adamax.spec import AdamaxConfig
    from adamax.torch._compact import as_compact_state

    out = {}
    for name, definition in (("compact", compact), ("compact8", compact8)):
        for dtype in (torch.float32, torch.bfloat16):
            sizes = [4097, 1, 70_000] if DEVICE == "cuda" else [300, 1, 513]  # a dry run: the interpreter is slow
            params = make_params(sizes, dtype=dtype)
            opt = Adamax(params, lr=1e-2, state_format=name)
            starts = [p.detach().float().cpu().numpy().copy() for p in params]  # (on the CPU, .numpy() shares p)
            expected = [(start, definition.init(start)) for start in starts]
            gen = torch.Generator(device=DEVICE).manual_seed(2)
            for t in range(10):
                for p in params:
                    p.grad = (torch.randn(p.shape, device=DEVICE, generator=gen) * (50.0 if t == 3 else 1.0)).to(dtype)
                grads = [p.grad.float().cpu().numpy() for p in params]
                opt.step()
                for k, g in enumerate(grads):
                    new, state = definition.update(expected[k][0], g, expected[k][1], AdamaxConfig(lr=1e-2))
                    expected[k] = (torch.from_numpy(new).to(dtype).float().numpy(), state)
            same = True
            for p, (values, state) in zip(params, expected):
                same &= np.array_equal(p.detach().float().cpu().numpy(), values)
                got = as_compact_state(opt.state[p], name)
                same &= all(np.array_equal(np.asarray(getattr(got, key)), getattr(state, key))
                            for key in definition.KEYS[1:])  # fmt: skip
            label = str(dtype).removeprefix("torch.")
            out[f"{name}_bit_identical_to_definition_{label}"] = bool(same)
            out[f"{name}_path_{label}"] = dict(opt.last_step_paths)
    return out


BYTES = {
    "adamax fused (triton)": 28,
    "torch foreach": 28,
    "torch.compile (foreach)": 28,
    "adamax compact (triton)": 20,
    "adamax compact8 (triton)": 16,
}


def timings(sizes: list[int], with_compile: bool) -> dict[str, dict[str, float]]:
    numel = sum(sizes)
    results: dict[str, dict[str, float]] = {}
    ours = Adamax(make_params(sizes), fused=True)
    foreach = torch.optim.Adamax(make_params(sizes), foreach=True)
    small = Adamax(make_params(sizes), state_format="compact")
    smaller = Adamax(make_params(sizes), state_format="compact8")
    methods = {
        "adamax fused (triton)": ours.step,
        "torch foreach": foreach.step,
        "adamax compact (triton)": small.step,
        "adamax compact8 (triton)": smaller.step,
    }
    if with_compile:
        compiled_opt = torch.optim.Adamax(make_params(sizes), foreach=True)
        compiled = torch.compile(compiled_opt.step)
        start = time.perf_counter()
        compiled()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        results["torch.compile cold start"] = {"seconds": time.perf_counter() - start}
        methods["torch.compile (foreach)"] = compiled
    for name, fn in methods.items():
        ms = cuda_median_ms(fn)
        bytes_per_element = BYTES[name]
        results[name] = {"median_ms": ms, "bytes_per_element": bytes_per_element,
                         "implied_GBps": bytes_per_element * numel / ms / 1e6}  # fmt: skip
    return results


def automatic_probe() -> dict[str, str]:
    """The verdict of the probe the automatic choice runs before it trusts the kernel (adamax.torch._probe), per
    param dtype and a few option sets: "agrees" or why not."""
    from adamax.spec import AdamaxConfig
    from adamax.torch import _probe

    verdicts = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        state = torch.float32
        for name, config in {
            "defaults": AdamaxConfig(),
            "coupled decay": AdamaxConfig(weight_decay=0.1),
            "decoupled, maximize": AdamaxConfig(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
            "denominator": AdamaxConfig(eps=1e-3, eps_placement="denominator"),
            "none": AdamaxConfig(eps_placement="none"),
        }.items():
            p = torch.zeros(1, dtype=dtype, device=DEVICE)
            verdict = _probe._probe(_probe.gpu_kernels(), p.device, dtype, state, config)
            verdicts[f"{dtype} {name}"] = verdict or "agrees"
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check this script on the CPU: tiny sizes, Triton's interpreter (run with TRITON_INTERPRET=1)",
    )
    args = parser.parse_args()
    global DEVICE
    if args.dry_run:
        import adamax.torch

        DEVICE = "cpu"
        adamax.torch._KERNEL_FOR_DEVICE["cpu"] = "triton"  # as CUDA tensors are routed on a GPU
    report = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run: no figure here means anything)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "correctness": correctness(),
        "automatic_probe": automatic_probe(),
        "cases": {},
    }
    cases = {"10M": [10_000_000], "100M": [100_000_000], "model-like 10M": model_like_sizes()}
    if args.dry_run:
        cases = {"tiny": [3000], "tiny list": [100, 7, 2000]}
    for name, sizes in cases.items():
        limit = bandwidth_gbps(sum(sizes))
        limit_gbps = max(limit.values())
        case = {"numel": sum(sizes), "tensors": len(sizes), **limit, "timings": timings(sizes, args.compile)}
        for values in case["timings"].values():
            if "median_ms" in values:
                values["fraction_of_limit"] = values["implied_GBps"] / limit_gbps
        foreach_ms = case["timings"]["torch foreach"]["median_ms"]
        case["x_foreach"] = foreach_ms / case["timings"]["adamax fused (triton)"]["median_ms"]
        fused_ms = case["timings"]["adamax fused (triton)"]["median_ms"]
        case["x_compact_over_fused"] = fused_ms / case["timings"]["adamax compact (triton)"]["median_ms"]
        case["x_compact8_over_fused"] = fused_ms / case["timings"]["adamax compact8 (triton)"]["median_ms"]
        report["cases"][name] = case
        print(name, json.dumps(case, indent=1))
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
