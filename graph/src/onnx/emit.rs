//! The context an op mapping runs in ([`Emit`]): the builder, the ONNX node
//! and its inputs, with helpers that turn inputs into graph values
//! (materializing constants) or into the constant numbers an attribute-like
//! input must be; and [`Consts`], the constants materialized so far.
//!
//! A constant becomes a graph value once, under its ONNX name: a scalar is a
//! `Constant` node, a tensor whose elements are all equal a `Constant`
//! broadcast to its shape, any other tensor a frozen parameter holding its
//! values. A float initializer becomes a parameter (trainable or frozen)
//! named as the initializer when a node first reads it as a value, or
//! non-trainable state (a BatchNormalization's running statistics) when a
//! node first reads it through [`Emit::state`].

use std::collections::{BTreeMap, BTreeSet};

use super::node::OnnxNode;
use super::value::{Const, Val, Weight};
use crate::ops::{Movement, Op};
use crate::{Builder, Error, Init, Result, Shape, ValueId};

/// The message for a shape that must be known at import but depends on the
/// batch size.
pub(crate) const DYNAMIC: &str = "dynamic shape we cannot resolve; pass a batch size";

/// Constants and parameters already in the graph, and which values carry
/// their own ONNX name.
#[derive(Debug, Default)]
pub(crate) struct Consts {
    by_name: BTreeMap<String, ValueId>,
    /// Values whose graph name is their ONNX name (never renamed away).
    pub owners: BTreeSet<ValueId>,
}

impl Consts {
    /// `c` as a graph value named `name` (once per name), made at the
    /// builder's current scope.
    pub fn materialize(&mut self, b: &mut Builder, c: &Const, name: &str) -> Result<ValueId> {
        if let Some(&v) = self.by_name.get(name) {
            return Ok(v);
        }
        let v = build_const(b, c, name)?;
        if b.graph().name_of(v) == name {
            self.owners.insert(v);
        }
        self.by_name.insert(name.to_owned(), v);
        Ok(v)
    }

    /// The parameter of a float initializer (made on first use), named as
    /// the initializer.
    pub fn weight(&mut self, b: &mut Builder, w: &Weight) -> Result<ValueId> {
        if let Some(&v) = self.by_name.get(&w.name) {
            return Ok(v);
        }
        let fresh = b.fresh_name(&w.name);
        let (dtype, shape) = (w.data.dtype, w.data.shape.clone());
        let init = Init::Values(w.data.clone());
        let v = if w.trainable {
            b.param(&fresh, dtype, &shape, init)?
        } else {
            b.frozen_param(&fresh, dtype, &shape, init)?
        };
        self.claim(b, v, &w.name)?;
        self.by_name.insert(w.name.clone(), v);
        Ok(v)
    }

    /// The state variable of a float initializer (made on first use), named
    /// as the initializer; `None` when an earlier node already made the
    /// initializer a parameter.
    pub fn state(&mut self, b: &mut Builder, w: &Weight) -> Result<Option<ValueId>> {
        if let Some(&v) = self.by_name.get(&w.name) {
            let is_state = b.graph().state.iter().any(|s| s.value == v);
            return Ok(is_state.then_some(v));
        }
        let fresh = b.fresh_name(&w.name);
        let (dtype, shape) = (w.data.dtype, w.data.shape.clone());
        let v = b.state(&fresh, dtype, &shape, Init::Values(w.data.clone()))?;
        self.claim(b, v, &w.name)?;
        self.by_name.insert(w.name.clone(), v);
        Ok(Some(v))
    }

    /// Renames `v` to `name`, moving away an intermediate that has it; an
    /// ONNX value that has it is an error.
    pub fn claim(&mut self, b: &mut Builder, v: ValueId, name: &str) -> Result<()> {
        if b.graph().name_of(v) != name && b.rename(v, name).is_err() {
            match b.graph().find(name) {
                Some(other) if !self.owners.contains(&other) => {
                    b.rename_unique(other, &format!("{name}_"));
                    b.rename(v, name)?;
                }
                _ => {
                    return Err(Error::DuplicateValue {
                        value: name.to_owned(),
                        first: "an earlier ONNX value".into(),
                        second: "another definition".into(),
                    });
                }
            }
        }
        self.owners.insert(v);
        Ok(())
    }
}

/// One op mapping's view of the import.
pub(crate) struct Emit<'a> {
    pub b: &'a mut Builder,
    pub node: &'a OnnxNode<'a>,
    pub inputs: Vec<Val>,
    consts: &'a mut Consts,
    /// The name scope the node's intermediates are made in, if any.
    scope: Option<String>,
}

impl<'a> Emit<'a> {
    pub fn new(
        b: &'a mut Builder,
        node: &'a OnnxNode<'a>,
        inputs: Vec<Val>,
        consts: &'a mut Consts,
        scope: Option<String>,
    ) -> Self {
        Emit {
            b,
            node,
            inputs,
            consts,
            scope,
        }
    }

    /// Input `i`, unless it is left out.
    pub fn opt(&self, i: usize) -> Option<&Val> {
        self.inputs.get(i).filter(|v| !matches!(v, Val::Absent))
    }

    pub fn has(&self, i: usize) -> bool {
        self.opt(i).is_some()
    }

    /// `input i ('name')` for messages.
    pub fn describe(&self, i: usize) -> String {
        format!("input {i} ('{}')", self.node.input_name(i))
    }

    /// The error for input `i` needed as a number that depends on the batch.
    pub fn dynamic(&self, i: usize) -> Error {
        self.node
            .unsupported(format!("{}: {DYNAMIC}", self.describe(i)))
    }

