//! Expert parallelism as a rewrite of a forward graph: [`shard_experts`]
//! shards every `GroupedMatMul` weight `[E, a, b]` along its experts over a
//! group of `ranks` ranks and routes the packed rows to the experts' owners
//! and back with the collective ops of [`crate::ops::collective`]. Every
//! rank runs the same rewritten graph (SPMD); rank r holds the experts of
//! place `r % ranks` ([`shard_range`]), and [`shard`] / [`unshard`] cut a
//! full weight into those shards and put them back together.
//!
//! The rows one `offsets` value groups form an *expert region*: the
//! `GroupedMatMul`s with those offsets and the row-wise nodes between them
//! (unary ops, elementwise ops of region rows of one shape or of region
//! rows and a vector). A region's entries (the `x` of its first matmuls)
//! go through an `AllToAll` before it, its exits (values anything outside
//! the region reads, and graph outputs) through an `AllToAllCombine` after
//! it; inside, the shapes gain the leading `ranks` dim of the exchange and
//! the matmuls read the local offsets. Exits come back with the rows from
//! `offsets[E]` on (dropped slots) zero, as a `GroupedMatMul`'s output has
//! them; only an exit past a row-wise op that maps 0 elsewhere (a bias
//! after the last matmul) differs there from the unsharded graph, in rows
//! the MoE layer's combine weighs by 0.
//!
//! A sharded weight keeps its initializer, which still describes the full
//! `[E, a, b]` tensor: a worker materialises that and keeps its shard.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::ops::{CollectiveOp, Moe, Nn, Op};
use crate::{Dim, Error, Graph, Init, Node, NodeRef, Result, Shape, TensorData, Value, ValueId};

/// A forward graph with its experts sharded over `ranks` ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedExperts {
    pub graph: Graph,
    /// The sharded weights, in declaration order.
    pub params: Vec<ShardedParam>,
    pub ranks: usize,
}

/// One expert weight, sharded along dim 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedParam {
    pub name: String,
    /// The global expert count E; each rank holds `E / ranks`.
    pub experts: usize,
}

/// The experts (rows of dim 0) rank `rank` holds: those of place
/// `p = rank % ranks`, `p·E/ranks .. (p+1)·E/ranks`. Empty when `ranks`
/// is 0.
pub fn shard_range(experts: usize, ranks: usize, rank: usize) -> Range<usize> {
    if ranks == 0 {
        return 0..0;
    }
    let place = rank % ranks;
    place * experts / ranks..(place + 1) * experts / ranks
}

/// The shard of a full `[E, ...]` tensor that `rank` holds (rows
/// [`shard_range`] of dim 0).
pub fn shard(full: &TensorData, ranks: usize, rank: usize) -> Result<TensorData> {
    let bad = |why: String| Error::Unsupported(format!("shard of {:?}: {why}", full.shape));
    let experts = *full
        .shape
        .first()
        .ok_or_else(|| bad("a scalar has no experts to shard".into()))?;
    if ranks == 0 || experts % ranks != 0 {
        return Err(bad(format!(
            "{experts} experts do not split evenly over {ranks} ranks"
        )));
    }
    let row = row_bytes(full).map_err(bad)?;
    let range = shard_range(experts, ranks, rank);
    let mut shape = full.shape.clone();
    shape[0] = range.len();
    Ok(TensorData {
        dtype: full.dtype,
        shape,
        bytes: full.bytes[range.start * row..range.end * row].to_vec(),
    })
}

/// The inverse of [`shard`]: the shards of places `0..ranks`, in order,
/// concatenated along dim 0.
pub fn unshard(shards: &[TensorData]) -> Result<TensorData> {
    let bad = |why: String| Error::Unsupported(format!("unshard: {why}"));
    let first = shards.first().ok_or_else(|| bad("no shards".into()))?;
    if first.shape.is_empty() {
        return Err(bad("shards are scalars, not [experts, ...]".into()));
    }
    let mut bytes = Vec::with_capacity(first.bytes.len() * shards.len());
    for (place, s) in shards.iter().enumerate() {
        if s.dtype != first.dtype || s.shape != first.shape {
            return Err(bad(format!(
                "shard {place} is {}{:?}, shard 0 is {}{:?}",
                s.dtype, s.shape, first.dtype, first.shape
            )));
        }
        row_bytes(s).map_err(|why| bad(format!("shard {place}: {why}")))?;
        bytes.extend_from_slice(&s.bytes);
    }
    let mut shape = first.shape.clone();
    shape[0] *= shards.len();
    Ok(TensorData {
        dtype: first.dtype,
        shape,
        bytes,
    })
}

