//! The independent checker behind [`MemoryPlan::check`]. It shares no code
//! with the planner but the late reads the plan promises the program
//! (`late.rs`): roots of aliases and last uses are re-derived from the
//! graph, and overlap is found by a sweep over node positions (at each
//! position, the live arena buffers sorted by offset must be disjoint)
//! rather than by comparing lifetimes pairwise as the assigner does.

use super::{MemoryPlan, Storage, round_up};
use crate::ops::{Movement, Op};
use crate::{Graph, ValueId};

type Check<T = ()> = Result<T, String>;

/// An arena buffer as the checker sees it: live at positions
/// `first..=last`, occupying `offset..offset + bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Block {
    pub id: usize,
    pub first: usize,
    pub last: usize,
    pub offset: usize,
    pub bytes: usize,
}

/// Checks hand-made blocks, naming them `#id`; see [`check_blocks_named`].
#[cfg(test)]
pub(super) fn check_blocks(blocks: &[Block], arena_bytes: usize, alignment: usize) -> Check<usize> {
    check_blocks_named(blocks, arena_bytes, alignment, &|id| format!("#{id}"))
}

/// Every block aligned and inside `0..arena_bytes`, and no two blocks live
/// at the same position sharing a byte. Returns the live peak: the largest
/// total of sizes (rounded up to `alignment`) live at one position.
pub(super) fn check_blocks_named(
    blocks: &[Block],
    arena_bytes: usize,
    alignment: usize,
    name: &dyn Fn(usize) -> String,
) -> Check<usize> {
    for b in blocks {
        if b.first > b.last {
            return Err(format!("{} dies before it is born", name(b.id)));
        }
        if !b.offset.is_multiple_of(alignment) {
            let (n, o) = (name(b.id), b.offset);
            return Err(format!("{n} at offset {o} is not aligned to {alignment}"));
        }
        if b.offset + b.bytes > arena_bytes {
            return Err(format!(
                "{} at {}..{} lies outside the arena of {arena_bytes} bytes",
                name(b.id),
                b.offset,
                b.offset + b.bytes
            ));
        }
    }
    let end = blocks.iter().map(|b| b.last).max().unwrap_or(0);
    let mut peak = 0;
    for pos in 0..=end {
        let mut live: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.first <= pos && pos <= b.last)
            .collect();
        peak = peak.max(live.iter().map(|b| round_up(b.bytes, alignment)).sum());
        live.sort_by_key(|b| (b.offset, b.id));
        // The live block reaching furthest up so far.
        let mut reach: Option<&Block> = None;
        for b in live.into_iter().filter(|b| b.bytes > 0) {
            if let Some(r) = reach
                && r.offset + r.bytes > b.offset
            {
                return Err(format!(
                    "{} at {}..{} and {} at {}..{} are both live at node {pos} and overlap",
                    name(r.id),
                    r.offset,
                    r.offset + r.bytes,
                    name(b.id),
                    b.offset,
                    b.offset + b.bytes
                ));
            }
            if reach.is_none_or(|r| b.offset + b.bytes > r.offset + r.bytes) {
                reach = Some(b);
            }
        }
    }
    Ok(peak)
}

/// See [`MemoryPlan::check`].
pub(super) fn check(plan: &MemoryPlan, graph: &Graph) -> Check {
    if plan.storage.len() != graph.values.len() {
        return Err(format!(
            "the plan has storage for {} values, the graph has {}",
            plan.storage.len(),
            graph.values.len()
        ));
    }
    if plan.frees_after.len() != graph.nodes.len() {
        return Err(format!(
            "frees_after has {} entries for {} nodes",
            plan.frees_after.len(),
            graph.nodes.len()
        ));
    }
    if plan.alignment == 0 {
        return Err("the alignment is 0".into());
    }
    if !graph.is_static() {
        return Err(format!(
            "graph '{}' has an unbound batch dimension",
            graph.name
        ));
    }
    check_leaves(plan, graph)?;
    check_grads(plan, graph)?;
    let roots = check_node_outputs(plan, graph)?;
    let blocks = arena_blocks(plan, graph, &roots)?;
    let name = |id: usize| format!("'{}'", graph.values[id].name);
    let peak = check_blocks_named(&blocks, plan.arena_bytes, plan.alignment, &name)?;
    let top = blocks
        .iter()
        .map(|b| b.offset + round_up(b.bytes, plan.alignment))
        .max()
        .unwrap_or(0);
    if plan.arena_bytes != top {
        return Err(format!(
            "arena_bytes is {}, but the arena values end at {top}",
            plan.arena_bytes
        ));
    }
    if plan.live_peak_bytes != peak {
        return Err(format!(
            "live_peak_bytes is {}, but the live arena values peak at {peak}",
            plan.live_peak_bytes
        ));
    }
    check_frees(plan, graph, &blocks)?;
    check_totals(plan, graph)
}

/// The name of `v`, or `#id` for an id outside the graph.
fn name(graph: &Graph, v: ValueId) -> String {
    graph
        .values
        .get(v.index())
        .map_or_else(|| format!("#{}", v.0), |x| x.name.clone())
}

