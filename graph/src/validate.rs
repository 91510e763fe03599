//! Graph validation: names, definitions before use, roles, and every node's
//! types re-derived from its op's shape rule.

use crate::{Error, Graph, NodeRef, Result, ValueId};

/// Where a value comes from, for definition-before-use checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Undefined,
    Leaf(&'static str),
    Node(usize),
}

/// Checks every invariant of [`Graph`]; the first violation is returned.
pub fn validate(graph: &Graph) -> Result<()> {
    check_names(graph)?;
    let sources = sources(graph)?;
    let mut defined: Vec<bool> = sources
        .iter()
        .map(|s| matches!(s, Source::Leaf(_)))
        .collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        let at = node_ref(graph, i);
        for &input in &node.inputs {
            check_id(graph, input, &at)?;
            if !defined[input.index()] {
                return Err(match sources[input.index()] {
                    Source::Node(p) if p >= i => Error::Cycle {
                        node: at,
                        value: graph.name_of(input).to_owned(),
                    },
                    _ => Error::DanglingValue {
                        node: at,
                        value: graph.name_of(input).to_owned(),
                    },
                });
            }
        }
        let types: Vec<_> = node.inputs.iter().map(|&v| graph.ty(v)).collect();
        let inferred = node
            .op
            .infer(&types)
            .map_err(|message| Error::InvalidNode {
                node: at.clone(),
                message,
            })?;
        if inferred.len() != node.outputs.len() {
            return Err(Error::InvalidNode {
                node: at,
                message: format!(
                    "produces {} output(s), but {} are listed",
                    inferred.len(),
                    node.outputs.len()
                ),
            });
        }
        for (&out, ty) in node.outputs.iter().zip(&inferred) {
            if graph.ty(out) != ty {
                return Err(Error::DeclaredTypeMismatch {
                    value: graph.name_of(out).to_owned(),
                    node: at,
                    declared: graph.ty(out).to_string(),
                    inferred: ty.to_string(),
                });
            }
            defined[out.index()] = true;
        }
    }
    check_roles(graph, &defined)
}

fn node_ref(graph: &Graph, i: usize) -> NodeRef {
    let n = &graph.nodes[i];
    NodeRef {
        name: n.name.clone(),
        op: n.op.name().to_owned(),
        provenance: n.provenance.clone(),
    }
}

fn check_id(graph: &Graph, v: ValueId, at: &NodeRef) -> Result<()> {
    if v.index() < graph.values.len() {
        Ok(())
    } else {
        Err(Error::InvalidNode {
            node: at.clone(),
            message: format!("refers to value #{} of {}", v.0, graph.values.len()),
        })
    }
}

fn check_names(graph: &Graph) -> Result<()> {
    let mut names: Vec<(&str, usize)> = graph
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    names.sort();
    for w in names.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::DuplicateValue {
                value: w[0].0.to_owned(),
                first: format!("value #{}", w[0].1),
                second: format!("value #{}", w[1].1),
            });
        }
    }
    if let Some((_, i)) = names.iter().find(|(n, _)| n.is_empty()) {
        return Err(Error::InvalidValue {
            value: format!("#{i}"),
            message: "has an empty name".into(),
        });
    }
    Ok(())
}

/// Each value's single source: a leaf role or one producing node.
fn sources(graph: &Graph) -> Result<Vec<Source>> {
    let mut src = vec![Source::Undefined; graph.values.len()];
    let leaves = graph
        .inputs
        .iter()
        .map(|i| (i.value, "input"))
        .chain(graph.params.iter().map(|p| (p.value, "parameter")))
        .chain(graph.state.iter().map(|s| (s.value, "state")));
    for (v, role) in leaves {
        if v.index() >= graph.values.len() {
            return Err(Error::InvalidValue {
                value: format!("#{}", v.0),
                message: format!("{role} refers to a value that does not exist"),
            });
        }
        if let Source::Leaf(first) = src[v.index()] {
            return Err(Error::InvalidValue {
                value: graph.name_of(v).to_owned(),
                message: format!("declared both as {first} and as {role}"),
            });
        }
        src[v.index()] = Source::Leaf(role);
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        for &out in &node.outputs {
            check_id(graph, out, &node_ref(graph, i))?;
            match src[out.index()] {
                Source::Undefined => src[out.index()] = Source::Node(i),
                Source::Leaf(role) => {
                    return Err(Error::InvalidNode {
                        node: node_ref(graph, i),
                        message: format!(
                            "writes '{}', which is a graph {role}",
                            graph.name_of(out)
                        ),
                    });
                }
                Source::Node(first) => {
                    return Err(Error::DuplicateValue {
                        value: graph.name_of(out).to_owned(),
                        first: format!("output of node '{}'", graph.nodes[first].name),
                        second: format!("output of node '{}'", node.name),
                    });
                }
            }
        }
    }
    Ok(src)
}

fn check_roles(graph: &Graph, defined: &[bool]) -> Result<()> {
    let undefined = |v: ValueId, what: &str| -> Result<()> {
        if v.index() >= graph.values.len() || !defined[v.index()] {
            let name = graph.values.get(v.index()).map_or("?", |x| x.name.as_str());
            return Err(Error::InvalidValue {
                value: name.to_owned(),
                message: format!("is listed as {what} but nothing defines it"),
            });
        }
        Ok(())
    };
    for &o in &graph.outputs {
        undefined(o, "a graph output")?;
    }
    if let Some(loss) = graph.loss {
        undefined(loss, "the loss")?;
        let ty = graph.ty(loss);
        if ty.shape.rank() != 0 || !ty.dtype.is_float() {
            return Err(Error::InvalidValue {
                value: graph.name_of(loss).to_owned(),
                message: format!("the loss must be a float scalar, found {ty}"),
            });
        }
    }
    for p in graph.params.iter().filter(|p| p.trainable) {
        let ty = graph.ty(p.value);
        if !ty.dtype.is_float() {
            return Err(Error::InvalidValue {
                value: graph.name_of(p.value).to_owned(),
                message: format!(
                    "a trainable parameter must be floating-point, found {}",
                    ty.dtype
                ),
            });
        }
    }
    for s in &graph.state {
        if let Some(u) = s.update {
            undefined(u, "a state update")?;
            if graph.ty(u) != graph.ty(s.value) {
                return Err(Error::InvalidValue {
                    value: graph.name_of(s.value).to_owned(),
                    message: format!(
                        "state of type {} is updated by '{}' of type {}",
                        graph.ty(s.value),
                        graph.name_of(u),
                        graph.ty(u)
                    ),
                });
            }
        }
    }
    Ok(())
}
