#!/usr/bin/env python3
"""Writes ONNX's backend node test cases as files, the layout onnx's own
source tree uses: OUT/<case>/model.onnx and OUT/<case>/test_data_set_N/
{input,output}_J.pb (TensorProto).

The PyPI `onnx` wheel ships the case generators (onnx/backend/test/case/node)
but not their data, so CI runs this after `pip install onnx` and points
`ADJOINT_ONNX_NODE_TESTS` at OUT. Only cases whose model is a single node of
an op in OPS are written (the ops adjoint imports; the runner reports the rest of
those ops' cases as skipped with a reason, never silently).

    python scripts/onnx_node_data.py OUT
"""

import os
import sys

import numpy as np
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case import node as node_cases

OPS = {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal",
    "Neg", "Exp", "Log", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Gelu", "Erf",
    "Softmax", "LogSoftmax", "LayerNormalization", "ReduceMean", "ReduceSum",
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split",
    "Slice", "Gather", "Expand", "Where", "Equal", "Cast", "Constant",
    "ConstantOfShape", "Identity", "Dropout", "Trilu", "Conv", "MaxPool",
    "AveragePool", "GlobalAveragePool", "BatchNormalization",
}


def tensor(value, name):
    if isinstance(value, TensorProto):
        return value
    return numpy_helper.from_array(np.asarray(value), name)


def main(out):
    written = 0
    for case in node_cases.collect_testcases():
        nodes = case.model.graph.node
        if len(nodes) != 1 or nodes[0].op_type not in OPS or not case.data_sets:
            continue
        graph = case.model.graph
        if any(not v.type.HasField("tensor_type") for v in list(graph.input) + list(graph.output)):
            continue
        folder = os.path.join(out, case.name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            data = os.path.join(folder, f"test_data_set_{i}")
            os.makedirs(data, exist_ok=True)
            for kind, values, infos in (("input", inputs, graph.input), ("output", outputs, graph.output)):
                for j, value in enumerate(values):
                    with open(os.path.join(data, f"{kind}_{j}.pb"), "wb") as f:
                        f.write(tensor(value, infos[j].name).SerializeToString())
        written += 1
    print(f"wrote {written} node test cases to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
