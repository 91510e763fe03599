//! Fusion: rewrites of the lowered program that do the same arithmetic in
//! fewer passes over memory.
//!
//! - **Elementwise chains.** Consecutive elementwise instructions (unary,
//!   binary but `Pow`, compare, select, GELU backward) over one output
//!   shape, each reading an earlier one's result, become one
//!   [`Instr::Fused`]: one pass that keeps the intermediates in registers
//!   and writes only the values something outside the chain reads (another
//!   node, a gradient slot, a graph output, the loss, a state update). A
//!   ReLU's backward (`x > 0`, then `where`) and a bias add with its
//!   activation are such chains.
//! - **Grouped GEMM + activation.** A grouped matmul followed by a unary
//!   activation of its result (the experts' GELU) becomes one
//!   [`Instr::GroupedMatMulAct`], which applies the activation to each
//!   group's rows right after its GEMM, while they are in cache.
//! - **Grouped GEMM + GELU backward.** A grouped matmul whose result only
//!   the GELU backward right after it reads (the experts' backward:
//!   `dh = dy·W2ᵀ`, then `dh · gelu'(pre)`) becomes one
//!   [`Instr::GroupedMatMulGeluGrad`], likewise group by group.
//!
//! The memory plan is the unfused program's. A rewrite only merges
//! instructions that are adjacent in the program, so every value a merged
//! instruction reads is still live where it runs; and it refuses a group
//! when a value it writes overlaps one it reads (the plan may put a value
//! in the memory of one that died at the node before; for the GELU
//! backward the planner keeps the matmul's inputs live through it, so
//! that pair is not refused). The fused
//! instruction sits where the group's first instruction was, and every
//! node of the group ends there, so gradient buckets and freed-buffer
//! poisoning see each node's outputs written when they expect.
//!
//! Results equal the unfused program's bit for bit (the fused kernels use
//! the unfused kernels' scalar functions); `ExecOptions::fuse` or
//! `ADJOINT_FUSE=0` turns the rewrites off.

use adjoint_graph::{Graph, ValueId};
use adjoint_kernels::backend::{
    FusedArg, FusedElementwise, FusedInput, FusedOp, FusedStep, contiguous_strides,
};
use adjoint_kernels::{BinaryOp, ElemType, View};

use super::{Instr, Program};

/// Steps and inputs a fused chain may have (the CPU kernel's limits).
const MAX_STEPS: usize = 8;
const MAX_INPUTS: usize = 8;

/// What the rewrites did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Elementwise chains formed, and the instructions they replaced.
    pub chains: usize,
    pub chain_instrs: usize,
    /// Grouped matmuls that took their activation.
    pub grouped_acts: usize,
    /// Grouped matmuls that took GELU's backward after them.
    pub grouped_gelu_grads: usize,
}

/// Whether `ADJOINT_FUSE=0` (or `off`, `false`) turns the rewrites off.
pub fn disabled_by_env() -> bool {
    std::env::var("ADJOINT_FUSE").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false" | "no"))
}

