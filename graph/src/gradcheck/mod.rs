//! Finite-difference gradient checks, in the style of JAX's `check_jvp` /
//! `check_vjp`, run on the f64 reference interpreter.
//!
//! Given a static graph, the values to differentiate (`wrt`: float graph
//! inputs or parameters) and feeds for every graph input (int inputs such as
//! labels included), [`check`] draws a random direction `v` for the `wrt`
//! values and a random cotangent `u` for every float output (from the
//! counter-based [`crate::rng::Stream`], so a check is deterministic in
//! [`Options::seed`]) and computes
//!
//! - **FD**: the central finite difference `(f(x+εv) − f(x−εv)) / 2ε` of
//!   the outputs, on the interpreter;
//! - **J·v**: the tangents of the outputs from the [`crate::autodiff::jvp`]
//!   graph;
//! - **Jᵀ·u**: the gradients, from [`crate::autodiff::grad`], of the scalar
//!   `L = Σ_outputs ⟨u, y⟩` ([`cotangent_graph`] appends `u` as inputs with
//!   role `Direction` and the products and sums that make `L`).
//!
//! and compares them three ways, each reported in a [`Report`]:
//!
//! 1. FD against J·v elementwise (`|fd − jv| ≤ atol + rtol·max(|fd|, |jv|)`);
//! 2. `⟨u, FD⟩` against `⟨Jᵀu, v⟩` (the VJP against finite differences);
//! 3. `⟨u, J·v⟩` against `⟨Jᵀu, v⟩`, the adjoint identity, which holds to
//!    rounding whenever the VJP and JVP rules are transposes of each other
//!    (checked with the tight [`Options::adjoint_rtol`]).
//!
//! [`check_second_order`] applies the same checks to the gradient graph
//! itself (outputs `Jᵀu₀` for a fixed random `u₀`, differentiated again with
//! respect to the same primals and to `u₀`), which exercises the rules of
//! every op a VJP rule emits.
//! [`check_with`] lets a backend plug in its own J·v and Jᵀ·u (its kernels)
//! against the interpreter's finite differences.
//!
//! Use f64 graphs: in lower precisions the finite differences are noise.
//! Nothing here panics on bad input: a graph that is not static, a `wrt`
//! that is not a float input or parameter, a missing feed or an interpreter
//! error is an `Err(String)`; a failed comparison is a [`Report`] whose
//! [`Report::passed`] is false and whose `Display` gives the numbers.
//!
//! ```
//! use std::collections::BTreeMap;
//! use adjoint_graph::gradcheck::{self, Options};
//! use adjoint_graph::interp::Tensor;
//! use adjoint_graph::{Builder, DType, InputRole, Shape};
//!
//! let mut b = Builder::new("f");
//! let x = b.input("x", DType::F64, Shape::of(&[3]), InputRole::Data).unwrap();
//! let y = b.tanh(x).unwrap();
//! b.output(y);
//! let graph = b.finish().unwrap();
//! let feeds = BTreeMap::from([(x, Tensor::new(vec![3], vec![-1.0, 0.5, 2.0]))]);
//! let report = gradcheck::check(&graph, &[x], &feeds, &Options::default()).unwrap();
//! assert!(report.passed(), "{report}");
//! let second = gradcheck::check_second_order(&graph, &[x], &feeds, &Options::default()).unwrap();
//! assert!(second.passed(), "{second}");
//! ```

mod report;

use std::collections::BTreeMap;

use crate::autodiff::{grad, jvp};
use crate::interp::{EvalCx, Tensor, run};
use crate::rng::{Stream, key_of};
use crate::{Builder, Graph, InputRole, ValueId, validate};
use report::{Dot, elementwise};
pub use report::{DotCheck, ElementCheck, Report, Worst};

