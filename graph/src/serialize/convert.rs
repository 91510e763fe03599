//! Conversions of the small messages in both directions: dtypes, shapes,
//! attributes, initializers and input roles.
//!
//! The `*_from_proto` functions return a bare message; the caller wraps it
//! in an [`crate::Error`] that names the value, parameter or node attribute.

use adjoint_proto::v1;
use v1::attribute::Value as AttrValue;
use v1::dim::Kind as DimKind;
use v1::initializer::Kind as InitKind;

use crate::{
    Attr, DType, Dim, Distribution, FanMode, Init, InputRole, Shape, TensorData, TensorType,
};

/// The only dimension symbol: the batch dimension.
pub const BATCH_SYMBOL: &str = "batch";

/// The largest element count a shape may describe (fixed dimensions only),
/// so that element and byte counts fit in an `i64` everywhere.
const MAX_ELEMENTS: u64 = 1 << 53;

pub fn dtype_to_proto(d: DType) -> v1::DataType {
    match d {
        DType::F32 => v1::DataType::F32,
        DType::F64 => v1::DataType::F64,
        DType::BF16 => v1::DataType::Bf16,
        DType::F16 => v1::DataType::F16,
        DType::I32 => v1::DataType::I32,
        DType::I64 => v1::DataType::I64,
        DType::Bool => v1::DataType::Bool,
    }
}

/// A dtype from its raw enum number.
pub fn dtype_from_proto(raw: i32) -> Result<DType, String> {
    match v1::DataType::try_from(raw) {
        Ok(v1::DataType::F32) => Ok(DType::F32),
        Ok(v1::DataType::F64) => Ok(DType::F64),
        Ok(v1::DataType::Bf16) => Ok(DType::BF16),
        Ok(v1::DataType::F16) => Ok(DType::F16),
        Ok(v1::DataType::I32) => Ok(DType::I32),
        Ok(v1::DataType::I64) => Ok(DType::I64),
        Ok(v1::DataType::Bool) => Ok(DType::Bool),
        Ok(v1::DataType::Unspecified) => Err("dtype is unspecified (DATA_TYPE_UNSPECIFIED)".into()),
        Err(_) => Err(format!("unknown dtype enum value {raw}")),
    }
}

pub fn shape_to_proto(s: &Shape) -> v1::Shape {
    let dims = s
        .dims()
        .iter()
        .map(|d| v1::Dim {
            kind: Some(match d {
                Dim::Fixed(n) => DimKind::Size(*n as u64),
                Dim::Batch => DimKind::Symbol(BATCH_SYMBOL.to_owned()),
            }),
        })
        .collect();
    v1::Shape { dims }
}

/// A shape; an absent shape is a scalar.
pub fn shape_from_proto(s: Option<&v1::Shape>) -> Result<Shape, String> {
    let Some(s) = s else {
        return Ok(Shape::scalar());
    };
    let mut dims = Vec::with_capacity(s.dims.len());
    for (i, d) in s.dims.iter().enumerate() {
        let dim = match &d.kind {
            Some(DimKind::Size(n)) => match usize::try_from(*n) {
                Ok(n) => Dim::Fixed(n),
                Err(_) => return Err(format!("dimension {i} is too large ({n})")),
            },
            Some(DimKind::Symbol(sym)) if sym == BATCH_SYMBOL => Dim::Batch,
            Some(DimKind::Symbol(sym)) => {
                return Err(format!(
                    "dimension {i} has the unknown symbol '{sym}' (only \"{BATCH_SYMBOL}\" is understood)"
                ));
            }
            None => return Err(format!("dimension {i} has neither a size nor a symbol")),
        };
        dims.push(dim);
    }
    let shape = Shape(dims);
    check_size(&shape)?;
    Ok(shape)
}

/// Fails when the fixed dimensions of `shape` hold more than 2^53
/// elements, so that element and byte counts fit everywhere.
pub fn check_size(shape: &Shape) -> Result<(), String> {
    let elements = shape
        .dims()
        .iter()
        .filter_map(|d| d.fixed())
        .try_fold(1u64, |acc, d| acc.checked_mul(d as u64));
    match elements {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(format!("shape {shape} has more than 2^53 elements")),
    }
}