/// Applies every rewrite to `program` (compiled from `graph`); `kept`
/// lists values that must reach memory whatever reads them (gradients,
/// outputs, the loss, state updates).
pub fn fuse(graph: &Graph, program: &mut Program, kept: &[ValueId]) -> FuseReport {
    let mut report = FuseReport::default();
    let nodes = NodeMap::new(graph, program, kept);
    let mut out: Vec<Instr> = Vec::with_capacity(program.instrs.len());
    // `moved[i]`: the index in `out` of old instruction `i`'s work.
    let mut moved = vec![0usize; program.instrs.len()];
    let mut i = 0;
    while i < program.instrs.len() {
        if let Some(fused) = grouped_gelu_grad(graph, &nodes, &program.instrs, i) {
            moved[i] = out.len();
            moved[i + 1] = out.len();
            out.push(fused);
            report.grouped_gelu_grads += 1;
            i += 2;
            continue;
        }
        if let Some(act) = grouped_act(&program.instrs, i) {
            moved[i] = out.len();
            moved[i + 1] = out.len();
            out.push(act);
            report.grouped_acts += 1;
            i += 2;
            continue;
        }
        if let Some((fused, len)) = chain(graph, &nodes, &program.instrs, i) {
            for m in &mut moved[i..i + len] {
                *m = out.len();
            }
            out.push(Instr::Fused(Box::new(fused)));
            report.chains += 1;
            report.chain_instrs += len;
            i += len;
            continue;
        }
        moved[i] = out.len();
        out.push(program.instrs[i].clone());
        i += 1;
    }
    if report == FuseReport::default() {
        return report;
    }
    // A node ends after the new home of its last instruction; a node
    // without instructions ends where the one before it ended.
    let mut node_end = Vec::with_capacity(program.node_end.len());
    let mut start = 0;
    let mut prev_end = 0;
    for &end in &program.node_end {
        let e = if end > start {
            moved[end - 1] + 1
        } else {
            prev_end
        };
        node_end.push(e);
        prev_end = e;
        start = end;
    }
    program.instrs = out;
    program.node_end = node_end;
    report
}

/// Per instruction, the node it came from when it is its node's only
/// instruction; and which values must be stored.
struct NodeMap {
    sole: Vec<Option<usize>>,
    /// Per value: readers (nodes), and whether it must reach memory.
    consumers: Vec<Vec<usize>>,
    kept: Vec<bool>,
}

impl NodeMap {
    fn new(graph: &Graph, program: &Program, kept: &[ValueId]) -> NodeMap {
        let mut sole = vec![None; program.instrs.len()];
        let mut start = 0;
        for (n, &end) in program.node_end.iter().enumerate() {
            if end == start + 1 {
                sole[start] = Some(n);
            }
            start = end;
        }
        let consumers = graph
            .consumers()
            .into_iter()
            .map(|c| c.into_iter().map(|n| n.index()).collect())
            .collect();
        let mut keep = vec![false; graph.values.len()];
        let mut mark = |v: ValueId| keep[v.index()] = true;
        kept.iter().copied().for_each(&mut mark);
        graph.outputs.iter().copied().for_each(&mut mark);
        graph.loss.into_iter().for_each(&mut mark);
        for s in &graph.state {
            s.update.into_iter().for_each(&mut mark);
        }
        NodeMap {
            sole,
            consumers,
            kept: keep,
        }
    }
}

/// `GroupedMatMul` at `i` followed by a unary activation of its result.
fn grouped_act(instrs: &[Instr], i: usize) -> Option<Instr> {
    let (
        Instr::GroupedMatMul {
            x,
            w,
            offsets,
            y,
            dims,
        },
        Some(Instr::Unary { op, x: ax, y: ay }),
    ) = (&instrs[i], instrs.get(i + 1))
    else {
        return None;
    };
    let writes_read = [*y, *ay]
        .iter()
        .any(|o| [*x, *w, *offsets].iter().any(|r| r.overlaps(o)));
    if ax != y || ay.overlaps(y) || writes_read || y.elem != ElemType::F32 {
        return None;
    }
    Some(Instr::GroupedMatMulAct {
        x: *x,
        w: *w,
        offsets: *offsets,
        y: *y,
        dims: *dims,
        act: *op,
        act_out: *ay,
    })
}