/// Step, tolerances and seeds of a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Finite-difference step along the direction `v` (whose entries are
    /// standard normal).
    pub eps: f64,
    /// Relative tolerance of the FD comparisons.
    pub rtol: f64,
    /// Absolute tolerance of the FD comparisons (per element).
    pub atol: f64,
    /// Relative tolerance of the adjoint identity, against the sum of the
    /// magnitudes of the products (rounding only: keep it tight).
    pub adjoint_rtol: f64,
    /// Seed of the random directions and cotangents.
    pub seed: u64,
    /// Seed, step and rank the interpreter runs with (random ops such as
    /// Dropout replay the same mask for every evaluation of one check).
    pub eval: EvalCx,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            eps: 1e-6,
            rtol: 1e-5,
            atol: 1e-6,
            adjoint_rtol: 1e-9,
            seed: 0,
            eval: EvalCx::default(),
        }
    }
}

/// The float outputs of a graph, in order, without repeats: the outputs a
/// check compares and draws cotangents for.
pub fn float_outputs(graph: &Graph) -> Vec<ValueId> {
    let mut outs: Vec<ValueId> = Vec::new();
    for &o in &graph.outputs {
        let float = o.index() < graph.values.len() && graph.ty(o).dtype.is_float();
        if float && !outs.contains(&o) {
            outs.push(o);
        }
    }
    outs
}

/// The validated pieces of a check: the point, the feeds and the random
/// directions.
struct Setup {
    /// Every input, parameter and state value of the graph, by name.
    leaves: BTreeMap<String, Tensor>,
    /// The point `x` (one tensor per `wrt`).
    x: Vec<Tensor>,
    outputs: Vec<ValueId>,
    /// Directions, one per `wrt`.
    v: Vec<Tensor>,
    /// Cotangents, one per float output.
    u: Vec<Tensor>,
}

/// A tensor of standard normal draws, keyed on `(seed, step, name)`.
fn draw(seed: u64, step: u64, name: &str, shape: Vec<usize>) -> Tensor {
    let stream = Stream {
        seed,
        step,
        rank: 0,
        site: key_of(name),
    };
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n as u64).map(|i| stream.normal(i)).collect())
}

fn leaf_values(graph: &Graph) -> Vec<ValueId> {
    let inputs = graph.inputs.iter().map(|i| i.value);
    let params = graph.params.iter().map(|p| p.value);
    inputs
        .chain(params)
        .chain(graph.state.iter().map(|s| s.value))
        .collect()
}

fn check_wrt(graph: &Graph, wrt: &[ValueId], leaves: &[ValueId]) -> Result<(), String> {
    if wrt.is_empty() {
        return Err("nothing to differentiate: wrt is empty".into());
    }
    for (i, &w) in wrt.iter().enumerate() {
        if w.index() >= graph.values.len() {
            return Err(format!("wrt {i}: value id {} is not in the graph", w.0));
        }
        let name = graph.name_of(w);
        if !graph.ty(w).dtype.is_float() {
            return Err(format!(
                "wrt '{name}': cannot differentiate a {} value",
                graph.ty(w).dtype
            ));
        }
        if !leaves.contains(&w) {
            return Err(format!(
                "wrt '{name}': not a graph input, parameter or state value (only those can be perturbed)"
            ));
        }
        if wrt[..i].contains(&w) {
            return Err(format!("wrt '{name}' is listed twice"));
        }
    }
    Ok(())
}

fn check_feeds(
    graph: &Graph,
    feeds: &BTreeMap<ValueId, Tensor>,
    leaves: &[ValueId],
) -> Result<(), String> {
    for (&v, t) in feeds {
        if v.index() >= graph.values.len() {
            return Err(format!("feed for value id {}: not in the graph", v.0));
        }
        if !leaves.contains(&v) {
            return Err(format!(
                "feed '{}': not a graph input, parameter or state value",
                graph.name_of(v)
            ));
        }
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(format!(
                "feed '{}': shape {:?} holds {} elements, but {} are given",
                graph.name_of(v),
                t.shape,
                t.shape.iter().product::<usize>(),
                t.data.len()
            ));
        }
    }
    for input in &graph.inputs {
        if !feeds.contains_key(&input.value) {
            return Err(format!("input '{}' is not fed", graph.name_of(input.value)));
        }
    }
    Ok(())
}

