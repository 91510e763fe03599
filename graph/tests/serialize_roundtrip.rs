//! Round trips of graphs through the protobuf and proto3 JSON forms:
//! binary and JSON loads give back the same IR graph, encodings and content
//! hashes are stable, every initializer and attribute kind survives, and the
//! worked example in `docs/graph-format.md` loads.

use adjoint_graph::ops::GeluApprox;
use adjoint_graph::serialize::{
    content_hash, decode, encode, from_json, from_proto, to_json, to_proto,
};
use adjoint_graph::{
    Builder, DType, Dim, Distribution, FanMode, Graph, Init, InputRole, Shape, init, zoo,
};
use adjoint_proto::v1;

/// Checks every round trip and the stability of encodings and hashes.
fn assert_round_trips(g: &Graph) {
    adjoint_graph::validate::validate(g).expect("test graph is valid");
    assert_eq!(&from_proto(&to_proto(g)).unwrap(), g, "proto round trip");

    let bytes = encode(g);
    let back = decode(&bytes).unwrap();
    assert_eq!(&back, g, "binary round trip");
    assert_eq!(encode(&back), bytes, "binary re-encoding");

    let json = to_json(g);
    let back = from_json(&json).unwrap();
    assert_eq!(&back, g, "JSON round trip of\n{json}");
    assert_eq!(to_json(&back), json, "JSON re-encoding");

    let hash = content_hash(g);
    assert_eq!(hash.len(), 64);
    assert!(
        hash.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    );
    assert_eq!(content_hash(&back), hash);
    assert_eq!(content_hash(&g.clone()), hash);
}

/// x [batch, 4] -> 8 -> 3 with ReLU, biases and softmax cross-entropy.
fn mlp(batch: Dim) -> Graph {
    let mut b = Builder::new("mlp");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![batch, Dim::Fixed(4)]),
            InputRole::Data,
        )
        .unwrap();
    let y = b
        .input("labels", DType::I64, Shape(vec![batch]), InputRole::Label)
        .unwrap();
    let kaiming = Init::FanScaled {
        mode: FanMode::In,
        distribution: Distribution::Normal,
        gain: 2f64.sqrt(),
    };
    let w1 = b.param("w1", DType::F32, &[4, 8], kaiming.clone()).unwrap();
    let b1 = b.param("b1", DType::F32, &[8], Init::Zeros).unwrap();
    let w2 = b.param("w2", DType::F32, &[8, 3], kaiming).unwrap();
    let b2 = b.param("b2", DType::F32, &[3], Init::Zeros).unwrap();
    b.set_provenance("layer1");
    let h = b.matmul(x, w1).unwrap();
    let h = b.add(h, b1).unwrap();
    let h = b.relu(h).unwrap();
    b.set_provenance("layer2");
    let logits = b.matmul(h, w2).unwrap();
    let logits = b.add(logits, b2).unwrap();
    b.rename(logits, "logits").unwrap();
    b.output(logits);
    let loss = b.softmax_cross_entropy(logits, y).unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

#[test]
fn mlp_with_a_symbolic_batch_round_trips() {
    let g = mlp(Dim::Batch);
    assert!(!g.is_static());
    assert_round_trips(&g);
    let p = to_proto(&g);
    let x = p.values.iter().find(|v| v.name == "x").unwrap();
    let first = &x.shape.as_ref().unwrap().dims[0];
    assert_eq!(first.kind, Some(v1::dim::Kind::Symbol("batch".into())));
    assert_eq!(p.loss, g.name_of(g.loss.unwrap()));
    assert!(to_json(&g).contains("\"symbol\": \"batch\""));
}

#[test]
fn mlp_with_a_fixed_batch_round_trips() {
    assert_round_trips(&mlp(Dim::Fixed(16)));
}

#[test]
fn every_value_is_declared_and_attributes_are_sorted() {
    let g = mlp(Dim::Batch);
    let p = to_proto(&g);
    assert_eq!(p.values.len(), g.values.len());
    for (v, pv) in g.values.iter().zip(&p.values) {
        assert_eq!(v.name, pv.name);
    }
    let matmul = p.nodes.iter().find(|n| n.op == "MatMul").unwrap();
    let keys: Vec<&str> = matmul.attributes.keys().map(String::as_str).collect();
    assert_eq!(keys, ["trans_a", "trans_b"]);
    assert_eq!(matmul.provenance, "layer1");
}