pub fn attr_to_proto(a: &Attr) -> v1::Attribute {
    let value = match a {
        Attr::Int(v) => AttrValue::Int(*v),
        Attr::Float(v) => AttrValue::Float(*v),
        Attr::Str(v) => AttrValue::String(v.clone()),
        Attr::Bool(v) => AttrValue::Bool(*v),
        Attr::Ints(v) => AttrValue::Ints(v1::IntList { values: v.clone() }),
        Attr::Floats(v) => AttrValue::Floats(v1::FloatList { values: v.clone() }),
        Attr::DType(d) => AttrValue::Dtype(dtype_to_proto(*d) as i32),
        Attr::Shape(s) => AttrValue::Shape(shape_to_proto(s)),
    };
    v1::Attribute { value: Some(value) }
}

pub fn attr_from_proto(a: &v1::Attribute) -> Result<Attr, String> {
    Ok(match &a.value {
        Some(AttrValue::Int(v)) => Attr::Int(*v),
        Some(AttrValue::Float(v)) => Attr::Float(*v),
        Some(AttrValue::String(v)) => Attr::Str(v.clone()),
        Some(AttrValue::Bool(v)) => Attr::Bool(*v),
        Some(AttrValue::Ints(v)) => Attr::Ints(v.values.clone()),
        Some(AttrValue::Floats(v)) => Attr::Floats(v.values.clone()),
        Some(AttrValue::Dtype(raw)) => Attr::DType(dtype_from_proto(*raw)?),
        Some(AttrValue::Shape(s)) => Attr::Shape(shape_from_proto(Some(s))?),
        None => {
            return Err("no value is set (expected one of int, float, string, bool, ints, floats, dtype, shape)".into());
        }
    })
}

pub fn role_to_proto(r: InputRole) -> v1::InputRole {
    match r {
        InputRole::Data => v1::InputRole::Data,
        InputRole::Label => v1::InputRole::Label,
        InputRole::Direction => v1::InputRole::Direction,
    }
}

pub fn role_from_proto(raw: i32) -> Result<InputRole, String> {
    match v1::InputRole::try_from(raw) {
        Ok(v1::InputRole::Data) => Ok(InputRole::Data),
        Ok(v1::InputRole::Label) => Ok(InputRole::Label),
        Ok(v1::InputRole::Direction) => Ok(InputRole::Direction),
        Ok(v1::InputRole::Unspecified) => {
            Err("input role is unspecified (INPUT_ROLE_UNSPECIFIED)".into())
        }
        Err(_) => Err(format!("unknown input role enum value {raw}")),
    }
}

fn fan_mode_to_proto(m: FanMode) -> v1::FanMode {
    match m {
        FanMode::In => v1::FanMode::FanIn,
        FanMode::Out => v1::FanMode::FanOut,
        FanMode::Avg => v1::FanMode::FanAvg,
    }
}

fn fan_mode_from_proto(raw: i32) -> Result<FanMode, String> {
    match v1::FanMode::try_from(raw) {
        Ok(v1::FanMode::FanIn) => Ok(FanMode::In),
        Ok(v1::FanMode::FanOut) => Ok(FanMode::Out),
        Ok(v1::FanMode::FanAvg) => Ok(FanMode::Avg),
        Ok(v1::FanMode::Unspecified) => {
            Err("fan_scaled: mode is unspecified (FAN_MODE_UNSPECIFIED)".into())
        }
        Err(_) => Err(format!("fan_scaled: unknown fan mode enum value {raw}")),
    }
}

fn distribution_to_proto(d: Distribution) -> v1::Distribution {
    match d {
        Distribution::Normal => v1::Distribution::Normal,
        Distribution::Uniform => v1::Distribution::Uniform,
    }
}

