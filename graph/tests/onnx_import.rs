//! ONNX import: small models written with the prost types of
//! `adjoint_proto::onnx`, imported and run on the interpreter against
//! values computed by hand; constant folding of exporter shape chains;
//! external data; freeze globs; training losses whose gradients pass a
//! finite-difference check; and every import error, which names the node,
//! attribute, tensor or file involved and never panics.

// The external-data callbacks return the crate's (large) error type.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use adjoint_graph::autodiff::grad;
use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::{EvalCx, Tensor, run_outputs};
use adjoint_graph::onnx::{ImportOptions, Imported, import, read_tensor, with_loss};
use adjoint_graph::ops::unary::erf;
use adjoint_graph::ops::{Movement, Nn, Op};
use adjoint_graph::{DType, Dim, Error, Graph, Result, Shape};
use adjoint_proto::onnx as pb;
use pb::attribute_proto::AttributeType as At;
use pb::tensor_proto::{DataLocation, DataType as Dt};
use prost::Message;

// ----- model-writing helpers -----

fn attr(name: &str, t: At) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(t as i32),
        ..Default::default()
    }
}

fn a_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i: Some(v),
        ..attr(name, At::Int)
    }
}

fn a_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        f: Some(v),
        ..attr(name, At::Float)
    }
}

fn a_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: v.to_vec(),
        ..attr(name, At::Ints)
    }
}

fn a_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..attr(name, At::String)
    }
}

fn a_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        t: Some(t),
        ..attr(name, At::Tensor)
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{op}_{}", outputs.first().unwrap_or(&""))),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

/// A FLOAT tensor in `raw_data`.
fn f32s(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(Dt::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A DOUBLE tensor in `double_data`.
fn f64s(name: &str, dims: &[i64], data: &[f64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(Dt::Double as i32),
        double_data: data.to_vec(),
        ..Default::default()
    }
}

/// An INT64 tensor in `int64_data`.
fn i64s(name: &str, dims: &[i64], data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(Dt::Int64 as i32),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// A Constant node holding an i64 vector.
fn const_ints(out: &str, v: &[i64]) -> pb::NodeProto {
    let t = i64s("", &[v.len() as i64], v);
    node("Constant", &[], &[out], vec![a_tensor("value", t)])
}

/// A tensor value; a dim of -1 is the symbol "N".
fn vi(name: &str, elem: Dt, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value as D};
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 {
                D::DimParam("N".into())
            } else {
                D::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An output declared by name only.
fn out(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn model_at(
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(pb::GraphProto {
            name: Some("test".into()),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
) -> pb::ModelProto {
    model_at(18, nodes, inits, inputs, outputs)
}

fn no_files(location: &str) -> Result<Vec<u8>> {
    Err(Error::Unsupported(format!("no file '{location}'")))
}

fn try_import(m: &pb::ModelProto, batch: Option<usize>) -> Result<Imported> {
    let opts = ImportOptions {
        batch,
        ..Default::default()
    };
    import(&m.encode_to_vec(), &opts, &no_files)
}

fn imp(m: &pb::ModelProto) -> Imported {
    try_import(m, None).unwrap()
}

fn err(m: &pb::ModelProto) -> String {
    try_import(m, None).unwrap_err().to_string()
}

/// Runs `g` (bound to `batch` when it has the symbol) with named feeds.
fn run(g: &Graph, batch: usize, feeds: &[(&str, Tensor)]) -> Vec<Tensor> {
    let g = g.bind_batch(batch);
    let feeds: BTreeMap<_, _> = feeds
        .iter()
        .map(|(n, t)| (g.find(n).unwrap(), t.clone()))
        .collect();
    run_outputs(&g, &feeds, &EvalCx::default()).unwrap()
}

fn close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g == w || (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

/// Deterministic values in about [-1, 1], exact in f32.
fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37 + seed as f32 * 1.3).sin() * 64.0).round() / 64.0)
        .collect()
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `a [m, k] · b [k, n]` (or `b` given as `[n, k]` with `bt`).
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, bt: bool) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|p| a[i * k + p] * if bt { b[j * k + p] } else { b[p * n + j] })
                .sum();
        }
    }
    y
}

// ----- models -----

/// `Gemm(Relu(Gemm(x, w1, b1)), w2ᵀ, b2)` with alpha 0.5 and beta 2.
fn mlp_model() -> pb::ModelProto {
    let nodes = vec![
        node("Gemm", &["x", "w1", "b1"], &["h"], vec![]),
        node("Relu", &["h"], &["r"], vec![]),
        node(
            "Gemm",
            &["r", "w2", "b2"],
            &["logits"],
            vec![
                a_int("transB", 1),
                a_float("alpha", 0.5),
                a_float("beta", 2.0),
            ],
        ),
    ];
    let inits = vec![
        f32s("w1", &[4, 8], &vals(32, 1)),
        f32s("b1", &[8], &vals(8, 2)),
        f32s("w2", &[3, 8], &vals(24, 3)),
        f32s("b2", &[3], &vals(3, 4)),
    ];
    let inputs = vec![vi("x", Dt::Float, &[-1, 4]), vi("w1", Dt::Float, &[4, 8])];
    model(
        nodes,
        inits,
        inputs,
        vec![vi("logits", Dt::Float, &[-1, 3])],
    )
}

