//! `budget:BYTES`: the plan of least recompute FLOPs whose planned arena
//! peak fits in a budget.
//!
//! The search runs on the chain of segments between checkpoint boundaries
//! ([`Structure`]). A plan splits the segments into consecutive *groups*;
//! each group keeps the boundary at its end and either recomputes the
//! rest of its segments (from the kept boundary before it) right before
//! their first backward use, or, for a single segment, stores it whole.
//!
//! Peak model. With clones shared across a group, a group's values are
//! live during its own backward exactly as without checkpointing, so the
//! live bytes at any backward position are those of the plain joint graph
//! minus the dropped bytes of every group whose recompute has not started
//! yet; in the forward pass, minus the dropped bytes already dead. The
//! cost of a group is thus a number `c(a, b)` measured once on the plain
//! graph's lifetimes, and the plan's peak is `max over groups of
//! c(group) - S(group)`, where `S` is the dropped bytes of the groups
//! before it: an exact dynamic program over (segment, S) gives the least
//! FLOPs under any model budget. On a chain of single-op segments the
//! model is the planner's live set exactly; on general DAGs it is an upper
//! bound of it that ignores how branches inside a segment interleave (the
//! documented heuristic).
//!
//! Confirmation. The planner, not the model, decides: walking model
//! budgets down from infinity gives a fixed sequence of plans with
//! non-decreasing FLOPs; the answer for a budget is the first of them
//! whose real planned peak fits. So a larger budget never gets more
//! recompute, every answer fits, and when none does the error quotes the
//! smallest real peak of the sequence, which itself succeeds.

use super::analysis::Structure;
use crate::autodiff::GradGraph;
use crate::plan::{MemoryPlan, Storage, round_up};
use crate::{Graph, ValueId};

/// How a group treats its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Keep only the boundary at the group's end; recompute the rest.
    Recompute,
    /// Keep everything of the (single) segment.
    Store,
}

/// One group's numbers, independent of the groups before it.
#[derive(Debug, Clone, Copy)]
struct Group {
    /// Model peak before subtracting the earlier groups' dropped bytes.
    cost: usize,
    /// Bytes this group drops.
    dropped: usize,
    /// FLOPs of its recompute.
    flops: u64,
}

/// A plan of the model: the keep mask and its model peak.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub keep: Vec<bool>,
    pub model_peak: usize,
}

/// Range maximum over a fixed array (sparse table).
struct MaxTable {
    levels: Vec<Vec<usize>>,
}

impl MaxTable {
    fn new(xs: &[usize]) -> MaxTable {
        let mut levels = vec![xs.to_vec()];
        let mut width = 1;
        while 2 * width <= xs.len() {
            let prev = levels.last().expect("level 0 exists");
            let next = (0..=xs.len() - 2 * width)
                .map(|i| prev[i].max(prev[i + width]))
                .collect();
            levels.push(next);
            width *= 2;
        }
        MaxTable { levels }
    }

    /// Max over `lo..hi` (0 when empty).
    fn max(&self, lo: usize, hi: usize) -> usize {
        let hi = hi.min(self.levels[0].len());
        if lo >= hi {
            return 0;
        }
        let k = (usize::BITS - 1 - (hi - lo).leading_zeros()) as usize;
        self.levels[k][lo].max(self.levels[k][hi - (1 << k)])
    }
}

/// Per-segment numbers measured on the plain joint graph.
pub struct Model<'a> {
    s: &'a Structure,
    graph: &'a Graph,
    live: MaxTable,
    gap: Vec<usize>,
    /// Per segment: dropped bytes of its interior needed values.
    interior: Vec<usize>,
    /// Per segment: bytes of its boundary (0 for the tail).
    boundary: Vec<usize>,
    flops_span: Vec<u64>,
    flops_end: Vec<u64>,
    first_interior_use: Vec<usize>,
    first_boundary_use: Vec<usize>,
    /// Per segment: first backward use of anything in it or before it.
    first_use_upto: Vec<usize>,
    loc_kept: Vec<usize>,
    loc_dropped: Vec<usize>,
    loc_store: Vec<usize>,
    transient: Vec<usize>,
    /// Per boundary: kept by every plan.
    forced: Vec<bool>,
    end: usize,
}

