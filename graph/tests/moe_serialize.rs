//! The MoE models through the protobuf and JSON forms: they validate, come
//! back equal, keep their MoE attributes (a float capacity factor
//! included) and their hashes, and the loaded graph computes the same loss.

mod moe_common;

use adjoint_graph::interp::{EvalCx, run_outputs};
use adjoint_graph::serialize::{content_hash, decode, encode, from_json, to_json};
use adjoint_graph::validate::validate;
use adjoint_graph::zoo::{self, moe, moe_transformer};
use adjoint_graph::{Attr, Graph, Op};
use moe_common::{feeds, small_moe, small_moe_transformer};

fn assert_round_trips(g: &Graph) {
    validate(g).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    let bytes = encode(g);
    let back = decode(&bytes).unwrap();
    assert_eq!(&back, g, "{}: binary round trip", g.name);
    assert_eq!(encode(&back), bytes);
    let json = to_json(g);
    let back = from_json(&json).unwrap();
    assert_eq!(&back, g, "{}: JSON round trip", g.name);
    assert_eq!(to_json(&back), json);
    assert_eq!(content_hash(&back), content_hash(g));
    validate(&back).unwrap();
}

fn ops(g: &Graph, name: &str) -> Vec<Op> {
    let found = g.nodes.iter().filter(|n| n.op.name() == name);
    found.map(|n| n.op.clone()).collect()
}

#[test]
fn zoo_moe_models_round_trip() {
    for name in ["moe", "moe-transformer"] {
        assert!(zoo::MODELS.contains(&name));
        let g = zoo::by_name(name).unwrap().unwrap();
        assert_round_trips(&g);
        let bound = g.bind_batch(zoo::workload_batch(name).unwrap());
        assert_round_trips(&bound);
        for op in ["TopK", "MoeRoute", "GroupedMatMul"] {
            assert!(!ops(&g, op).is_empty(), "{name}: no {op}");
        }
    }
    assert_eq!(zoo::workload_batch("moe"), Some(2048));
    assert_eq!(zoo::workload_batch("moe-transformer"), Some(16));
}

#[test]
fn attributes_and_symbolic_tokens_survive() {
    let g = moe(&small_moe(None, 1.25)).unwrap();
    assert!(!g.is_static());
    assert_round_trips(&g);
    let back = from_json(&to_json(&g)).unwrap();
    let routes = ops(&back, "MoeRoute");
    assert_eq!(routes.len(), 1);
    let attrs = routes[0].attrs();
    assert_eq!(attrs["capacity_factor"], Attr::Float(1.25));
    assert_eq!(attrs["experts"], Attr::Int(4));
    assert_eq!(ops(&back, "TopK")[0].attrs()["k"], Attr::Int(2));
    assert_round_trips(&g.bind_batch(6));
}

#[test]
fn a_loaded_model_computes_the_same_loss() {
    for g in [
        moe(&small_moe(Some(6), 0.5)).unwrap(),
        moe_transformer(&small_moe_transformer()).unwrap(),
    ] {
        let back = decode(&encode(&g)).unwrap();
        let f = feeds(&g, 11);
        let cx = EvalCx::default();
        let (a, b) = (
            run_outputs(&g, &f, &cx).unwrap(),
            run_outputs(&back, &f, &cx).unwrap(),
        );
        assert_eq!(a, b, "{}", g.name);
        assert!(a[0].data[0].is_finite());
    }
}
