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

/// Generated code for the protobuf package `adjoint.v1`.
pub mod adjoint {
    /// Protobuf package `adjoint.v1`.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/adjoint.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/adjoint.v1.serde.rs"));
    }
}

pub use adjoint::v1;

mod proto_json;

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in
/// this crate (with source info), e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));
