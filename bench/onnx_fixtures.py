"""Writes the ONNX import fixtures: PyTorch models exported to ONNX, their
training data, and PyTorch's training trajectory from the exported weights.

    bench/.venv/bin/python bench/onnx_fixtures.py [--out tests/fixtures/onnx] [NAME ...]

Needs onnx, onnxruntime and onnxscript in the venv (bench/requirements.txt).
For each case (default: all of mlp, transformer, mlp_dynamo, cnn_bn), into
OUT/NAME/:

  model.onnx          the exported model: graph inputs are the model inputs,
                      graph output the logits; the initial weights are its
                      initializers (no separate init file)
  model.onnx.data     (external-data cases only) the exporter's external
                      tensor data file, referenced by model.onnx
  data.safetensors    the training data: one tensor per ONNX graph input,
                      named as the input, plus `labels`; all [samples, ...]
                      with samples = steps * batch, or fewer for a case that
                      sets `samples` (step i reads batch i mod samples/batch)
  trained.safetensors PyTorch's weights after `steps` SGD steps, f32, named by
                      the ONNX initializer names, in the initializers' layout
                      (PyTorch's own: nn.Linear weight [out, in]); with the
                      BatchNorm running statistics (buffers) after those steps
  reference.json      input/output/initializer names, parameter -> initializer
                      map, batch, loss kind, optimizer, PyTorch's losses (one
                      per step, on consecutive batches), `outputs_after` (the
                      output on the first batch after training), op histogram,
                      opset, versions

After each export the script prints the op histogram and fails if an op
outside IMPORTER_OPS appears; it checks with onnxruntime that the exported
model reproduces PyTorch's output on the first batch (initial weights) and,
with the initializers replaced by trained.safetensors, `outputs_after`
(both within ORT_TOL).

Adding a model: write a module whose forward takes the graph inputs and
returns the output, a data function, and add a Case to CASES; ops it needs
beyond IMPORTER_OPS go into its `extra_ops`. Buffers (BatchNorm running
stats) are mapped to initializers like parameters and listed under `state`;
`num_batches_tracked` is no initializer (the exporter writes the momentum as
an attribute) and is left out.

BatchNorm in training mode updates its running statistics on every forward,
the exporter's trace included: the exported initializers hold the statistics
after that one traced forward, and training starts from exactly them. The
other forwards here (the onnxruntime comparisons) run on copies of the model,
so they leave its statistics alone.

Deterministic: torch.manual_seed(SEED) before building each model, a
generator seeded SEED + 1 for the data, one thread, deterministic algorithms,
f32; a rerun with the same versions rewrites the files byte for byte.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import platform
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import safetensors
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEED = 0
STEPS = 20
ORT_TOL = 1e-5

# The ops adjoint's ONNX importer supports (Shape only where it folds to a
# constant, i.e. static shapes). A case may allow more through `extra_ops`.
IMPORTER_OPS = frozenset("""
    Gemm MatMul Add Sub Mul Div Pow Sqrt Reciprocal Neg Exp Log Tanh Sigmoid
    Relu LeakyRelu Gelu Erf Softmax LogSoftmax LayerNormalization ReduceMean
    ReduceSum Reshape Transpose Flatten Squeeze Unsqueeze Concat Split Slice
    Gather Expand Where Equal Cast Constant ConstantOfShape Identity Dropout
    Trilu Shape Conv MaxPool AveragePool GlobalAveragePool BatchNormalization
