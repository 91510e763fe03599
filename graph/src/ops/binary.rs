//! Elementwise ops of several inputs with numpy broadcasting: Add, Sub,
//! Mul, Div, Pow, the comparisons Equal and Greater (bool outputs, no
//! gradient) and Where (select).
//!
//! Operands must share a dtype (there is no implicit promotion). The
//! arithmetic ops need floats; Equal and Greater take any dtype; Where takes
//! a bool condition and two values of any one dtype. The output shape is the
//! numpy broadcast of the inputs' shapes, where the batch symbol equals only
//! itself and broadcasts with 1.

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, expect_arity, pointwise_cost};
use crate::interp::{EvalCx, Tensor, broadcast_map};
use crate::shape::broadcast_shapes;
use crate::{AttrReader, Attrs, Builder, DType, Result, Shape, TensorType, ValueId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Greater,
    /// `Where(cond, a, b)`: `a` where `cond` is true, else `b`.
    Where,
}

impl Binary {
    /// Every op of the family, for exhaustive tests and tools.
    pub const ALL: [Binary; 8] = [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Pow,
        Binary::Equal,
        Binary::Greater,
        Binary::Where,
    ];

    fn arity(self) -> usize {
        if self == Binary::Where { 3 } else { 2 }
    }

    /// The scalar function.
    fn apply(self, args: &[f64]) -> f64 {
        let bool_of = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            Binary::Add => args[0] + args[1],
            Binary::Sub => args[0] - args[1],
            Binary::Mul => args[0] * args[1],
            Binary::Div => args[0] / args[1],
            Binary::Pow => args[0].powf(args[1]),
            Binary::Equal => bool_of(args[0] == args[1]),
            Binary::Greater => bool_of(args[0] > args[1]),
            Binary::Where => {
                if args[0] != 0.0 {
                    args[1]
                } else {
                    args[2]
                }
            }
        }
    }
}

/// Broadcasts the shapes of `inputs` from `first` on, naming the first input
/// that does not fit.
fn broadcast_inputs(inputs: &[&TensorType], first: usize) -> std::result::Result<Shape, String> {
    let mut shape = inputs[first].shape.clone();
    for (i, t) in inputs.iter().enumerate().skip(first + 1) {
        shape = broadcast_shapes(&shape, &t.shape).ok_or_else(|| {
            format!(
                "input {i}: expected shape broadcastable with {shape}, found {}",
                t.shape
            )
        })?;
    }
    Ok(shape)
}

/// Checks that input `i` has the dtype of input `like`.
fn expect_same_dtype(
    inputs: &[&TensorType],
    like: usize,
    i: usize,
) -> std::result::Result<(), String> {
    let (want, found) = (inputs[like].dtype, inputs[i].dtype);
    if want == found {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected dtype {want} (the dtype of input {like}), found {found}"
        ))
    }
}

/// `v` broadcast to the shape of `like` (no node when already equal).
fn broadcast_like(b: &mut Builder, v: ValueId, like: ValueId) -> Result<ValueId> {
    let shape = b.shape(like).clone();
    b.broadcast(v, shape)
}

/// `x` with zeros replaced by ones, so that `log` of it is finite where the
/// `log(x) * x^y` term of Pow's derivative should vanish (as JAX does).
fn zeros_to_ones(b: &mut Builder, x: ValueId) -> Result<ValueId> {
    let zero = b.scalar_like(0.0, x)?;
    let one = b.scalar_like(1.0, x)?;
    let is_zero = b.equal(x, zero)?;
    b.select(is_zero, one, x)
}

/// Emits `v * d(a^b)/da = v * b * a^(b-1)`.
fn pow_d_base(b: &mut Builder, a: ValueId, e: ValueId, v: ValueId) -> Result<ValueId> {
    let one = b.scalar_like(1.0, e)?;
    let e1 = b.sub(e, one)?;
    let p = b.pow(a, e1)?;
    let ve = b.mul(v, e)?;
    b.mul(ve, p)
}

/// Emits `v * d(a^b)/db = v * log(a) * y` with `y = a^b`.
fn pow_d_exponent(b: &mut Builder, a: ValueId, y: ValueId, v: ValueId) -> Result<ValueId> {
    let safe = zeros_to_ones(b, a)?;
    let l = b.log(safe)?;
    let vl = b.mul(v, l)?;
    b.mul(vl, y)
}

