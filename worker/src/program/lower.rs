//! Lowering: one graph node to backend calls.

use adjoint_graph::interp::strides as contiguous_strides;
use adjoint_graph::ops::moe;
use adjoint_graph::ops::{
    Binary, CollectiveOp, Conv, Conv2dAttrs, GeluApprox, Index, Loss, Moe, Movement, Nn, Op,
    Pool2dAttrs, ReduceKind, Unary,
};
use adjoint_graph::{Graph, Node, ValueId};
use adjoint_kernels::backend::{Conv2dDims, GroupedMatMulDims, Pool2dDims};
use adjoint_kernels::{BinaryOp, CompareOp, ReduceOp, UnaryOp, View};

use super::exchange::{Exchange, ExchangeDims};
use super::instr::{Instr, MatMulInstr};
use super::views::ValueViews;
use crate::{Error, Result};

/// Appends the instructions of `node` to `out`.
pub fn lower_node(
    graph: &Graph,
    node: &Node,
    views: &ValueViews,
    out: &mut Vec<Instr>,
) -> Result<()> {
    let cx = Cx { graph, node, views };
    match &node.op {
        Op::Unary(u) => cx.unary(*u, out),
        Op::Binary(b) => cx.binary(*b, out),
        Op::MatMul(m) => cx.matmul(m.trans_a, m.trans_b, out),
        Op::Reduce(r) => cx.reduce(r.kind, &r.axes, out),
        Op::Movement(m) => cx.movement(m, out),
        Op::Index(i) => cx.index(i, out),
        Op::Nn(n) => cx.nn(n, out),
        Op::Loss(l) => cx.loss(l, out),
        Op::Moe(m) => cx.moe(m, out),
        Op::Conv(c) => cx.conv(c, out),
        Op::Collective(c) => cx.collective(*c, out),
    }
}

struct Cx<'a> {
    graph: &'a Graph,
    node: &'a Node,
    views: &'a ValueViews,
}

/// Strides for reading a tensor of `shape` broadcast to `out` (numpy rules):
/// 0 on broadcast axes.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

