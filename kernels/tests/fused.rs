//! The fused CPU kernels against the unfused calls they replace:
//! `fused_elementwise` against `FusedElementwise::run_unfused`, and
//! `grouped_matmul_act` against `grouped_matmul` then `unary`, and
//! `grouped_matmul_gelu_grad` against `grouped_matmul` then `gelu_grad`
//! (the defaults a backend without the fused kernels runs). Equal bit for
//! bit.

use adjoint_kernels::backend::{
    FusedArg, FusedElementwise, FusedInput, FusedOp, FusedStep, GroupedMatMulDims,
    contiguous_strides,
};
use adjoint_kernels::{Backend, BinaryOp, CompareOp, CpuBackend, ElemType, UnaryOp, View};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect()
}

fn buffer(b: &mut CpuBackend, elem: ElemType, len: usize) -> View {
    let id = b.alloc(len * elem.size()).unwrap();
    View {
        buffer: id,
        offset: 0,
        len,
        elem,
    }
}

fn put(b: &mut CpuBackend, v: &[f32]) -> View {
    let view = buffer(b, ElemType::F32, v.len());
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.write(view, &bytes).unwrap();
    view
}

fn get(b: &CpuBackend, v: View) -> Vec<u8> {
    let mut out = vec![0u8; v.bytes()];
    b.read(v, &mut out).unwrap();
    out
}

type Step = (FusedOp, Vec<FusedArg>, bool);

/// Builds the same chain on two backends (inputs `vals` with their
/// strides), runs it fused on one and unfused on the other, and compares
/// every stored output byte for byte.
fn check_chain(shape: &[usize], vals: &[(Vec<f32>, Vec<usize>)], steps: &[Step]) {
    let n: usize = shape.iter().product();
    let mut fused = CpuBackend::new();
    let mut unfused = CpuBackend::new();
    let mut chains = Vec::new();
    for b in [&mut fused, &mut unfused] {
        let inputs = vals
            .iter()
            .map(|(v, s)| FusedInput {
                view: put(b, v),
                strides: s.clone(),
            })
            .collect();
        let steps = steps
            .iter()
            .map(|(op, args, store)| {
                let elem = match op {
                    FusedOp::Compare(_) => ElemType::U8,
                    _ => ElemType::F32,
                };
                FusedStep {
                    op: *op,
                    args: args.clone(),
                    out: buffer(b, elem, n),
                    store: *store,
                }
            })
            .collect();
        chains.push(FusedElementwise {
            shape: shape.to_vec(),
            inputs,
            steps,
        });
    }
    fused.fused_elementwise(&chains[0]).unwrap();
    chains[1].run_unfused(&mut unfused).unwrap();
    let last = steps.len() - 1;
    for (k, (sf, su)) in chains[0].steps.iter().zip(&chains[1].steps).enumerate() {
        if sf.store || k == last {
            assert_eq!(
                get(&fused, sf.out),
                get(&unfused, su.out),
                "shape {shape:?}: step {k} ({:?})",
                sf.op
            );
        }
    }
}

#[test]
fn relu_backward_chain_equals_unfused() {
    // where(x > 0, dy, 0), the mask kept in registers or stored.
    for (m, n) in [(3, 5), (256, 1024), (301, 257)] {
        let shape = [m, n];
        let c = contiguous_strides(&shape);
        for store_mask in [false, true] {
            check_chain(
                &shape,
                &[
                    (data(m * n, 1), c.clone()),
                    (vec![0.0], vec![0, 0]),
                    (data(m * n, 2), c.clone()),
                ],
                &[
                    (
                        FusedOp::Compare(CompareOp::Greater),
                        vec![FusedArg::Input(0), FusedArg::Input(1)],
                        store_mask,
                    ),
                    (
                        FusedOp::Select,
                        vec![FusedArg::Step(0), FusedArg::Input(2), FusedArg::Input(1)],
                        true,
                    ),
                ],
            );
        }
    }
}

#[test]
fn bias_activation_and_broadcast_chain_equals_unfused() {
    // ((x + bias[n]) → GELU) · scale[m, 1] − x, GELU's backward on the sum,
    // then every unary op in turn.
    for (m, n) in [(7, 9), (130, 300), (2, 3)] {
        let shape = [m, n];
        let c = contiguous_strides(&shape);
        let mut steps: Vec<Step> = vec![
            (
                FusedOp::Binary(BinaryOp::Add),
                vec![FusedArg::Input(0), FusedArg::Input(1)],
                true,
            ),
            (
                FusedOp::Unary(UnaryOp::GeluTanh),
                vec![FusedArg::Step(0)],
                false,
            ),
            (
                FusedOp::Binary(BinaryOp::Mul),
                vec![FusedArg::Step(1), FusedArg::Input(2)],
                false,
            ),
            (
                FusedOp::Binary(BinaryOp::Sub),
                vec![FusedArg::Step(2), FusedArg::Input(0)],
                true,
            ),
            (
                FusedOp::GeluGrad { tanh: false },
                vec![FusedArg::Step(0), FusedArg::Step(3)],
                false,
            ),
            (
                FusedOp::Binary(BinaryOp::Div),
                vec![FusedArg::Step(4), FusedArg::Input(2)],
                false,
            ),
        ];
        let vals = [
            (data(m * n, 3), c.clone()),
            (data(n, 4), vec![0, 1]),
            (data(m, 5), vec![1, 0]),
        ];
        check_chain(&shape, &vals, &steps);
        use UnaryOp::*;
        for op in [
            Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, GeluTanh, GeluErf, Erf,
        ] {
            steps.truncate(4);
            steps.push((FusedOp::Unary(op), vec![FusedArg::Step(3)], true));
            steps.push((
                FusedOp::Compare(CompareOp::Equal),
                vec![FusedArg::Step(4), FusedArg::Step(0)],
                true,
            ));
            check_chain(&shape, &vals, &steps);
        }
    }
}

