"""Cross-checks the committed fixtures with a second, independent implementation.

    bench/.venv/bin/python bench/check_fixtures.py [--dir tests/fixtures]

Rebuilds each model functionally in float64 straight from params.safetensors
in adjoint's [in, out] layout (x @ W, q|k|v column blocks of qkv.weight; no
nn.Module, no transposes), takes gradients with autograd, applies SGD-momentum
and AdamW written out by hand (PyTorch's formulas), and compares with
grads.safetensors and reference.json's losses. Agreement here means the names,
layouts and loss trajectory in the fixtures are what adjoint's zoo describes,
not an artefact of bench/models.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent


def mlp_loss(p, batch, cfg):
    h = batch["x"].double()
    n = len(cfg["hidden"]) + 1
    for i in range(1, n + 1):
        h = h @ p[f"fc{i}.weight"] + p[f"fc{i}.bias"]
        if i < n:
            h = torch.clamp_min(h, 0.0)
    logp = h - torch.logsumexp(h, -1, keepdim=True)
    return -logp.gather(-1, batch["labels"][:, None]).mean()


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def transformer_loss(p, batch, cfg):
    tokens, targets = batch["tokens"], batch["targets"]
    d, H, T = cfg["d_model"], cfg["heads"], cfg["seq"]
    dh = d // H
    B = tokens.shape[0]
    x = p["wte"][tokens] + p["wpe"]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(cfg["layers"]):
        n = f"h.{l}"
        h = layer_norm(x, p[f"{n}.ln_1.weight"], p[f"{n}.ln_1.bias"])
        qkv = h @ p[f"{n}.attn.qkv.weight"] + p[f"{n}.attn.qkv.bias"]
        heads = []
        for i in range(3):
            part = qkv[..., i * d:(i + 1) * d].reshape(B, T, H, dh).permute(0, 2, 1, 3)
            heads.append(part)
        q, k, v = heads
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(dh)
        s = torch.where(causal, s, torch.tensor(float("-inf"), dtype=s.dtype))
        a = torch.softmax(s, -1) @ v
        a = a.permute(0, 2, 1, 3).reshape(B, T, d)
        x = x + a @ p[f"{n}.attn.proj.weight"] + p[f"{n}.attn.proj.bias"]
        h = layer_norm(x, p[f"{n}.ln_2.weight"], p[f"{n}.ln_2.bias"])
        h = gelu_tanh(h @ p[f"{n}.mlp.fc.weight"] + p[f"{n}.mlp.fc.bias"])
        x = x + h @ p[f"{n}.mlp.proj.weight"] + p[f"{n}.mlp.proj.bias"]
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    logits = x @ p["head.weight"]
    logp = logits - torch.logsumexp(logits, -1, keepdim=True)
    return -logp.gather(-1, targets[..., None]).mean()


LOSSES = {"mlp": mlp_loss, "transformer": transformer_loss}


def expected_names(model, cfg):
    if model == "mlp":
        n = len(cfg["hidden"]) + 1
        return {f"fc{i}.{t}" for i in range(1, n + 1) for t in ("weight", "bias")}
    names = {"wte", "wpe", "ln_f.weight", "ln_f.bias", "head.weight"}
    for l in range(cfg["layers"]):
        for m in ("ln_1", "ln_2", "attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"):
            names |= {f"h.{l}.{m}.weight", f"h.{l}.{m}.bias"}
    return names


def check(model: str, d: Path) -> bool:
    ref = json.loads((d / "reference.json").read_text())
    cfg, opt = ref["config"], ref["optimizer"]
    params = {k: v.double() for k, v in load_file(str(d / "params.safetensors")).items()}
    grads_ref = load_file(str(d / "grads.safetensors"))
    batch = load_file(str(d / "batch.safetensors"))
    ok = True
    names = expected_names(model, cfg)
    if set(params) != names or set(grads_ref) != names:
        print(f"{model}: names differ: {sorted(set(params) ^ names)}")
        ok = False
    if model == "transformer" and cfg["batch"] is not None:
        assert tuple(batch["tokens"].shape) == (cfg["batch"], cfg["seq"])

    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state = {k: {"m": torch.zeros_like(v), "v": torch.zeros_like(v)} for k, v in p.items()}
    losses = []
    for step in range(1, ref["steps"] + 1):
        for t in p.values():
            t.grad = None
        loss = LOSSES[model](p, batch, cfg)
        loss.backward()
        losses.append(loss.item())
        if step == 1:
            worst = 0.0
            for k, g in grads_ref.items():
                g64 = p[k].grad
                err = ((g.double() - g64).abs().max() / (g64.abs().max() + 1e-30)).item()
                worst = max(worst, err)
            print(f"{model}: grads max error relative to each tensor's max: {worst:.2e}")
            ok &= worst < 1e-4
        with torch.no_grad():
            for k, t in p.items():
                g, s = t.grad, state[k]
                if opt["name"] == "sgd":
                    g = g + opt["weight_decay"] * t
                    if opt["momentum"]:
                        if step == 1:
                            s["m"] = g.clone()
                        else:
                            s["m"] = opt["momentum"] * s["m"] + (1 - opt["dampening"]) * g
                        g = g + opt["momentum"] * s["m"] if opt["nesterov"] else s["m"]
                    t -= opt["lr"] * g
                else:
                    b1, b2 = opt["betas"]
                    t *= 1 - opt["lr"] * opt["weight_decay"]
                    s["m"] = b1 * s["m"] + (1 - b1) * g
                    s["v"] = b2 * s["v"] + (1 - b2) * g * g
                    mhat = s["m"] / (1 - b1**step)
                    vhat = s["v"] / (1 - b2**step)
                    t -= opt["lr"] * mhat / (vhat.sqrt() + opt["eps"])
    diff = max(abs(a - b) for a, b in zip(losses, ref["losses"]))
    print(f"{model}: f64 losses {losses[0]:.7f} -> {losses[-1]:.7f}, "
          f"max |f64 - fixture| over {len(losses)} steps: {diff:.2e}")
    ok &= diff < 1e-4
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / "tests" / "fixtures")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ok = all([check(m, a.dir / m) for m in ("mlp", "transformer")])
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