fn distribution_from_proto(raw: i32) -> Result<Distribution, String> {
    match v1::Distribution::try_from(raw) {
        Ok(v1::Distribution::Normal) => Ok(Distribution::Normal),
        Ok(v1::Distribution::Uniform) => Ok(Distribution::Uniform),
        Ok(v1::Distribution::Unspecified) => {
            Err("fan_scaled: distribution is unspecified (DISTRIBUTION_UNSPECIFIED)".into())
        }
        Err(_) => Err(format!("fan_scaled: unknown distribution enum value {raw}")),
    }
}

pub fn init_to_proto(i: &Init) -> v1::Initializer {
    let kind = match i {
        Init::Values(t) => InitKind::Values(v1::Tensor {
            dtype: dtype_to_proto(t.dtype) as i32,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            data: t.bytes.clone(),
        }),
        Init::Zeros => InitKind::Zeros(v1::Zeros {}),
        Init::Constant(value) => InitKind::Constant(v1::Constant { value: *value }),
        Init::Normal { mean, std } => InitKind::Normal(v1::Normal {
            mean: *mean,
            std: *std,
        }),
        Init::Uniform { low, high } => InitKind::Uniform(v1::Uniform {
            low: *low,
            high: *high,
        }),
        Init::FanScaled {
            mode,
            distribution,
            gain,
        } => InitKind::FanScaled(v1::FanScaled {
            mode: fan_mode_to_proto(*mode) as i32,
            distribution: distribution_to_proto(*distribution) as i32,
            gain: *gain,
        }),
    };
    v1::Initializer { kind: Some(kind) }
}

/// The initializer of a parameter or state variable of type `ty`, whose
/// shape the caller has checked to be static.
pub fn init_from_proto(i: Option<&v1::Initializer>, ty: &TensorType) -> Result<Init, String> {
    let Some(kind) = i.and_then(|i| i.kind.as_ref()) else {
        return Err(
            "has no initializer (set `init` to one of values, zeros, constant, normal, uniform, fan_scaled)"
                .into(),
        );
    };
    Ok(match kind {
        InitKind::Values(t) => Init::Values(tensor_from_proto(t, ty)?),
        InitKind::Zeros(_) => Init::Zeros,
        InitKind::Constant(c) => Init::Constant(c.value),
        InitKind::Normal(n) => Init::Normal {
            mean: n.mean,
            std: n.std,
        },
        InitKind::Uniform(u) => Init::Uniform {
            low: u.low,
            high: u.high,
        },
        InitKind::FanScaled(f) => Init::FanScaled {
            mode: fan_mode_from_proto(f.mode)?,
            distribution: distribution_from_proto(f.distribution)?,
            gain: f.gain,
        },
    })
}

