//! The memory planner: where every value of a bound graph lives during one
//! training step, decided before any worker runs it.
//!
//! [`plan_memory`] sorts each value into a storage class ([`Storage`]):
//!
//! - graph inputs, parameters and state keep buffers of their own;
//! - each gradient that a node produces goes to the flat gradient buffer, in
//!   the order backward produces them, so a bucket of it can be all-reduced
//!   while backward still runs ([`MemoryPlan::grad_layout`]);
//! - Reshape outputs alias the value they reshape (no copy), which keeps that
//!   value alive until the alias's last use;
//! - everything else (activations, cotangents, scratch) gets an offset in one
//!   arena.
//!
//! Liveness is computed on the linear node order: a value lives from its
//! producing node to its last use; graph outputs, state updates and
//! gradients copied at the end live to the end of the step; the inputs of
//! a grouped matmul that the program may fuse with the GELU backward after
//! it live through that node too (`late.rs`). Arena offsets
//! are assigned greedily by size (largest first, each at the lowest offset
//! that clears every placed value whose lifetime intersects its own;
//! [`assign`]). The planned peak [`MemoryPlan::arena_bytes`] is exact, and
//! [`MemoryPlan::live_peak_bytes`] is the lower bound it is measured
//! against. [`MemoryPlan::check`] re-derives lifetimes from the graph and
//! proves the plan safe without sharing code with the planner.
//!
//! Everything is deterministic: ties break by value id and nothing iterates
//! a hash map, so the same graph gives the same plan in every process.

pub mod assign;
mod check;
mod grads;
mod hash;
mod late;
mod liveness;

pub use hash::plan_hash;

use crate::autodiff::require_static;
use crate::{Error, Graph, Result, ValueId, validate};

/// The alignment of every offset (and the granule of every size) when the
/// caller does not choose one: one cache line, and enough for any vector
/// load.
pub const DEFAULT_ALIGNMENT: usize = 64;

/// What the planner needs besides the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// (parameter, gradient value) pairs, ids in the planned graph; for a
    /// joint graph, [`crate::autodiff::GradGraph::grads`]. Each parameter
    /// gets one slot of the flat gradient buffer; the gradient must have the
    /// parameter's type. The first element may be any value (an input, say),
    /// but may appear only once.
    pub grads: Vec<(ValueId, ValueId)>,
    /// Every offset is a multiple of this, and every size is rounded up to
    /// it (bytes, at least 1). Defaults to [`DEFAULT_ALIGNMENT`].
    pub alignment: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            grads: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }
}

impl PlanOptions {
    /// Options for a joint graph whose gradients are `grads`, with the
    /// default alignment.
    pub fn with_grads(grads: &[(ValueId, ValueId)]) -> Self {
        PlanOptions {
            grads: grads.to_vec(),
            ..PlanOptions::default()
        }
    }
}

/// Where one value lives during the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `bytes` at `offset` in the arena; valid only during the value's
    /// lifetime ([`MemoryPlan::lifetimes`]).
    Arena { offset: usize, bytes: usize },
    /// The buffer of `graph.params[index]`.
    Param(usize),
    /// The buffer of `graph.inputs[index]` (data, labels, directions).
    Input(usize),
    /// The buffer of `graph.state[index]`.
    State(usize),
    /// `bytes` at `offset` in the flat gradient buffer: the node producing
    /// this value writes it straight into its parameter's slot. A Reshape
    /// whose output is such a gradient copies into the slot rather than
    /// aliasing.
    Grad { offset: usize, bytes: usize },
    /// The output of a Reshape: the same bytes as `of`, which is never an
    /// alias itself (chains resolve to their root).
    Alias { of: ValueId },
    /// Declared in `graph.values` but neither produced by a node nor a
    /// graph input, parameter or state; nothing reads it.
    Unused,
}

/// The slot of one parameter's gradient in the flat gradient buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradSlot {
    /// The parameter (first element of its pair in [`PlanOptions::grads`]).
    pub param: ValueId,
    /// The gradient value that ends up in the slot.
    pub value: ValueId,
    /// Byte offset in the gradient buffer; a multiple of the alignment.
    pub offset: usize,
    /// Bytes of the gradient (unrounded).
    pub bytes: usize,
}

