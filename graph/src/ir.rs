//! The graph IR: typed values and nodes in topological order.
//!
//! Invariants of a valid [`Graph`] (checked by [`crate::validate`]):
//! value names are unique; every node reads only graph inputs, parameters,
//! state and outputs of earlier nodes; each value is produced at most once;
//! every value's type equals what its producer's shape rule infers. Nothing
//! here iterates a hash map, so every transform is deterministic.

use crate::{DType, Op, Shape};

/// Index of a value in [`Graph::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId(pub u32);

/// Index of a node in [`Graph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Dtype and shape of a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    pub ty: TensorType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Where the node came from (a source layer name); quoted in errors.
    pub provenance: String,
}

/// What a graph input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRole {
    Data,
    Label,
    /// A tangent or cotangent fed to a graph made by a transform.
    Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub value: ValueId,
    pub role: InputRole,
}

/// How fans are read for a variance-scaling initializer: a weight
/// `[..., in, out]` has fan_in `in` and fan_out `out`; a vector of length `n`
/// has both equal to `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    In,
    Out,
    Avg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Normal,
    Uniform,
}

/// A dense tensor's raw bytes: little-endian, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// How a parameter or state variable gets its first value.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    Values(TensorData),
    Zeros,
    Constant(f64),
    Normal {
        mean: f64,
        std: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    /// std = gain / sqrt(fan): Xavier is `Avg` with gain 1, Kaiming is `In`
    /// with gain sqrt(2).
    FanScaled {
        mode: FanMode,
        distribution: Distribution,
        gain: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub value: ValueId,
    pub init: Init,
    /// Frozen parameters are read but never differentiated or updated.
    pub trainable: bool,
}

/// Non-trainable state; after a training step `update` replaces it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateVar {
    pub value: ValueId,
    pub init: Init,
    pub update: Option<ValueId>,
}

/// A computation graph. Build one with [`crate::Builder`]; load one with
/// [`crate::serialize`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    /// In topological order.
    pub nodes: Vec<Node>,
    pub inputs: Vec<Input>,
    pub params: Vec<Param>,
    pub state: Vec<StateVar>,
    pub outputs: Vec<ValueId>,
    pub loss: Option<ValueId>,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.values[id.index()].ty
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn name_of(&self, id: ValueId) -> &str {
        &self.values[id.index()].name
    }

    /// The value with this name, by linear search.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }

    /// For each value, the node that produces it, if any.
    pub fn producers(&self) -> Vec<Option<NodeId>> {
        let mut producer = vec![None; self.values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &out in &node.outputs {
                producer[out.index()] = Some(NodeId(i as u32));
            }
        }
        producer
    }

    /// For each value, the nodes that read it, in node order.
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut consumers = vec![Vec::new(); self.values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &input in &node.inputs {
                let list: &mut Vec<NodeId> = &mut consumers[input.index()];
                if list.last() != Some(&NodeId(i as u32)) {
                    list.push(NodeId(i as u32));
                }
            }
        }
        consumers
    }

    /// Trainable parameters, in declaration order.
    pub fn trainable_params(&self) -> Vec<ValueId> {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.value)
            .collect()
    }

    pub fn param(&self, id: ValueId) -> Option<&Param> {
        self.params.iter().find(|p| p.value == id)
    }

    /// Whether every value's shape is free of the batch symbol.
    pub fn is_static(&self) -> bool {
        self.values.iter().all(|v| v.ty.shape.is_static())
    }

    /// This graph with the batch symbol bound to `batch` in every value and
    /// every shape-carrying attribute.
    pub fn bind_batch(&self, batch: usize) -> Graph {
        let mut g = self.clone();
        for v in &mut g.values {
            v.ty.shape = v.ty.shape.bind_batch(batch);
        }
        for n in &mut g.nodes {
            n.op = n.op.bind_batch(batch);
        }
        g
    }

    /// The cost of one node, from its op's cost rule.
    pub fn node_cost(&self, node: &Node) -> crate::ops::Cost {
        let inputs: Vec<&TensorType> = node.inputs.iter().map(|&v| self.ty(v)).collect();
        let outputs: Vec<&TensorType> = node.outputs.iter().map(|&v| self.ty(v)).collect();
        node.op.cost(&inputs, &outputs)
    }

    /// FLOPs of one execution of the whole graph (the batch symbol, if
    /// unbound, counts as 1).
    pub fn flops(&self) -> u64 {
        self.nodes.iter().map(|n| self.node_cost(n).flops).sum()
    }

    /// The numeric shape of a value; panics on the batch symbol, so callers
    /// check [`Graph::is_static`] first.
    pub fn static_shape(&self, id: ValueId) -> Vec<usize> {
        self.ty(id)
            .shape
            .to_static()
            .expect("static_shape called on a graph with an unbound batch dimension")
    }
}
