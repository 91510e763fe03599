"""PyTorch eager yardstick for the WORKLOADS.md benchmarks.

    bench/.venv/bin/python bench/torch_bench.py NAME [--threads N] [--steps 10] [--warmup 3]
        [--checkpoint none|sqrt|every:K]

NAME is mlp, transformer or chain, at the WORKLOADS.md sizes:
  mlp          784-1024-1024-10, batch 256, SGD lr 0.01 (WORKLOADS.md: no momentum)
  transformer  vocab 256, d 256, 4 layers, 4 heads, seq 128, batch 16, AdamW lr 1e-3
  chain        64 x (Linear 1024->1024 + tanh), batch 256, gradients only

Prints one JSON line: {"workload", "impl": "pytorch", "threads", "fwd_ms",
"step_ms", "torch", ...}, times being medians over --steps timed iterations
after --warmup untimed ones.
  fwd  = forward + loss, autograd recording as in training (no backward;
         the graph is dropped), timed on its own;
  step = zero_grad + forward + loss + backward + optimizer update
         (chain: no optimizer, forward + backward only).

--checkpoint (chain only) wraps the layers in
torch.utils.checkpoint.checkpoint_sequential (use_reentrant=False): sqrt =
round(sqrt(64)) = 8 segments, every:K = 64/K segments.

Memory (chain): "step_peak_bytes" is the most heap in use during one extra,
untimed step (gradients set to None first) above the heap in use before it,
less the parameter gradients allocated so far, from glibc's mallinfo2
(uordblks + hblkhd) sampled at every layer's forward and backward
(recomputed forwards included): activations, cotangents and temporaries,
the CPU stand-in for torch.cuda.max_memory_allocated and the counterpart of
adjoint's arena (adjoint's gradients live in a buffer of their own).
"peak_rss_delta_bytes" is the resident-set high-water mark over the timed
steps minus the resident set before them (allocator slack included).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

WORKLOADS = {
    "mlp": dict(batch=256, optimizer=dict(name="sgd", lr=0.01, momentum=0.0)),
    "transformer": dict(batch=16, optimizer=dict(name="adamw", lr=1e-3, betas=[0.9, 0.999],
                                                 eps=1e-8, weight_decay=0.01)),
    "chain": dict(batch=256, optimizer=None),
    "moe": dict(batch=2048, optimizer=dict(name="sgd", lr=0.01, momentum=0.0)),
}


def make_inputs(name, cfg, batch, gen, device):
    if name == "mlp":
        x = torch.randn(batch, cfg.input, generator=gen)
        y = torch.randint(0, cfg.classes, (batch,), generator=gen)
        args = [x, y]
    elif name == "transformer":
        tok = torch.randint(0, cfg.vocab, (batch, cfg.seq), generator=gen)
        tgt = torch.randint(0, cfg.vocab, (batch, cfg.seq), generator=gen)
        args = [tok, tgt]
    elif name == "moe":
        args = [torch.randn(batch, cfg.d_model, generator=gen),
                torch.randn(batch, cfg.d_model, generator=gen)]
    else:
        args = [torch.randn(batch, cfg.width, generator=gen)]
    return [a.to(device) for a in args]


def make_optimizer(spec, params):
    if spec is None:
        return None
    if spec["name"] == "sgd":
        return torch.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"])
    return torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                             weight_decay=spec["weight_decay"])


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]


def heap_in_use():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


def step_peak_bytes(model, step):
    """Peak heap in use during one step above the heap in use before it,
    sampled at every Linear's forward and backward."""
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    base = heap_in_use()
    peak = [base]

    def sample(*_):
        grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        peak[0] = max(peak[0], heap_in_use() - grads)

    hooks = []
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(sample))
            hooks.append(m.register_full_backward_hook(sample))
    step()
    sample()
    for h in hooks:
        h.remove()
    return peak[0] - base


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("name", choices=list(WORKLOADS))
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="torch.set_num_threads (default: all cores available)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--experts", type=int, default=None, help="moe only: experts (default 16)")
    ap.add_argument("--tokens", type=int, default=None, help="moe only: tokens (default 2048)")
    ap.add_argument("--moe-layout", default="list", choices=["list", "stacked"],
                    help="moe only: one parameter per expert (list, default) or one [E, d, h] "
                         "parameter (stacked, adjoint's layout)")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="bf16: forward under torch.autocast(dtype=bfloat16), f32 master weights")
    ap.add_argument("--checkpoint", default="none",
                    help="chain only: none, sqrt or every:K (torch.utils.checkpoint)")
    a = ap.parse_args()
    if a.checkpoint != "none" and a.name != "chain":
        ap.error("--checkpoint applies to chain only")

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        # Full f32 matmuls, as adjoint's cuBLAS (TF32 off by default).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    w = WORKLOADS[a.name]

    torch.manual_seed(0)
    if a.name == "moe":
        cfg = models.MoeConfig()
        if a.experts:
            cfg.experts = a.experts
        cfg.layout = a.moe_layout
        model = models.build("moe", cfg).to(dev)
        if a.tokens:
            w = dict(w, batch=a.tokens)
    else:
        model = models.build(a.name).to(dev)
    gen = torch.Generator().manual_seed(1)
    args = make_inputs(a.name, model.cfg, w["batch"], gen, dev)
    opt = make_optimizer(w["optimizer"], model.parameters())
    segments = None
    if a.checkpoint == "sqrt":
        segments = round(math.sqrt(model.cfg.layers))
    elif a.checkpoint.startswith("every:"):
        segments = max(1, model.cfg.layers // int(a.checkpoint.split(":", 1)[1]))
    elif a.checkpoint != "none":
        ap.error(f"unknown --checkpoint {a.checkpoint!r}: none, sqrt or every:K")
    if segments is not None:
        from torch.utils.checkpoint import checkpoint_sequential

        layers = torch.nn.Sequential(*[torch.nn.Sequential(getattr(model, f"layer{i}"), torch.nn.Tanh())
                                       for i in range(model.cfg.layers)])

        def run_model(x):
            return checkpoint_sequential(layers, segments, x, use_reentrant=False).sum()
    else:
        run_model = model

    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rss_before = rss_bytes()

    if a.precision == "bf16":
        inner_model = run_model

        def run_model(*xs):
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return inner_model(*xs)

    def fwd():
        loss = run_model(*args)
        sync()
        return loss

    def step():
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        loss = run_model(*args)
        loss.backward()
        if opt is not None:
            opt.step()
        sync()
        return loss

    def timed(fn):
        for _ in range(a.warmup):
            fn()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    step_ms = timed(step)
    peak_rss_delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    fwd_ms = timed(fwd)
    loss = float(fwd().item())
    step_peak = step_peak_bytes(model, step) if a.name == "chain" else None

    out = {
        "workload": a.name,
        "impl": "pytorch",
        "threads": a.threads,
        "fwd_ms": round(fwd_ms, 3),
        "step_ms": round(step_ms, 3),
        "torch": torch.__version__,
        "device": a.device,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if dev.type == "cuda" else None,
        "batch": w["batch"],
        "config": models.config_dict(model.cfg),
        "optimizer": w["optimizer"]["name"] if w["optimizer"] else None,
        "steps": a.steps,
        "warmup": a.warmup,
        "params": sum(p.numel() for p in model.parameters()),
        "loss": loss,
        "checkpoint": a.checkpoint,
        "precision": a.precision,
        "peak_rss_delta_bytes": peak_rss_delta,
        "step_peak_bytes": step_peak,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