fn mlp_reference(x: &[f64], n: usize) -> Vec<f64> {
    let (w1, b1, w2, b2) = (
        wide(&vals(32, 1)),
        wide(&vals(8, 2)),
        wide(&vals(24, 3)),
        wide(&vals(3, 4)),
    );
    let mut h = matmul(x, &w1, n, 4, 8, false);
    for (i, v) in h.iter_mut().enumerate() {
        *v = (*v + b1[i % 8]).max(0.0);
    }
    let mut y = matmul(&h, &w2, n, 8, 3, true);
    for (i, v) in y.iter_mut().enumerate() {
        *v = 0.5 * *v + 2.0 * b2[i % 3];
    }
    y
}

#[test]
fn an_mlp_of_gemm_and_relu_matches_a_hand_computation() {
    let imported = imp(&mlp_model());
    assert_eq!(imported.opset, 18);
    assert_eq!(imported.inputs, ["x"]);
    assert_eq!(imported.outputs, ["logits"]);
    assert_eq!(imported.trainable, ["w1", "b1", "w2", "b2"]);
    let g = &imported.graph;
    assert!(g.loss.is_none());
    let logits = g.outputs[0];
    assert_eq!(g.name_of(logits), "logits");
    assert_eq!(g.ty(logits).shape, Shape(vec![Dim::Batch, Dim::Fixed(3)]));
    assert!(
        g.find("w1")
            .is_some_and(|w| g.param(w).is_some_and(|p| p.trainable))
    );

    let x = wide(&vals(8, 9));
    let got = run(g, 2, &[("x", Tensor::new(vec![2, 4], x.clone()))]);
    close(&got[0].data, &mlp_reference(&x, 2));

    let fixed = try_import(&mlp_model(), Some(5)).unwrap();
    let shape = &fixed.graph.ty(fixed.graph.outputs[0]).shape;
    assert_eq!(shape, &Shape::of(&[5, 3]));
}

/// A model serialized by the official `onnx` Python package (1.23,
/// `onnx.helper`, opset 17): `Reshape(Relu(Gemm(x, w, b, alpha=2)), [0, -1])`
/// with a symbolic batch. It pins the field numbers of `proto/onnx`.
const OFFICIAL_MODEL: &str = "0808120b6f6e6e782d68656c7065723afe010a360a01780a01770a01621201681a026663220447656d6d2a0f0a05616c7068611500000040a001012a0d0a067472616e73421800a001020a110a01681201721a03616374220452656c750a1c0a01720a0573686170651201791a04666c6174220752657368617065120474696e792a230802080310014201774a180000003f000080bf0000803e0000c03f0000403f000000bf2a15080310014201624a0ccdcccc3dcdcc4cbe9a99993e2a1d08021007420573686170654a100000000000000000ffffffffffffffff5a180a017812130a110801120d0a07120562617463680a02080262180a017912130a110801120d0a07120562617463680a02080342040a001011";

#[test]
fn a_model_written_by_the_onnx_package_imports() {
    let bytes: Vec<u8> = (0..OFFICIAL_MODEL.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&OFFICIAL_MODEL[i..i + 2], 16).unwrap())
        .collect();
    let imported = import(&bytes, &ImportOptions::default(), &no_files).unwrap();
    assert_eq!(imported.opset, 17);
    assert_eq!(imported.trainable, ["w", "b"]);
    let g = &imported.graph;
    assert_eq!(g.name, "tiny");
    assert_eq!(
        g.ty(g.outputs[0]).shape,
        Shape(vec![Dim::Batch, Dim::Fixed(3)])
    );
    let x = Tensor::new(vec![2, 2], vec![1.0, 2.0, -1.0, 0.5]);
    let got = run(g, 2, &[("x", x)]);
    // onnx.reference.ReferenceEvaluator's output (f32).
    let want = [7.1, 0.8, 0.0, 0.6, 2.55, 0.0];
    for (a, b) in got[0].data.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{:?}", got[0].data);
    }
}

/// `Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [k]))` as exporters
/// write `x.view(x.size(0), -1)`, with `k` from `extra` nodes.
fn flatten_chain(extra: Vec<pb::NodeProto>, k: &str) -> pb::ModelProto {
    let mut nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node(
            "Constant",
            &[],
            &["zero"],
            vec![a_tensor("value", i64s("", &[], &[0]))],
        ),
        node("Gather", &["s", "zero"], &["n"], vec![a_int("axis", 0)]),
        const_ints("axes0", &[0]),
        node("Unsqueeze", &["n", "axes0"], &["n1"], vec![]),
    ];
    nodes.extend(extra);
    nodes.push(node(
        "Concat",
        &["n1", k],
        &["target"],
        vec![a_int("axis", 0)],
    ));
    nodes.push(node("Reshape", &["x", "target"], &["y"], vec![]));
    model(
        nodes,
        vec![],
        vec![vi("x", Dt::Float, &[-1, 2, 3])],
        vec![out("y")],
    )
}

