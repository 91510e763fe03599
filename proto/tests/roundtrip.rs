//! Binary and proto3 JSON round trips of the generated `adjoint.v1` types.

use std::collections::BTreeMap;

use adjoint_proto::v1::{
    self, Attribute, DataType, Dim, FanMode, FloatList, Graph, Initializer, Input, InputRole,
    IntList, Node, Parameter, Shape, Tensor, Value, attribute, dim, initializer,
};
use prost::Message;
use serde_json::json;

fn dim(size: u64) -> Dim {
    Dim {
        kind: Some(dim::Kind::Size(size)),
    }
}

fn batch() -> Dim {
    Dim {
        kind: Some(dim::Kind::Symbol("batch".to_owned())),
    }
}

fn attr(value: attribute::Value) -> Attribute {
    Attribute { value: Some(value) }
}

fn attributes() -> Vec<(&'static str, Attribute)> {
    vec![
        ("axis", attr(attribute::Value::Int(-1))),
        ("min", attr(attribute::Value::Float(f64::NEG_INFINITY))),
        ("alpha", attr(attribute::Value::Float(0.5))),
        ("mode", attr(attribute::Value::String("sum".to_owned()))),
        ("keep_dims", attr(attribute::Value::Bool(true))),
        (
            "perm",
            attr(attribute::Value::Ints(IntList { values: vec![1, 0] })),
        ),
        (
            "scales",
            attr(attribute::Value::Floats(FloatList {
                values: vec![1.0, f64::INFINITY, -0.25],
            })),
        ),
        ("to", attr(attribute::Value::Dtype(DataType::Bf16 as i32))),
        (
            "target_shape",
            attr(attribute::Value::Shape(Shape {
                dims: vec![batch(), dim(4)],
            })),
        ),
    ]
}

fn sample_graph() -> Graph {
    let weight = [1.0f32, -2.0, 0.5, 3.25];
    Graph {
        name: "tiny".to_owned(),
        values: vec![
            Value {
                name: "x".to_owned(),
                dtype: DataType::F32 as i32,
                shape: Some(Shape {
                    dims: vec![batch(), dim(2)],
                }),
            },
            Value {
                name: "w".to_owned(),
                dtype: DataType::F32 as i32,
                shape: Some(Shape {
                    dims: vec![dim(2), dim(2)],
                }),
            },
        ],
        nodes: vec![Node {
            name: "matmul_0".to_owned(),
            op: "matmul".to_owned(),
            inputs: vec!["x".to_owned(), "w".to_owned()],
            outputs: vec!["y".to_owned()],
            attributes: attributes()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            provenance: "dense_1".to_owned(),
        }],
        inputs: vec![Input {
            value: "x".to_owned(),
            role: InputRole::Data as i32,
        }],
        parameters: vec![
            Parameter {
                value: "w".to_owned(),
                init: Some(Initializer {
                    kind: Some(initializer::Kind::Values(Tensor {
                        dtype: DataType::F32 as i32,
                        shape: vec![2, 2],
                        data: weight.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    })),
                }),
                frozen: false,
            },
            Parameter {
                value: "b".to_owned(),
                init: Some(Initializer {
                    kind: Some(initializer::Kind::FanScaled(v1::FanScaled {
                        mode: FanMode::FanAvg as i32,
                        distribution: v1::Distribution::Uniform as i32,
                        gain: 1.0,
                    })),
                }),
                frozen: true,
            },
        ],
        state: vec![],
        outputs: vec!["y".to_owned()],
        loss: String::new(),
    }
}

#[test]
fn binary_round_trip() {
    let graph = sample_graph();
    let bytes = graph.encode_to_vec();
    let decoded = Graph::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, graph);

    let min = &decoded.nodes[0].attributes["min"];
    assert_eq!(min.value, Some(attribute::Value::Float(f64::NEG_INFINITY)));
    assert_eq!(decoded.values[0].dtype(), DataType::F32);
    assert_eq!(
        DataType::try_from(decoded.values[0].dtype),
        Ok(DataType::F32)
    );
}

#[test]
fn json_round_trip() {
    let graph = sample_graph();
    let text = serde_json::to_string_pretty(&graph).unwrap();
    let decoded: Graph = serde_json::from_str(&text).unwrap();
    assert_eq!(decoded, graph);
}