/// `GroupedMatMul` at `i` followed by GELU's backward taking its result
/// as the cotangent, when nothing else reads that result. The planner
/// keeps the matmul's inputs live through the `GeluGrad`
/// (`adjoint_graph::plan`), so `dx` cannot sit in their memory; the check
/// here refuses the pair if it does all the same.
fn grouped_gelu_grad(graph: &Graph, nodes: &NodeMap, instrs: &[Instr], i: usize) -> Option<Instr> {
    let (
        Instr::GroupedMatMul {
            x,
            w,
            offsets,
            y,
            dims,
        },
        Some(Instr::GeluGrad {
            tanh,
            x: pre,
            dy,
            dx,
        }),
    ) = (&instrs[i], instrs.get(i + 1))
    else {
        return None;
    };
    let (gemm, next) = (nodes.sole[i]?, nodes.sole[i + 1]?);
    let v = *graph.nodes[gemm].outputs.first()?;
    let only_next = nodes.consumers[v.index()] == [next] && !nodes.kept[v.index()];
    let dx_clear = ![*x, *w, *offsets, *pre, *y].iter().any(|r| r.overlaps(dx));
    let f32s = [*y, *pre, *dx].iter().all(|v| v.elem == ElemType::F32);
    if dy != y || !only_next || !dx_clear || !f32s {
        return None;
    }
    Some(Instr::GroupedMatMulGeluGrad {
        x: *x,
        w: *w,
        offsets: *offsets,
        y: *y,
        dims: *dims,
        tanh: *tanh,
        pre: *pre,
        dx: *dx,
    })
}

/// An elementwise instruction as a step: its op, operands (view and
/// strides over `shape`), output and shape.
struct Elementwise {
    op: FusedOp,
    args: Vec<(View, Vec<usize>)>,
    out: View,
    shape: Vec<usize>,
}

fn as_elementwise(instr: &Instr) -> Option<Elementwise> {
    let flat = |len: usize| vec![len];
    let e = match instr {
        Instr::Unary { op, x, y } => Elementwise {
            op: FusedOp::Unary(*op),
            args: vec![(*x, vec![1])],
            out: *y,
            shape: flat(y.len),
        },
        Instr::GeluGrad { tanh, x, dy, dx } => Elementwise {
            op: FusedOp::GeluGrad { tanh: *tanh },
            args: vec![(*x, vec![1]), (*dy, vec![1])],
            out: *dx,
            shape: flat(dx.len),
        },
        Instr::Binary {
            op,
            a,
            a_strides,
            b,
            b_strides,
            out,
            shape,
        } if *op != BinaryOp::Pow => Elementwise {
            op: FusedOp::Binary(*op),
            args: vec![(*a, a_strides.clone()), (*b, b_strides.clone())],
            out: *out,
            shape: shape.clone(),
        },
        Instr::Compare {
            op,
            a,
            a_strides,
            b,
            b_strides,
            out,
            shape,
        } => Elementwise {
            op: FusedOp::Compare(*op),
            args: vec![(*a, a_strides.clone()), (*b, b_strides.clone())],
            out: *out,
            shape: shape.clone(),
        },
        Instr::Select {
            cond,
            cond_strides,
            a,
            a_strides,
            b,
            b_strides,
            out,
            shape,
        } => Elementwise {
            op: FusedOp::Select,
            args: vec![
                (*cond, cond_strides.clone()),
                (*a, a_strides.clone()),
                (*b, b_strides.clone()),
            ],
            out: *out,
            shape: shape.clone(),
        },
        _ => return None,
    };
    // f32 data; a compare writes bytes, a select reads them as its
    // condition.
    let cond_ok = |i: usize, v: &View| match (&e.op, i) {
        (FusedOp::Select, 0) => v.elem == ElemType::U8,
        _ => v.elem == ElemType::F32,
    };
    let out_ok = match e.op {
        FusedOp::Compare(_) => e.out.elem == ElemType::U8,
        _ => e.out.elem == ElemType::F32,
    };
    let args_ok = e.args.iter().enumerate().all(|(i, (v, _))| cond_ok(i, v));
    let len: usize = e.shape.iter().product();
    (out_ok && args_ok && e.out.len == len && e.shape.len() <= 8).then_some(e)
}

