//! The cast-inserting replay behind [`super::apply`]: values keep their ids
//! (node outputs are retyped), casts are appended as new values and nodes.

use std::collections::{BTreeMap, BTreeSet};

use super::policy::{Class, class};
use crate::ops::{Binary, Movement, Op, Unary};
use crate::{DType, Error, Graph, Node, NodeRef, Result, TensorType, Value, ValueId, validate};

/// Rewrites every node of `old` for matmuls in `half`.
pub fn rewrite(old: &Graph, half: DType) -> Result<Graph> {
    let mut graph = old.clone();
    graph.nodes.clear();
    let names = (old.values.iter().map(|v| v.name.clone()))
        .chain(old.nodes.iter().map(|n| n.name.clone()))
        .collect();
    let mut rw = Rewrite {
        graph,
        half,
        names,
        casts: BTreeMap::new(),
        lowered: vec![false; old.values.len()],
        producers: (old.producers().into_iter())
            .map(|p| p.map(|n| n.index()))
            .collect(),
    };
    for node in &old.nodes {
        rw.node(old, node)?;
    }
    rw.restore_types(old);
    validate::validate(&rw.graph)?;
    Ok(rw.graph)
}

struct Rewrite {
    graph: Graph,
    half: DType,
    /// Every value and node name in use.
    names: BTreeSet<String>,
    /// Casts made so far: a value cast twice to one type is cast once.
    casts: BTreeMap<(ValueId, DType), ValueId>,
    /// Values a lowered op produced (for the bias rule).
    lowered: Vec<bool>,
    /// The node of `old` producing each of its values.
    producers: Vec<Option<usize>>,
}

/// f64 over f32 over the half types; bf16 and f16 together give f32.
fn widest(a: DType, b: DType) -> DType {
    let rank = |d: DType| match d {
        DType::F64 => 3,
        DType::F32 => 2,
        _ => 1,
    };
    match rank(a).cmp(&rank(b)) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal if a == b => a,
        std::cmp::Ordering::Equal => DType::F32,
    }
}