/// Bytes of one row of dim 0, after checking the byte length.
fn row_bytes(t: &TensorData) -> std::result::Result<usize, String> {
    let row = t.shape[1..].iter().product::<usize>() * t.dtype.size_bytes();
    let want = row * t.shape.first().copied().unwrap_or(1);
    if t.bytes.len() != want {
        return Err(format!(
            "{} bytes of {} data for shape {:?}: expected {want}",
            t.bytes.len(),
            t.dtype,
            t.shape
        ));
    }
    Ok(row)
}

/// `graph` (a forward graph, before autodiff) with the experts of every
/// `GroupedMatMul` sharded over `ranks` ranks; see the module doc.
/// `ranks = 1` gives the graph unchanged.
///
/// Errors, naming the node: no `GroupedMatMul` at all; a weight that is not
/// a parameter, has explicit initial values, has an expert count that is
/// not a multiple of `ranks`, or is read by anything but `GroupedMatMul`s;
/// expert rows grouped by other offsets, turned into offsets, or fed to a
/// dropout; a graph that already has collectives.
pub fn shard_experts(graph: &Graph, ranks: usize) -> Result<ShardedExperts> {
    match ranks {
        0 => Err(Error::Unsupported(
            "expert_parallel = 0: needs at least one rank".into(),
        )),
        1 => Ok(ShardedExperts {
            graph: graph.clone(),
            params: Vec::new(),
            ranks,
        }),
        _ => {
            let regions = Regions::find(graph, ranks)?;
            rewrite(graph, ranks, &regions)
        }
    }
}

/// The expert regions of a graph, one per distinct `offsets` value.
struct Regions {
    /// Per value: the region (index into `offsets`) that holds it.
    value: Vec<Option<usize>>,
    /// Per node: the region it belongs to.
    node: Vec<Option<usize>>,
    /// Each region's offsets value, in order of first use.
    offsets: Vec<ValueId>,
    /// The expert weights, with their global expert count.
    weights: BTreeMap<ValueId, usize>,
    /// Region values read outside their region or by the graph's caller.
    exits: BTreeSet<ValueId>,
}

impl Regions {
    fn find(graph: &Graph, ranks: usize) -> Result<Regions> {
        let mut r = Regions {
            value: vec![None; graph.values.len()],
            node: vec![None; graph.nodes.len()],
            offsets: Vec::new(),
            weights: BTreeMap::new(),
            exits: BTreeSet::new(),
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            let at = |message: String| node_error(node, ranks, message);
            if let Op::Collective(_) = node.op {
                return Err(at("the graph already exchanges rows between ranks".into()));
            }
            let region = if let Op::Moe(Moe::GroupedMatMul { .. }) = node.op {
                Some(r.matmul(graph, node, ranks)?)
            } else {
                r.row_wise(graph, node, &at)?
            };
            r.node[i] = region;
            for &out in &node.outputs {
                r.value[out.index()] = region;
            }
        }
        if r.offsets.is_empty() {
            return Err(Error::Unsupported(format!(
                "expert_parallel = {ranks} needs a graph with experts (GroupedMatMul); found none"
            )));
        }
        r.check_weights(graph, ranks)?;
        r.find_exits(graph);
        Ok(r)
    }

