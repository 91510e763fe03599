//! Loading malformed graphs: every problem is an error that names the node,
//! value, attribute and types involved, and no input makes the loader panic
//! (truncated and random bytes, mutated encodings, hand-written JSON).

use adjoint_graph::serialize::{decode, encode, from_json, from_proto, to_proto};
use adjoint_graph::{Builder, DType, Dim, Error, Graph, Init, InputRole, Shape, validate};
use adjoint_proto::v1;
use serde_json::{Value as Json, json};

fn mlp() -> Graph {
    let mut b = Builder::new("mlp");
    let x = b
        .input(
            "x",
            DType::F32,
            Shape(vec![Dim::Batch, Dim::Fixed(4)]),
            InputRole::Data,
        )
        .unwrap();
    let y = b
        .input(
            "labels",
            DType::I64,
            Shape(vec![Dim::Batch]),
            InputRole::Label,
        )
        .unwrap();
    let w1 = b
        .param(
            "w1",
            DType::F32,
            &[4, 8],
            Init::Normal {
                mean: 0.0,
                std: 0.1,
            },
        )
        .unwrap();
    let b1 = b.param("b1", DType::F32, &[8], Init::Zeros).unwrap();
    let w2 = b
        .param("w2", DType::F32, &[8, 3], Init::Constant(0.5))
        .unwrap();
    let m = b.state("m", DType::F32, &[3], Init::Zeros).unwrap();
    let h = b.matmul(x, w1).unwrap();
    let h = b.add(h, b1).unwrap();
    let h = b.relu(h).unwrap();
    let h = b.transpose(h, &[1, 0]).unwrap();
    let h = b.transpose(h, &[1, 0]).unwrap();
    let logits = b.matmul(h, w2).unwrap();
    let mean = b.mean(logits, &[0], false).unwrap();
    b.set_state_update(m, mean);
    let loss = b.softmax_cross_entropy(logits, y).unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

/// A loader result that is either an error or a graph that validates.
fn check_no_panic(result: adjoint_graph::Result<Graph>) {
    if let Ok(g) = result {
        validate::validate(&g).expect("a loaded graph is valid");
        assert_eq!(decode(&encode(&g)).as_ref(), Ok(&g));
    }
}

#[test]
fn every_prefix_of_an_encoding_is_an_error_or_a_valid_graph() {
    let bytes = encode(&mlp());
    let mut errors = 0;
    for n in 0..bytes.len() {
        let result = decode(&bytes[..n]);
        errors += usize::from(result.is_err());
        check_no_panic(result);
    }
    assert!(errors > bytes.len() / 2, "most prefixes are malformed");
    let Err(Error::Decode(m)) = decode(&bytes[..bytes.len() - 1]) else {
        panic!("a message cut inside a field is a decode error");
    };
    assert!(m.contains("protobuf"), "{m}");
}

/// A small xorshift generator, so the test is deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for len in 0..3000 {
        let bytes: Vec<u8> = (0..len % 300).map(|_| rng.next() as u8).collect();
        check_no_panic(decode(&bytes));
    }
}

#[test]
fn mutated_encodings_never_panic() {
    let bytes = encode(&mlp());
    let mut rng = Rng(12345);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next() % 3 {
            let i = (rng.next() % b.len() as u64) as usize;
            match rng.next() % 3 {
                0 => b[i] ^= 1 << (rng.next() % 8),
                1 => b[i] = rng.next() as u8,
                _ => {
                    b.remove(i);
                }
            }
        }
        check_no_panic(decode(&b));
    }
}

/// The JSON of the mlp, to be broken by each test.
fn mlp_json() -> Json {
    serde_json::from_str(&adjoint_graph::serialize::to_json(&mlp())).unwrap()
}

fn load(j: &Json) -> Error {
    from_json(&j.to_string()).expect_err("the graph is malformed")
}

fn node_mut<'a>(j: &'a mut Json, op: &str, nth: usize) -> &'a mut Json {
    j["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|n| n["op"] == op)
        .nth(nth)
        .unwrap()
}

fn assert_mentions(e: &Error, parts: &[&str]) {
    let m = e.to_string();
    for p in parts {
        assert!(m.contains(p), "'{m}' does not mention {p}");
    }
}