/// Explicit initial values, checked against the value's dtype and shape and
/// for their byte length.
fn tensor_from_proto(t: &v1::Tensor, ty: &TensorType) -> Result<TensorData, String> {
    let dtype = dtype_from_proto(t.dtype).map_err(|m| format!("initial values: {m}"))?;
    if dtype != ty.dtype {
        return Err(format!(
            "initial values are {dtype}, but the value is {}",
            ty.dtype
        ));
    }
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("initial values have a dimension too large in {:?}", t.shape))?;
    if Some(&shape) != ty.shape.to_static().as_ref() {
        return Err(format!(
            "initial values have shape {}, expected {}",
            Shape::of(&shape),
            ty.shape
        ));
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d));
    if expected != Some(t.data.len()) {
        let expected =
            expected.map_or_else(|| "more than fit in memory".to_owned(), |n| n.to_string());
        return Err(format!(
            "initial values hold {} bytes, expected {expected} ({} {dtype} elements of shape {})",
            t.data.len(),
            ty.shape.fixed_product(),
            ty.shape
        ));
    }
    Ok(TensorData {
        dtype,
        shape,
        bytes: t.data.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attribute_kind_round_trips() {
        let attrs = [
            Attr::Int(-3),
            Attr::Float(f64::NEG_INFINITY),
            Attr::Str("tanh".into()),
            Attr::Bool(true),
            Attr::Ints(vec![1, 0, -1]),
            Attr::Floats(vec![0.5, -2.0]),
            Attr::Floats(vec![]),
            Attr::DType(DType::BF16),
            Attr::Shape(Shape(vec![Dim::Batch, Dim::Fixed(4)])),
            Attr::Shape(Shape::scalar()),
        ];
        for a in attrs {
            assert_eq!(attr_from_proto(&attr_to_proto(&a)), Ok(a));
        }
    }

    #[test]
    fn every_dtype_round_trips_and_unspecified_is_an_error() {
        for d in DType::ALL {
            assert_eq!(dtype_from_proto(dtype_to_proto(d) as i32), Ok(d));
        }
        assert!(dtype_from_proto(0).unwrap_err().contains("unspecified"));
        assert!(dtype_from_proto(99).unwrap_err().contains("99"));
    }

    #[test]
    fn shapes_reject_unknown_symbols_and_overflow() {
        let sym = |s: &str| v1::Dim {
            kind: Some(DimKind::Symbol(s.into())),
        };
        let size = |n: u64| v1::Dim {
            kind: Some(DimKind::Size(n)),
        };
        let bad = v1::Shape {
            dims: vec![size(2), sym("seq")],
        };
        let err = shape_from_proto(Some(&bad)).unwrap_err();
        assert!(
            err.contains("'seq'") && err.contains("dimension 1"),
            "{err}"
        );
        let huge = v1::Shape {
            dims: vec![size(u64::MAX), size(2)],
        };
        assert!(shape_from_proto(Some(&huge)).is_err());
        let empty = v1::Shape {
            dims: vec![v1::Dim { kind: None }],
        };
        assert!(shape_from_proto(Some(&empty)).is_err());
        assert_eq!(shape_from_proto(None), Ok(Shape::scalar()));
    }

    #[test]
    fn tensor_values_are_checked() {
        let ty = TensorType::new(DType::F32, Shape::of(&[2, 3]));
        let t = |dtype: v1::DataType, shape: Vec<u64>, len: usize| v1::Initializer {
            kind: Some(InitKind::Values(v1::Tensor {
                dtype: dtype as i32,
                shape,
                data: vec![0; len],
            })),
        };
        assert!(init_from_proto(Some(&t(v1::DataType::F32, vec![2, 3], 24)), &ty).is_ok());
        let e = init_from_proto(Some(&t(v1::DataType::F32, vec![2, 3], 23)), &ty).unwrap_err();
        assert!(e.contains("23 bytes") && e.contains("24"), "{e}");
        let e = init_from_proto(Some(&t(v1::DataType::F16, vec![2, 3], 12)), &ty).unwrap_err();
        assert!(e.contains("f16") && e.contains("f32"), "{e}");
        let e = init_from_proto(Some(&t(v1::DataType::F32, vec![3, 2], 24)), &ty).unwrap_err();
        assert!(e.contains("[3, 2]") && e.contains("[2, 3]"), "{e}");
        let e =
            init_from_proto(Some(&t(v1::DataType::F32, vec![u64::MAX, 2], 24)), &ty).unwrap_err();
        assert!(e.contains("shape"), "{e}");
        assert!(
            init_from_proto(None, &ty)
                .unwrap_err()
                .contains("no initializer")
        );
    }

    #[test]
    fn every_initializer_round_trips() {
        let ty = TensorType::new(DType::F32, Shape::of(&[2]));
        let inits = [
            Init::Values(crate::init::encode(DType::F32, &[2], &[1.0, -2.5])),
            Init::Zeros,
            Init::Constant(0.25),
            Init::Normal {
                mean: 0.0,
                std: 0.02,
            },
            Init::Uniform {
                low: -1.0,
                high: 1.0,
            },
            Init::FanScaled {
                mode: FanMode::Out,
                distribution: Distribution::Uniform,
                gain: 1.0,
            },
        ];
        for i in inits {
            assert_eq!(init_from_proto(Some(&init_to_proto(&i)), &ty), Ok(i));
        }
        let unspecified = v1::Initializer {
            kind: Some(InitKind::FanScaled(v1::FanScaled {
                mode: 0,
                distribution: 1,
                gain: 1.0,
            })),
        };
        assert!(
            init_from_proto(Some(&unspecified), &ty)
                .unwrap_err()
                .contains("mode")
        );
    }
}