/// Validates the request, runs the graph once and draws the directions.
/// `step` separates the draws of nested checks.
fn setup(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: &Options,
    step: u64,
) -> Result<Setup, String> {
    if !graph.is_static() {
        return Err(format!(
            "graph '{}' has an unbound batch dimension; bind it with Graph::bind_batch first",
            graph.name
        ));
    }
    validate::validate(graph).map_err(|e| format!("invalid graph: {e}"))?;
    let leaves = leaf_values(graph);
    check_wrt(graph, wrt, &leaves)?;
    check_feeds(graph, feeds, &leaves)?;
    let outputs = float_outputs(graph);
    if outputs.is_empty() {
        return Err(format!("graph '{}' has no float output", graph.name));
    }
    let want: Vec<ValueId> = leaves.iter().chain(wrt).copied().collect();
    let values = run_values(graph, feeds, &opts.eval, &want)?;
    let (at_leaves, x) = values.split_at(leaves.len());
    let names = leaves.iter().map(|&l| graph.name_of(l).to_owned());
    let named = names.zip(at_leaves.iter().cloned()).collect();
    let x = x.to_vec();
    let draws = |kind: &str, vs: &[ValueId]| -> Vec<Tensor> {
        let name = |v: ValueId| format!("gradcheck/{kind}/{}", graph.name_of(v));
        let one = |&v: &ValueId| draw(opts.seed, step, &name(v), graph.static_shape(v));
        vs.iter().map(one).collect()
    };
    let (v, u) = (draws("direction", wrt), draws("cotangent", &outputs));
    Ok(Setup {
        leaves: named,
        x,
        outputs,
        v,
        u,
    })
}

/// A valid graph, and ids that are in it (what the transforms assume).
fn precheck<'a>(graph: &Graph, ids: impl IntoIterator<Item = &'a ValueId>) -> Result<(), String> {
    validate::validate(graph).map_err(|e| format!("invalid graph: {e}"))?;
    match ids.into_iter().find(|v| v.index() >= graph.values.len()) {
        Some(v) => Err(format!("value id {} is not in graph '{}'", v.0, graph.name)),
        None => Ok(()),
    }
}

/// Feeds for `graph` from tensors by name: every leaf of `graph` whose name
/// is known.
fn feeds_by_name(graph: &Graph, named: &BTreeMap<String, Tensor>) -> BTreeMap<ValueId, Tensor> {
    leaf_values(graph)
        .into_iter()
        .filter_map(|l| named.get(graph.name_of(l)).map(|t| (l, t.clone())))
        .collect()
}

/// Feeds keyed by their values' names in `graph`.
fn names_of(graph: &Graph, feeds: &BTreeMap<ValueId, Tensor>) -> BTreeMap<String, Tensor> {
    let named = feeds
        .iter()
        .map(|(&k, t)| (graph.name_of(k).to_owned(), t.clone()));
    named.collect()
}

/// Runs `graph` and returns the values `want`.
fn run_values(
    graph: &Graph,
    feeds: &BTreeMap<ValueId, Tensor>,
    cx: &EvalCx,
    want: &[ValueId],
) -> Result<Vec<Tensor>, String> {
    let env = run(graph, feeds, cx).map_err(|e| e.to_string())?;
    want.iter()
        .map(|&v| {
            env.get(v.index())
                .and_then(Clone::clone)
                .ok_or_else(|| format!("value '{}' was not computed", graph.name_of(v)))
        })
        .collect()
}

/// The central finite difference of the float outputs along `v`.
fn finite_difference(
    graph: &Graph,
    wrt: &[ValueId],
    s: &Setup,
    opts: &Options,
) -> Result<Vec<Tensor>, String> {
    let base = feeds_by_name(graph, &s.leaves);
    let mut sides = Vec::with_capacity(2);
    for sign in [1.0, -1.0] {
        let mut feeds = base.clone();
        for ((&w, x), v) in wrt.iter().zip(&s.x).zip(&s.v) {
            let data = x
                .data
                .iter()
                .zip(&v.data)
                .map(|(a, d)| a + sign * opts.eps * d);
            feeds.insert(w, Tensor::new(x.shape.clone(), data.collect()));
        }
        sides.push(run_values(graph, &feeds, &opts.eval, &s.outputs)?);
    }
    let scale = 0.5 / opts.eps;
    Ok(sides[0]
        .iter()
        .zip(&sides[1])
        .map(|(p, m)| {
            let data = p.data.iter().zip(&m.data).map(|(a, b)| (a - b) * scale);
            Tensor::new(p.shape.clone(), data.collect())
        })
        .collect())
}

