//! The machinery of the per-op gradient table in `grad_ops.rs`: input
//! domains, random cases (shapes and op parameters, as proptest
//! strategies), building a one-op graph from a table row and running the
//! first- and second-order checks of `adjoint_graph::gradcheck` on it.

#![allow(dead_code)]

use std::collections::BTreeMap;

use adjoint_graph::gradcheck::{self, Options};
use adjoint_graph::interp::Tensor;
use adjoint_graph::{Builder, DType, Graph, InputRole, Result, Shape, ValueId};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// Where an input's values come from, and whether it is differentiated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dom {
    /// Uniform in [-2, 2]; differentiated.
    Real,
    /// Uniform in [0.5, 2.5] (Log, Sqrt, Rsqrt, Pow base); differentiated.
    Pos,
    /// ±[0.2, 2] (Relu's kink, divisors); differentiated.
    AwayFromZero,
    /// Pairwise at least 0.25 apart (ReduceMax without ties); differentiated.
    Distinct,
    /// Uniform in [-2, 2], fed but not differentiated.
    Frozen,
    /// i64 in `[0, case.bound)` (labels, gather/scatter indices).
    Index,
    /// i64 in `[0, n)`.
    Int(u32),
    /// i64 group offsets `[E+1]` of a grouped matmul, from `case.offsets`
    /// (fed, never perturbed by finite differences).
    Offsets,
}

impl Dom {
    pub fn is_wrt(self) -> bool {
        matches!(
            self,
            Dom::Real | Dom::Pos | Dom::AwayFromZero | Dom::Distinct
        )
    }

    pub fn dtype(self) -> DType {
        match self {
            Dom::Index | Dom::Int(_) | Dom::Offsets => DType::I64,
            _ => DType::F64,
        }
    }
}

/// One random instance of a row: input shapes and op parameters.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub shapes: Vec<Vec<usize>>,
    /// Reduction axes (possibly negative).
    pub axes: Vec<i64>,
    pub keep_dims: bool,
    /// The op's axis (possibly negative).
    pub axis: i64,
    /// Transpose permutation.
    pub perm: Vec<usize>,
    /// Reshape / Broadcast target.
    pub target: Vec<usize>,
    /// Slice start/end or Pad before/after.
    pub lo: usize,
    pub hi: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Group offsets `[E+1]` of a grouped matmul (`Dom::Offsets`).
    pub offsets: Vec<usize>,
    /// MoeRoute's capacity factor (0: dropless).
    pub capacity_factor: f64,
    /// Upper bound of `Dom::Index` values; ScatterAdd size, OneHot depth.
    pub bound: usize,
    /// Seed of the input values and of the check's directions.
    pub seed: u64,
}

impl Case {
    pub fn of(shapes: Vec<Vec<usize>>) -> Case {
        Case {
            shapes,
            ..Case::default()
        }
    }
}

/// How a row builds its op from the graph inputs.
pub type Build = fn(&mut Builder, &[ValueId], &Case) -> Result<Vec<ValueId>>;

/// One line of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Serialized name of the op under test (must occur in the graph).
    pub op: &'static str,
    /// Row label (the op plus a variant).
    pub label: &'static str,
    pub arity: usize,
    pub cases: fn() -> BoxedStrategy<Case>,
    pub dom: &'static [Dom],
    /// (rtol, atol) of the finite-difference comparisons.
    pub tol: (f64, f64),
    pub build: Build,
}

/// Wraps a single-output builder result.
pub fn one(v: Result<ValueId>) -> Result<Vec<ValueId>> {
    v.map(|v| vec![v])
}

/// splitmix64: the test's own value generator (deterministic in the case seed).
pub struct Mix(pub u64);

impl Mix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values of one input.
pub fn values(dom: Dom, shape: &[usize], case: &Case, mix: &mut Mix) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = match dom {
        Dom::Real | Dom::Frozen => (0..n).map(|_| 4.0 * mix.unit() - 2.0).collect(),
        Dom::Pos => (0..n).map(|_| 0.5 + 2.0 * mix.unit()).collect(),
        Dom::AwayFromZero => (0..n)
            .map(|_| {
                let m = 0.2 + 1.8 * mix.unit();
                if mix.next() & 1 == 0 { m } else { -m }
            })
            .collect(),
        Dom::Distinct => {
            let mut ranks: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                ranks.swap(i, mix.below(i + 1));
            }
            let centre = 0.15 * n as f64;
            ranks
                .iter()
                .map(|&r| 0.3 * r as f64 - centre + 0.05 * mix.unit())
                .collect()
        }
        Dom::Index => (0..n).map(|_| mix.below(case.bound) as f64).collect(),
        Dom::Int(k) => (0..n).map(|_| mix.below(k as usize) as f64).collect(),
        Dom::Offsets => case.offsets.iter().map(|&o| o as f64).collect(),
    };
    Tensor::new(shape.to_vec(), data)
}

