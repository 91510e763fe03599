//! Tensors on the host and safetensors files: parameters, gradients and
//! datasets, and the batches a training loop feeds.

use std::borrow::Cow;
use std::collections::BTreeMap;

use adjoint_graph::{DType, Graph, ValueId};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// A dense little-endian tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> HostTensor {
        HostTensor {
            dtype: DType::F32,
            shape,
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn from_i64(shape: Vec<usize>, data: &[i64]) -> HostTensor {
        HostTensor {
            dtype: DType::I64,
            shape,
            bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as f32 (only for f32 tensors).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if self.dtype != DType::F32 {
            return Err(Error::Data(format!(
                "expected an f32 tensor, found {}",
                self.dtype
            )));
        }
        Ok(self
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

fn to_safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::Bool => Dtype::BOOL,
    }
}

fn from_safetensors_dtype(name: &str, d: Dtype) -> Result<DType> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BOOL => DType::Bool,
        other => {
            return Err(Error::Data(format!(
                "tensor '{name}': dtype {other:?} is not supported"
            )));
        }
    })
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> Dtype {
        to_safetensors_dtype(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Decodes a safetensors file into named host tensors.
pub fn read_safetensors(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| Error::Data(format!("safetensors: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = from_safetensors_dtype(name, view.dtype())?;
        out.insert(
            name.to_owned(),
            HostTensor {
                dtype,
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            },
        );
    }
    Ok(out)
}

/// Encodes named host tensors as a safetensors file.
pub fn write_safetensors(tensors: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::Data(format!("safetensors: {e}")))
}

/// Samples for a graph's inputs: one tensor per input (by name), all with
/// the same leading (sample) dimension. Batches are contiguous row ranges,
/// so feeding one copies bytes and allocates nothing.
#[derive(Debug, Clone)]
pub struct Dataset {
    tensors: Vec<(String, HostTensor)>,
    samples: usize,
}

impl Dataset {
    /// Checks `tensors` against the inputs of `graph` (which may have a
    /// symbolic batch dimension): names, dtypes and per-sample shapes.
    pub fn new(graph: &Graph, mut tensors: BTreeMap<String, HostTensor>) -> Result<Dataset> {
        let mut ordered = Vec::new();
        let mut samples = None;
        for input in &graph.inputs {
            let name = graph.name_of(input.value);
            let t = tensors.remove(name).ok_or_else(|| {
                Error::Data(format!(
                    "the data has no tensor '{name}' for graph input '{name}'"
                ))
            })?;
            let want = graph.ty(input.value);
            if t.dtype != want.dtype {
                return Err(Error::Data(format!(
                    "tensor '{name}': dtype {}, but the graph input is {}",
                    t.dtype, want.dtype
                )));
            }
            let per_sample: Vec<String> = want.shape.dims()[1.min(want.shape.rank())..]
                .iter()
                .map(|d| d.to_string())
                .collect();
            let found: Vec<String> = t.shape.iter().skip(1).map(|d| d.to_string()).collect();
            if t.shape.is_empty() || per_sample != found {
                return Err(Error::Data(format!(
                    "tensor '{name}': shape {:?}, but the graph input {} needs [samples, {}]",
                    t.shape,
                    want.shape,
                    per_sample.join(", ")
                )));
            }
            match samples {
                None => samples = Some(t.shape[0]),
                Some(n) if n != t.shape[0] => {
                    return Err(Error::Data(format!(
                        "tensor '{name}' has {} samples, the others {n}",
                        t.shape[0]
                    )));
                }
                Some(_) => {}
            }
            ordered.push((name.to_owned(), t));
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Data(format!(
                "the data has a tensor '{extra}' that is not a graph input"
            )));
        }
        Ok(Dataset {
            tensors: ordered,
            samples: samples.unwrap_or(0),
        })
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Input names in graph order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// The bytes of samples `start..start + len` of input `i` (graph order).
    pub fn rows(&self, i: usize, start: usize, len: usize) -> Result<&[u8]> {
        let (name, t) = &self.tensors[i];
        if start + len > self.samples {
            return Err(Error::Data(format!(
                "'{name}': samples {start}..{} of {}",
                start + len,
                self.samples
            )));
        }
        let row = t.bytes.len() / self.samples.max(1);
        Ok(&t.bytes[start * row..(start + len) * row])
    }
}

/// Pairs host tensors named as parameters or state with those values of
/// `graph` (the values a checkpoint or weights file holds); a tensor of
/// another name, shape or dtype is an error.
pub fn params_by_name<'a>(
    graph: &Graph,
    tensors: &'a BTreeMap<String, HostTensor>,
) -> Result<Vec<(ValueId, &'a HostTensor)>> {
    let values = graph
        .params
        .iter()
        .map(|p| (p.value, "parameter"))
        .chain(graph.state.iter().map(|s| (s.value, "state")));
    let mut out = Vec::new();
    for (v, what) in values {
        let name = graph.name_of(v);
        let Some(t) = tensors.get(name) else { continue };
        let want = graph.static_shape(v);
        if t.shape != want || t.dtype != graph.ty(v).dtype {
            return Err(Error::Data(format!(
                "{what} '{name}': the file has {}{:?}, the graph {}",
                t.dtype,
                t.shape,
                graph.ty(v)
            )));
        }
        out.push((v, t));
    }
    if let Some(name) = tensors.keys().find(|n| {
        let named = |v: ValueId| graph.name_of(v) == n.as_str();
        !graph.params.iter().any(|p| named(p.value)) && !graph.state.iter().any(|s| named(s.value))
    }) {
        return Err(Error::Data(format!(
            "the file has a tensor '{name}' that is not a parameter or state of the graph"
        )));
    }
    Ok(out)
}