fn bytes_of(graph: &Graph, v: ValueId) -> usize {
    graph.static_shape(v).iter().product::<usize>() * graph.ty(v).dtype.size_bytes()
}

/// Inputs, parameters and state in their own buffers, and nothing else
/// claiming one.
fn check_leaves(plan: &MemoryPlan, graph: &Graph) -> Check {
    let leaves = (graph.inputs.iter().enumerate()).map(|(i, x)| (x.value, Storage::Input(i)));
    let leaves = leaves
        .chain((graph.params.iter().enumerate()).map(|(i, p)| (p.value, Storage::Param(i))))
        .chain((graph.state.iter().enumerate()).map(|(i, s)| (s.value, Storage::State(i))));
    for (v, want) in leaves {
        if plan.storage[v.index()] != want {
            let got = plan.storage[v.index()];
            let n = graph.name_of(v);
            return Err(format!("'{n}' should be stored as {want:?}, found {got:?}"));
        }
    }
    for (v, s) in plan.storage.iter().enumerate() {
        let owner = match *s {
            Storage::Input(i) => graph.inputs.get(i).map(|x| x.value),
            Storage::Param(i) => graph.params.get(i).map(|p| p.value),
            Storage::State(i) => graph.state.get(i).map(|s| s.value),
            _ => continue,
        };
        if owner != Some(ValueId(v as u32)) {
            let n = &graph.values[v].name;
            return Err(format!(
                "'{n}' claims {s:?}, which belongs to another value"
            ));
        }
    }
    Ok(())
}

/// Node outputs in the arena, the gradient buffer, or (Reshape outputs
/// only) aliasing their root; unused values never read. Returns each
/// value's root: the value whose bytes it occupies.
fn check_node_outputs(plan: &MemoryPlan, graph: &Graph) -> Check<Vec<usize>> {
    let n = graph.values.len();
    let mut root: Vec<usize> = (0..n).collect();
    let mut produced = vec![false; n];
    for node in &graph.nodes {
        let reshape = matches!(node.op, Op::Movement(Movement::Reshape(_)));
        for &out in &node.outputs {
            produced[out.index()] = true;
            match plan.storage[out.index()] {
                Storage::Arena { .. } | Storage::Grad { .. } => {}
                Storage::Alias { of } if reshape => {
                    let want = root[node.inputs[0].index()];
                    if of.index() != want {
                        return Err(format!(
                            "'{}' aliases '{}', but its root is '{}'",
                            graph.name_of(out),
                            name(graph, of),
                            graph.values[want].name
                        ));
                    }
                    root[out.index()] = want;
                }
                other => {
                    return Err(format!(
                        "node '{}' ({}) writes '{}', which is stored as {other:?}",
                        node.name,
                        node.op.name(),
                        graph.name_of(out)
                    ));
                }
            }
        }
    }
    let mut read = vec![false; n];
    let reads = graph.nodes.iter().flat_map(|node| node.inputs.iter());
    let reads = reads
        .chain(&graph.outputs)
        .chain(&graph.loss)
        .chain(graph.state.iter().filter_map(|s| s.update.as_ref()))
        .chain(plan.grad_layout.iter().map(|s| &s.value));
    for v in reads {
        read[v.index()] = true;
    }
    for (v, s) in plan.storage.iter().enumerate() {
        let node_class = matches!(
            s,
            Storage::Arena { .. } | Storage::Grad { .. } | Storage::Alias { .. }
        );
        let name = &graph.values[v].name;
        if node_class && !produced[v] {
            return Err(format!(
                "'{name}' is stored as {s:?}, but no node writes it"
            ));
        }
        if *s == Storage::Unused && read[v] {
            return Err(format!("'{name}' is read, but the plan stores it nowhere"));
        }
    }
    Ok(root)
}

/// Arena values with lifetimes from their producer to the last node that
/// needs them or any of their aliases (one past the last node for values
/// read at the end of the step).
fn arena_blocks(plan: &MemoryPlan, graph: &Graph, root: &[usize]) -> Check<Vec<Block>> {
    let end = graph.nodes.len();
    let mut born = vec![usize::MAX; graph.values.len()];
    let mut last = vec![0usize; graph.values.len()];
    let mut need = |v: ValueId, at: usize| {
        let r = root[v.index()];
        last[r] = last[r].max(at);
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        node.inputs.iter().for_each(|&x| need(x, i));
        for &out in &node.outputs {
            born[out.index()] = i;
            need(out, i);
        }
    }
    for (v, at) in super::late::late_reads(graph) {
        need(v, at);
    }
    let at_end = graph.outputs.iter().chain(&graph.loss);
    let at_end = at_end
        .chain(graph.state.iter().filter_map(|s| s.update.as_ref()))
        .chain(plan.grad_copies.iter().map(|&k| &plan.grad_layout[k].value));
    for &v in at_end {
        need(v, end);
    }
    let mut blocks = Vec::new();
    for (v, s) in plan.storage.iter().enumerate() {
        let Storage::Arena { offset, bytes } = *s else {
            continue;
        };
        let want = bytes_of(graph, ValueId(v as u32));
        if bytes != want {
            let n = &graph.values[v].name;
            return Err(format!(
                "'{n}' has {want} bytes, but the arena gives it {bytes}"
            ));
        }
        blocks.push(Block {
            id: v,
            first: born[v],
            last: last[v],
            offset,
            bytes,
        });
    }
    Ok(blocks)
}