/// The lifetime of a value produced by a node, in node positions: live
/// from the end of node `first` (its producer) through node `last`, both
/// inclusive. `last == graph.nodes.len()` means it lives to the end of the
/// step (graph outputs, state updates, gradients copied at the end, and the
/// roots of aliases that do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    /// Whether the two lifetimes share a node position.
    pub fn intersects(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Where every value of a graph lives during one step, and how much memory
/// the step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The alignment the plan was made with (bytes).
    pub alignment: usize,
    /// Per value (indexed by [`ValueId`]), its storage class.
    pub storage: Vec<Storage>,
    /// Per value, its lifetime if a node produces it (`None` for inputs,
    /// parameters, state and unused values, which live the whole step). An
    /// alias root's lifetime covers its aliases' uses.
    pub lifetimes: Vec<Option<Lifetime>>,
    /// Size of the arena: the planned peak, the largest `offset + size`
    /// over arena values with sizes rounded up to the alignment.
    pub arena_bytes: usize,
    /// Lower bound for any arena plan: the largest total of the arena values
    /// live at one node, each rounded up to the alignment.
    pub live_peak_bytes: usize,
    /// Sum of the parameters' sizes (each in a buffer of its own, trainable
    /// or not).
    pub param_bytes: usize,
    /// Size of the flat gradient buffer: the end of its last slot, rounded
    /// up to the alignment.
    pub grad_bytes: usize,
    /// Sum of the graph inputs' sizes.
    pub input_bytes: usize,
    /// Sum of the state variables' sizes.
    pub state_bytes: usize,
    /// One slot per pair of [`PlanOptions::grads`]: first the gradients
    /// backward writes in place, in the order of their producing nodes (then
    /// output position), then those in [`MemoryPlan::grad_copies`], in
    /// `grads` order. Offsets increase along the list.
    pub grad_layout: Vec<GradSlot>,
    /// Indices into [`MemoryPlan::grad_layout`] of the slots the executor
    /// fills by copying the slot's `value` at the end of the step: gradients
    /// no node produces (a parameter or input standing for its own
    /// gradient) and gradients shared by several parameters. Their values
    /// live to the end of the step.
    pub grad_copies: Vec<usize>,
    /// Per node position, the arena values whose lifetime ends there, in id
    /// order: their bytes may be reused (or poisoned with NaN by a debug
    /// executor) once the node has run. Aliases are not listed; they die
    /// with their root. Values that live to the end of the step never
    /// appear.
    pub frees_after: Vec<Vec<ValueId>>,
}

impl MemoryPlan {
    /// The storage class of `v`.
    pub fn storage_of(&self, v: ValueId) -> Storage {
        self.storage[v.index()]
    }

    /// Bytes one worker needs for the step: arena, gradient buffer,
    /// parameters, inputs and state together.
    pub fn total_bytes(&self) -> usize {
        self.arena_bytes + self.grad_bytes + self.param_bytes + self.input_bytes + self.state_bytes
    }

    /// Proves the plan safe for `graph`: storage classes agree with the
    /// graph's roles, aliases resolve to their root, every arena value lies
    /// inside the arena at an aligned offset, no two arena values live at
    /// the same node share a byte, gradient slots are disjoint and cover
    /// every gradient, `frees_after` frees each value exactly after its last
    /// use, and the reported totals add up. Lifetimes are re-derived from
    /// the graph, independently of the planner; the message names the
    /// first violation.
    pub fn check(&self, graph: &Graph) -> std::result::Result<(), String> {
        check::check(self, graph)
    }
}

/// `bytes` rounded up to a multiple of `alignment`.
pub fn round_up(bytes: usize, alignment: usize) -> usize {
    bytes.div_ceil(alignment) * alignment
}

/// Bytes of a value of a bound graph.
fn value_bytes(graph: &Graph, v: ValueId) -> usize {
    let ty = graph.ty(v);
    ty.shape.numel().unwrap_or(0) * ty.dtype.size_bytes()
}

