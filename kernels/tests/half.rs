//! bf16 and f16 on the CPU backend: casts round to nearest even (as the
//! `half` crate does), and every kernel given half operands gives what the
//! f32 kernel gives on the same (exactly widened) values, rounded once.
//! Views sit at odd offsets of one shared arena, as programs place them.

use adjoint_kernels::backend::{AdamWParams, MatMulDims};
use adjoint_kernels::{Backend, BinaryOp, CpuBackend, ElemType, ReduceOp, UnaryOp, View};
use half::{bf16, f16};

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

/// Views carved out of one arena, each at a 2-byte (not 4-byte) aligned
/// offset where the type allows.
struct Arena {
    b: CpuBackend,
    id: adjoint_kernels::BufferId,
    at: usize,
}

impl Arena {
    fn new() -> Arena {
        let mut b = CpuBackend::new();
        let id = b.alloc(1 << 20).unwrap();
        Arena { b, id, at: 2 }
    }

    fn view(&mut self, elem: ElemType, len: usize) -> View {
        self.at = self.at.next_multiple_of(elem.size());
        let v = View {
            buffer: self.id,
            offset: self.at,
            len,
            elem,
        };
        self.at += v.bytes() + 2;
        v
    }

    fn put(&mut self, elem: ElemType, vals: &[f32]) -> View {
        let v = self.view(elem, vals.len());
        let bytes: Vec<u8> = match elem {
            ElemType::F32 => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ElemType::BF16 => vals
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            ElemType::F16 => vals
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            other => panic!("{other:?}"),
        };
        self.b.write(v, &bytes).unwrap();
        v
    }

    fn get(&self, v: View) -> Vec<f32> {
        let mut bytes = vec![0u8; v.bytes()];
        self.b.read(v, &mut bytes).unwrap();
        match v.elem {
            ElemType::F32 => bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            ElemType::BF16 => bytes
                .chunks(2)
                .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            ElemType::F16 => bytes
                .chunks(2)
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            other => panic!("{other:?}"),
        }
    }
}

fn round(elem: ElemType, v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| match elem {
            ElemType::BF16 => bf16::from_f32(x).to_f32(),
            ElemType::F16 => f16::from_f32(x).to_f32(),
            _ => x,
        })
        .collect()
}