impl Cx<'_> {
    fn input(&self, i: usize) -> Result<View> {
        self.views.view(self.graph, self.node.inputs[i])
    }

    fn output(&self, i: usize) -> Result<View> {
        self.views.view(self.graph, self.node.outputs[i])
    }

    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.graph.static_shape(v)
    }

    fn in_shape(&self, i: usize) -> Vec<usize> {
        self.shape(self.node.inputs[i])
    }

    fn out_shape(&self, i: usize) -> Vec<usize> {
        self.shape(self.node.outputs[i])
    }

    fn unsupported(&self, message: impl Into<String>) -> Error {
        Error::Unsupported {
            node: self.node.name.clone(),
            op: self.node.op.name().to_owned(),
            message: message.into(),
        }
    }

    fn unary(&self, u: Unary, out: &mut Vec<Instr>) -> Result<()> {
        let (x, y) = (self.input(0)?, self.output(0)?);
        let op = match u {
            Unary::Neg => UnaryOp::Neg,
            Unary::Exp => UnaryOp::Exp,
            Unary::Log => UnaryOp::Log,
            Unary::Sqrt => UnaryOp::Sqrt,
            Unary::Rsqrt => UnaryOp::Rsqrt,
            Unary::Tanh => UnaryOp::Tanh,
            Unary::Sigmoid => UnaryOp::Sigmoid,
            Unary::Relu => UnaryOp::Relu,
            Unary::Gelu(GeluApprox::Tanh) => UnaryOp::GeluTanh,
            Unary::Gelu(GeluApprox::Erf) => UnaryOp::GeluErf,
            Unary::Erf => UnaryOp::Erf,
            Unary::Cast(_) => {
                out.push(Instr::Cast { x, y });
                return Ok(());
            }
        };
        out.push(Instr::Unary { op, x, y });
        Ok(())
    }

    fn binary(&self, b: Binary, out: &mut Vec<Instr>) -> Result<()> {
        let shape = self.out_shape(0);
        let strides = |i: usize| broadcast_strides(&self.in_shape(i), &shape);
        let o = self.output(0)?;
        let instr = match b {
            Binary::Where => Instr::Select {
                cond: self.input(0)?,
                cond_strides: strides(0),
                a: self.input(1)?,
                a_strides: strides(1),
                b: self.input(2)?,
                b_strides: strides(2),
                out: o,
                shape,
            },
            Binary::Equal | Binary::Greater => Instr::Compare {
                op: if b == Binary::Equal {
                    CompareOp::Equal
                } else {
                    CompareOp::Greater
                },
                a: self.input(0)?,
                a_strides: strides(0),
                b: self.input(1)?,
                b_strides: strides(1),
                out: o,
                shape,
            },
            Binary::Add | Binary::Sub | Binary::Mul | Binary::Div | Binary::Pow => {
                let op = match b {
                    Binary::Add => BinaryOp::Add,
                    Binary::Sub => BinaryOp::Sub,
                    Binary::Mul => BinaryOp::Mul,
                    Binary::Div => BinaryOp::Div,
                    _ => BinaryOp::Pow,
                };
                Instr::Binary {
                    op,
                    a: self.input(0)?,
                    a_strides: strides(0),
                    b: self.input(1)?,
                    b_strides: strides(1),
                    out: o,
                    shape,
                }
            }
        };
        out.push(instr);
        Ok(())
    }

    fn matmul(&self, trans_a: bool, trans_b: bool, out: &mut Vec<Instr>) -> Result<()> {
        let (sa, sb, sc) = (self.in_shape(0), self.in_shape(1), self.out_shape(0));
        let (ra, rc) = (sa.len(), sc.len());
        let (m, n) = (sc[rc - 2], sc[rc - 1]);
        let k = if trans_a { sa[ra - 2] } else { sa[ra - 1] };
        let batch = sc[..rc - 2].to_vec();
        let batch_strides = |shape: &[usize], matrix: usize| -> Vec<usize> {
            let own = &shape[..shape.len() - 2];
            let mut strides = broadcast_strides(own, &batch);
            for s in &mut strides {
                *s *= matrix;
            }
            strides
        };
        let mm = MatMulInstr {
            a: self.input(0)?,
            b: self.input(1)?,
            c: self.output(0)?,
            m,
            n,
            k,
            trans_a,
            trans_b,
            a_batch_strides: batch_strides(&sa, m * k),
            b_batch_strides: batch_strides(&sb, k * n),
            c_batch_strides: batch_strides(&sc, m * n),
            batch,
        };
        out.push(Instr::MatMul(Box::new(mm)));
        Ok(())
    }

    fn reduce(&self, kind: ReduceKind, axes: &[i64], out: &mut Vec<Instr>) -> Result<()> {
        let shape = self.in_shape(0);
        let mut mask = vec![false; shape.len()];
        for &a in axes {
            let a = adjoint_graph::shape::normalize_axis(a, shape.len())
                .ok_or_else(|| self.unsupported(format!("axis {a} out of range")))?;
            mask[a] = true;
        }
        let (x, y) = (self.input(0)?, self.output(0)?);
        if !mask.contains(&true) {
            out.push(Instr::Copy { src: x, dst: y });
            return Ok(());
        }
        let op = match kind {
            ReduceKind::Sum => ReduceOp::Sum,
            ReduceKind::Mean => ReduceOp::Mean,
            ReduceKind::Max => ReduceOp::Max,
        };
        out.push(Instr::Reduce {
            op,
            x,
            shape,
            axes: mask,
            y,
        });
        Ok(())
    }

    fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        adjoint_graph::shape::normalize_axis(axis, rank)
            .ok_or_else(|| self.unsupported(format!("axis {axis} out of range for rank {rank}")))
    }

    fn movement(&self, m: &Movement, out: &mut Vec<Instr>) -> Result<()> {
        match m {
            Movement::Reshape(_) => {
                let (x, y) = (self.input(0)?, self.output(0)?);
                if x != y {
                    out.push(Instr::Copy { src: x, dst: y });
                }
            }
            Movement::Transpose(perm) => {
                let shape = self.in_shape(0);
                let own = contiguous_strides(&shape);
                let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                out.push(Instr::CopyStrided {
                    src: self.input(0)?,
                    src_strides: perm.iter().map(|&p| own[p]).collect(),
                    dst: self.output(0)?,
                    dst_strides: contiguous_strides(&out_shape),
                    shape: out_shape,
                });
            }
            Movement::Broadcast(_) => {
                let shape = self.out_shape(0);
                out.push(Instr::CopyStrided {
                    src: self.input(0)?,
                    src_strides: broadcast_strides(&self.in_shape(0), &shape),
                    dst: self.output(0)?,
                    dst_strides: contiguous_strides(&shape),
                    shape,
                });
            }
            Movement::Concat { axis } => {
                let full = self.out_shape(0);
                let ax = self.axis(*axis, full.len())?;
                let dst_strides = contiguous_strides(&full);
                let dst = self.output(0)?;
                let mut start = 0;
                for i in 0..self.node.inputs.len() {
                    let shape = self.in_shape(i);
                    out.push(Instr::CopyStrided {
                        src: self.input(i)?,
                        src_strides: contiguous_strides(&shape),
                        dst: dst.sub(start * dst_strides[ax], dst.len - start * dst_strides[ax]),
                        dst_strides: dst_strides.clone(),
                        shape: shape.clone(),
                    });
                    start += shape[ax];
                }
            }
            Movement::Slice { axis, start, .. } => {
                let shape = self.in_shape(0);
                let ax = self.axis(*axis, shape.len())?;
                let src_strides = contiguous_strides(&shape);
                let out_shape = self.out_shape(0);
                let src = self.input(0)?;
                let offset = start * src_strides[ax];
                out.push(Instr::CopyStrided {
                    src: src.sub(offset, src.len - offset),
                    src_strides,
                    dst: self.output(0)?,
                    dst_strides: contiguous_strides(&out_shape),
                    shape: out_shape,
                });
            }
            Movement::Pad { axis, before, .. } => {
                let shape = self.in_shape(0);
                let out_shape = self.out_shape(0);
                let ax = self.axis(*axis, shape.len())?;
                let dst_strides = contiguous_strides(&out_shape);
                let dst = self.output(0)?;
                let offset = before * dst_strides[ax];
                out.push(Instr::Fill { dst, value: 0.0 });
                out.push(Instr::CopyStrided {
                    src: self.input(0)?,
                    src_strides: contiguous_strides(&shape),
                    dst: dst.sub(offset, dst.len - offset),
                    dst_strides,
                    shape,
                });
            }
            Movement::Constant { value, .. } => out.push(Instr::Fill {
                dst: self.output(0)?,
                value: *value,
            }),
        }
        Ok(())
    }

    /// `shape` split around `axis` as (outer, axis, inner).
    fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
        (
            shape[..axis].iter().product(),
            shape[axis],
            shape[axis + 1..].iter().product(),
        )
    }

    fn index(&self, i: &Index, out: &mut Vec<Instr>) -> Result<()> {
        match i {
            Index::Gather { axis } => {
                let shape = self.in_shape(0);
                let (outer, axis, inner) = Self::split(&shape, self.axis(*axis, shape.len())?);
                out.push(Instr::Gather {
                    data: self.input(0)?,
                    indices: self.input(1)?,
                    out: self.output(0)?,
                    outer,
                    axis,
                    inner,
                });
            }
            Index::ScatterAdd { axis, .. } => {
                let shape = self.out_shape(0);
                let (outer, size, inner) = Self::split(&shape, self.axis(*axis, shape.len())?);
                out.push(Instr::ScatterAdd {
                    updates: self.input(0)?,
                    indices: self.input(1)?,
                    out: self.output(0)?,
                    outer,
                    size,
                    inner,
                });
            }
            Index::OneHot { depth, .. } => out.push(Instr::OneHot {
                indices: self.input(0)?,
                out: self.output(0)?,
                depth: *depth,
            }),
        }
        Ok(())
    }

    fn nn(&self, n: &Nn, out: &mut Vec<Instr>) -> Result<()> {
        let shape = self.in_shape(0);
        let last = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().product::<usize>() / last.max(1);
        let instr = match *n {
            Nn::Softmax { axis } | Nn::LogSoftmax { axis } => {
                let (outer, n_axis, inner) = Self::split(&shape, self.axis(axis, shape.len())?);
                Instr::Softmax {
                    x: self.input(0)?,
                    y: self.output(0)?,
                    outer,
                    n: n_axis,
                    inner,
                    log: matches!(n, Nn::LogSoftmax { .. }),
                }
            }
            Nn::LayerNorm { eps } => Instr::LayerNorm {
                x: self.input(0)?,
                gamma: self.input(1)?,
                beta: self.input(2)?,
                y: self.output(0)?,
                rows,
                d: last,
                eps: eps as f32,
            },
            Nn::LayerNormGrad { eps } => Instr::LayerNormGrad {
                x: self.input(0)?,
                gamma: self.input(1)?,
                dy: self.input(2)?,
                dx: self.output(0)?,
                dgamma: self.output(1)?,
                dbeta: self.output(2)?,
                rows,
                d: last,
                eps: eps as f32,
            },
            Nn::GeluGrad(approx) => Instr::GeluGrad {
                tanh: approx == GeluApprox::Tanh,
                x: self.input(0)?,
                dy: self.input(1)?,
                dx: self.output(0)?,
            },
            Nn::Dropout { p, key } => Instr::Dropout {
                x: self.input(0)?,
                y: self.output(0)?,
                p: p as f32,
                site: key,
            },
            Nn::CausalMask { fill } => {
                let t = last;
                Instr::CausalMask {
                    x: self.input(0)?,
                    y: self.output(0)?,
                    batch: shape.iter().product::<usize>() / (t * t).max(1),
                    t,
                    fill: fill as f32,
                }
            }
        };
        out.push(instr);
        Ok(())
    }

    fn loss(&self, l: &Loss, out: &mut Vec<Instr>) -> Result<()> {
        let instr = match l {
            Loss::SoftmaxCrossEntropy | Loss::SoftmaxCrossEntropyGrad => {
                let shape = self.in_shape(0);
                let classes = *shape
                    .last()
                    .ok_or_else(|| self.unsupported("logits must have a class axis"))?;
                let rows = shape.iter().product::<usize>() / classes.max(1);
                if *l == Loss::SoftmaxCrossEntropy {
                    Instr::SoftmaxCrossEntropy {
                        logits: self.input(0)?,
                        labels: self.input(1)?,
                        loss: self.output(0)?,
                        rows,
                        classes,
                    }
                } else {
                    Instr::SoftmaxCrossEntropyGrad {
                        logits: self.input(0)?,
                        labels: self.input(1)?,
                        dloss: self.input(2)?,
                        dlogits: self.output(0)?,
                        rows,
                        classes,
                    }
                }
            }
            Loss::Mse => Instr::Mse {
                pred: self.input(0)?,
                target: self.input(1)?,
                loss: self.output(0)?,
            },
        };
        out.push(instr);
        Ok(())
    }

    /// `shape` as (rows, last dim): every leading dim is a row.
    fn rows_and_width(&self, shape: &[usize], what: &str) -> Result<(usize, usize)> {
        let width = *shape
            .last()
            .ok_or_else(|| self.unsupported(format!("{what} must have a last dim")))?;
        let rows = shape[..shape.len() - 1].iter().product();
        Ok((rows, width))
    }

    fn moe(&self, m: &Moe, out: &mut Vec<Instr>) -> Result<()> {
        let instr = match *m {
            Moe::TopK { k } => {
                let (rows, n) = self.rows_and_width(&self.in_shape(0), "top_k input")?;
                Instr::TopK {
                    x: self.input(0)?,
                    ids: self.output(0)?,
                    rows,
                    n,
                    k,
                }
            }
            Moe::MoeRoute {
                experts,
                capacity_factor,
            } => {
                let (tokens, k) = self.rows_and_width(&self.in_shape(0), "moe_route ids")?;
                // The graph's own rule, so engine and interpreter drop alike.
                let capacity = (capacity_factor > 0.0)
                    .then(|| moe::capacity(capacity_factor, tokens * k, experts));
                Instr::MoeRoute {
                    ids: self.input(0)?,
                    row_token: self.output(0)?,
                    slot_row: self.output(1)?,
                    slot_keep: self.output(2)?,
                    offsets: self.output(3)?,
                    k,
                    experts,
                    capacity,
                }
            }
            Moe::GroupedMatMul { transpose_w } => {
                let (rows, d) = self.rows_and_width(&self.in_shape(0), "grouped_matmul x")?;
                let (_, h) = self.rows_and_width(&self.out_shape(0), "grouped_matmul y")?;
                Instr::GroupedMatMul {
                    x: self.input(0)?,
                    w: self.input(1)?,
                    offsets: self.input(2)?,
                    y: self.output(0)?,
                    dims: GroupedMatMulDims {
                        experts: self.experts()?,
                        rows,
                        d,
                        h,
                        transpose: transpose_w,
                    },
                }
            }
            Moe::GroupedMatMulGradW { transpose } => {
                let (rows, d) =
                    self.rows_and_width(&self.in_shape(0), "grouped_matmul_grad_w x")?;
                let (_, h) = self.rows_and_width(&self.in_shape(1), "grouped_matmul_grad_w dy")?;
                Instr::GroupedMatMulGradW {
                    x: self.input(0)?,
                    dy: self.input(1)?,
                    offsets: self.input(2)?,
                    dw: self.output(0)?,
                    dims: GroupedMatMulDims {
                        experts: self.experts()?,
                        rows,
                        d,
                        h,
                        transpose,
                    },
                }
            }
            // Rows of the flattened leading dims: a gather (or scatter-add)
            // with no outer dims.
            Moe::GatherRows => {
                let (rows, width) = self.rows_and_width(&self.in_shape(0), "gather_rows x")?;
                Instr::Gather {
                    data: self.input(0)?,
                    indices: self.input(1)?,
                    out: self.output(0)?,
                    outer: 1,
                    axis: rows,
                    inner: width,
                }
            }
            Moe::ScatterAddRows { .. } => {
                let (rows, width) =
                    self.rows_and_width(&self.out_shape(0), "scatter_add_rows output")?;
                Instr::ScatterAdd {
                    updates: self.input(0)?,
                    indices: self.input(1)?,
                    out: self.output(0)?,
                    outer: 1,
                    size: rows,
                    inner: width,
                }
            }
        };
        out.push(instr);
        Ok(())
    }

    /// `shape` as `[N, C, H, W]`.
    fn nchw(&self, shape: &[usize], what: &str) -> Result<[usize; 4]> {
        match *shape {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(self.unsupported(format!("{what}: expected [N, C, H, W], found {shape:?}"))),
        }
    }

    /// Convolution dims from x's and y's shapes and the kernel `[M, kh, kw]`.
    fn conv_dims(
        &self,
        c: &Conv2dAttrs,
        x: &[usize],
        y: &[usize],
        k: [usize; 2],
    ) -> Result<Conv2dDims> {
        let [n, ch, h, w] = self.nchw(x, "convolution input")?;
        let [_, m, oh, ow] = self.nchw(y, "convolution output")?;
        Ok(Conv2dDims {
            n,
            c: ch,
            h,
            w,
            m,
            kh: k[0],
            kw: k[1],
            oh,
            ow,
            strides: c.strides,
            pads: c.pads,
            dilations: c.dilations,
            groups: c.groups,
        })
    }

    /// Pool dims from x's and y's shapes.
    fn pool_dims(&self, p: &Pool2dAttrs, x: &[usize], y: &[usize]) -> Result<Pool2dDims> {
        let [n, ch, h, w] = self.nchw(x, "pool input")?;
        let [_, _, oh, ow] = self.nchw(y, "pool output")?;
        Ok(Pool2dDims {
            planes: n * ch,
            h,
            w,
            oh,
            ow,
            kernel: p.kernel,
            strides: p.strides,
            pads: p.pads,
            dilations: p.dilations,
        })
    }

    fn conv(&self, c: &Conv, out: &mut Vec<Instr>) -> Result<()> {
        let spatial = |s: &[usize]| [s[s.len() - 2], s[s.len() - 1]];
        let instr = match *c {
            Conv::Conv2d(a) => Instr::Conv2d {
                x: self.input(0)?,
                w: self.input(1)?,
                y: self.output(0)?,
                dims: self.conv_dims(
                    &a,
                    &self.in_shape(0),
                    &self.out_shape(0),
                    spatial(&self.in_shape(1)),
                )?,
            },
            Conv::Conv2dGradInput { conv, .. } => Instr::Conv2dGradInput {
                w: self.input(0)?,
                dy: self.input(1)?,
                dx: self.output(0)?,
                dims: self.conv_dims(
                    &conv,
                    &self.out_shape(0),
                    &self.in_shape(1),
                    spatial(&self.in_shape(0)),
                )?,
            },
            Conv::Conv2dGradWeight { conv, kernel } => Instr::Conv2dGradWeight {
                x: self.input(0)?,
                dy: self.input(1)?,
                dw: self.output(0)?,
                dims: self.conv_dims(&conv, &self.in_shape(0), &self.in_shape(1), kernel)?,
            },
            Conv::MaxPool2d(p) => Instr::MaxPool2d {
                x: self.input(0)?,
                y: self.output(0)?,
                dims: self.pool_dims(&p, &self.in_shape(0), &self.out_shape(0))?,
            },
            Conv::MaxPool2dGrad(p) => Instr::MaxPool2dGrad {
                x: self.input(0)?,
                dy: self.input(1)?,
                dx: self.output(0)?,
                dims: self.pool_dims(&p, &self.in_shape(0), &self.in_shape(1))?,
            },
            Conv::MaxPool2dSelect(p) => Instr::MaxPool2dSelect {
                x: self.input(0)?,
                v: self.input(1)?,
                y: self.output(0)?,
                dims: self.pool_dims(&p, &self.in_shape(0), &self.out_shape(0))?,
            },
            Conv::AvgPool2d {
                pool,
                count_include_pad,
            } => Instr::AvgPool2d {
                x: self.input(0)?,
                y: self.output(0)?,
                dims: self.pool_dims(&pool, &self.in_shape(0), &self.out_shape(0))?,
                count_include_pad,
            },
            Conv::AvgPool2dGrad {
                pool,
                count_include_pad,
                ..
            } => Instr::AvgPool2dGrad {
                dy: self.input(0)?,
                dx: self.output(0)?,
                dims: self.pool_dims(&pool, &self.out_shape(0), &self.in_shape(0))?,
                count_include_pad,
            },
        };
        out.push(instr);
        Ok(())
    }

    /// Experts of a grouped matmul: its offsets (input 2) are `[E + 1]`.
    fn collective(&self, c: CollectiveOp, out: &mut Vec<Instr>) -> Result<()> {
        let offsets_experts = |i: usize| -> Result<usize> {
            match self.in_shape(i)[..] {
                [n] if n >= 2 => Ok(n - 1),
                ref other => Err(self.unsupported(format!(
                    "expected offsets [experts + 1], found shape {other:?}"
                ))),
            }
        };
        let exchange = match c {
            CollectiveOp::AllToAll { ranks } => {
                let (rows, width) = self.rows_and_width(&self.in_shape(0), "all_to_all rows")?;
                Exchange::AllToAll {
                    x: self.input(0)?,
                    offsets: self.input(1)?,
                    y: self.output(0)?,
                    local_offsets: self.output(1)?,
                    counts: self.output(2)?,
                    dims: ExchangeDims {
                        ranks,
                        experts: offsets_experts(1)?,
                        rows,
                        width,
                    },
                }
            }
            CollectiveOp::AllToAllCombine { ranks } => {
                let (rows, width) = self.rows_and_width(&self.out_shape(0), "combined rows")?;
                Exchange::Combine {
                    y: self.input(0)?,
                    offsets: self.input(1)?,
                    counts: self.input(2)?,
                    x: self.output(0)?,
                    dims: ExchangeDims {
                        ranks,
                        experts: offsets_experts(1)?,
                        rows,
                        width,
                    },
                }
            }
            CollectiveOp::AllReduce { ranks } => Exchange::AllReduce {
                x: self.input(0)?,
                y: self.output(0)?,
                ranks,
            },
        };
        for v in exchange.outputs() {
            if v.elem == adjoint_kernels::ElemType::F32 || v.elem == adjoint_kernels::ElemType::I64
            {
                continue;
            }
            return Err(self.unsupported(format!("{:?} values cannot cross ranks yet", v.elem)));
        }
        out.push(Instr::Exchange(Box::new(exchange)));
        Ok(())
    }

    fn experts(&self) -> Result<usize> {
        match self.in_shape(2)[..] {
            [n] if n >= 1 => Ok(n - 1),
            ref other => Err(self.unsupported(format!(
                "expected offsets [experts + 1], found shape {other:?}"
            ))),
        }
    }
}