impl<'a> Model<'a> {
    /// Measures the model on `joint` and its plain plan.
    pub fn new(joint: &'a GradGraph, s: &'a Structure, plan: &MemoryPlan) -> Model<'a> {
        let g = &joint.graph;
        let n = g.nodes.len();
        let align = plan.alignment;
        let stored = |v: ValueId| match plan.storage_of(v) {
            Storage::Arena { bytes, .. } => round_up(bytes, align),
            _ => 0,
        };
        let mut born = vec![0usize; n + 2];
        let mut dead = vec![0usize; n + 2];
        let mut gap_born = vec![0usize; n + 2];
        for (v, life) in plan.lifetimes.iter().enumerate() {
            let (Some(life), bytes) = (life, stored(ValueId(v as u32))) else {
                continue;
            };
            born[life.first] += bytes;
            dead[life.last + 1] += bytes;
            gap_born[life.first + 1] += bytes;
        }
        let (mut live, mut gap) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
        let (mut l, mut gl) = (0usize, 0usize);
        for t in 0..=n {
            l = l + born[t] - dead[t];
            gl = gl + gap_born[t] - dead[t];
            live.push(l);
            gap.push(gl);
        }
        let segs = s.segments.len();
        let mut m = Model {
            s,
            graph: g,
            live: MaxTable::new(&live),
            gap,
            interior: vec![0; segs],
            boundary: vec![0; segs],
            flops_span: vec![0; segs],
            flops_end: vec![0; segs],
            first_interior_use: vec![usize::MAX; segs],
            first_boundary_use: vec![usize::MAX; segs],
            first_use_upto: vec![usize::MAX; segs],
            loc_kept: vec![0; segs],
            loc_dropped: vec![0; segs],
            loc_store: vec![0; segs],
            transient: vec![0; segs],
            forced: s.boundaries.iter().map(|b| s.forced[b.index()]).collect(),
            end: n,
        };
        for seg in 0..segs {
            m.measure(seg, &live, &stored);
        }
        m
    }

    /// Interior needed values of a segment that a plan may drop.
    fn interior_values(&self, seg: usize) -> Vec<ValueId> {
        let s = self.s;
        s.segments[seg]
            .iter()
            .flat_map(|&p| self.graph.nodes[p].outputs.iter().copied())
            .filter(|&v| s.needed[v.index()] && !s.forced[v.index()])
            .filter(|&v| s.boundaries.get(seg) != Some(&v))
            .collect()
    }

    fn measure(&mut self, seg: usize, live: &[usize], stored: &dyn Fn(ValueId) -> usize) {
        let s = self.s;
        let interior = self.interior_values(seg);
        let bnd = s.boundaries.get(seg).copied();
        self.interior[seg] = interior.iter().map(|&v| stored(v)).sum();
        self.boundary[seg] = bnd.map_or(0, stored);
        self.first_interior_use[seg] = interior
            .iter()
            .map(|v| s.first_backward_use[v.index()])
            .min()
            .unwrap_or(usize::MAX);
        self.first_boundary_use[seg] = bnd.map_or(usize::MAX, |b| s.first_backward_use[b.index()]);
        let own_first = s.segments[seg]
            .iter()
            .flat_map(|&p| self.graph.nodes[p].outputs.iter())
            .map(|v| s.first_backward_use[v.index()])
            .min()
            .unwrap_or(usize::MAX);
        let before = if seg == 0 {
            usize::MAX
        } else {
            self.first_use_upto[seg - 1]
        };
        self.first_use_upto[seg] = before.min(own_first);
        self.flops_end[seg] = self.ancestor_flops(seg, &interior);
        let mut targets = interior.clone();
        targets.extend(bnd);
        self.flops_span[seg] = self.ancestor_flops(seg, &targets);

        let prev = seg.checked_sub(1).map(|p| s.boundaries[p]);
        let prev_bytes = prev.map_or(0, stored);
        let (mut kept, mut dropped, mut store, mut transient) = (0, 0, 0, 0);
        for &t in &s.segments[seg] {
            let gone: usize = interior
                .iter()
                .filter(|v| s.last_forward_use[v.index()] < t)
                .map(|&v| stored(v))
                .sum();
            let prev_gone = prev
                .filter(|v| s.last_forward_use[v.index()] < t)
                .map_or(0, |_| prev_bytes);
            kept = kept.max(live[t].saturating_sub(gone));
            dropped = dropped.max(live[t].saturating_sub(gone + prev_gone));
            store = store.max(live[t]);
            let scratch: usize = s.segments[seg]
                .iter()
                .flat_map(|&p| self.graph.nodes[p].outputs.iter().copied())
                .filter(|v| !s.needed[v.index()])
                .filter(|v| {
                    let born = s.producers[v.index()].map_or(0, |p| p.index());
                    born <= t && t <= s.last_forward_use[v.index()]
                })
                .map(stored)
                .sum();
            transient = transient.max(scratch);
        }
        self.loc_kept[seg] = kept;
        self.loc_dropped[seg] = dropped;
        self.loc_store[seg] = store;
        self.transient[seg] = transient;
    }

    /// FLOPs of the nodes of `seg` that `targets` depend on without
    /// passing through a forced value or leaving the segment.
    fn ancestor_flops(&self, seg: usize, targets: &[ValueId]) -> u64 {
        let s = self.s;
        let mut seen = vec![false; self.graph.nodes.len()];
        let mut stack: Vec<ValueId> = targets.to_vec();
        let mut flops = 0;
        while let Some(v) = stack.pop() {
            let stop = s.forced[v.index()] && !targets.contains(&v);
            if s.segment_of[v.index()] != Some(seg) || stop {
                continue;
            }
            let Some(p) = s.producers[v.index()] else {
                continue;
            };
            if std::mem::replace(&mut seen[p.index()], true) {
                continue;
            }
            let node = &self.graph.nodes[p.index()];
            flops += self.graph.node_cost(node).flops;
            stack.extend(node.inputs.iter().copied());
        }
        flops
    }

    fn boundary_count(&self) -> usize {
        self.s.boundaries.len()
    }

    /// The numbers of group `a..=b` (segments) in `mode`.
    fn group(&self, a: usize, b: usize, mode: Mode, fwd: usize) -> Group {
        let first_use_before = if a == 0 {
            self.end + 1
        } else {
            self.first_use_upto[a - 1]
        };
        let start = if b == self.boundary_count() {
            self.s.backward_start
        } else {
            self.first_use_upto[b]
        };
        let region_end = first_use_before.min(self.end + 1);
        if mode == Mode::Store {
            return Group {
                cost: self.loc_store[a].max(self.live.max(start, region_end)),
                dropped: 0,
                flops: 0,
            };
        }
        let dropped: usize = (a..=b).map(|k| self.interior[k]).sum::<usize>()
            + (a..b).map(|k| self.boundary[k]).sum::<usize>();
        let flops = (a..b).map(|k| self.flops_span[k]).sum::<u64>() + self.flops_end[b];
        let first = (a..=b)
            .map(|k| self.first_interior_use[k])
            .chain((a..b).map(|k| self.first_boundary_use[k]))
            .min()
            .unwrap_or(usize::MAX);
        let mut bwd = self.live.max(start, region_end);
        if first != usize::MAX {
            let split = first.clamp(start, region_end);
            let before = self.live.max(start, split).saturating_sub(dropped);
            let after = self.live.max(split, region_end);
            let transient = (a..=b).map(|k| self.transient[k]).max().unwrap_or(0);
            let at_recompute = self.gap.get(first).copied().unwrap_or(0) + transient;
            bwd = before.max(after).max(at_recompute);
        }
        Group {
            cost: fwd.max(bwd),
            dropped,
            flops,
        }
    }

    /// All groups: `table[a][b - a]` for recompute, plus store groups.
    fn groups(&self) -> (Vec<Vec<Option<Group>>>, Vec<Option<Group>>) {
        let segs = self.s.segments.len();
        let mut recompute = Vec::with_capacity(segs);
        for a in 0..segs {
            let mut row = Vec::with_capacity(segs - a);
            let (mut fwd, mut dropped_before) = (self.loc_kept[a], 0usize);
            for b in a..segs {
                if b > a {
                    if self.forced[b - 1] {
                        break;
                    }
                    // Segments a..b-1 are dead by now, except boundary b-1,
                    // whose death inside segment b loc_dropped accounts for.
                    dropped_before += self.interior[b - 1] + self.boundary[b - 1];
                    let here =
                        self.loc_dropped[b].saturating_sub(dropped_before - self.boundary[b - 1]);
                    fwd = fwd.max(here);
                }
                row.push(Some(self.group(a, b, Mode::Recompute, fwd)));
            }
            recompute.push(row);
        }
        let store = (0..segs)
            .map(|a| (self.interior[a] > 0).then(|| self.group(a, a, Mode::Store, 0)))
            .collect();
        (recompute, store)
    }
}