/// Plans the memory of one step of a bound (static) graph; see the module
/// docs. Fails on an unbound batch dimension, an invalid graph, an
/// alignment of 0, or gradient pairs that name unknown values, repeat a
/// parameter or pair values of different types.
pub fn plan_memory(graph: &Graph, opts: &PlanOptions) -> Result<MemoryPlan> {
    require_static(graph, "plan_memory")?;
    validate::validate(graph)?;
    check_options(graph, opts)?;
    let align = opts.alignment;
    let producers = graph.producers();
    let grads = grads::layout(graph, &producers, &opts.grads, align);
    let mut storage = liveness::classify(graph, &grads);
    let lifetimes = liveness::lifetimes(graph, &producers, &storage, &grads.copy_sources());

    let arena: Vec<ValueId> = (0..graph.values.len() as u32)
        .map(ValueId)
        .filter(|v| matches!(storage[v.index()], Storage::Arena { .. }))
        .collect();
    let items: Vec<assign::Interval> = arena
        .iter()
        .map(|&v| {
            let life = lifetimes[v.index()].expect("arena values are produced by nodes");
            assign::Interval {
                first: life.first,
                last: life.last,
                bytes: value_bytes(graph, v),
            }
        })
        .collect();
    let placed = assign::greedy_by_size(&items, align);
    for (&v, &offset) in arena.iter().zip(&placed.offsets) {
        if let Storage::Arena { offset: o, .. } = &mut storage[v.index()] {
            *o = offset;
        }
    }

    let steps = graph.nodes.len();
    let mut frees_after = vec![Vec::new(); steps];
    for &v in &arena {
        let last = lifetimes[v.index()].map_or(steps, |l| l.last);
        if last < steps {
            frees_after[last].push(v);
        }
    }
    let sum = |vs: &mut dyn Iterator<Item = ValueId>| vs.map(|v| value_bytes(graph, v)).sum();
    Ok(MemoryPlan {
        alignment: align,
        storage,
        lifetimes,
        arena_bytes: placed.arena_bytes,
        live_peak_bytes: assign::live_peak(&items, align),
        param_bytes: sum(&mut graph.params.iter().map(|p| p.value)),
        grad_bytes: grads.bytes,
        input_bytes: sum(&mut graph.inputs.iter().map(|i| i.value)),
        state_bytes: sum(&mut graph.state.iter().map(|s| s.value)),
        grad_layout: grads.slots,
        grad_copies: grads.copies,
        frees_after,
    })
}

/// Rejects options the planner cannot honour.
fn check_options(graph: &Graph, opts: &PlanOptions) -> Result<()> {
    if opts.alignment == 0 {
        return Err(Error::Unsupported(
            "plan_memory: alignment must be at least 1 byte, found 0".into(),
        ));
    }
    let n = graph.values.len();
    let mut defined = vec![false; n];
    let leaves = graph.inputs.iter().map(|i| i.value);
    let leaves = leaves
        .chain(graph.params.iter().map(|p| p.value))
        .chain(graph.state.iter().map(|s| s.value));
    for v in leaves.chain(graph.nodes.iter().flat_map(|n| n.outputs.iter().copied())) {
        defined[v.index()] = true;
    }
    let mut seen = vec![false; n];
    for &(p, g) in &opts.grads {
        if p.index() >= n || g.index() >= n {
            return Err(Error::InvalidValue {
                value: format!("#{}", p.0.max(g.0)),
                message: format!(
                    "gradient pair (#{}, #{}) names a value outside the graph's {n} values",
                    p.0, g.0
                ),
            });
        }
        let bad = |message: String| Error::InvalidValue {
            value: graph.name_of(p).to_owned(),
            message,
        };
        if !defined[g.index()] {
            return Err(bad(format!(
                "its gradient '{}' is neither produced by a node nor a graph input, \
                 parameter or state",
                graph.name_of(g)
            )));
        }
        if std::mem::replace(&mut seen[p.index()], true) {
            return Err(bad("appears in more than one gradient pair".into()));
        }
        if graph.ty(p) != graph.ty(g) {
            return Err(bad(format!(
                "has type {}, but its gradient '{}' has type {}",
                graph.ty(p),
                graph.name_of(g),
                graph.ty(g)
            )));
        }
    }
    Ok(())
}
