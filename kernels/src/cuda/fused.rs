//! Fused elementwise chains on the CUDA backend: the chain checked as the
//! CPU checks it, packed into [`FusedChain`] (mirroring the struct of
//! `kernels/cuda/fused.cu`) and run by one launch of `fused_f32`. Chains
//! with half operands run unfused (each step widened, as the unfused
//! calls do).

use super::device::{BLOCK, CudaBackend, args};
use super::kernels::Kernel;
use super::layout::{MAX_RANK, check_shape, check_strides};
use crate::backend::{
    BinaryOp, CompareOp, ElemType, Error, FusedArg, FusedElementwise, FusedOp, Result, UnaryOp,
    check_fused_operand, check_fused_step, disjoint,
};

/// Most steps and inputs of a chain (as the CPU's).
const MAX_STEPS: usize = 8;
const MAX_INPUTS: usize = 8;

const KIND_UNARY: u32 = 0;
const KIND_BINARY: u32 = 1;
const KIND_COMPARE: u32 = 2;
const KIND_SELECT: u32 = 3;
const KIND_GELU_GRAD: u32 = 4;

/// A chain as `fused_f32` reads it (see `kernels/cuda/fused.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FusedChain {
    rank: u32,
    steps: u32,
    inputs: u32,
    pad: u32,
    shape: [u64; MAX_RANK],
    in_stride: [[u64; MAX_RANK]; MAX_INPUTS],
    in_ptr: [u64; MAX_INPUTS],
    in_size: [u32; MAX_INPUTS],
    op: [u32; MAX_STEPS],
    arg: [[i32; 3]; MAX_STEPS],
    out_ptr: [u64; MAX_STEPS],
}

/// The kernel's code of `op`: kind in the high byte, the op in the low
/// (the `UNARY_*` / `BINARY_*` codes of `kernels/cuda/common.cuh`).
fn op_code(op: FusedOp) -> u32 {
    let unary = |u: UnaryOp| match u {
        UnaryOp::Neg => 0,
        UnaryOp::Exp => 1,
        UnaryOp::Log => 2,
        UnaryOp::Sqrt => 3,
        UnaryOp::Rsqrt => 4,
        UnaryOp::Tanh => 5,
        UnaryOp::Sigmoid => 6,
        UnaryOp::Relu => 7,
        UnaryOp::GeluTanh => 8,
        UnaryOp::GeluErf => 9,
        UnaryOp::Erf => 10,
    };
    let (kind, code) = match op {
        FusedOp::Unary(u) => (KIND_UNARY, unary(u)),
        FusedOp::Binary(b) => (
            KIND_BINARY,
            match b {
                BinaryOp::Add => 0,
                BinaryOp::Sub => 1,
                BinaryOp::Mul => 2,
                BinaryOp::Div => 3,
                // Refused before this (`check_fused_step`).
                BinaryOp::Pow => 4,
            },
        ),
        FusedOp::Compare(CompareOp::Equal) => (KIND_COMPARE, 0),
        FusedOp::Compare(CompareOp::Greater) => (KIND_COMPARE, 1),
        FusedOp::Select => (KIND_SELECT, 0),
        FusedOp::GeluGrad { tanh } => (KIND_GELU_GRAD, u32::from(tanh)),
    };
    (kind << 8) | code
}

impl CudaBackend {
    pub(super) fn run_fused(&mut self, f: &FusedElementwise) -> Result<()> {
        const WHAT: &str = "fused_elementwise";
        let n = check_shape(WHAT, &f.shape)?;
        if f.steps.is_empty() || f.steps.len() > MAX_STEPS || f.inputs.len() > MAX_INPUTS {
            return Err(Error::Invalid(format!(
                "{WHAT}: {} steps and {} inputs (1..={MAX_STEPS} steps, at most {MAX_INPUTS} inputs)",
                f.steps.len(),
                f.inputs.len()
            )));
        }
        let mut c = FusedChain {
            rank: f.shape.len() as u32,
            steps: f.steps.len() as u32,
            inputs: f.inputs.len() as u32,
            pad: 0,
            shape: [1; MAX_RANK],
            in_stride: [[0; MAX_RANK]; MAX_INPUTS],
            in_ptr: [0; MAX_INPUTS],
            in_size: [4; MAX_INPUTS],
            op: [0; MAX_STEPS],
            arg: [[0; 3]; MAX_STEPS],
            out_ptr: [0; MAX_STEPS],
        };
        for (d, &s) in f.shape.iter().enumerate() {
            c.shape[d] = s as u64;
        }
        for (i, inp) in f.inputs.iter().enumerate() {
            let elem = match inp.view.elem {
                ElemType::U8 => ElemType::U8,
                _ => ElemType::F32,
            };
            c.in_ptr[i] = self.ptr("fused_elementwise input", inp.view, elem)?;
            c.in_size[i] = elem.size() as u32;
            check_strides(WHAT, &f.shape, &inp.strides, inp.view.len)?;
            for (d, &s) in inp.strides.iter().enumerate() {
                c.in_stride[i][d] = s as u64;
            }
        }
        let last = f.steps.len() - 1;
        let mut stored = Vec::with_capacity(f.steps.len());
        for (k, s) in f.steps.iter().enumerate() {
            check_fused_step(WHAT, k, s)?;
            for (j, a) in s.args.iter().enumerate() {
                let bytes = |i: usize| c.in_size[i] == 1;
                check_fused_operand(WHAT, (k, s), j, f.inputs.len(), bytes)?;
                c.arg[k][j] = match *a {
                    FusedArg::Step(p) => -(p as i32) - 1,
                    FusedArg::Input(i) => i as i32,
                };
            }
            c.op[k] = op_code(s.op);
            if s.store || k == last {
                let elem = match s.op {
                    FusedOp::Compare(_) => ElemType::U8,
                    _ => ElemType::F32,
                };
                if s.out.len != n || s.out.elem != elem {
                    return Err(Error::Invalid(format!(
                        "{WHAT}: output of step {k} is invalid"
                    )));
                }
                c.out_ptr[k] = self.ptr("fused_elementwise output", s.out, elem)?;
                stored.push(s.out);
            }
        }
        let inputs: Vec<_> = f.inputs.iter().map(|i| i.view).collect();
        disjoint(WHAT, &stored, &inputs)?;
        if n == 0 {
            return Ok(());
        }
        let n = n as u64;
        let mut p = args!(n, c);
        // SAFETY: every input address is a checked view whose strided
        // elements over the shape lie inside it (check_strides), read as
        // its element type; every stored output is a checked view of n
        // elements of its type, disjoint from the inputs and the other
        // outputs; operands name only earlier steps or existing inputs.
        unsafe { self.launch(Kernel::FusedF32, self.grid(n), BLOCK, &mut p) }
    }
}
