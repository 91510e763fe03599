//! ONNX tensors and element types: `TensorProto` to [`TensorData`] (raw
//! bytes, typed fields or external data), and ONNX `DataType` numbers to
//! [`DType`].
//!
//! Tensors of the narrow integer types (int8, uint8, int16, uint16) are
//! widened to i32 and uint32/uint64 to i64 (uint64 values above `i64::MAX`
//! are an error), since the IR has no such dtypes; graph inputs and Cast
//! targets must name a dtype of the IR exactly. Every function here returns
//! a bare message; the caller names the tensor or node.

use adjoint_proto::onnx::tensor_proto::{DataLocation, DataType};
use adjoint_proto::onnx::{StringStringEntryProto, TensorProto};

use crate::{DType, Result, TensorData};

/// Reads the bytes of an external data file, by its location.
pub(crate) type External<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>>;

/// A result whose error is a message.
type Msg<T> = std::result::Result<T, String>;

/// The largest element count a tensor may have (as the native format).
const MAX_ELEMENTS: u64 = 1 << 53;

/// The name of an ONNX element type number, for messages.
pub(crate) fn type_name(code: i32) -> String {
    match DataType::try_from(code) {
        Ok(t) => format!("{} ({code})", t.as_str_name()),
        Err(_) => format!("{code} (unknown)"),
    }
}

/// The IR dtype of an ONNX element type, when the IR has it exactly.
pub(crate) fn dtype_of(code: i32) -> Msg<DType> {
    match DataType::try_from(code) {
        Ok(DataType::Float) => Ok(DType::F32),
        Ok(DataType::Double) => Ok(DType::F64),
        Ok(DataType::Float16) => Ok(DType::F16),
        Ok(DataType::Bfloat16) => Ok(DType::BF16),
        Ok(DataType::Int32) => Ok(DType::I32),
        Ok(DataType::Int64) => Ok(DType::I64),
        Ok(DataType::Bool) => Ok(DType::Bool),
        _ => Err(format!(
            "element type {} is not supported (supported: FLOAT, DOUBLE, FLOAT16, BFLOAT16, INT32, INT64, BOOL)",
            type_name(code)
        )),
    }
}

/// Whether tensors of an ONNX element type can be read (into the IR dtype
/// that holds them); the message says why not.
pub(crate) fn readable(code: i32) -> Msg<()> {
    storage(code).map(|_| ())
}

/// How the elements of an ONNX type are stored: their byte width and the
/// IR dtype they are read into.
fn storage(code: i32) -> Msg<(usize, DType)> {
    match DataType::try_from(code) {
        Ok(DataType::Int8 | DataType::Uint8) => Ok((1, DType::I32)),
        Ok(DataType::Int16 | DataType::Uint16) => Ok((2, DType::I32)),
        Ok(DataType::Uint32) => Ok((4, DType::I64)),
        Ok(DataType::Uint64) => Ok((8, DType::I64)),
        _ => dtype_of(code).map(|d| (d.size_bytes(), d)),
    }
}

/// Checks that a shape's fixed dims (zeros counted as ones) multiply to at
/// most 2^53, so element and byte counts never overflow.
pub(crate) fn check_extent(dims: &[usize]) -> Msg<()> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d.max(1) as u64)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| format!("dims {dims:?} hold too many elements"))?;
    }
    Ok(())
}

/// The shape of a tensor from its `dims`, with its element count checked.
fn shape_of(dims: &[i64]) -> Msg<(Vec<usize>, usize)> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("negative dimension in dims {dims:?}"))?;
    check_extent(&shape)?;
    Ok((shape.clone(), shape.iter().product()))
}

/// The data of `t` in the IR: its dtype, shape and little-endian bytes.
pub(crate) fn tensor_data(t: &TensorProto, external: External<'_>) -> Msg<TensorData> {
    let code = t.data_type();
    let (width, dtype) = storage(code)?;
    let (shape, n) = shape_of(&t.dims)?;
    if t.segment.is_some() {
        return Err("segmented tensors (the 'segment' field) are not supported".into());
    }
    let raw = if t.data_location() == DataLocation::External {
        Some(external_bytes(&t.external_data, external)?)
    } else {
        t.raw_data.clone()
    };
    let bytes = match raw {
        Some(raw) => {
            if raw.len() != n * width {
                return Err(format!(
                    "{} bytes of {} data for dims {:?}: expected {}",
                    raw.len(),
                    type_name(code),
                    t.dims,
                    n * width
                ));
            }
            widen(code, dtype, &raw)?
        }
        None => typed_bytes(t, code, dtype, n)?,
    };
    Ok(TensorData {
        dtype,
        shape,
        bytes,
    })
}

/// Raw little-endian ONNX elements as IR bytes (copied unless widened).
fn widen(code: i32, dtype: DType, raw: &[u8]) -> Msg<Vec<u8>> {
    let ints: Vec<i64> = match DataType::try_from(code) {
        Ok(DataType::Int8) => raw.iter().map(|&b| i64::from(b as i8)).collect(),
        Ok(DataType::Uint8) => raw.iter().map(|&b| i64::from(b)).collect(),
        Ok(DataType::Int16) => pairs(raw)
            .map(|c| i64::from(i16::from_le_bytes(c)))
            .collect(),
        Ok(DataType::Uint16) => pairs(raw)
            .map(|c| i64::from(u16::from_le_bytes(c)))
            .collect(),
        Ok(DataType::Uint32) => raw
            .chunks_exact(4)
            .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Ok(DataType::Uint64) => raw
            .chunks_exact(8)
            .map(|c| u64_to_i64(u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect::<Msg<_>>()?,
        _ => return Ok(raw.to_vec()),
    };
    Ok(int_bytes(dtype, &ints))
}

fn pairs(raw: &[u8]) -> impl Iterator<Item = [u8; 2]> + '_ {
    raw.chunks_exact(2).map(|c| [c[0], c[1]])
}

fn u64_to_i64(v: u64) -> Msg<i64> {
    i64::try_from(v).map_err(|_| format!("uint64 value {v} does not fit in i64"))
}

/// Integers as little-endian bytes of an int (or bool) dtype.
fn int_bytes(dtype: DType, ints: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ints.len() * dtype.size_bytes());
    for &v in ints {
        match dtype {
            DType::I64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::Bool => out.push(u8::from(v != 0)),
            // Only i32 is left: widened narrow ints and INT32 itself.
            _ => out.extend_from_slice(&(v as i32).to_le_bytes()),
        }
    }
    out
}

