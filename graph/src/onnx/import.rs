//! The import driver: decodes a `ModelProto`, checks its opset, declares
//! initializers and graph inputs, maps the nodes in order (folding the
//! constant ones), and names and checks the graph outputs.
//!
//! Every ONNX value keeps its ONNX name in the graph. Intermediates a
//! mapping makes are named `{node}/{op}` and give way (get a `_` suffix)
//! when an ONNX value later claims their name. A graph output that is
//! another value under a different name (an Identity of an input, say) is
//! copied by a no-op Reshape, so that each output carries its ONNX name.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use adjoint_proto::onnx::type_proto::Value as TypeValue;
use adjoint_proto::onnx::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use prost::Message;

use super::emit::{Consts, Emit};
use super::node::OnnxNode;
use super::shape_ops::check_shape;
use super::tensor::{External, dtype_of, readable, tensor_data, type_name};
use super::value::{Const, Val, Weight};
use super::{ImportOptions, Imported, fold, ops};
use crate::ops::{Movement, Op};
use crate::{Builder, DType, Dim, Error, InputRole, Result, Shape, TensorType};

/// The oldest default-domain opset the importer reads.
pub(crate) const MIN_OPSET: i64 = 13;

/// Imports a model; see [`super::import()`].
pub(crate) fn run(model: &[u8], opts: &ImportOptions, external: External<'_>) -> Result<Imported> {
    let model = ModelProto::decode(model)
        .map_err(|e| Error::Decode(format!("ONNX model: protobuf: {e}")))?;
    let opset = default_opset(&model)?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Decode("ONNX model: it holds no graph".into()))?;
    let name = match graph.name() {
        "" => "onnx",
        n => n,
    };
    let mut imp = Importer {
        b: Builder::new(name),
        vals: BTreeMap::new(),
        consts: Consts::default(),
        opset,
        from_pytorch: model.producer_name() == "pytorch",
        external,
    };
    imp.initializers(graph, opts)?;
    let inputs = imp.inputs(graph, opts)?;
    for (i, node) in graph.node.iter().enumerate() {
        imp.node(i, node)?;
    }
    let outputs = imp.outputs(graph)?;
    imp.check_value_info(graph)?;
    let g = imp.b.finish()?;
    let params: BTreeSet<&str> = g
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| g.name_of(p.value))
        .collect();
    let trainable = graph
        .initializer
        .iter()
        .map(|t| t.name())
        .filter(|n| params.contains(n))
        .map(str::to_owned)
        .collect();
    let states: BTreeSet<&str> = g.state.iter().map(|s| g.name_of(s.value)).collect();
    let state = graph
        .initializer
        .iter()
        .map(|t| t.name())
        .filter(|n| states.contains(n))
        .map(str::to_owned)
        .collect();
    Ok(Imported {
        graph: g,
        opset,
        inputs,
        outputs,
        trainable,
        state,
    })
}

/// The version of the default domain's operator set, at least
/// [`MIN_OPSET`].
fn default_opset(model: &ModelProto) -> Result<i64> {
    let version = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .max();
    match version {
        None => Err(Error::Unsupported(
            "ONNX model: it imports no opset of the default domain".into(),
        )),
        Some(v) if v < MIN_OPSET => Err(Error::Unsupported(format!(
            "ONNX opset {v} is too old: the importer needs opset {MIN_OPSET} or newer of the default domain (re-export the model with a newer opset)"
        ))),
        Some(v) => Ok(v),
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ni));
            pi += 1;
        } else if p.get(pi) == Some(&n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

struct Importer<'a> {
    b: Builder,
    /// What each ONNX value name stands for so far.
    vals: BTreeMap<String, Val>,
    consts: Consts,
    opset: i64,
    /// The model's `producer_name` is "pytorch".
    from_pytorch: bool,
    external: External<'a>,
}

