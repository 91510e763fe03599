//! Builds graphs node by node, inferring every output's type as it goes.
//!
//! The same builder serves model code (the zoo, importers) and transforms
//! (autodiff rules emit their nodes through it). Names are made unique
//! deterministically: `{scope}{base}` and then `{scope}{base}_1`, `_2`, …

use std::collections::{BTreeMap, BTreeSet};

use crate::ops::{
    Binary, CollectiveOp, Conv, Conv2dAttrs, GeluApprox, Index, Loss, MatMul, Moe, Movement, Nn,
    Op, Pool2dAttrs, Reduce, ReduceKind, Unary,
};
use crate::{
    DType, Dim, Error, Graph, Init, Input, InputRole, Node, NodeRef, Param, Result, Shape,
    StateVar, TensorType, Value, ValueId, validate,
};

/// Appends values and nodes to a graph.
#[derive(Debug, Clone)]
pub struct Builder {
    graph: Graph,
    value_names: BTreeMap<String, ValueId>,
    node_names: BTreeSet<String>,
    next_suffix: BTreeMap<String, usize>,
    scope: Vec<String>,
    provenance: String,
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder::from_graph(Graph {
            name: name.to_owned(),
            ..Graph::default()
        })
    }

    /// Continues building on an existing graph (used by transforms).
    pub fn from_graph(graph: Graph) -> Builder {
        let value_names = graph
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), ValueId(i as u32)))
            .collect();
        let node_names = graph.nodes.iter().map(|n| n.name.clone()).collect();
        Builder {
            graph,
            value_names,
            node_names,
            next_suffix: BTreeMap::new(),
            scope: Vec::new(),
            provenance: String::new(),
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.graph.ty(v).shape
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.graph.ty(v).dtype
    }

    /// Opens a name scope: names made until the matching [`Builder::pop_scope`]
    /// start with `name/`.
    pub fn push_scope(&mut self, name: &str) {
        self.scope.push(name.to_owned());
    }

    pub fn pop_scope(&mut self) {
        self.scope.pop();
    }

    /// The provenance recorded on nodes made from now on.
    pub fn set_provenance(&mut self, provenance: &str) {
        self.provenance = provenance.to_owned();
    }

    pub fn provenance(&self) -> &str {
        &self.provenance
    }

    fn scoped(&self, base: &str) -> String {
        let mut name = String::new();
        for s in &self.scope {
            name.push_str(s);
            name.push('/');
        }
        name.push_str(base);
        name
    }

    fn unique(&mut self, base: String, taken: impl Fn(&Self, &str) -> bool) -> String {
        if !taken(self, &base) {
            return base;
        }
        loop {
            let n = self.next_suffix.entry(base.clone()).or_insert(0);
            *n += 1;
            let candidate = format!("{base}_{n}");
            if !taken(self, &candidate) {
                return candidate;
            }
        }
    }

    fn add_value(&mut self, name: String, ty: TensorType) -> ValueId {
        let name = self.unique(name, |b, n| b.value_names.contains_key(n));
        let id = ValueId(self.graph.values.len() as u32);
        self.value_names.insert(name.clone(), id);
        self.graph.values.push(Value { name, ty });
        id
    }

    /// A value with exactly this name, or an error if the name is taken.
    fn add_named_value(&mut self, name: &str, ty: TensorType) -> Result<ValueId> {
        let name = self.scoped(name);
        if let Some(&first) = self.value_names.get(&name) {
            return Err(Error::DuplicateValue {
                value: name.clone(),
                first: format!("value {}", first.0),
                second: "a new declaration".into(),
            });
        }
        Ok(self.add_value(name, ty))
    }

    pub fn input(
        &mut self,
        name: &str,
        dtype: DType,
        shape: Shape,
        role: InputRole,
    ) -> Result<ValueId> {
        let value = self.add_named_value(name, TensorType::new(dtype, shape))?;
        self.graph.inputs.push(Input { value, role });
        Ok(value)
    }

    /// A trainable parameter.
    pub fn param(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        init: Init,
    ) -> Result<ValueId> {
        let value = self.add_named_value(name, TensorType::new(dtype, Shape::of(shape)))?;
        self.graph.params.push(Param {
            value,
            init,
            trainable: true,
        });
        Ok(value)
    }

    /// A parameter that is read but never trained.
    pub fn frozen_param(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        init: Init,
    ) -> Result<ValueId> {
        let value = self.param(name, dtype, shape, init)?;
        if let Some(p) = self.graph.params.last_mut() {
            p.trainable = false;
        }
        Ok(value)
    }

    /// Non-trainable state; set its update with [`Builder::set_state_update`].
    pub fn state(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        init: Init,
    ) -> Result<ValueId> {
        let value = self.add_named_value(name, TensorType::new(dtype, Shape::of(shape)))?;
        self.graph.state.push(StateVar {
            value,
            init,
            update: None,
        });
        Ok(value)
    }

    pub fn set_state_update(&mut self, state: ValueId, update: ValueId) {
        if let Some(s) = self.graph.state.iter_mut().find(|s| s.value == state) {
            s.update = Some(update);
        }
    }

    pub fn output(&mut self, v: ValueId) {
        if !self.graph.outputs.contains(&v) {
            self.graph.outputs.push(v);
        }
    }

    /// Marks `v` as the loss (and an output).
    pub fn loss(&mut self, v: ValueId) {
        self.output(v);
        self.graph.loss = Some(v);
    }

    /// Renames a value the builder made (e.g. to give an output a stable name).
    pub fn rename(&mut self, v: ValueId, name: &str) -> Result<()> {
        let name = self.scoped(name);
        if self.value_names.contains_key(&name) {
            return Err(Error::DuplicateValue {
                value: name,
                first: "an existing value".into(),
                second: "a rename".into(),
            });
        }
        let old = std::mem::replace(&mut self.graph.values[v.index()].name, name.clone());
        self.value_names.remove(&old);
        self.value_names.insert(name, v);
        Ok(())
    }

    /// `name` (scoped) if no value has it yet, else `name_1`, `name_2`, …
    pub fn fresh_name(&mut self, name: &str) -> String {
        self.unique(self.scoped(name), |b, n| b.value_names.contains_key(n))
    }

    /// Renames a value to `name`, or to `name_1`, `name_2`, … when taken;
    /// returns the name given.
    pub fn rename_unique(&mut self, v: ValueId, name: &str) -> String {
        let name = self.fresh_name(name);
        let old = std::mem::replace(&mut self.graph.values[v.index()].name, name.clone());
        self.value_names.remove(&old);
        self.value_names.insert(name.clone(), v);
        name
    }

    /// Appends a node and returns its outputs, typed by the op's shape rule.
    pub fn node(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let base = self.scoped(&op.name().to_lowercase());
        self.named_node(&base, op, inputs)
    }

    /// As [`Builder::node`] with the node named `name` (made unique).
    pub fn named_node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let name = self.unique(name.to_owned(), |b, n| {
            b.node_names.contains(n) || b.value_names.contains_key(n)
        });
        let types: Vec<&TensorType> = inputs.iter().map(|&v| self.graph.ty(v)).collect();
        let out_types = op.infer(&types).map_err(|message| Error::InvalidNode {
            node: NodeRef {
                name: name.clone(),
                op: op.name().to_owned(),
                provenance: self.provenance.clone(),
            },
            message: describe_inputs(&self.graph, inputs, message),
        })?;
        let outputs: Vec<ValueId> = if out_types.len() == 1 {
            vec![self.add_value(name.clone(), out_types[0].clone())]
        } else {
            out_types
                .into_iter()
                .enumerate()
                .map(|(i, t)| self.add_value(format!("{name}:{i}"), t))
                .collect()
        };
        self.node_names.insert(name.clone());
        self.graph.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            provenance: self.provenance.clone(),
        });
        Ok(outputs)
    }

    /// A node with exactly one output.
    pub fn node1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let outs = self.node(op, inputs)?;
        debug_assert_eq!(outs.len(), 1);
        Ok(outs[0])
    }

    /// Validates and returns the graph.
    pub fn finish(self) -> Result<Graph> {
        validate::validate(&self.graph)?;
        Ok(self.graph)
    }

    /// Returns the graph without validation (transforms validate at the end).
    pub fn into_graph(self) -> Graph {
        self.graph
    }

    // ----- convenience constructors, one per op -----

    pub fn unary(&mut self, op: Unary, x: ValueId) -> Result<ValueId> {
        self.node1(Op::Unary(op), &[x])
    }
    pub fn binary(&mut self, op: Binary, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Binary(op), &[a, b])
    }
    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Div, a, b)
    }
    pub fn pow(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Pow, a, b)
    }
    pub fn equal(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Equal, a, b)
    }
    pub fn greater(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(Binary::Greater, a, b)
    }
    /// `cond ? a : b`, elementwise with broadcasting.
    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(Op::Binary(Binary::Where), &[cond, a, b])
    }
    pub fn neg(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Neg, x)
    }
    pub fn exp(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Exp, x)
    }
    pub fn log(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Log, x)
    }
    pub fn sqrt(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Sqrt, x)
    }
    pub fn rsqrt(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Rsqrt, x)
    }
    pub fn tanh(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Tanh, x)
    }
    pub fn sigmoid(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Sigmoid, x)
    }
    pub fn relu(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Relu, x)
    }
    pub fn gelu(&mut self, x: ValueId, approx: GeluApprox) -> Result<ValueId> {
        self.unary(Unary::Gelu(approx), x)
    }
    pub fn erf(&mut self, x: ValueId) -> Result<ValueId> {
        self.unary(Unary::Erf, x)
    }
    pub fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId> {
        self.unary(Unary::Cast(to), x)
    }

    /// A scalar constant.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> Result<ValueId> {
        self.node1(Op::Movement(Movement::Constant { value, dtype }), &[])
    }
    /// A scalar constant with the dtype of `like`.
    pub fn scalar_like(&mut self, value: f64, like: ValueId) -> Result<ValueId> {
        let dtype = self.dtype(like);
        self.scalar(value, dtype)
    }
    /// `value` broadcast to the type of `like`.
    pub fn full_like(&mut self, value: f64, like: ValueId) -> Result<ValueId> {
        let s = self.scalar_like(value, like)?;
        let shape = self.shape(like).clone();
        self.broadcast(s, shape)
    }
    pub fn zeros_like(&mut self, like: ValueId) -> Result<ValueId> {
        self.full_like(0.0, like)
    }
    /// `x * c` for a scalar constant `c`.
    pub fn scale(&mut self, x: ValueId, c: f64) -> Result<ValueId> {
        let s = self.scalar_like(c, x)?;
        self.mul(x, s)
    }

    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.matmul_t(a, b, false, false)
    }
    /// `op(a) · op(b)` where `op` transposes the last two axes when asked.
    pub fn matmul_t(
        &mut self,
        a: ValueId,
        b: ValueId,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<ValueId> {
        self.node1(Op::MatMul(MatMul { trans_a, trans_b }), &[a, b])
    }

    pub fn reduce(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        axes: &[i64],
        keep_dims: bool,
    ) -> Result<ValueId> {
        let reduce = Reduce {
            kind,
            axes: axes.to_vec(),
            keep_dims,
        };
        self.node1(Op::Reduce(reduce), &[x])
    }
    pub fn sum(&mut self, x: ValueId, axes: &[i64], keep_dims: bool) -> Result<ValueId> {
        self.reduce(ReduceKind::Sum, x, axes, keep_dims)
    }
    pub fn mean(&mut self, x: ValueId, axes: &[i64], keep_dims: bool) -> Result<ValueId> {
        self.reduce(ReduceKind::Mean, x, axes, keep_dims)
    }
    pub fn max(&mut self, x: ValueId, axes: &[i64], keep_dims: bool) -> Result<ValueId> {
        self.reduce(ReduceKind::Max, x, axes, keep_dims)
    }
    /// Sum over every axis, to a scalar.
    pub fn sum_all(&mut self, x: ValueId) -> Result<ValueId> {
        let axes: Vec<i64> = (0..self.shape(x).rank() as i64).collect();
        self.sum(x, &axes, false)
    }

    pub fn reshape(&mut self, x: ValueId, shape: Shape) -> Result<ValueId> {
        if self.shape(x) == &shape {
            return Ok(x);
        }
        self.node1(Op::Movement(Movement::Reshape(shape)), &[x])
    }
    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        self.node1(Op::Movement(Movement::Transpose(perm.to_vec())), &[x])
    }
    pub fn broadcast(&mut self, x: ValueId, shape: Shape) -> Result<ValueId> {
        if self.shape(x) == &shape {
            return Ok(x);
        }
        self.node1(Op::Movement(Movement::Broadcast(shape)), &[x])
    }
    pub fn concat(&mut self, xs: &[ValueId], axis: i64) -> Result<ValueId> {
        self.node1(Op::Movement(Movement::Concat { axis }), xs)
    }
    pub fn slice(&mut self, x: ValueId, axis: i64, start: usize, end: usize) -> Result<ValueId> {
        self.node1(Op::Movement(Movement::Slice { axis, start, end }), &[x])
    }
    pub fn pad(&mut self, x: ValueId, axis: i64, before: usize, after: usize) -> Result<ValueId> {
        self.node1(
            Op::Movement(Movement::Pad {
                axis,
                before,
                after,
            }),
            &[x],
        )
    }

    /// Sums `x` down to `shape`, undoing a numpy broadcast: leading axes are
    /// summed away, axes where `shape` has 1 are summed with kept dims.
    pub fn sum_to(&mut self, x: ValueId, shape: &Shape) -> Result<ValueId> {
        let from = self.shape(x).clone();
        if &from == shape {
            return Ok(x);
        }
        let lead = from.rank() - shape.rank().min(from.rank());
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, d) in shape.dims().iter().enumerate() {
            if *d == Dim::Fixed(1) && from.dims()[lead + i] != Dim::Fixed(1) {
                axes.push((lead + i) as i64);
            }
        }
        let summed = if axes.is_empty() {
            x
        } else {
            self.sum(x, &axes, true)?
        };
        self.reshape(summed, shape.clone())
    }

    pub fn gather(&mut self, data: ValueId, indices: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(Op::Index(Index::Gather { axis }), &[data, indices])
    }
    pub fn scatter_add(
        &mut self,
        updates: ValueId,
        indices: ValueId,
        axis: i64,
        size: usize,
    ) -> Result<ValueId> {
        self.node1(
            Op::Index(Index::ScatterAdd { axis, size }),
            &[updates, indices],
        )
    }
    pub fn one_hot(&mut self, indices: ValueId, depth: usize, dtype: DType) -> Result<ValueId> {
        self.node1(Op::Index(Index::OneHot { depth, dtype }), &[indices])
    }

    /// Indices of the k largest entries of each row (`Moe::TopK`).
    pub fn top_k(&mut self, x: ValueId, k: usize) -> Result<ValueId> {
        self.node1(Op::Moe(Moe::TopK { k }), &[x])
    }
    /// Packs slots by expert: `[row_token, slot_row, slot_keep, offsets]`
    /// (`Moe::MoeRoute`).
    pub fn moe_route(
        &mut self,
        ids: ValueId,
        experts: usize,
        capacity_factor: f64,
    ) -> Result<[ValueId; 4]> {
        let op = Op::Moe(Moe::MoeRoute {
            experts,
            capacity_factor,
        });
        let outs = self.node(op, &[ids])?;
        Ok([outs[0], outs[1], outs[2], outs[3]])
    }
    /// Each row times its expert's weight (`Moe::GroupedMatMul`).
    pub fn grouped_matmul(
        &mut self,
        x: ValueId,
        w: ValueId,
        offsets: ValueId,
        transpose_w: bool,
    ) -> Result<ValueId> {
        self.node1(
            Op::Moe(Moe::GroupedMatMul { transpose_w }),
            &[x, w, offsets],
        )
    }
    /// Rows of `x` (leading dims flattened) at `indices`
    /// (`Moe::GatherRows`).
    pub fn gather_rows(&mut self, x: ValueId, indices: ValueId) -> Result<ValueId> {
        self.node1(Op::Moe(Moe::GatherRows), &[x, indices])
    }
    /// Zeros of `leading ++ [D]` plus each update row at its index
    /// (`Moe::ScatterAddRows`).
    pub fn scatter_add_rows(
        &mut self,
        updates: ValueId,
        indices: ValueId,
        leading: Shape,
    ) -> Result<ValueId> {
        self.node1(
            Op::Moe(Moe::ScatterAddRows { leading }),
            &[updates, indices],
        )
    }
    /// Per-expert weight gradients (`Moe::GroupedMatMulGradW`).
    pub fn grouped_matmul_grad_w(
        &mut self,
        x: ValueId,
        dy: ValueId,
        offsets: ValueId,
        transpose: bool,
    ) -> Result<ValueId> {
        self.node1(
            Op::Moe(Moe::GroupedMatMulGradW { transpose }),
            &[x, dy, offsets],
        )
    }

    /// Packed rows to their experts' owners over a group of `ranks`
    /// (`CollectiveOp::AllToAll`): `[rows, local_offsets, counts]`.
    pub fn all_to_all(
        &mut self,
        x: ValueId,
        offsets: ValueId,
        ranks: usize,
    ) -> Result<[ValueId; 3]> {
        let outs = self.node(
            Op::Collective(CollectiveOp::AllToAll { ranks }),
            &[x, offsets],
        )?;
        Ok([outs[0], outs[1], outs[2]])
    }
    /// Expert outputs back to their rows' places
    /// (`CollectiveOp::AllToAllCombine`).
    pub fn all_to_all_combine(
        &mut self,
        y: ValueId,
        offsets: ValueId,
        counts: ValueId,
        ranks: usize,
    ) -> Result<ValueId> {
        self.node1(
            Op::Collective(CollectiveOp::AllToAllCombine { ranks }),
            &[y, offsets, counts],
        )
    }
    /// The sum of `x` over a group of `ranks` (`CollectiveOp::AllReduce`).
    pub fn all_reduce(&mut self, x: ValueId, ranks: usize) -> Result<ValueId> {
        self.node1(Op::Collective(CollectiveOp::AllReduce { ranks }), &[x])
    }

    /// 2-D convolution of `x [N, C, H, W]` with `w [M, C/groups, kH, kW]`
    /// (`Conv::Conv2d`).
    pub fn conv2d(&mut self, x: ValueId, w: ValueId, attrs: Conv2dAttrs) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::Conv2d(attrs)), &[x, w])
    }
    /// The input gradient of a convolution over an input of spatial size
    /// `input` (`Conv::Conv2dGradInput`).
    pub fn conv2d_grad_input(
        &mut self,
        w: ValueId,
        dy: ValueId,
        conv: Conv2dAttrs,
        input: [usize; 2],
    ) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::Conv2dGradInput { conv, input }), &[w, dy])
    }
    /// The weight gradient of a convolution with a `kernel`-sized window
    /// (`Conv::Conv2dGradWeight`).
    pub fn conv2d_grad_weight(
        &mut self,
        x: ValueId,
        dy: ValueId,
        conv: Conv2dAttrs,
        kernel: [usize; 2],
    ) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::Conv2dGradWeight { conv, kernel }), &[x, dy])
    }
    /// 2-D max pooling (`Conv::MaxPool2d`).
    pub fn max_pool2d(&mut self, x: ValueId, pool: Pool2dAttrs) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::MaxPool2d(pool)), &[x])
    }
    /// `dy` added at each window's argmax in `x` (`Conv::MaxPool2dGrad`).
    pub fn max_pool2d_grad(
        &mut self,
        x: ValueId,
        dy: ValueId,
        pool: Pool2dAttrs,
    ) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::MaxPool2dGrad(pool)), &[x, dy])
    }
    /// `v` read at each window's argmax in `x` (`Conv::MaxPool2dSelect`).
    pub fn max_pool2d_select(
        &mut self,
        x: ValueId,
        v: ValueId,
        pool: Pool2dAttrs,
    ) -> Result<ValueId> {
        self.node1(Op::Conv(Conv::MaxPool2dSelect(pool)), &[x, v])
    }
    /// 2-D average pooling (`Conv::AvgPool2d`).
    pub fn avg_pool2d(
        &mut self,
        x: ValueId,
        pool: Pool2dAttrs,
        count_include_pad: bool,
    ) -> Result<ValueId> {
        let op = Conv::AvgPool2d {
            pool,
            count_include_pad,
        };
        self.node1(Op::Conv(op), &[x])
    }
    /// AvgPool2d's transpose onto an input of spatial size `input`
    /// (`Conv::AvgPool2dGrad`).
    pub fn avg_pool2d_grad(
        &mut self,
        dy: ValueId,
        pool: Pool2dAttrs,
        count_include_pad: bool,
        input: [usize; 2],
    ) -> Result<ValueId> {
        let op = Conv::AvgPool2dGrad {
            pool,
            count_include_pad,
            input,
        };
        self.node1(Op::Conv(op), &[dy])
    }

    pub fn softmax(&mut self, x: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(Op::Nn(Nn::Softmax { axis }), &[x])
    }
    pub fn log_softmax(&mut self, x: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(Op::Nn(Nn::LogSoftmax { axis }), &[x])
    }
    /// Layer normalisation over the last axis with scale and shift.
    pub fn layer_norm(
        &mut self,
        x: ValueId,
        gamma: ValueId,
        beta: ValueId,
        eps: f64,
    ) -> Result<ValueId> {
        self.node1(Op::Nn(Nn::LayerNorm { eps }), &[x, gamma, beta])
    }
    /// Dropout with drop probability `p`; `key` identifies this dropout site
    /// in the counter-based RNG so recomputes replay the same mask.
    pub fn dropout(&mut self, x: ValueId, p: f64, key: u64) -> Result<ValueId> {
        self.node1(Op::Nn(Nn::Dropout { p, key }), &[x])
    }
    /// Sets entries above the diagonal of the last two axes to `fill`.
    pub fn causal_mask(&mut self, x: ValueId, fill: f64) -> Result<ValueId> {
        self.node1(Op::Nn(Nn::CausalMask { fill }), &[x])
    }
    /// Mean softmax cross-entropy of `logits [..., C]` against int `labels [...]`.
    pub fn softmax_cross_entropy(&mut self, logits: ValueId, labels: ValueId) -> Result<ValueId> {
        self.node1(Op::Loss(Loss::SoftmaxCrossEntropy), &[logits, labels])
    }
    /// Mean squared error.
    pub fn mse(&mut self, pred: ValueId, target: ValueId) -> Result<ValueId> {
        self.node1(Op::Loss(Loss::Mse), &[pred, target])
    }
}

/// Prefixes an op's message with the names and types of the node's inputs.
fn describe_inputs(graph: &Graph, inputs: &[ValueId], message: String) -> String {
    let list: Vec<String> = inputs
        .iter()
        .map(|&v| format!("'{}': {}", graph.name_of(v), graph.ty(v)))
        .collect();
    format!("{message} (inputs: {})", list.join(", "))
}
