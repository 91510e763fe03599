//! The MoE zoo models' shapes, parameter names and initializers, and the
//! configurations they refuse.

mod moe_common;

use adjoint_graph::zoo::{MoeConfig, MoeTransformerConfig, moe, moe_layer, moe_transformer};
use adjoint_graph::{Builder, DType, Dim, Error, Graph, Init, InputRole, Shape};
use moe_common::{small_layer, small_moe_transformer};

/// (name, shape, init) of every parameter.
fn params(g: &Graph) -> Vec<(String, Vec<usize>, Init)> {
    let p = g.params.iter();
    p.map(|p| {
        (
            g.name_of(p.value).to_owned(),
            g.static_shape(p.value),
            p.init.clone(),
        )
    })
    .collect()
}

fn uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        low: -bound,
        high: bound,
    }
}

#[test]
fn the_moe_workload_has_the_table_sizes() {
    let g = moe(&MoeConfig::default()).unwrap();
    assert!(g.is_static());
    for name in ["x", "target"] {
        let v = g.find(name).unwrap();
        assert_eq!(g.static_shape(v), vec![2048, 256], "{name}");
        assert_eq!(g.ty(v).dtype, DType::F32);
    }
    assert_eq!(
        params(&g),
        vec![
            ("moe.gate.weight".into(), vec![256, 16], uniform(256)),
            ("moe.w1".into(), vec![16, 256, 1024], uniform(256)),
            ("moe.w2".into(), vec![16, 1024, 256], uniform(1024)),
        ]
    );
    let route = g.nodes.iter().find(|n| n.op.name() == "MoeRoute").unwrap();
    let attrs = route.op.attrs();
    assert_eq!(attrs["capacity_factor"], adjoint_graph::Attr::Float(0.0));
    assert_eq!(g.name_of(g.loss.unwrap()), "loss");
    // Each of the 2048·2 rows meets d·h twice forward: 2·2·R·d·h FLOPs in
    // the expert GEMMs.
    let gemm: u64 = g
        .nodes
        .iter()
        .filter(|n| n.op.name() == "GroupedMatMul")
        .map(|n| g.node_cost(n).flops)
        .sum();
    assert_eq!(gemm, 2 * 2 * 4096 * 256 * 1024);
    let symbolic = moe(&MoeConfig {
        tokens: None,
        ..MoeConfig::default()
    })
    .unwrap();
    let x = symbolic.find("x").unwrap();
    assert_eq!(symbolic.ty(x).shape.dims()[0], Dim::Batch);
}

#[test]
fn the_moe_transformer_replaces_every_mlp() {
    let cfg = MoeTransformerConfig::default();
    let g = moe_transformer(&cfg).unwrap();
    let names: Vec<String> = params(&g).into_iter().map(|p| p.0).collect();
    assert!(!names.iter().any(|n| n.contains(".mlp.")), "{names:?}");
    let (d, e, h) = (cfg.transformer.d_model, cfg.layer.experts, cfg.layer.hidden);
    for i in 0..cfg.transformer.layers {
        let p = params(&g);
        let find = |n: &str| p.iter().find(|q| q.0 == n).unwrap().clone();
        assert_eq!(find(&format!("h.{i}.moe.gate.weight")).1, vec![d, e]);
        assert_eq!(
            find(&format!("h.{i}.moe.w1")),
            (format!("h.{i}.moe.w1"), vec![e, d, h], uniform(d))
        );
        assert_eq!(find(&format!("h.{i}.moe.w2")).1, vec![e, h, d]);
    }
    let routers = g.nodes.iter().filter(|n| n.op.name() == "MoeRoute").count();
    assert_eq!(routers, cfg.transformer.layers);
    assert_eq!((e, cfg.layer.top_k, cfg.transformer.batch), (8, 2, None));
    assert_eq!(
        adjoint_graph::zoo::workload_batch("moe-transformer"),
        Some(16)
    );
}

#[test]
fn a_symbolic_batch_builds_and_binds_like_a_fixed_one() {
    let fixed = small_moe_transformer();
    let batch = fixed.transformer.batch.unwrap();
    let mut cfg = fixed.clone();
    cfg.transformer.batch = None;
    let symbolic = moe_transformer(&cfg).unwrap();
    let bound = symbolic.bind_batch(batch);
    let fixed = moe_transformer(&fixed).unwrap();
    assert_eq!(
        adjoint_graph::serialize::content_hash(&bound),
        adjoint_graph::serialize::content_hash(&fixed),
        "binding the symbolic batch gives the fixed-batch graph"
    );
}

#[test]
fn unsupported_configs_are_errors() {
    let mut b = Builder::new("bad");
    let x = b
        .input("x", DType::F32, Shape::of(&[4]), InputRole::Data)
        .unwrap();
    match moe_layer(&mut b, "moe", x, &small_layer(0.0)) {
        Err(Error::Unsupported(m)) => assert!(m.contains("[..., d]"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut layer = small_layer(0.0);
    layer.top_k = 5;
    let mut b = Builder::new("bad");
    let x = b
        .input("x", DType::F32, Shape::of(&[2, 3]), InputRole::Data)
        .unwrap();
    let e = moe_layer(&mut b, "moe", x, &layer).unwrap_err();
    assert!(e.to_string().contains("attribute 'k'"), "{e}");
}
