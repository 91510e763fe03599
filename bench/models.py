"""PyTorch eager versions of the WORKLOADS.md models, matching adjoint's zoo
(graph/src/zoo/{mlp,transformer,chain}.rs) op for op.

Parameter names are adjoint's names. Layout differs only for Linear weights:
adjoint stores them [in, out] and computes x @ W, PyTorch's nn.Linear stores
[out, in]; `export_params` / `import_params` transpose those (and only those).

Every model's forward takes the workload's inputs and returns the scalar loss:
  mlp(x f32 [B, input], labels i64 [B])
  transformer(tokens i64 [B, T], targets i64 [B, T])
  chain(x f32 [B, width])
  moe(x f32 [T, d], target f32 [T, d])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- configs
# Field names and defaults mirror adjoint's MlpConfig / TransformerConfig /
# ChainConfig; the defaults are the WORKLOADS.md sizes.


@dataclass
class MlpConfig:
    input: int = 784
    hidden: list = field(default_factory=lambda: [1024, 1024])
    classes: int = 10
    batch: int | None = None


@dataclass
class TransformerConfig:
    vocab: int = 256
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    seq: int = 128
    batch: int | None = None


@dataclass
class ChainConfig:
    layers: int = 64
    width: int = 1024
    batch: int | None = None


LN_EPS = 1e-5
GPT_STD = 0.02


# ---------------------------------------------------------------- mlp


class Mlp(nn.Module):
    """input -> hidden... -> classes, ReLU between, bias on every layer,
    softmax cross-entropy (mean). Layers are fc1, fc2, ..., fc{len(hidden)+1}.
    nn.Linear's default init is adjoint's: W, b ~ U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, cfg: MlpConfig):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.input, *cfg.hidden, cfg.classes]
        self.n = len(widths) - 1
        for i in range(self.n):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1], bias=True))

    def logits(self, x):
        h = x
        for i in range(self.n):
            h = getattr(self, f"fc{i + 1}")(h)
            if i + 1 < self.n:
                h = F.relu(h)
        return h

    def forward(self, x, labels):
        return F.cross_entropy(self.logits(x), labels)


# ---------------------------------------------------------------- transformer


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.heads
        self.head_dim = d // cfg.heads
        self.qkv = nn.Linear(d, 3 * d)  # columns [q | k | v] in adjoint's [in, out]
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.split(d, dim=-1)
        q = q.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Mlp4(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.mlp = Mlp4(cfg.d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """GPT-style decoder: wte[tokens] + wpe, pre-LN blocks, ln_f, untied head
    without bias, cross-entropy (mean) over every position.
    Init as adjoint's: Linear weights, wte, wpe, head ~ N(0, 0.02); biases 0;
    LayerNorm weight 1, bias 0."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.heads == 0 or cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.wte = nn.Parameter(torch.empty(cfg.vocab, cfg.d_model))
        self.wpe = nn.Parameter(torch.empty(cfg.seq, cfg.d_model))
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=LN_EPS)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte, 0.0, GPT_STD)
        nn.init.normal_(self.wpe, 0.0, GPT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, GPT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def logits(self, tokens):
        x = self.wte[tokens] + self.wpe  # wpe [seq, d] broadcasts over batch
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward(self, tokens, targets):
        logits = self.logits(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------- chain


class Chain(nn.Module):
    """`layers` x (Linear width->width with bias + tanh); loss = sum of the
    output. Layers are layer0 ... layer{layers-1}."""

    def __init__(self, cfg: ChainConfig):
        super().__init__()
        self.cfg = cfg
        for i in range(cfg.layers):
            self.add_module(f"layer{i}", nn.Linear(cfg.width, cfg.width, bias=True))

    def forward(self, x):
        h = x
        for i in range(self.cfg.layers):
            h = torch.tanh(getattr(self, f"layer{i}")(h))
        return h.sum()


# ---------------------------------------------------------------- moe


@dataclass
class MoeConfig:
    experts: int = 16
    top_k: int = 2
    d_model: int = 256
    hidden: int = 1024
    aux_weight: float = 0.01
    tokens: int | None = None
    # "list": one parameter per expert (nn.ParameterList); "stacked": one
    # [E, d, h] parameter per layer, the layout adjoint's model has.
    layout: str = "list"


class MoeGate(nn.Module):
    def __init__(self, d, experts):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d, experts))
        bound = 1.0 / math.sqrt(d)
        nn.init.uniform_(self.weight, -bound, bound)


class Moe(nn.Module):
    """WORKLOADS.md `moe`: gate x @ Wg (no bias) -> softmax -> top-k, weights
    renormalised over the k; expert e: gelu_tanh(x @ W1[e]) @ W2[e] (no bias);
    out = sum of weight * expert(x); loss = MSE(out, target) + aux_weight *
    Switch load-balancing loss (E * sum_e f_e * P_e, f_e the fraction of
    tokens whose first choice is e, P_e the mean router probability of e).
    The experts run in a Python loop over the tokens each one got, each
    expert's weights a parameter of its own (the way MoE layers are commonly
    written in eager PyTorch, e.g. a ModuleList of experts). With
    `layout="stacked"` the experts are slices of one [E, d, h] parameter, as
    in adjoint's model; then every expert's backward writes a full-size
    gradient, which PyTorch's autograd sums."""

    def __init__(self, cfg: MoeConfig):
        super().__init__()
        self.cfg = cfg
        d, h, e = cfg.d_model, cfg.hidden, cfg.experts
        self.gate = MoeGate(d, e)
        w1 = [torch.empty(d, h).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)) for _ in range(e)]
        w2 = [torch.empty(h, d).uniform_(-1 / math.sqrt(h), 1 / math.sqrt(h)) for _ in range(e)]
        if cfg.layout == "stacked":
            self.w1 = nn.Parameter(torch.stack(w1))
            self.w2 = nn.Parameter(torch.stack(w2))
        elif cfg.layout == "list":
            self.w1 = nn.ParameterList([nn.Parameter(w) for w in w1])
            self.w2 = nn.ParameterList([nn.Parameter(w) for w in w2])
        else:
            raise ValueError(f"unknown MoE layout {cfg.layout!r}: list or stacked")

    def forward(self, x, target):
        cfg = self.cfg
        probs = torch.softmax(x @ self.gate.weight, dim=-1)
        top_p, top_i = probs.topk(cfg.top_k, dim=-1)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(cfg.experts):
            tok, slot = torch.where(top_i == e)
            if tok.numel() == 0:
                continue
            w = weights.reshape(-1).index_select(0, tok * cfg.top_k + slot)
            y = F.gelu(x.index_select(0, tok) @ self.w1[e], approximate="tanh") @ self.w2[e]
            out = out.index_add(0, tok, y * w.unsqueeze(-1))
        first = F.one_hot(top_i[:, 0], cfg.experts).float().mean(dim=0)
        aux = cfg.experts * (first * probs.mean(dim=0)).sum()
        return F.mse_loss(out, target) + cfg.aux_weight * aux