impl Importer<'_> {
    fn define(&mut self, name: &str, val: Val, by: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidValue {
                value: format!("({by})"),
                message: "has an empty name".into(),
            });
        }
        if self.vals.contains_key(name) {
            return Err(Error::DuplicateValue {
                value: name.to_owned(),
                first: "an earlier definition".into(),
                second: by.to_owned(),
            });
        }
        self.vals.insert(name.to_owned(), val);
        Ok(())
    }

    /// Float initializers become weights (parameters on first use as a
    /// value, trainable unless a freeze glob matches), the others
    /// constants; ones nothing reads are dropped.
    fn initializers(&mut self, g: &GraphProto, opts: &ImportOptions) -> Result<()> {
        if let Some(s) = g.sparse_initializer.first() {
            let name = s.values.as_ref().map_or("", |v| v.name());
            return Err(Error::Unsupported(format!(
                "sparse initializer '{name}' is not supported"
            )));
        }
        let read: BTreeSet<&str> = g
            .node
            .iter()
            .flat_map(|n| &n.input)
            .chain(g.output.iter().flat_map(|o| &o.name))
            .map(String::as_str)
            .collect();
        for t in &g.initializer {
            let name = t.name();
            let invalid = |message: String| Error::InvalidValue {
                value: name.to_owned(),
                message,
            };
            if !read.contains(name) {
                continue;
            }
            readable(t.data_type())
                .map_err(|m| Error::Unsupported(format!("initializer '{name}': {m}")))?;
            let data = tensor_data(t, self.external).map_err(invalid)?;
            if !data.dtype.is_float() {
                let c = Const::from_tensor_data(&data).map_err(invalid)?;
                self.define(name, Val::Const(c), "an initializer")?;
                continue;
            }
            let frozen = opts.freeze.iter().any(|p| glob_match(p, name));
            let weight = Weight {
                name: name.to_owned(),
                data,
                trainable: !frozen,
            };
            self.define(name, Val::Weight(Rc::new(weight)), "an initializer")?;
        }
        Ok(())
    }

    /// The graph inputs that are not initializers.
    fn inputs(&mut self, g: &GraphProto, opts: &ImportOptions) -> Result<Vec<String>> {
        let initializers: BTreeSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        let mut names = Vec::new();
        for vi in &g.input {
            let name = vi.name();
            if initializers.contains(name) {
                continue;
            }
            let ty = input_type(vi, opts.batch)
                .map_err(|m| Error::Unsupported(format!("graph input '{name}': {m}")))?;
            if self.vals.contains_key(name) {
                return Err(Error::DuplicateValue {
                    value: name.to_owned(),
                    first: "an earlier graph input".into(),
                    second: "a graph input".into(),
                });
            }
            let v = self.b.input(name, ty.dtype, ty.shape, InputRole::Data)?;
            self.consts.owners.insert(v);
            self.define(name, Val::Value(v), "a graph input")?;
            names.push(name.to_owned());
        }
        Ok(names)
    }

    fn node(&mut self, index: usize, proto: &NodeProto) -> Result<()> {
        let node = OnnxNode::new(proto, index, self.opset, self.from_pytorch, self.external);
        if !matches!(proto.domain(), "" | "ai.onnx") {
            return Err(node.unsupported(format!(
                "op domain '{}' is not supported (only the default ONNX domain is)",
                proto.domain()
            )));
        }
        let inputs = proto
            .input
            .iter()
            .map(|name| match name.as_str() {
                "" => Ok(Val::Absent),
                n => self
                    .vals
                    .get(n)
                    .cloned()
                    .ok_or_else(|| Error::DanglingValue {
                        node: node.node_ref(),
                        value: n.to_owned(),
                    }),
            })
            .collect::<Result<Vec<_>>>()?;
        let start = self.b.graph().values.len();
        let outs = match fold::try_fold(&node, &inputs)? {
            Some(outs) => outs,
            None => self.emit(&node, inputs)?,
        };
        self.bind(&node, outs, start)
    }

    /// Maps `node` into the graph, its intermediates scoped under its name.
    fn emit(&mut self, node: &OnnxNode<'_>, inputs: Vec<Val>) -> Result<Vec<Val>> {
        self.b.set_provenance(&node.name);
        self.b.push_scope(&node.name);
        let scope = Some(node.name.clone());
        let outs = ops::emit(&mut Emit::new(
            &mut self.b,
            node,
            inputs,
            &mut self.consts,
            scope,
        ));
        self.b.pop_scope();
        outs
    }

    /// Records the node's outputs under their ONNX names; values the node
    /// made (ids from `start` on) take those names.
    fn bind(&mut self, node: &OnnxNode<'_>, outs: Vec<Val>, start: usize) -> Result<()> {
        for (i, name) in node.proto.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let val = outs.get(i).cloned().ok_or_else(|| {
                node.invalid(format!(
                    "output {i} ('{name}') is not produced: the import gives {} output(s)",
                    outs.len()
                ))
            })?;
            if let Val::Value(v) = val
                && v.index() >= start
                && !self.consts.owners.contains(&v)
            {
                self.consts.claim(&mut self.b, v, name)?;
            }
            let by = format!("an output of {}", node.node_ref());
            self.define(name, val, &by)?;
        }
        Ok(())
    }

    /// The graph outputs, each a distinct value carrying its ONNX name.
    fn outputs(&mut self, g: &GraphProto) -> Result<Vec<String>> {
        self.b.set_provenance("");
        let mut names: Vec<String> = Vec::new();
        for vi in &g.output {
            let name = vi.name();
            let invalid = |message: &str| Error::InvalidValue {
                value: name.to_owned(),
                message: message.to_owned(),
            };
            if names.iter().any(|n| n == name) {
                return Err(invalid("is listed twice as a graph output"));
            }
            let val = self.vals.get(name).cloned();
            let v = match val {
                Some(Val::Value(v)) => v,
                Some(Val::Const(c)) => self.consts.materialize(&mut self.b, &c, name)?,
                Some(Val::Weight(w)) => self.consts.weight(&mut self.b, &w)?,
                Some(Val::Unavailable(why)) => {
                    return Err(Error::Unsupported(format!("graph output '{name}': {why}")));
                }
                Some(Val::Absent) | None => {
                    return Err(invalid("is a graph output, but nothing defines it"));
                }
            };
            let v = if self.b.graph().name_of(v) == name {
                v
            } else {
                let shape = self.b.shape(v).clone();
                let copy = self.b.node1(Op::Movement(Movement::Reshape(shape)), &[v])?;
                self.consts.claim(&mut self.b, copy, name)?;
                copy
            };
            check_declared(vi, self.b.ty(v))?;
            self.b.output(v);
            names.push(name.to_owned());
        }
        Ok(names)
    }

    /// Checks the types the model records for intermediate values.
    fn check_value_info(&self, g: &GraphProto) -> Result<()> {
        for vi in &g.value_info {
            let ty = match self.vals.get(vi.name()) {
                Some(Val::Value(v)) => self.b.ty(*v).clone(),
                Some(Val::Const(c)) => TensorType::new(c.dtype, Shape::of(&c.shape)),
                Some(Val::Weight(w)) => TensorType::new(w.data.dtype, Shape::of(&w.data.shape)),
                _ => continue,
            };
            check_declared(vi, &ty)?;
        }
        Ok(())
    }
}

