//! Helpers shared by the op families' unit tests (`ops/tests/*.rs`): small
//! graphs built from argument lists, direct evaluation of ops and of their
//! decompositions, and gradient checks through [`crate::gradcheck`].
//!
//! Per-op gradient checks at first and second order live in the table of
//! `graph/tests/grad_ops.rs`; [`check_gradients`] is for the cases that table
//! does not cover.

use std::collections::BTreeMap;

use super::OpRules;
use crate::gradcheck::{self, Options};
use crate::interp::{EvalCx, Tensor, run_outputs};
use crate::{
    Attr, Attrs, Builder, DType, Graph, InputRole, Op, Result, Shape, TensorType, ValueId,
};

/// One graph input: dtype, shape and values. Inputs are named `x0, x1, ...`
/// in order; float ones are differentiated by [`check_gradients`].
pub(crate) type Arg = (DType, Vec<usize>, Vec<f64>);

/// A tensor from a shape and its data.
pub(crate) fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec())
}

/// A static tensor type.
pub(crate) fn ty(dtype: DType, dims: &[usize]) -> TensorType {
    TensorType::new(dtype, Shape::of(dims))
}

/// Deterministic test data in [-1, 1].
pub(crate) fn data(n: usize, seed: f64) -> Vec<f64> {
    (0..n).map(|i| (i as f64 * 0.731 + seed).sin()).collect()
}

/// Declares `args` as the inputs `x0, x1, ...` of `b`.
fn inputs(b: &mut Builder, args: &[Arg]) -> Vec<ValueId> {
    args.iter()
        .enumerate()
        .map(|(i, (dtype, shape, _))| {
            b.input(&format!("x{i}"), *dtype, Shape::of(shape), InputRole::Data)
                .unwrap()
        })
        .collect()
}

/// Feeds of the inputs `x0, x1, ...` of `g`, found by name (transforms
/// renumber values, so this serves their graphs too).
pub(crate) fn feeds(g: &Graph, args: &[Arg]) -> BTreeMap<ValueId, Tensor> {
    (args.iter().enumerate())
        .map(|(i, (_, shape, values))| {
            let name = format!("x{i}");
            let id = g.find(&name).unwrap_or_else(|| panic!("no value {name}"));
            (id, t(shape, values))
        })
        .collect()
}

/// A graph of the inputs `args` and one output, the value `build` makes from
/// them; returns the graph, its inputs and its output.
pub(crate) fn graph(
    args: &[Arg],
    build: impl FnOnce(&mut Builder, &[ValueId]) -> Result<ValueId>,
) -> (Graph, Vec<ValueId>, ValueId) {
    let mut b = Builder::new("test");
    let xs = inputs(&mut b, args);
    let y = build(&mut b, &xs).unwrap();
    b.output(y);
    (b.finish().unwrap(), xs, y)
}

/// Runs `g` on `args` and returns its outputs.
pub(crate) fn run(g: &Graph, args: &[Arg]) -> Vec<Tensor> {
    run_outputs(g, &feeds(g, args), &EvalCx::default()).unwrap()
}

/// Evaluates `op` directly on `args`.
pub(crate) fn eval(op: &Op, args: &[Arg]) -> Vec<Tensor> {
    let ts: Vec<Tensor> = args.iter().map(|(_, s, v)| t(s, v)).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    op.eval(&refs, &EvalCx::default()).unwrap()
}

/// Runs `op`'s decomposition on `args` through the interpreter.
pub(crate) fn run_decomposition(op: &Op, args: &[Arg]) -> Vec<Tensor> {
    let mut b = Builder::new("decomposition");
    let xs = inputs(&mut b, args);
    for o in op.decompose(&mut b, &xs).unwrap().unwrap() {
        b.output(o);
    }
    run(&b.finish().unwrap(), args)
}

/// The error of parsing the op `name` of family `O` with the attributes `kv`
/// (panics unless the family knows `name` and rejects the attributes).
pub(crate) fn parse_err<O: OpRules>(name: &str, kv: &[(&str, Attr)]) -> String {
    let attrs: Attrs = kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    match O::parse(name, &attrs) {
        Some(Err(e)) => e,
        Some(Ok(_)) => panic!("{name} {attrs:?} parsed"),
        None => panic!("no op {name} in the family"),
    }
}

/// Elementwise closeness of two tensors of the same shape.
pub(crate) fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.shape, b.shape);
    for (x, y) in a.data.iter().zip(&b.data) {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{:?} vs {:?}",
            a.data,
            b.data
        );
    }
}

/// Gradient checks of `build` (one output from the inputs `args`) with
/// respect to every float input: [`gradcheck::check`] and
/// [`gradcheck::check_second_order`] with the default options; panics with
/// the report of a failed check.
pub(crate) fn check_gradients(
    args: &[Arg],
    build: impl FnOnce(&mut Builder, &[ValueId]) -> Result<ValueId>,
) {
    let (g, xs, _) = graph(args, build);
    let wrt: Vec<ValueId> = xs
        .into_iter()
        .filter(|&x| g.ty(x).dtype.is_float())
        .collect();
    let (feeds, opts) = (feeds(&g, args), Options::default());
    let first = gradcheck::check(&g, &wrt, &feeds, &opts).unwrap();
    assert!(first.passed(), "{first}");
    let second = gradcheck::check_second_order(&g, &wrt, &feeds, &opts).unwrap();
    assert!(second.passed(), "{second}");
}
