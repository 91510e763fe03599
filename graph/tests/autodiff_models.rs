//! Autodiff on whole workload models (small sizes): gradients and
//! Hessian-vector products against finite differences on the interpreter,
//! the two routes to second order agreeing, and the pruning guarantees of
//! `grad`.

use std::collections::BTreeMap;

use adjoint_graph::autodiff::{grad, hvp, jvp};
use adjoint_graph::interp::{EvalCx, Tensor, run_outputs};
use adjoint_graph::rng::Stream;
use adjoint_graph::zoo::{self, ChainConfig, MlpConfig, TransformerConfig};
use adjoint_graph::{Builder, DType, Graph, InputRole, Shape, ValueId, init};

fn small_mlp() -> Graph {
    zoo::mlp(&MlpConfig {
        input: 6,
        hidden: vec![5, 4],
        classes: 3,
        batch: Some(4),
    })
    .unwrap()
}

fn small_transformer() -> Graph {
    zoo::transformer(&TransformerConfig {
        vocab: 11,
        d_model: 8,
        layers: 1,
        heads: 2,
        seq: 4,
        batch: Some(2),
    })
    .unwrap()
}

fn random(shape: &[usize], site: u64, scale: f64) -> Tensor {
    let s = Stream {
        seed: 7,
        step: 0,
        rank: 0,
        site,
    };
    let n = shape.iter().product::<usize>();
    Tensor::new(
        shape.to_vec(),
        (0..n as u64).map(|i| scale * s.normal(i)).collect(),
    )
}

/// Feeds for every input and parameter: normal data, labels in range, and
/// parameters from their initializers (scaled up so the loss is curved).
fn feeds(g: &Graph, classes: usize) -> BTreeMap<ValueId, Tensor> {
    let mut f = BTreeMap::new();
    for (k, i) in g.inputs.iter().enumerate() {
        let shape = g.static_shape(i.value);
        let t = if g.ty(i.value).dtype.is_int() {
            let n = shape.iter().product::<usize>();
            Tensor::new(
                shape,
                (0..n).map(|j| ((j * 7 + k * 3) % classes) as f64).collect(),
            )
        } else {
            random(&shape, 100 + k as u64, 1.0)
        };
        f.insert(i.value, t);
    }
    for p in &g.params {
        let mut t = init::materialize(g, p.value, &p.init, 3).unwrap();
        let noise = random(&t.shape, 200 + p.value.0 as u64, 0.3);
        for (x, n) in t.data.iter_mut().zip(&noise.data) {
            *x += n;
        }
        f.insert(p.value, t);
    }
    f
}

fn outputs(g: &Graph, f: &BTreeMap<ValueId, Tensor>) -> Vec<Tensor> {
    run_outputs(g, f, &EvalCx::default()).unwrap()
}

fn perturb(
    f: &BTreeMap<ValueId, Tensor>,
    dirs: &[(ValueId, Tensor)],
    eps: f64,
) -> BTreeMap<ValueId, Tensor> {
    let mut f = f.clone();
    for (p, d) in dirs {
        let t = f.get_mut(p).unwrap();
        for (x, dx) in t.data.iter_mut().zip(&d.data) {
            *x += eps * dx;
        }
    }
    f
}

fn assert_close(a: f64, b: f64, rtol: f64, what: &str) {
    let tol = rtol * (a.abs().max(b.abs()) + 1e-6);
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b} (rtol {rtol})");
}