fn find(graph: &Graph, name: &str, what: &str) -> Result<ValueId, String> {
    graph
        .find(name)
        .ok_or_else(|| format!("the {what} graph lost value '{name}'"))
}

/// J·v on the interpreter: the tangent of each float output of `graph`
/// (see [`float_outputs`]) when the `wrt` values move along `v` (one tensor
/// per `wrt`), from the [`crate::autodiff::jvp`] graph. `feeds` must give
/// every graph input.
pub fn autodiff_jvp(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    cx: &EvalCx,
    v: &[Tensor],
) -> Result<Vec<Tensor>, String> {
    precheck(graph, wrt.iter().chain(feeds.keys()))?;
    if v.len() != wrt.len() {
        return Err(format!(
            "{} directions for {} wrt values",
            v.len(),
            wrt.len()
        ));
    }
    let j = jvp(graph, wrt).map_err(|e| format!("jvp transform: {e}"))?;
    let mut jfeeds = feeds_by_name(&j.graph, &names_of(graph, feeds));
    for (&(_, t), d) in j.tangents_in.iter().zip(v) {
        jfeeds.insert(t, d.clone());
    }
    let mut want = Vec::new();
    for o in float_outputs(graph) {
        let oj = find(&j.graph, graph.name_of(o), "jvp")?;
        let t = j.tangent_of(oj).ok_or_else(|| {
            format!(
                "the jvp graph has no tangent for output '{}'",
                graph.name_of(o)
            )
        })?;
        want.push(t);
    }
    run_values(&j.graph, &jfeeds, cx, &want)
}

/// The gradient graph of `L = Σ_outputs ⟨u, y⟩` over the float outputs of a
/// graph, made by [`cotangent_graph`]; ids are in its own `graph`.
#[derive(Debug, Clone)]
pub struct CotangentGraph {
    /// Outputs: `L` followed by one gradient per `wrt`.
    pub graph: Graph,
    /// The inputs `u` (role `Direction`), one per float output, in order.
    pub cotangents: Vec<ValueId>,
    /// The `wrt` values.
    pub wrt: Vec<ValueId>,
    /// `Jᵀ·u`, one per `wrt`.
    pub grads: Vec<ValueId>,
    pub loss: ValueId,
}

