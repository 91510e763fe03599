//! A compiled program: the graph's nodes lowered to backend calls over
//! planned views.
//!
//! Compilation resolves every value to a [`View`] (arena, parameter,
//! gradient, input or state buffer, from the memory plan; reshapes alias
//! their input) and every node to [`Instr`]s whose shapes and strides are
//! computed once, here, so running a step allocates nothing.

mod exchange;
mod fuse;
mod instr;
mod lower;
mod views;

pub use exchange::{Exchange, ExchangeDims, ExchangeScratch, group_all_reduce};
pub use fuse::{FuseReport, disabled_by_env as fusion_disabled_by_env, fuse};
pub use instr::Instr;
pub use instr::StepKey;
pub use lower::lower_node;
pub use views::{Buffers, HostLayout, ValueViews, elem_type};

use adjoint_graph::Graph;

use crate::Result;

/// The instructions of one step, in order, and which node each came from.
#[derive(Debug, Clone)]
pub struct Program {
    pub instrs: Vec<Instr>,
    /// `node_end[n]`: index one past the last instruction of node `n`.
    pub node_end: Vec<usize>,
}

impl Program {
    /// Lowers every node of `graph` against `views`.
    pub fn compile(graph: &Graph, views: &ValueViews) -> Result<Program> {
        let mut instrs = Vec::new();
        let mut node_end = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            lower_node(graph, node, views, &mut instrs)?;
            node_end.push(instrs.len());
        }
        Ok(Program { instrs, node_end })
    }
}