/// The chain starting at instruction `i` (at least two instructions),
/// and how many it replaces.
fn chain(
    graph: &Graph,
    nodes: &NodeMap,
    instrs: &[Instr],
    i: usize,
) -> Option<(FusedElementwise, usize)> {
    let first = as_elementwise(&instrs[i])?;
    nodes.sole[i]?;
    let mut shape = first.shape.clone();
    // Inputs: (view, strides over `shape`, whether only ever read
    // contiguously, as a flat step reads).
    let mut inputs: Vec<FusedInput> = Vec::new();
    let mut steps: Vec<FusedStep> = Vec::new();
    let mut members: Vec<usize> = Vec::new(); // nodes
    let mut j = i;
    let mut candidate = Some(first);
    while let Some(e) = candidate.take() {
        let Some(node) = nodes.sole[j] else { break };
        let len: usize = shape.iter().product();
        let e_len: usize = e.shape.iter().product();
        if e_len != len || steps.len() == MAX_STEPS {
            break;
        }
        // A flat step (unary, GELU backward) fits any shape of its length;
        // a shaped step turns a flat chain into its shape.
        let e_flat = e.shape.len() == 1 && e.args.iter().all(|(_, s)| s == &[1]);
        let chain_flat =
            shape.len() == 1 && inputs.iter().all(|inp| inp.strides == [1]) && shape != e.shape;
        let new_shape = if e_flat || e.shape == shape {
            shape.clone()
        } else if chain_flat {
            e.shape.clone()
        } else {
            break;
        };
        let contiguous = contiguous_strides(&new_shape);
        let mut args = Vec::new();
        let mut new_inputs: Vec<FusedInput> = Vec::new();
        let mut reads_chain = false;
        let mut ok = true;
        for (view, strides) in &e.args {
            let strides = if e_flat {
                contiguous.clone()
            } else {
                strides.clone()
            };
            // The latest step that wrote exactly this view, read in order.
            if let Some(k) = steps.iter().rposition(|s| s.out == *view) {
                if strides != contiguous {
                    ok = false;
                    break;
                }
                args.push(FusedArg::Step(k));
                reads_chain = true;
                continue;
            }
            // Otherwise an input: it must not overlap what the chain writes.
            if steps.iter().any(|s| s.out.overlaps(view)) {
                ok = false;
                break;
            }
            let all = inputs.iter().chain(&new_inputs);
            let found = all
                .enumerate()
                .find(|(_, inp)| inp.view == *view && inp.strides == strides);
            let idx = match found {
                Some((idx, _)) => idx,
                None => {
                    new_inputs.push(FusedInput {
                        view: *view,
                        strides,
                    });
                    inputs.len() + new_inputs.len() - 1
                }
            };
            args.push(FusedArg::Input(idx));
        }
        let out_clashes = inputs
            .iter()
            .chain(&new_inputs)
            .any(|inp| inp.view.overlaps(&e.out))
            || steps.iter().any(|s| s.out.overlaps(&e.out));
        if !ok
            || (!steps.is_empty() && !reads_chain)
            || out_clashes
            || inputs.len() + new_inputs.len() > MAX_INPUTS
        {
            break;
        }
        if new_shape != shape {
            for inp in &mut inputs {
                inp.strides = contiguous.clone();
            }
            shape = new_shape;
        }
        inputs.extend(new_inputs);
        steps.push(FusedStep {
            op: e.op,
            args,
            out: e.out,
            store: true,
        });
        members.push(node);
        j += 1;
        candidate = instrs.get(j).and_then(as_elementwise);
    }
    if steps.len() < 2 {
        return None;
    }
    // Store what outlives the chain.
    let last = steps.len() - 1;
    for (k, (s, &n)) in steps.iter_mut().zip(&members).enumerate() {
        let v = graph.nodes[n].outputs[0];
        let outside = nodes.consumers[v.index()]
            .iter()
            .any(|c| !members.contains(c));
        s.store = k == last || outside || nodes.kept[v.index()];
    }
    Some((
        FusedElementwise {
            shape,
            inputs,
            steps,
        },
        members.len(),
    ))
}
