//! Fused elementwise chains: several elementwise calls over one output
//! shape in one pass ([`crate::Backend::fused_elementwise`]).
//!
//! The output range is cut in blocks of [`BLOCK`] elements. For each block
//! the inputs are gathered (through their broadcast strides) into stack
//! buffers, every step runs over the block with the scalar function of the
//! unfused kernel (so the bits are the same), and only the stored steps are
//! written back. Intermediates never reach memory: a chain of `n` steps
//! reads its inputs once and writes its stored outputs once, where the
//! unfused calls read and write every intermediate. Large outputs are split
//! over rayon's pool, each task writing its own ranges of the outputs.

use super::PARALLEL_THRESHOLD;
use super::elementwise::{MAX_RANK, gelu_erf_prime, gelu_tanh_prime, map_loop, with_unary};
use crate::backend::{BinaryOp, CompareOp, Error, FusedArg, FusedElementwise, FusedOp, Result};

/// Elements per block: every step's block stays in L1.
const BLOCK: usize = 256;
/// Steps and inputs a chain may have (the rewrite that builds chains keeps
/// to these).
pub const MAX_STEPS: usize = 8;
pub const MAX_INPUTS: usize = 8;
/// Elements a parallel task gets at least.
const MIN_TASK: usize = 1 << 13;

/// An input's elements.
#[derive(Debug, Clone, Copy, Default)]
pub enum In<'a> {
    #[default]
    None,
    F32(&'a [f32]),
    U8(&'a [u8]),
}

/// A step's output slice, when the step is stored.
#[derive(Debug, Default)]
pub enum Out<'a> {
    #[default]
    None,
    F32(&'a mut [f32]),
    U8(&'a mut [u8]),
}

impl<'a> Out<'a> {
    fn split_at(self, mid: usize) -> (Out<'a>, Out<'a>) {
        match self {
            Out::None => (Out::None, Out::None),
            Out::F32(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Out::F32(a), Out::F32(b))
            }
            Out::U8(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Out::U8(a), Out::U8(b))
            }
        }
    }
}

/// A checked chain: its layout on the stack and its operands' slices.
struct Chain<'a> {
    f: &'a FusedElementwise,
    rank: usize,
    shape: [usize; MAX_RANK],
    inputs: [In<'a>; MAX_INPUTS],
    /// Per input: contiguous (1), broadcast scalar (0) or strided (2).
    kind: [u8; MAX_INPUTS],
}

/// Checks `f` against its slices: operand counts and kinds, steps reading
/// only earlier steps, strides inside each input, outputs of the shape's
/// length. `outs[s]` must be set exactly for the stored steps.
pub fn check(f: &FusedElementwise, inputs: &[In<'_>], outs: &[Out<'_>]) -> Result<usize> {
    const WHAT: &str = "fused_elementwise";
    let n = super::elementwise::check_shape(WHAT, &f.shape)?;
    if f.steps.is_empty() || f.steps.len() > MAX_STEPS || f.inputs.len() > MAX_INPUTS {
        return Err(Error::Invalid(format!(
            "{WHAT}: {} steps and {} inputs (1..={MAX_STEPS} steps, at most {MAX_INPUTS} inputs)",
            f.steps.len(),
            f.inputs.len()
        )));
    }
    if inputs.len() != f.inputs.len() || outs.len() != f.steps.len() {
        return Err(Error::Invalid(format!(
            "{WHAT}: operand slices do not match the chain"
        )));
    }
    for (i, (inp, s)) in f.inputs.iter().zip(inputs).enumerate() {
        let len = match s {
            In::F32(x) => x.len(),
            In::U8(x) => x.len(),
            In::None => return Err(Error::Invalid(format!("{WHAT}: input {i} missing"))),
        };
        super::elementwise::check_strides(WHAT, &f.shape, &inp.strides, len)?;
    }
    let last = f.steps.len() - 1;
    for (k, (s, o)) in f.steps.iter().zip(outs).enumerate() {
        crate::backend::check_fused_step(WHAT, k, s)?;
        for (j, a) in s.args.iter().enumerate() {
            let bytes = |i: usize| !matches!(inputs[i], In::F32(_));
            crate::backend::check_fused_operand(WHAT, (k, s), j, inputs.len(), bytes)?;
            // Unary ops and GELU's backward read their inputs contiguously.
            if let FusedArg::Input(i) = *a
                && !matches!(
                    s.op,
                    FusedOp::Binary(_) | FusedOp::Compare(_) | FusedOp::Select
                )
                && !is_contiguous(&f.shape, &f.inputs[i].strides)
            {
                return Err(Error::Invalid(format!(
                    "{WHAT}: step {k} operand {j} is invalid"
                )));
            }
        }
        let (stored, len) = match o {
            Out::None => (false, n),
            Out::F32(x) => (true, x.len()),
            Out::U8(x) => (true, x.len()),
        };
        let compare = matches!(s.op, FusedOp::Compare(_));
        if stored != (s.store || k == last)
            || len != n
            || (stored && compare != matches!(o, Out::U8(_)))
        {
            return Err(Error::Invalid(format!(
                "{WHAT}: output of step {k} is invalid"
            )));
        }
    }
    Ok(n)
}