#[test]
fn shape_gather_unsqueeze_concat_reshape_folds_to_one_reshape() {
    let minus_one = vec![const_ints("k", &[-1])];
    // k = Unsqueeze(Shape(x)[1] * Shape(x)[2]): integer arithmetic folds.
    let product = vec![
        node(
            "Constant",
            &[],
            &["one"],
            vec![a_tensor("value", i64s("", &[], &[1]))],
        ),
        node(
            "Constant",
            &[],
            &["two"],
            vec![a_tensor("value", i64s("", &[], &[2]))],
        ),
        node("Gather", &["s", "one"], &["d1"], vec![]),
        node("Gather", &["s", "two"], &["d2"], vec![]),
        node("Mul", &["d1", "d2"], &["d12"], vec![]),
        node("Unsqueeze", &["d12", "axes0"], &["k"], vec![]),
    ];
    for extra in [minus_one, product] {
        let m = flatten_chain(extra, "k");
        let imported = imp(&m);
        let g = &imported.graph;
        assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
        assert!(matches!(g.nodes[0].op, Op::Movement(Movement::Reshape(_))));
        let y = g.outputs[0];
        assert_eq!(g.ty(y).shape, Shape(vec![Dim::Batch, Dim::Fixed(6)]));
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let got = run(g, 2, &[("x", Tensor::new(vec![2, 2, 3], x.clone()))]);
        assert_eq!(got[0].shape, [2, 6]);
        close(&got[0].data, &x);

        let bound = try_import(&m, Some(4)).unwrap();
        assert_eq!(
            bound.graph.ty(bound.graph.outputs[0]).shape,
            Shape::of(&[4, 6])
        );
    }
}

#[test]
fn a_shape_that_needs_the_batch_size_asks_for_one() {
    // Reshape to [Shape(x)[0] * Shape(x)[1], 3]: the product needs a number.
    let nodes = vec![
        node("Shape", &["x"], &["s"], vec![]),
        node("Gather", &["s", "zero"], &["n"], vec![]),
        node("Gather", &["s", "one"], &["d1"], vec![]),
        node("Mul", &["n", "d1"], &["rows"], vec![]),
        const_ints("axes0", &[0]),
        node("Unsqueeze", &["rows", "axes0"], &["rows1"], vec![]),
        const_ints("three", &[3]),
        node(
            "Concat",
            &["rows1", "three"],
            &["target"],
            vec![a_int("axis", 0)],
        ),
        node("Reshape", &["x", "target"], &["y"], vec![]),
    ];
    let inits = vec![i64s("zero", &[], &[0]), i64s("one", &[], &[1])];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[-1, 2, 3])],
        vec![out("y")],
    );
    let e = err(&m);
    assert!(
        e.contains("Mul_rows") && e.contains("'n'") && e.contains("pass a batch size"),
        "{e}"
    );
    let imported = try_import(&m, Some(2)).unwrap();
    let g = &imported.graph;
    assert_eq!(g.ty(g.outputs[0]).shape, Shape::of(&[4, 3]));
}

#[test]
fn softmax_log_softmax_and_layer_normalization_match_by_hand() {
    let (scale, bias) = (vals(4, 5), vals(4, 6));
    let nodes = vec![
        node(
            "LayerNormalization",
            &["x", "scale", "bias"],
            &["ln"],
            vec![a_float("epsilon", 1e-3)],
        ),
        node("Softmax", &["ln"], &["y"], vec![a_int("axis", -1)]),
        node("LogSoftmax", &["ln"], &["z"], vec![a_int("axis", 0)]),
    ];
    let inits = vec![f32s("scale", &[4], &scale), f32s("bias", &[4], &bias)];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[2, 4])],
        vec![out("y"), out("z")],
    );
    let imported = imp(&m);
    let x = wide(&vals(8, 7));
    let got = run(
        &imported.graph,
        2,
        &[("x", Tensor::new(vec![2, 4], x.clone()))],
    );

    let mut ln = [0.0; 8];
    for r in 0..2 {
        let row = &x[r * 4..r * 4 + 4];
        let mean = row.iter().sum::<f64>() / 4.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        for c in 0..4 {
            let xhat = (row[c] - mean) / (var + f64::from(1e-3f32)).sqrt();
            ln[r * 4 + c] = xhat * f64::from(scale[c]) + f64::from(bias[c]);
        }
    }
    let mut y = vec![0.0; 8];
    for r in 0..2 {
        let sum: f64 = (0..4).map(|c| ln[r * 4 + c].exp()).sum();
        for c in 0..4 {
            y[r * 4 + c] = ln[r * 4 + c].exp() / sum;
        }
    }
    let mut z = vec![0.0; 8];
    for c in 0..4 {
        let lse = (ln[c].exp() + ln[4 + c].exp()).ln();
        z[c] = ln[c] - lse;
        z[4 + c] = ln[4 + c] - lse;
    }
    close(&got[0].data, &y);
    close(&got[1].data, &z);
}

#[test]
fn layer_normalization_over_the_last_two_axes_flattens_them() {
    let scale = vals(12, 3);
    let nodes = vec![node(
        "LayerNormalization",
        &["x", "scale"],
        &["y"],
        vec![a_int("axis", -2)],
    )];
    let m = model(
        nodes,
        vec![f32s("scale", &[3, 4], &scale)],
        vec![vi("x", Dt::Float, &[-1, 3, 4])],
        vec![vi("y", Dt::Float, &[-1, 3, 4])],
    );
    let imported = imp(&m);
    let x = wide(&vals(24, 8));
    let got = run(
        &imported.graph,
        2,
        &[("x", Tensor::new(vec![2, 3, 4], x.clone()))],
    );
    let mut want = vec![0.0; 24];
    for b in 0..2 {
        let s = &x[b * 12..b * 12 + 12];
        let mean = s.iter().sum::<f64>() / 12.0;
        let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 12.0;
        for i in 0..12 {
            want[b * 12 + i] =
                (s[i] - mean) / (var + f64::from(1e-5f32)).sqrt() * f64::from(scale[i]);
        }
    }
    close(&got[0].data, &want);
}