/// A row's graph, its feeds and the values to differentiate.
pub type Instance = (Graph, BTreeMap<ValueId, Tensor>, Vec<ValueId>);

/// The one-op graph of a row, its feeds and the values to differentiate.
pub fn instance(row: &Row, case: &Case) -> std::result::Result<Instance, String> {
    if row.dom.len() != row.arity || case.shapes.len() != row.arity {
        return Err(format!(
            "row {}: arity {}, {} domains, {} generated shapes",
            row.label,
            row.arity,
            row.dom.len(),
            case.shapes.len()
        ));
    }
    let mut b = Builder::new(row.label);
    let mut mix = Mix(case.seed);
    let mut feeds = BTreeMap::new();
    let mut ids = Vec::new();
    let mut wrt = Vec::new();
    for (i, (&dom, shape)) in row.dom.iter().zip(&case.shapes).enumerate() {
        let role = if dom == Dom::Index {
            InputRole::Label
        } else {
            InputRole::Data
        };
        let id = b
            .input(&format!("x{i}"), dom.dtype(), Shape::of(shape), role)
            .map_err(|e| e.to_string())?;
        feeds.insert(id, values(dom, shape, case, &mut mix));
        ids.push(id);
        if dom.is_wrt() {
            wrt.push(id);
        }
    }
    let outs = (row.build)(&mut b, &ids, case).map_err(|e| format!("building: {e}"))?;
    for o in outs {
        b.output(o);
    }
    let g = b.finish().map_err(|e| format!("validating: {e}"))?;
    if !g.nodes.iter().any(|n| n.op.name() == row.op) {
        return Err(format!(
            "row {}: the graph has no {} node",
            row.label, row.op
        ));
    }
    Ok((g, feeds, wrt))
}

/// Options of a row's checks.
pub fn options(row: &Row, case: &Case) -> Options {
    Options {
        rtol: row.tol.0,
        atol: row.tol.1,
        seed: case.seed,
        ..Options::default()
    }
}

/// First- and second-order checks of one case; `Err` describes the failure.
pub fn check_case(row: &Row, case: &Case) -> std::result::Result<(), String> {
    let (g, feeds, wrt) = instance(row, case)?;
    let opts = options(row, case);
    let first =
        gradcheck::check(&g, &wrt, &feeds, &opts).map_err(|e| format!("first order: {e}"))?;
    if !first.passed() {
        return Err(format!("{first}"));
    }
    let second = gradcheck::check_second_order(&g, &wrt, &feeds, &opts)
        .map_err(|e| format!("second order: {e}"))?;
    if !second.passed() {
        return Err(format!("{second}"));
    }
    Ok(())
}

/// Cases per row.
pub const CASES: u32 = 16;

/// Runs a row over random cases; panics with the failing case and report.
pub fn run_row(row: &Row) {
    let seed = row
        .label
        .bytes()
        .fold(7u64, |h, c| h.wrapping_mul(31).wrapping_add(u64::from(c)));
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 64,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&(row.cases)(), |case| {
        check_case(row, &case).map_err(|e| TestCaseError::fail(format!("{}: {e}", row.label)))
    });
    if let Err(e) = result {
        panic!("{}: {e}", row.label);
    }
}

// ----- case strategies -----

/// A shape of rank `lo..=hi` with dims 1..=4.
pub fn shape(lo: usize, hi: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, lo..=hi)
}

/// A seed for values and directions.
fn seed() -> impl Strategy<Value = u64> {
    any::<u64>()
}

/// `out` with some leading axes dropped and some axes set to 1: a shape
/// that broadcasts to `out`.
pub fn shrink(out: &[usize], mix: &mut Mix) -> Vec<usize> {
    let drop = mix.below(out.len() + 1);
    out[drop..]
        .iter()
        .map(|&d| if mix.below(3) == 0 { 1 } else { d })
        .collect()
}

/// An axis of `rank`, written negative half of the time.
pub fn any_axis(rank: usize, mix: &mut Mix) -> i64 {
    let a = mix.below(rank) as i64;
    if mix.next() & 1 == 0 {
        a
    } else {
        a - rank as i64
    }
}

