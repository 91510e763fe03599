#!/usr/bin/env python3
"""Runs an ONNX model with ONNX Runtime (CPU) on inputs from a safetensors
file and writes its outputs to another safetensors file.

    onnx_run.py MODEL INPUTS.safetensors OUT.safetensors

The inputs are named as the model's graph inputs; every graph output is
written under its name. Used by tests/tests/onnx_service.rs to check that a
model exported by `adjoint pull --onnx` runs in ONNX Runtime and computes
what PyTorch computes with the same weights. Needs onnxruntime, numpy and
safetensors.
"""

import sys


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    model, inputs_path, out_path = argv[1:]
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file, save_file

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    given = load_file(inputs_path)
    feeds = {}
    for i in session.get_inputs():
        if i.name not in given:
            print(f"{inputs_path} has no tensor '{i.name}' (inputs: {sorted(given)})", file=sys.stderr)
            return 1
        feeds[i.name] = given[i.name]
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, feeds)
    save_file({n: np.ascontiguousarray(v) for n, v in zip(names, outputs)}, out_path)
    print(f"onnxruntime {ort.__version__}: wrote {', '.join(names)} to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
