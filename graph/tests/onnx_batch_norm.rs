//! ONNX BatchNormalization import: the opset-13 (opset-9 form), 14 and 15
//! forms in training and inference mode against a direct f64
//! computation; running statistics as state named as the initializers with
//! their updates (population variance per the spec, PyTorch's unbiased
//! variance when PyTorch wrote the model); gradients by finite
//! differences; and the errors bad nodes get.

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::{self, EvalCx, Tensor};
use adjoint_graph::onnx::{ImportOptions, Imported, import, with_loss};
use adjoint_graph::{Error, Graph, Init, Result, init, serialize};
use adjoint_proto::onnx as pb;
use pb::attribute_proto::AttributeType as At;
use pb::tensor_proto::DataType as Dt;
use prost::Message;

// ----- model building -----

fn a_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(At::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn a_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(At::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn bn_node(
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
    name: &str,
) -> pb::NodeProto {
    pb::NodeProto {
        name: Some(name.into()),
        op_type: Some("BatchNormalization".into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn tensor(name: &str, dt: Dt, dims: &[usize], data: &[f64]) -> pb::TensorProto {
    let dims = dims.iter().map(|&d| d as i64).collect();
    match dt {
        Dt::Double => pb::TensorProto {
            name: Some(name.into()),
            data_type: Some(Dt::Double as i32),
            dims,
            double_data: data.to_vec(),
            ..Default::default()
        },
        _ => pb::TensorProto {
            name: Some(name.into()),
            data_type: Some(Dt::Float as i32),
            dims,
            float_data: data.iter().map(|&v| v as f32).collect(),
            ..Default::default()
        },
    }
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

fn out(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

struct Model {
    opset: i64,
    producer: &'static str,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<&'static str>,
}

impl Model {
    fn encode(&self) -> Vec<u8> {
        pb::ModelProto {
            ir_version: Some(8),
            producer_name: Some(self.producer.into()),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(pb::GraphProto {
                name: Some("bn".into()),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.iter().map(|o| out(o)).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

fn no_files(location: &str) -> Result<Vec<u8>> {
    Err(Error::Unsupported(format!("no file '{location}'")))
}

fn try_import(m: &Model, batch: Option<usize>) -> Result<Imported> {
    let opts = ImportOptions {
        batch,
        ..ImportOptions::default()
    };
    import(&m.encode(), &opts, &no_files)
}

// ----- data and the reference -----

/// Deterministic values in about [-1, 1] plus `shift`.
fn vals(n: usize, seed: u32, shift: f64) -> Vec<f64> {
    (0..n)
        .map(|i| f64::from((i as f32 * 0.37 + seed as f32 * 1.3).sin()) + shift)
        .collect()
}

const N: usize = 3;
const C: usize = 2;
const L: usize = 5;
/// The attribute is an f32: the reference uses its exact value.
const EPS: f64 = 1e-3f32 as f64;
const MOMENTUM: f64 = 0.75;

struct Inputs {
    x: Vec<f64>,
    scale: Vec<f64>,
    bias: Vec<f64>,
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn inputs() -> Inputs {
    Inputs {
        x: vals(N * C * L, 1, 0.3),
        scale: vals(C, 2, 1.0),
        bias: vals(C, 3, 0.0),
        mean: vals(C, 4, 0.0),
        var: vals(C, 5, 2.0),
    }
}

/// What BatchNormalization computes on `x [N, C, L]`: Y, running mean,
/// running var, batch mean, batch (population) variance.
struct Expected {
    y: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn reference(i: &Inputs, training: bool, unbiased: bool) -> Expected {
    let n = (N * L) as f64;
    let at = |b: usize, c: usize, l: usize| i.x[(b * C + c) * L + l];
    let mut mean = vec![0.0; C];
    let mut var = vec![0.0; C];
    for c in 0..C {
        let vs: Vec<f64> = (0..N)
            .flat_map(|b| (0..L).map(move |l| (b, l)))
            .map(|(b, l)| at(b, c, l))
            .collect();
        mean[c] = vs.iter().sum::<f64>() / n;
        var[c] = vs.iter().map(|v| (v - mean[c]).powi(2)).sum::<f64>() / n;
    }
    let (use_mean, use_var) = if training {
        (&mean, &var)
    } else {
        (&i.mean, &i.var)
    };
    let mut y = vec![0.0; N * C * L];
    for b in 0..N {
        for c in 0..C {
            for l in 0..L {
                let norm = (at(b, c, l) - use_mean[c]) / (use_var[c] + EPS).sqrt();
                y[(b * C + c) * L + l] = norm * i.scale[c] + i.bias[c];
            }
        }
    }
    let correction = if unbiased { n / (n - 1.0) } else { 1.0 };
    let running_mean = (0..C)
        .map(|c| i.mean[c] * MOMENTUM + mean[c] * (1.0 - MOMENTUM))
        .collect();
    let running_var = (0..C)
        .map(|c| i.var[c] * MOMENTUM + var[c] * correction * (1.0 - MOMENTUM))
        .collect();
    Expected {
        y,
        running_mean,
        running_var,
        mean,
        var,
    }
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

/// Runs `g` (bound to `batch`) on `x` and returns every value.
fn run_all(g: &Graph, batch: usize, x: &[f64]) -> (Graph, Vec<Option<Tensor>>) {
    let g = g.bind_batch(batch);
    let feeds = BTreeMap::from([(g.find("x").unwrap(), Tensor::new(vec![N, C, L], x.to_vec()))]);
    let env = interp::run(&g, &feeds, &EvalCx::default()).unwrap();
    (g, env)
}

fn value(g: &Graph, env: &[Option<Tensor>], name: &str) -> Vec<f64> {
    let v = g.find(name).unwrap_or_else(|| panic!("no value '{name}'"));
    env[v.index()].as_ref().unwrap().data.clone()
}

fn attrs(training: Option<i64>) -> Vec<pb::AttributeProto> {
    let mut a = vec![
        a_float("epsilon", EPS as f32),
        a_float("momentum", MOMENTUM as f32),
    ];
    a.extend(training.map(|t| a_int("training_mode", t)));
    a
}

/// BatchNormalization with the statistics (and scale and bias) as
/// initializers, in `dt`.
fn model_with_inits(
    opset: i64,
    producer: &'static str,
    outputs: &[&'static str],
    training: Option<i64>,
    dt: Dt,
    batch: i64,
) -> Model {
    let i = inputs();
    Model {
        opset,
        producer,
        nodes: vec![bn_node(
            &[
                "x",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
            ],
            outputs,
            attrs(training),
            "bn",
        )],
        inits: vec![
            tensor("bn.weight", dt, &[C], &i.scale),
            tensor("bn.bias", dt, &[C], &i.bias),
            tensor("bn.running_mean", dt, &[C], &i.mean),
            tensor("bn.running_var", dt, &[C], &i.var),
        ],
        inputs: vec![vi("x", dt, &[batch, C as i64, L as i64])],
        outputs: vec!["y"],
    }
}

// ----- tests -----

#[test]
fn training_mode_normalizes_by_the_batch_and_updates_state() {
    for (opset, producer, unbiased) in [(15, "onnx", false), (14, "pytorch", true)] {
        let m = model_with_inits(opset, producer, &["y", "rm", "rv"], Some(1), Dt::Double, 3);
        let imported = try_import(&m, None).unwrap();
        let g = &imported.graph;
        assert_eq!(imported.trainable, ["bn.weight", "bn.bias"]);
        assert_eq!(imported.state, ["bn.running_mean", "bn.running_var"]);
        let update_of = |name: &str| {
            let s = g.state.iter().find(|s| g.name_of(s.value) == name).unwrap();
            assert!(matches!(s.init, Init::Values(_)), "{name}: {:?}", s.init);
            g.name_of(s.update.expect("updated in training mode"))
                .to_owned()
        };
        assert_eq!(update_of("bn.running_mean"), "rm");
        assert_eq!(update_of("bn.running_var"), "rv");

        let i = inputs();
        let want = reference(&i, true, unbiased);
        let (g, env) = run_all(g, N, &i.x);
        close("y", &value(&g, &env, "y"), &want.y, 1e-12);
        close(
            "running mean",
            &value(&g, &env, "rm"),
            &want.running_mean,
            1e-12,
        );
        close(
            "running var",
            &value(&g, &env, "rv"),
            &want.running_var,
            1e-12,
        );
    }
}

#[test]
fn pytorch_models_with_a_symbolic_batch_count_the_samples_in_the_graph() {
    let m = model_with_inits(15, "pytorch", &["y", "rm", "rv"], Some(1), Dt::Float, -1);
    let imported = try_import(&m, None).unwrap();
    assert!(!imported.graph.is_static());
    let i = inputs();
    let want = reference(&i, true, true);
    let (g, env) = run_all(&imported.graph, N, &i.x);
    close("y", &value(&g, &env, "y"), &want.y, 1e-6);
    close(
        "running var",
        &value(&g, &env, "rv"),
        &want.running_var,
        1e-6,
    );
}

#[test]
fn inference_mode_uses_the_given_statistics_and_keeps_them() {
    for (opset, training) in [(15, Some(0)), (15, None), (13, None)] {
        let m = model_with_inits(opset, "pytorch", &["y"], training, Dt::Float, 3);
        let imported = try_import(&m, None).unwrap();
        let g = &imported.graph;
        assert_eq!(imported.state, ["bn.running_mean", "bn.running_var"]);
        assert!(g.state.iter().all(|s| s.update.is_none()), "opset {opset}");
        let i = inputs();
        let want = reference(&i, false, true);
        let (g, env) = run_all(g, N, &i.x);
        close("y", &value(&g, &env, "y"), &want.y, 1e-6);
    }
}

#[test]
fn the_opset_9_form_trains_when_it_lists_more_outputs() {
    let outs = ["y", "rm", "rv", "saved_mean", "saved_var"];
    let m = model_with_inits(13, "onnx", &outs, None, Dt::Float, 3);
    let imported = try_import(&m, None).unwrap();
    assert!(imported.graph.state.iter().all(|s| s.update.is_some()));
    let i = inputs();
    let want = reference(&i, true, false);
    let (g, env) = run_all(&imported.graph, N, &i.x);
    close("y", &value(&g, &env, "y"), &want.y, 1e-6);
    close("rm", &value(&g, &env, "rm"), &want.running_mean, 1e-6);
    close("rv", &value(&g, &env, "rv"), &want.running_var, 1e-6);
    close(
        "saved_mean",
        &value(&g, &env, "saved_mean"),
        &want.mean,
        1e-6,
    );
    close("saved_var", &value(&g, &env, "saved_var"), &want.var, 1e-6);
}

#[test]
fn statistics_given_as_graph_inputs_are_outputs_not_state() {
    let i = inputs();
    let m = Model {
        opset: 15,
        producer: "backend-test",
        nodes: vec![bn_node(
            &["x", "s", "b", "mean", "var"],
            &["y", "rm", "rv"],
            attrs(Some(1)),
            "bn",
        )],
        inits: vec![],
        inputs: vec![
            vi("x", Dt::Double, &[N as i64, C as i64, L as i64]),
            vi("s", Dt::Double, &[C as i64]),
            vi("b", Dt::Double, &[C as i64]),
            vi("mean", Dt::Double, &[C as i64]),
            vi("var", Dt::Double, &[C as i64]),
        ],
        outputs: vec!["y", "rm", "rv"],
    };
    let imported = try_import(&m, None).unwrap();
    assert!(imported.graph.state.is_empty() && imported.state.is_empty());
    let g = &imported.graph;
    let t = |v: &[f64]| Tensor::new(vec![v.len()], v.to_vec());
    let feeds = BTreeMap::from([
        (
            g.find("x").unwrap(),
            Tensor::new(vec![N, C, L], i.x.clone()),
        ),
        (g.find("s").unwrap(), t(&i.scale)),
        (g.find("b").unwrap(), t(&i.bias)),
        (g.find("mean").unwrap(), t(&i.mean)),
        (g.find("var").unwrap(), t(&i.var)),
    ]);
    let outs = interp::run_outputs(g, &feeds, &EvalCx::default()).unwrap();
    let want = reference(&i, true, false);
    close("y", &outs[0].data, &want.y, 1e-12);
    close("rm", &outs[1].data, &want.running_mean, 1e-12);
    close("rv", &outs[2].data, &want.running_var, 1e-12);
}

#[test]
fn a_1d_input_is_one_channel() {
    let x = vals(6, 7, 0.5);
    let m = Model {
        opset: 15,
        producer: "onnx",
        nodes: vec![bn_node(
            &["x", "s", "b", "m", "v"],
            &["y", "rm"],
            attrs(Some(1)),
            "bn",
        )],
        inits: vec![
            tensor("s", Dt::Double, &[1], &[2.0]),
            tensor("b", Dt::Double, &[1], &[0.5]),
            tensor("m", Dt::Double, &[1], &[0.0]),
            tensor("v", Dt::Double, &[1], &[1.0]),
        ],
        inputs: vec![vi("x", Dt::Double, &[6])],
        outputs: vec!["y"],
    };
    let imported = try_import(&m, None).unwrap();
    let g = &imported.graph;
    let feeds = BTreeMap::from([(g.find("x").unwrap(), Tensor::new(vec![6], x.clone()))]);
    let env = interp::run(g, &feeds, &EvalCx::default()).unwrap();
    let mean = x.iter().sum::<f64>() / 6.0;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
    let want: Vec<f64> = x
        .iter()
        .map(|v| (v - mean) / (var + EPS).sqrt() * 2.0 + 0.5)
        .collect();
    close("y", &value(g, &env, "y"), &want, 1e-12);
    close(
        "rm",
        &value(g, &env, "rm"),
        &[mean * (1.0 - MOMENTUM)],
        1e-12,
    );
}

#[test]
fn training_mode_gradients_match_finite_differences() {
    let m = model_with_inits(15, "pytorch", &["y", "rm", "rv"], Some(1), Dt::Double, 3);
    let imported = try_import(&m, None).unwrap();
    let g = with_loss(&imported, "mse", "y", "target").unwrap();
    let i = inputs();
    let x = g.find("x").unwrap();
    let feeds = BTreeMap::from([
        (x, Tensor::new(vec![N, C, L], i.x.clone())),
        (
            g.find("target").unwrap(),
            Tensor::new(vec![N, C, L], vals(N * C * L, 9, 0.0)),
        ),
    ]);
    let mut wrt = g.trainable_params();
    wrt.push(x);
    let report = gradcheck::check(&g, &wrt, &feeds, &Options::default()).unwrap();
    assert!(report.passed(), "{report}");
    let second = gradcheck::check_second_order(&g, &wrt, &feeds, &Options::default()).unwrap();
    assert!(second.passed(), "{second}");
}

#[test]
fn bad_nodes_are_errors_that_name_them() {
    let base = || model_with_inits(15, "pytorch", &["y", "rm", "rv"], Some(1), Dt::Float, 3);
    let err = |m: &Model| try_import(m, None).unwrap_err().to_string();

    let mut m = base();
    m.inits[0] = tensor("bn.weight", Dt::Float, &[C + 1], &vals(C + 1, 1, 0.0));
    let e = err(&m);
    assert!(
        e.contains("'bn'") && e.contains("bn.weight") && e.contains("[3]") && e.contains("[2]"),
        "{e}"
    );

    let mut m = base();
    m.nodes[0].input.truncate(4);
    let e = err(&m);
    assert!(e.contains("'bn'") && e.contains("input_var"), "{e}");

    let mut m = base();
    m.nodes[0].attribute = attrs(Some(2));
    let e = err(&m);
    assert!(e.contains("training_mode") && e.contains("found 2"), "{e}");

    let mut m = base();
    m.nodes[0].attribute = attrs(Some(0));
    let e = err(&m);
    assert!(
        e.contains("'bn'") && e.contains("training_mode is 0"),
        "{e}"
    );

    let mut m = base();
    let mut second = m.nodes[0].clone();
    second.name = Some("bn2".into());
    second.input[0] = "y".into();
    second.output = vec!["y2".into(), "rm2".into(), "rv2".into()];
    m.nodes.push(second);
    m.outputs = vec!["y2"];
    let e = err(&m);
    assert!(
        e.contains("bn2") && e.contains("bn.running_mean") && e.contains("already updated"),
        "{e}"
    );

    // One value per channel: PyTorch's unbiased variance is undefined.
    let mut m = base();
    m.inputs = vec![vi("x", Dt::Float, &[1, C as i64, 1])];
    let e = err(&m);
    assert!(e.contains("more than one value per channel"), "{e}");

    let mut m = base();
    m.inputs = vec![vi("x", Dt::Int64, &[3, C as i64, L as i64])];
    m.inits.iter_mut().for_each(|t| {
        *t = tensor(t.name(), Dt::Float, &[C], &[1.0; C]);
    });
    assert!(matches!(try_import(&m, None), Err(Error::Unsupported(_))));
}

#[test]
fn state_values_decode_as_the_initializers() {
    let m = model_with_inits(15, "pytorch", &["y"], Some(1), Dt::Float, 3);
    let g = try_import(&m, None).unwrap().graph;
    let i = inputs();
    for (name, want) in [("bn.running_mean", &i.mean), ("bn.running_var", &i.var)] {
        let s = g.state.iter().find(|s| g.name_of(s.value) == name).unwrap();
        let Init::Values(data) = &s.init else {
            panic!("{name}: {:?}", s.init)
        };
        close(name, &init::decode(data).unwrap(), want, 1e-6);
    }
}

#[test]
fn a_graph_with_running_statistics_round_trips_through_the_wire_format() {
    let m = model_with_inits(15, "pytorch", &["y", "rm", "rv"], Some(1), Dt::Float, -1);
    let imported = try_import(&m, None).unwrap();
    let g = with_loss(&imported, "mse", "y", "target").unwrap();
    let again = serialize::decode(&serialize::encode(&g)).unwrap();
    assert_eq!(again, g);
    assert_eq!(serialize::from_json(&serialize::to_json(&g)).unwrap(), g);
}
