//! IR [`Graph`] to the protobuf message: every value is declared in
//! `values` (so the message is self-describing), everything else refers to
//! values by name, and node attributes come out in sorted order.

use adjoint_proto::v1;

use super::convert::{attr_to_proto, dtype_to_proto, init_to_proto, role_to_proto, shape_to_proto};
use crate::{Graph, ValueId};

/// The protobuf form of `graph`.
///
/// A valid graph loads back equal with [`super::from_proto`]. On a graph
/// whose ids point past its values (which [`crate::validate::validate`]
/// rejects), such references are written as `#<id>`.
pub fn to_proto(graph: &Graph) -> v1::Graph {
    let name = |id: ValueId| value_name(graph, id);
    v1::Graph {
        name: graph.name.clone(),
        values: graph
            .values
            .iter()
            .map(|v| v1::Value {
                name: v.name.clone(),
                dtype: dtype_to_proto(v.ty.dtype) as i32,
                shape: Some(shape_to_proto(&v.ty.shape)),
            })
            .collect(),
        nodes: graph
            .nodes
            .iter()
            .map(|n| v1::Node {
                name: n.name.clone(),
                op: n.op.name().to_owned(),
                inputs: n.inputs.iter().map(|&v| name(v)).collect(),
                outputs: n.outputs.iter().map(|&v| name(v)).collect(),
                attributes: n
                    .op
                    .attrs()
                    .iter()
                    .map(|(k, a)| (k.clone(), attr_to_proto(a)))
                    .collect(),
                provenance: n.provenance.clone(),
            })
            .collect(),
        inputs: graph
            .inputs
            .iter()
            .map(|i| v1::Input {
                value: name(i.value),
                role: role_to_proto(i.role) as i32,
            })
            .collect(),
        parameters: graph
            .params
            .iter()
            .map(|p| v1::Parameter {
                value: name(p.value),
                init: Some(init_to_proto(&p.init)),
                frozen: !p.trainable,
            })
            .collect(),
        state: graph
            .state
            .iter()
            .map(|s| v1::State {
                value: name(s.value),
                init: Some(init_to_proto(&s.init)),
                update: s.update.map(name).unwrap_or_default(),
            })
            .collect(),
        outputs: graph.outputs.iter().map(|&v| name(v)).collect(),
        loss: graph.loss.map(name).unwrap_or_default(),
    }
}

fn value_name(graph: &Graph, id: ValueId) -> String {
    graph
        .values
        .get(id.index())
        .map_or_else(|| format!("#{}", id.0), |v| v.name.clone())
}