#[test]
fn split_slice_squeeze_and_unsqueeze_take_their_opset_13_inputs() {
    let nodes = vec![
        const_ints("sizes", &[2, 4]),
        node(
            "Split",
            &["x", "sizes"],
            &["a", "b"],
            vec![a_int("axis", 1)],
        ),
        const_ints("one", &[1]),
        const_ints("end", &[i64::MAX]),
        node("Slice", &["b", "one", "end", "one"], &["c"], vec![]),
        const_ints("last", &[-1]),
        const_ints("zero", &[0]),
        node("Slice", &["x", "last", "end", "zero"], &["d"], vec![]),
        node("Squeeze", &["d", "zero"], &["e"], vec![]),
        node("Unsqueeze", &["e", "one"], &["f"], vec![]),
        node("Split", &["x"], &["g", "h"], vec![a_int("num_outputs", 2)]),
    ];
    let outs = ["a", "c", "e", "f", "h"].map(out).to_vec();
    let m = model(nodes, vec![], vec![vi("x", Dt::Float, &[2, 6])], outs);
    let imported = imp(&m);
    let x: Vec<f64> = (0..12).map(f64::from).collect();
    let got = run(&imported.graph, 2, &[("x", Tensor::new(vec![2, 6], x))]);
    let shapes: Vec<&[usize]> = got.iter().map(|t| t.shape.as_slice()).collect();
    assert_eq!(shapes, [&[2, 2][..], &[2, 3], &[6], &[6, 1], &[1, 6]]);
    close(&got[0].data, &[0.0, 1.0, 6.0, 7.0]);
    close(&got[1].data, &[3.0, 4.0, 5.0, 9.0, 10.0, 11.0]);
    close(&got[2].data, &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    close(&got[3].data, &got[2].data.clone());
    close(&got[4].data, &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
}

#[test]
fn slices_with_steps_fold_on_constants_and_are_refused_on_data() {
    let on_const = vec![
        node("Range", &["r0", "r10", "r1"], &["range"], vec![]),
        const_ints("start", &[8]),
        const_ints("stop", &[0]),
        const_ints("step", &[-3]),
        node(
            "Slice",
            &["range", "start", "stop", "zero", "step"],
            &["y"],
            vec![],
        ),
    ];
    let inits = vec![
        i64s("r0", &[], &[0]),
        i64s("r10", &[], &[10]),
        i64s("r1", &[], &[1]),
        i64s("zero", &[1], &[0]),
    ];
    let m = model(on_const, inits.clone(), vec![], vec![out("y")]);
    let imported = imp(&m);
    assert!(imported.graph.params.iter().all(|p| !p.trainable));
    let got = run(&imported.graph, 1, &[]);
    close(&got[0].data, &[8.0, 5.0, 2.0]);

    let on_data = vec![
        const_ints("start", &[0]),
        const_ints("stop", &[6]),
        const_ints("step", &[2]),
        node(
            "Slice",
            &["x", "start", "stop", "zero", "step"],
            &["y"],
            vec![],
        ),
    ];
    let m = model(
        on_data,
        inits,
        vec![vi("x", Dt::Float, &[6])],
        vec![out("y")],
    );
    let e = err(&m);
    assert!(e.contains("Slice_y") && e.contains("steps [2]"), "{e}");
}

/// One model of a single node on `x`, against a reference per element.
fn unary_case(op: &str, attrs: Vec<pb::AttributeProto>, f: impl Fn(f64) -> f64) {
    let m = model(
        vec![node(op, &["x"], &["y"], attrs)],
        vec![],
        vec![vi("x", Dt::Double, &[6])],
        vec![out("y")],
    );
    let x = [-1.5, -0.25, 0.0, 0.3, 1.0, 2.5];
    let imported = try_import(&m, None).unwrap_or_else(|e| panic!("{op}: {e}"));
    let got = run(
        &imported.graph,
        1,
        &[("x", Tensor::new(vec![6], x.to_vec()))],
    );
    let want: Vec<f64> = x.iter().map(|&v| f(v)).collect();
    close(&got[0].data, &want);
}

#[test]
fn elementwise_ops_follow_their_onnx_definitions() {
    let gelu = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    let gelu_tanh = |v: f64| {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
        0.5 * v * (1.0 + u.tanh())
    };
    unary_case("Neg", vec![], |v| -v);
    unary_case("Exp", vec![], f64::exp);
    unary_case("Tanh", vec![], f64::tanh);
    unary_case("Sigmoid", vec![], |v| 1.0 / (1.0 + (-v).exp()));
    unary_case("Relu", vec![], |v| v.max(0.0));
    unary_case("Erf", vec![], erf);
    unary_case("Reciprocal", vec![], |v| 1.0 / v);
    unary_case("LeakyRelu", vec![a_float("alpha", 0.25)], |v| {
        if v > 0.0 { v } else { 0.25 * v }
    });
    unary_case("Gelu", vec![], gelu);
    unary_case("Gelu", vec![a_str("approximate", "tanh")], gelu_tanh);
    unary_case("Identity", vec![], |v| v);
    unary_case("Dropout", vec![], |v| v);

    let m = model(
        vec![
            node("Abs", &["x"], &["ax"], vec![]),
            node("Sqrt", &["x"], &["y"], vec![]),
        ],
        vec![],
        vec![vi("x", Dt::Double, &[2])],
        vec![out("y")],
    );
    assert!(err(&m).contains("unknown op 'Abs'"));

    // Binary ops broadcast [2, 3] against [3]; Pow takes an int exponent.
    let a: Vec<f64> = vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0];
    let b = [2.0, 4.0, 0.5];
    type BinRef = fn(f64, f64) -> f64;
    let cases: [(&str, BinRef); 4] = [
        ("Add", |x, y| x + y),
        ("Sub", |x, y| x - y),
        ("Mul", |x, y| x * y),
        ("Div", |x, y| x / y),
    ];
    for (op, f) in cases {
        let m = model(
            vec![node(op, &["a", "b"], &["y"], vec![])],
            vec![f64s("b", &[3], &b)],
            vec![vi("a", Dt::Double, &[2, 3])],
            vec![out("y")],
        );
        let got = run(
            &imp(&m).graph,
            1,
            &[("a", Tensor::new(vec![2, 3], a.clone()))],
        );
        let want: Vec<f64> = (0..6).map(|i| f(a[i], b[i % 3])).collect();
        close(&got[0].data, &want);
    }
    let m = model(
        vec![node("Pow", &["a", "p"], &["y"], vec![])],
        vec![i64s("p", &[], &[3])],
        vec![vi("a", Dt::Double, &[2, 3])],
        vec![out("y")],
    );
    let got = run(
        &imp(&m).graph,
        1,
        &[("a", Tensor::new(vec![2, 3], a.clone()))],
    );
    close(
        &got[0].data,
        &a.iter().map(|v| v.powi(3)).collect::<Vec<_>>(),
    );
}

#[test]
fn selection_casts_and_constants_map_to_the_ir() {
    let nodes = vec![
        node("Constant", &[], &["two"], vec![a_float("value_float", 2.0)]),
        node("Equal", &["x", "two"], &["is2"], vec![]),
        node("Less", &["x", "two"], &["lt"], vec![]),
        node("ConstantOfShape", &["shape4"], &["zeros"], vec![]),
        node("Where", &["lt", "x", "zeros"], &["w"], vec![]),
        node(
            "Cast",
            &["is2"],
            &["c"],
            vec![a_int("to", Dt::Int64 as i64)],
        ),
        node(
            "Constant",
            &[],
            &["fs"],
            vec![a_ints("value_ints", &[1, 4])],
        ),
        node("Reshape", &["w", "fs"], &["w14"], vec![]),
        node("Expand", &["w14", "shape24"], &["big"], vec![]),
    ];
    let inits = vec![i64s("shape4", &[1], &[4]), i64s("shape24", &[2], &[2, 4])];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[4])],
        vec![out("c"), out("big")],
    );
    let g = imp(&m).graph;
    let got = run(
        &g,
        1,
        &[("x", Tensor::new(vec![4], vec![1.0, 2.0, 3.0, -1.0]))],
    );
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::I64);
    close(&got[0].data, &[0.0, 1.0, 0.0, 0.0]);
    assert_eq!(got[1].shape, [2, 4]);
    close(&got[1].data, &[1.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, -1.0]);
}

