#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/ (malformed and edge-case
inputs). The valid ones come from the project itself:

    adjoint model mlp -o fuzz/corpus/graph_proto/mlp.pb
    adjoint model mlp -o fuzz/corpus/graph_json/mlp.json
    cp tests/fixtures/onnx/<name>/model.onnx fuzz/corpus/onnx_import/<name>.onnx

Run from the repository root after those: python3 fuzz/make_seeds.py.
Only the standard library: the protobuf bytes are encoded by hand.
"""

import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


# --- protobuf wire encoding -------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def v(field, n):
    return key(field, 0) + varint(n)


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return key(field, 2) + varint(len(payload)) + payload


def f64(field, x):
    return key(field, 1) + struct.pack("<d", x)


def packed(field, values):
    return ld(field, b"".join(varint(x) for x in values))


# --- graph_proto / graph_json ----------------------------------------------

def dim(size=None, symbol=None):
    return ld(1, v(1, size) if symbol is None else ld(2, symbol))


def value(name, dtype, dims):
    return ld(2, ld(1, name) + v(2, dtype) + ld(3, b"".join(dims)))


def node(op, inputs, outputs, attrs=b"", name=""):
    body = ld(1, name) if name else b""
    body += ld(2, op)
    body += b"".join(ld(3, i) for i in inputs)
    body += b"".join(ld(4, o) for o in outputs)
    return ld(3, body + attrs)


def attr(name, attribute):
    return ld(5, ld(1, name) + ld(2, attribute))


def graph_inp(name, role=1):
    return ld(4, ld(1, name) + v(2, role))


def param(name, init):
    return ld(5, ld(1, name) + ld(2, init))


F32, I64 = 1, 6
X = value("x", F32, [dim(symbol="batch"), dim(4)])
W = value("w", F32, [dim(4), dim(2)])

write("graph_proto", "wrong-wire-type.pb", key(1, 0) + varint(5) + key(2, 0) + varint(1))
write("graph_proto", "huge-length.pb", key(2, 2) + varint((1 << 63) - 1) + b"\x00")
write("graph_proto", "deep-groups.pb", key(15, 3) * 5000 + key(15, 4) * 5000)
write("graph_proto", "unknown-dtype.pb", ld(1, "g") + value("x", 99, [dim(3)]) + graph_inp("x"))
write("graph_proto", "huge-dims.pb",
      ld(1, "g") + value("x", F32, [dim(1 << 62), dim(1 << 62), dim((1 << 64) - 1)])
      + graph_inp("x") + ld(7, "x"))
# A parameter holding values whose byte count does not match its shape.
write("graph_proto", "tensor-size-mismatch.pb",
      ld(1, "g") + X + W + graph_inp("x")
      + param("w", ld(1, v(1, F32) + packed(2, [4, 2]) + ld(3, b"\x00" * 7)))
      + node("MatMul", ["x", "w"], ["y"]) + ld(7, "y"))
# A tensor initializer declaring 2^40 x 2^40 elements with no data.
write("graph_proto", "huge-tensor.pb",
      ld(1, "g") + value("w", F32, [dim(1 << 40), dim(1 << 40)])
      + param("w", ld(1, v(1, F32) + packed(2, [1 << 40, 1 << 40]))) + ld(7, "w"))
write("graph_proto", "cycle.pb",
      ld(1, "g") + X + graph_inp("x")
      + node("Add", ["x", "b"], ["a"]) + node("Add", ["a", "x"], ["b"]) + ld(7, "b"))
write("graph_proto", "bad-attribute.pb",
      ld(1, "g") + X + graph_inp("x")
      + node("Reshape", ["x"], ["y"], attr("shape", v(1, -1)) + attr("shape", f64(2, float("nan"))))
      + ld(7, "y") + ld(8, "y"))

write("graph_json", "not-utf8.json", b'{"name": "\xff\xfe"}')
write("graph_json", "deep-nesting.json", "[" * 20000 + "]" * 20000)
write("graph_json", "deep-object.json", '{"name":' * 5000 + '"x"' + "}" * 5000)
write("graph_json", "wrong-types.json", json.dumps({
    "name": 7,
    "values": {"name": "x"},
    "inputs": [{"value": "x", "role": "INPUT_ROLE_NOPE"}],
}))
write("graph_json", "huge-dims.json", json.dumps({
    "name": "g",
    "values": [{"name": "x", "dtype": "DATA_TYPE_F32", "shape": {"dims": [
        {"size": "18446744073709551615"}, {"size": "4611686018427387904"}]}}],
    "inputs": [{"value": "x", "role": "INPUT_ROLE_DATA"}],
    "outputs": ["x"],
}))
X_JSON = {"name": "x", "dtype": "DATA_TYPE_F32",
          "shape": {"dims": [{"symbol": "batch"}, {"size": "4"}, {"size": "4"}]}}


def json_graph(nodes, out):
    return json.dumps({"name": "g", "values": [X_JSON],
                       "inputs": [{"value": "x", "role": "INPUT_ROLE_DATA"}],
                       "nodes": nodes, "outputs": [out]})


write("graph_json", "nan-attribute.json", json_graph([
    {"op": "Dropout", "inputs": ["x"], "outputs": ["y"],
     "attributes": {"p": {"float": "NaN"}, "key": {"int": "-1"}}}], "y"))
write("graph_json", "infinite-fill.json", json_graph([
    {"op": "CausalMask", "inputs": ["x"], "outputs": ["y"],
     "attributes": {"fill": {"float": "-Infinity"}}}], "y"))
write("graph_json", "extreme-axes.json", json_graph([
    {"op": "ReduceSum", "inputs": ["x"], "outputs": ["y"],
     "attributes": {"axes": {"ints": {"values": ["9223372036854775807", "-9223372036854775808"]}},
                    "keep_dims": {"bool": True}}}], "y"))
write("graph_json", "tensor-base64.json", json.dumps({
    "name": "g",
    "values": [{"name": "w", "dtype": "DATA_TYPE_F32", "shape": {"dims": [{"size": "2"}]}}],
    "parameters": [{"value": "w", "init": {"values": {
        "dtype": "DATA_TYPE_F32", "shape": ["2"], "data": "AACAPwAAAEA="}}}],
    "outputs": ["w"],
}))

# --- onnx_import ------------------------------------------------------------

FLOAT, INT64 = 1, 7


def o_dim(n=None, param=None):
    return ld(1, v(1, n) if param is None else ld(2, param))


def o_value(field, name, elem, dims):
    return ld(field, ld(1, name) + ld(2, ld(1, v(1, elem) + ld(2, b"".join(dims)))))


def o_tensor(name, elem, dims, raw=b"", extra=b""):
    return v(2, elem) + b"".join(v(1, d) for d in dims) + ld(8, name) + (ld(9, raw) if raw else b"") + extra


def o_node(op, inputs, outputs, attrs=b"", domain=""):
    body = b"".join(ld(1, i) for i in inputs) + b"".join(ld(2, o) for o in outputs) + ld(4, op)
    return ld(1, body + attrs + (ld(7, domain) if domain else b""))


def o_model(graph, opset=17):
    return v(1, 8) + ld(7, graph) + ld(8, ld(1, "") + v(2, opset))


X_IN = o_value(11, "x", FLOAT, [o_dim(param="N"), o_dim(4)])
Y_OUT = o_value(12, "y", FLOAT, [o_dim(param="N"), o_dim(2)])
W_OK = ld(5, o_tensor("W", FLOAT, [4, 2], struct.pack("<8f", *range(8))))

write("onnx_import", "matmul.onnx", o_model(ld(2, "g") + o_node("MatMul", ["x", "W"], ["y"]) + W_OK + X_IN + Y_OUT))
write("onnx_import", "old-opset.onnx", o_model(ld(2, "g") + o_node("MatMul", ["x", "W"], ["y"]) + W_OK + X_IN + Y_OUT, opset=7))
write("onnx_import", "huge-initializer.onnx", o_model(
    ld(2, "g") + o_node("MatMul", ["x", "W"], ["y"])
    + ld(5, o_tensor("W", FLOAT, [1 << 40, 1 << 40], b"\x00" * 4)) + X_IN + Y_OUT))
write("onnx_import", "negative-dims.onnx", o_model(
    ld(2, "g") + o_node("MatMul", ["x", "W"], ["y"])
    + ld(5, o_tensor("W", FLOAT, [-4, -2], b"\x00" * 32)) + X_IN + Y_OUT))
write("onnx_import", "missing-external.onnx", o_model(
    ld(2, "g") + o_node("MatMul", ["x", "W"], ["y"])
    + ld(5, o_tensor("W", FLOAT, [4, 2], extra=ld(13, ld(1, "location") + ld(2, "../../etc/passwd"))
                     + v(14, 1))) + X_IN + Y_OUT))
write("onnx_import", "huge-reshape.onnx", o_model(
    ld(2, "g") + o_node("Reshape", ["x", "s"], ["y"])
    + ld(5, o_tensor("s", INT64, [3], struct.pack("<3q", 1 << 62, 1 << 62, -1))) + X_IN + Y_OUT))
write("onnx_import", "huge-constant-of-shape.onnx", o_model(
    ld(2, "g") + o_node("ConstantOfShape", ["s"], ["c"]) + o_node("Add", ["x", "c"], ["y"])
    + ld(5, o_tensor("s", INT64, [2], struct.pack("<2q", 1 << 31, 1 << 31))) + X_IN + Y_OUT))
write("onnx_import", "self-loop.onnx", o_model(
    ld(2, "g") + o_node("Add", ["x", "y"], ["y"]) + X_IN + Y_OUT))
write("onnx_import", "other-domain.onnx", o_model(
    ld(2, "g") + o_node("FusedGemm", ["x", "W"], ["y"], domain="com.microsoft") + W_OK + X_IN + Y_OUT))
write("onnx_import", "deep-groups.onnx", key(20, 3) * 5000 + key(20, 4) * 5000)

# --- job_spec ---------------------------------------------------------------

BLOB = "blobs/" + "ab" * 32

write("job_spec", "full.toml", """\
name = "mlp"
graph = "mlp.json"
data = "train.safetensors"
eval = "eval.safetensors"
workers = 2
batch_size = 32
grad_accum = 1
steps = 200
optimizer = "adamw:lr=1e-3,wd=0.01"
schedule = "cosine:warmup=20,min_lr=1e-5"
clip_grad_norm = 1.0
checkpoint_every = 50
eval_every = 50
seed = 0
init = "weights.safetensors"
bucket_mb = 25
checkpoint = "Budget:1GiB"
memory_budget = "8GiB"
lazy_experts = false
expert_parallel = 2
nan_policy = "skip_step"
max_restarts = 3
""")
write("job_spec", "minimal.toml", 'graph = "m.json"\ndata = "d.safetensors"\nbatch_size = 1\nepochs = 1\n')
write("job_spec", "policies.toml",
      'data = "d"\nbatch_size = 8\nsteps = 1\ncheckpoint = "every:0"\nmemory_budget = "18446744073709551615EiB"\n'
      'optimizer = "sgd:lr=inf,momentum=0.99,nesterov=true"\nschedule = "constant:warmup=18446744073709551616"\n')
write("job_spec", "wrong-types.toml", 'workers = "two"\nbatch_size = -1\nsteps = 1.5\nlazy_experts = "yes"\n')
write("job_spec", "unknown-field.toml", 'data = "d"\nbatch_size = 4\nsteps = 1\nlearning_rate = 0.1\n')
write("job_spec", "huge-numbers.toml",
      'data = "d"\nbatch_size = 18446744073709551615\nsteps = 9223372036854775807\n'
      'workers = 4294967295\nexpert_parallel = 4294967295\nbucket_mb = 1e308\nclip_grad_norm = nan\n')
write("job_spec", "deep-nesting.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n")
write("job_spec", "deep-tables.toml", "[" + ".".join(["a"] * 3000) + "]\nb = 1\n")
write("job_spec", "truncated.toml", 'name = "mlp\ndata = ')

OPT = ld(12, ld(1, "adamw") + f64(2, 1e-3))
SCHED = ld(13, ld(1, "cosine") + v(2, 20))
valid_spec = (ld(1, "job") + ld(3, BLOB) + ld(4, BLOB) + v(6, 2) + ld(7, "cpu") + v(8, 32)
              + v(9, 1) + v(10, 100) + OPT + SCHED + ld(21, "every:2") + ld(22, "2GiB"))
write("job_spec", "blob-spec.bin", valid_spec)
write("job_spec", "truncated-spec.bin", valid_spec[:-7])
with open(os.path.join(ROOT, "graph_proto", "mlp.pb"), "rb") as f:
    write("job_spec", "inline-graph-spec.bin", ld(2, f.read()) + ld(4, BLOB) + v(8, 16) + v(11, 3))
write("job_spec", "bad-blob-id.bin", ld(3, "blobs/../../etc/passwd") + ld(4, BLOB) + v(8, 1) + v(10, 1))
write("job_spec", "huge-limits.bin",
      ld(3, BLOB) + ld(4, BLOB) + v(6, (1 << 32) - 1) + v(8, (1 << 64) - 1) + v(9, (1 << 32) - 1)
      + v(10, (1 << 64) - 1) + v(24, (1 << 32) - 1) + f64(20, float("nan")))

# --- truncated copies of the valid seeds ------------------------------------

for target, name, keep in [
    ("graph_proto", "mlp.pb", 600),
    ("graph_json", "mlp.json", 3000),
    ("onnx_import", "transformer.onnx", 4096),
]:
    with open(os.path.join(ROOT, target, name), "rb") as f:
        base, ext = os.path.splitext(name)
        write(target, base + "-truncated" + ext, f.read()[:keep])
