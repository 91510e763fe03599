//! ONNX export: the original model with trained weights in place of its
//! initializers ([`with_weights`]), and a model with its external data
//! inlined into one self-contained file ([`inline_external`]).
//!
//! The model is rewritten at the protobuf wire level: every field is copied
//! byte for byte except the data fields (`float_data`, `int32_data`,
//! `string_data`, `int64_data`, `raw_data`, `double_data`, `uint64_data`,
//! `external_data`, `data_location`) of the tensors whose data changes,
//! which get a single `raw_data`. So whatever the model holds beyond what
//! the importer reads (functions, training info, metadata, doc strings)
//! stays as it was.
//!
//! Tensors are found in the main graph's initializers and, for
//! [`inline_external`], also in node attributes (`t`, `tensors`) and the
//! subgraphs of node attributes (`g`, `graphs`), at any depth. Trained
//! weights replace only main-graph initializers (those the importer makes
//! parameters from).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use adjoint_proto::onnx::TensorProto;
use adjoint_proto::onnx::tensor_proto::DataLocation;
use prost::Message;

use super::tensor::{dtype_of, type_name};
use crate::{Error, Result, TensorData};

/// Field numbers of the ONNX messages that are walked.
const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const NODE_ATTRIBUTE: u32 = 5;
const ATTR_T: u32 = 5;
const ATTR_G: u32 = 6;
const ATTR_TENSORS: u32 = 10;
const ATTR_GRAPHS: u32 = 11;
/// TensorProto fields that hold (or point to) the data.
const TENSOR_DATA_FIELDS: [u32; 9] = [4, 5, 6, 7, 9, 10, 11, 13, 14];
const TENSOR_RAW_DATA: u32 = 9;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// Replaces the data of each main-graph initializer of `model` that has a
/// tensor of the same name in `weights` with that tensor (which must have
/// the initializer's dtype and shape, else an error names it), stored
/// inline as `raw_data`; external data references of every tensor are
/// replaced by the inline bytes (read through `external`, by location
/// relative to the model's folder). Everything else is copied unchanged.
/// A weight no initializer is named after is an error.
pub fn with_weights(
    model: &[u8],
    weights: &BTreeMap<String, TensorData>,
    external: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let mut ctx = Ctx {
        weights: Some(weights),
        used: BTreeSet::new(),
        external: Files::new(external),
    };
    let out = rewrite_model(model, &mut ctx)?;
    if let Some(name) = weights.keys().find(|n| !ctx.used.contains(*n)) {
        return Err(Error::InvalidValue {
            value: name.clone(),
            message: "a trained weight that names no initializer of the ONNX model".into(),
        });
    }
    Ok(out)
}

/// The model with the data of every tensor stored in external files read
/// (through `external`, by location relative to the model's folder) and
/// stored inline as `raw_data`: one self-contained file. A model without
/// external data comes back byte for byte.
pub fn inline_external(
    model: &[u8],
    external: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let mut ctx = Ctx {
        weights: None,
        used: BTreeSet::new(),
        external: Files::new(external),
    };
    rewrite_model(model, &mut ctx)
}

/// External data files, each read once.
struct Files<'a> {
    read: &'a dyn Fn(&str) -> Result<Vec<u8>>,
    cache: RefCell<HashMap<String, Vec<u8>>>,
}

impl<'a> Files<'a> {
    fn new(read: &'a dyn Fn(&str) -> Result<Vec<u8>>) -> Self {
        Files {
            read,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// Bytes `[offset, offset + length)` of file `location`.
    fn slice(
        &self,
        location: &str,
        offset: usize,
        length: Option<usize>,
    ) -> Result<Vec<u8>, String> {
        let mut cache = self.cache.borrow_mut();
        if !cache.contains_key(location) {
            let bytes = (self.read)(location)
                .map_err(|e| format!("missing external data '{location}': {e}"))?;
            cache.insert(location.to_owned(), bytes);
        }
        let bytes = &cache[location];
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(bytes.len()),
        };
        match end {
            Some(end) if offset <= end && end <= bytes.len() => Ok(bytes[offset..end].to_vec()),
            _ => Err(format!(
                "external data '{location}' has {} bytes, too few for offset {offset} and length {length:?}",
                bytes.len()
            )),
        }
    }
}

struct Ctx<'a> {
    weights: Option<&'a BTreeMap<String, TensorData>>,
    used: BTreeSet<String>,
    external: Files<'a>,
}

/// One field of a protobuf message: its number, wire type, the whole
/// encoded field and (for length-delimited fields) the payload.
struct Field<'a> {
    number: u32,
    wire: u8,
    raw: &'a [u8],
    payload: &'a [u8],
}

