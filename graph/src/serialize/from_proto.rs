//! The protobuf message to an IR [`Graph`], checking everything on the way.
//!
//! Values declared in `values` keep their order and ids; node outputs that
//! are not declared get their type from the op's shape rule and are appended
//! as the nodes are read. Each error names the value, parameter or node
//! (with its op and provenance) it is about. Nothing here panics on any
//! message: every lookup is by name in a map and every number is checked.

use std::collections::BTreeMap;

use adjoint_proto::v1;

use super::convert::{
    attr_from_proto, check_size, dtype_from_proto, init_from_proto, role_from_proto,
    shape_from_proto,
};
use crate::{
    Attrs, Error, Graph, Input, Node, NodeRef, Op, Param, Result, StateVar, TensorType, Value,
    ValueId, validate,
};

/// Loads a graph from its protobuf form and validates it.
pub fn from_proto(proto: &v1::Graph) -> Result<Graph> {
    let mut loader = Loader::new(proto)?;
    loader.leaves(proto)?;
    let producers = first_producers(proto);
    for (i, node) in proto.nodes.iter().enumerate() {
        loader.node(i, node, &producers)?;
    }
    loader.check_all_defined()?;
    loader.roles(proto)?;
    validate::validate(&loader.graph)?;
    Ok(loader.graph)
}

/// Where a value comes from so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Undefined,
    Leaf(&'static str),
    /// Index into `Graph::nodes`.
    Node(usize),
}

#[derive(Debug)]
struct Loader {
    graph: Graph,
    ids: BTreeMap<String, ValueId>,
    /// Parallel to `graph.values`.
    sources: Vec<Source>,
    /// Values with an id below this were declared in `values`.
    declared: usize,
}

impl Loader {
    /// Declares the values listed in `values`.
    fn new(proto: &v1::Graph) -> Result<Loader> {
        let mut loader = Loader {
            graph: Graph {
                name: proto.name.clone(),
                ..Graph::default()
            },
            ids: BTreeMap::new(),
            sources: Vec::new(),
            declared: 0,
        };
        for (i, v) in proto.values.iter().enumerate() {
            if v.name.is_empty() {
                return Err(Error::InvalidValue {
                    value: format!("#{i}"),
                    message: "has an empty name".into(),
                });
            }
            if let Some(first) = loader.ids.get(&v.name) {
                return Err(Error::DuplicateValue {
                    value: v.name.clone(),
                    first: format!("values[{}]", first.0),
                    second: format!("values[{i}]"),
                });
            }
            let invalid = |message: String| Error::InvalidValue {
                value: v.name.clone(),
                message,
            };
            let dtype = dtype_from_proto(v.dtype).map_err(invalid)?;
            let shape = shape_from_proto(v.shape.as_ref()).map_err(invalid)?;
            loader.add_value(v.name.clone(), TensorType::new(dtype, shape))?;
        }
        loader.declared = loader.graph.values.len();
        Ok(loader)
    }

    fn add_value(&mut self, name: String, ty: TensorType) -> Result<ValueId> {
        let id = u32::try_from(self.graph.values.len())
            .map(ValueId)
            .map_err(|_| Error::Unsupported("more than 2^32 values".into()))?;
        self.ids.insert(name.clone(), id);
        self.graph.values.push(Value { name, ty });
        self.sources.push(Source::Undefined);
        Ok(id)
    }

    fn source(&self, id: ValueId) -> Source {
        self.sources
            .get(id.index())
            .copied()
            .unwrap_or(Source::Undefined)
    }

    fn set_source(&mut self, id: ValueId, source: Source) {
        if let Some(s) = self.sources.get_mut(id.index()) {
            *s = source;
        }
    }

    fn ty(&self, id: ValueId) -> Option<&TensorType> {
        self.graph.values.get(id.index()).map(|v| &v.ty)
    }

    /// A value that must be declared in `values`, for the role `what`.
    fn declared(&self, name: &str, what: &str) -> Result<ValueId> {
        self.ids
            .get(name)
            .copied()
            .ok_or_else(|| Error::InvalidValue {
                value: name.to_owned(),
                message: format!("is listed as {what} but is not declared in `values`"),
            })
    }

