"""Writes the PyTorch parity fixtures that adjoint's Rust tests read.

    bench/.venv/bin/python bench/torch_ref.py [--out tests/fixtures] [--steps 20]

For each of mlp and transformer (small configs, so the files stay small),
into OUT/NAME/:
  params.safetensors  initial parameters, adjoint names and [in, out] layout, f32
  batch.safetensors   mlp: x f32 [B, input], labels i64 [B];
                      transformer: tokens i64 [B, T], targets i64 [B, T]
  grads.safetensors   gradient of the loss at the initial parameters on that
                      batch, named and laid out as the parameters, f32
  reference.json      model config (adjoint's config fields + batch), optimizer
                      settings, versions, and `losses`: the loss before each of
                      STEPS training steps on that same batch

Deterministic: fixed seeds, f32, one thread, torch.use_deterministic_algorithms.
The Rust tests only read the committed files; they never run this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SEED = 0

CASES = {
    "mlp": dict(
        config=models.MlpConfig(input=64, hidden=[128, 128], classes=10, batch=32),
        optimizer=dict(
            name="sgd", lr=0.01, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False
        ),
    ),
    "transformer": dict(
        config=models.TransformerConfig(vocab=64, d_model=64, layers=2, heads=4, seq=32, batch=4),
        optimizer=dict(
            name="adamw", lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01,
            amsgrad=False, applies_to="all parameters (biases and LayerNorm included)",
        ),
    ),
}


def make_batch(name: str, cfg, gen: torch.Generator) -> dict[str, torch.Tensor]:
    if name == "mlp":
        return {
            "x": torch.randn(cfg.batch, cfg.input, generator=gen, dtype=torch.float32),
            "labels": torch.randint(0, cfg.classes, (cfg.batch,), generator=gen, dtype=torch.int64),
        }
    if name == "transformer":
        shape = (cfg.batch, cfg.seq)
        return {
            "tokens": torch.randint(0, cfg.vocab, shape, generator=gen, dtype=torch.int64),
            "targets": torch.randint(0, cfg.vocab, shape, generator=gen, dtype=torch.int64),
        }
    raise KeyError(name)


def make_optimizer(spec: dict, params):
    # foreach=False: the plain per-tensor loop, PyTorch's reference order of
    # operations (and its CPU default anyway).
    if spec["name"] == "sgd":
        return torch.optim.SGD(
            params, lr=spec["lr"], momentum=spec["momentum"], dampening=spec["dampening"],
            weight_decay=spec["weight_decay"], nesterov=spec["nesterov"], foreach=False,
        )
    if spec["name"] == "adamw":
        return torch.optim.AdamW(
            params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
            weight_decay=spec["weight_decay"], amsgrad=spec["amsgrad"], foreach=False,
        )
    raise KeyError(spec["name"])


def generate(name: str, out_dir: Path, steps: int) -> dict:
    case = CASES[name]
    cfg = case["config"]
    torch.manual_seed(SEED)
    model = models.build(name, cfg)
    gen = torch.Generator().manual_seed(SEED + 1)
    batch = make_batch(name, cfg, gen)
    args = list(batch.values())

    out_dir.mkdir(parents=True, exist_ok=True)
    # One key only: safetensors writes metadata in hash order, and the files
    # should be byte-for-byte reproducible.
    meta = {"adjoint_fixture": name}
    save_file(models.export_params(model), str(out_dir / "params.safetensors"), metadata=meta)
    save_file({k: v.numpy() for k, v in batch.items()}, str(out_dir / "batch.safetensors"),
              metadata=meta)

    opt = make_optimizer(case["optimizer"], model.parameters())
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(*args)
        loss.backward()
        losses.append(float(loss.item()))  # the f32 value, exactly, as a float64
        if step == 0:
            save_file(models.export_grads(model), str(out_dir / "grads.safetensors"),
                      metadata=meta)
        opt.step()

    ref = {
        "model": name,
        "config": models.config_dict(cfg),
        "optimizer": case["optimizer"],
        "steps": steps,
        "losses_note": "losses[i] is the loss before update i, all steps on the same batch; "
                       "grads.safetensors is the gradient behind losses[0]",
        "losses": losses,
        "dtype": "float32",
        "seed": {"torch.manual_seed (init)": SEED, "batch generator": SEED + 1},
        "param_names": models.adjoint_names(model),
        "layout": "adjoint: Linear weights [in, out] (x @ W), PyTorch's transposed",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        "generated_by": "bench/torch_ref.py",
    }
    with open(out_dir / "reference.json", "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("models", nargs="*", metavar="NAME", help=f"any of {list(CASES)} (default: all)")
    a = ap.parse_args()
    for name in a.models:
        if name not in CASES:
            ap.error(f"unknown model {name!r}; choose from {list(CASES)}")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)

    for name in a.models or list(CASES):
        d = a.out / name
        ref = generate(name, d, a.steps)
        for p in d.iterdir():
            os.chmod(p, 0o644)  # safetensors writes 0600
        sizes = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
        print(f"{name}: losses {ref['losses'][0]:.6f} -> {ref['losses'][-1]:.6f}; {sizes}")


if __name__ == "__main__":
    main()