impl Rewrite {
    fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    fn fresh(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut i = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// `v` as `to` (itself when it already is).
    fn cast(&mut self, v: ValueId, to: DType) -> ValueId {
        if self.ty(v).dtype == to {
            return v;
        }
        if let Some(&c) = self.casts.get(&(v, to)) {
            return c;
        }
        let name = self.fresh(format!("{}/{to}", self.graph.name_of(v)));
        let out = ValueId(self.graph.values.len() as u32);
        self.graph.values.push(Value {
            name: name.clone(),
            ty: TensorType::new(to, self.ty(v).shape.clone()),
        });
        self.lowered.push(false);
        self.graph.nodes.push(Node {
            name,
            op: Op::Unary(Unary::Cast(to)),
            inputs: vec![v],
            outputs: vec![out],
            provenance: "precision".into(),
        });
        self.casts.insert((v, to), out);
        out
    }

    /// Whether `v` is a parameter, possibly reshaped or broadcast: a bias
    /// that a linear layer applies in its own type.
    fn is_bias(&self, old: &Graph, v: ValueId) -> bool {
        if old.param(v).is_some() {
            return true;
        }
        match self.producers.get(v.index()).copied().flatten() {
            Some(n) => {
                let node = &old.nodes[n];
                matches!(
                    node.op,
                    Op::Movement(Movement::Reshape(_) | Movement::Broadcast(_))
                ) && self.is_bias(old, node.inputs[0])
            }
            None => false,
        }
    }

    /// The type each input of `node` should have, `None` for "as it is".
    fn targets(&self, old: &Graph, node: &Node) -> Vec<Option<DType>> {
        let types: Vec<DType> = node.inputs.iter().map(|&v| self.ty(v).dtype).collect();
        let floats = || types.iter().copied().filter(|d| d.is_float());
        match class(&node.op) {
            // f64 graphs are left as they are, as autocast leaves them.
            Class::Lower if floats().any(|d| d == DType::F64) => vec![None; types.len()],
            Class::Lower => types
                .iter()
                .map(|d| d.is_float().then_some(self.half))
                .collect(),
            Class::Widen => types
                .iter()
                .map(|&d| (d == DType::BF16 || d == DType::F16).then_some(DType::F32))
                .collect(),
            Class::Follow => {
                let Some(first) = floats().next() else {
                    return vec![None; types.len()];
                };
                if floats().all(|d| d == first) {
                    return vec![None; types.len()];
                }
                if let Some(to) = self.bias_type(old, node) {
                    return types.iter().map(|d| d.is_float().then_some(to)).collect();
                }
                let ranked = node
                    .inputs
                    .iter()
                    .zip(&types)
                    .filter(|(v, d)| d.is_float() && self.ty(**v).shape.rank() > 0)
                    .map(|(_, &d)| d);
                let to = ranked
                    .clone()
                    .reduce(widest)
                    .or_else(|| floats().reduce(widest))
                    .unwrap_or(first);
                types.iter().map(|d| d.is_float().then_some(to)).collect()
            }
        }
    }

    /// For `lowered + bias` (either order), the half type: the bias joins
    /// its linear layer, as `nn.Linear` under autocast casts its bias.
    fn bias_type(&self, old: &Graph, node: &Node) -> Option<DType> {
        if node.op != Op::Binary(Binary::Add) {
            return None;
        }
        let [a, b] = [node.inputs[0], node.inputs[1]];
        for (x, bias) in [(a, b), (b, a)] {
            if self.lowered[x.index()]
                && self.ty(bias).dtype == DType::F32
                && self.ty(bias).shape.rank() <= 1
                && self.is_bias(old, bias)
            {
                return Some(self.ty(x).dtype);
            }
        }
        None
    }

    fn node(&mut self, old: &Graph, node: &Node) -> Result<()> {
        let targets = self.targets(old, node);
        let mut node = node.clone();
        for (input, target) in node.inputs.iter_mut().zip(&targets) {
            if let Some(to) = *target {
                *input = self.cast(*input, to);
            }
        }
        let types: Vec<&TensorType> = node.inputs.iter().map(|&v| self.graph.ty(v)).collect();
        let out_types = node
            .op
            .infer(&types)
            .map_err(|message| Error::InvalidNode {
                node: NodeRef {
                    name: node.name.clone(),
                    op: node.op.name().to_owned(),
                    provenance: node.provenance.clone(),
                },
                message: format!("after the precision rewrite: {message}"),
            })?;
        let lowered = class(&node.op) == Class::Lower
            && node.inputs.iter().any(|&v| self.ty(v).dtype == self.half);
        for (&out, ty) in node.outputs.iter().zip(out_types) {
            self.graph.values[out.index()].ty = ty;
            self.lowered[out.index()] = lowered;
        }
        self.graph.nodes.push(node);
        Ok(())
    }

    /// Graph outputs, the loss and state updates get their original types
    /// back: the cast takes the value's name, the half value is renamed.
    fn restore_types(&mut self, old: &Graph) {
        let mut restored = BTreeMap::new();
        let mut back = |rw: &mut Rewrite, v: ValueId| -> ValueId {
            let want = old.ty(v).dtype;
            if rw.ty(v).dtype == want {
                return v;
            }
            *restored.entry(v).or_insert_with(|| {
                let c = rw.cast(v, want);
                let name = old.name_of(v).to_owned();
                let renamed = rw.fresh(format!("{name}/{}", rw.ty(v).dtype));
                rw.graph.values[v.index()].name = renamed;
                rw.graph.values[c.index()].name = name;
                c
            })
        };
        for i in 0..self.graph.outputs.len() {
            let v = self.graph.outputs[i];
            self.graph.outputs[i] = back(self, v);
        }
        if let Some(loss) = self.graph.loss {
            self.graph.loss = Some(back(self, loss));
        }
        for i in 0..self.graph.state.len() {
            if let Some(u) = self.graph.state[i].update {
                self.graph.state[i].update = Some(back(self, u));
            }
        }
    }
}