#[test]
fn explicit_tensor_values_in_f32_and_bf16_round_trip() {
    let mut b = Builder::new("values");
    let x = b
        .input("x", DType::F32, Shape::of(&[2, 3]), InputRole::Data)
        .unwrap();
    let w = init::encode(DType::F32, &[3, 2], &[1.0, -2.0, 0.5, 0.25, 3.0, -0.125]);
    assert_eq!(w.bytes.len(), 24);
    let w = b.param("w", DType::F32, &[3, 2], Init::Values(w)).unwrap();
    let v = init::encode(DType::BF16, &[2], &[1.5, -0.75]);
    assert_eq!(v.bytes.len(), 4);
    let v = b.param("v", DType::BF16, &[2], Init::Values(v)).unwrap();
    let y = b.matmul(x, w).unwrap();
    b.output(y);
    b.output(v);
    let g = b.finish().unwrap();
    assert_round_trips(&g);
    let back = decode(&encode(&g)).unwrap();
    let Init::Values(t) = &back.params[1].init else {
        panic!("bf16 values lost");
    };
    assert_eq!(init::decode(t).unwrap(), [1.5, -0.75]);
    assert!(to_json(&g).contains("\"dtype\": \"DATA_TYPE_BF16\""));
}

#[test]
fn frozen_params_and_state_with_updates_round_trip() {
    let mut b = Builder::new("stateful");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(4)]),
            InputRole::Data,
        )
        .unwrap();
    let scale = b
        .frozen_param("scale", DType::F32, &[4], Init::Constant(2.0))
        .unwrap();
    let mean = b
        .state("running_mean", DType::F32, &[4], Init::Zeros)
        .unwrap();
    let count = b
        .state("count", DType::F32, &[], Init::Constant(0.0))
        .unwrap();
    let y = b.mul(x, scale).unwrap();
    let batch_mean = b.mean(y, &[0], false).unwrap();
    let old = b.scale(mean, 0.9).unwrap();
    let new = b.scale(batch_mean, 0.1).unwrap();
    let updated = b.add(old, new).unwrap();
    b.set_state_update(mean, updated);
    b.output(y);
    let g = b.finish().unwrap();
    assert!(!g.params[0].trainable);
    assert_eq!(g.state[0].update, Some(updated));
    assert_eq!(g.state[1].update, None);
    let _ = count;
    assert_round_trips(&g);
    let p = to_proto(&g);
    assert!(p.parameters[0].frozen);
    assert_eq!(p.state[0].update, g.name_of(updated));
    assert_eq!(p.state[1].update, "");
    let back = from_json(&to_json(&g)).unwrap();
    assert!(back.trainable_params().is_empty());
}

#[test]
fn every_initializer_kind_round_trips() {
    let inits = [
        Init::Values(init::encode(
            DType::F64,
            &[2, 3],
            &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        )),
        Init::Zeros,
        Init::Constant(-1.5),
        Init::Normal {
            mean: 0.0,
            std: 0.02,
        },
        Init::Uniform {
            low: -0.1,
            high: 0.3,
        },
        Init::FanScaled {
            mode: FanMode::Avg,
            distribution: Distribution::Uniform,
            gain: 1.0,
        },
        Init::FanScaled {
            mode: FanMode::In,
            distribution: Distribution::Normal,
            gain: 2f64.sqrt(),
        },
        Init::FanScaled {
            mode: FanMode::Out,
            distribution: Distribution::Normal,
            gain: 0.5,
        },
    ];
    let mut b = Builder::new("inits");
    for (i, init) in inits.iter().enumerate() {
        let v = b
            .param(&format!("p{i}"), DType::F64, &[2, 3], init.clone())
            .unwrap();
        b.output(v);
    }
    let s = b
        .state(
            "s",
            DType::F64,
            &[2, 3],
            Init::Normal {
                mean: 1.0,
                std: 2.0,
            },
        )
        .unwrap();
    b.output(s);
    let g = b.finish().unwrap();
    assert_round_trips(&g);
    let back = decode(&encode(&g)).unwrap();
    let got: Vec<&Init> = back.params.iter().map(|p| &p.init).collect();
    assert_eq!(got, inits.iter().collect::<Vec<_>>());
}

/// One node of every attribute kind: int, float (incl. -inf), string, bool,
/// ints, dtype and shape (with the batch symbol).
fn attribute_zoo() -> Graph {
    let mut b = Builder::new("attributes");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(2), Dim::Fixed(3)]),
            InputRole::Data,
        )
        .unwrap();
    let ids = b
        .input("ids", DType::I32, Shape(vec![Dim::Batch]), InputRole::Label)
        .unwrap();
    let t = b.transpose(x, &[0, 2, 1]).unwrap();
    let r = b
        .reshape(t, Shape(vec![Dim::Batch, Dim::Fixed(6)]))
        .unwrap();
    let h = b.cast(r, DType::F64).unwrap();
    let h = b.gelu(h, GeluApprox::Tanh).unwrap();
    let h = b.softmax(h, -1).unwrap();
    let h = b.dropout(h, 0.25, u64::MAX - 7).unwrap();
    let h = b.scale(h, 0.5).unwrap();
    let s = b.slice(h, 1, 1, 4).unwrap();
    let s = b.pad(s, 1, 2, 1).unwrap();
    let c = b.concat(&[s, h], 1).unwrap();
    let m = b.mean(c, &[-1], true).unwrap();
    let oh = b.one_hot(ids, 5, DType::F64).unwrap();
    let sq = b
        .reshape(x, Shape(vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(2)]))
        .unwrap();
    let sq = b.matmul_t(x, sq, false, false).unwrap();
    let masked = b.causal_mask(sq, f64::NEG_INFINITY).unwrap();
    let bc = b
        .broadcast(m, Shape(vec![Dim::Batch, Dim::Fixed(5)]))
        .unwrap();
    let sum = b.add(bc, oh).unwrap();
    b.output(sum);
    b.output(masked);
    b.finish().unwrap()
}