/// ⟨∇L, v⟩ against the central difference of L along v.
fn check_gradient(g: &Graph, classes: usize) {
    let f = feeds(g, classes);
    let params = g.trainable_params();
    let gg = grad(g, g.loss.unwrap(), &params).unwrap();
    let grads = outputs(&gg.graph, &remap(&f, g, &gg.graph));
    let dirs: Vec<(ValueId, Tensor)> = params
        .iter()
        .map(|&p| (p, random(&g.static_shape(p), 300 + p.0 as u64, 1.0)))
        .collect();
    let ad: f64 = dirs
        .iter()
        .zip(&grads[1..])
        .map(|((_, d), gr)| d.dot(gr))
        .sum();
    let eps = 1e-5;
    let up = outputs(g, &perturb(&f, &dirs, eps))[0].data[0];
    let down = outputs(g, &perturb(&f, &dirs, -eps))[0].data[0];
    assert_close(
        ad,
        (up - down) / (2.0 * eps),
        1e-6,
        &format!("{}: <grad, v>", g.name),
    );
}

/// Feeds keyed by name from `from` into `to`.
fn remap(f: &BTreeMap<ValueId, Tensor>, from: &Graph, to: &Graph) -> BTreeMap<ValueId, Tensor> {
    f.iter()
        .map(|(&v, t)| (to.find(from.name_of(v)).unwrap(), t.clone()))
        .collect()
}

/// H·v from `hvp` against the central difference of the gradient along v,
/// and against grad of ⟨∇L, v⟩.
fn check_hvp(g: &Graph, classes: usize) {
    let f = feeds(g, classes);
    let params = g.trainable_params();
    let h = hvp(g, g.loss.unwrap(), &params).unwrap();
    let dirs: Vec<(ValueId, Tensor)> = params
        .iter()
        .map(|&p| (p, random(&g.static_shape(p), 400 + p.0 as u64, 1.0)))
        .collect();
    let mut hf = remap(&f, g, &h.graph);
    for ((_, d), &dv) in dirs.iter().zip(&h.directions) {
        hf.insert(dv, d.clone());
    }
    let hv = outputs(&h.graph, &hf);

    let gg = grad(g, g.loss.unwrap(), &params).unwrap();
    let eps = 1e-5;
    let up = outputs(&gg.graph, &remap(&perturb(&f, &dirs, eps), g, &gg.graph));
    let down = outputs(&gg.graph, &remap(&perturb(&f, &dirs, -eps), g, &gg.graph));
    for (i, hv_i) in hv.iter().enumerate() {
        for (j, &x) in hv_i.data.iter().enumerate() {
            let fd = (up[i + 1].data[j] - down[i + 1].data[j]) / (2.0 * eps);
            let tol = 1e-5 * (1.0 + fd.abs());
            assert!(
                (x - fd).abs() <= tol,
                "{}: H·v of '{}' [{j}]: {x} vs finite difference {fd}",
                g.name,
                g.name_of(params[i])
            );
        }
    }

    // Second route: grad of <grad L, v> with v as inputs.
    let mut b = Builder::from_graph(gg.graph.clone());
    let mut total = None;
    let mut vs = Vec::new();
    for (k, &(p, gv)) in gg.grads.iter().enumerate() {
        let ty = b.ty(p).clone();
        let v = b
            .input(&format!("v{k}"), ty.dtype, ty.shape, InputRole::Direction)
            .unwrap();
        let prod = b.mul(gv, v).unwrap();
        let s = b.sum_all(prod).unwrap();
        total = Some(match total {
            None => s,
            Some(t) => b.add(t, s).unwrap(),
        });
        vs.push(v);
    }
    let gv_dot = b.graph().clone();
    let primals: Vec<ValueId> = params
        .iter()
        .map(|&p| gv_dot.find(g.name_of(p)).unwrap())
        .collect();
    let gg2 = grad(&gv_dot, total.unwrap(), &primals).unwrap();
    let mut f2 = remap(&f, g, &gg2.graph);
    for (k, (_, d)) in dirs.iter().enumerate() {
        f2.insert(gg2.graph.find(&format!("v{k}")).unwrap(), d.clone());
    }
    let second = outputs(&gg2.graph, &f2);
    for (i, hv_i) in hv.iter().enumerate() {
        for (x, y) in hv_i.data.iter().zip(&second[i + 1].data) {
            assert!(
                (x - y).abs() <= 1e-9 * (1.0 + x.abs()),
                "jvp-of-grad {x} vs grad-of-grad {y}"
            );
        }
    }
}

