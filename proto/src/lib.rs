//! The wire schema of adjoint.
//!
//! This crate owns the `.proto` files under `proto/adjoint/` and the Rust code
//! generated from them at build time: [prost] message types for the binary
//! protobuf encoding and [pbjson] serde impls for the canonical proto3 JSON
//! mapping. Nothing here is hand-written except conversions, plus a small
//! serde shim that the build script splices into the pbjson output so that
//! NaN and ±infinity in `double`/`float` fields are written as proto3 JSON
//! requires ("NaN", "Infinity", "-Infinity") rather than `null`. The schema
//! itself is documented in `docs/graph-format.md`.
//!
//! Map fields are generated as [`BTreeMap`](std::collections::BTreeMap)s, so
//! encoding a message is deterministic. Enum-typed fields are stored as `i32`
//! in the prost structs; use e.g. [`v1::DataType::try_from`] to read them and
//! `as i32` (or the generated `set_*` helpers) to write them.
//!
//! The gRPC services of `adjoint.v1` (`Coordinator`, `WorkerControl`) are
//! generated only with the cargo feature `services`: then
//! `v1::coordinator_client`, `v1::coordinator_server`,
//! `v1::worker_control_client` and `v1::worker_control_server` exist
//! (tonic). Without it the crate links no gRPC stack, which is how
//! `adjoint-graph` uses it. [`dial`] (also `services`) connects to the
//! coordinator: TLS and the bearer token.
//!
//! [`onnx`] holds the prost types of the subset of ONNX's model format
//! (`proto/onnx/onnx.proto`, proto2) that `adjoint-graph`'s ONNX importer
//! decodes: binary protobuf only, no JSON.

/// Generated code for the protobuf package `adjoint.v1`.
pub mod adjoint {
    /// Protobuf package `adjoint.v1`.
    // Generated code: prost keeps oneof members inline (an `Assignment`
    // carries a whole `JobSpec`), which clippy flags.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/adjoint.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/adjoint.v1.serde.rs"));
    }
}

pub use adjoint::v1;

/// Protobuf package `onnx`: the messages of ONNX's `onnx.proto` that the
/// importer reads (`ModelProto`, `GraphProto`, `NodeProto`,
/// `AttributeProto`, `TensorProto`, `ValueInfoProto`, `TypeProto`,
/// `TensorShapeProto`, ...), with the official field numbers. The schema is
/// proto2, so optional scalar fields are `Option`s with accessors that give
/// the default (`node.op_type()`), and enum fields are raw `i32`s (use e.g.
/// [`onnx::tensor_proto::DataType::try_from`]). Fields it does not declare
/// are skipped when decoding.
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

mod proto_json;

#[cfg(feature = "services")]
pub mod dial;

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in
/// this crate (with source info), e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn non_finite_floats_of_the_job_messages_are_proto3_json_strings() {
        let metrics = v1::StepMetrics {
            loss: f64::NAN,
            step_ms: f64::INFINITY,
            eval_loss: Some(f64::NEG_INFINITY),
            ..v1::StepMetrics::default()
        };
        let json = serde_json::to_value(metrics).unwrap();
        assert_eq!(json["loss"], "NaN");
        assert_eq!(json["stepMs"], "Infinity");
        assert_eq!(json["evalLoss"], "-Infinity");
        let back: v1::StepMetrics = serde_json::from_value(json).unwrap();
        assert!(back.loss.is_nan() && back.step_ms == f64::INFINITY);

        let job = v1::Job {
            last_loss: f64::NAN,
            ..v1::Job::default()
        };
        assert_eq!(serde_json::to_value(job).unwrap()["lastLoss"], "NaN");
    }
}
