//! Where each value lives: buffers, host layout of parameters, inputs and
//! state, and the resolved [`View`] of every value.

use adjoint_graph::plan::{MemoryPlan, Storage, round_up};
use adjoint_graph::{DType, Graph, ValueId};
use adjoint_kernels::{BufferId, ElemType, View};

use crate::{Error, Result};

/// The buffers a program runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub arena: BufferId,
    pub params: BufferId,
    pub grads: BufferId,
    pub inputs: BufferId,
    pub state: BufferId,
}

/// Byte offsets of parameters, inputs and state in their buffers.
/// Trainable parameters sit at their gradient's offset (so optimizers run
/// over two aligned flat views); frozen ones follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLayout {
    /// Per `graph.params` index.
    pub param_offsets: Vec<usize>,
    pub params_bytes: usize,
    /// Per `graph.inputs` index.
    pub input_offsets: Vec<usize>,
    pub inputs_bytes: usize,
    /// Per `graph.state` index.
    pub state_offsets: Vec<usize>,
    pub state_bytes: usize,
}

/// The kernel element type of a graph dtype.
pub fn elem_type(dtype: DType) -> Result<ElemType> {
    match dtype {
        DType::F32 => Ok(ElemType::F32),
        DType::BF16 => Ok(ElemType::BF16),
        DType::F16 => Ok(ElemType::F16),
        DType::I64 => Ok(ElemType::I64),
        DType::I32 => Ok(ElemType::I32),
        DType::Bool => Ok(ElemType::U8),
        other => Err(Error::Plan(format!(
            "dtype {other} is not supported by the engine yet (f32, bf16, f16, i64, i32 and bool are)"
        ))),
    }
}

fn value_bytes(graph: &Graph, v: ValueId) -> usize {
    let ty = graph.ty(v);
    ty.shape.numel_with_batch(1) * ty.dtype.size_bytes()
}

/// Offsets for `values` laid end to end, each aligned; and the total.
fn sequential(
    graph: &Graph,
    values: impl Iterator<Item = ValueId>,
    align: usize,
    start: usize,
) -> (Vec<usize>, usize) {
    let mut at = start;
    let offsets = values
        .map(|v| {
            let offset = at;
            at = round_up(offset + value_bytes(graph, v), align);
            offset
        })
        .collect();
    (offsets, at)
}

impl HostLayout {
    pub fn new(graph: &Graph, plan: &MemoryPlan) -> Result<HostLayout> {
        let align = plan.alignment;
        let mut param_offsets = vec![usize::MAX; graph.params.len()];
        for slot in &plan.grad_layout {
            if let Some(i) = graph.params.iter().position(|p| p.value == slot.param) {
                param_offsets[i] = slot.offset;
            }
        }
        let mut at = plan.grad_bytes;
        for (i, p) in graph.params.iter().enumerate() {
            if param_offsets[i] == usize::MAX {
                param_offsets[i] = at;
                at = round_up(at + value_bytes(graph, p.value), align);
            }
        }
        let (input_offsets, inputs_bytes) =
            sequential(graph, graph.inputs.iter().map(|i| i.value), align, 0);
        let (state_offsets, state_bytes) =
            sequential(graph, graph.state.iter().map(|s| s.value), align, 0);
        Ok(HostLayout {
            param_offsets,
            params_bytes: at,
            input_offsets,
            inputs_bytes,
            state_offsets,
            state_bytes,
        })
    }
}

/// The view of every value.
#[derive(Debug, Clone)]
pub struct ValueViews {
    views: Vec<Option<View>>,
}

impl ValueViews {
    /// Resolves every value's storage to a view.
    pub fn build(
        graph: &Graph,
        plan: &MemoryPlan,
        layout: &HostLayout,
        buffers: &Buffers,
    ) -> Result<ValueViews> {
        let mut views = vec![None; graph.values.len()];
        for (i, storage) in plan.storage.iter().enumerate() {
            let v = ValueId(i as u32);
            let ty = graph.ty(v);
            let elem = elem_type(ty.dtype)
                .map_err(|e| Error::Plan(format!("value '{}': {e}", graph.name_of(v))))?;
            let len = ty.shape.numel_with_batch(1);
            let at = |buffer: BufferId, offset: usize| {
                Some(View {
                    buffer,
                    offset,
                    len,
                    elem,
                })
            };
            views[i] = match *storage {
                Storage::Arena { offset, .. } => at(buffers.arena, offset),
                Storage::Grad { offset, .. } => at(buffers.grads, offset),
                Storage::Param(p) => at(buffers.params, layout.param_offsets[p]),
                Storage::Input(k) => at(buffers.inputs, layout.input_offsets[k]),
                Storage::State(s) => at(buffers.state, layout.state_offsets[s]),
                Storage::Alias { .. } | Storage::Unused => None,
            };
        }
        for (i, storage) in plan.storage.iter().enumerate() {
            if let Storage::Alias { of } = *storage {
                let root = views[of.index()].ok_or_else(|| {
                    Error::Plan(format!(
                        "alias '{}' has no root view",
                        graph.name_of(ValueId(i as u32))
                    ))
                })?;
                let len = graph.ty(ValueId(i as u32)).shape.numel_with_batch(1);
                views[i] = Some(View { len, ..root });
            }
        }
        Ok(ValueViews { views })
    }

    /// The view of `v`.
    pub fn view(&self, graph: &Graph, v: ValueId) -> Result<View> {
        self.views
            .get(v.index())
            .copied()
            .flatten()
            .ok_or_else(|| Error::Plan(format!("value '{}' has no storage", graph.name_of(v))))
    }
}