/// Runs `op` twice: on half views of `inputs`, and on f32 views of the
/// same values rounded to half; the half run's outputs must equal the f32
/// run's rounded, bit for bit. `outputs` are the output lengths.
fn check(
    name: &str,
    inputs: &[Vec<f32>],
    outputs: &[usize],
    op: impl Fn(&mut CpuBackend, &[View], &[View]),
) {
    for elem in [ElemType::BF16, ElemType::F16] {
        let mut a = Arena::new();
        let ins: Vec<View> = inputs.iter().map(|v| a.put(elem, v)).collect();
        let outs: Vec<View> = outputs.iter().map(|&n| a.view(elem, n)).collect();
        op(&mut a.b, &ins, &outs);
        let mut r = Arena::new();
        let rins: Vec<View> = inputs
            .iter()
            .map(|v| r.put(ElemType::F32, &round(elem, v)))
            .collect();
        let routs: Vec<View> = outputs.iter().map(|&n| r.view(ElemType::F32, n)).collect();
        op(&mut r.b, &rins, &routs);
        // Inputs too: read-modify-write kernels update them in place.
        let all = ins.iter().chain(&outs).zip(rins.iter().chain(&routs));
        for (k, (o, ro)) in all.enumerate() {
            let got = a.get(*o);
            let want = round(elem, &r.get(*ro));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{name} {elem:?} output {k}[{i}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn casts_round_to_nearest_even_and_keep_specials() {
    let mut vals = data(500, 1);
    vals.extend([
        0.0,
        -0.0,
        1.0 + 1.0 / 256.0, // a bf16 tie: rounds to even (1.0)
        1.0 + 3.0 / 256.0, // a tie rounding up
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        70000.0, // above f16's max: inf
        1e-8,    // below f16's smallest subnormal: 0
        3.0e38,
    ]);
    for elem in [ElemType::BF16, ElemType::F16] {
        let mut a = Arena::new();
        let x = a.put(ElemType::F32, &vals);
        let h = a.view(elem, vals.len());
        let back = a.view(ElemType::F32, vals.len());
        a.b.cast(x, h).unwrap();
        a.b.cast(h, back).unwrap();
        let got = a.get(back);
        let want = round(elem, &vals);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{elem:?} {}: {g} vs {w}",
                vals[i]
            );
        }
    }
    assert_eq!(round(ElemType::BF16, &[1.0 + 1.0 / 256.0])[0], 1.0);
    assert_eq!(round(ElemType::F16, &[70000.0])[0], f32::INFINITY);
}

#[test]
fn ints_and_fills_convert_into_half() {
    let mut a = Arena::new();
    let ints = a.view(ElemType::I64, 4);
    let bytes: Vec<u8> = [3i64, -7, 257, 0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    a.b.write(ints, &bytes).unwrap();
    let h = a.view(ElemType::BF16, 4);
    a.b.cast(ints, h).unwrap();
    assert_eq!(a.get(h), vec![3.0, -7.0, 256.0, 0.0]); // 257 rounds to 256 in bf16
    let f = a.view(ElemType::F16, 3);
    a.b.fill(f, 0.1).unwrap();
    assert_eq!(a.get(f), vec![f16::from_f32(0.1).to_f32(); 3]);
}

#[test]
fn strided_copies_move_half_elements_as_they_are() {
    let vals = data(12, 2);
    let mut a = Arena::new();
    let x = a.put(ElemType::BF16, &vals);
    let y = a.view(ElemType::BF16, 12);
    // [3, 4] transposed to [4, 3].
    a.b.copy_strided(x, &[1, 4], y, &[3, 1], &[4, 3]).unwrap();
    let r = round(ElemType::BF16, &vals);
    let got = a.get(y);
    for i in 0..4 {
        for j in 0..3 {
            assert_eq!(got[i * 3 + j], r[j * 4 + i]);
        }
    }
}

#[test]
fn elementwise_kernels_compute_in_f32_and_round_once() {
    check("gelu", &[data(300, 3)], &[300], |b, i, o| {
        b.unary(UnaryOp::GeluTanh, i[0], o[0]).unwrap()
    });
    check("exp", &[data(300, 4)], &[300], |b, i, o| {
        b.unary(UnaryOp::Exp, i[0], o[0]).unwrap()
    });
    check(
        "add with a broadcast row",
        &[data(24, 5), data(4, 6)],
        &[24],
        |b, i, o| {
            b.binary(BinaryOp::Add, i[0], &[4, 1], i[1], &[0, 1], o[0], &[6, 4])
                .unwrap()
        },
    );
    check(
        "gelu_grad",
        &[data(100, 7), data(100, 8)],
        &[100],
        |b, i, o| b.gelu_grad(false, i[0], i[1], o[0]).unwrap(),
    );
}

#[test]
fn matmul_reductions_and_normalisation_accumulate_in_f32() {
    let (m, k, n) = (7, 33, 5);
    check(
        "matmul",
        &[data(m * k, 9), data(k * n, 10)],
        &[m * n],
        |b, i, o| {
            let dims = MatMulDims {
                m,
                n,
                k,
                trans_a: false,
                trans_b: false,
                batch: &[],
                a_batch_strides: &[],
                b_batch_strides: &[],
                c_batch_strides: &[],
            };
            b.matmul(i[0], i[1], o[0], &dims).unwrap()
        },
    );
    check("sum over rows", &[data(600, 11)], &[6], |b, i, o| {
        b.reduce(ReduceOp::Sum, i[0], &[6, 100], &[false, true], o[0])
            .unwrap()
    });
    check("softmax", &[data(60, 12)], &[60], |b, i, o| {
        b.softmax(i[0], o[0], 6, 10, 1, false).unwrap()
    });
    check(
        "layer_norm",
        &[data(40, 13), data(8, 14), data(8, 15)],
        &[40],
        |b, i, o| b.layer_norm(i[0], i[1], i[2], o[0], 5, 8, 1e-5).unwrap(),
    );
}

#[test]
fn read_modify_write_kernels_read_their_half_outputs() {
    check(
        "adamw (param, m, v updated in place)",
        &[
            data(50, 16),
            data(50, 17),
            data(50, 18),
            data(50, 19).iter().map(|x| x.abs()).collect(),
        ],
        &[],
        |b, i, _| {
            let p = AdamWParams {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                step: 3,
            };
            b.adamw(i[0], i[1], i[2], i[3], &p).unwrap()
        },
    );
}

#[test]
fn a_half_output_overlapping_an_input_is_refused() {
    let mut a = Arena::new();
    let x = a.put(ElemType::BF16, &data(16, 20));
    let y = View {
        offset: x.offset + 4,
        ..x
    };
    let err = a.b.unary(UnaryOp::Exp, x, y).unwrap_err().to_string();
    assert!(err.contains("unary"), "{err}");
}