#[test]
fn json_uses_proto3_mapping() {
    let graph = sample_graph();
    let json = serde_json::to_value(&graph).unwrap();

    // Enums by name, with their full proto names.
    assert_eq!(json["values"][0]["dtype"], "DATA_TYPE_F32");
    assert_eq!(json["inputs"][0]["role"], "INPUT_ROLE_DATA");
    // Symbolic and fixed dims; 64-bit integers as strings.
    assert_eq!(
        json["values"][0]["shape"],
        json!({"dims": [{"symbol": "batch"}, {"size": "2"}]})
    );

    let attributes = &json["nodes"][0]["attributes"];
    assert_eq!(attributes["axis"], json!({"int": "-1"}));
    assert_eq!(attributes["min"], json!({"float": "-Infinity"}));
    assert_eq!(attributes["alpha"], json!({"float": 0.5}));
    assert_eq!(attributes["mode"], json!({"string": "sum"}));
    assert_eq!(attributes["keep_dims"], json!({"bool": true}));
    assert_eq!(attributes["perm"], json!({"ints": {"values": ["1", "0"]}}));
    assert_eq!(
        attributes["scales"],
        json!({"floats": {"values": [1.0, "Infinity", -0.25]}})
    );
    assert_eq!(attributes["to"], json!({"dtype": "DATA_TYPE_BF16"}));

    // camelCase field names; bytes as standard base64.
    let init = &json["parameters"][0]["init"];
    assert_eq!(
        init["values"],
        json!({
            "dtype": "DATA_TYPE_F32",
            "shape": ["2", "2"],
            "data": "AACAPwAAAMAAAAA/AABQQA==",
        })
    );
    assert_eq!(
        json["parameters"][1]["init"]["fanScaled"],
        json!({
            "mode": "FAN_MODE_FAN_AVG",
            "distribution": "DISTRIBUTION_UNIFORM",
            "gain": 1.0,
        })
    );
    // Default values (false, "", empty lists) are left out.
    assert_eq!(json["parameters"][1]["frozen"], true);
    assert!(json["parameters"][0].get("frozen").is_none());
    assert!(json.get("loss").is_none());
    assert!(json.get("state").is_none());

    // NaN is written as a string too, and reads back.
    let nan = attr(attribute::Value::Float(f64::NAN));
    assert_eq!(serde_json::to_value(&nan).unwrap(), json!({"float": "NaN"}));
    let back: Attribute = serde_json::from_str(r#"{"float": "NaN"}"#).unwrap();
    assert!(matches!(back.value, Some(attribute::Value::Float(x)) if x.is_nan()));
}

#[test]
fn json_accepts_proto_field_names_and_rejects_bad_input() {
    // Parsers must accept the original proto field names too.
    let init: Initializer =
        serde_json::from_str(r#"{"fan_scaled": {"mode": "FAN_MODE_FAN_IN", "gain": 2}}"#).unwrap();
    assert_eq!(
        init.kind,
        Some(initializer::Kind::FanScaled(v1::FanScaled {
            mode: FanMode::FanIn as i32,
            distribution: 0,
            gain: 2.0,
        }))
    );

    let unknown_field = serde_json::from_str::<Graph>(r#"{"name": "g", "colour": "red"}"#);
    let err = unknown_field.unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");

    let bad_enum = serde_json::from_str::<Value>(r#"{"name": "x", "dtype": "DATA_TYPE_F8"}"#);
    let err = bad_enum.unwrap_err().to_string();
    assert!(err.contains("DATA_TYPE_F8"), "{err}");

    let bad_base64 = serde_json::from_str::<Tensor>(r#"{"data": "not base64!"}"#);
    assert!(bad_base64.is_err());
}

#[test]
fn map_encoding_is_independent_of_insertion_order() {
    let node = |order: &mut dyn Iterator<Item = (&'static str, Attribute)>| Node {
        name: "n".to_owned(),
        op: "reduce".to_owned(),
        attributes: order.map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Node::default()
    };
    let forward = node(&mut attributes().into_iter());
    let backward = node(&mut attributes().into_iter().rev());

    let mut shuffled = BTreeMap::new();
    for (i, (k, v)) in attributes().into_iter().enumerate() {
        if i % 2 == 1 {
            shuffled.insert(k.to_owned(), v);
        }
    }
    for (i, (k, v)) in attributes().into_iter().enumerate() {
        if i % 2 == 0 {
            shuffled.insert(k.to_owned(), v);
        }
    }
    let interleaved = Node {
        attributes: shuffled,
        ..forward.clone()
    };

    assert!(forward.attributes.len() > 2);
    let bytes = forward.encode_to_vec();
    assert_eq!(backward.encode_to_vec(), bytes);
    assert_eq!(interleaved.encode_to_vec(), bytes);
    assert_eq!(
        serde_json::to_string(&backward).unwrap(),
        serde_json::to_string(&forward).unwrap()
    );
}

#[test]
fn file_descriptor_set_describes_the_schema() {
    // Just the fields of google.protobuf.FileDescriptor{Set,Proto} needed here.
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorProto {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
    }

    let set = FileDescriptorSet::decode(adjoint_proto::FILE_DESCRIPTOR_SET).unwrap();
    assert!(set.file.iter().any(|file| {
        file.name.as_deref() == Some("adjoint/v1/graph.proto")
            && file.package.as_deref() == Some("adjoint.v1")
    }));
}