fn decode_error(what: &str, message: &str) -> Error {
    Error::Decode(format!("ONNX model: {what}: {message}"))
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The fields of message `buf` (`what` names it in errors).
fn fields<'a>(buf: &'a [u8], what: &str) -> Result<Vec<Field<'a>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let key =
            read_varint(buf, &mut at).ok_or_else(|| decode_error(what, "truncated field key"))?;
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        if number == 0 {
            return Err(decode_error(what, "field number 0"));
        }
        let payload_start;
        match wire {
            WIRE_VARINT => {
                read_varint(buf, &mut at).ok_or_else(|| decode_error(what, "truncated varint"))?;
                payload_start = start;
            }
            WIRE_I64 | WIRE_I32 => {
                let n = if wire == WIRE_I64 { 8 } else { 4 };
                if buf.len() - at < n {
                    return Err(decode_error(what, "truncated fixed-width field"));
                }
                payload_start = at;
                at += n;
            }
            WIRE_LEN => {
                let len = read_varint(buf, &mut at)
                    .ok_or_else(|| decode_error(what, "truncated length"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= buf.len() - at)
                    .ok_or_else(|| {
                        decode_error(what, &format!("field {number}: length {len} past the end"))
                    })?;
                payload_start = at;
                at += len;
            }
            other => {
                return Err(decode_error(
                    what,
                    &format!("field {number}: unsupported wire type {other}"),
                ));
            }
        }
        out.push(Field {
            number,
            wire,
            raw: &buf[start..at],
            payload: &buf[payload_start..at],
        });
    }
    Ok(out)
}

fn write_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// A field rewriter: the new payload of a length-delimited field, or
/// `None` to copy it.
type Rewrite<'r> = dyn FnMut(u32, &[u8], &mut Ctx<'_>) -> Option<Result<Vec<u8>>> + 'r;

