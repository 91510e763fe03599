//! Serialization of `double`/`float` fields in the proto3 JSON mapping.
//!
//! pbjson passes floats straight to the serializer, and serde_json writes NaN
//! and ±infinity as `null`. The build script wraps every float field of the
//! generated `Serialize` impls in [`Float`], which writes them as the strings
//! "NaN", "Infinity" and "-Infinity" that proto3 JSON requires (and that the
//! generated `Deserialize` impls already accept).

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

/// A borrowed float field value (scalar, repeated or map) to serialize.
#[derive(Debug)]
pub(crate) struct Float<'a, T: ?Sized>(pub(crate) &'a T);

/// `f64` and `f32`.
pub(crate) trait ProtoFloat: Copy + Serialize {
    fn non_finite_name(self) -> Option<&'static str>;
}

impl ProtoFloat for f64 {
    fn non_finite_name(self) -> Option<&'static str> {
        non_finite_name(self.is_nan(), self.is_infinite(), self.is_sign_negative())
    }
}

impl ProtoFloat for f32 {
    fn non_finite_name(self) -> Option<&'static str> {
        non_finite_name(self.is_nan(), self.is_infinite(), self.is_sign_negative())
    }
}

fn non_finite_name(nan: bool, infinite: bool, negative: bool) -> Option<&'static str> {
    match (nan, infinite, negative) {
        (true, _, _) => Some("NaN"),
        (false, true, false) => Some("Infinity"),
        (false, true, true) => Some("-Infinity"),
        (false, false, _) => None,
    }
}

impl<T: ProtoFloat> Serialize for Float<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.non_finite_name() {
            Some(name) => serializer.serialize_str(name),
            None => self.0.serialize(serializer),
        }
    }
}

impl<T: ProtoFloat> Serialize for Float<'_, Vec<T>> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Float))
    }
}

impl<K: Serialize, T: ProtoFloat> Serialize for Float<'_, BTreeMap<K, T>> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, Float(value))))
    }
}