#[test]
fn an_unknown_op_names_the_node_and_the_op() {
    let mut j = mlp_json();
    node_mut(&mut j, "Relu", 0)["op"] = json!("Swish");
    let e = load(&j);
    assert!(
        matches!(&e, Error::UnknownOp { node, op } if node.name == "relu" && op == "Swish"),
        "{e}"
    );
    assert_mentions(&e, &["'relu'", "'Swish'"]);
}

#[test]
fn a_cycle_names_the_node_and_the_value() {
    let mut j = mlp_json();
    // The first MatMul reads the output of the ReLU after it.
    node_mut(&mut j, "MatMul", 0)["inputs"] = json!(["relu", "w1"]);
    let e = load(&j);
    assert!(
        matches!(&e, Error::Cycle { node, value } if node.name == "matmul" && value == "relu"),
        "{e}"
    );
    assert_mentions(&e, &["'matmul'", "'relu'", "cycle"]);
    // A node reading its own output is a cycle too.
    let mut j = mlp_json();
    node_mut(&mut j, "Relu", 0)["inputs"] = json!(["relu"]);
    assert!(matches!(load(&j), Error::Cycle { .. }));
}

#[test]
fn a_shape_mismatch_names_the_node_and_both_shapes() {
    let j = json!({
        "name": "bad",
        "values": [
            {"name": "a", "dtype": "DATA_TYPE_F32", "shape": {"dims": [{"size": 2}, {"size": 3}]}},
            {"name": "b", "dtype": "DATA_TYPE_F32", "shape": {"dims": [{"size": 4}, {"size": 5}]}}
        ],
        "nodes": [{"name": "proj", "op": "MatMul", "inputs": ["a", "b"], "outputs": ["c"], "provenance": "dense_1"}],
        "inputs": [{"value": "a", "role": "INPUT_ROLE_DATA"}, {"value": "b", "role": "INPUT_ROLE_DATA"}],
        "outputs": ["c"]
    });
    let e = load(&j);
    assert!(
        matches!(&e, Error::InvalidNode { node, .. } if node.name == "proj"),
        "{e}"
    );
    assert_mentions(
        &e,
        &[
            "'proj'", "MatMul", "dense_1", "[2, 3]", "[4, 5]", "'a'", "'b'",
        ],
    );
}

#[test]
fn an_attribute_of_the_wrong_kind_names_the_node_and_the_attribute() {
    let mut j = mlp_json();
    node_mut(&mut j, "Transpose", 0)["attributes"] = json!({"perm": {"float": 1.0}});
    let e = load(&j);
    assert!(
        matches!(&e, Error::BadAttribute { node, .. } if node.name == "transpose"),
        "{e}"
    );
    assert_mentions(&e, &["'transpose'", "'perm'", "float"]);
}

#[test]
fn an_unknown_attribute_names_the_node_and_the_attribute() {
    let mut j = mlp_json();
    node_mut(&mut j, "MatMul", 1)["attributes"]["transpose_b"] = json!({"bool": true});
    let e = load(&j);
    assert!(matches!(&e, Error::BadAttribute { .. }), "{e}");
    assert_mentions(&e, &["'matmul_1'", "'transpose_b'"]);
}

#[test]
fn a_bad_attribute_value_names_the_node_and_the_attribute() {
    let mut j = mlp_json();
    node_mut(&mut j, "Transpose", 1)["attributes"]["perm"] = json!({"ints": {"values": [0, 0]}});
    let e = load(&j);
    assert!(matches!(&e, Error::BadAttribute { .. }), "{e}");
    assert_mentions(&e, &["'transpose_1'", "'perm'", "permutation"]);
    // An attribute with no value set.
    let mut j = mlp_json();
    node_mut(&mut j, "Transpose", 0)["attributes"]["perm"] = json!({});
    assert_mentions(&load(&j), &["'transpose'", "'perm'", "no value"]);
    // An unspecified dtype in an attribute.
    let mut j = mlp_json();
    node_mut(&mut j, "Transpose", 0)["attributes"]["perm"] =
        json!({"dtype": "DATA_TYPE_UNSPECIFIED"});
    assert_mentions(&load(&j), &["'transpose'", "'perm'", "unspecified"]);
    // A shape attribute with a symbol other than the batch.
    let mut j = mlp_json();
    node_mut(&mut j, "Transpose", 0)["attributes"]["perm"] =
        json!({"shape": {"dims": [{"symbol": "seq"}]}});
    assert_mentions(&load(&j), &["'transpose'", "'perm'", "'seq'"]);
}