    /// The type of a parameter or state variable, which must be static.
    fn static_type(&self, id: ValueId, name: &str, what: &str) -> Result<TensorType> {
        let Some(ty) = self.ty(id).cloned() else {
            return Err(Error::InvalidValue {
                value: name.to_owned(),
                message: format!("is listed as {what} but is not declared in `values`"),
            });
        };
        if !ty.shape.is_static() {
            return Err(Error::InvalidValue {
                value: name.to_owned(),
                message: format!("{what} must have a static shape, found {}", ty.shape),
            });
        }
        Ok(ty)
    }

    /// Inputs, parameters and state (their updates come after the nodes).
    fn leaves(&mut self, proto: &v1::Graph) -> Result<()> {
        for input in &proto.inputs {
            let value = self.declared(&input.value, "an input")?;
            let role = role_from_proto(input.role).map_err(|message| Error::InvalidValue {
                value: input.value.clone(),
                message,
            })?;
            self.graph.inputs.push(Input { value, role });
            self.mark_leaf(value, "input");
        }
        for p in &proto.parameters {
            let value = self.declared(&p.value, "a parameter")?;
            let ty = self.static_type(value, &p.value, "a parameter")?;
            let init = init_from_proto(p.init.as_ref(), &ty).map_err(|m| Error::InvalidValue {
                value: p.value.clone(),
                message: format!("parameter {m}"),
            })?;
            self.graph.params.push(Param {
                value,
                init,
                trainable: !p.frozen,
            });
            self.mark_leaf(value, "parameter");
        }
        for s in &proto.state {
            let value = self.declared(&s.value, "state")?;
            let ty = self.static_type(value, &s.value, "state")?;
            let init = init_from_proto(s.init.as_ref(), &ty).map_err(|m| Error::InvalidValue {
                value: s.value.clone(),
                message: format!("state {m}"),
            })?;
            self.graph.state.push(StateVar {
                value,
                init,
                update: None,
            });
            self.mark_leaf(value, "state");
        }
        Ok(())
    }

    /// Marks a leaf; a value with two roles is left to `validate` to report.
    fn mark_leaf(&mut self, id: ValueId, role: &'static str) {
        if self.source(id) == Source::Undefined {
            self.set_source(id, Source::Leaf(role));
        }
    }

    /// Reads node `i`: its op, inputs and (inferred or checked) outputs.
    fn node(&mut self, i: usize, pn: &v1::Node, producers: &BTreeMap<&str, usize>) -> Result<()> {
        let at = NodeRef {
            name: pn.name.clone(),
            op: pn.op.clone(),
            provenance: pn.provenance.clone(),
        };
        let op = parse_op(pn, &at)?;
        let mut inputs = Vec::with_capacity(pn.inputs.len());
        for name in &pn.inputs {
            match self.ids.get(name) {
                Some(&id) if self.source(id) != Source::Undefined => inputs.push(id),
                _ => {
                    let value = name.clone();
                    let node = at.clone();
                    return Err(match producers.get(name.as_str()) {
                        Some(&p) if p >= i => Error::Cycle { node, value },
                        _ => Error::DanglingValue { node, value },
                    });
                }
            }
        }
        let inferred = self.infer(&op, &inputs, &at)?;
        if inferred.len() != pn.outputs.len() {
            return Err(Error::InvalidNode {
                node: at,
                message: format!(
                    "produces {} output(s), but {} are listed",
                    inferred.len(),
                    pn.outputs.len()
                ),
            });
        }
        let mut outputs = Vec::with_capacity(inferred.len());
        for (name, ty) in pn.outputs.iter().zip(inferred) {
            outputs.push(self.output(i, name, ty, &at)?);
        }
        self.graph.nodes.push(Node {
            name: pn.name.clone(),
            op,
            inputs,
            outputs,
            provenance: pn.provenance.clone(),
        });
        Ok(())
    }

    /// Runs the op's shape rule; errors list the inputs' names and types.
    fn infer(&self, op: &Op, inputs: &[ValueId], at: &NodeRef) -> Result<Vec<TensorType>> {
        let types: Vec<&TensorType> = inputs.iter().filter_map(|&v| self.ty(v)).collect();
        op.infer(&types).map_err(|message| {
            let list: Vec<String> = inputs
                .iter()
                .zip(&types)
                .map(|(&v, ty)| format!("'{}': {ty}", self.name_of(v)))
                .collect();
            Error::InvalidNode {
                node: at.clone(),
                message: format!("{message} (inputs: {})", list.join(", ")),
            }
        })
    }

    fn name_of(&self, id: ValueId) -> &str {
        self.graph
            .values
            .get(id.index())
            .map_or("?", |v| v.name.as_str())
    }