/// Whether `strides` are the row-major strides of `shape` (no allocation:
/// this runs inside steps).
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    let mut want = 1;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if s != want {
            return false;
        }
        want *= d;
    }
    true
}

/// Runs the chain `f` (checked by [`check`]) over its shape.
pub fn fused_elementwise(f: &FusedElementwise, inputs: &[In<'_>], outs: [Out<'_>; MAX_STEPS]) {
    let n: usize = f.shape.iter().product();
    if n == 0 {
        return;
    }
    let mut c = Chain {
        f,
        rank: f.shape.len().max(1),
        shape: [1; MAX_RANK],
        inputs: [In::None; MAX_INPUTS],
        kind: [2; MAX_INPUTS],
    };
    c.shape[..f.shape.len()].copy_from_slice(&f.shape);
    for (i, inp) in f.inputs.iter().enumerate() {
        c.inputs[i] = inputs[i];
        c.kind[i] = if is_contiguous(&f.shape, &inp.strides) {
            1
        } else if inp.strides.iter().all(|&s| s == 0) {
            0
        } else {
            2
        };
    }
    let arr = outs;
    let threads = rayon::current_num_threads();
    if n >= PARALLEL_THRESHOLD && threads > 1 {
        let task = n
            .div_ceil(4 * threads)
            .max(MIN_TASK)
            .next_multiple_of(BLOCK);
        c.split(0, n, arr, task);
    } else {
        c.leaf(0, n, arr);
    }
}

