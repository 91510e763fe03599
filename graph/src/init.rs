//! Materializes parameter and state initializers as f64 tensors.
//!
//! Random initializers draw from the counter-based RNG keyed on the job seed
//! and the value's name, so a parameter's first value does not depend on the
//! order of declarations or on which process draws it.

use crate::interp::Tensor;
use crate::rng::{Stream, key_of};
use crate::{DType, Distribution, Error, FanMode, Graph, Init, Result, TensorData, ValueId};

/// The first value of `value` under `init`.
pub fn materialize(graph: &Graph, value: ValueId, init: &Init, seed: u64) -> Result<Tensor> {
    let shape = graph.static_shape(value);
    let n: usize = shape.iter().product();
    let stream = Stream {
        seed,
        step: 0,
        rank: 0,
        site: key_of(graph.name_of(value)),
    };
    let data = match init {
        Init::Values(t) => {
            if t.shape != shape {
                return Err(Error::InvalidValue {
                    value: graph.name_of(value).to_owned(),
                    message: format!(
                        "initial values have shape {:?}, expected {shape:?}",
                        t.shape
                    ),
                });
            }
            decode(t).map_err(|message| Error::InvalidValue {
                value: graph.name_of(value).to_owned(),
                message,
            })?
        }
        Init::Zeros => vec![0.0; n],
        Init::Constant(c) => vec![*c; n],
        Init::Normal { mean, std } => (0..n as u64)
            .map(|i| mean + std * stream.normal(i))
            .collect(),
        Init::Uniform { low, high } => (0..n as u64)
            .map(|i| low + (high - low) * stream.uniform(i))
            .collect(),
        Init::FanScaled {
            mode,
            distribution,
            gain,
        } => {
            let std = gain / fan(&shape, *mode).max(1.0).sqrt();
            match distribution {
                Distribution::Normal => (0..n as u64).map(|i| std * stream.normal(i)).collect(),
                Distribution::Uniform => {
                    let bound = std * 3f64.sqrt();
                    (0..n as u64)
                        .map(|i| bound * (2.0 * stream.uniform(i) - 1.0))
                        .collect()
                }
            }
        }
    };
    Ok(Tensor::new(shape, data))
}

/// The fan of a weight `[..., in, out]` under `mode` (`Avg` is the real
/// mean, as PyTorch's Xavier initializers use).
pub fn fan(shape: &[usize], mode: FanMode) -> f64 {
    let (fan_in, fan_out) = match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [.., i, o] => (*i, *o),
    };
    match mode {
        FanMode::In => fan_in as f64,
        FanMode::Out => fan_out as f64,
        FanMode::Avg => (fan_in as f64 + fan_out as f64) / 2.0,
    }
}

/// Decodes little-endian tensor bytes to f64.
pub fn decode(t: &TensorData) -> std::result::Result<Vec<f64>, String> {
    let n: usize = t.shape.iter().product();
    let size = t.dtype.size_bytes();
    if t.bytes.len() != n * size {
        return Err(format!(
            "{} bytes of {} data for shape {:?}: expected {}",
            t.bytes.len(),
            t.dtype,
            t.shape,
            n * size
        ));
    }
    let chunks = t.bytes.chunks_exact(size);
    Ok(match t.dtype {
        DType::F32 => chunks
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        DType::F64 => chunks
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::BF16 => chunks
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        DType::F16 => chunks
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        DType::I32 => chunks
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        DType::I64 => chunks
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DType::Bool => chunks.map(|c| f64::from(u8::from(c[0] != 0))).collect(),
    })
}

/// Encodes f64 values as little-endian bytes of `dtype`.
pub fn encode(dtype: DType, shape: &[usize], values: &[f64]) -> TensorData {
    let mut bytes = Vec::with_capacity(values.len() * dtype.size_bytes());
    for &v in values {
        match dtype {
            DType::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F64 => bytes.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => bytes.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            DType::F16 => bytes.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DType::I32 => bytes.extend_from_slice(&(v as i32).to_le_bytes()),
            DType::I64 => bytes.extend_from_slice(&(v as i64).to_le_bytes()),
            DType::Bool => bytes.push(u8::from(v != 0.0)),
        }
    }
    TensorData {
        dtype,
        shape: shape.to_vec(),
        bytes,
    }
}