    /// Defines output `name` of node `i` with the inferred type `ty`.
    fn output(&mut self, i: usize, name: &str, ty: TensorType, at: &NodeRef) -> Result<ValueId> {
        if name.is_empty() {
            return Err(Error::InvalidNode {
                node: at.clone(),
                message: "has an output with an empty name".into(),
            });
        }
        check_size(&ty.shape).map_err(|m| Error::InvalidNode {
            node: at.clone(),
            message: format!("output '{name}': {m}"),
        })?;
        let Some(&id) = self.ids.get(name) else {
            let id = self.add_value(name.to_owned(), ty)?;
            self.set_source(id, Source::Node(i));
            return Ok(id);
        };
        match self.source(id) {
            Source::Undefined => {}
            Source::Leaf(role) => {
                return Err(Error::InvalidNode {
                    node: at.clone(),
                    message: format!("writes '{name}', which is a graph {role}"),
                });
            }
            Source::Node(first) => {
                let first = self
                    .graph
                    .nodes
                    .get(first)
                    .map_or(at.name.as_str(), |n| n.name.as_str());
                return Err(Error::DuplicateValue {
                    value: name.to_owned(),
                    first: format!("output of node '{first}'"),
                    second: format!("output of node '{}'", at.name),
                });
            }
        }
        if let Some(declared) = self.ty(id).filter(|d| **d != ty) {
            return Err(Error::DeclaredTypeMismatch {
                value: name.to_owned(),
                node: at.clone(),
                declared: declared.to_string(),
                inferred: ty.to_string(),
            });
        }
        self.set_source(id, Source::Node(i));
        Ok(id)
    }

    /// Every declared value must be an input, a parameter, state or a node
    /// output (a stray declaration is usually a misspelt output).
    fn check_all_defined(&self) -> Result<()> {
        let stray = self
            .graph
            .values
            .iter()
            .zip(&self.sources)
            .take(self.declared)
            .find(|(_, s)| **s == Source::Undefined);
        match stray {
            Some((v, _)) => Err(Error::InvalidValue {
                value: v.name.clone(),
                message: "is declared in `values` but is not an input, a parameter, state or the output of any node"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// State updates, outputs and the loss, which may name node outputs.
    fn roles(&mut self, proto: &v1::Graph) -> Result<()> {
        let lookup = |name: &str, what: &str| {
            self.ids
                .get(name)
                .copied()
                .ok_or_else(|| Error::InvalidValue {
                    value: name.to_owned(),
                    message: format!("is listed as {what} but no value has this name"),
                })
        };
        let mut updates = Vec::with_capacity(proto.state.len());
        for s in &proto.state {
            updates.push(match s.update.as_str() {
                "" => None,
                u => Some(lookup(u, &format!("the update of state '{}'", s.value))?),
            });
        }
        let outputs = proto
            .outputs
            .iter()
            .map(|o| lookup(o, "a graph output"))
            .collect::<Result<Vec<_>>>()?;
        let loss = match proto.loss.as_str() {
            "" => None,
            l => Some(lookup(l, "the loss")?),
        };
        for (s, u) in self.graph.state.iter_mut().zip(updates) {
            s.update = u;
        }
        self.graph.outputs = outputs;
        self.graph.loss = loss;
        Ok(())
    }
}

/// The op of a node from its name and attributes.
fn parse_op(pn: &v1::Node, at: &NodeRef) -> Result<Op> {
    let mut attrs = Attrs::new();
    for (name, a) in &pn.attributes {
        let attr = attr_from_proto(a).map_err(|m| Error::BadAttribute {
            node: at.clone(),
            message: format!("attribute '{name}': {m}"),
        })?;
        attrs.insert(name.clone(), attr);
    }
    match Op::parse(&pn.op, &attrs) {
        Ok(Some(op)) => Ok(op),
        Ok(None) => Err(Error::UnknownOp {
            node: at.clone(),
            op: pn.op.clone(),
        }),
        Err(message) => Err(Error::BadAttribute {
            node: at.clone(),
            message,
        }),
    }
}

/// For each name a node outputs, the first node that does.
fn first_producers(proto: &v1::Graph) -> BTreeMap<&str, usize> {
    let mut producers = BTreeMap::new();
    for (i, node) in proto.nodes.iter().enumerate() {
        for out in &node.outputs {
            producers.entry(out.as_str()).or_insert(i);
        }
    }
    producers
}
