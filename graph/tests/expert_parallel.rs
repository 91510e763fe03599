//! Expert parallelism (`adjoint_graph::expert_parallel`): the rewrite's
//! structure on the zoo's MoE models and on hand-made expert regions, its
//! errors, the shard helpers, a serialization round trip, and equivalence.
//!
//! The interpreter runs one rank, so equivalence is shown two ways: at
//! `ranks = 1` the collectives run in the interpreter and change nothing;
//! at more ranks [`run_spmd`] runs every rank's copy of the sharded graph
//! node by node, carrying out each exchange as `ops::collective`'s module
//! doc defines it, and each rank's loss and gradients match the unsharded
//! graph's on that rank's data (expert gradients summed over the ranks).

// Builder closures return the crate's `Result`, whose error is large.
#![allow(clippy::result_large_err)]

mod moe_common;

use std::collections::BTreeMap;

use adjoint_graph::autodiff::grad;
use adjoint_graph::expert_parallel::{
    ShardedExperts, ShardedParam, shard, shard_experts, shard_range, unshard,
};
use adjoint_graph::interp::{EvalCx, Tensor, run_outputs};
use adjoint_graph::ops::{CollectiveOp, GeluApprox, Op};
use adjoint_graph::serialize::{content_hash, decode, encode, from_json, to_json};
use adjoint_graph::validate::validate;
use adjoint_graph::zoo::{MlpConfig, mlp, moe, moe_transformer};
use adjoint_graph::{
    Builder, DType, Error, Graph, Init, InputRole, Result, Shape, TensorData, ValueId, init,
};
use moe_common::{max_rel_diff, normal, small_moe, small_moe_transformer};

// ----- helpers -----

fn count(g: &Graph, op: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.name() == op).count()
}

fn node<'g>(g: &'g Graph, op: &str) -> Vec<&'g adjoint_graph::Node> {
    g.nodes.iter().filter(|n| n.op.name() == op).collect()
}

fn param_shape(g: &Graph, name: &str) -> Vec<usize> {
    g.static_shape(g.find(name).unwrap_or_else(|| panic!("no {name}")))
}

fn sharded(g: &Graph, ranks: usize) -> ShardedExperts {
    let s = shard_experts(g, ranks).unwrap_or_else(|e| panic!("{} at {ranks}: {e}", g.name));
    validate(&s.graph).unwrap();
    assert_eq!(s.ranks, ranks);
    s
}

fn err(g: &Graph, ranks: usize) -> String {
    shard_experts(g, ranks).unwrap_err().to_string()
}