/// Cases `f` makes from a random shape of rank `lo..=hi` and a [`Mix`]
/// seeded with the case seed xor `salt`.
fn shaped(
    lo: usize,
    hi: usize,
    salt: u64,
    f: impl Fn(Vec<usize>, &mut Mix) -> Case + 'static,
) -> BoxedStrategy<Case> {
    (shape(lo, hi), seed())
        .prop_map(move |(s, seed)| Case {
            seed,
            ..f(s, &mut Mix(seed ^ salt))
        })
        .boxed()
}

/// `n` inputs of one random shape.
pub fn same(n: usize, lo: usize, hi: usize) -> BoxedStrategy<Case> {
    shaped(lo, hi, 0, move |s, _| Case::of(vec![s; n]))
}

/// `n` inputs that broadcast together (numpy rules).
pub fn broadcasting(n: usize) -> BoxedStrategy<Case> {
    shaped(0, 3, 0x5bd1, move |out, mix| {
        Case::of((0..n).map(|_| shrink(&out, mix)).collect())
    })
}

/// A shape with one axis chosen (Softmax, Slice, Pad, Concat, Gather).
pub fn with_axis(lo: usize, hi: usize) -> BoxedStrategy<Case> {
    shaped(lo, hi, 0xa11, |s, mix| Case {
        axis: any_axis(s.len(), mix),
        ..Case::of(vec![s])
    })
}

fn norm(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}

/// Batched matmul: broadcast batch dims and random transpose flags.
pub fn matmul() -> BoxedStrategy<Case> {
    (
        shape(0, 2),
        prop::array::uniform3(1usize..=4),
        any::<(bool, bool)>(),
        seed(),
    )
        .prop_map(|(batch, [m, k, n], (ta, tb), seed)| {
            let mut mix = Mix(seed ^ 0x3a7);
            let mut a = shrink(&batch, &mut mix);
            let mut b = shrink(&batch, &mut mix);
            a.extend(if ta { [k, m] } else { [m, k] });
            b.extend(if tb { [n, k] } else { [k, n] });
            Case {
                trans_a: ta,
                trans_b: tb,
                seed,
                ..Case::of(vec![a, b])
            }
        })
        .boxed()
}

/// A reduction over a random non-empty axis subset, with or without kept dims.
pub fn reduce() -> BoxedStrategy<Case> {
    (shape(1, 4), any::<bool>(), seed())
        .prop_map(|(s, keep_dims, seed)| {
            let mut mix = Mix(seed ^ 0x7ed);
            let mut axes: Vec<usize> = (0..s.len()).filter(|_| mix.below(2) == 0).collect();
            if axes.is_empty() {
                axes.push(mix.below(s.len()));
            }
            for i in (1..axes.len()).rev() {
                axes.swap(i, mix.below(i + 1));
            }
            let axes = axes
                .iter()
                .map(|&a| {
                    if mix.below(2) == 0 {
                        a as i64
                    } else {
                        a as i64 - s.len() as i64
                    }
                })
                .collect();
            Case {
                axes,
                keep_dims,
                seed,
                ..Case::of(vec![s])
            }
        })
        .boxed()
}

/// A reshape to a random factorization of the element count.
pub fn reshape() -> BoxedStrategy<Case> {
    shaped(0, 3, 0x5e5, |s, mix| {
        let mut factors = Vec::new();
        for &d in &s {
            let mut d = d;
            for p in [2, 3] {
                while d % p == 0 {
                    factors.push(p);
                    d /= p;
                }
            }
        }
        let rank = mix.below(4);
        let mut target = vec![1usize; rank.max(usize::from(!factors.is_empty()))];
        for f in factors {
            let i = mix.below(target.len());
            target[i] *= f;
        }
        Case {
            target,
            ..Case::of(vec![s])
        }
    })
}

/// A random permutation of a random shape.
pub fn transpose() -> BoxedStrategy<Case> {
    shaped(0, 4, 0x9e, |s, mix| {
        let mut perm: Vec<usize> = (0..s.len()).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, mix.below(i + 1));
        }
        Case {
            perm,
            ..Case::of(vec![s])
        }
    })
}

/// A shape broadcast to a random target.
pub fn broadcast() -> BoxedStrategy<Case> {
    shaped(0, 4, 0xb0, |target, mix| {
        let s = shrink(&target, mix);
        Case {
            target,
            ..Case::of(vec![s])
        }
    })
}

