//! 2-D convolution and pooling over `[N, C, H, W]` (NCHW) tensors.
//!
//! Geometry: a window of `k` taps `d` apart starts at `o·s - pad_begin`
//! along each spatial axis; taps outside `[0, H)` read padding (zero for
//! convolution and AvgPool, -inf for MaxPool). Output sizes are
//! `floor((H + pb + pe - d·(k-1) - 1) / s) + 1`; pools in `ceil_mode`
//! round up instead and drop a last window that would start in the end
//! padding (PyTorch's rule). `pads` are `[top, left, bottom, right]`.
//!
//! - `Conv2d {strides, pads, dilations, groups}` (x `[N, C, H, W]`, w
//!   `[M, C/groups, kH, kW]`) → y `[N, M, oH, oW]`; output channel m sees
//!   the input channels of its group (`M/groups` outputs per group). Bias
//!   is a separate Add.
//! - `Conv2dGradInput {conv, input: [H, W]}` (w, dy `[N, M, oH, oW]`) → dx
//!   `[N, C, H, W]`: the transpose of Conv2d in x (a transposed
//!   convolution). `input` fixes H and W, which strides leave ambiguous.
//! - `Conv2dGradWeight {conv, kernel: [kH, kW]}` (x, dy) → dw
//!   `[M, C/groups, kH, kW]`: the transpose of Conv2d in w.
//!
//!   All three are bilinear and each one's VJP and JVP are the other two
//!   (`⟨dy, conv(x, w)⟩ = ⟨x, GI(w, dy)⟩ = ⟨w, GW(x, dy)⟩`), so gradient
//!   graphs differentiate again.
//! - `MaxPool2d {pool}` (x) → y: the largest tap of each window (the first
//!   in row-major tap order on ties; padding never wins).
//! - `MaxPool2dGrad {pool}` (x, dy) → dx: each dy added at its window's
//!   argmax in x. `MaxPool2dSelect {pool}` (x, v) → y-shaped: v read at
//!   each window's argmax. Both are linear in their second input and
//!   piecewise constant in x, and each is the other's transpose; MaxPool2d's
//!   VJP is MaxPool2dGrad, its JVP MaxPool2dSelect.
//! - `AvgPool2d {pool, count_include_pad}` (x) → y: the mean of each window
//!   over its taps inside the input (`count_include_pad`: over its taps
//!   inside the padded input, i.e. padding counted as zeros).
//! - `AvgPool2dGrad {pool, count_include_pad, input: [H, W]}` (dy) → dx:
//!   AvgPool2d's transpose; the two are each other's VJP.
//!
//! Convolutions are [`Recompute::Expensive`], pools [`Recompute::Cheap`].

use super::{Cost, JvpCx, OpRules, Recompute, VjpCx, bytes, expect_arity, expect_float, numel};
use crate::attr::{Attr, AttrReader};
use crate::interp::{EvalCx, Tensor};
use crate::{Attrs, Dim, Result, Shape, TensorType, ValueId};

/// Attributes of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dAttrs {
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dAttrs {
    fn default() -> Self {
        Conv2dAttrs {
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
        }
    }
}

/// Attributes of a 2-D pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dAttrs {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub ceil_mode: bool,
}