/// The type of a graph input: leading symbolic dim bound to `batch` or
/// made the batch symbol; no other dim may be symbolic. The message says
/// what the importer cannot take.
fn input_type(
    vi: &ValueInfoProto,
    batch: Option<usize>,
) -> std::result::Result<TensorType, String> {
    let Some(TypeValue::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err("a graph input must be a tensor".into());
    };
    let dtype = dtype_of(t.elem_type())?;
    let shape = t
        .shape
        .as_ref()
        .ok_or("the graph input has no shape; export it with one")?;
    let mut dims = Vec::with_capacity(shape.dim.len());
    for (i, d) in shape.dim.iter().enumerate() {
        use adjoint_proto::onnx::tensor_shape_proto::dimension::Value as D;
        let dim = match &d.value {
            Some(D::DimValue(n)) => Dim::Fixed(
                usize::try_from(*n).map_err(|_| format!("axis {i} has negative size {n}"))?,
            ),
            _ if i == 0 => batch.map_or(Dim::Batch, Dim::Fixed),
            other => {
                let what = match other {
                    Some(D::DimParam(p)) => format!("symbolic ('{p}')"),
                    _ => "unknown".into(),
                };
                return Err(format!(
                    "axis {i} is {what}: only the leading (batch) dim may be symbolic; export the model with a fixed size there"
                ));
            }
        };
        dims.push(dim);
    }
    let shape = Shape(dims);
    check_shape(&shape)?;
    Ok(TensorType::new(dtype, shape))
}

/// Compares a value's type with what the model declares for it: the
/// element type, the rank, and every dim the model fixes.
fn check_declared(vi: &ValueInfoProto, ours: &TensorType) -> Result<()> {
    let Some(TypeValue::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(());
    };
    let mut ok = true;
    let mut text = String::new();
    if t.elem_type.is_some_and(|e| e != 0) {
        let declared: std::result::Result<DType, _> = dtype_of(t.elem_type());
        ok &= declared.as_ref().ok() == Some(&ours.dtype);
        text = declared.map_or_else(|_| type_name(t.elem_type()), |d| d.to_string());
    }
    if let Some(shape) = &t.shape {
        use adjoint_proto::onnx::tensor_shape_proto::dimension::Value as D;
        ok &= shape.dim.len() == ours.shape.rank();
        let dims: Vec<String> = shape
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(D::DimValue(n)) => {
                    let fixed = ours.shape.dims().get(i).and_then(|d| d.fixed());
                    ok &= fixed.is_none_or(|f| f as i64 == *n);
                    n.to_string()
                }
                Some(D::DimParam(p)) => p.clone(),
                None => "?".into(),
            })
            .collect();
        text.push_str(&format!("[{}]", dims.join(", ")));
    }
    if ok {
        return Ok(());
    }
    Err(Error::InvalidValue {
        value: vi.name().to_owned(),
        message: format!(
            "shape mismatch: the model declares {text}, but the import computes {ours}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_any_run_of_characters_at_stars() {
        assert!(glob_match("enc.*", "enc.layer.0.w"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*.bias", "head.bias"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("enc.*", "dec.w"));
        assert!(!glob_match("*.bias", "head.bias2"));
        assert!(!glob_match("a*b", "ac"));
    }
}