#[test]
fn every_attribute_kind_round_trips() {
    let g = attribute_zoo();
    assert_round_trips(&g);
    let json = to_json(&g);
    assert!(json.contains("\"-Infinity\""), "{json}");
    assert!(json.contains("\"DATA_TYPE_F64\""));
    let p = to_proto(&g);
    let reshape = p.nodes.iter().find(|n| n.op == "Reshape").unwrap();
    let v1::attribute::Value::Shape(shape) = reshape.attributes["shape"].value.clone().unwrap()
    else {
        panic!("Reshape's shape attribute is not a shape");
    };
    assert_eq!(
        shape.dims[0].kind,
        Some(v1::dim::Kind::Symbol("batch".into()))
    );
}

#[test]
fn the_zoo_models_round_trip() {
    for name in zoo::MODELS {
        let g = zoo::by_name(name).unwrap().unwrap();
        assert_round_trips(&g);
    }
}

#[test]
fn hashes_are_stable_and_tell_graphs_apart() {
    let a = mlp(Dim::Batch);
    assert_eq!(content_hash(&a), content_hash(&mlp(Dim::Batch)));
    assert_eq!(encode(&a), encode(&mlp(Dim::Batch)));
    assert_eq!(to_json(&a), to_json(&mlp(Dim::Batch)));
    assert_ne!(content_hash(&a), content_hash(&mlp(Dim::Fixed(8))));
    let mut renamed = a.clone();
    renamed.name = "mlp2".into();
    assert_ne!(content_hash(&a), content_hash(&renamed));
    let mut reinit = a.clone();
    reinit.params[1].init = Init::Constant(0.0);
    assert_ne!(content_hash(&a), content_hash(&reinit));
}

#[test]
fn the_hash_of_a_small_graph_is_pinned() {
    // If this changes, the wire encoding changed: every stored hash (plan
    // caches, job records) would change with it. The value was checked
    // against a hand-written protobuf encoding of this graph.
    let mut b = Builder::new("pinned");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(2)]),
            InputRole::Data,
        )
        .unwrap();
    let y = b.relu(x).unwrap();
    b.output(y);
    let g = b.finish().unwrap();
    assert_eq!(
        content_hash(&g),
        "8b7132b605c8652b09c20c27b9a26e5cd4d69be1620e38acf0d1816fd68d9213"
    );
}

#[test]
fn undeclared_node_outputs_are_inferred() {
    let text = r#"{
      "name": "inferred",
      "values": [
        {"name": "x", "dtype": "DATA_TYPE_F32", "shape": {"dims": [{"symbol": "batch"}, {"size": 4}]}},
        {"name": "w", "dtype": "DATA_TYPE_F32", "shape": {"dims": [{"size": 4}, {"size": 2}]}}
      ],
      "nodes": [
        {"name": "mm", "op": "MatMul", "inputs": ["x", "w"], "outputs": ["y"]},
        {"name": "act", "op": "Relu", "inputs": ["y"], "outputs": ["z"]}
      ],
      "inputs": [{"value": "x", "role": "INPUT_ROLE_DATA"}],
      "parameters": [{"value": "w", "init": {"normal": {"mean": 0, "std": 0.1}}}],
      "outputs": ["z"]
    }"#;
    let g = from_json(text).unwrap();
    let z = g.find("z").unwrap();
    assert_eq!(g.ty(z).to_string(), "f32[batch, 2]");
    // Defaults filled in by the op parser are written out explicitly.
    let p = to_proto(&g);
    assert_eq!(p.nodes[0].attributes.len(), 2);
    assert_eq!(p.values.len(), 4);
    assert_round_trips(&g);
}

/// The first ```json block of a markdown text.
fn first_json_block(markdown: &str) -> &str {
    let start = markdown.find("```json\n").expect("a ```json block") + "```json\n".len();
    let len = markdown[start..].find("```").expect("the block's end");
    &markdown[start..start + len]
}

#[test]
fn the_worked_example_in_the_format_doc_loads() {
    let doc = include_str!("../../docs/graph-format.md");
    let g =
        from_json(first_json_block(doc)).unwrap_or_else(|e| panic!("docs/graph-format.md: {e}"));
    assert_eq!(g.inputs.len(), 2);
    assert_eq!(g.trainable_params().len(), 4);
    let loss = g.loss.expect("the example has a loss");
    assert_eq!(g.ty(loss).to_string(), "f32[]");
    let logits = g.find("logits").expect("the example names its logits");
    assert_eq!(g.ty(logits).shape, Shape(vec![Dim::Batch, Dim::Fixed(3)]));
    assert!(g.outputs.contains(&loss));
    assert_round_trips(&g);
}
