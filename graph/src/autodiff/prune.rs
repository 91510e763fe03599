//! Dead-node elimination: keep only nodes that contribute to the outputs,
//! the loss or a state update, and only values those nodes and the graph's
//! roles mention.

use crate::{Graph, NodeId, ValueId};

/// The graph without nodes (and values) that nothing needs. Inputs,
/// parameters and state stay even when unused; ids are renumbered in order.
pub fn prune(graph: &Graph) -> Graph {
    let producers = graph.producers();
    let mut live_value = vec![false; graph.values.len()];
    let mut live_node = vec![false; graph.nodes.len()];
    let mut stack: Vec<ValueId> = graph.outputs.clone();
    stack.extend(graph.loss);
    stack.extend(graph.state.iter().filter_map(|s| s.update));
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut live_value[v.index()], true) {
            continue;
        }
        if let Some(NodeId(n)) = producers[v.index()]
            && !std::mem::replace(&mut live_node[n as usize], true)
        {
            stack.extend(graph.nodes[n as usize].inputs.iter().copied());
        }
    }
    for v in graph
        .inputs
        .iter()
        .map(|i| i.value)
        .chain(graph.params.iter().map(|p| p.value))
        .chain(graph.state.iter().map(|s| s.value))
    {
        live_value[v.index()] = true;
    }
    for (n, node) in graph.nodes.iter().enumerate() {
        if live_node[n] {
            for &o in &node.outputs {
                live_value[o.index()] = true;
            }
        }
    }
    let mut remap = vec![ValueId(u32::MAX); graph.values.len()];
    let mut out = Graph {
        name: graph.name.clone(),
        ..Graph::default()
    };
    for (i, v) in graph.values.iter().enumerate() {
        if live_value[i] {
            remap[i] = ValueId(out.values.len() as u32);
            out.values.push(v.clone());
        }
    }
    let map = |v: ValueId| remap[v.index()];
    out.nodes = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(n, _)| live_node[*n])
        .map(|(_, node)| {
            let mut node = node.clone();
            node.inputs = node.inputs.iter().map(|&v| map(v)).collect();
            node.outputs = node.outputs.iter().map(|&v| map(v)).collect();
            node
        })
        .collect();
    out.inputs = graph
        .inputs
        .iter()
        .map(|i| crate::Input {
            value: map(i.value),
            role: i.role,
        })
        .collect();
    out.params = graph
        .params
        .iter()
        .map(|p| crate::Param {
            value: map(p.value),
            ..p.clone()
        })
        .collect();
    out.state = graph
        .state
        .iter()
        .map(|s| crate::StateVar {
            value: map(s.value),
            init: s.init.clone(),
            update: s.update.map(map),
        })
        .collect();
    out.outputs = graph.outputs.iter().map(|&v| map(v)).collect();
    out.loss = graph.loss.map(map);
    out
}