/// One DP entry: the best way found to cover the first segments.
#[derive(Debug, Clone, Copy)]
struct Entry {
    saved: usize,
    flops: u64,
    peak: usize,
    /// (state, entry index, last group's first segment, mode).
    from: Option<(usize, usize, usize, Mode)>,
}

/// The plans of least model FLOPs, walked down from an unbounded model
/// budget; see the module docs.
pub struct Search<'a> {
    model: Model<'a>,
    recompute: Vec<Vec<Option<Group>>>,
    store: Vec<Option<Group>>,
}

impl<'a> Search<'a> {
    pub fn new(model: Model<'a>) -> Search<'a> {
        let (recompute, store) = model.groups();
        Search {
            model,
            recompute,
            store,
        }
    }

    /// The plan of least FLOPs (then least model peak) whose model peak is
    /// at most `budget`, if any.
    pub fn best(&self, budget: usize) -> Option<Candidate> {
        let segs = self.model.s.segments.len();
        let mut states: Vec<Vec<Entry>> = vec![Vec::new(); segs + 1];
        states[0].push(Entry {
            saved: 0,
            flops: 0,
            peak: 0,
            from: None,
        });
        for a in 0..segs {
            prune(&mut states[a]);
            for (e, entry) in states[a].clone().iter().enumerate() {
                for (k, group) in self.recompute[a].iter().enumerate() {
                    let Some(group) = group else { break };
                    self.extend(
                        &mut states,
                        a,
                        a + k,
                        e,
                        entry,
                        group,
                        Mode::Recompute,
                        budget,
                    );
                }
                if let Some(group) = &self.store[a] {
                    self.extend(&mut states, a, a, e, entry, group, Mode::Store, budget);
                }
            }
        }
        let last = &states[segs];
        let best = (0..last.len()).min_by_key(|&i| (last[i].flops, last[i].peak, i))?;
        Some(self.reconstruct(&states, segs, best))
    }

    #[allow(clippy::too_many_arguments)]
    fn extend(
        &self,
        states: &mut [Vec<Entry>],
        a: usize,
        b: usize,
        e: usize,
        entry: &Entry,
        group: &Group,
        mode: Mode,
        budget: usize,
    ) {
        let peak = group.cost.saturating_sub(entry.saved);
        if peak > budget {
            return;
        }
        states[b + 1].push(Entry {
            saved: entry.saved + group.dropped,
            flops: entry.flops + group.flops,
            peak: entry.peak.max(peak),
            from: Some((a, e, a, mode)),
        });
    }

    fn reconstruct(&self, states: &[Vec<Entry>], mut state: usize, mut index: usize) -> Candidate {
        let s = self.model.s;
        let entry = states[state][index];
        let mut keep = vec![false; s.forward_value.len()];
        while let Some((prev, prev_index, a, mode)) = states[state][index].from {
            let b = state - 1;
            if let Some(&bnd) = s.boundaries.get(b) {
                keep[bnd.index()] = true;
            }
            if mode == Mode::Store {
                for &p in &s.segments[a] {
                    for &o in &self.model.graph.nodes[p].outputs {
                        keep[o.index()] = true;
                    }
                }
            }
            (state, index) = (prev, prev_index);
        }
        Candidate {
            keep,
            model_peak: entry.peak,
        }
    }
}

/// Drops entries another entry beats on both saved bytes (more) and FLOPs
/// (fewer); keeps the lower peak among equals. Deterministic.
fn prune(entries: &mut Vec<Entry>) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| {
        let e = &entries[i];
        (e.flops, std::cmp::Reverse(e.saved), e.peak, i)
    });
    let mut kept = Vec::with_capacity(entries.len());
    let mut best_saved = None;
    for i in order {
        let e = entries[i];
        if best_saved.is_none_or(|s| e.saved > s) {
            best_saved = Some(e.saved);
            kept.push(e);
        }
    }
    *entries = kept;
}
