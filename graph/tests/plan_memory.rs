//! The memory planner on the workload models and on small hand-made
//! graphs: plans pass the independent checker, come within 10% of the
//! live-set lower bound, lay gradients out in production order, alias
//! reshapes, are deterministic, and the checker rejects broken plans.

use adjoint_graph::autodiff::{GradGraph, grad};
use adjoint_graph::plan::{
    DEFAULT_ALIGNMENT, MemoryPlan, PlanOptions, Storage, plan_memory, round_up,
};
use adjoint_graph::zoo::{self, MlpConfig};
use adjoint_graph::{Builder, DType, Graph, Init, InputRole, Shape, Value, ValueId};

fn workload(name: &str) -> Graph {
    let g = zoo::by_name(name).unwrap().unwrap();
    g.bind_batch(zoo::workload_batch(name).unwrap())
}

fn joint(g: &Graph) -> GradGraph {
    grad(g, g.loss.unwrap(), &g.trainable_params()).unwrap()
}

fn plan_joint(gg: &GradGraph) -> MemoryPlan {
    let plan = plan_memory(&gg.graph, &PlanOptions::with_grads(&gg.grads)).unwrap();
    plan.check(&gg.graph).unwrap();
    plan
}

fn bytes(g: &Graph, v: ValueId) -> usize {
    g.static_shape(v).iter().product::<usize>() * g.ty(v).dtype.size_bytes()
}

fn mib(b: usize) -> String {
    format!("{b} B ({:.1} MiB)", b as f64 / (1 << 20) as f64)
}