#[test]
fn mlp_gradient_matches_finite_differences() {
    check_gradient(&small_mlp(), 3);
}

#[test]
fn transformer_gradient_matches_finite_differences() {
    check_gradient(&small_transformer(), 11);
}

#[test]
fn chain_gradient_matches_finite_differences() {
    let g = zoo::chain(&ChainConfig {
        layers: 3,
        width: 4,
        batch: Some(2),
    })
    .unwrap();
    check_gradient(&g, 1);
}

#[test]
fn mlp_hessian_vector_product_matches_finite_differences() {
    check_hvp(&small_mlp(), 3);
}

#[test]
fn transformer_hessian_vector_product_matches_finite_differences() {
    check_hvp(&small_transformer(), 11);
}

#[test]
fn cotangents_of_a_value_used_twice_are_summed() {
    // f(x) = sum(x * x + exp(x)): df/dx = 2x + exp(x).
    let mut b = Builder::new("reuse");
    let x = b
        .input("x", DType::F64, Shape::of(&[3]), InputRole::Data)
        .unwrap();
    let sq = b.mul(x, x).unwrap();
    let e = b.exp(x).unwrap();
    let s = b.add(sq, e).unwrap();
    let loss = b.sum_all(s).unwrap();
    b.loss(loss);
    let g = b.finish().unwrap();
    let gg = grad(&g, loss, &[x]).unwrap();
    let xs = [-1.0, 0.5, 2.0];
    let feeds = BTreeMap::from([(
        gg.graph.find("x").unwrap(),
        Tensor::new(vec![3], xs.to_vec()),
    )]);
    let out = outputs(&gg.graph, &feeds);
    for (i, &xv) in xs.iter().enumerate() {
        assert_close(out[1].data[i], 2.0 * xv + xv.exp(), 1e-12, "d/dx");
    }
}

#[test]
fn grad_visits_only_nodes_between_wrt_and_loss() {
    let mut b = Builder::new("branches");
    let x = b
        .input("x", DType::F64, Shape::of(&[4]), InputRole::Data)
        .unwrap();
    let w = b
        .input("w", DType::F64, Shape::of(&[4]), InputRole::Data)
        .unwrap();
    let side = b.exp(w).unwrap(); // reaches an output, not the loss
    b.output(side);
    let frozen = b.tanh(w).unwrap(); // reaches the loss, not from x
    let y = b.mul(x, frozen).unwrap();
    let loss = b.sum_all(y).unwrap();
    b.loss(loss);
    let g = b.finish().unwrap();
    let gg = grad(&g, loss, &[x]).unwrap();
    let backward: Vec<&str> = gg
        .graph
        .nodes
        .iter()
        .filter(|n| n.name.starts_with("bwd/"))
        .map(|n| n.name.as_str())
        .collect();
    assert!(!backward.is_empty());
    for name in &backward {
        assert!(
            !name.starts_with("bwd/exp") && !name.starts_with("bwd/tanh"),
            "backward visited '{name}', which is not between x and the loss"
        );
    }
    // The side output is not needed for the loss and gradients: pruned.
    assert!(gg.graph.nodes.iter().all(|n| n.name != "exp"));
    assert_eq!(gg.graph.outputs.len(), 2);
}

#[test]
fn transforms_need_a_bound_batch_dimension() {
    let g = zoo::mlp(&MlpConfig::default()).unwrap();
    let err = grad(&g, g.loss.unwrap(), &g.trainable_params()).unwrap_err();
    assert!(err.to_string().contains("unbound batch dimension"), "{err}");
    let err = jvp(&g, &g.trainable_params()).unwrap_err();
    assert!(err.to_string().contains("bind"), "{err}");
    let bound = g.bind_batch(8);
    assert!(grad(&bound, bound.loss.unwrap(), &bound.trainable_params()).is_ok());
}