/// The elements of the typed field that holds `code`'s data, as IR bytes.
fn typed_bytes(t: &TensorProto, code: i32, dtype: DType, n: usize) -> Msg<Vec<u8>> {
    let (count, bytes): (usize, Vec<u8>) = match DataType::try_from(code) {
        Ok(DataType::Float) => (
            t.float_data.len(),
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        Ok(DataType::Double) => (
            t.double_data.len(),
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        Ok(DataType::Float16 | DataType::Bfloat16) => (
            t.int32_data.len(),
            t.int32_data
                .iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect(),
        ),
        Ok(DataType::Int64) => (t.int64_data.len(), int_bytes(dtype, &t.int64_data)),
        Ok(DataType::Uint32 | DataType::Uint64) => {
            let ints = t
                .uint64_data
                .iter()
                .map(|&v| u64_to_i64(v))
                .collect::<Msg<Vec<i64>>>()?;
            (ints.len(), int_bytes(dtype, &ints))
        }
        _ => {
            let ints: Vec<i64> = t.int32_data.iter().map(|&v| i64::from(v)).collect();
            (ints.len(), int_bytes(dtype, &ints))
        }
    };
    if count != n {
        return Err(format!(
            "holds {count} {} elements, but dims {:?} need {n}",
            type_name(code),
            t.dims
        ));
    }
    Ok(bytes)
}

/// The bytes an `external_data` list points at.
fn external_bytes(entries: &[StringStringEntryProto], external: External<'_>) -> Msg<Vec<u8>> {
    let get = |key: &str| {
        entries
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value().to_owned())
    };
    let location =
        get("location").ok_or_else(|| "external data without a 'location' entry".to_owned())?;
    let number = |key: &str| -> Msg<Option<usize>> {
        get(key)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    format!("external data '{location}': '{key}' is not a byte count: '{v}'")
                })
            })
            .transpose()
    };
    let (offset, length) = (number("offset")?, number("length")?);
    let bytes =
        external(&location).map_err(|e| format!("missing external data '{location}': {e}"))?;
    let start = offset.unwrap_or(0);
    let end = match length {
        Some(len) => start.checked_add(len),
        None => Some(bytes.len()),
    };
    match end {
        Some(end) if start <= end && end <= bytes.len() => Ok(bytes[start..end].to_vec()),
        _ => Err(format!(
            "external data '{location}' has {} bytes, too few for offset {start} and length {length:?}",
            bytes.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::decode;

    fn none(location: &str) -> Result<Vec<u8>> {
        Err(crate::Error::Unsupported(format!("no '{location}'")))
    }

    fn tensor(code: DataType, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type: Some(code as i32),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn narrow_ints_widen_and_typed_fields_are_read() {
        let t = TensorProto {
            raw_data: Some(vec![0xff, 0x02]),
            ..tensor(DataType::Int8, &[2])
        };
        let d = tensor_data(&t, &none).unwrap();
        assert_eq!(
            (d.dtype, decode(&d).unwrap()),
            (DType::I32, vec![-1.0, 2.0])
        );

        let half = TensorProto {
            int32_data: vec![0x3c00, 0xc000],
            ..tensor(DataType::Float16, &[2])
        };
        let d = tensor_data(&half, &none).unwrap();
        assert_eq!(
            (d.dtype, decode(&d).unwrap()),
            (DType::F16, vec![1.0, -2.0])
        );

        let big = TensorProto {
            uint64_data: vec![u64::MAX],
            ..tensor(DataType::Uint64, &[1])
        };
        assert!(
            tensor_data(&big, &none)
                .unwrap_err()
                .contains("does not fit")
        );

        let strings = tensor(DataType::String, &[1]);
        assert!(tensor_data(&strings, &none).unwrap_err().contains("STRING"));
        let huge = tensor(DataType::Float, &[1 << 40, 1 << 40]);
        assert!(tensor_data(&huge, &none).unwrap_err().contains("too many"));
    }

    #[test]
    fn external_data_is_sliced_by_offset_and_length() {
        let entry = |k: &str, v: &str| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let mut t = TensorProto {
            data_location: Some(DataLocation::External as i32),
            external_data: vec![entry("location", "w.bin"), entry("offset", "2")],
            ..tensor(DataType::Int16, &[2])
        };
        let file = |_: &str| -> Result<Vec<u8>> { Ok(vec![9, 9, 1, 0, 2, 0]) };
        let d = tensor_data(&t, &file).unwrap();
        assert_eq!(decode(&d).unwrap(), [1.0, 2.0]);
        t.external_data.push(entry("length", "8"));
        assert!(tensor_data(&t, &file).unwrap_err().contains("too few"));
        let e = tensor_data(&t, &none).unwrap_err();
        assert!(e.contains("missing external data 'w.bin'"), "{e}");
    }
}