impl OpRules for Binary {
    fn name(&self) -> &'static str {
        match self {
            Binary::Add => "Add",
            Binary::Sub => "Sub",
            Binary::Mul => "Mul",
            Binary::Div => "Div",
            Binary::Pow => "Pow",
            Binary::Equal => "Equal",
            Binary::Greater => "Greater",
            Binary::Where => "Where",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let op = Binary::ALL.into_iter().find(|op| op.name() == name)?;
        Some(AttrReader::new(attrs).finish().map(|()| op))
    }

    fn attrs(&self) -> Attrs {
        Attrs::new()
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        expect_arity(inputs, self.arity())?;
        match self {
            Binary::Where => {
                if inputs[0].dtype != DType::Bool {
                    return Err(format!(
                        "input 0: expected dtype bool (the condition), found {}",
                        inputs[0].dtype
                    ));
                }
                expect_same_dtype(inputs, 1, 2)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(inputs[1].dtype, shape)])
            }
            Binary::Equal | Binary::Greater => {
                expect_same_dtype(inputs, 0, 1)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(DType::Bool, shape)])
            }
            _ => {
                if !inputs[0].dtype.is_float() {
                    return Err(format!(
                        "input 0: expected a floating-point dtype, found {}",
                        inputs[0].dtype
                    ));
                }
                expect_same_dtype(inputs, 0, 1)?;
                let shape = broadcast_inputs(inputs, 0)?;
                Ok(vec![TensorType::new(inputs[0].dtype, shape)])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let n = self.arity();
        let want: Vec<bool> = (0..n)
            .map(|i| cx.wants[i] && cx.b.dtype(cx.inputs[i]).is_float())
            .collect();
        if matches!(self, Binary::Equal | Binary::Greater) || !want.contains(&true) {
            return Ok(vec![None; n]);
        }
        let g = cx.cotangent(0)?;
        let y = cx.outputs[0];
        let b = &mut *cx.b;
        let (x0, x1) = (cx.inputs[0], cx.inputs[1]);
        // Full-shape cotangents; reduced to the input shapes below.
        let mut full: Vec<Option<ValueId>> = vec![None; n];
        match self {
            Binary::Add | Binary::Sub => {
                full[0] = want[0].then_some(g);
                if want[1] {
                    full[1] = Some(if *self == Binary::Sub { b.neg(g)? } else { g });
                }
            }
            Binary::Mul => {
                full[0] = want[0].then(|| b.mul(g, x1)).transpose()?;
                full[1] = want[1].then(|| b.mul(g, x0)).transpose()?;
            }
            Binary::Div => {
                full[0] = want[0].then(|| b.div(g, x1)).transpose()?;
                if want[1] {
                    // -g * a / b^2 = -(g * y) / b
                    let gy = b.mul(g, y)?;
                    let q = b.div(gy, x1)?;
                    full[1] = Some(b.neg(q)?);
                }
            }
            Binary::Pow => {
                full[0] = want[0].then(|| pow_d_base(b, x0, x1, g)).transpose()?;
                full[1] = want[1].then(|| pow_d_exponent(b, x0, y, g)).transpose()?;
            }
            Binary::Where => {
                let zero = b.scalar_like(0.0, g)?;
                full[1] = want[1].then(|| b.select(x0, g, zero)).transpose()?;
                full[2] = want[2].then(|| b.select(x0, zero, g)).transpose()?;
            }
            Binary::Equal | Binary::Greater => {}
        }
        let mut out = Vec::with_capacity(n);
        for (i, c) in full.into_iter().enumerate() {
            out.push(match c {
                Some(c) => {
                    let shape = b.shape(cx.inputs[i]).clone();
                    Some(b.sum_to(c, &shape)?)
                }
                None => None,
            });
        }
        Ok(out)
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        if matches!(self, Binary::Equal | Binary::Greater) {
            return Ok(vec![None]);
        }
        let y = cx.outputs[0];
        let t: Vec<Option<ValueId>> = (0..self.arity())
            .map(|i| cx.tangents[i].filter(|_| cx.b.dtype(cx.inputs[i]).is_float()))
            .collect();
        let b = &mut *cx.b;
        let (x0, x1) = (cx.inputs[0], cx.inputs[1]);
        // Each term has the output's shape or broadcasts to it.
        let terms: [Option<ValueId>; 2] = match self {
            Binary::Add => [t[0], t[1]],
            Binary::Sub => [t[0], t[1].map(|t1| b.neg(t1)).transpose()?],
            Binary::Mul => [
                t[0].map(|t0| b.mul(t0, x1)).transpose()?,
                t[1].map(|t1| b.mul(x0, t1)).transpose()?,
            ],
            Binary::Div => [
                t[0].map(|t0| b.div(t0, x1)).transpose()?,
                t[1].map(|t1| -> Result<ValueId> {
                    let ty = b.mul(t1, y)?;
                    let q = b.div(ty, x1)?;
                    b.neg(q)
                })
                .transpose()?,
            ],
            Binary::Pow => [
                t[0].map(|t0| pow_d_base(b, x0, x1, t0)).transpose()?,
                t[1].map(|t1| pow_d_exponent(b, x0, y, t1)).transpose()?,
            ],
            Binary::Where => {
                if t[1].is_none() && t[2].is_none() {
                    return Ok(vec![None]);
                }
                let zero = b.scalar_like(0.0, y)?;
                let s = b.select(x0, t[1].unwrap_or(zero), t[2].unwrap_or(zero))?;
                [Some(s), None]
            }
            Binary::Equal | Binary::Greater => [None, None],
        };
        let sum = match terms {
            [Some(p), Some(q)] => b.add(p, q)?,
            [Some(p), None] | [None, Some(p)] => p,
            [None, None] => return Ok(vec![None]),
        };
        Ok(vec![Some(broadcast_like(b, sum, y)?)])
    }

    /// One FLOP per output element (a comparison or a select counts as
    /// one, and so does Pow); every input is read once at its own size.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        pointwise_cost(inputs, outputs, 1)
    }

    fn recompute(&self) -> Recompute {
        Recompute::Cheap
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "expects {} input(s), found {}",
                self.arity(),
                inputs.len()
            ));
        }
        let op = *self;
        Ok(vec![broadcast_map(inputs, |args| op.apply(args))?])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::autodiff::{grad, hvp, jvp};
    use crate::interp::run_outputs;
    use crate::ops::Op;
    use crate::{Dim, Graph, InputRole};

    /// Feeds by name (the transforms renumber values).
    pub(crate) fn feeds(g: &Graph, named: &[(String, Tensor)]) -> BTreeMap<ValueId, Tensor> {
        named
            .iter()
            .map(|(n, t)| {
                (
                    g.find(n).unwrap_or_else(|| panic!("no value {n}")),
                    t.clone(),
                )
            })
            .collect()
    }

    /// A graph computing `loss = sum(out * w)` from inputs `x0, x1, ...`
    /// and a weight input `w`, with the values fed to it.
    struct Fixture {
        graph: Graph,
        loss: ValueId,
        /// Ids of the float inputs, and their positions among the inputs.
        wrt: Vec<(usize, ValueId)>,
        base: Vec<Tensor>,
        w: Tensor,
    }

    impl Fixture {
        fn new(
            inputs: &[(DType, Tensor)],
            build: impl Fn(&mut Builder, &[ValueId]) -> Result<ValueId>,
        ) -> Self {
            let mut b = Builder::new("check");
            let xs: Vec<ValueId> = inputs
                .iter()
                .enumerate()
                .map(|(i, (d, t))| {
                    b.input(&format!("x{i}"), *d, Shape::of(&t.shape), InputRole::Data)
                        .unwrap()
                })
                .collect();
            let out = build(&mut b, &xs).unwrap();
            let out_shape = b.shape(out).to_static().unwrap();
            let w = b
                .input("w", DType::F64, Shape::of(&out_shape), InputRole::Data)
                .unwrap();
            let weighted = b.mul(out, w).unwrap();
            let loss = if out_shape.is_empty() {
                weighted
            } else {
                b.sum_all(weighted).unwrap()
            };
            b.loss(loss);
            let n_out: usize = out_shape.iter().product();
            Fixture {
                graph: b.finish().unwrap(),
                loss,
                wrt: (0..inputs.len())
                    .filter(|&i| inputs[i].0.is_float())
                    .map(|i| (i, xs[i]))
                    .collect(),
                base: inputs.iter().map(|(_, t)| t.clone()).collect(),
                w: Tensor::new(
                    out_shape,
                    (0..n_out).map(|k| 0.7 - 0.3 * k as f64).collect(),
                ),
            }
        }

        /// Feeds of `g` for input values `vals` and the weights.
        pub(crate) fn feeds(&self, g: &Graph, vals: &[Tensor]) -> BTreeMap<ValueId, Tensor> {
            let mut named: Vec<(String, Tensor)> = vals
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("x{i}"), t.clone()))
                .collect();
            named.push(("w".into(), self.w.clone()));
            feeds(g, &named)
        }

        fn loss_at(&self, vals: &[Tensor]) -> f64 {
            let outs = run_outputs(
                &self.graph,
                &self.feeds(&self.graph, vals),
                &EvalCx::default(),
            );
            outs.unwrap()[0].data[0]
        }

        /// Central difference of the loss along `dir` (one tensor per input).
        fn fd(&self, dir: &[Option<&Tensor>]) -> f64 {
            let h = 1e-6;
            let at = |s: f64| -> Vec<Tensor> {
                let mut v = self.base.clone();
                for (x, d) in v.iter_mut().zip(dir) {
                    if let Some(d) = d {
                        x.data
                            .iter_mut()
                            .zip(&d.data)
                            .for_each(|(x, dx)| *x += s * dx);
                    }
                }
                v
            };
            (self.loss_at(&at(h)) - self.loss_at(&at(-h))) / (2.0 * h)
        }

        fn check_vjp(&self) {
            let ids: Vec<ValueId> = self.wrt.iter().map(|&(_, v)| v).collect();
            let g = grad(&self.graph, self.loss, &ids).unwrap();
            let outs = run_outputs(
                &g.graph,
                &self.feeds(&g.graph, &self.base),
                &EvalCx::default(),
            )
            .unwrap();
            for (j, &(i, _)) in self.wrt.iter().enumerate() {
                assert_eq!(
                    outs[1 + j].shape,
                    self.base[i].shape,
                    "gradient shape of input {i}"
                );
                for k in 0..self.base[i].numel() {
                    let mut e = Tensor::zeros(&self.base[i].shape);
                    e.data[k] = 1.0;
                    let mut dir = vec![None; self.base.len()];
                    dir[i] = Some(&e);
                    let fd = self.fd(&dir);
                    let got = outs[1 + j].data[k];
                    assert!(
                        (got - fd).abs() <= 1e-7 * fd.abs().max(1.0),
                        "grad x{i}[{k}]: {got} vs {fd}"
                    );
                }
            }
        }

        fn check_jvp(&self) {
            let ids: Vec<ValueId> = self.wrt.iter().map(|&(_, v)| v).collect();
            let j = jvp(&self.graph, &ids).unwrap();
            let dirs: Vec<Tensor> = self
                .wrt
                .iter()
                .map(|&(i, _)| self.base[i].map(|v| 0.5 + 0.25 * v.sin()))
                .collect();
            let mut fed = self.feeds(&j.graph, &self.base);
            for (&(_, t), d) in j.tangents_in.iter().zip(&dirs) {
                fed.insert(t, d.clone());
            }
            let outs = run_outputs(&j.graph, &fed, &EvalCx::default()).unwrap();
            let mut dir = vec![None; self.base.len()];
            for (&(i, _), d) in self.wrt.iter().zip(&dirs) {
                dir[i] = Some(d);
            }
            let fd = self.fd(&dir);
            let got = outs[1].data[0];
            assert!(
                (got - fd).abs() <= 1e-7 * fd.abs().max(1.0),
                "jvp: {got} vs {fd}"
            );
        }
    }

    /// Checks the VJP and JVP of `build` (one output from the inputs)
    /// against central differences of `loss = sum(out * w)`, for every float
    /// input, through the interpreter. `inputs` are (dtype, value) pairs.
    pub(crate) fn check_derivatives(
        inputs: &[(DType, Tensor)],
        build: impl Fn(&mut Builder, &[ValueId]) -> Result<ValueId>,
    ) {
        let fixture = Fixture::new(inputs, build);
        fixture.check_vjp();
        fixture.check_jvp();
    }

    fn tt(dtype: DType, dims: &[usize]) -> TensorType {
        TensorType::new(dtype, Shape::of(dims))
    }

    fn t(shape: &[usize], data: &[f64]) -> Tensor {
        Tensor::new(shape.to_vec(), data.to_vec())
    }

    fn eval(op: Binary, inputs: &[&Tensor]) -> Tensor {
        let mut out = op.eval(inputs, &EvalCx::default()).unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn arithmetic_broadcasts_like_numpy() {
        let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let row = t(&[3], &[10.0, 20.0, 30.0]);
        let col = t(&[2, 1], &[2.0, 4.0]);
        let add = eval(Binary::Add, &[&a, &row]);
        assert_eq!(add, t(&[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]));
        let sub = eval(Binary::Sub, &[&row, &a]);
        assert_eq!(sub.data, vec![9.0, 18.0, 27.0, 6.0, 15.0, 24.0]);
        let mul = eval(Binary::Mul, &[&a, &col]);
        assert_eq!(mul.data, vec![2.0, 4.0, 6.0, 16.0, 20.0, 24.0]);
        let div = eval(Binary::Div, &[&a, &col]);
        assert_eq!(div.data, vec![0.5, 1.0, 1.5, 1.0, 1.25, 1.5]);
        let outer = eval(Binary::Mul, &[&col, &row]);
        assert_eq!(outer, t(&[2, 3], &[20.0, 40.0, 60.0, 40.0, 80.0, 120.0]));
        let pow = eval(Binary::Pow, &[&col, &Tensor::scalar(3.0)]);
        assert_eq!(pow, t(&[2, 1], &[8.0, 64.0]));
        let sqrt = eval(Binary::Pow, &[&t(&[2], &[4.0, 0.0]), &Tensor::scalar(0.5)]);
        assert_eq!(sqrt.data, vec![2.0, 0.0]);
    }

    #[test]
    fn comparisons_and_where() {
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 2.0]);
        let b = t(&[2], &[2.0, 2.0]);
        assert_eq!(
            eval(Binary::Equal, &[&a, &b]).data,
            vec![0.0, 1.0, 0.0, 1.0]
        );
        assert_eq!(
            eval(Binary::Greater, &[&a, &b]).data,
            vec![0.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(
            eval(Binary::Greater, &[&b, &a]).data,
            vec![1.0, 0.0, 0.0, 0.0]
        );
        let nan = Tensor::scalar(f64::NAN);
        assert_eq!(eval(Binary::Equal, &[&nan, &nan]).data, vec![0.0]);
        let cond = t(&[2, 1], &[1.0, 0.0]);
        let x = t(&[3], &[1.0, 2.0, 3.0]);
        let out = eval(Binary::Where, &[&cond, &x, &Tensor::scalar(-1.0)]);
        assert_eq!(out, t(&[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]));
        assert!(
            Binary::Where
                .eval(&[&cond, &x], &EvalCx::default())
                .is_err()
        );
        assert!(Binary::Add.eval(&[&a, &x], &EvalCx::default()).is_err());
    }

    #[test]
    fn infer_broadcasts_and_checks_dtypes() {
        let f = |dims: &[usize]| tt(DType::F32, dims);
        assert_eq!(
            Binary::Add.infer(&[&f(&[2, 1]), &f(&[3])]).unwrap(),
            vec![f(&[2, 3])]
        );
        assert_eq!(
            Binary::Mul.infer(&[&f(&[]), &f(&[4])]).unwrap(),
            vec![f(&[4])]
        );
        let cmp = Binary::Greater.infer(&[&f(&[2]), &f(&[2])]).unwrap();
        assert_eq!(cmp, vec![tt(DType::Bool, &[2])]);
        let ints = tt(DType::I32, &[2]);
        assert_eq!(
            Binary::Equal.infer(&[&ints, &ints]).unwrap(),
            vec![tt(DType::Bool, &[2])]
        );
        assert_eq!(
            Binary::Add.infer(&[&ints, &ints]).unwrap_err(),
            "input 0: expected a floating-point dtype, found i32"
        );
        let d = tt(DType::F64, &[2]);
        assert_eq!(
            Binary::Sub.infer(&[&f(&[2]), &d]).unwrap_err(),
            "input 1: expected dtype f32 (the dtype of input 0), found f64"
        );
        assert!(
            Binary::Equal
                .infer(&[&ints, &d])
                .unwrap_err()
                .contains("found f64")
        );
        assert_eq!(
            Binary::Div.infer(&[&f(&[2, 3]), &f(&[2])]).unwrap_err(),
            "input 1: expected shape broadcastable with [2, 3], found [2]"
        );
        assert_eq!(
            Binary::Pow.infer(&[&f(&[2])]).unwrap_err(),
            "expects 2 input(s), found 1"
        );
        let c = tt(DType::Bool, &[2, 1]);
        let w = Binary::Where.infer(&[&c, &f(&[3]), &f(&[])]).unwrap();
        assert_eq!(w, vec![f(&[2, 3])]);
        assert_eq!(
            Binary::Where
                .infer(&[&f(&[2]), &f(&[2]), &f(&[2])])
                .unwrap_err(),
            "input 0: expected dtype bool (the condition), found f32"
        );
        assert!(
            Binary::Where
                .infer(&[&c, &f(&[2]), &d])
                .unwrap_err()
                .contains("input 2")
        );
        assert_eq!(
            Binary::Where.infer(&[&c, &f(&[3]), &f(&[4])]).unwrap_err(),
            "input 2: expected shape broadcastable with [2, 3], found [4]"
        );
        assert_eq!(
            Binary::Where.infer(&[&c, &f(&[2])]).unwrap_err(),
            "expects 3 input(s), found 2"
        );
    }

    #[test]
    fn batch_symbol_broadcasts_with_itself_and_one() {
        let bt = |dims: Vec<Dim>| TensorType::new(DType::F32, Shape(dims));
        let x = bt(vec![Dim::Batch, Dim::Fixed(4)]);
        let out = Binary::Add.infer(&[&x, &tt(DType::F32, &[1, 4])]).unwrap();
        assert_eq!(out, vec![x.clone()]);
        let col = bt(vec![Dim::Batch, Dim::Fixed(1)]);
        assert_eq!(Binary::Mul.infer(&[&col, &x]).unwrap(), vec![x.clone()]);
        assert_eq!(
            Binary::Add
                .infer(&[&x, &tt(DType::F32, &[3, 4])])
                .unwrap_err(),
            "input 1: expected shape broadcastable with [batch, 4], found [3, 4]"
        );
        let c = TensorType::new(DType::Bool, Shape(vec![Dim::Batch, Dim::Fixed(1)]));
        assert_eq!(
            Binary::Where
                .infer(&[&c, &x, &tt(DType::F32, &[])])
                .unwrap(),
            vec![x]
        );
    }

    #[test]
    fn attrs_round_trip() {
        for op in Binary::ALL {
            assert!(op.attrs().is_empty());
            assert_eq!(Binary::parse(op.name(), &op.attrs()), Some(Ok(op)));
            assert_eq!(Op::parse(op.name(), &op.attrs()), Ok(Some(Op::Binary(op))));
            assert_eq!(op.recompute(), Recompute::Cheap);
        }
        assert_eq!(Binary::parse("Exp", &Attrs::new()), None);
        let mut extra = Attrs::new();
        extra.insert("axis".into(), crate::Attr::Int(0));
        assert_eq!(
            Binary::parse("Add", &extra),
            Some(Err("unknown attribute 'axis'".into()))
        );
    }

    #[test]
    fn cost_counts_output_elements_and_operand_bytes() {
        let a = tt(DType::F32, &[4, 8]);
        let row = tt(DType::F32, &[8]);
        assert_eq!(
            Binary::Add.cost(&[&a, &row], &[&a]),
            Cost {
                flops: 32,
                bytes: 288
            }
        );
    }

    fn f64s(shape: &[usize], data: &[f64]) -> (DType, Tensor) {
        (DType::F64, t(shape, data))
    }

    #[test]
    fn scalar_derivatives_match_finite_differences() {
        let (a, b) = (f64s(&[], &[1.3]), f64s(&[], &[-0.7]));
        for op in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
            check_derivatives(&[a.clone(), b.clone()], |bl, v| bl.binary(op, v[0], v[1]));
        }
        let e = f64s(&[], &[2.4]);
        check_derivatives(&[a.clone(), e], |bl, v| bl.pow(v[0], v[1]));
        let cond = (DType::Bool, Tensor::scalar(1.0));
        check_derivatives(&[cond, a, b], |bl, v| bl.select(v[0], v[1], v[2]));
    }

    #[test]
    fn broadcast_derivatives_match_finite_differences() {
        let a = f64s(&[2, 3], &[0.5, 1.2, 2.0, 0.8, 1.5, 0.3]);
        let row = f64s(&[3], &[0.9, -0.4, 1.1]);
        let col = f64s(&[2, 1], &[1.4, 0.6]);
        for op in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
            check_derivatives(&[a.clone(), row.clone()], |bl, v| bl.binary(op, v[0], v[1]));
            check_derivatives(&[col.clone(), row.clone()], |bl, v| {
                bl.binary(op, v[0], v[1])
            });
        }
        check_derivatives(&[a.clone(), col.clone()], |bl, v| bl.pow(v[0], v[1]));
        let cond = (DType::Bool, t(&[2, 1], &[1.0, 0.0]));
        check_derivatives(&[cond.clone(), row.clone(), a.clone()], |bl, v| {
            bl.select(v[0], v[1], v[2])
        });
        check_derivatives(&[cond, col, row], |bl, v| bl.select(v[0], v[1], v[2]));
    }

    #[test]
    fn comparisons_pass_no_gradient() {
        let x = f64s(&[3], &[0.5, -1.0, 2.0]);
        // d/dx [x * (x > 0)] = (x > 0): the comparison contributes nothing.
        check_derivatives(&[x], |bl, v| {
            let zero = bl.scalar_like(0.0, v[0])?;
            let pos = bl.greater(v[0], zero)?;
            let mask = bl.cast(pos, DType::F64)?;
            let eq = bl.equal(v[0], zero)?;
            let eq = bl.cast(eq, DType::F64)?;
            let m = bl.mul(v[0], mask)?;
            bl.add(m, eq)
        });
    }

    #[test]
    fn pow_gradient_is_finite_at_a_zero_base() {
        let mut bl = crate::Builder::new("pow0");
        let a = bl
            .input("a", DType::F64, Shape::scalar(), InputRole::Data)
            .unwrap();
        let e = bl
            .input("e", DType::F64, Shape::scalar(), InputRole::Data)
            .unwrap();
        let y = bl.pow(a, e).unwrap();
        bl.loss(y);
        let g = grad(&bl.finish().unwrap(), y, &[a, e]).unwrap();
        let fa = g.graph.find("a").unwrap();
        let fe = g.graph.find("e").unwrap();
        let feeds = [(fa, Tensor::scalar(0.0)), (fe, Tensor::scalar(2.0))]
            .into_iter()
            .collect();
        let outs = run_outputs(&g.graph, &feeds, &EvalCx::default()).unwrap();
        assert_eq!((outs[1].data[0], outs[2].data[0]), (0.0, 0.0));
    }

    #[test]
    fn second_order_through_mul_and_div() {
        // loss = x0 * x0 / x1: H = [[2/x1, -2x0/x1^2], [-2x0/x1^2, 2x0^2/x1^3]].
        let mut bl = crate::Builder::new("hvp");
        let x0 = bl
            .input("x0", DType::F64, Shape::scalar(), InputRole::Data)
            .unwrap();
        let x1 = bl
            .input("x1", DType::F64, Shape::scalar(), InputRole::Data)
            .unwrap();
        let sq = bl.mul(x0, x0).unwrap();
        let loss = bl.div(sq, x1).unwrap();
        bl.loss(loss);
        let h = hvp(&bl.finish().unwrap(), loss, &[x0, x1]).unwrap();
        let mut feeds: BTreeMap<_, _> = [
            (h.graph.find("x0").unwrap(), Tensor::scalar(3.0)),
            (h.graph.find("x1").unwrap(), Tensor::scalar(2.0)),
        ]
        .into_iter()
        .collect();
        feeds.insert(h.directions[0], Tensor::scalar(1.0));
        feeds.insert(h.directions[1], Tensor::scalar(0.5));
        let outs = run_outputs(&h.graph, &feeds, &EvalCx::default()).unwrap();
        let (h00, h01, h11) = (1.0, -1.5, 2.25);
        assert!((outs[0].data[0] - (h00 + 0.5 * h01)).abs() < 1e-12);
        assert!((outs[1].data[0] - (h01 + 0.5 * h11)).abs() < 1e-12);
    }
}