/// Appends to `graph` one input `gradcheck/cotangent/{output}` per float
/// output, forms `L = Σ ⟨u, y⟩` and differentiates it with respect to `wrt`
/// with [`crate::autodiff::grad`]: the graph's gradients are `Jᵀ·u`.
pub fn cotangent_graph(graph: &Graph, wrt: &[ValueId]) -> Result<CotangentGraph, String> {
    precheck(graph, wrt)?;
    let outputs = float_outputs(graph);
    if outputs.is_empty() {
        return Err(format!("graph '{}' has no float output", graph.name));
    }
    let err = |e: crate::Error| format!("building L = Σ⟨u, y⟩: {e}");
    let mut b = Builder::from_graph(graph.clone());
    let mut names = Vec::with_capacity(outputs.len());
    let mut total: Option<ValueId> = None;
    for &o in &outputs {
        let ty = graph.ty(o).clone();
        let name = format!("gradcheck/cotangent/{}", graph.name_of(o));
        let u = b
            .input(&name, ty.dtype, ty.shape.clone(), InputRole::Direction)
            .map_err(err)?;
        names.push(b.graph().name_of(u).to_owned());
        let m = b.mul(o, u).map_err(err)?;
        let s = if ty.shape.rank() == 0 {
            m
        } else {
            b.sum_all(m).map_err(err)?
        };
        total = Some(match total {
            Some(t) => b.add(t, s).map_err(err)?,
            None => s,
        });
    }
    let total = total.ok_or("no float output")?;
    let mut lg = b.into_graph();
    lg.outputs = vec![total];
    lg.loss = Some(total);
    let g = grad(&lg, total, wrt).map_err(|e| format!("grad transform: {e}"))?;
    let cotangents = names
        .iter()
        .map(|n| find(&g.graph, n, "gradient"))
        .collect::<Result<Vec<_>, _>>()?;
    let wrt_ids = wrt
        .iter()
        .map(|&w| find(&g.graph, graph.name_of(w), "gradient"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CotangentGraph {
        cotangents,
        wrt: wrt_ids,
        grads: g.grads.iter().map(|&(_, gv)| gv).collect(),
        loss: g.loss,
        graph: g.graph,
    })
}

/// Jᵀ·u on the interpreter: the gradient of `Σ ⟨u, y⟩` with respect to each
/// `wrt`, for cotangents `u` (one per float output, see [`float_outputs`]).
pub fn autodiff_vjp(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    cx: &EvalCx,
    u: &[Tensor],
) -> Result<Vec<Tensor>, String> {
    precheck(graph, feeds.keys())?;
    let c = cotangent_graph(graph, wrt)?;
    if u.len() != c.cotangents.len() {
        return Err(format!(
            "{} cotangents for {} float outputs",
            u.len(),
            c.cotangents.len()
        ));
    }
    let mut cfeeds = feeds_by_name(&c.graph, &names_of(graph, feeds));
    for (&ci, t) in c.cotangents.iter().zip(u) {
        cfeeds.insert(ci, t.clone());
    }
    run_values(&c.graph, &cfeeds, cx, &c.grads)
}

/// First-order check of the autodiff rules of `graph` on the interpreter:
/// FD vs J·v, `⟨u, FD⟩` vs `⟨Jᵀu, v⟩` and the adjoint identity.
///
/// `wrt` are float graph inputs or parameters; `feeds` gives every graph
/// input (parameters not fed are materialized from their initializers with
/// `opts.eval.seed`). `Err` for a request that cannot be checked; a failed
/// check is a report with `passed() == false`.
pub fn check(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: &Options,
) -> Result<Report, String> {
    check_at_step(graph, wrt, feeds, opts, 0)
}

fn check_at_step(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: &Options,
    step: u64,
) -> Result<Report, String> {
    let s = setup(graph, wrt, feeds, opts, step)?;
    let point = point_feeds(graph, wrt, &s);
    let jv = autodiff_jvp(graph, wrt, &point, &opts.eval, &s.v)?;
    let vjt = autodiff_vjp(graph, wrt, &point, &opts.eval, &s.u)?;
    compare(graph, wrt, &s, opts, jv, vjt)
}

/// Every leaf at the check's point.
fn point_feeds(graph: &Graph, wrt: &[ValueId], s: &Setup) -> BTreeMap<ValueId, Tensor> {
    let mut feeds = feeds_by_name(graph, &s.leaves);
    for (&w, x) in wrt.iter().zip(&s.x) {
        feeds.insert(w, x.clone());
    }
    feeds
}

/// A linear map supplied to [`check_with`]: directions to tangents (J·v) or
/// cotangents to gradients (Jᵀ·u).
pub type Linear<'a> = dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>, String> + 'a;

/// As [`check`], with J·v and Jᵀ·u computed by the caller (e.g. a backend's
/// kernels): `jvp(v)` gets one direction per `wrt` and returns one tangent
/// per float output; `vjp(u)` gets one cotangent per float output and returns
/// one gradient per `wrt`. Finite differences still run on the interpreter.
pub fn check_with(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: &Options,
    jvp: &mut Linear<'_>,
    vjp: &mut Linear<'_>,
) -> Result<Report, String> {
    let s = setup(graph, wrt, feeds, opts, 0)?;
    let jv = jvp(&s.v)?;
    let vjt = vjp(&s.u)?;
    compare(graph, wrt, &s, opts, jv, vjt)
}

/// Second-order check: the first-order checks applied to the gradient graph
/// of `graph` — the graph from [`cotangent_graph`] whose outputs are the
/// gradients `Jᵀu₀` for a fixed random `u₀` — differentiated again with
/// respect to the same primals and, as PyTorch's `gradgradcheck` does, to
/// `u₀` (so the rules of the ops that linear ops' VJPs emit are checked
/// too, though their gradients do not depend on the primals). This checks
/// the rules of every op the VJP rules emit (Hessian-vector products against
/// finite differences of gradients).
pub fn check_second_order(
    graph: &Graph,
    wrt: &[ValueId],
    feeds: &BTreeMap<ValueId, Tensor>,
    opts: &Options,
) -> Result<Report, String> {
    let s = setup(graph, wrt, feeds, opts, 1)?;
    let c = cotangent_graph(graph, wrt)?;
    let mut g = c.graph.clone();
    g.outputs = c.grads.clone();
    g.loss = None;
    let mut feeds2 = feeds_by_name(&g, &s.leaves);
    for (&ci, u0) in c.cotangents.iter().zip(&s.u) {
        feeds2.insert(ci, u0.clone());
    }
    let wrt2: Vec<ValueId> = c.wrt.iter().chain(&c.cotangents).copied().collect();
    let mut report = check_at_step(&g, &wrt2, &feeds2, opts, 2)?;
    report.order = 2;
    report.graph = graph.name.clone();
    Ok(report)
}

fn check_shapes(
    what: &str,
    got: &[Tensor],
    want: &[Tensor],
    names: &[String],
) -> Result<(), String> {
    let (n, m) = (got.len(), want.len());
    if n != m {
        return Err(format!("{what}: {n} tensors, expected {m}"));
    }
    for ((g, w), name) in got.iter().zip(want).zip(names) {
        if g.shape != w.shape || g.data.len() != w.data.len() {
            let (shape, len, expected) = (&g.shape, g.data.len(), &w.shape);
            return Err(format!(
                "{what} for '{name}': shape {shape:?} ({len} elements), expected {expected:?}"
            ));
        }
    }
    Ok(())
}

/// Runs the finite differences and the three comparisons.
fn compare(
    graph: &Graph,
    wrt: &[ValueId],
    s: &Setup,
    opts: &Options,
    jv: Vec<Tensor>,
    vjt: Vec<Tensor>,
) -> Result<Report, String> {
    let out_names: Vec<String> = s
        .outputs
        .iter()
        .map(|&o| graph.name_of(o).to_owned())
        .collect();
    let wrt_names: Vec<String> = wrt.iter().map(|&w| graph.name_of(w).to_owned()).collect();
    check_shapes("J·v", &jv, &s.u, &out_names)?;
    check_shapes("Jᵀ·u", &vjt, &s.v, &wrt_names)?;
    let fd = finite_difference(graph, wrt, s, opts)?;
    let fd_vs_jvp = elementwise(&out_names, &fd, &jv, opts);
    let gv = Dot::of(&vjt, &s.v);
    let ufd = Dot::of(&s.u, &fd);
    let ujv = Dot::of(&s.u, &jv);
    let u_l1: f64 = s.u.iter().flat_map(|t| &t.data).map(|x| x.abs()).sum();
    let fd_vs_vjp = DotCheck {
        lhs: ufd.value,
        rhs: gv.value,
        error: (ufd.value - gv.value).abs(),
        allowed: opts.rtol * ufd.magnitude.max(gv.magnitude) + opts.atol * u_l1,
    };
    let adjoint = DotCheck {
        lhs: ujv.value,
        rhs: gv.value,
        error: (ujv.value - gv.value).abs(),
        allowed: opts.adjoint_rtol * (ujv.magnitude + gv.magnitude) + f64::MIN_POSITIVE,
    };
    Ok(Report {
        graph: graph.name.clone(),
        order: 1,
        wrt: wrt_names,
        outputs: out_names,
        fd_vs_jvp,
        fd_vs_vjp,
        adjoint,
    })
}