#[test]
fn gather_transpose_flatten_reduce_and_matmul_of_a_vector() {
    let nodes = vec![
        const_ints("idx", &[-1, 0]),
        node("Gather", &["x", "idx"], &["rows"], vec![a_int("axis", 1)]),
        node(
            "Transpose",
            &["x"],
            &["xt"],
            vec![a_ints("perm", &[2, 0, 1])],
        ),
        node("Flatten", &["xt"], &["flat"], vec![]),
        const_ints("ax", &[1]),
        node(
            "ReduceMean",
            &["x", "ax"],
            &["mean"],
            vec![a_int("keepdims", 0)],
        ),
        node("ReduceSum", &["x"], &["total"], vec![a_int("keepdims", 0)]),
        node(
            "ReduceSum",
            &["x"],
            &["same"],
            vec![a_int("noop_with_empty_axes", 1)],
        ),
        node("MatMul", &["v", "m"], &["vm"], vec![]),
    ];
    let inits = vec![f32s("m", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])];
    let inputs = vec![vi("x", Dt::Float, &[2, 3, 2]), vi("v", Dt::Float, &[3])];
    let outs = ["rows", "flat", "mean", "total", "same", "vm"]
        .map(out)
        .to_vec();
    let g = imp(&model(nodes, inits, inputs, outs)).graph;
    let x: Vec<f64> = (0..12).map(f64::from).collect();
    let feeds = [
        ("x", Tensor::new(vec![2, 3, 2], x.clone())),
        ("v", Tensor::new(vec![3], vec![1.0, -1.0, 2.0])),
    ];
    let got = run(&g, 1, &feeds);
    assert_eq!(got[0].shape, [2, 2, 2]);
    close(&got[0].data, &[4.0, 5.0, 0.0, 1.0, 10.0, 11.0, 6.0, 7.0]);
    assert_eq!(got[1].shape, [2, 6]);
    close(
        &got[1].data,
        &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0],
    );
    close(&got[2].data, &[2.0, 3.0, 8.0, 9.0]);
    close(&got[3].data, &[66.0]);
    close(&got[4].data, &x);
    close(&got[5].data, &[8.0, 10.0]);
}

