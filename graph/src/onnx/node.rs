//! One ONNX node as the importer sees it: its name for messages, its
//! attributes read by name and type, and the errors that name it.
//!
//! Attributes are read by what the op expects; an attribute of another type
//! is a [`Error::BadAttribute`] naming the node and the attribute. Unknown
//! attributes are ignored (ONNX ops carry many that do not change the
//! result, e.g. LayerNormalization's `stash_type`).

use std::collections::BTreeMap;

use adjoint_proto::onnx::attribute_proto::AttributeType;
use adjoint_proto::onnx::{AttributeProto, NodeProto, TensorProto};

use super::tensor::External;
use crate::{Error, NodeRef};

/// A node of the ONNX graph with its attributes by name.
pub(crate) struct OnnxNode<'a> {
    pub proto: &'a NodeProto,
    /// The node's name, or `#index/first-output` when it has none.
    pub name: String,
    pub opset: i64,
    /// Whether the model says PyTorch wrote it (`producer_name`
    /// "pytorch"): where PyTorch and the ONNX spec differ (the variance a
    /// BatchNormalization's running var takes in), the mapping follows
    /// PyTorch, so the model trains as it did there.
    pub from_pytorch: bool,
    pub external: External<'a>,
    attrs: BTreeMap<&'a str, &'a AttributeProto>,
}

impl<'a> OnnxNode<'a> {
    pub fn new(
        proto: &'a NodeProto,
        index: usize,
        opset: i64,
        from_pytorch: bool,
        external: External<'a>,
    ) -> Self {
        let name = match proto.name() {
            "" => format!(
                "#{index}/{}",
                proto.output.first().map_or("", String::as_str)
            ),
            n => n.to_owned(),
        };
        let attrs = proto.attribute.iter().map(|a| (a.name(), a)).collect();
        OnnxNode {
            proto,
            name,
            opset,
            from_pytorch,
            external,
            attrs,
        }
    }

    pub fn op(&self) -> &'a str {
        self.proto.op_type()
    }

    pub fn node_ref(&self) -> NodeRef {
        NodeRef {
            name: self.name.clone(),
            op: self.op().to_owned(),
            provenance: String::new(),
        }
    }

    /// The name of input `i` ("" when left out).
    pub fn input_name(&self, i: usize) -> &str {
        self.proto.input.get(i).map_or("", String::as_str)
    }

    /// How many outputs the node lists (left-out ones included).
    pub fn outputs(&self) -> usize {
        self.proto.output.len()
    }

    /// Whether output `i` is listed with a name (not left out).
    pub fn wants_output(&self, i: usize) -> bool {
        self.proto.output.get(i).is_some_and(|n| !n.is_empty())
    }

    pub fn invalid(&self, message: impl Into<String>) -> Error {
        Error::InvalidNode {
            node: self.node_ref(),
            message: message.into(),
        }
    }

    pub fn bad_attr(&self, name: &str, message: impl std::fmt::Display) -> Error {
        Error::BadAttribute {
            node: self.node_ref(),
            message: format!("attribute '{name}': {message}"),
        }
    }

    pub fn unsupported(&self, message: impl std::fmt::Display) -> Error {
        Error::Unsupported(format!("{}: {message}", self.node_ref()))
    }

    /// The attribute `name` if the node has it, checked to be of `want`.
    fn get(&self, name: &str, want: AttributeType) -> Result<Option<&'a AttributeProto>, Error> {
        let Some(&a) = self.attrs.get(name) else {
            return Ok(None);
        };
        let found = kind_of(a);
        if found == want {
            Ok(Some(a))
        } else {
            Err(self.bad_attr(
                name,
                format!(
                    "expected {}, found {}",
                    want.as_str_name(),
                    found.as_str_name()
                ),
            ))
        }
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.attrs.contains_key(name)
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, Error> {
        Ok(self
            .get(name, AttributeType::Int)?
            .map_or(default, |a| a.i()))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, Error> {
        Ok(self
            .get(name, AttributeType::Float)?
            .map_or(default, |a| a.f()))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, Error> {
        Ok(self.get(name, AttributeType::Ints)?.map(|a| a.ints.clone()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, Error> {
        Ok(self
            .get(name, AttributeType::Floats)?
            .map(|a| a.floats.clone()))
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String, Error> {
        match self.get(name, AttributeType::String)? {
            None => Ok(default.to_owned()),
            Some(a) => String::from_utf8(a.s().to_vec())
                .map_err(|_| self.bad_attr(name, "the string is not UTF-8")),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, Error> {
        Ok(self
            .get(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }

    /// The one attribute of a Constant node, by name.
    pub fn only_attr(&self) -> Result<&'a str, Error> {
        let mut names = self.attrs.keys();
        match (names.next(), names.next()) {
            (Some(&n), None) => Ok(n),
            _ => Err(self.invalid(format!(
                "expected exactly one attribute, found {}",
                self.attrs.len()
            ))),
        }
    }
}

/// An attribute's type: its `type` field, or for writers that leave it out
/// (IR version 1), the value field that is set.
fn kind_of(a: &AttributeProto) -> AttributeType {
    if let Some(t) = a.r#type.and_then(|t| AttributeType::try_from(t).ok())
        && t != AttributeType::Undefined
    {
        return t;
    }
    let candidates = [
        (a.f.is_some(), AttributeType::Float),
        (a.i.is_some(), AttributeType::Int),
        (a.s.is_some(), AttributeType::String),
        (a.t.is_some(), AttributeType::Tensor),
        (!a.floats.is_empty(), AttributeType::Floats),
        (!a.ints.is_empty(), AttributeType::Ints),
        (!a.strings.is_empty(), AttributeType::Strings),
        (!a.tensors.is_empty(), AttributeType::Tensors),
    ];
    candidates
        .into_iter()
        .find(|(set, _)| *set)
        .map_or(AttributeType::Undefined, |(_, t)| t)
}