/// Three inputs differing only along the concat axis.
pub fn concat() -> BoxedStrategy<Case> {
    shaped(1, 3, 0xc0, |s, mix| {
        let axis = any_axis(s.len(), mix);
        let a = norm(axis, s.len());
        let shapes = (0..3)
            .map(|_| {
                let mut t = s.clone();
                t[a] = 1 + mix.below(3);
                t
            })
            .collect();
        Case {
            axis,
            ..Case::of(shapes)
        }
    })
}

/// Slice `lo..hi` (possibly empty) or Pad `lo` before and `hi` after an axis.
pub fn slice_or_pad(slice: bool) -> BoxedStrategy<Case> {
    shaped(1, 3, 0x51, move |s, mix| {
        let axis = any_axis(s.len(), mix);
        let d = s[norm(axis, s.len())];
        let (lo, hi) = if slice {
            let a = mix.below(d + 1);
            let b = mix.below(d + 1);
            (a.min(b), a.max(b))
        } else {
            (mix.below(3), mix.below(3))
        };
        Case {
            axis,
            lo,
            hi,
            ..Case::of(vec![s])
        }
    })
}

/// Gather: data with a short gathered axis and many (repeating) indices.
pub fn gather() -> BoxedStrategy<Case> {
    (shape(1, 3), shape(0, 2), seed())
        .prop_map(|(mut data, idx, seed)| {
            let mut mix = Mix(seed ^ 0x6a);
            let axis = any_axis(data.len(), &mut mix);
            let a = norm(axis, data.len());
            data[a] = 1 + mix.below(3);
            Case {
                axis,
                bound: data[a],
                seed,
                ..Case::of(vec![data, idx])
            }
        })
        .boxed()
}

/// ScatterAdd: updates `pre ++ indices ++ post` into `size` slots.
pub fn scatter() -> BoxedStrategy<Case> {
    (shape(0, 1), shape(1, 2), shape(0, 1), 1usize..=3, seed())
        .prop_map(|(pre, idx, post, size, seed)| {
            let rank = pre.len() + 1 + post.len();
            let axis = if seed & 1 == 0 {
                pre.len() as i64
            } else {
                pre.len() as i64 - rank as i64
            };
            let updates = [pre.as_slice(), &idx, &post].concat();
            Case {
                axis,
                bound: size,
                seed,
                ..Case::of(vec![updates, idx])
            }
        })
        .boxed()
}

/// GatherRows: x `leading ++ [d]` (1 to 4 rows) and indices below the
/// row count.
pub fn gather_rows() -> BoxedStrategy<Case> {
    (shape(1, 2), 1usize..=3, shape(1, 2), seed())
        .prop_map(|(mut leading, d, idx, seed)| {
            let mut mix = Mix(seed ^ 0x2b);
            leading[0] = 1 + mix.below(2);
            let rows = leading.iter().product();
            Case {
                bound: rows,
                seed,
                ..Case::of(vec![[leading.as_slice(), &[d]].concat(), idx])
            }
        })
        .boxed()
}

/// ScatterAddRows: updates `indices ++ [d]` into rows of `target ++ [d]`.
pub fn scatter_add_rows() -> BoxedStrategy<Case> {
    (shape(1, 2), 1usize..=3, shape(1, 2), seed())
        .prop_map(|(mut target, d, idx, seed)| {
            let mut mix = Mix(seed ^ 0x3c);
            target[0] = 1 + mix.below(2);
            let rows = target.iter().product();
            Case {
                bound: rows,
                target,
                seed,
                ..Case::of(vec![[idx.as_slice(), &[d]].concat(), idx])
            }
        })
        .boxed()
}

/// OneHot: indices and a float operand of shape `indices ++ [depth]`.
pub fn one_hot() -> BoxedStrategy<Case> {
    (shape(0, 2), 1usize..=4, seed())
        .prop_map(|(idx, depth, seed)| {
            let x = [idx.as_slice(), &[depth]].concat();
            Case {
                bound: depth,
                seed,
                ..Case::of(vec![idx, x])
            }
        })
        .boxed()
}

/// Shapes `[..., d]` and `[d]` for the last-axis ops, `d` in 2..=5.
pub fn last_axis(pattern: &'static [bool]) -> BoxedStrategy<Case> {
    (shape(0, 2), 2usize..=5, seed())
        .prop_map(move |(lead, d, seed)| {
            let full = [lead.as_slice(), &[d]].concat();
            let shapes = pattern
                .iter()
                .map(|&f| if f { full.clone() } else { vec![d] })
                .collect();
            Case {
                seed,
                ..Case::of(shapes)
            }
        })
        .boxed()
}