# ---------------------------------------------------------------- registry

MODELS = {
    "mlp": (Mlp, MlpConfig),
    "transformer": (Transformer, TransformerConfig),
    "chain": (Chain, ChainConfig),
    "moe": (Moe, MoeConfig),
}


def build(name: str, cfg=None) -> nn.Module:
    cls, cfg_cls = MODELS[name]
    return cls(cfg if cfg is not None else cfg_cls())


def config_dict(cfg) -> dict:
    return asdict(cfg)


# ---------------------------------------------------------------- adjoint naming / layout


def _linear_weight_names(model: nn.Module) -> set[str]:
    """Names (as in named_parameters) of every nn.Linear weight: the tensors
    whose adjoint layout is the transpose of PyTorch's."""
    names = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            names.add(f"{mod_name}.weight" if mod_name else "weight")
    return names


def adjoint_names(model: nn.Module) -> list[str]:
    """The parameter names in adjoint's naming (identical to PyTorch's here)."""
    return [n for n, _ in model.named_parameters()]


def to_adjoint(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Maps {name: tensor in PyTorch layout} (parameters or their gradients) to
    {adjoint name: contiguous f32 numpy array in adjoint layout}."""
    transposed = _linear_weight_names(model)
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu", torch.float32)
        if name in transposed:
            t = t.t()
        out[name] = np.ascontiguousarray(t.numpy())
    return out


def export_params(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters as {adjoint name: f32 numpy array, adjoint layout}."""
    return to_adjoint(model, dict(model.named_parameters()))


def export_grads(model: nn.Module) -> dict[str, np.ndarray]:
    """Gradients (`.grad`, after backward) as {adjoint name: f32 numpy array,
    adjoint layout}."""
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            raise ValueError(f"{name} has no gradient")
        grads[name] = p.grad
    return to_adjoint(model, grads)


@torch.no_grad()
def import_params(model: nn.Module, arrays: dict[str, np.ndarray], strict: bool = True) -> None:
    """Loads {adjoint name: array in adjoint layout} into the model, checking
    names and shapes."""
    transposed = _linear_weight_names(model)
    params = dict(model.named_parameters())
    if strict:
        missing = sorted(set(params) - set(arrays))
        extra = sorted(set(arrays) - set(params))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing {missing}, unexpected {extra}")
    for name, arr in arrays.items():
        if name not in params:
            continue
        p = params[name]
        t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
        if name in transposed:
            t = t.t()
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not fit {tuple(p.shape)}")
        p.copy_(t)