impl Chain<'_> {
    fn split(&self, start: usize, len: usize, outs: [Out<'_>; MAX_STEPS], task: usize) {
        if len <= task {
            self.leaf(start, len, outs);
            return;
        }
        let mid = (len / 2).next_multiple_of(BLOCK).min(len);
        let mut lo: [Out<'_>; MAX_STEPS] = Default::default();
        let mut hi: [Out<'_>; MAX_STEPS] = Default::default();
        for (k, o) in outs.into_iter().enumerate() {
            (lo[k], hi[k]) = o.split_at(mid);
        }
        rayon::join(
            || self.split(start, mid, lo, task),
            || self.split(start + mid, len - mid, hi, task),
        );
    }

    /// Elements `start..start + len` of the chain, in the widest build the
    /// CPU runs; `outs` hold exactly those elements.
    fn leaf(&self, start: usize, len: usize, mut outs: [Out<'_>; MAX_STEPS]) {
        widest!(self.leaf_generic(start, len, &mut outs))
    }

    #[inline(always)]
    fn leaf_generic(&self, start: usize, len: usize, outs: &mut [Out<'_>; MAX_STEPS]) {
        let mut ins = [[0f32; BLOCK]; MAX_INPUTS];
        let mut vals = [[0f32; BLOCK]; MAX_STEPS];
        let mut done = 0;
        while done < len {
            let n = BLOCK.min(len - done);
            for (i, buf) in ins.iter_mut().enumerate().take(self.f.inputs.len()) {
                self.gather(i, start + done, &mut buf[..n]);
            }
            for (k, step) in self.f.steps.iter().enumerate() {
                let (before, rest) = vals.split_at_mut(k);
                let y = &mut rest[0][..n];
                let arg = |j: usize| -> &[f32] {
                    match step.args[j] {
                        FusedArg::Input(i) => &ins[i][..n],
                        FusedArg::Step(p) => &before[p][..n],
                    }
                };
                eval(step.op, arg, y);
            }
            for (k, o) in outs.iter_mut().enumerate().take(self.f.steps.len()) {
                let v = &vals[k][..n];
                match o {
                    Out::None => {}
                    Out::F32(dst) => dst[done..done + n].copy_from_slice(v),
                    Out::U8(dst) => {
                        map_loop(v, &mut dst[done..done + n], &|x: f32| u8::from(x != 0.0))
                    }
                }
            }
            done += n;
        }
    }

    /// Input `i`'s elements `start..start + out.len()` of the chain's shape,
    /// as f32 (bytes as 0 or 1).
    #[inline(always)]
    fn gather(&self, i: usize, start: usize, out: &mut [f32]) {
        let n = out.len();
        match (self.inputs[i], self.kind[i]) {
            (In::F32(x), 1) => out.copy_from_slice(&x[start..start + n]),
            (In::F32(x), 0) => out.fill(x[0]),
            (In::U8(x), 1) => map_loop(&x[start..start + n], out, &|c: u8| f32::from(c != 0)),
            (In::U8(x), 0) => out.fill(f32::from(x[0] != 0)),
            (In::F32(x), _) => self.gather_strided(i, start, out, |o| x[o]),
            (In::U8(x), _) => self.gather_strided(i, start, out, |o| f32::from(x[o] != 0)),
            (In::None, _) => out.fill(0.0),
        }
    }

    /// The strided gather: runs along the last axis, carried odometer-wise.
    #[inline(always)]
    fn gather_strided(&self, i: usize, start: usize, out: &mut [f32], at: impl Fn(usize) -> f32) {
        let (rank, shape) = (self.rank, &self.shape);
        let st = &self.f.inputs[i].strides;
        let stride = |ax: usize| st.get(ax).copied().unwrap_or(0);
        let mut idx = [0usize; MAX_RANK];
        let mut rem = start;
        let mut off = 0;
        for ax in (0..rank).rev() {
            idx[ax] = rem % shape[ax];
            rem /= shape[ax];
            off += idx[ax] * stride(ax);
        }
        let last = rank - 1;
        let sl = stride(last);
        let mut done = 0;
        while done < out.len() {
            let run = (shape[last] - idx[last]).min(out.len() - done);
            for (j, o) in out[done..done + run].iter_mut().enumerate() {
                *o = at(off + j * sl);
            }
            done += run;
            idx[last] += run;
            off += run * sl;
            if idx[last] == shape[last] {
                idx[last] = 0;
                off -= shape[last] * sl;
                for ax in (0..last).rev() {
                    idx[ax] += 1;
                    off += stride(ax);
                    if idx[ax] < shape[ax] {
                        break;
                    }
                    idx[ax] = 0;
                    off -= shape[ax] * stride(ax);
                }
            }
        }
    }
}

/// One step over a block, with the unfused kernels' scalar functions.
#[inline(always)]
fn eval<'b>(op: FusedOp, arg: impl Fn(usize) -> &'b [f32], y: &mut [f32]) {
    #[inline(always)]
    fn zip(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        for (o, (&u, &v)) in y.iter_mut().zip(a.iter().zip(b)) {
            *o = f(u, v);
        }
    }
    match op {
        FusedOp::Unary(u) => {
            let x = arg(0);
            with_unary!(u, f => map_loop(x, y, &f))
        }
        FusedOp::Binary(b) => {
            let (a, c) = (arg(0), arg(1));
            match b {
                BinaryOp::Add => zip(a, c, y, |x, z| x + z),
                BinaryOp::Sub => zip(a, c, y, |x, z| x - z),
                BinaryOp::Mul => zip(a, c, y, |x, z| x * z),
                BinaryOp::Div => zip(a, c, y, |x, z| x / z),
                // Refused by `check`: the unfused kernel special-cases a
                // scalar exponent of 2.
                BinaryOp::Pow => zip(a, c, y, f32::powf),
            }
        }
        FusedOp::Compare(c) => {
            let (a, b) = (arg(0), arg(1));
            match c {
                CompareOp::Equal => zip(a, b, y, |x, z| f32::from(u8::from(x == z))),
                CompareOp::Greater => zip(a, b, y, |x, z| f32::from(u8::from(x > z))),
            }
        }
        FusedOp::Select => {
            let (c, a, b) = (arg(0), arg(1), arg(2));
            for (o, (&c, (&x, &z))) in y.iter_mut().zip(c.iter().zip(a.iter().zip(b))) {
                *o = if c != 0.0 { x } else { z };
            }
        }
        FusedOp::GeluGrad { tanh } => {
            let (x, dy) = (arg(0), arg(1));
            if tanh {
                zip(x, dy, y, |v, d| d * gelu_tanh_prime(v));
            } else {
                zip(x, dy, y, |v, d| d * gelu_erf_prime(v));
            }
        }
    }
}