/// The structure every sharded graph has: the weights listed once each in
/// declaration order with `[E/ranks, a, b]` shapes and their inits kept,
/// every other value with its name and (outside the regions) its type,
/// `layers` exchanges each way, every matmul reading local offsets.
fn check_structure(g: &Graph, s: &ShardedExperts, layers: usize, exits: usize) {
    let ranks = s.ranks;
    let weights: Vec<&str> = (g.nodes.iter())
        .filter(|n| n.op.name() == "GroupedMatMul")
        .map(|n| g.name_of(n.inputs[1]))
        .collect();
    let want: Vec<&str> = (g.params.iter())
        .map(|p| g.name_of(p.value))
        .filter(|n| weights.contains(n))
        .collect();
    let got: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, want);
    let sg = &s.graph;
    for p in &g.params {
        let name = g.name_of(p.value);
        let new = sg.param(sg.find(name).unwrap()).unwrap();
        assert_eq!(
            (new.init.clone(), new.trainable),
            (p.init.clone(), p.trainable)
        );
        let full = g.static_shape(p.value);
        match s.params.iter().find(|sp| sp.name == name) {
            Some(sp) => {
                assert_eq!(sp.experts, full[0]);
                let want = [full[0] / ranks, full[1], full[2]];
                assert_eq!(param_shape(sg, name), want, "{name}");
            }
            None => assert_eq!(param_shape(sg, name), full, "{name}"),
        }
    }
    for v in &g.values {
        assert!(sg.find(&v.name).is_some(), "lost value {}", v.name);
    }
    let inputs = |g: &Graph| {
        (g.inputs.iter())
            .map(|i| (g.name_of(i.value).to_owned(), i.role, g.ty(i.value).clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(inputs(g), inputs(sg));
    let outs = |g: &Graph| {
        g.outputs
            .iter()
            .map(|&v| g.ty(v).clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(outs(g), outs(sg));
    assert_eq!(sg.loss.map(|l| sg.name_of(l)), g.loss.map(|l| g.name_of(l)));
    assert_eq!(count(sg, "AllToAll"), layers);
    assert_eq!(count(sg, "AllToAllCombine"), exits);
    assert_eq!(count(sg, "AllReduce"), 0);
    assert_eq!(count(sg, "GroupedMatMul"), count(g, "GroupedMatMul"));
    let local: Vec<ValueId> = node(sg, "AllToAll").iter().map(|n| n.outputs[1]).collect();
    for n in node(sg, "GroupedMatMul") {
        assert!(
            local.contains(&n.inputs[2]),
            "{} reads global offsets",
            n.name
        );
        assert_eq!(sg.ty(n.inputs[0]).shape.dims()[0], ranks.into());
    }
    for n in node(sg, "AllToAll")
        .into_iter()
        .chain(node(sg, "AllToAllCombine"))
    {
        assert_eq!(
            n.op,
            match n.op.name() {
                "AllToAll" => Op::Collective(CollectiveOp::AllToAll { ranks }),
                _ => Op::Collective(CollectiveOp::AllToAllCombine { ranks }),
            }
        );
        // The exchanges group rows by the layer's routing offsets.
        let producer = sg.nodes.iter().find(|p| p.outputs.contains(&n.inputs[1]));
        assert_eq!(
            producer.map(|p| p.op.name()),
            Some("MoeRoute"),
            "{}",
            n.name
        );
    }
}

// ----- the zoo's MoE models -----

#[test]
fn moe_layer_shards_over_2_and_4_ranks() {
    for tokens in [None, Some(6)] {
        let g = moe(&small_moe(tokens, 0.0)).unwrap();
        for ranks in [2, 4] {
            let s = sharded(&g, ranks);
            check_structure(&g, &s, 1, 1);
            let want = ["moe.w1", "moe.w2"].map(|name| ShardedParam {
                name: name.into(),
                experts: 4,
            });
            assert_eq!(s.params, want);
            let sg = &s.graph;
            assert_eq!(param_shape(sg, "moe.w1"), [4 / ranks, 3, 5]);
            assert_eq!(param_shape(sg, "moe.w2"), [4 / ranks, 5, 3]);
            assert_eq!(param_shape(sg, "moe.gate.weight"), [3, 4]);
            // Packed rows go out, expert outputs come back, by name.
            let a2a = node(sg, "AllToAll")[0];
            let x = sg.name_of(a2a.inputs[0]);
            let out_names: Vec<&str> = a2a.outputs.iter().map(|&v| sg.name_of(v)).collect();
            assert_eq!(
                out_names,
                [".to_experts", ".expert_offsets", ".expert_counts"].map(|s| format!("{x}{s}"))
            );
            assert_eq!(a2a.name, "moe/groupedmatmul/all_to_all");
            assert_eq!(a2a.provenance, "moe.experts");
            let ty = &sg.ty(a2a.outputs[0]).shape;
            let mut want = g.ty(a2a.inputs[0]).shape.dims().to_vec();
            want.insert(0, ranks.into());
            assert_eq!(ty.dims(), want);
            assert_eq!(sg.static_shape(a2a.outputs[2]), [ranks, 4 / ranks]);
            let back = node(sg, "AllToAllCombine")[0];
            let v = sg.name_of(back.inputs[0]);
            assert_eq!(sg.name_of(back.outputs[0]), format!("{v}.from_experts"));
            assert_eq!(sg.ty(back.outputs[0]), g.ty(g.find(v).unwrap()));
            // The combine's reader is the layer's slot gather.
            let readers: Vec<&str> = (sg.nodes.iter())
                .filter(|n| n.inputs.contains(&back.outputs[0]))
                .map(|n| n.op.name())
                .collect();
            assert_eq!(readers, ["GatherRows"]);
        }
    }
}

#[test]
fn moe_transformer_shards_every_layer() {
    let mut cfg = small_moe_transformer();
    for batch in [Some(2), None] {
        cfg.transformer.batch = batch;
        let g = moe_transformer(&cfg).unwrap();
        for ranks in [2, 4] {
            let s = sharded(&g, ranks);
            check_structure(&g, &s, 2, 2);
            let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(
                names,
                ["h.0.moe.w1", "h.0.moe.w2", "h.1.moe.w1", "h.1.moe.w2"]
            );
            // Each layer exchanges by its own offsets.
            let offsets: Vec<ValueId> = (node(&s.graph, "AllToAll").iter())
                .map(|n| n.inputs[1])
                .collect();
            assert_ne!(offsets[0], offsets[1]);
        }
    }
    // The default (workload) model: symbolic batch, E 8.
    let g = moe_transformer(&Default::default()).unwrap();
    assert!(!g.is_static());
    for ranks in [2, 8] {
        check_structure(&g, &sharded(&g, ranks), 2, 2);
    }
}

#[test]
fn sharding_commutes_with_binding_the_batch() {
    let g = moe_transformer(&Default::default()).unwrap();
    let late = sharded(&g, 4).graph.bind_batch(3);
    let early = sharded(&g.bind_batch(3), 4).graph;
    assert_eq!(late, early);
    let g = moe(&small_moe(None, 0.5)).unwrap();
    assert_eq!(
        sharded(&g, 2).graph.bind_batch(6),
        sharded(&g.bind_batch(6), 2).graph
    );
}

#[test]
fn one_rank_leaves_the_graph_unchanged() {
    for g in [
        moe(&small_moe(None, 0.0)).unwrap(),
        moe_transformer(&small_moe_transformer()).unwrap(),
    ] {
        let s = shard_experts(&g, 1).unwrap();
        assert_eq!((s.graph, s.params, s.ranks), (g, vec![], 1));
    }
}

#[test]
fn bad_settings_are_errors() {
    let g = moe(&small_moe(None, 0.0)).unwrap();
    let e = err(&g, 3);
    for want in [
        "expert_parallel = 3",
        "'moe/groupedmatmul' (GroupedMatMul) from 'moe.experts'",
        "weight 'moe.w1' has 4 experts, not a multiple of 3",
    ] {
        assert!(e.contains(want), "'{want}' not in: {e}");
    }
    assert!(err(&g, 8).contains("4 experts, not a multiple of 8"));
    assert!(err(&g, 0).contains("expert_parallel = 0"));
    let dense = mlp(&MlpConfig::default()).unwrap();
    assert_eq!(
        err(&dense, 2),
        "expert_parallel = 2 needs a graph with experts (GroupedMatMul); found none"
    );
    // Sharding twice is refused.
    let once = sharded(&g, 2).graph;
    assert!(
        err(&once, 2).contains("already exchanges rows"),
        "{}",
        err(&once, 2)
    );
}

// ----- hand-made expert regions -----

/// x `[t, 3]` and offsets `[5]` (4 experts) as inputs; two matmuls read x
/// (one dispatch), a gated product plus a bias (a vector broadcast over
/// rows) feeds the second layer. `gelu(h1)` leaves the region through a
/// reshape, `h3` through a reduction, `y` as a graph output.
fn branchy(t: usize) -> Graph {
    let mut b = Builder::new("branchy");
    let x = b
        .input("x", DType::F64, Shape::of(&[t, 3]), InputRole::Data)
        .unwrap();
    let o = b
        .input("offsets", DType::I64, Shape::of(&[5]), InputRole::Data)
        .unwrap();
    let u = |bound: f64| Init::Uniform {
        low: -bound,
        high: bound,
    };
    let w1 = b.param("w1", DType::F64, &[4, 3, 5], u(0.6)).unwrap();
    let w3 = b.param("w3", DType::F64, &[4, 3, 5], u(0.6)).unwrap();
    let w2 = b.param("w2", DType::F64, &[4, 5, 3], u(0.4)).unwrap();
    let bias = b.param("bias", DType::F64, &[5], u(0.5)).unwrap();
    let h1 = b.grouped_matmul(x, w1, o, false).unwrap();
    let h3 = b.grouped_matmul(x, w3, o, false).unwrap();
    let a = b.gelu(h1, GeluApprox::Erf).unwrap();
    let m = b.mul(a, h3).unwrap();
    let m = b.add(m, bias).unwrap();
    let y = b.grouped_matmul(m, w2, o, false).unwrap();
    let s = b.sum_all(h3).unwrap();
    let r = b.reshape(a, Shape::of(&[t * 5])).unwrap();
    for v in [y, s, r] {
        b.output(v);
    }
    b.finish().unwrap()
}

#[test]
fn regions_follow_row_wise_nodes_and_share_dispatches() {
    let g = branchy(6);
    let s = sharded(&g, 2);
    let sg = &s.graph;
    let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["w1", "w3", "w2"]);
    assert_eq!(param_shape(sg, "bias"), [5]);
    // One dispatch for x, read by both first matmuls.
    assert_eq!(count(sg, "AllToAll"), 1);
    let a2a = node(sg, "AllToAll")[0];
    let readers = (sg.nodes.iter()).filter(|n| n.inputs.contains(&a2a.outputs[0]));
    assert_eq!(readers.count(), 2);
    // Three exits: the gelu (reshape), h3 (reduction) and y (output).
    let back: Vec<&str> = (node(sg, "AllToAllCombine").iter())
        .map(|n| sg.name_of(n.inputs[0]))
        .collect();
    assert_eq!(back.len(), 3);
    for v in &back {
        assert_eq!(sg.ty(sg.find(v).unwrap()).shape.dims()[0], 2.into());
    }
    let y = g.name_of(g.outputs[0]);
    assert_eq!(sg.name_of(sg.outputs[0]), format!("{y}.from_experts"));
    assert_eq!(sg.ty(sg.outputs[0]), g.ty(g.outputs[0]));
    // Row-wise nodes stay in the region: the product and the bias add
    // see [ranks, t, 5] rows.
    for op in ["Mul", "Add"] {
        let n = node(sg, op)[0];
        assert_eq!(sg.static_shape(n.outputs[0]), [2, 6, 5], "{op}");
    }
    // Every output matches the unsharded graph's on each rank's rows (rank
    // 0 drops a row).
    check_spmd(&g, 2, &[vec![0., 1., 3., 3., 5.], vec![0., 2., 2., 4., 6.]]);
}

/// One builder with inputs x `[6, 3]`, offsets `[5]` and expert weights
/// w1 `[4, 3, 5]`, w2 `[4, 5, 3]`.
fn with_experts(build: impl FnOnce(&mut Builder, [ValueId; 4]) -> Result<ValueId>) -> Graph {
    let mut b = Builder::new("case");
    let x = b
        .input("x", DType::F64, Shape::of(&[6, 3]), InputRole::Data)
        .unwrap();
    let o = b
        .input("offsets", DType::I64, Shape::of(&[5]), InputRole::Data)
        .unwrap();
    let w1 = b.param("w1", DType::F64, &[4, 3, 5], Init::Zeros).unwrap();
    let w2 = b.param("w2", DType::F64, &[4, 5, 3], Init::Zeros).unwrap();
    let y = build(&mut b, [x, o, w1, w2]).unwrap();
    b.output(y);
    b.finish().unwrap()
}

#[test]
fn unshardable_regions_are_errors_naming_the_node() {
    let cases: [(&str, Graph); 6] = [
        (
            "dropout of expert rows ('groupedmatmul') cannot be sharded",
            with_experts(|b, [x, o, w1, _]| {
                let h = b.grouped_matmul(x, w1, o, false)?;
                b.dropout(h, 0.1, 3)
            }),
        ),
        (
            "node 'groupedmatmul_1' (GroupedMatMul): expert_parallel = 2: its rows 'groupedmatmul' come from the experts of offsets 'offsets', but it groups them by 'other'",
            with_experts(|b, [x, o, w1, w2]| {
                let other = b.input("other", DType::I64, Shape::of(&[5]), InputRole::Data)?;
                let h = b.grouped_matmul(x, w1, o, false)?;
                b.grouped_matmul(h, w2, other, false)
            }),
        ),
        (
            "weight 'w' is not a parameter",
            with_experts(|b, [x, o, _, _]| {
                let w = b.input("w", DType::F64, Shape::of(&[4, 3, 5]), InputRole::Data)?;
                b.grouped_matmul(x, w, o, false)
            }),
        ),
        (
            "node 'reducesum' (ReduceSum): expert_parallel = 2: reads the expert weight 'w1'",
            with_experts(|b, [x, o, w1, _]| {
                let h = b.grouped_matmul(x, w1, o, false)?;
                let s = b.sum(w1, &[0], false)?;
                let s = b.sum_all(s)?;
                let h = b.sum_all(h)?;
                b.add(h, s)
            }),
        ),
        ("weight 'w1' has explicit initial values", {
            let mut g = with_experts(|b, [x, o, w1, _]| b.grouped_matmul(x, w1, o, false));
            let data = init::encode(DType::F64, &[4, 3, 5], &[0.5; 60]);
            g.params[0].init = Init::Values(data);
            g
        }),
        (
            "its offsets 'cast' are computed from expert rows",
            with_experts(|b, [x, o, w1, _]| {
                // One row [3] gives one row [5], cast to offsets.
                let one = b.input("one", DType::F64, Shape::of(&[3]), InputRole::Data)?;
                let h = b.grouped_matmul(one, w1, o, false)?;
                let ids = b.cast(h, DType::I64)?;
                b.grouped_matmul(x, w1, ids, false)
            }),
        ),
    ];
    for (want, g) in cases {
        let e = shard_experts(&g, 2).unwrap_err();
        assert!(matches!(e, Error::InvalidNode { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains(want), "'{want}' not in: {e}");
        assert!(e.contains("expert_parallel = 2"), "{e}");
        // One rank changes nothing, so it checks nothing.
        assert_eq!(shard_experts(&g, 1).unwrap().graph, g);
    }
}

// ----- shards of tensors -----

#[test]
fn shard_ranges_and_tensors() {
    assert_eq!(shard_range(8, 4, 0), 0..2);
    assert_eq!(shard_range(8, 4, 3), 6..8);
    // Rank r holds place r % ranks (the second group of a job).
    assert_eq!(shard_range(8, 4, 5), 2..4);
    assert_eq!(shard_range(8, 1, 3), 0..8);
    assert_eq!(shard_range(8, 0, 3), 0..0);
    let values: Vec<f64> = (0..24).map(f64::from).collect();
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::I64] {
        let full = init::encode(dtype, &[4, 3, 2], &values);
        let shards: Vec<TensorData> = (0..2).map(|r| shard(&full, 2, r).unwrap()).collect();
        assert_eq!(shards[1].shape, [2, 3, 2]);
        assert_eq!(init::decode(&shards[1]).unwrap(), values[12..]);
        assert_eq!(shard(&full, 2, 3).unwrap(), shards[1]);
        assert_eq!(unshard(&shards).unwrap(), full);
        assert_eq!(unshard(std::slice::from_ref(&full)).unwrap(), full);
    }
    let full = init::encode(DType::F32, &[4, 3], &values[..12]);
    let e = |r: Result<TensorData>| r.unwrap_err().to_string();
    assert!(e(shard(&full, 3, 0)).contains("4 experts do not split evenly over 3 ranks"));
    assert!(e(shard(&full, 0, 0)).contains("over 0 ranks"));
    let scalar = init::encode(DType::F32, &[], &[1.0]);
    assert!(e(shard(&scalar, 1, 0)).contains("scalar"));
    let mut short = full.clone();
    short.bytes.pop();
    assert!(e(shard(&short, 2, 0)).contains("47 bytes"));
    assert!(e(unshard(&[])).contains("no shards"));
    let other = init::encode(DType::F32, &[2, 2], &values[..4]);
    assert!(e(unshard(&[full.clone(), other])).contains("shard 1"));
    assert!(e(unshard(&[short])).contains("47 bytes"));
}

// ----- serialization -----

#[test]
fn a_sharded_graph_round_trips() {
    let mut cfg = small_moe_transformer();
    cfg.transformer.batch = None;
    for g in [
        moe_transformer(&cfg).unwrap(),
        moe_transformer(&small_moe_transformer()).unwrap(),
    ] {
        let g = sharded(&g, 2).graph;
        let bytes = encode(&g);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, g);
        assert_eq!(encode(&back), bytes);
        let json = to_json(&g);
        assert_eq!(from_json(&json).unwrap(), g);
        assert_eq!(content_hash(&back), content_hash(&g));
        assert!(json.contains("AllToAllCombine"));
    }
}

// ----- equivalence at one rank, in the interpreter -----

/// x `[t, 3]` → (AllToAll) → GroupedMatMul → gelu → GroupedMatMul →
/// (AllToAllCombine), with the collectives at one rank or left out.
fn experts_at_one_rank(t: usize, collectives: bool) -> Graph {
    let mut b = Builder::new("one-rank");
    let x = b
        .input("x", DType::F64, Shape::of(&[t, 3]), InputRole::Data)
        .unwrap();
    let o = b
        .input("offsets", DType::I64, Shape::of(&[4]), InputRole::Data)
        .unwrap();
    let init = Init::Uniform {
        low: -0.7,
        high: 0.7,
    };
    let w1 = b.param("w1", DType::F64, &[3, 3, 4], init.clone()).unwrap();
    let w2 = b.param("w2", DType::F64, &[3, 4, 2], init).unwrap();
    let (rows, offsets, counts) = match collectives {
        true => {
            let [rows, offsets, counts] = b.all_to_all(x, o, 1).unwrap();
            (rows, offsets, Some(counts))
        }
        false => (x, o, None),
    };
    let h = b.grouped_matmul(rows, w1, offsets, false).unwrap();
    let h = b.gelu(h, GeluApprox::Tanh).unwrap();
    let mut y = b.grouped_matmul(h, w2, offsets, false).unwrap();
    if let Some(counts) = counts {
        y = b.all_to_all_combine(y, o, counts, 1).unwrap();
    }
    b.output(y);
    let loss = b.mul(y, y).unwrap();
    let loss = b.sum_all(loss).unwrap();
    b.loss(loss);
    b.finish().unwrap()
}

#[test]
fn one_rank_collectives_are_the_identity_in_the_interpreter() {
    let t = 5;
    let (with, without) = (experts_at_one_rank(t, true), experts_at_one_rank(t, false));
    let x = normal(&[t, 3], 5);
    // Dropless, an empty expert, and a dropped tail of two rows.
    for offsets in [[0., 2., 4., 5.], [0., 0., 3., 5.], [0., 1., 1., 3.]] {
        let feeds = |g: &Graph| {
            BTreeMap::from([
                (g.find("x").unwrap(), x.clone()),
                (
                    g.find("offsets").unwrap(),
                    Tensor::new(vec![4], offsets.to_vec()),
                ),
            ])
        };
        let cx = EvalCx::default();
        let a = run_outputs(&with, &feeds(&with), &cx).unwrap();
        let b = run_outputs(&without, &feeds(&without), &cx).unwrap();
        assert_eq!(a, b, "offsets {offsets:?}");
        let kept = offsets[3] as usize;
        assert!(
            a[0].data[kept * 2..].iter().all(|&v| v == 0.0),
            "{:?}",
            a[0]
        );
        assert!(a[0].data[..kept * 2].iter().any(|&v| v != 0.0));
        // So are their gradients.
        let grads = |g: &Graph| {
            let joint = grad(g, g.loss.unwrap(), &g.trainable_params()).unwrap();
            let f = feeds(&joint.graph);
            let env = adjoint_graph::interp::run(&joint.graph, &f, &cx).unwrap();
            let grads: Vec<Tensor> = (joint.grads.iter())
                .map(|&(_, gv)| env[gv.index()].clone().unwrap())
                .collect();
            grads
        };
        let (ga, gb) = (grads(&with), grads(&without));
        assert_eq!(ga, gb);
    }
}

// ----- equivalence over several ranks, emulated -----

/// One emulated rank's values.
type Env = Vec<Option<Tensor>>;

/// AllToAll over a group: rank q receives its local experts' rows from
/// every place, grouped by local expert, each group in source order.
fn all_to_all(xs: &[&Tensor], offsets: &[&Tensor]) -> Vec<Vec<Tensor>> {
    let ranks = xs.len();
    let local = (offsets[0].data.len() - 1) / ranks;
    let width = *xs[0].shape.last().unwrap();
    let mut shape = vec![ranks];
    shape.extend(&xs[0].shape);
    (0..ranks)
        .map(|q| {
            let mut y = vec![0.0; ranks * xs[0].data.len()];
            let (mut lo, mut counts, mut at) = (vec![0.0], vec![0.0; ranks * local], 0);
            for e in 0..local {
                for p in 0..ranks {
                    let o = &offsets[p].data;
                    let (a, b) = (o[q * local + e] as usize, o[q * local + e + 1] as usize);
                    let rows = &xs[p].data[a * width..b * width];
                    y[at * width..(at + b - a) * width].copy_from_slice(rows);
                    at += b - a;
                    counts[p * local + e] = (b - a) as f64;
                }
                lo.push(at as f64);
            }
            vec![
                Tensor::new(shape.clone(), y),
                Tensor::new(vec![local + 1], lo),
                Tensor::new(vec![ranks, local], counts),
            ]
        })
        .collect()
}

/// AllToAllCombine over a group: every row back to its place and packed
/// position; rows no expert held are zero.
fn combine(ys: &[&Tensor], offsets: &[&Tensor]) -> Vec<Vec<Tensor>> {
    let ranks = ys.len();
    let local = (offsets[0].data.len() - 1) / ranks;
    let width = *ys[0].shape.last().unwrap();
    let shape = ys[0].shape[1..].to_vec();
    let mut xs = vec![vec![0.0; ys[0].data.len() / ranks]; ranks];
    for q in 0..ranks {
        let mut at = 0;
        for e in 0..local {
            for (p, x) in xs.iter_mut().enumerate() {
                let o = &offsets[p].data;
                let (a, b) = (o[q * local + e] as usize, o[q * local + e + 1] as usize);
                let rows = &ys[q].data[at * width..(at + b - a) * width];
                x[a * width..b * width].copy_from_slice(rows);
                at += b - a;
            }
        }
    }
    (xs.into_iter())
        .map(|x| vec![Tensor::new(shape.clone(), x)])
        .collect()
}

/// Runs a graph on `envs.len()` emulated ranks (each env holds its fed
/// values), node by node.
fn run_spmd(g: &Graph, envs: &mut [Env]) {
    for node in &g.nodes {
        let args = |i: usize| -> Vec<&Tensor> {
            let env: &Env = &envs[i];
            let get = |v: &ValueId| {
                env[v.index()]
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}", g.name_of(*v)))
            };
            node.inputs.iter().map(get).collect()
        };
        let per_rank: Vec<Vec<Tensor>> = match node.op {
            Op::Collective(c) => {
                assert_eq!(c.ranks(), envs.len());
                let all: Vec<Vec<&Tensor>> = (0..envs.len()).map(args).collect();
                let input = |k: usize| all.iter().map(|a| a[k]).collect::<Vec<_>>();
                match c {
                    CollectiveOp::AllToAll { .. } => all_to_all(&input(0), &input(1)),
                    CollectiveOp::AllToAllCombine { .. } => combine(&input(0), &input(1)),
                    CollectiveOp::AllReduce { .. } => unreachable!("not made by the rewrite"),
                }
            }
            _ => (0..envs.len())
                .map(|r| {
                    let cx = EvalCx {
                        rank: r as u32,
                        ..EvalCx::default()
                    };
                    node.op
                        .eval(&args(r), &cx)
                        .unwrap_or_else(|e| panic!("{}: {e}", node.name))
                })
                .collect(),
        };
        for (env, outs) in envs.iter_mut().zip(per_rank) {
            for (&v, t) in node.outputs.iter().zip(outs) {
                assert_eq!(t.shape, g.static_shape(v), "{}", g.name_of(v));
                env[v.index()] = Some(t);
            }
        }
    }
}

/// Rank r's feeds by name: its own inputs (ints `(7j + 3k + r) mod 4`,
/// or the `offsets` given; floats normal), the same full parameters on
/// every rank.
fn rank_feeds(g: &Graph, r: usize, offsets: Option<&[f64]>) -> BTreeMap<String, Tensor> {
    let mut f = BTreeMap::new();
    for (k, i) in g.inputs.iter().enumerate() {
        let (name, shape) = (g.name_of(i.value), g.static_shape(i.value));
        let t = match (name, offsets) {
            ("offsets", Some(o)) => Tensor::new(shape, o.to_vec()),
            _ if g.ty(i.value).dtype.is_int() => {
                let n = shape.iter().product::<usize>();
                Tensor::new(
                    shape,
                    (0..n).map(|j| ((7 * j + 3 * k + r) % 4) as f64).collect(),
                )
            }
            _ => normal(&shape, 100 + k as u64 + 50 * r as u64),
        };
        f.insert(name.to_owned(), t);
    }
    for p in &g.params {
        let t = normal(&g.static_shape(p.value), 200 + p.value.0 as u64);
        f.insert(g.name_of(p.value).to_owned(), t.map(|v| 0.5 * v));
    }
    f
}

/// Rank r's shard of a full tensor, through [`shard`].
fn shard_of(t: &Tensor, ranks: usize, r: usize) -> Tensor {
    let full = init::encode(DType::F64, &t.shape, &t.data);
    let s = shard(&full, ranks, r).unwrap();
    Tensor::new(s.shape.clone(), init::decode(&s).unwrap())
}

/// Values by id of `g` from feeds by name.
fn by_id(g: &Graph, f: &BTreeMap<String, Tensor>) -> BTreeMap<ValueId, Tensor> {
    (f.iter())
        .filter_map(|(name, t)| Some((g.find(name)?, t.clone())))
        .collect()
}

/// Every output of the forward graph `g` and the gradient of its loss
/// (if any) for every trainable parameter, by name, on each of `ranks`
/// emulated ranks of the sharded graph, equal to the unsharded graph's on
/// that rank's data; expert gradients are the sum over ranks of the full
/// gradients, sliced.
fn check_spmd(g: &Graph, ranks: usize, offsets: &[Vec<f64>]) {
    let s = sharded(g, ranks);
    let feeds: Vec<_> = (0..ranks)
        .map(|r| rank_feeds(g, r, offsets.get(r).map(Vec::as_slice)))
        .collect();
    let is_expert = |name: &str| s.params.iter().any(|p| p.name == name);
    let local_feeds = |r: usize| -> BTreeMap<String, Tensor> {
        let mut f = feeds[r].clone();
        for p in &s.params {
            let full = &feeds[r][&p.name];
            f.insert(p.name.clone(), shard_of(full, ranks, r));
        }
        f
    };
    // Forward outputs.
    let cx = EvalCx::default();
    let mut envs: Vec<Env> = (0..ranks)
        .map(|r| {
            let mut env = vec![None; s.graph.values.len()];
            for (v, t) in by_id(&s.graph, &local_feeds(r)) {
                env[v.index()] = Some(t);
            }
            env
        })
        .collect();
    run_spmd(&s.graph, &mut envs);
    for (r, env) in envs.iter().enumerate() {
        let want = run_outputs(g, &by_id(g, &feeds[r]), &cx).unwrap();
        for (w, &o) in want.iter().zip(&s.graph.outputs) {
            let got = env[o.index()].as_ref().unwrap();
            assert!(
                max_rel_diff(got, w) < 1e-12,
                "rank {r}: {}",
                s.graph.name_of(o)
            );
        }
    }
    let Some(loss) = g.loss else { return };
    // Gradients: the unsharded graph's per rank, the sharded joint graph
    // emulated.
    let full_grads: Vec<BTreeMap<String, Tensor>> = (0..ranks)
        .map(|r| moe_common::loss_and_grads(g, loss, &by_id(g, &feeds[r])).1)
        .collect();
    let sg = &s.graph;
    let joint = grad(sg, sg.loss.unwrap(), &sg.trainable_params()).unwrap();
    let jg = &joint.graph;
    assert!(count(jg, "AllToAll") > count(sg, "AllToAll"));
    let mut envs: Vec<Env> = (0..ranks)
        .map(|r| {
            let mut env = vec![None; jg.values.len()];
            for (v, t) in by_id(jg, &local_feeds(r)) {
                env[v.index()] = Some(t);
            }
            env
        })
        .collect();
    run_spmd(jg, &mut envs);
    for (r, env) in envs.iter().enumerate() {
        let got_loss = env[joint.loss.index()].as_ref().unwrap();
        let want_loss = run_outputs(g, &by_id(g, &feeds[r]), &cx).unwrap();
        let li = g.outputs.iter().position(|&o| o == loss).unwrap();
        assert!(max_rel_diff(got_loss, &want_loss[li]) < 1e-12);
        for &(p, gv) in &joint.grads {
            let name = jg.name_of(p);
            let got = env[gv.index()].as_ref().unwrap();
            let want = match is_expert(name) {
                false => full_grads[r][name].clone(),
                true => {
                    let mut sum = full_grads[0][name].clone();
                    for other in &full_grads[1..] {
                        sum.data
                            .iter_mut()
                            .zip(&other[name].data)
                            .for_each(|(a, b)| *a += b);
                    }
                    shard_of(&sum, ranks, r)
                }
            };
            let d = max_rel_diff(got, &want);
            assert!(d < 1e-10, "rank {r}: gradient of {name} off by {d}");
        }
    }
}

#[test]
fn sharded_moe_matches_the_unsharded_model_on_every_rank() {
    for capacity_factor in [0.0, 0.5] {
        let g = moe(&small_moe(Some(6), capacity_factor)).unwrap();
        for ranks in [2, 4] {
            check_spmd(&g, ranks, &[]);
        }
    }
}

#[test]
fn sharded_moe_transformer_matches_the_unsharded_model_on_every_rank() {
    let g = moe_transformer(&small_moe_transformer()).unwrap();
    check_spmd(&g, 2, &[]);
    let mut cfg = small_moe_transformer();
    cfg.layer.capacity_factor = 0.75;
    check_spmd(&moe_transformer(&cfg).unwrap(), 4, &[]);
}