#[test]
fn a_reference_to_an_undefined_value_names_the_node_and_the_value() {
    let mut j = mlp_json();
    node_mut(&mut j, "Add", 0)["inputs"] = json!(["matmul", "bias1"]);
    let e = load(&j);
    assert!(
        matches!(&e, Error::DanglingValue { node, value } if node.name == "add" && value == "bias1"),
        "{e}"
    );
    assert_mentions(&e, &["'add'", "'bias1'"]);
    // An output, a loss or a state update that names nothing.
    for (field, name) in [("outputs", json!(["nope"])), ("loss", json!("nope"))] {
        let mut j = mlp_json();
        j[field] = name;
        assert_mentions(&load(&j), &["'nope'"]);
    }
    let mut j = mlp_json();
    j["state"][0]["update"] = json!("nope");
    assert_mentions(&load(&j), &["'nope'", "'m'"]);
    // An input, parameter or state variable that is not declared.
    let mut j = mlp_json();
    j["parameters"][0]["value"] = json!("w9");
    assert_mentions(&load(&j), &["'w9'", "not declared"]);
}

#[test]
fn a_duplicate_value_name_is_reported() {
    let mut j = mlp_json();
    let mut dup = j["values"][0].clone();
    dup["dtype"] = json!("DATA_TYPE_F64");
    j["values"].as_array_mut().unwrap().push(dup);
    let e = load(&j);
    assert!(
        matches!(&e, Error::DuplicateValue { value, .. } if value == "x"),
        "{e}"
    );
    assert_mentions(&e, &["'x'", "twice"]);
    // Two nodes writing the same value.
    let mut j = mlp_json();
    node_mut(&mut j, "Relu", 0)["outputs"] = json!(["add"]);
    let e = load(&j);
    assert!(
        matches!(&e, Error::DuplicateValue { value, .. } if value == "add"),
        "{e}"
    );
    assert_mentions(&e, &["'add'", "'relu'"]);
    // A node writing a parameter.
    let mut j = mlp_json();
    node_mut(&mut j, "Relu", 0)["outputs"] = json!(["w2"]);
    assert_mentions(&load(&j), &["'relu'", "'w2'", "parameter"]);
}

#[test]
fn a_declared_type_that_disagrees_with_inference_is_reported() {
    let mut j = mlp_json();
    for v in j["values"].as_array_mut().unwrap() {
        if v["name"] == "relu" {
            v["shape"] = json!({"dims": [{"symbol": "batch"}, {"size": 9}]});
        }
    }
    let e = load(&j);
    assert!(
        matches!(&e, Error::DeclaredTypeMismatch { value, .. } if value == "relu"),
        "{e}"
    );
    assert_mentions(&e, &["'relu'", "f32[batch, 9]", "f32[batch, 8]", "Relu"]);
}

#[test]
fn unspecified_enums_name_the_value() {
    let mut j = mlp_json();
    j["values"][1]["dtype"] = json!("DATA_TYPE_UNSPECIFIED");
    assert_mentions(&load(&j), &["'labels'", "dtype", "unspecified"]);
    let mut j = mlp_json();
    j["values"][1].as_object_mut().unwrap().remove("dtype");
    assert_mentions(&load(&j), &["'labels'", "unspecified"]);
    let mut j = mlp_json();
    j["inputs"][0]["role"] = json!("INPUT_ROLE_UNSPECIFIED");
    assert_mentions(&load(&j), &["'x'", "role"]);
    let mut j = mlp_json();
    j["parameters"][0]["init"] = json!({"fanScaled": {"mode": "FAN_MODE_FAN_IN", "gain": 1.0}});
    assert_mentions(&load(&j), &["'w1'", "distribution", "unspecified"]);
    let mut j = mlp_json();
    j["parameters"][0].as_object_mut().unwrap().remove("init");
    assert_mentions(&load(&j), &["'w1'", "no initializer"]);
}