#[test]
fn malformed_chains_are_errors() {
    let mut b = CpuBackend::new();
    let x = put(&mut b, &data(6, 7));
    let y = buffer(&mut b, ElemType::F32, 6);
    let chain = |args: Vec<FusedArg>, out: View| FusedElementwise {
        shape: vec![2, 3],
        inputs: vec![FusedInput {
            view: x,
            strides: vec![3, 1],
        }],
        steps: vec![FusedStep {
            op: FusedOp::Binary(BinaryOp::Add),
            args,
            out,
            store: true,
        }],
    };
    // A step reading itself, an input that does not exist, too few
    // operands, an output over an input.
    for (args, out) in [
        (vec![FusedArg::Step(0), FusedArg::Input(0)], y),
        (vec![FusedArg::Input(1), FusedArg::Input(0)], y),
        (vec![FusedArg::Input(0)], y),
        (vec![FusedArg::Input(0), FusedArg::Input(0)], x),
    ] {
        assert!(b.fused_elementwise(&chain(args, out)).is_err());
    }
}

/// Group offsets of `counts` rows per expert, in an i64 buffer.
fn offsets(b: &mut CpuBackend, counts: &[usize]) -> View {
    let mut ends = vec![0i64];
    for c in counts {
        ends.push(ends.last().unwrap() + *c as i64);
    }
    let o = buffer(b, ElemType::I64, ends.len());
    let bytes: Vec<u8> = ends.iter().flat_map(|v| v.to_le_bytes()).collect();
    b.write(o, &bytes).unwrap();
    o
}

#[test]
fn grouped_matmul_act_equals_matmul_then_unary() {
    // Small groups run one per task, big ones one after another; an empty
    // expert and rows past the last group (zeros) included.
    for (counts, d, h) in [
        (vec![3usize, 0, 5, 1], 4usize, 6usize),
        (vec![40, 0, 33, 25], 32, 48),
        (vec![300, 280, 0, 310], 64, 96),
    ] {
        let (experts, rows) = (counts.len(), counts.iter().sum::<usize>() + 3);
        let dims = GroupedMatMulDims {
            experts,
            rows,
            d,
            h,
            transpose: false,
        };
        for act in [UnaryOp::GeluTanh, UnaryOp::Relu, UnaryOp::GeluErf] {
            let mut outs = Vec::new();
            for fused in [true, false] {
                let mut b = CpuBackend::new();
                let x = put(&mut b, &data(rows * d, 8));
                let w = put(&mut b, &data(experts * d * h, 9));
                let o = offsets(&mut b, &counts);
                let y = buffer(&mut b, ElemType::F32, rows * h);
                let g = buffer(&mut b, ElemType::F32, rows * h);
                if fused {
                    b.grouped_matmul_act(x, w, o, y, &dims, act, g).unwrap();
                } else {
                    b.grouped_matmul(x, w, o, y, &dims).unwrap();
                    b.unary(act, y, g).unwrap();
                }
                outs.push((get(&b, y), get(&b, g)));
            }
            assert!(outs[0] == outs[1], "{counts:?} {act:?}");
        }
    }
}

#[test]
fn grouped_matmul_gelu_grad_equals_matmul_then_gelu_grad() {
    // As above, in both weight layouts (the experts' backward reads its
    // second weight transposed).
    for (counts, d, h) in [
        (vec![3usize, 0, 5, 1], 4usize, 6usize),
        (vec![300, 280, 0, 310], 64, 96),
    ] {
        let (experts, rows) = (counts.len(), counts.iter().sum::<usize>() + 3);
        for (transpose, tanh) in [(false, true), (true, true), (true, false)] {
            let dims = GroupedMatMulDims {
                experts,
                rows,
                d,
                h,
                transpose,
            };
            let mut outs = Vec::new();
            for fused in [true, false] {
                let mut b = CpuBackend::new();
                let x = put(&mut b, &data(rows * d, 8));
                let w = put(&mut b, &data(experts * d * h, 9));
                let pre = put(&mut b, &data(rows * h, 10));
                let o = offsets(&mut b, &counts);
                let y = buffer(&mut b, ElemType::F32, rows * h);
                let dx = buffer(&mut b, ElemType::F32, rows * h);
                if fused {
                    b.grouped_matmul_gelu_grad(x, w, o, y, &dims, tanh, pre, dx)
                        .unwrap();
                } else {
                    b.grouped_matmul(x, w, o, y, &dims).unwrap();
                    b.gelu_grad(tanh, pre, y, dx).unwrap();
                }
                outs.push(get(&b, dx)); // y is scratch to the fused kernel
            }
            assert!(
                outs[0] == outs[1],
                "{counts:?} transpose {transpose} tanh {tanh}"
            );
        }
    }
}