/// Slots in production order (then copies), one per trainable parameter,
/// sized to the parameters.
fn check_grad_layout(gg: &GradGraph, plan: &MemoryPlan) {
    let g = &gg.graph;
    let producers = g.producers();
    let direct: Vec<_> = (0..plan.grad_layout.len())
        .filter(|k| !plan.grad_copies.contains(k))
        .collect();
    assert_eq!(
        direct,
        (0..direct.len()).collect::<Vec<_>>(),
        "copies come last"
    );
    let order: Vec<usize> = direct
        .iter()
        .map(|&k| {
            producers[plan.grad_layout[k].value.index()]
                .unwrap()
                .index()
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "{}: gradient slots not in production order: {order:?}",
        g.name
    );
    let mut params: Vec<ValueId> = plan.grad_layout.iter().map(|s| s.param).collect();
    params.sort();
    let mut want = g.trainable_params();
    want.sort();
    assert_eq!(params, want, "{}: one slot per trainable parameter", g.name);
    let sum: usize = want
        .iter()
        .map(|&p| round_up(bytes(g, p), DEFAULT_ALIGNMENT))
        .sum();
    assert_eq!(plan.grad_bytes, sum, "{}", g.name);
    let mut offset = 0;
    for slot in &plan.grad_layout {
        assert_eq!(slot.offset, offset);
        assert_eq!(slot.bytes, bytes(g, slot.param));
        offset += round_up(slot.bytes, DEFAULT_ALIGNMENT);
    }
    for &(p, v) in &gg.grads {
        let slot = plan.grad_layout.iter().find(|s| s.param == p).unwrap();
        assert_eq!(slot.value, v);
    }
}

#[test]
fn workload_joint_graphs() {
    for name in zoo::MODELS {
        let g = workload(name);
        let gg = joint(&g);
        let plan = plan_joint(&gg);
        let (arena, peak) = (plan.arena_bytes, plan.live_peak_bytes);
        println!(
            "{name}: {} nodes; arena {}, live peak {}, grads {}, params {}, inputs {}, \
             copies {}, total {}",
            gg.graph.nodes.len(),
            mib(arena),
            mib(peak),
            mib(plan.grad_bytes),
            mib(plan.param_bytes),
            mib(plan.input_bytes),
            plan.grad_copies.len(),
            mib(plan.total_bytes()),
        );
        assert!(peak > 0 && arena >= peak);
        assert!(
            arena as f64 <= 1.1 * peak as f64,
            "{name}: arena_bytes {arena} exceeds 1.1 x live_peak_bytes {peak}"
        );
        check_grad_layout(&gg, &plan);
        let param_sum: usize = gg
            .graph
            .params
            .iter()
            .map(|p| bytes(&gg.graph, p.value))
            .sum();
        assert_eq!(plan.param_bytes, param_sum);
        assert!(
            plan.grad_copies.is_empty(),
            "{name}: {:?}",
            plan.grad_copies
        );
        let again = plan_memory(&gg.graph, &PlanOptions::with_grads(&gg.grads)).unwrap();
        assert_eq!(plan, again, "{name}: planning twice differs");
    }
}

#[test]
fn other_alignments_also_check() {
    let g = zoo::mlp(&MlpConfig {
        batch: Some(32),
        ..MlpConfig::default()
    })
    .unwrap();
    let gg = joint(&g);
    for alignment in [1, 4, 256, 4096] {
        let opts = PlanOptions {
            alignment,
            ..PlanOptions::with_grads(&gg.grads)
        };
        let plan = plan_memory(&gg.graph, &opts).unwrap();
        plan.check(&gg.graph).unwrap();
        assert!(plan.arena_bytes >= plan.live_peak_bytes);
        assert!(
            plan.grad_layout
                .iter()
                .all(|s| s.offset.is_multiple_of(alignment))
        );
    }
}

#[test]
fn forward_only_graph() {
    let g = workload("mlp");
    let plan = plan_memory(&g, &PlanOptions::default()).unwrap();
    plan.check(&g).unwrap();
    assert!(plan.grad_layout.is_empty() && plan.grad_bytes == 0);
    assert!(plan.arena_bytes >= plan.live_peak_bytes && plan.live_peak_bytes > 0);
    let loss = g.loss.unwrap();
    assert!(matches!(plan.storage_of(loss), Storage::Arena { .. }));
    assert_eq!(plan.lifetimes[loss.index()].unwrap().last, g.nodes.len());
    assert!(plan.frees_after.iter().flatten().all(|&v| v != loss));
    let x = g.find("x").unwrap();
    assert_eq!(plan.storage_of(x), Storage::Input(0));
    assert_eq!(plan.input_bytes, 256 * 784 * 4 + 256 * 8);
    // Every non-output arena value is freed exactly once.
    let freed: usize = plan.frees_after.iter().map(Vec::len).sum();
    let arena = plan
        .storage
        .iter()
        .filter(|s| matches!(s, Storage::Arena { .. }))
        .count();
    assert_eq!(freed, arena - 1);
}

/// x [4, 6] → a = tanh(x) → r = reshape(a) → r2 = reshape(r) →
/// (unrelated work on x) → s = sum(r2 * r2); plus reshape(x) as an output.
fn reshape_graph() -> (Graph, [ValueId; 6]) {
    let mut b = Builder::new("reshape");
    let x = b
        .input("x", DType::F32, Shape::of(&[4, 6]), InputRole::Data)
        .unwrap();
    let a = b.tanh(x).unwrap();
    let r = b.reshape(a, Shape::of(&[6, 4])).unwrap();
    let r2 = b.reshape(r, Shape::of(&[24])).unwrap();
    let e = b.exp(x).unwrap();
    let f = b.sigmoid(e).unwrap();
    let f = b.sum_all(f).unwrap();
    b.output(f);
    let sq = b.mul(r2, r2).unwrap();
    let s = b.sum_all(sq).unwrap();
    b.output(s);
    let xr = b.reshape(x, Shape::of(&[24])).unwrap();
    b.output(xr);
    (b.finish().unwrap(), [x, a, r, r2, sq, xr])
}

#[test]
fn reshape_outputs_alias_their_root() {
    let (g, [x, a, r, r2, sq, xr]) = reshape_graph();
    let plan = plan_memory(&g, &PlanOptions::default()).unwrap();
    plan.check(&g).unwrap();
    assert_eq!(plan.storage_of(r), Storage::Alias { of: a });
    assert_eq!(
        plan.storage_of(r2),
        Storage::Alias { of: a },
        "chains resolve"
    );
    assert_eq!(plan.storage_of(xr), Storage::Alias { of: x });
    assert!(matches!(plan.storage_of(a), Storage::Arena { .. }));
    // `a` is last read directly by the reshape (node 1), but lives until
    // `r2 * r2` (node 6) reads its bytes.
    let mul_node = g.producers()[sq.index()].unwrap().index();
    assert_eq!(plan.lifetimes[a.index()].unwrap().last, mul_node);
    assert!(plan.frees_after[mul_node].contains(&a));
    assert!(
        plan.frees_after[..mul_node]
            .iter()
            .flatten()
            .all(|&v| v != a)
    );
    assert!(
        plan.frees_after
            .iter()
            .flatten()
            .all(|&v| v != r && v != r2)
    );

    // With the alias an output, the root lives to the end of the step.
    let mut g2 = g.clone();
    g2.outputs.push(r2);
    let plan = plan_memory(&g2, &PlanOptions::default()).unwrap();
    plan.check(&g2).unwrap();
    assert_eq!(plan.lifetimes[a.index()].unwrap().last, g2.nodes.len());
    assert!(plan.frees_after.iter().flatten().all(|&v| v != a));
}

#[test]
fn a_reshaped_gradient_is_written_into_its_slot() {
    let mut b = Builder::new("reshaped_param");
    let x = b
        .input("x", DType::F32, Shape::of(&[5, 2]), InputRole::Data)
        .unwrap();
    let w = b.param("w", DType::F32, &[6], Init::Zeros).unwrap();
    let w2 = b.reshape(w, Shape::of(&[2, 3])).unwrap();
    let y = b.matmul(x, w2).unwrap();
    let y = b.tanh(y).unwrap();
    let loss = b.sum_all(y).unwrap();
    b.loss(loss);
    let g = b.finish().unwrap();
    let gg = joint(&g);
    let plan = plan_joint(&gg);
    let (_, gw) = gg.grads[0];
    assert!(matches!(
        plan.storage_of(gw),
        Storage::Grad {
            offset: 0,
            bytes: 24
        }
    ));
    let w2 = gg.graph.find(g.name_of(w2)).unwrap();
    assert_eq!(plan.storage_of(w2), Storage::Alias { of: gg.grads[0].0 });
    check_grad_layout(&gg, &plan);
}

#[test]
fn degenerate_gradients_are_copied_at_the_end() {
    let mut b = Builder::new("degenerate");
    let x = b
        .input("x", DType::F32, Shape::of(&[3]), InputRole::Data)
        .unwrap();
    let w1 = b.param("w1", DType::F32, &[3], Init::Zeros).unwrap();
    let w2 = b.param("w2", DType::F32, &[3], Init::Zeros).unwrap();
    let w3 = b.param("w3", DType::F32, &[3], Init::Zeros).unwrap();
    let w4 = b.param("w4", DType::F32, &[3], Init::Zeros).unwrap();
    let shared = b.mul(x, w1).unwrap();
    let own = b.add(shared, w2).unwrap();
    let own2 = b.mul(own, w3).unwrap();
    let loss = b.sum_all(own2).unwrap();
    b.loss(loss);
    let g = b.finish().unwrap();
    // w1 and w2 share one value; w3 is its own gradient; w4 and the input
    // x have values of their own, produced by nodes.
    let grads = vec![(w1, shared), (w2, shared), (w3, w3), (w4, own2), (x, own)];
    let plan = plan_memory(&g, &PlanOptions::with_grads(&grads)).unwrap();
    plan.check(&g).unwrap();
    let order: Vec<ValueId> = plan.grad_layout.iter().map(|s| s.param).collect();
    assert_eq!(order, [x, w4, w1, w2, w3], "production order, then copies");
    assert_eq!(plan.grad_copies, [2, 3, 4]);
    assert_eq!(plan.grad_bytes, 5 * 64);
    assert!(matches!(
        plan.storage_of(own),
        Storage::Grad { offset: 0, .. }
    ));
    assert!(matches!(
        plan.storage_of(own2),
        Storage::Grad { offset: 64, .. }
    ));
    assert!(matches!(plan.storage_of(shared), Storage::Arena { .. }));
    assert_eq!(plan.storage_of(w3), Storage::Param(2));
    // The shared value is read by the copy at the end of the step.
    assert_eq!(plan.lifetimes[shared.index()].unwrap().last, g.nodes.len());
}

#[test]
fn bad_options_are_rejected() {
    let g = zoo::mlp(&MlpConfig::default()).unwrap();
    let err = plan_memory(&g, &PlanOptions::default()).unwrap_err();
    assert!(err.to_string().contains("bind_batch"), "{err}");
    let g = g.bind_batch(2);
    let w = g.find("fc1.weight").unwrap();
    let bias = g.find("fc1.bias").unwrap();
    let zero = PlanOptions {
        alignment: 0,
        ..PlanOptions::default()
    };
    assert!(
        plan_memory(&g, &zero)
            .unwrap_err()
            .to_string()
            .contains("alignment")
    );
    let twice = PlanOptions::with_grads(&[(w, w), (w, w)]);
    let err = plan_memory(&g, &twice).unwrap_err().to_string();
    assert!(
        err.contains("fc1.weight") && err.contains("more than one"),
        "{err}"
    );
    let mismatch = PlanOptions::with_grads(&[(w, bias)]);
    let err = plan_memory(&g, &mismatch).unwrap_err().to_string();
    assert!(err.contains("fc1.bias") && err.contains("type"), "{err}");
    let outside = PlanOptions::with_grads(&[(w, ValueId(9999))]);
    assert!(plan_memory(&g, &outside).is_err());

    // A value nothing defines is Unused, and cannot be a gradient.
    let mut g = g.clone();
    let ty = g.ty(w).clone();
    g.values.push(Value {
        name: "orphan".into(),
        ty,
    });
    let orphan = ValueId(g.values.len() as u32 - 1);
    let plan = plan_memory(&g, &PlanOptions::default()).unwrap();
    plan.check(&g).unwrap();
    assert_eq!(plan.storage_of(orphan), Storage::Unused);
    let err = plan_memory(&g, &PlanOptions::with_grads(&[(w, orphan)])).unwrap_err();
    assert!(err.to_string().contains("neither produced"), "{err}");
}

/// Two arena values live at the same node, both non-empty.
fn live_pair(plan: &MemoryPlan) -> (ValueId, ValueId) {
    let arena: Vec<usize> = (0..plan.storage.len())
        .filter(|&v| matches!(plan.storage[v], Storage::Arena { bytes, .. } if bytes > 0))
        .collect();
    for &a in &arena {
        for &b in &arena {
            let (la, lb) = (plan.lifetimes[a].unwrap(), plan.lifetimes[b].unwrap());
            if a != b && la.intersects(&lb) {
                return (ValueId(a as u32), ValueId(b as u32));
            }
        }
    }
    panic!("no two arena values live together");
}

#[test]
fn checker_rejects_broken_plans() {
    let g = zoo::mlp(&MlpConfig {
        input: 6,
        hidden: vec![5, 4],
        classes: 3,
        batch: Some(4),
    })
    .unwrap();
    let gg = joint(&g);
    let g = &gg.graph;
    let good = plan_joint(&gg);
    let broken = |edit: &dyn Fn(&mut MemoryPlan)| {
        let mut p = good.clone();
        edit(&mut p);
        p.check(g).unwrap_err()
    };

    let (a, b) = live_pair(&good);
    let err = broken(&|p| {
        let Storage::Arena { offset, .. } = p.storage[a.index()] else {
            unreachable!()
        };
        if let Storage::Arena { offset: o, .. } = &mut p.storage[b.index()] {
            *o = offset;
        }
    });
    assert!(
        err.contains(g.name_of(a)) && err.contains(g.name_of(b)),
        "{err}"
    );
    assert!(err.contains("overlap"), "{err}");

    let err = broken(&|p| p.arena_bytes -= 64);
    assert!(
        err.contains("outside the arena") || err.contains("arena_bytes"),
        "{err}"
    );
    let err = broken(&|p| p.live_peak_bytes += 64);
    assert!(err.contains("live_peak_bytes"), "{err}");

    let early = (0..g.nodes.len())
        .find(|&n| !good.frees_after[n].is_empty())
        .unwrap();
    let err = broken(&|p| {
        let v = p.frees_after[early].remove(0);
        p.frees_after[if early == 0 { 1 } else { 0 }].push(v);
    });
    assert!(err.contains("frees_after"), "{err}");

    let err = broken(&|p| p.grad_layout[1].offset = p.grad_layout[0].offset);
    assert!(err.contains("gradient slot"), "{err}");
    let err = broken(&|p| p.grad_copies.push(0));
    assert!(err.contains("in place or copied"), "{err}");

    let x = g.find("x").unwrap();
    let err = broken(&|p| p.storage[x.index()] = Storage::Input(1));
    assert!(err.contains("'x'"), "{err}");

    let (_, gw) = gg.grads[0];
    let err = broken(&|p| {
        p.storage[gw.index()] = Storage::Arena {
            offset: p.arena_bytes,
            bytes: bytes(g, gw),
        }
    });
    assert!(!err.is_empty());
}

#[test]
fn checker_rejects_a_wrong_alias_root() {
    let (g, [x, a, _, r2, _, _]) = reshape_graph();
    let good = plan_memory(&g, &PlanOptions::default()).unwrap();
    let mut bad = good.clone();
    bad.storage[r2.index()] = Storage::Alias { of: x };
    let err = bad.check(&g).unwrap_err();
    assert!(
        err.contains("root is") && err.contains(g.name_of(a)),
        "{err}"
    );
    // A non-reshape output may not alias.
    let mut bad = good.clone();
    bad.storage[a.index()] = Storage::Alias { of: x };
    assert!(bad.check(&g).is_err());
}