/// Slots aligned, disjoint, inside the buffer, one per parameter; every
/// slot filled either in place (its value stored there) or by a copy.
fn check_grads(plan: &MemoryPlan, graph: &Graph) -> Check {
    let (a, n) = (plan.alignment, graph.values.len());
    let slots = &plan.grad_layout;
    let mut by_offset: Vec<usize> = (0..slots.len()).collect();
    by_offset.sort_by_key(|&k| (slots[k].offset, k));
    let mut top = 0;
    for &k in &by_offset {
        let s = &slots[k];
        if s.param.index() >= n || s.value.index() >= n {
            return Err(format!("gradient slot {k} names a value outside the graph"));
        }
        let p = graph.name_of(s.param);
        if graph.ty(s.param) != graph.ty(s.value) || bytes_of(graph, s.value) != s.bytes {
            return Err(format!(
                "the gradient slot of '{p}' does not fit its gradient"
            ));
        }
        if !s.offset.is_multiple_of(a) || s.offset < top || s.offset + s.bytes > plan.grad_bytes {
            return Err(format!(
                "the gradient slot of '{p}' at {}..{} is misaligned, overlaps another slot or \
                 lies outside the gradient buffer of {} bytes",
                s.offset,
                s.offset + s.bytes,
                plan.grad_bytes
            ));
        }
        top = s.offset + round_up(s.bytes, a);
    }
    if plan.grad_bytes != top {
        return Err(format!(
            "grad_bytes is {}, but the slots end at {top}",
            plan.grad_bytes
        ));
    }
    let mut params: Vec<ValueId> = slots.iter().map(|s| s.param).collect();
    params.sort();
    if let Some(w) = params.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("'{}' has two gradient slots", graph.name_of(w[0])));
    }
    let mut copied = vec![false; slots.len()];
    for &k in &plan.grad_copies {
        if k >= slots.len() || std::mem::replace(&mut copied[k], true) {
            return Err(format!("grad_copies names slot {k} twice or out of range"));
        }
    }
    let mut filled = vec![0usize; n];
    for (k, s) in slots.iter().enumerate() {
        let here = plan.storage[s.value.index()]
            == Storage::Grad {
                offset: s.offset,
                bytes: s.bytes,
            };
        if here == copied[k] {
            let p = graph.name_of(s.param);
            return Err(format!(
                "the gradient slot of '{p}' must be written in place or copied, not both or neither"
            ));
        }
        filled[s.value.index()] += usize::from(here);
    }
    for (v, s) in plan.storage.iter().enumerate() {
        if matches!(s, Storage::Grad { .. }) && filled[v] != 1 {
            let name = &graph.values[v].name;
            return Err(format!(
                "'{name}' is stored as {s:?}, which is not its slot"
            ));
        }
    }
    Ok(())
}

/// `frees_after` frees each arena value right after its last use, and
/// nothing else.
fn check_frees(plan: &MemoryPlan, graph: &Graph, blocks: &[Block]) -> Check {
    let end = graph.nodes.len();
    let mut want: Vec<Vec<ValueId>> = vec![Vec::new(); end];
    for b in blocks.iter().filter(|b| b.last < end) {
        want[b.last].push(ValueId(b.id as u32));
    }
    for (pos, (got, want)) in plan.frees_after.iter().zip(&want).enumerate() {
        if got != want {
            let names = |vs: &[ValueId]| {
                let n: Vec<String> = vs.iter().map(|&v| name(graph, v)).collect();
                n.join(", ")
            };
            return Err(format!(
                "frees_after[{pos}] lists [{}], but the arena values whose last use is node \
                 '{}' are [{}]",
                names(got),
                graph.nodes[pos].name,
                names(want)
            ));
        }
    }
    Ok(())
}

/// The byte totals of the buffers outside the arena.
fn check_totals(plan: &MemoryPlan, graph: &Graph) -> Check {
    let sum = |vs: Vec<ValueId>| vs.iter().map(|&v| bytes_of(graph, v)).sum::<usize>();
    let totals = [
        (
            "param_bytes",
            plan.param_bytes,
            sum(graph.params.iter().map(|p| p.value).collect()),
        ),
        (
            "input_bytes",
            plan.input_bytes,
            sum(graph.inputs.iter().map(|i| i.value).collect()),
        ),
        (
            "state_bytes",
            plan.state_bytes,
            sum(graph.state.iter().map(|s| s.value).collect()),
        ),
    ];
    for (what, got, want) in totals {
        if got != want {
            return Err(format!("{what} is {got}, but the graph needs {want}"));
        }
    }
    Ok(())
}