#[test]
fn trilu_folds_on_constants_and_masks_data() {
    let nodes = vec![
        node(
            "ConstantOfShape",
            &["shape33"],
            &["ones"],
            vec![a_tensor("value", f32s("", &[1], &[1.0]))],
        ),
        node("Trilu", &["ones"], &["lower"], vec![a_int("upper", 0)]),
        node("Trilu", &["x", "k1"], &["upper"], vec![]),
    ];
    let inits = vec![i64s("shape33", &[2], &[3, 3]), i64s("k1", &[], &[1])];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[3, 3])],
        vec![out("lower"), out("upper")],
    );
    let g = imp(&m).graph;
    let got = run(
        &g,
        1,
        &[(
            "x",
            Tensor::new(vec![3, 3], (1..10).map(f64::from).collect()),
        )],
    );
    close(&got[0].data, &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    close(&got[1].data, &[0.0, 2.0, 3.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0]);
}

#[test]
fn dropout_in_training_mode_is_the_ir_dropout() {
    let nodes = vec![node(
        "Dropout",
        &["x", "ratio", "train"],
        &["y", ""],
        vec![],
    )];
    let train = pb::TensorProto {
        data_type: Some(Dt::Bool as i32),
        raw_data: Some(vec![1]),
        name: Some("train".into()),
        ..Default::default()
    };
    let inits = vec![f32s("ratio", &[], &[0.25]), train];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[-1, 4])],
        vec![out("y")],
    );
    let g = imp(&m).graph;
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert!(
        matches!(ops[..], [Op::Nn(Nn::Dropout { p, .. })] if *p == 0.25),
        "{ops:?}"
    );
    // The ratio initializer is read as a constant: no parameter.
    assert!(g.find("ratio").is_none() && g.params.is_empty());
}

#[test]
fn external_data_is_read_through_the_callback() {
    let w: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0];
    let mut file = vec![0u8; 16];
    file.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    let entry = |k: &str, v: &str| pb::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let ext = pb::TensorProto {
        name: Some("w".into()),
        dims: vec![2, 2],
        data_type: Some(Dt::Float as i32),
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            entry("location", "weights.bin"),
            entry("offset", "16"),
            entry("length", "16"),
        ],
        ..Default::default()
    };
    let m = model(
        vec![node("MatMul", &["x", "w"], &["y"], vec![])],
        vec![ext],
        vec![vi("x", Dt::Float, &[1, 2])],
        vec![out("y")],
    );
    let bytes = m.encode_to_vec();
    let files = |location: &str| -> Result<Vec<u8>> {
        match location {
            "weights.bin" => Ok(file.clone()),
            _ => Err(Error::Unsupported(format!("no file '{location}'"))),
        }
    };
    let imported = import(&bytes, &ImportOptions::default(), &files).unwrap();
    let got = run(
        &imported.graph,
        1,
        &[("x", Tensor::new(vec![1, 2], vec![1.0, 1.0]))],
    );
    close(&got[0].data, &[4.0, 6.0]);

    let e = import(&bytes, &ImportOptions::default(), &no_files).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { value, .. } if value == "w"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("missing external data 'weights.bin'"),
        "{e}"
    );
}

#[test]
fn freeze_globs_keep_initializers_out_of_training() {
    let nodes = vec![
        node("MatMul", &["x", "enc.w"], &["h"], vec![]),
        node("Add", &["h", "enc.b"], &["h2"], vec![]),
        node("MatMul", &["h2", "head.w"], &["y"], vec![]),
    ];
    let inits = vec![
        f32s("enc.w", &[2, 2], &vals(4, 1)),
        f32s("enc.b", &[2], &vals(2, 2)),
        f32s("head.w", &[2, 1], &vals(2, 3)),
        f32s("unused", &[1], &[0.0]),
    ];
    let m = model(
        nodes,
        inits,
        vec![vi("x", Dt::Float, &[-1, 2])],
        vec![out("y")],
    );
    let opts = ImportOptions {
        batch: Some(3),
        freeze: vec!["enc.*".into()],
    };
    let imported = import(&m.encode_to_vec(), &opts, &no_files).unwrap();
    assert_eq!(imported.trainable, ["head.w"]);
    let g = &imported.graph;
    let names: Vec<(&str, bool)> = g
        .params
        .iter()
        .map(|p| (g.name_of(p.value), p.trainable))
        .collect();
    assert_eq!(
        names,
        [("enc.w", false), ("enc.b", false), ("head.w", true)]
    );
    assert!(g.is_static());
}

/// An f64 model for gradient checks: LayerNorm, Gelu and a Gemm head.
fn f64_model() -> pb::ModelProto {
    let nodes = vec![
        node("LayerNormalization", &["x", "g", "b"], &["ln"], vec![]),
        node("Gelu", &["ln"], &["act"], vec![]),
        node(
            "Gemm",
            &["act", "w", "c"],
            &["logits"],
            vec![a_int("transB", 1)],
        ),
    ];
    let to64 = |v: Vec<f32>| wide(&v);
    let inits = vec![
        f64s("g", &[4], &to64(vals(4, 1))),
        f64s("b", &[4], &to64(vals(4, 2))),
        f64s("w", &[3, 4], &to64(vals(12, 3))),
        f64s("c", &[3], &to64(vals(3, 4))),
    ];
    model(
        nodes,
        inits,
        vec![vi("x", Dt::Double, &[-1, 4])],
        vec![out("logits")],
    )
}