#[test]
fn an_unknown_dimension_symbol_names_the_value() {
    let mut j = mlp_json();
    j["values"][0]["shape"]["dims"][0] = json!({"symbol": "seq"});
    let e = load(&j);
    assert!(
        matches!(&e, Error::InvalidValue { value, .. } if value == "x"),
        "{e}"
    );
    assert_mentions(&e, &["'x'", "'seq'", "batch"]);
    let mut j = mlp_json();
    j["values"][0]["shape"]["dims"][0] = json!({});
    assert_mentions(&load(&j), &["'x'", "dimension 0"]);
}

#[test]
fn bad_tensor_values_name_the_parameter() {
    let mut g = mlp();
    g.params[1].init = Init::Values(adjoint_graph::init::encode(DType::F32, &[8], &[0.5; 8]));
    assert_eq!(decode(&encode(&g)).unwrap(), g);
    let good = to_proto(&g);
    fn tensor(p: &mut v1::Graph) -> &mut v1::Tensor {
        match &mut p.parameters[1].init.as_mut().unwrap().kind {
            Some(v1::initializer::Kind::Values(t)) => t,
            _ => unreachable!(),
        }
    }
    let mut p = good.clone();
    tensor(&mut p).data.pop();
    assert_mentions(&from_proto(&p).unwrap_err(), &["'b1'", "31 bytes", "32"]);
    let mut p = good.clone();
    tensor(&mut p).shape = vec![2, 4];
    assert_mentions(&from_proto(&p).unwrap_err(), &["'b1'", "[2, 4]", "[8]"]);
    let mut p = good.clone();
    tensor(&mut p).dtype = v1::DataType::F16 as i32;
    assert_mentions(&from_proto(&p).unwrap_err(), &["'b1'", "f16", "f32"]);
    let mut p = good;
    tensor(&mut p).dtype = 0;
    assert_mentions(&from_proto(&p).unwrap_err(), &["'b1'", "unspecified"]);
}

#[test]
fn a_parameter_with_a_batch_dimension_is_rejected() {
    let mut j = mlp_json();
    j["values"][2]["shape"]["dims"][0] = json!({"symbol": "batch"});
    assert_mentions(&load(&j), &["'w1'", "static"]);
}

#[test]
fn a_stray_declared_value_is_reported() {
    let mut j = mlp_json();
    j["values"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "logit", "dtype": "DATA_TYPE_F32", "shape": {}}));
    assert_mentions(&load(&j), &["'logit'", "not an input"]);
}

#[test]
fn json_syntax_and_schema_errors_give_line_column_and_field() {
    let e = from_json(
        "{\n  \"name\": \"g\",\n  \"nodes\": [\n    {\"name\": \"a\", \"opp\": \"Relu\"}\n  ]\n}",
    )
    .unwrap_err();
    assert!(matches!(e, Error::Decode(_)));
    assert_mentions(&e, &["opp", "line 4", "column", "nodes[0]"]);
    let e =
        from_json("{\"values\": [{\"name\": \"x\", \"dtype\": \"DATA_TYPE_F33\"}]}").unwrap_err();
    assert_mentions(&e, &["DATA_TYPE_F33", "line 1", "values[0].dtype"]);
    let e = from_json("{\"name\": \"g\",").unwrap_err();
    assert_mentions(&e, &["EOF", "line 1"]);
    let e = from_json("[]").unwrap_err();
    assert!(matches!(e, Error::Decode(_)));
    for text in [
        "",
        "null",
        "{\"nodes\": 3}",
        "{\"nodes\": [{\"inputs\": [1]}]}",
    ] {
        assert!(matches!(from_json(text), Err(Error::Decode(_))), "{text}");
    }
}

#[test]
fn values_of_the_wrong_json_type_name_the_field() {
    let mut j = mlp_json();
    j["parameters"][1]["frozen"] = json!("yes");
    let text = serde_json::to_string_pretty(&j).unwrap();
    let e = from_json(&text).unwrap_err();
    assert_mentions(&e, &["parameters[1].frozen", "line"]);
}