    /// The region of a `GroupedMatMul` (x, w, offsets), after checking its
    /// weight and that its rows are not another region's.
    fn matmul(&mut self, graph: &Graph, node: &Node, ranks: usize) -> Result<usize> {
        let at = |message: String| node_error(node, ranks, message);
        let [x, w, offsets] = node.inputs[..] else {
            return Err(at(format!(
                "expected 3 inputs, found {}",
                node.inputs.len()
            )));
        };
        if self.value[offsets.index()].is_some() {
            return Err(at(format!(
                "its offsets '{}' are computed from expert rows",
                graph.name_of(offsets)
            )));
        }
        let region = match self.offsets.iter().position(|&o| o == offsets) {
            Some(r) => r,
            None => {
                self.offsets.push(offsets);
                self.offsets.len() - 1
            }
        };
        if let Some(other) = self.value[x.index()].filter(|&o| o != region) {
            return Err(at(format!(
                "its rows '{}' come from the experts of offsets '{}', but it groups them by '{}'",
                graph.name_of(x),
                graph.name_of(self.offsets[other]),
                graph.name_of(offsets)
            )));
        }
        let name = graph.name_of(w);
        let Some(param) = graph.param(w) else {
            return Err(at(format!(
                "weight '{name}' is not a parameter; only parameters can be sharded"
            )));
        };
        let experts = match graph.ty(w).shape.dims() {
            [Dim::Fixed(e), Dim::Fixed(_), Dim::Fixed(_)] => *e,
            _ => {
                return Err(at(format!(
                    "weight '{name}' is {}, expected [experts, in, out] with fixed dims",
                    graph.ty(w)
                )));
            }
        };
        if experts % ranks != 0 {
            return Err(at(format!(
                "weight '{name}' has {experts} experts, not a multiple of {ranks}"
            )));
        }
        if let Init::Values(_) = param.init {
            return Err(at(format!(
                "weight '{name}' has explicit initial values, which cannot describe every rank's shard; give it a generated initializer"
            )));
        }
        self.weights.insert(w, experts);
        Ok(region)
    }

    /// The region of a node that works row by row on one region's rows,
    /// if it is one.
    fn row_wise(
        &self,
        graph: &Graph,
        node: &Node,
        at: &dyn Fn(String) -> Error,
    ) -> Result<Option<usize>> {
        let regions: BTreeSet<usize> = (node.inputs.iter())
            .filter_map(|v| self.value[v.index()])
            .collect();
        let Some(&region) = regions.first() else {
            return Ok(None);
        };
        let elementwise = match node.op {
            Op::Nn(Nn::Dropout { .. }) => {
                return Err(at(format!(
                    "dropout of expert rows ('{}') cannot be sharded: its mask depends on the rows' positions, which the exchange moves",
                    graph.name_of(node.inputs[0])
                )));
            }
            Op::Unary(_) => return Ok(Some(region)),
            Op::Binary(_) | Op::Nn(Nn::GeluGrad(_)) => true,
            _ => false,
        };
        let [out] = node.outputs[..] else {
            return Ok(None);
        };
        let shape = &graph.ty(out).shape;
        let rows_kept = node.inputs.iter().all(|&v| match self.value[v.index()] {
            Some(_) => graph.ty(v).shape == *shape,
            None => graph.ty(v).shape.rank() <= 1,
        });
        Ok((elementwise && regions.len() == 1 && rows_kept).then_some(region))
    }