#[test]
fn cross_entropy_and_mse_losses_train_with_checked_gradients() {
    let imported = imp(&f64_model());
    let x = Tensor::new(vec![2, 4], wide(&vals(8, 5)));
    for (kind, label) in [
        ("cross_entropy", Tensor::new(vec![2], vec![2.0, 0.0])),
        ("mse", Tensor::new(vec![2, 3], wide(&vals(6, 6)))),
    ] {
        let g = with_loss(&imported, kind, "logits", "target").unwrap();
        let loss = g.loss.unwrap();
        assert_eq!(g.name_of(loss), "loss");
        let g = g.bind_batch(2);
        let feeds = BTreeMap::from([
            (g.find("x").unwrap(), x.clone()),
            (g.find("target").unwrap(), label.clone()),
        ]);
        let wrt = g.trainable_params();
        assert_eq!(wrt.len(), 4);
        let joint = grad(&g, loss, &wrt).unwrap();
        let outs = run_outputs(&joint.graph, &feeds, &EvalCx::default()).unwrap();
        assert!(outs.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
        assert!(
            outs[1..].iter().all(|t| t.data.iter().any(|&v| v != 0.0)),
            "{kind}"
        );
        let report = gradcheck::check(&g, &wrt, &feeds, &Options::default()).unwrap();
        assert!(report.passed(), "{kind}: {report}");
    }
    let e = with_loss(&imported, "hinge", "logits", "t").unwrap_err();
    assert!(e.to_string().contains("'hinge'"));
    let e = with_loss(&imported, "mse", "nope", "t").unwrap_err();
    assert!(e.to_string().contains("nope"));
    let e = with_loss(&imported, "mse", "logits", "x").unwrap_err();
    assert!(matches!(e, Error::DuplicateValue { .. }), "{e}");
}

#[test]
fn read_tensor_reads_a_backend_test_file() {
    let t = pb::TensorProto {
        int32_data: vec![-3, 200],
        data_type: Some(Dt::Uint8 as i32),
        ..i64s("input_0", &[2], &[])
    };
    let (name, data) = read_tensor(&t.encode_to_vec()).unwrap();
    assert_eq!(name, "input_0");
    assert_eq!((data.dtype, data.shape.clone()), (DType::I32, vec![2]));
    assert_eq!(adjoint_graph::init::decode(&data).unwrap(), [-3.0, 200.0]);
    let (_, data) = read_tensor(&f32s("y", &[2], &[1.5, -2.0]).encode_to_vec()).unwrap();
    assert_eq!(adjoint_graph::init::decode(&data).unwrap(), [1.5, -2.0]);
    assert!(matches!(read_tensor(&[0x0a, 0xff]), Err(Error::Decode(_))));
    let short = f32s("z", &[3], &[1.0]);
    let e = read_tensor(&short.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("'z'") && e.contains("expected 12"), "{e}");
}

// ----- errors -----

#[test]
fn bad_bytes_are_decode_errors_and_never_panic() {
    let bytes = mlp_model().encode_to_vec();
    let opts = ImportOptions::default();
    for cut in [1, 7, bytes.len() / 2, bytes.len() - 1] {
        let e = import(&bytes[..cut], &opts, &no_files).unwrap_err();
        assert!(matches!(e, Error::Decode(_)), "cut {cut}: {e}");
    }
    assert!(matches!(
        import(b"not a model", &opts, &no_files),
        Err(Error::Decode(_))
    ));
    let e = import(&[], &opts, &no_files).unwrap_err();
    assert!(e.to_string().contains("opset"), "{e}");
    // Flipped bytes anywhere, in models that fold, reshape and normalize:
    // an error or a graph, never a panic.
    let models = [
        bytes,
        f64_model().encode_to_vec(),
        flatten_chain(vec![const_ints("k", &[-1])], "k").encode_to_vec(),
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for bytes in &models {
        for _ in 0..1500 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = bytes.clone();
            let at = (state % m.len() as u64) as usize;
            m[at] ^= (state >> 32) as u8 | 1;
            let _ = import(&m, &opts, &no_files);
            let _ = import(
                &m,
                &ImportOptions {
                    batch: Some(3),
                    ..opts.clone()
                },
                &no_files,
            );
        }
    }
}

#[test]
fn opsets_domains_and_ops_outside_the_table_are_named() {
    let relu = || vec![node("Relu", &["x"], &["y"], vec![])];
    let io = || (vec![vi("x", Dt::Float, &[2])], vec![out("y")]);
    let (i, o) = io();
    let e = try_import(&model_at(12, relu(), vec![], i, o), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("opset 12") && e.contains("13"), "{e}");

    let (i, o) = io();
    let mut m = model(relu(), vec![], i, o);
    m.graph.as_mut().unwrap().node[0].domain = Some("com.microsoft".into());
    let e = err(&m);
    assert!(e.contains("com.microsoft") && e.contains("Relu_y"), "{e}");

    let (i, o) = io();
    let m = model(
        vec![node("Frobnicate", &["x"], &["y"], vec![])],
        vec![],
        i,
        o,
    );
    let e = try_import(&m, None).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownOp { op, .. } if op == "Frobnicate"),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("Frobnicate_y") && text.contains("opset 18"),
        "{text}"
    );

    for op in ["ConvTranspose", "GlobalMaxPool"] {
        let (i, o) = io();
        let e = err(&model(vec![node(op, &["x"], &["y"], vec![])], vec![], i, o));
        assert!(
            e.contains(op) && e.contains(&format!("{op}_y")) && e.contains("not supported yet"),
            "{e}"
        );
    }

    let (i, o) = io();
    let e = try_import(
        &model(vec![node("Relu", &["ghost"], &["y"], vec![])], vec![], i, o),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::DanglingValue { value, .. } if value == "ghost"),
        "{e}"
    );
}

