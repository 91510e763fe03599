//! Typed node attributes, the form in which ops are serialized.
//!
//! Each op family turns its variants into a name plus [`Attrs`] and parses
//! them back; the serializer maps [`Attr`] to the protobuf `Attribute`.

use std::collections::BTreeMap;

use crate::{DType, Shape};

/// One attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    DType(DType),
    Shape(Shape),
}

impl Attr {
    /// Name of the attribute's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Int(_) => "int",
            Attr::Float(_) => "float",
            Attr::Str(_) => "string",
            Attr::Bool(_) => "bool",
            Attr::Ints(_) => "ints",
            Attr::Floats(_) => "floats",
            Attr::DType(_) => "dtype",
            Attr::Shape(_) => "shape",
        }
    }
}

/// Attributes by name, in sorted order (deterministic encoding).
pub type Attrs = BTreeMap<String, Attr>;

/// Reads attributes for an op's parser, producing messages that name the
/// attribute and what was expected. Unknown attributes are rejected by
/// [`AttrReader::finish`].
#[derive(Debug)]
pub struct AttrReader<'a> {
    attrs: &'a Attrs,
    used: Vec<&'a str>,
}

impl<'a> AttrReader<'a> {
    pub fn new(attrs: &'a Attrs) -> Self {
        AttrReader {
            attrs,
            used: Vec::new(),
        }
    }

    fn take(&mut self, name: &'a str) -> Option<&'a Attr> {
        self.used.push(name);
        self.attrs.get(name)
    }

    fn wrong(name: &str, want: &str, got: &Attr) -> String {
        format!("attribute '{name}': expected {want}, found {}", got.kind())
    }

    pub fn int(&mut self, name: &'a str, default: Option<i64>) -> Result<i64, String> {
        match self.take(name) {
            Some(Attr::Int(v)) => Ok(*v),
            Some(other) => Err(Self::wrong(name, "int", other)),
            None => default.ok_or_else(|| format!("attribute '{name}' is required")),
        }
    }

    pub fn float(&mut self, name: &'a str, default: Option<f64>) -> Result<f64, String> {
        match self.take(name) {
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f64),
            Some(other) => Err(Self::wrong(name, "float", other)),
            None => default.ok_or_else(|| format!("attribute '{name}' is required")),
        }
    }

    pub fn boolean(&mut self, name: &'a str, default: Option<bool>) -> Result<bool, String> {
        match self.take(name) {
            Some(Attr::Bool(v)) => Ok(*v),
            Some(other) => Err(Self::wrong(name, "bool", other)),
            None => default.ok_or_else(|| format!("attribute '{name}' is required")),
        }
    }

    pub fn string(&mut self, name: &'a str, default: Option<&str>) -> Result<String, String> {
        match self.take(name) {
            Some(Attr::Str(v)) => Ok(v.clone()),
            Some(other) => Err(Self::wrong(name, "string", other)),
            None => default
                .map(str::to_owned)
                .ok_or_else(|| format!("attribute '{name}' is required")),
        }
    }

    pub fn ints(&mut self, name: &'a str, default: Option<Vec<i64>>) -> Result<Vec<i64>, String> {
        match self.take(name) {
            Some(Attr::Ints(v)) => Ok(v.clone()),
            Some(Attr::Int(v)) => Ok(vec![*v]),
            Some(other) => Err(Self::wrong(name, "ints", other)),
            None => default.ok_or_else(|| format!("attribute '{name}' is required")),
        }
    }

    pub fn dtype(&mut self, name: &'a str) -> Result<DType, String> {
        match self.take(name) {
            Some(Attr::DType(v)) => Ok(*v),
            Some(Attr::Str(s)) => {
                DType::parse(s).ok_or_else(|| format!("attribute '{name}': unknown dtype '{s}'"))
            }
            Some(other) => Err(Self::wrong(name, "dtype", other)),
            None => Err(format!("attribute '{name}' is required")),
        }
    }

    pub fn shape(&mut self, name: &'a str) -> Result<Shape, String> {
        match self.take(name) {
            Some(Attr::Shape(v)) => Ok(v.clone()),
            Some(Attr::Ints(v)) => v
                .iter()
                .map(|&d| usize::try_from(d).map(crate::Dim::Fixed))
                .collect::<Result<Vec<_>, _>>()
                .map(Shape)
                .map_err(|_| format!("attribute '{name}': negative dimension in {v:?}")),
            Some(other) => Err(Self::wrong(name, "shape", other)),
            None => Err(format!("attribute '{name}' is required")),
        }
    }

    /// Fails on any attribute the parser did not read.
    pub fn finish(self) -> Result<(), String> {
        match self.attrs.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(unknown) => Err(format!("unknown attribute '{unknown}'")),
            None => Ok(()),
        }
    }
}
