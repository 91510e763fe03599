//! What an ONNX value name stands for while a model is imported: a
//! [`Const`] known at import time, a float initializer ([`Weight`]), a
//! value of the graph being built, an optional input left out, or an output
//! the importer cannot produce.
//!
//! Constants hold f64 elements whatever their dtype, as the interpreter
//! does (integers exactly up to 2^53, which covers every shape). A constant
//! computed from the shape of a value with a batch dimension marks the
//! entries that stand for the batch symbol in [`Const::batch`]; such a
//! constant can feed shape inputs (Reshape, Expand, ConstantOfShape) and
//! the ops that only move its entries, nothing else.

use std::rc::Rc;

use crate::interp::Tensor;
use crate::ops::unary::cast_value;
use crate::{DType, Dim, Shape, TensorData, ValueId, init};

/// A tensor known at import time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Const {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Row-major elements, each exactly representable in `dtype`.
    pub data: Vec<f64>,
    /// Parallel to `data` when some entries stand for the batch symbol;
    /// empty when none does.
    pub batch: Vec<bool>,
}

impl Const {
    /// A constant of `dtype`; the values are rounded to the dtype.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<f64>) -> Const {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        let data = data.into_iter().map(|x| cast_value(x, dtype)).collect();
        Const {
            dtype,
            shape,
            data,
            batch: Vec::new(),
        }
    }

    pub fn scalar(dtype: DType, value: f64) -> Const {
        Const::new(dtype, Vec::new(), vec![value])
    }

    /// A rank-1 i64 constant.
    pub fn ints(values: &[i64]) -> Const {
        let data = values.iter().map(|&v| v as f64).collect();
        Const::new(DType::I64, vec![values.len()], data)
    }

    pub fn from_tensor_data(t: &TensorData) -> Result<Const, String> {
        Ok(Const::new(t.dtype, t.shape.clone(), init::decode(t)?))
    }

    pub fn from_tensor(dtype: DType, t: Tensor) -> Const {
        Const::new(dtype, t.shape, t.data)
    }

    pub fn to_tensor_data(&self) -> TensorData {
        init::encode(self.dtype, &self.shape, &self.data)
    }

    pub fn tensor(&self) -> Tensor {
        Tensor::new(self.shape.clone(), self.data.clone())
    }

    pub fn has_batch(&self) -> bool {
        self.batch.contains(&true)
    }

    pub fn is_batch(&self, i: usize) -> bool {
        self.batch.get(i).copied().unwrap_or(false)
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements as integers, when none stands for the batch symbol.
    pub fn to_ints(&self) -> Option<Vec<i64>> {
        (!self.has_batch()).then(|| self.data.iter().map(|&x| x as i64).collect())
    }

    /// The elements as dimensions: `None` for the batch symbol.
    pub fn to_dims(&self) -> Vec<Option<i64>> {
        (0..self.data.len())
            .map(|i| (!self.is_batch(i)).then_some(self.data[i] as i64))
            .collect()
    }

    /// The one value every element has, if they all agree (and none is the
    /// batch symbol).
    pub fn uniform(&self) -> Option<f64> {
        let first = *self.data.first()?;
        let same = self.data.iter().all(|&x| x.to_bits() == first.to_bits());
        (same && !self.has_batch()).then_some(first)
    }

    /// `i64[3]`-style text for messages.
    pub fn type_text(&self) -> String {
        format!("{}{}", self.dtype, Shape::of(&self.shape))
    }

    /// A rank-1 i64 constant of dimensions, the batch symbol marked.
    pub fn of_dims(dims: &[Dim]) -> Const {
        let data = dims
            .iter()
            .map(|d| d.fixed().map_or(1.0, |n| n as f64))
            .collect();
        let mut c = Const::new(DType::I64, vec![dims.len()], data);
        if dims.contains(&Dim::Batch) {
            c.batch = dims.iter().map(|d| *d == Dim::Batch).collect();
        }
        c
    }
}

/// A float initializer: a parameter once a node reads it as a value. Read
/// where a constant is needed (Dropout's ratio, say), it gives its values
/// and no parameter is made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Weight {
    pub name: String,
    pub data: TensorData,
    pub trainable: bool,
}

/// What an ONNX value name stands for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Const(Const),
    Weight(Rc<Weight>),
    Value(ValueId),
    /// An optional input left out (an empty name).
    Absent,
    /// An output the importer does not produce; reading it is an error
    /// with this reason.
    Unavailable(String),
}