/// `[..., T, T]` for the causal mask.
pub fn square() -> BoxedStrategy<Case> {
    (shape(0, 2), 1usize..=4, seed())
        .prop_map(|(lead, t, seed)| Case {
            seed,
            ..Case::of(vec![[lead.as_slice(), &[t, t]].concat()])
        })
        .boxed()
}

/// Logits `[..., C]`, labels `[...]` in `0..C`, and (with `dloss`) a scalar.
pub fn cross_entropy(dloss: bool) -> BoxedStrategy<Case> {
    (shape(0, 2), 1usize..=4, seed())
        .prop_map(move |(lead, c, seed)| {
            let mut shapes = vec![[lead.as_slice(), &[c]].concat(), lead];
            if dloss {
                shapes.push(Vec::new());
            }
            Case {
                bound: c,
                seed,
                ..Case::of(shapes)
            }
        })
        .boxed()
}

// ----- mixture of experts -----

/// Offsets `[E+1]` over `rows` packed rows: with two or more rows a
/// dropped tail (1 to rows-1 rows past `offsets[E]`), with two or more
/// experts one empty group, the kept rows spread at random over the rest.
pub fn moe_offsets(experts: usize, rows: usize, mix: &mut Mix) -> Vec<usize> {
    let kept = if rows >= 2 {
        1 + mix.below(rows - 1)
    } else {
        rows
    };
    let empty = mix.below(experts);
    let mut sizes = vec![0usize; experts];
    for _ in 0..kept {
        let mut e = mix.below(experts);
        if experts >= 2 && e == empty {
            e = (e + 1 + mix.below(experts - 1)) % experts;
        }
        sizes[e] += 1;
    }
    let mut offsets = vec![0];
    for s in sizes {
        offsets.push(offsets.last().unwrap() + s);
    }
    offsets
}

/// GroupedMatMul (`grad_w` false): x `[..., D]`, w `[E, D, H]` (`[E, H, D]`
/// with `trans_b`), offsets; GroupedMatMulGradW (`grad_w` true): x
/// `[..., D]`, dy `[..., H]`, offsets (`trans_b`: the transposed layout).
/// Offsets come from [`moe_offsets`].
pub fn grouped(grad_w: bool, transpose: bool) -> BoxedStrategy<Case> {
    (shape(1, 2), 1usize..=4, 1usize..=4, 1usize..=4, seed())
        .prop_map(move |(lead, experts, d, h, seed)| {
            let mut mix = Mix(seed ^ 0x9e0e);
            let rows = lead.iter().product();
            let offsets = moe_offsets(experts, rows, &mut mix);
            let x = [lead.as_slice(), &[d]].concat();
            let second = match (grad_w, transpose) {
                (true, _) => [lead.as_slice(), &[h]].concat(),
                (false, false) => vec![experts, d, h],
                (false, true) => vec![experts, h, d],
            };
            Case {
                trans_b: transpose,
                offsets,
                seed,
                ..Case::of(vec![x, second, vec![experts + 1]])
            }
        })
        .boxed()
}

/// Gate logits `[..., E]` (E in 1..=5) and `k` (`case.lo`) in 1..=E;
/// `case.bound` is E.
pub fn moe_gate() -> BoxedStrategy<Case> {
    (shape(0, 2), 1usize..=5, seed())
        .prop_map(|(lead, experts, seed)| {
            let k = 1 + Mix(seed ^ 0x6a7e).below(experts);
            Case {
                lo: k,
                bound: experts,
                seed,
                ..Case::of(vec![[lead.as_slice(), &[experts]].concat()])
            }
        })
        .boxed()
}

/// Routing: ids `[T, k]` in `0..E` (`case.bound`), tokens x `[T, d]` and a
/// capacity factor of 0 (dropless), 0.5 or 1.
pub fn moe_route() -> BoxedStrategy<Case> {
    (
        1usize..=5,
        1usize..=3,
        1usize..=4,
        1usize..=3,
        0usize..3,
        seed(),
    )
        .prop_map(|(t, k, experts, d, cf, seed)| Case {
            bound: experts,
            capacity_factor: [0.0, 0.5, 1.0][cf],
            seed,
            ..Case::of(vec![vec![t, k], vec![t, d]])
        })
        .boxed()
}