""".split())

# TorchScript-based exporter: training-mode graph (Dropout kept, BatchNorm in
# training form), no constant folding, so initializers keep the parameter names
# and Linear weights stay [out, in] behind Gemm(transB=1) / Transpose+MatMul.
TORCHSCRIPT_EXPORT = dict(
    dynamo=False,
    training=torch.onnx.TrainingMode.TRAINING,
    do_constant_folding=False,
    opset_version=17,
    export_params=True,
)
# torch.export-based exporter at its own default opset (18 in torch 2.15; a
# lower opset_version goes through ONNX's version converter). It ignores
# `training` / `do_constant_folding`; its optimizer runs (optimize=True).
DYNAMO_EXPORT = dict(dynamo=True, opset_version=18, optimize=True)


# ---------------------------------------------------------------- models
# Forward takes the graph inputs and returns the logits (the loss is outside
# the graph). Parameter names are models.py's (= adjoint's zoo names).


class MlpLogits(models.Mlp):
    def forward(self, x):
        return self.logits(x)


class TransformerLogits(models.Transformer):
    """models.Transformer as is: wte[tokens] + wpe, pre-LN blocks with fused
    qkv split, heads by reshape + transpose, scores * 1/sqrt(Dh), causal mask
    `ones(T, T, bool).triu(1)` + masked_fill(-inf), softmax, tanh-GELU MLP,
    ln_f, untied head without bias."""

    def forward(self, tokens):
        return self.logits(tokens)


class CnnBn(nn.Module):
    """[Conv 3x3 (pad 1) -> BatchNorm2d -> ReLU -> MaxPool 2x2] x 2 on
    1x16x16 images (4 then 8 channels), flatten, Linear 128 -> 10. PyTorch's
    default init; BatchNorm momentum 0.1 (ONNX's 0.9), eps 1e-5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


# ---------------------------------------------------------------- data


def mlp_data(cfg: models.MlpConfig, gen: torch.Generator, samples: int) -> dict:
    """x ~ N(0, 1); labels from a fixed random linear teacher (argmax), so the
    loss has something to learn."""
    x = torch.randn(samples, cfg.input, generator=gen, dtype=torch.float32)
    teacher = torch.randn(cfg.input, cfg.classes, generator=gen, dtype=torch.float32)
    return {"x": x, "labels": (x @ teacher).argmax(-1).to(torch.int64)}


def transformer_data(cfg: models.TransformerConfig, gen: torch.Generator, samples: int) -> dict:
    """Arithmetic sequences mod vocab: tokens[i] = (start + stride * i) % vocab,
    stride in 1..3; labels are the next tokens (predictable from position 1 on)."""
    start = torch.randint(0, cfg.vocab, (samples, 1), generator=gen, dtype=torch.int64)
    stride = torch.randint(1, 4, (samples, 1), generator=gen, dtype=torch.int64)
    pos = torch.arange(cfg.seq + 1, dtype=torch.int64)[None, :]
    seq = (start + stride * pos) % cfg.vocab
    return {"tokens": seq[:, :-1].contiguous(), "labels": seq[:, 1:].contiguous()}


def cnn_data(gen: torch.Generator, samples: int) -> dict:
    """x ~ N(0, 1) images [samples, 1, 16, 16] shifted by 0.5 (so the
    running mean moves); labels from a fixed random linear teacher on the
    pixels (argmax over 10 classes)."""
    x = torch.randn(samples, 1, 16, 16, generator=gen, dtype=torch.float32) + 0.5
    teacher = torch.randn(256, 10, generator=gen, dtype=torch.float32)
    return {"x": x, "labels": (x.reshape(samples, -1) @ teacher).argmax(-1).to(torch.int64)}


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    description: str
    build: Callable[[], nn.Module]
    make_data: Callable[[torch.Generator, int], dict]  # graph inputs by name + "labels"
    input_names: list
    output_names: list
    batch: int
    lr: float
    loss: dict
    config: dict
    exporter: str  # "torchscript" | "dynamo"
    external_data: bool = False
    extra_ops: frozenset = field(default_factory=frozenset)
    samples: int | None = None  # None: steps * batch (no batch read twice)


MLP_CFG = models.MlpConfig(input=16, hidden=[32], classes=4, batch=8)
TR_CFG = models.TransformerConfig(vocab=32, d_model=32, layers=2, heads=2, seq=8, batch=4)

CE_MLP = dict(kind="cross_entropy", output="logits", labels="labels", reduction="mean",
              note="softmax cross-entropy of logits [B, classes] vs labels [B] (class indices)")
CE_LM = dict(kind="cross_entropy", output="logits", labels="labels", reduction="mean",
             note="softmax cross-entropy over the last axis of logits [B, T, vocab] vs "
                  "labels [B, T], mean over all B*T positions")


def _mlp_case(name, exporter, external_data, description):
    return Case(
        name=name, description=description,
        build=lambda: MlpLogits(MLP_CFG),
        make_data=lambda gen, n: mlp_data(MLP_CFG, gen, n),
        input_names=["x"], output_names=["logits"],
        batch=MLP_CFG.batch, lr=0.1, loss=CE_MLP, config=models.config_dict(MLP_CFG),
        exporter=exporter, external_data=external_data,
    )


CASES = {
    "mlp": _mlp_case("mlp", "torchscript", False,
                     "MLP 16 -> 32 -> 4, bias, ReLU (models.Mlp), TorchScript exporter"),
    "transformer": Case(
        name="transformer",
        description="GPT-style pre-LN decoder (models.Transformer): vocab 32, d 32, 2 layers, "
                    "2 heads, seq 8, learned positions, causal masked_fill attention, tanh-GELU "
                    "MLP, final LayerNorm, untied head; TorchScript exporter, fixed batch",
        build=lambda: TransformerLogits(TR_CFG),
        make_data=lambda gen, n: transformer_data(TR_CFG, gen, n),
        input_names=["tokens"], output_names=["logits"],
        batch=TR_CFG.batch, lr=0.05, loss=CE_LM, config=models.config_dict(TR_CFG),
        exporter="torchscript",
    ),
    "mlp_dynamo": _mlp_case("mlp_dynamo", "dynamo", True,
                            "the mlp case (same seeds: same weights, data and losses) through "
                            "the dynamo (torch.export) exporter, weights as external data"),
    "cnn_bn": Case(
        name="cnn_bn",
        description="CNN on 1x16x16 images: [Conv 3x3 -> BatchNorm2d -> ReLU -> MaxPool 2] x 2 "
                    "(4, 8 channels), Linear 128 -> 10; TorchScript exporter in training mode "
                    "(BatchNormalization training_mode=1: batch statistics, running statistics "
                    "updated every step); 5 batches of 8, read 4 times",
        build=CnnBn,
        make_data=cnn_data,
        input_names=["x"], output_names=["logits"],
        batch=8, lr=0.1, loss=CE_MLP,
        config={"image": [1, 16, 16], "channels": [4, 8], "classes": 10, "batch": 8,
                "bn_momentum_pytorch": 0.1, "bn_eps": 1e-5},
        exporter="torchscript", samples=40,
    ),
}


# ---------------------------------------------------------------- export


def export(case: Case, model: nn.Module, args: tuple, path: Path) -> None:
    common = dict(input_names=case.input_names, output_names=case.output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter's notice
        # The dynamo exporter's advice to call eval() first: training mode is
        # deliberate (what a training import wants; no mode-dependent layer yet).
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        if case.exporter == "torchscript":
            if case.external_data:
                raise NotImplementedError("external data with the TorchScript exporter")
            torch.onnx.export(model, args, str(path), **TORCHSCRIPT_EXPORT, **common)
        elif case.exporter == "dynamo":
            torch.onnx.export(model, args, str(path), **DYNAMO_EXPORT,
                              external_data=case.external_data, verbose=False, **common)
        else:
            raise KeyError(case.exporter)
    model.train()  # the exporters may toggle the mode; training runs in train mode


def export_settings(case: Case) -> dict:
    s = TORCHSCRIPT_EXPORT if case.exporter == "torchscript" else DYNAMO_EXPORT
    s = {k: (v.name if isinstance(v, torch.onnx.TrainingMode) else v) for k, v in s.items()}
    if case.exporter == "dynamo":
        s["external_data"] = case.external_data
    return {"exporter": case.exporter, "torch.onnx.export": s}


def op_histogram(model: onnx.ModelProto) -> dict:
    counts = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def value_info(vi) -> dict:
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return {"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": dims}


def model_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as arrays, without BatchNorm's `num_batches_tracked`
    (no initializer: it only matters when momentum is None)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def map_initializers(model: nn.Module, inits: dict[str, np.ndarray]) -> tuple[dict, list]:
    """{state_dict name: initializer name} for every parameter and buffer,
    by name and exact value (by value alone where the exporter renamed one),
    and the initializers that are no parameter or buffer."""
    state = model_state(model)
    free = dict(inits)
    mapping = {}
    for name, arr in state.items():
        cand = free.get(name)
        if cand is not None and cand.shape == arr.shape and np.array_equal(cand, arr):
            mapping[name] = name
            del free[name]
            continue
        hits = [k for k, v in free.items() if v.shape == arr.shape and v.dtype == arr.dtype
                and np.array_equal(v, arr)]
        if len(hits) != 1:
            raise SystemExit(f"parameter {name} {arr.shape}: no unique initializer with its "
                             f"exact value (candidates {hits}); the exporter folded or "
                             f"transformed it")
        mapping[name] = hits[0]
        del free[hits[0]]
    return mapping, sorted(free)


def ort_session(model_bytes_or_path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def with_initializers(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> bytes:
    """The model (external data already loaded) with the given initializers
    replaced, serialized in memory."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for i, t in enumerate(m.graph.initializer):
        if t.name in values:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return m.SerializeToString()


# ---------------------------------------------------------------- one case


def loss_fn(case: Case, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if case.loss["kind"] == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1))
    raise KeyError(case.loss["kind"])


def floats(t: torch.Tensor) -> list:
    return [float(v) for v in t.detach().reshape(-1).tolist()]  # f32 values exactly, as float64


def generate(case: Case, out_dir: Path, steps: int) -> dict:
    torch.manual_seed(SEED)
    model = case.build()
    model.train()
    gen = torch.Generator().manual_seed(SEED + 1)
    samples = case.samples or steps * case.batch
    data = case.make_data(gen, samples)
    if set(data) != set(case.input_names) | {"labels"}:
        raise SystemExit(f"{case.name}: data keys {sorted(data)} are not the graph inputs + labels")
    B = case.batch
    if samples % B:
        raise SystemExit(f"{case.name}: {samples} samples are no whole number of batches of {B}")

    def batch(i):
        i %= samples // B
        return {k: v[i * B:(i + 1) * B] for k, v in data.items()}

    first = batch(0)
    first_args = tuple(first[n] for n in case.input_names)
    with torch.no_grad():
        # A copy: a training-mode BatchNorm's forward updates its statistics.
        out_before = copy.deepcopy(model)(*first_args).clone()

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    onnx_path = out_dir / "model.onnx"
    export(case, model, first_args, onnx_path)

    onnx.checker.check_model(str(onnx_path), full_check=True)
    proto = onnx.load(str(onnx_path))  # external data loaded from the folder
    opset = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    hist = op_histogram(proto)
    print(f"{case.name}: exporter {case.exporter}, opset {opset}, IR {proto.ir_version}")
    print(f"  ops: {hist}")
    bad = sorted(set(hist) - IMPORTER_OPS - case.extra_ops)
    if bad:
        raise SystemExit(f"{case.name}: ops outside the importer's list: {bad}")

    graph_inputs = [value_info(v) for v in proto.graph.input]
    graph_outputs = [value_info(v) for v in proto.graph.output]
    if [v["name"] for v in graph_inputs] != case.input_names:
        raise SystemExit(f"{case.name}: graph inputs {graph_inputs} != {case.input_names}")
    if [v["name"] for v in graph_outputs] != case.output_names:
        raise SystemExit(f"{case.name}: graph outputs {graph_outputs} != {case.output_names}")
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    mapping, other_inits = map_initializers(model, inits)
    trainable = [n for n, _ in model.named_parameters()]
    buffers = [n for n in model_state(model) if n not in dict(model.named_parameters())]
    renamed = {k: v for k, v in mapping.items() if k != v}
    print(f"  initializers: {list(inits)}")
    print(f"  parameter -> initializer: {'identity' if not renamed else renamed}"
          + (f"; other initializers {other_inits}" if other_inits else ""))
    ext = onnx.load(str(onnx_path), load_external_data=False)
    external = [t.name for t in ext.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]

    # onnxruntime at the exported weights vs PyTorch's forward.
    feed = {n: first[n].numpy() for n in case.input_names}
    ort_out = ort_session(str(onnx_path)).run(case.output_names[:1], feed)[0]
    diff0 = float(np.max(np.abs(ort_out - out_before.numpy())))
    print(f"  onnxruntime vs PyTorch, first batch, exported weights: max |diff| {diff0:.3g}")
    if not diff0 <= ORT_TOL:
        raise SystemExit(f"{case.name}: onnxruntime differs from PyTorch by {diff0} > {ORT_TOL}")

    # Training: plain SGD on consecutive batches, from exactly the exported weights.
    opt = torch.optim.SGD(model.parameters(), lr=case.lr, momentum=0.0, dampening=0.0,
                          weight_decay=0.0, nesterov=False, foreach=False)
    losses = []
    for step in range(steps):
        b = batch(step)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(case, model(*(b[n] for n in case.input_names)), b["labels"])
        loss.backward()
        losses.append(float(loss.item()))
        opt.step()
    with torch.no_grad():
        out_after = copy.deepcopy(model)(*first_args)

    state = model_state(model)
    trained = {mapping[k]: np.ascontiguousarray(v, dtype=v.dtype) for k, v in state.items()}
    for k, v in trained.items():
        if v.shape != inits[k].shape or v.dtype != inits[k].dtype:
            raise SystemExit(f"{case.name}: trained {k} {v.shape} {v.dtype} does not fit the "
                             f"initializer {inits[k].shape} {inits[k].dtype}")

    # Round trip: the ONNX model with the trained weights gives outputs_after.
    ort_after = ort_session(with_initializers(proto, trained)).run(case.output_names[:1], feed)[0]
    diff1 = float(np.max(np.abs(ort_after - out_after.numpy())))
    print(f"  onnxruntime with trained.safetensors vs outputs_after: max |diff| {diff1:.3g}")
    if not diff1 <= ORT_TOL:
        raise SystemExit(f"{case.name}: trained round trip differs by {diff1} > {ORT_TOL}")

    meta = {"adjoint_fixture": f"onnx/{case.name}"}  # one key: reproducible bytes
    save_file({k: v.contiguous().numpy() for k, v in data.items()},
              str(out_dir / "data.safetensors"), metadata=meta)
    save_file(trained, str(out_dir / "trained.safetensors"), metadata=meta)

    ref = {
        "model": case.name,
        "description": case.description,
        "config": case.config,
        "files": sorted(p.name for p in out_dir.iterdir()) + ["reference.json"],
        **export_settings(case),
        "opset_import": opset,
        "ir_version": proto.ir_version,
        "op_histogram": hist,
        "inputs": graph_inputs,
        "outputs": graph_outputs,
        "initializers": [{"name": k, "shape": list(v.shape), "dtype": v.dtype.name,
                          "external": k in external} for k, v in inits.items()],
        "initializer_map": mapping,
        "initializer_map_note": "PyTorch state_dict name -> ONNX initializer name; found by "
                                "name and checked by exact value against the exported "
                                "initializers. Layout is PyTorch's (nn.Linear weight "
                                "[out, in]; the graph applies Gemm transB=1 or Transpose+MatMul)",
        "trainable": [mapping[n] for n in trainable],
        **({"state": [mapping[n] for n in buffers],
            "state_note": "initializers that are PyTorch buffers (BatchNorm running_mean / "
                          "running_var): non-trainable state in adjoint, updated by every "
                          "training step; trained.safetensors holds PyTorch's values after the "
                          "last step"} if buffers else {}),
        "non_parameter_initializers": other_inits,
        "data": {
            "file": "data.safetensors",
            "tensors": {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                        for k, v in data.items()},
            "samples": samples,
            "batching": "step i (0-based) reads samples [j*batch, (j+1)*batch) of every tensor, "
                        "j = i mod (samples / batch)" if case.samples else
                        "batch i (0-based) is samples [i*batch, (i+1)*batch) of every tensor",
        },
        "batch": case.batch,
        "loss": case.loss,
        "optimizer": {"name": "sgd", "lr": case.lr, "momentum": 0.0, "dampening": 0.0,
                      "weight_decay": 0.0, "nesterov": False},
        "steps": steps,
        "losses_note": "losses[i] is PyTorch's loss on batch i before update i; the model "
                       "starts from the ONNX initializers; f32, the value written as float64",
        "losses": losses,
        "trained": "trained.safetensors: every initializer in `initializer_map` after the "
                   "last update, named by initializer name",
        "outputs_after": {
            "output": case.output_names[0],
            "input": "batch 0 (the first `batch` samples of data.safetensors)",
            "weights": "after all `steps` updates (= trained.safetensors)",
            "shape": list(out_after.shape),
            "values": floats(out_after),
        },
        "dtype": "float32",
        "seed": {"torch.manual_seed (init)": SEED, "data generator": SEED + 1},
        "versions": {
            "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": ort.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "generated_by": "bench/onnx_fixtures.py",
    }
    with open(out_dir / "reference.json", "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "onnx")
    ap.add_argument("--steps", type=int, default=STEPS)
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
        ref = generate(CASES[name], d, a.steps)
        for p in d.iterdir():
            os.chmod(p, 0o644)  # safetensors writes 0600
        sizes = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
        print(f"  losses {ref['losses'][0]:.6f} -> {ref['losses'][-1]:.6f}; {sizes}")


if __name__ == "__main__":
    main()