    /// Each weight is read only by `GroupedMatMul`s, as their weight.
    fn check_weights(&self, graph: &Graph, ranks: usize) -> Result<()> {
        let consumers = graph.consumers();
        for &w in self.weights.keys() {
            for &n in &consumers[w.index()] {
                let node = graph.node(n);
                let as_weight = matches!(node.op, Op::Moe(Moe::GroupedMatMul { .. }))
                    && node.inputs.iter().position(|&v| v == w) == Some(1)
                    && node.inputs.iter().filter(|&&v| v == w).count() == 1;
                if !as_weight {
                    return Err(node_error(
                        node,
                        ranks,
                        format!(
                            "reads the expert weight '{}', which is sharded; only GroupedMatMul may read it, as its weight",
                            graph.name_of(w)
                        ),
                    ));
                }
            }
            if graph.outputs.contains(&w) {
                return Err(Error::InvalidValue {
                    value: graph.name_of(w).to_owned(),
                    message: format!(
                        "expert_parallel = {ranks}: an expert weight cannot be a graph output"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Region values read by a node outside their region, or by the
    /// graph's caller (outputs, the loss, state updates).
    fn find_exits(&mut self, graph: &Graph) {
        for (i, node) in graph.nodes.iter().enumerate() {
            if self.node[i].is_none() {
                let read = node
                    .inputs
                    .iter()
                    .filter(|v| self.value[v.index()].is_some());
                self.exits.extend(read);
            }
        }
        let caller = (graph.outputs.iter().copied())
            .chain(graph.loss)
            .chain(graph.state.iter().filter_map(|s| s.update));
        for v in caller {
            if self.value[v.index()].is_some() {
                self.exits.insert(v);
            }
        }
    }
}

/// An error about `node`, prefixed with the setting.
fn node_error(node: &Node, ranks: usize, message: String) -> Error {
    Error::InvalidNode {
        node: NodeRef {
            name: node.name.clone(),
            op: node.op.name().to_owned(),
            provenance: node.provenance.clone(),
        },
        message: format!("expert_parallel = {ranks}: {message}"),
    }
}

/// Builds the sharded graph: values keep their ids (region values and
/// weights get new types), new values and nodes are added.
struct Rewriter<'a> {
    old: &'a Graph,
    regions: &'a Regions,
    ranks: usize,
    graph: Graph,
    nodes: Vec<Node>,
    /// Every value and node name taken.
    names: BTreeSet<String>,
    /// Per (entry, region): the entry's rows at the experts.
    dispatched: BTreeMap<(ValueId, usize), ValueId>,
    /// Per region: the local offsets and counts of its first dispatch.
    local: Vec<Option<(ValueId, ValueId)>>,
    /// Per exit: its rows back from the experts.
    back: BTreeMap<ValueId, ValueId>,
}

fn rewrite(old: &Graph, ranks: usize, regions: &Regions) -> Result<ShardedExperts> {
    let mut graph = old.clone();
    graph.nodes.clear();
    let mut params = Vec::new();
    for p in &old.params {
        let Some(&experts) = regions.weights.get(&p.value) else {
            continue;
        };
        let ty = &mut graph.values[p.value.index()].ty;
        let mut dims = ty.shape.dims().to_vec();
        dims[0] = Dim::Fixed(experts / ranks);
        ty.shape = Shape(dims);
        params.push(ShardedParam {
            name: old.name_of(p.value).to_owned(),
            experts,
        });
    }
    let names = (old.values.iter().map(|v| v.name.clone()))
        .chain(old.nodes.iter().map(|n| n.name.clone()))
        .collect();
    let mut rw = Rewriter {
        old,
        regions,
        ranks,
        graph,
        nodes: Vec::new(),
        names,
        dispatched: BTreeMap::new(),
        local: vec![None; regions.offsets.len()],
        back: BTreeMap::new(),
    };
    for (i, node) in old.nodes.iter().enumerate() {
        let mut new = node.clone();
        match regions.node[i] {
            Some(region) if matches!(node.op, Op::Moe(Moe::GroupedMatMul { .. })) => {
                rw.matmul_inputs(&mut new, region)?;
            }
            Some(_) => {}
            None => new.inputs.iter_mut().for_each(|v| rw.read_back(v)),
        }
        let outs = rw.push(new, &[])?;
        for v in outs.into_iter().filter(|v| regions.exits.contains(v)) {
            rw.combine(node, v)?;
        }
    }
    let mut graph = std::mem::take(&mut rw.graph);
    graph.nodes = std::mem::take(&mut rw.nodes);
    graph.outputs.iter_mut().for_each(|v| rw.read_back(v));
    graph.loss.iter_mut().for_each(|v| rw.read_back(v));
    (graph.state.iter_mut())
        .filter_map(|s| s.update.as_mut())
        .for_each(|v| rw.read_back(v));
    crate::validate::validate(&graph)?;
    Ok(ShardedExperts {
        graph,
        params,
        ranks,
    })
}

impl Rewriter<'_> {
    /// `base`, or `base_1`, `base_2`, … when taken by a value or node.
    fn fresh(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut n = 0;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.names.insert(name.clone());
        name
    }

    /// `v`'s rows back from the experts, for a reader outside the region.
    fn read_back(&self, v: &mut ValueId) {
        if let Some(&b) = self.back.get(v) {
            *v = b;
        }
    }

    /// A region matmul reads its rows at the experts (dispatching an entry
    /// first) and the local offsets.
    fn matmul_inputs(&mut self, node: &mut Node, region: usize) -> Result<()> {
        let x = node.inputs[0];
        if self.regions.value[x.index()].is_none() {
            node.inputs[0] = match self.dispatched.get(&(x, region)) {
                Some(&rows) => rows,
                None => {
                    let o = self.regions.offsets[region];
                    let base = self.old.name_of(x);
                    let names = [".to_experts", ".expert_offsets", ".expert_counts"]
                        .map(|suffix| format!("{base}{suffix}"));
                    let op = CollectiveOp::AllToAll { ranks: self.ranks };
                    let outs = self.collective(node, "all_to_all", op, vec![x, o], &names)?;
                    self.local[region].get_or_insert((outs[1], outs[2]));
                    self.dispatched.insert((x, region), outs[0]);
                    outs[0]
                }
            };
        }
        // The region's first matmul reads an entry, so this is set.
        if let Some((offsets, _)) = self.local[region] {
            node.inputs[2] = offsets;
        }
        Ok(())
    }

    /// Brings the exit `v` (an output of `node`) back from the experts.
    fn combine(&mut self, node: &Node, v: ValueId) -> Result<()> {
        // A region value comes after its region's first dispatch.
        let region = self.regions.value[v.index()];
        let Some((region, (_, counts))) = region.and_then(|r| Some((r, self.local[r]?))) else {
            return Ok(());
        };
        let o = self.regions.offsets[region];
        let names = [format!("{}.from_experts", self.old.name_of(v))];
        let op = CollectiveOp::AllToAllCombine { ranks: self.ranks };
        let back = self.collective(node, "all_to_all_combine", op, vec![v, o, counts], &names)?[0];
        let (was, now) = (self.old.ty(v), self.graph.ty(back));
        if was != now {
            let name = self.old.name_of(v);
            let message = format!("'{name}' comes back from the experts as {now}, but was {was}");
            return Err(node_error(node, self.ranks, message));
        }
        self.back.insert(v, back);
        Ok(())
    }

    /// Appends `node`, typing its outputs by its op's shape rule: existing
    /// outputs are retyped; with `new` names, new outputs are made.
    fn push(&mut self, mut node: Node, new: &[String]) -> Result<Vec<ValueId>> {
        let types: Vec<_> = node.inputs.iter().map(|&v| self.graph.ty(v)).collect();
        let inferred = node.op.infer(&types).map_err(|message| {
            let message = format!("after sharding the experts: {message}");
            node_error(&node, self.ranks, message)
        })?;
        let outputs = if new.is_empty() {
            node.outputs.len()
        } else {
            new.len()
        };
        if inferred.len() != outputs {
            let message = format!("produces {} outputs, expected {outputs}", inferred.len());
            return Err(node_error(&node, self.ranks, message));
        }
        if new.is_empty() {
            for (&out, ty) in node.outputs.iter().zip(inferred) {
                self.graph.values[out.index()].ty = ty;
            }
        } else {
            for (name, ty) in new.iter().zip(inferred) {
                node.outputs.push(ValueId(self.graph.values.len() as u32));
                self.graph.values.push(Value {
                    name: name.clone(),
                    ty,
                });
            }
        }
        let outputs = node.outputs.clone();
        self.nodes.push(node);
        Ok(outputs)
    }

    /// A new node named `{at}/{base}` with outputs named `names`.
    fn collective(
        &mut self,
        at: &Node,
        base: &str,
        op: CollectiveOp,
        inputs: Vec<ValueId>,
        names: &[String],
    ) -> Result<Vec<ValueId>> {
        let name = self.fresh(format!("{}/{base}", at.name));
        let names: Vec<String> = names.iter().map(|n| self.fresh(n.clone())).collect();
        let node = Node {
            name,
            op: Op::Collective(op),
            inputs,
            outputs: Vec::new(),
            provenance: at.provenance.clone(),
        };
        self.push(node, &names)
    }
}