/// Copies the fields of `buf`, passing each length-delimited field whose
/// number `rewrite` accepts through it.
fn rewrite_fields(
    buf: &[u8],
    what: &str,
    ctx: &mut Ctx<'_>,
    rewrite: &mut Rewrite<'_>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    for f in fields(buf, what)? {
        if f.wire == WIRE_LEN
            && let Some(new) = rewrite(f.number, f.payload, ctx)
        {
            write_len_field(&mut out, f.number, &new?);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

fn rewrite_model(model: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>> {
    // Check the whole model parses as the importer reads it first, so a
    // truncated file is a decode error rather than a partial rewrite.
    adjoint_proto::onnx::ModelProto::decode(model)
        .map_err(|e| Error::Decode(format!("ONNX model: protobuf: {e}")))?;
    rewrite_fields(model, "ModelProto", ctx, &mut |n, p, ctx| {
        (n == MODEL_GRAPH).then(|| rewrite_graph(p, true, ctx))
    })
}

fn rewrite_graph(graph: &[u8], main: bool, ctx: &mut Ctx<'_>) -> Result<Vec<u8>> {
    rewrite_fields(graph, "GraphProto", ctx, &mut |n, p, ctx| match n {
        GRAPH_INITIALIZER => Some(rewrite_tensor(p, main, ctx)),
        GRAPH_NODE => Some(rewrite_node(p, ctx)),
        _ => None,
    })
}

fn rewrite_node(node: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>> {
    rewrite_fields(node, "NodeProto", ctx, &mut |n, p, ctx| {
        (n == NODE_ATTRIBUTE).then(|| rewrite_attribute(p, ctx))
    })
}

fn rewrite_attribute(attr: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>> {
    rewrite_fields(attr, "AttributeProto", ctx, &mut |n, p, ctx| match n {
        ATTR_T | ATTR_TENSORS => Some(rewrite_tensor(p, false, ctx)),
        ATTR_G | ATTR_GRAPHS => Some(rewrite_graph(p, false, ctx)),
        _ => None,
    })
}

/// A tensor with a trained weight (main-graph initializers only) or
/// external data gets its data inline; any other comes back as it was.
fn rewrite_tensor(buf: &[u8], initializer: bool, ctx: &mut Ctx<'_>) -> Result<Vec<u8>> {
    let t = TensorProto::decode(buf)
        .map_err(|e| Error::Decode(format!("ONNX model: TensorProto: {e}")))?;
    let name = t.name().to_owned();
    let weight = if initializer {
        ctx.weights.and_then(|w| w.get(&name))
    } else {
        None
    };
    let data = if let Some(w) = weight {
        let bad = |message: String| Error::InvalidValue {
            value: name.clone(),
            message,
        };
        let dtype = dtype_of(t.data_type()).map_err(&bad)?;
        let dims: Vec<i64> = w.shape.iter().map(|&d| d as i64).collect();
        if dtype != w.dtype || dims != t.dims {
            return Err(bad(format!(
                "the trained weight is {:?} {:?}, but the ONNX initializer is {} {:?}",
                w.dtype,
                w.shape,
                type_name(t.data_type()),
                t.dims
            )));
        }
        let expected = w.shape.iter().product::<usize>() * dtype.size_bytes();
        if w.bytes.len() != expected {
            return Err(bad(format!(
                "the trained weight has {} bytes for shape {:?}, expected {expected}",
                w.bytes.len(),
                w.shape
            )));
        }
        ctx.used.insert(name.clone());
        w.bytes.clone()
    } else if t.data_location() == DataLocation::External {
        external_bytes(&t, &ctx.external).map_err(|message| Error::InvalidValue {
            value: name.clone(),
            message,
        })?
    } else {
        return Ok(buf.to_vec());
    };
    let mut out = Vec::with_capacity(buf.len() + data.len());
    for f in fields(buf, "TensorProto")? {
        if !TENSOR_DATA_FIELDS.contains(&f.number) {
            out.extend_from_slice(f.raw);
        }
    }
    write_len_field(&mut out, TENSOR_RAW_DATA, &data);
    Ok(out)
}

/// The bytes an external data reference names.
fn external_bytes(t: &TensorProto, files: &Files<'_>) -> Result<Vec<u8>, String> {
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value().to_owned())
    };
    let location =
        get("location").ok_or_else(|| "external data without a 'location' entry".to_owned())?;
    let number = |key: &str| -> Result<Option<usize>, String> {
        get(key)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    format!("external data '{location}': '{key}' is not a byte count: '{v}'")
                })
            })
            .transpose()
    };
    let (offset, length) = (number("offset")?, number("length")?);
    files.slice(&location, offset.unwrap_or(0), length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use adjoint_proto::onnx::{GraphProto, ModelProto, StringStringEntryProto};

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn model() -> ModelProto {
        let inline = TensorProto {
            name: Some("w".into()),
            dims: vec![2],
            data_type: Some(1),
            float_data: vec![1.0, 2.0],
            ..Default::default()
        };
        let external = TensorProto {
            name: Some("b".into()),
            dims: vec![1],
            data_type: Some(1),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                StringStringEntryProto {
                    key: Some("location".into()),
                    value: Some("model.data".into()),
                },
                StringStringEntryProto {
                    key: Some("offset".into()),
                    value: Some("4".into()),
                },
                StringStringEntryProto {
                    key: Some("length".into()),
                    value: Some("4".into()),
                },
            ],
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("test".into()),
            graph: Some(GraphProto {
                name: Some("g".into()),
                initializer: vec![inline, external],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn files(location: &str) -> Result<Vec<u8>> {
        match location {
            "model.data" => Ok(f32_bytes(&[9.0, 5.0])),
            _ => Err(Error::Unsupported(format!("no file '{location}'"))),
        }
    }

    #[test]
    fn weights_replace_initializers_and_external_data_is_inlined() {
        let bytes = model().encode_to_vec();
        let weights = BTreeMap::from([(
            "w".to_owned(),
            TensorData {
                dtype: DType::F32,
                shape: vec![2],
                bytes: f32_bytes(&[3.0, 4.0]),
            },
        )]);
        let out = with_weights(&bytes, &weights, &files).unwrap();
        let m = ModelProto::decode(&out[..]).unwrap();
        assert_eq!(m.producer_name(), "test");
        let g = m.graph.unwrap();
        assert_eq!(g.initializer[0].raw_data(), f32_bytes(&[3.0, 4.0]));
        assert!(g.initializer[0].float_data.is_empty());
        assert_eq!(g.initializer[1].raw_data(), f32_bytes(&[5.0]));
        assert!(g.initializer[1].external_data.is_empty());
        assert_eq!(g.initializer[1].data_location(), DataLocation::Default);

        let inlined = inline_external(&bytes, &files).unwrap();
        let g = ModelProto::decode(&inlined[..]).unwrap().graph.unwrap();
        assert_eq!(g.initializer[0].float_data, vec![1.0, 2.0]);
        assert_eq!(g.initializer[1].raw_data(), f32_bytes(&[5.0]));
    }

    #[test]
    fn mismatches_and_missing_files_are_errors_naming_the_tensor() {
        let bytes = model().encode_to_vec();
        let wrong = BTreeMap::from([(
            "w".to_owned(),
            TensorData {
                dtype: DType::F32,
                shape: vec![3],
                bytes: f32_bytes(&[3.0, 4.0, 5.0]),
            },
        )]);
        let e = with_weights(&bytes, &wrong, &files)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'w'") && e.contains("[3]"), "{e}");
        let unknown = BTreeMap::from([(
            "nope".to_owned(),
            TensorData {
                dtype: DType::F32,
                shape: vec![1],
                bytes: f32_bytes(&[1.0]),
            },
        )]);
        let e = with_weights(&bytes, &unknown, &files)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let none = |l: &str| -> Result<Vec<u8>> { Err(Error::Unsupported(format!("no '{l}'"))) };
        let e = inline_external(&bytes, &none).unwrap_err().to_string();
        assert!(e.contains("'b'") && e.contains("model.data"), "{e}");
        let e = inline_external(&bytes[..bytes.len() - 3], &files).unwrap_err();
        assert!(matches!(e, Error::Decode(_)), "{e}");
    }
}