impl Pool2dAttrs {
    /// A `k×k` window with stride `s`, no padding, no dilation, floor mode.
    pub fn square(k: usize, s: usize) -> Pool2dAttrs {
        Pool2dAttrs {
            kernel: [k, k],
            strides: [s, s],
            pads: [0; 4],
            dilations: [1, 1],
            ceil_mode: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Conv {
    /// x `[N, C, H, W]`, w `[M, C/groups, kH, kW]` → `[N, M, oH, oW]`.
    Conv2d(Conv2dAttrs),
    /// w, dy → dx `[N, C, input[0], input[1]]`.
    Conv2dGradInput {
        conv: Conv2dAttrs,
        input: [usize; 2],
    },
    /// x, dy → dw `[M, C/groups, kernel[0], kernel[1]]`.
    Conv2dGradWeight {
        conv: Conv2dAttrs,
        kernel: [usize; 2],
    },
    /// x → the largest tap of each window.
    MaxPool2d(Pool2dAttrs),
    /// x, dy → dx: dy scattered to each window's argmax.
    MaxPool2dGrad(Pool2dAttrs),
    /// x, v → v gathered at each window's argmax.
    MaxPool2dSelect(Pool2dAttrs),
    /// x → the mean of each window.
    AvgPool2d {
        pool: Pool2dAttrs,
        count_include_pad: bool,
    },
    /// dy → dx `[N, C, input[0], input[1]]`.
    AvgPool2dGrad {
        pool: Pool2dAttrs,
        count_include_pad: bool,
        input: [usize; 2],
    },
}

impl OpRules for Conv {
    fn name(&self) -> &'static str {
        match self {
            Conv::Conv2d(_) => "Conv2d",
            Conv::Conv2dGradInput { .. } => "Conv2dGradInput",
            Conv::Conv2dGradWeight { .. } => "Conv2dGradWeight",
            Conv::MaxPool2d(_) => "MaxPool2d",
            Conv::MaxPool2dGrad(_) => "MaxPool2dGrad",
            Conv::MaxPool2dSelect(_) => "MaxPool2dSelect",
            Conv::AvgPool2d { .. } => "AvgPool2d",
            Conv::AvgPool2dGrad { .. } => "AvgPool2dGrad",
        }
    }

    fn parse(name: &str, attrs: &Attrs) -> Option<std::result::Result<Self, String>> {
        let mut r = AttrReader::new(attrs);
        let op = match name {
            "Conv2d" => parse_conv(&mut r).map(Conv::Conv2d),
            "Conv2dGradInput" => parse_conv(&mut r).and_then(|conv| {
                let input = pair(&mut r, "input", None, 1)?;
                Ok(Conv::Conv2dGradInput { conv, input })
            }),
            "Conv2dGradWeight" => parse_conv(&mut r).and_then(|conv| {
                let kernel = pair(&mut r, "kernel", None, 1)?;
                Ok(Conv::Conv2dGradWeight { conv, kernel })
            }),
            "MaxPool2d" => parse_pool(&mut r).map(Conv::MaxPool2d),
            "MaxPool2dGrad" => parse_pool(&mut r).map(Conv::MaxPool2dGrad),
            "MaxPool2dSelect" => parse_pool(&mut r).map(Conv::MaxPool2dSelect),
            "AvgPool2d" => parse_pool(&mut r).and_then(|pool| {
                let count_include_pad = r.boolean("count_include_pad", Some(false))?;
                Ok(Conv::AvgPool2d {
                    pool,
                    count_include_pad,
                })
            }),
            "AvgPool2dGrad" => parse_pool(&mut r).and_then(|pool| {
                let count_include_pad = r.boolean("count_include_pad", Some(false))?;
                let input = pair(&mut r, "input", None, 1)?;
                Ok(Conv::AvgPool2dGrad {
                    pool,
                    count_include_pad,
                    input,
                })
            }),
            _ => return None,
        };
        Some(op.and_then(|op| r.finish().map(|()| op)))
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        match self {
            Conv::Conv2d(c) => conv_attrs(&mut a, c),
            Conv::Conv2dGradInput { conv, input } => {
                conv_attrs(&mut a, conv);
                a.insert("input".into(), ints(input));
            }
            Conv::Conv2dGradWeight { conv, kernel } => {
                conv_attrs(&mut a, conv);
                a.insert("kernel".into(), ints(kernel));
            }
            Conv::MaxPool2d(p) | Conv::MaxPool2dGrad(p) | Conv::MaxPool2dSelect(p) => {
                pool_attrs(&mut a, p)
            }
            Conv::AvgPool2d {
                pool,
                count_include_pad,
            } => {
                pool_attrs(&mut a, pool);
                a.insert("count_include_pad".into(), Attr::Bool(*count_include_pad));
            }
            Conv::AvgPool2dGrad {
                pool,
                count_include_pad,
                input,
            } => {
                pool_attrs(&mut a, pool);
                a.insert("count_include_pad".into(), Attr::Bool(*count_include_pad));
                a.insert("input".into(), ints(input));
            }
        }
        a
    }

    fn infer(&self, inputs: &[&TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        match self {
            Conv::Conv2d(c) => {
                check_conv(c)?;
                expect_arity(inputs, 2)?;
                let (n, ch, hw) = nchw(inputs, 0, "x")?;
                let w = weight(inputs, 1)?;
                check_groups(c, ch, &w)?;
                let out = conv_out(c, hw, [w[2], w[3]])?;
                Ok(vec![out_type(inputs[0], n, w[0], out)])
            }
            Conv::Conv2dGradInput { conv, input } => {
                check_conv(conv)?;
                expect_arity(inputs, 2)?;
                let w = weight(inputs, 0)?;
                let (n, m, ohw) = nchw(inputs, 1, "dy")?;
                expect_dtype_like(inputs, 0, 1)?;
                if m != w[0] {
                    return Err(format!(
                        "input 1: expected {} channels (the output channels of the weight, input 0), found {m}",
                        w[0]
                    ));
                }
                check_groups(conv, w[1] * conv.groups, &w)?;
                let want = conv_out(conv, *input, [w[2], w[3]])?;
                expect_spatial(1, ohw, want)?;
                Ok(vec![out_type(inputs[1], n, w[1] * conv.groups, *input)])
            }
            Conv::Conv2dGradWeight { conv, kernel } => {
                check_conv(conv)?;
                expect_arity(inputs, 2)?;
                let (n, ch, hw) = nchw(inputs, 0, "x")?;
                let (n2, m, ohw) = nchw(inputs, 1, "dy")?;
                expect_dtype_like(inputs, 0, 1)?;
                if n != n2 {
                    return Err(format!(
                        "input 1: expected batch {n} like input 0, found {n2}"
                    ));
                }
                if kernel.contains(&0) {
                    return Err(format!(
                        "attribute 'kernel': expected positive sizes, found {kernel:?}"
                    ));
                }
                let w = [m, ch / conv.groups.max(1), kernel[0], kernel[1]];
                check_groups(conv, ch, &w)?;
                let want = conv_out(conv, hw, *kernel)?;
                expect_spatial(1, ohw, want)?;
                let shape = Shape::of(&w);
                Ok(vec![TensorType::new(inputs[0].dtype, shape)])
            }
            Conv::MaxPool2d(p) | Conv::AvgPool2d { pool: p, .. } => {
                check_pool(p)?;
                expect_arity(inputs, 1)?;
                let (n, ch, hw) = nchw(inputs, 0, "x")?;
                let out = pool_out(p, hw)?;
                Ok(vec![out_type(inputs[0], n, ch, out)])
            }
            Conv::MaxPool2dGrad(p) | Conv::MaxPool2dSelect(p) => {
                check_pool(p)?;
                expect_arity(inputs, 2)?;
                let (n, ch, hw) = nchw(inputs, 0, "x")?;
                let (n2, ch2, ohw) = nchw(inputs, 1, "the second input")?;
                expect_dtype_like(inputs, 0, 1)?;
                let out = pool_out(p, hw)?;
                let grad = matches!(self, Conv::MaxPool2dGrad(_));
                let want = if grad { out } else { hw };
                if n != n2 || ch != ch2 {
                    return Err(format!(
                        "input 1: expected batch {n} and {ch} channels like input 0, found {n2} and {ch2}"
                    ));
                }
                expect_spatial(1, ohw, want)?;
                let out = if grad { hw } else { out };
                Ok(vec![out_type(inputs[0], n, ch, out)])
            }
            Conv::AvgPool2dGrad { pool, input, .. } => {
                check_pool(pool)?;
                expect_arity(inputs, 1)?;
                let (n, ch, ohw) = nchw(inputs, 0, "dy")?;
                let want = pool_out(pool, *input)?;
                expect_spatial(0, ohw, want)?;
                Ok(vec![out_type(inputs[0], n, ch, *input)])
            }
        }
    }

    fn vjp(&self, cx: &mut VjpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (i0, i1) = (cx.inputs[0], cx.inputs.get(1).copied());
        match *self {
            Conv::Conv2d(c) => {
                let w = i1.expect("arity checked");
                let dy = cx.cotangent(0)?;
                let (hw, k) = (spatial(cx.b, i0), spatial(cx.b, w));
                let dx = want(cx, 0, |b| b.conv2d_grad_input(w, dy, c, hw))?;
                let dw = want(cx, 1, |b| b.conv2d_grad_weight(i0, dy, c, k))?;
                Ok(vec![dx, dw])
            }
            Conv::Conv2dGradInput { conv, .. } => {
                // dx = GI(w, dy); with its cotangent C (x-shaped):
                // ⟨C, GI(w, dy)⟩ = ⟨conv(C, w), dy⟩ = ⟨w, GW(C, dy)⟩.
                let (w, dy) = (i0, i1.expect("arity checked"));
                let c = cx.cotangent(0)?;
                let k = spatial(cx.b, w);
                let dw = want(cx, 0, |b| b.conv2d_grad_weight(c, dy, conv, k))?;
                let ddy = want(cx, 1, |b| b.conv2d(c, w, conv))?;
                Ok(vec![dw, ddy])
            }
            Conv::Conv2dGradWeight { conv, .. } => {
                // dw = GW(x, dy); with its cotangent C (w-shaped):
                // ⟨C, GW(x, dy)⟩ = ⟨conv(x, C), dy⟩ = ⟨x, GI(C, dy)⟩.
                let (x, dy) = (i0, i1.expect("arity checked"));
                let c = cx.cotangent(0)?;
                let hw = spatial(cx.b, x);
                let dx = want(cx, 0, |b| b.conv2d_grad_input(c, dy, conv, hw))?;
                let ddy = want(cx, 1, |b| b.conv2d(x, c, conv))?;
                Ok(vec![dx, ddy])
            }
            Conv::MaxPool2d(p) => {
                let dy = cx.cotangent(0)?;
                let dx = want(cx, 0, |b| b.max_pool2d_grad(i0, dy, p))?;
                Ok(vec![dx])
            }
            Conv::MaxPool2dGrad(p) => {
                let c = cx.cotangent(0)?;
                let ddy = want(cx, 1, |b| b.max_pool2d_select(i0, c, p))?;
                Ok(vec![None, ddy])
            }
            Conv::MaxPool2dSelect(p) => {
                let c = cx.cotangent(0)?;
                let dv = want(cx, 1, |b| b.max_pool2d_grad(i0, c, p))?;
                Ok(vec![None, dv])
            }
            Conv::AvgPool2d {
                pool,
                count_include_pad,
            } => {
                let dy = cx.cotangent(0)?;
                let hw = spatial(cx.b, i0);
                let dx = want(cx, 0, |b| {
                    b.avg_pool2d_grad(dy, pool, count_include_pad, hw)
                })?;
                Ok(vec![dx])
            }
            Conv::AvgPool2dGrad {
                pool,
                count_include_pad,
                ..
            } => {
                let c = cx.cotangent(0)?;
                let ddy = want(cx, 0, |b| b.avg_pool2d(c, pool, count_include_pad))?;
                Ok(vec![ddy])
            }
        }
    }

    fn jvp(&self, cx: &mut JvpCx<'_>) -> Result<Vec<Option<ValueId>>> {
        let (i0, i1) = (cx.inputs[0], cx.inputs.get(1).copied());
        let (t0, t1) = (cx.tangents[0], cx.tangents.get(1).copied().flatten());
        let mut terms = Vec::new();
        match *self {
            Conv::Conv2d(c) => {
                let w = i1.expect("arity checked");
                if let Some(tx) = t0 {
                    terms.push(cx.b.conv2d(tx, w, c)?);
                }
                if let Some(tw) = t1 {
                    terms.push(cx.b.conv2d(i0, tw, c)?);
                }
            }
            Conv::Conv2dGradInput { conv, input } => {
                let dy = i1.expect("arity checked");
                if let Some(tw) = t0 {
                    terms.push(cx.b.conv2d_grad_input(tw, dy, conv, input)?);
                }
                if let Some(tdy) = t1 {
                    terms.push(cx.b.conv2d_grad_input(i0, tdy, conv, input)?);
                }
            }
            Conv::Conv2dGradWeight { conv, kernel } => {
                let dy = i1.expect("arity checked");
                if let Some(tx) = t0 {
                    terms.push(cx.b.conv2d_grad_weight(tx, dy, conv, kernel)?);
                }
                if let Some(tdy) = t1 {
                    terms.push(cx.b.conv2d_grad_weight(i0, tdy, conv, kernel)?);
                }
            }
            Conv::MaxPool2d(p) => {
                if let Some(tx) = t0 {
                    terms.push(cx.b.max_pool2d_select(i0, tx, p)?);
                }
            }
            Conv::MaxPool2dGrad(p) => {
                if let Some(t) = t1 {
                    terms.push(cx.b.max_pool2d_grad(i0, t, p)?);
                }
            }
            Conv::MaxPool2dSelect(p) => {
                if let Some(t) = t1 {
                    terms.push(cx.b.max_pool2d_select(i0, t, p)?);
                }
            }
            Conv::AvgPool2d {
                pool,
                count_include_pad,
            } => {
                if let Some(t) = t0 {
                    terms.push(cx.b.avg_pool2d(t, pool, count_include_pad)?);
                }
            }
            Conv::AvgPool2dGrad {
                pool,
                count_include_pad,
                input,
            } => {
                if let Some(t) = t0 {
                    terms.push(cx.b.avg_pool2d_grad(t, pool, count_include_pad, input)?);
                }
            }
        }
        let mut it = terms.into_iter();
        let Some(mut acc) = it.next() else {
            return Ok(vec![None]);
        };
        for t in it {
            acc = cx.b.add(acc, t)?;
        }
        Ok(vec![Some(acc)])
    }

    /// Convolutions: `2·N·M·oH·oW·(C/groups)·kH·kW` (a multiply-add per
    /// tap of every output, the same for both gradients); pools: one
    /// operation per tap of every output.
    fn cost(&self, inputs: &[&TensorType], outputs: &[&TensorType]) -> Cost {
        let io: u64 = inputs.iter().chain(outputs).map(|t| bytes(t)).sum();
        let fixed = |t: &TensorType| -> u64 {
            t.shape.dims()[1..]
                .iter()
                .map(|d| d.fixed().unwrap_or(1) as u64)
                .product()
        };
        let flops = match self {
            // numel(y) · numel(w) / M = N·M·oH·oW · (C/g)·kH·kW.
            Conv::Conv2d(_) => 2 * numel(outputs[0]) * fixed(inputs[1]),
            Conv::Conv2dGradInput { .. } => 2 * numel(inputs[1]) * fixed(inputs[0]),
            Conv::Conv2dGradWeight { .. } => 2 * numel(inputs[1]) * fixed(outputs[0]),
            Conv::MaxPool2d(p) | Conv::MaxPool2dSelect(p) => {
                numel(outputs[0]) * (p.kernel[0] * p.kernel[1]) as u64
            }
            Conv::MaxPool2dGrad(p) => numel(inputs[1]) * (p.kernel[0] * p.kernel[1]) as u64,
            Conv::AvgPool2d { pool, .. } => {
                numel(outputs[0]) * (pool.kernel[0] * pool.kernel[1]) as u64
            }
            Conv::AvgPool2dGrad { pool, .. } => {
                numel(inputs[0]) * (pool.kernel[0] * pool.kernel[1]) as u64
            }
        };
        Cost { flops, bytes: io }
    }

    fn recompute(&self) -> Recompute {
        match self {
            Conv::Conv2d(_) | Conv::Conv2dGradInput { .. } | Conv::Conv2dGradWeight { .. } => {
                Recompute::Expensive
            }
            _ => Recompute::Cheap,
        }
    }

    fn eval(&self, inputs: &[&Tensor], _cx: &EvalCx) -> std::result::Result<Vec<Tensor>, String> {
        let out = match (self, inputs) {
            (Conv::Conv2d(c), [x, w]) => {
                let g = ConvGeom::new(c, &x.shape, &w.shape)?;
                let mut y = vec![0.0; g.y_len()];
                g.each(|xi, wi, yi| y[yi] += x.data[xi] * w.data[wi]);
                Tensor::new(g.y_shape(), y)
            }
            (Conv::Conv2dGradInput { conv, input }, [w, dy]) => {
                let x_shape = [dy.shape[0], w.shape[1] * conv.groups, input[0], input[1]];
                let g = ConvGeom::new(conv, &x_shape, &w.shape)?;
                let mut dx = vec![0.0; x_shape.iter().product()];
                g.each(|xi, wi, yi| dx[xi] += dy.data[yi] * w.data[wi]);
                Tensor::new(x_shape.to_vec(), dx)
            }
            (Conv::Conv2dGradWeight { conv, kernel }, [x, dy]) => {
                let ch = x.shape[1];
                let w_shape = [dy.shape[1], ch / conv.groups, kernel[0], kernel[1]];
                let g = ConvGeom::new(conv, &x.shape, &w_shape)?;
                let mut dw = vec![0.0; w_shape.iter().product()];
                g.each(|xi, wi, yi| dw[wi] += dy.data[yi] * x.data[xi]);
                Tensor::new(w_shape.to_vec(), dw)
            }
            (Conv::MaxPool2d(p), [x]) => {
                let g = PoolGeom::new(p, &x.shape)?;
                let mut y = vec![f64::NEG_INFINITY; g.y_len()];
                g.each_argmax(&x.data, |yi, xi| y[yi] = x.data[xi]);
                Tensor::new(g.y_shape(), y)
            }
            (Conv::MaxPool2dGrad(p), [x, dy]) => {
                let g = PoolGeom::new(p, &x.shape)?;
                let mut dx = vec![0.0; x.data.len()];
                g.each_argmax(&x.data, |yi, xi| dx[xi] += dy.data[yi]);
                Tensor::new(x.shape.clone(), dx)
            }
            (Conv::MaxPool2dSelect(p), [x, v]) => {
                let g = PoolGeom::new(p, &x.shape)?;
                let mut y = vec![0.0; g.y_len()];
                g.each_argmax(&x.data, |yi, xi| y[yi] = v.data[xi]);
                Tensor::new(g.y_shape(), y)
            }
            (
                Conv::AvgPool2d {
                    pool,
                    count_include_pad,
                },
                [x],
            ) => {
                let g = PoolGeom::new(pool, &x.shape)?;
                let mut y = vec![0.0; g.y_len()];
                g.each_avg(*count_include_pad, |yi, xi, scale| {
                    y[yi] += x.data[xi] * scale
                });
                Tensor::new(g.y_shape(), y)
            }
            (
                Conv::AvgPool2dGrad {
                    pool,
                    count_include_pad,
                    input,
                },
                [dy],
            ) => {
                let x_shape = [dy.shape[0], dy.shape[1], input[0], input[1]];
                let g = PoolGeom::new(pool, &x_shape)?;
                let mut dx = vec![0.0; x_shape.iter().product()];
                g.each_avg(*count_include_pad, |yi, xi, scale| {
                    dx[xi] += dy.data[yi] * scale
                });
                Tensor::new(x_shape.to_vec(), dx)
            }
            _ => {
                return Err(format!(
                    "{}: wrong number of inputs ({})",
                    self.name(),
                    inputs.len()
                ));
            }
        };
        Ok(vec![out])
    }
}

// ----- geometry (shared with the backends' lowering) -----

/// Output size along one axis: `floor` (or `ceil`, dropping a window that
/// starts in the end padding) of `(size + pads - d·(k-1) - 1) / s` plus 1;
/// `None` when not even one window fits.
pub fn out_size(
    size: usize,
    k: usize,
    s: usize,
    d: usize,
    pad: [usize; 2],
    ceil: bool,
) -> Option<usize> {
    let padded = size + pad[0] + pad[1];
    let span = d * (k.max(1) - 1) + 1;
    if padded < span || s == 0 {
        return None;
    }
    let mut out = (padded - span) / s + 1;
    if ceil && !(padded - span).is_multiple_of(s) {
        out += 1;
        if (out - 1) * s >= size + pad[0] {
            out -= 1;
        }
    }
    Some(out)
}

fn conv_out(
    c: &Conv2dAttrs,
    hw: [usize; 2],
    k: [usize; 2],
) -> std::result::Result<[usize; 2], String> {
    let mut out = [0; 2];
    for a in 0..2 {
        let pad = [c.pads[a], c.pads[a + 2]];
        out[a] = out_size(hw[a], k[a], c.strides[a], c.dilations[a], pad, false)
            .ok_or_else(|| {
                format!(
                    "input 0: spatial size {hw:?} with pads {:?} is smaller than the dilated kernel {k:?} (dilations {:?})",
                    c.pads, c.dilations
                )
            })?;
    }
    Ok(out)
}

/// Output spatial sizes of a pool over `hw`.
pub fn pool_out(p: &Pool2dAttrs, hw: [usize; 2]) -> std::result::Result<[usize; 2], String> {
    let mut out = [0; 2];
    for a in 0..2 {
        let pad = [p.pads[a], p.pads[a + 2]];
        out[a] = out_size(
            hw[a],
            p.kernel[a],
            p.strides[a],
            p.dilations[a],
            pad,
            p.ceil_mode,
        )
        .ok_or_else(|| {
            format!(
                "input 0: spatial size {hw:?} with pads {:?} is smaller than the window {:?} (dilations {:?})",
                p.pads, p.kernel, p.dilations
            )
        })?;
    }
    Ok(out)
}

/// The index loops of a convolution: every (x, w, y) element triple that
/// multiplies, in flat row-major indices.
struct ConvGeom {
    c: Conv2dAttrs,
    n: usize,
    ch: usize,
    hw: [usize; 2],
    m: usize,
    cg: usize,
    k: [usize; 2],
    out: [usize; 2],
}

impl ConvGeom {
    fn new(c: &Conv2dAttrs, x: &[usize], w: &[usize]) -> std::result::Result<ConvGeom, String> {
        if x.len() != 4 || w.len() != 4 || c.groups == 0 || w[1] * c.groups != x[1] {
            return Err(format!(
                "conv: x {x:?} and w {w:?} do not match groups {}",
                c.groups
            ));
        }
        let (hw, k) = ([x[2], x[3]], [w[2], w[3]]);
        let out = conv_out(c, hw, k)?;
        Ok(ConvGeom {
            c: *c,
            n: x[0],
            ch: x[1],
            hw,
            m: w[0],
            cg: w[1],
            k,
            out,
        })
    }

    fn y_len(&self) -> usize {
        self.n * self.m * self.out[0] * self.out[1]
    }

    fn y_shape(&self) -> Vec<usize> {
        vec![self.n, self.m, self.out[0], self.out[1]]
    }

    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [h, w] = self.hw;
        let [oh, ow] = self.out;
        let mg = self.m / self.c.groups;
        for n in 0..self.n {
            for m in 0..self.m {
                let g = m / mg.max(1);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((n * self.m + m) * oh + oy) * ow + ox;
                        for ci in 0..self.cg {
                            let ch = g * self.cg + ci;
                            for ky in 0..self.k[0] {
                                let iy = (oy * self.c.strides[0] + ky * self.c.dilations[0])
                                    .wrapping_sub(self.c.pads[0]);
                                if iy >= h {
                                    continue;
                                }
                                for kx in 0..self.k[1] {
                                    let ix = (ox * self.c.strides[1] + kx * self.c.dilations[1])
                                        .wrapping_sub(self.c.pads[1]);
                                    if ix >= w {
                                        continue;
                                    }
                                    let xi = ((n * self.ch + ch) * h + iy) * w + ix;
                                    let wi = ((m * self.cg + ci) * self.k[0] + ky) * self.k[1] + kx;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The windows of a pool.
struct PoolGeom {
    p: Pool2dAttrs,
    planes: usize,
    n: usize,
    ch: usize,
    hw: [usize; 2],
    out: [usize; 2],
}

impl PoolGeom {
    fn new(p: &Pool2dAttrs, x: &[usize]) -> std::result::Result<PoolGeom, String> {
        if x.len() != 4 {
            return Err(format!("pool: expected [N, C, H, W], found {x:?}"));
        }
        let hw = [x[2], x[3]];
        Ok(PoolGeom {
            p: *p,
            planes: x[0] * x[1],
            n: x[0],
            ch: x[1],
            hw,
            out: pool_out(p, hw)?,
        })
    }

    fn y_len(&self) -> usize {
        self.planes * self.out[0] * self.out[1]
    }

    fn y_shape(&self) -> Vec<usize> {
        vec![self.n, self.ch, self.out[0], self.out[1]]
    }

    /// Window taps along axis `a` of output position `o`: (position in the
    /// input or `None` for padding, whether inside the padded input).
    fn taps(&self, a: usize, o: usize) -> impl Iterator<Item = (Option<usize>, bool)> + use<> {
        let (s, d, k) = (self.p.strides[a], self.p.dilations[a], self.p.kernel[a]);
        let (pb, size, pe) = (self.p.pads[a], self.hw[a], self.p.pads[a + 2]);
        (0..k).map(move |t| {
            let pos = o * s + t * d; // in padded coordinates
            let inside = pos >= pb && pos < pb + size;
            (inside.then(|| pos - pb), pos < pb + size + pe)
        })
    }

    /// Calls `f(y index, x index of the window's argmax)` for every window
    /// with at least one tap in the input.
    fn each_argmax(&self, x: &[f64], mut f: impl FnMut(usize, usize)) {
        let [h, w] = self.hw;
        let [oh, ow] = self.out;
        for plane in 0..self.planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best: Option<(usize, f64)> = None;
                    for (iy, _) in self.taps(0, oy) {
                        let Some(iy) = iy else { continue };
                        for (ix, _) in self.taps(1, ox) {
                            let Some(ix) = ix else { continue };
                            let xi = (plane * h + iy) * w + ix;
                            if best.is_none_or(|(_, v)| x[xi] > v) {
                                best = Some((xi, x[xi]));
                            }
                        }
                    }
                    if let Some((xi, _)) = best {
                        f((plane * oh + oy) * ow + ox, xi);
                    }
                }
            }
        }
    }

    /// Calls `f(y index, x index, 1 / count)` for every tap in the input.
    fn each_avg(&self, count_include_pad: bool, mut f: impl FnMut(usize, usize, f64)) {
        let [h, w] = self.hw;
        let [oh, ow] = self.out;
        for oy in 0..oh {
            for ox in 0..ow {
                let count = |a: usize, o: usize| {
                    self.taps(a, o)
                        .filter(|&(pos, padded)| {
                            if count_include_pad {
                                padded
                            } else {
                                pos.is_some()
                            }
                        })
                        .count()
                };
                let total = count(0, oy) * count(1, ox);
                if total == 0 {
                    continue;
                }
                let scale = 1.0 / total as f64;
                for plane in 0..self.planes {
                    let yi = (plane * oh + oy) * ow + ox;
                    for (iy, _) in self.taps(0, oy) {
                        let Some(iy) = iy else { continue };
                        for (ix, _) in self.taps(1, ox) {
                            let Some(ix) = ix else { continue };
                            f(yi, (plane * h + iy) * w + ix, scale);
                        }
                    }
                }
            }
        }
    }
}

// ----- helpers -----

/// The cotangent of input `i` from `build`, or `None` when not wanted.
fn want(
    cx: &mut VjpCx<'_>,
    i: usize,
    build: impl FnOnce(&mut crate::Builder) -> Result<ValueId>,
) -> Result<Option<ValueId>> {
    if cx.wants.get(i).copied().unwrap_or(false) {
        build(cx.b).map(Some)
    } else {
        Ok(None)
    }
}

/// The fixed last two dims of a value (H, W or kH, kW).
fn spatial(b: &crate::Builder, v: ValueId) -> [usize; 2] {
    let d = b.shape(v).dims();
    let r = d.len();
    [d[r - 2].fixed().unwrap_or(0), d[r - 1].fixed().unwrap_or(0)]
}

fn ints<const N: usize>(v: &[usize; N]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

fn conv_attrs(a: &mut Attrs, c: &Conv2dAttrs) {
    a.insert("strides".into(), ints(&c.strides));
    a.insert("pads".into(), ints(&c.pads));
    a.insert("dilations".into(), ints(&c.dilations));
    a.insert("groups".into(), Attr::Int(c.groups as i64));
}

fn pool_attrs(a: &mut Attrs, p: &Pool2dAttrs) {
    a.insert("kernel".into(), ints(&p.kernel));
    a.insert("strides".into(), ints(&p.strides));
    a.insert("pads".into(), ints(&p.pads));
    a.insert("dilations".into(), ints(&p.dilations));
    a.insert("ceil_mode".into(), Attr::Bool(p.ceil_mode));
}

/// `N` non-negative ints (at least `min` each) of attribute `name`.
fn array<const N: usize>(
    r: &mut AttrReader<'_>,
    name: &'static str,
    default: Option<[usize; N]>,
    min: usize,
) -> std::result::Result<[usize; N], String> {
    let v = r.ints(name, default.map(|d| d.iter().map(|&x| x as i64).collect()))?;
    let bad = || format!("attribute '{name}': expected {N} ints of at least {min}, found {v:?}");
    if v.len() != N {
        return Err(bad());
    }
    let mut out = [0; N];
    for (o, &x) in out.iter_mut().zip(&v) {
        *o = usize::try_from(x)
            .ok()
            .filter(|&x| x >= min)
            .ok_or_else(bad)?;
    }
    Ok(out)
}

fn pair(
    r: &mut AttrReader<'_>,
    name: &'static str,
    default: Option<[usize; 2]>,
    min: usize,
) -> std::result::Result<[usize; 2], String> {
    array(r, name, default, min)
}

fn parse_conv(r: &mut AttrReader<'_>) -> std::result::Result<Conv2dAttrs, String> {
    let strides = pair(r, "strides", Some([1, 1]), 1)?;
    let pads = array(r, "pads", Some([0; 4]), 0)?;
    let dilations = pair(r, "dilations", Some([1, 1]), 1)?;
    let groups = r.int("groups", Some(1))?;
    let groups = usize::try_from(groups)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| format!("attribute 'groups': expected a positive int, found {groups}"))?;
    Ok(Conv2dAttrs {
        strides,
        pads,
        dilations,
        groups,
    })
}

fn parse_pool(r: &mut AttrReader<'_>) -> std::result::Result<Pool2dAttrs, String> {
    let kernel = pair(r, "kernel", None, 1)?;
    let strides = pair(r, "strides", Some([1, 1]), 1)?;
    let pads = array(r, "pads", Some([0; 4]), 0)?;
    let dilations = pair(r, "dilations", Some([1, 1]), 1)?;
    let ceil_mode = r.boolean("ceil_mode", Some(false))?;
    let p = Pool2dAttrs {
        kernel,
        strides,
        pads,
        dilations,
        ceil_mode,
    };
    check_pool(&p)?;
    Ok(p)
}

/// The checks of the parsers, for ops built without parsing (Builder).
fn check_conv(c: &Conv2dAttrs) -> std::result::Result<(), String> {
    if c.strides.contains(&0) || c.dilations.contains(&0) || c.groups == 0 {
        return Err(format!(
            "attributes: strides {:?}, dilations {:?} and groups {} must be positive",
            c.strides, c.dilations, c.groups
        ));
    }
    Ok(())
}

fn check_pool(p: &Pool2dAttrs) -> std::result::Result<(), String> {
    if p.kernel.contains(&0) || p.strides.contains(&0) || p.dilations.contains(&0) {
        return Err(format!(
            "attributes: kernel {:?}, strides {:?} and dilations {:?} must be positive",
            p.kernel, p.strides, p.dilations
        ));
    }
    // A window must have a tap in the input: padding smaller than the
    // dilated window on each side.
    for a in 0..2 {
        let span = p.dilations[a] * (p.kernel[a] - 1) + 1;
        if p.pads[a] >= span || p.pads[a + 2] >= span {
            return Err(format!(
                "attribute 'pads': {:?} must be smaller than the dilated window {span} along axis {a}",
                p.pads
            ));
        }
    }
    Ok(())
}

/// Input `i` as `[N, C, H, W]`: N may be the batch symbol, the rest fixed.
fn nchw(
    inputs: &[&TensorType],
    i: usize,
    what: &str,
) -> std::result::Result<(Dim, usize, [usize; 2]), String> {
    expect_float(inputs, i)?;
    match inputs[i].shape.dims() {
        [n, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] => Ok((*n, *c, [*h, *w])),
        _ => Err(format!(
            "input {i} ({what}): expected [N, C, H, W] with fixed C, H and W (only 2-D is supported), found {}",
            inputs[i].shape
        )),
    }
}

/// Input `i` as a weight `[M, C/groups, kH, kW]`, all fixed.
fn weight(inputs: &[&TensorType], i: usize) -> std::result::Result<[usize; 4], String> {
    expect_float(inputs, i)?;
    match inputs[i].shape.dims() {
        [Dim::Fixed(m), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] => Ok([*m, *c, *h, *w]),
        _ => Err(format!(
            "input {i} (weight): expected [M, C/groups, kH, kW] with fixed dims, found {}",
            inputs[i].shape
        )),
    }
}

fn check_groups(c: &Conv2dAttrs, ch: usize, w: &[usize; 4]) -> std::result::Result<(), String> {
    let g = c.groups;
    if !ch.is_multiple_of(g) || !w[0].is_multiple_of(g) || w[1] * g != ch {
        return Err(format!(
            "weight {w:?}: expected [M, C/groups, kH, kW] with M divisible by groups = {g} and {ch} input channels = {} × groups",
            w[1]
        ));
    }
    if w[2] == 0 || w[3] == 0 {
        return Err(format!("weight {w:?}: the kernel must not be empty"));
    }
    Ok(())
}

fn expect_dtype_like(
    inputs: &[&TensorType],
    a: usize,
    b: usize,
) -> std::result::Result<(), String> {
    if inputs[a].dtype == inputs[b].dtype {
        Ok(())
    } else {
        Err(format!(
            "input {b}: expected {} like input {a}, found {}",
            inputs[a].dtype, inputs[b].dtype
        ))
    }
}

fn expect_spatial(
    i: usize,
    found: [usize; 2],
    want: [usize; 2],
) -> std::result::Result<(), String> {
    if found == want {
        Ok(())
    } else {
        Err(format!(
            "input {i}: expected spatial size {want:?} from the attributes, found {found:?}"
        ))
    }
}

fn out_type(like: &TensorType, n: Dim, c: usize, hw: [usize; 2]) -> TensorType {
    TensorType::new(
        like.dtype,
        Shape(vec![n, Dim::Fixed(c), Dim::Fixed(hw[0]), Dim::Fixed(hw[1])]),
    )
}

#[cfg(test)]
#[path = "tests/conv.rs"]
mod tests;