#[test]
fn what_the_ir_cannot_hold_is_unsupported() {
    let cases = [
        (
            node("Cast", &["x"], &["y"], vec![a_int("to", Dt::Uint8 as i64)]),
            vi("x", Dt::Float, &[2]),
            "UINT8",
        ),
        (
            node("Relu", &["x"], &["y"], vec![]),
            vi("x", Dt::Int8, &[2]),
            "INT8",
        ),
        (
            node("Add", &["x", "x"], &["y"], vec![]),
            vi("x", Dt::Int64, &[2]),
            "float-only",
        ),
    ];
    for (n, input, what) in cases {
        let e = try_import(&model(vec![n], vec![], vec![input], vec![out("y")]), None).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn bad_attributes_name_the_node_and_attribute() {
    let io = || {
        (
            vec![vi("a", Dt::Float, &[2, 2]), vi("b", Dt::Float, &[2, 2])],
            vec![out("y")],
        )
    };
    let cases = [
        node("Gemm", &["a", "b"], &["y"], vec![a_float("transA", 1.0)]),
        node("Gelu", &["a"], &["y"], vec![a_str("approximate", "cubic")]),
        node("Softmax", &["a"], &["y"], vec![a_int("axis", 5)]),
        node("Cast", &["a"], &["y"], vec![a_int("to", -1)]),
        node("Transpose", &["a"], &["y"], vec![a_ints("perm", &[0, 0])]),
        node("Concat", &["a", "b"], &["y"], vec![]),
    ];
    let attrs = ["transA", "approximate", "axis", "to", "perm", "axis"];
    for (n, attr) in cases.into_iter().zip(attrs) {
        let name = n.name().to_owned();
        let (i, o) = io();
        let e = try_import(&model(vec![n], vec![], i, o), None).unwrap_err();
        assert!(matches!(e, Error::BadAttribute { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&name) && text.contains(&format!("'{attr}'")),
            "{text}"
        );
    }
}

#[test]
fn shape_mismatches_are_errors_naming_the_shapes() {
    let m = model(
        vec![node("MatMul", &["a", "b"], &["y"], vec![])],
        vec![f32s("b", &[4, 5], &vals(20, 1))],
        vec![vi("a", Dt::Float, &[2, 3])],
        vec![out("y")],
    );
    let e = err(&m);
    assert!(e.contains("MatMul_y") && e.contains("[4, 5]"), "{e}");

    let m = model(
        vec![node("Relu", &["a"], &["y"], vec![])],
        vec![],
        vec![vi("a", Dt::Float, &[2, 3])],
        vec![vi("y", Dt::Float, &[2, 4])],
    );
    let e = try_import(&m, None).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { value, .. } if value == "y"),
        "{e}"
    );
    assert!(e.to_string().contains("shape mismatch"), "{e}");

    let m = model(
        vec![
            const_ints("s", &[5, -1]),
            node("Reshape", &["a", "s"], &["y"], vec![]),
        ],
        vec![],
        vec![vi("a", Dt::Float, &[2, 3])],
        vec![out("y")],
    );
    let e = err(&m);
    assert!(e.contains("Reshape_y") && e.contains("[2, 3]"), "{e}");

    let short = pb::TensorProto {
        float_data: vec![1.0],
        ..f32s("w", &[2], &[])
    };
    let short = pb::TensorProto {
        raw_data: None,
        ..short
    };
    let m = model(
        vec![node("Add", &["a", "w"], &["y"], vec![])],
        vec![short],
        vec![vi("a", Dt::Float, &[2])],
        vec![out("y")],
    );
    let e = try_import(&m, None).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidValue { value, .. } if value == "w"),
        "{e}"
    );
}

#[test]
fn inputs_with_symbolic_inner_dims_or_unsupported_outputs_are_refused() {
    let mut x = vi("x", Dt::Float, &[2, 3]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[1].value = Some(
            pb::tensor_shape_proto::dimension::Value::DimParam("seq".into()),
        );
    }
    let m = model(
        vec![node("Relu", &["x"], &["y"], vec![])],
        vec![],
        vec![x],
        vec![out("y")],
    );
    let e = err(&m);
    assert!(e.contains("'x'") && e.contains("seq"), "{e}");

    let train = pb::TensorProto {
        data_type: Some(Dt::Bool as i32),
        raw_data: Some(vec![1]),
        ..i64s("train", &[], &[])
    };
    let m = model(
        vec![node("Dropout", &["x", "", "train"], &["y", "mask"], vec![])],
        vec![train],
        vec![vi("x", Dt::Float, &[2, 3])],
        vec![out("y"), out("mask")],
    );
    let e = err(&m);
    assert!(e.contains("'mask'") && e.contains("not supported"), "{e}");
}

#[test]
fn outputs_that_alias_other_values_still_carry_their_names() {
    let m = model(
        vec![
            node("Identity", &["x"], &["y"], vec![]),
            node(
                "Constant",
                &[],
                &["k"],
                vec![a_ints("value_ints", &[1, 2, 3])],
            ),
        ],
        vec![],
        vec![vi("x", Dt::Float, &[2])],
        vec![out("y"), out("k"), out("x")],
    );
    let imported = imp(&m);
    let g = &imported.graph;
    let names: Vec<&str> = g.outputs.iter().map(|&v| g.name_of(v)).collect();
    assert_eq!(names, ["y", "k", "x"]);
    let got = run(g, 1, &[("x", Tensor::new(vec![2], vec![3.0, 4.0]))]);
    close(&got[0].data, &[3.0, 4.0]);
    close(&got[1].data, &[1.0, 2.0, 3.0]);
}