    /// Input `i` as a graph value, materializing a constant.
    pub fn value(&mut self, i: usize) -> Result<ValueId> {
        let name = self.node.input_name(i);
        if let Some(&v) = self.consts.by_name.get(name) {
            return Ok(v);
        }
        match self.inputs.get(i).unwrap_or(&Val::Absent) {
            Val::Value(v) => Ok(*v),
            Val::Const(c) if c.has_batch() => Err(self.dynamic(i)),
            Val::Const(c) => {
                let (c, name) = (c.clone(), name.to_owned());
                self.materialize(&c, &name)
            }
            Val::Weight(w) => {
                let (w, consts) = (w.clone(), &mut *self.consts);
                at_root(self.b, self.scope.as_deref(), |b| consts.weight(b, &w))
            }
            Val::Absent => Err(self
                .node
                .invalid(format!("input {i} is required but missing"))),
            Val::Unavailable(why) => Err(self
                .node
                .unsupported(format!("{}: {why}", self.describe(i)))),
        }
    }

    /// Input `i` as non-trainable state, when it is a float initializer
    /// (made state on first use, named as the initializer; [`Emit::value`]
    /// then gives the same value); `None` for any other input, or an
    /// initializer an earlier node made a parameter.
    pub fn state(&mut self, i: usize) -> Result<Option<ValueId>> {
        let Some(Val::Weight(w)) = self.opt(i) else {
            return Ok(None);
        };
        let (w, consts) = (w.clone(), &mut *self.consts);
        at_root(self.b, self.scope.as_deref(), |b| consts.state(b, &w))
    }

    /// Input `i`, which must be known at import (`what` says what it is).
    pub fn constant(&self, i: usize, what: &str) -> Result<Const> {
        match self.opt(i) {
            Some(Val::Const(c)) => Ok(c.clone()),
            Some(Val::Weight(w)) => Const::from_tensor_data(&w.data).map_err(|m| {
                self.node
                    .invalid(format!("{} ({what}): {m}", self.describe(i)))
            }),
            Some(_) => Err(self.node.unsupported(format!(
                "{} ({what}) must be known at import (a constant, an initializer or computed from them and from shapes), but it depends on the graph's input data",
                self.describe(i)
            ))),
            None => Err(self
                .node
                .invalid(format!("input {i} ({what}) is required but missing"))),
        }
    }

    /// Input `i` as integers known at import.
    pub fn ints(&self, i: usize, what: &str) -> Result<Vec<i64>> {
        let c = self.constant(i, what)?;
        c.to_ints().ok_or_else(|| self.dynamic(i))
    }

    /// Input `i` as a scalar (or one-element) constant.
    pub fn scalar(&self, i: usize, what: &str) -> Result<f64> {
        let c = self.constant(i, what)?;
        match (c.numel(), c.has_batch()) {
            (1, false) => Ok(c.data[0]),
            (1, true) => Err(self.dynamic(i)),
            _ => Err(self.node.invalid(format!(
                "{} ({what}): expected a single value, found {}",
                self.describe(i),
                c.type_text()
            ))),
        }
    }

    /// The shape of a graph value.
    pub fn shape(&self, v: ValueId) -> Shape {
        self.b.shape(v).clone()
    }

    /// The shape of input `i`, constant or not.
    pub fn input_shape(&mut self, i: usize) -> Result<Shape> {
        match self.opt(i) {
            Some(Val::Const(c)) => Ok(Shape::of(&c.shape)),
            Some(Val::Weight(w)) => Ok(Shape::of(&w.data.shape)),
            _ => {
                let v = self.value(i)?;
                Ok(self.shape(v))
            }
        }
    }

    /// `c` as a graph value named `name` (once per name).
    pub fn materialize(&mut self, c: &Const, name: &str) -> Result<ValueId> {
        if let Some(&v) = self.consts.by_name.get(name) {
            return Ok(v);
        }
        let consts = &mut *self.consts;
        at_root(self.b, self.scope.as_deref(), |b| {
            consts.materialize(b, c, name)
        })
    }

    /// An unnamed constant as a graph value (e.g. a mask the mapping built),
    /// named `{node}/{base}`.
    pub fn constant_value(&mut self, c: &Const, base: &str) -> Result<ValueId> {
        let name = format!("{}/{base}", self.node.name);
        at_root(self.b, self.scope.as_deref(), |b| build_const(b, c, &name))
    }
}

/// Runs `f` outside the name scope `scope` (the innermost one, if any).
fn at_root<T>(b: &mut Builder, scope: Option<&str>, f: impl FnOnce(&mut Builder) -> T) -> T {
    if scope.is_some() {
        b.pop_scope();
    }
    let out = f(b);
    if let Some(scope) = scope {
        b.push_scope(scope);
    }
    out
}

/// Adds `c` to the graph under `name` (or the next free variant of it).
fn build_const(b: &mut Builder, c: &Const, name: &str) -> Result<ValueId> {
    let name = b.fresh_name(name);
    if let Some(value) = c.uniform() {
        let scalar = Op::Movement(Movement::Constant {
            value,
            dtype: c.dtype,
        });
        if c.shape.is_empty() {
            return b.named_node(&name, scalar, &[]).map(|o| o[0]);
        }
        let s = b.named_node(&format!("{name}/value"), scalar, &[])?[0];
        let broadcast = Op::Movement(Movement::Broadcast(Shape::of(&c.shape)));
        return b.named_node(&name, broadcast, &[s]).map(|o| o[0]);
    }
    b.frozen_param(&name, c.dtype, &c.shape, Init::Values(c.to_tensor_data()))
}
