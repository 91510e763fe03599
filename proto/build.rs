//! Compiles `adjoint/**/*.proto` with protox (pure Rust, no `protoc` needed),
//! then generates prost message types and pbjson proto3-JSON serde impls.
//! With the `services` feature, tonic client and server code for the gRPC
//! services is generated into the same `adjoint.v1.rs` (tonic-prost-build's
//! service generator plugged into the one prost-build run), so the message
//! types are identical with and without the feature.
//!
//! `onnx/onnx.proto` (the subset of ONNX's model format that the importer
//! in `adjoint-graph` reads) is compiled in a run of its own into
//! `onnx.rs`: prost types only, no pbjson, and outside
//! `file_descriptor_set.bin`, so the `adjoint.v1` outputs do not depend on
//! it.

use std::env;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

/// Directory (relative to the crate root) holding the `.proto` tree.
const PROTO_ROOT: &str = "adjoint";
/// The files to compile, relative to the crate root (the include path).
const PROTOS: &[&str] = &[
    "adjoint/v1/graph.proto",
    "adjoint/v1/job.proto",
    "adjoint/v1/coordinator.proto",
    "adjoint/v1/worker.proto",
];
/// Proto packages to generate code for.
const PACKAGES: &[&str] = &["adjoint.v1"];
/// Directory (relative to the crate root) holding the ONNX subset.
const ONNX_ROOT: &str = "onnx";
/// The ONNX subset, relative to the crate root (the include path).
const ONNX_PROTO: &str = "onnx/onnx.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed={ONNX_ROOT}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    let descriptors = compiler.file_descriptor_set();
    fs::write(out_dir.join("file_descriptor_set.bin"), &descriptor_bytes)?;

    let mut config = prost_build::Config::new();
    config
        .out_dir(&out_dir)
        // BTreeMap maps make the binary encoding deterministic.
        .btree_map(["."]);
    // Cargo sets this for build scripts of a crate built with the feature.
    if env::var_os("CARGO_FEATURE_SERVICES").is_some() {
        add_service_generator(&mut config);
    }
    config.compile_fds(descriptors.clone())?;

    pbjson_build::Builder::new()
        .out_dir(&out_dir)
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .build(&[".adjoint"])?;

    for package in PACKAGES {
        patch_non_finite_floats(&out_dir.join(format!("{package}.serde.rs")), &descriptors)?;
    }

    compile_onnx(&out_dir)?;
    Ok(())
}

/// Generates `onnx.rs` (prost message types of package `onnx`) from the
/// ONNX subset, with the schema's comments as docs.
fn compile_onnx(out_dir: &Path) -> Result<(), Box<dyn Error>> {
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_source_info(true);
    compiler.open_files([ONNX_PROTO])?;
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Plugs tonic's client and server generator into the prost-build run.
///
/// The clients get no `connect(dst)` constructor (`build_transport(false)`):
/// it would clash with the `WorkerControl.Connect` rpc's own `connect`
/// method. Build a client from a channel instead:
/// `WorkerControlClient::new(Endpoint::from_shared(url)?.connect().await?)`.
#[cfg(feature = "services")]
fn add_service_generator(config: &mut prost_build::Config) {
    let generator = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .service_generator();
    config.service_generator(generator);
}

#[cfg(not(feature = "services"))]
fn add_service_generator(_config: &mut prost_build::Config) {}

/// pbjson hands `f64`/`f32` fields straight to the serializer, and serde_json
/// writes NaN and ±infinity as `null`, which proto3 JSON forbids (it wants the
/// strings "NaN", "Infinity" and "-Infinity"; see influxdata/pbjson#106).
/// Deserializing already accepts those strings. This wraps the value of every
/// `double`/`float` field (singular, repeated, oneof member or map value) in
/// `crate::proto_json::Float`, whose `Serialize` writes them correctly.
fn patch_non_finite_floats(
    path: &Path,
    descriptors: &FileDescriptorSet,
) -> Result<(), Box<dyn Error>> {
    let mut code = fs::read_to_string(path)?;
    let mut messages = Vec::new();
    for file in &descriptors.file {
        let package = file.package();
        if !PACKAGES.contains(&package) || !path.ends_with(format!("{package}.serde.rs")) {
            continue;
        }
        for message in &file.message_type {
            collect_messages(package, message, &mut messages);
        }
    }

    for (full_name, message) in &messages {
        let json_names: Vec<&str> = message
            .field
            .iter()
            .filter(|field| is_float_field(field, full_name, message))
            .map(|field| field.json_name())
            .collect();
        if json_names.is_empty() {
            continue;
        }

        // The Serialize impl of this message runs from its `serialize_struct`
        // call to the following `struct_ser.end()`.
        let start_marker = format!("serializer.serialize_struct(\"{full_name}\", len)?;");
        let start = code
            .find(&start_marker)
            .ok_or_else(|| format!("no Serialize impl for {full_name} in {}", path.display()))?;
        let len = code[start..]
            .find("struct_ser.end()")
            .ok_or_else(|| format!("unterminated Serialize impl for {full_name}"))?;
        let mut body = code[start..start + len].to_owned();

        for json_name in json_names {
            let call = format!("struct_ser.serialize_field(\"{json_name}\", ");
            let mut found = body.match_indices(&call).map(|(at, _)| at);
            let (Some(at), None) = (found.next(), found.next()) else {
                return Err(format!(
                    "expected exactly one serialize_field(\"{json_name}\") in {full_name}'s impl"
                )
                .into());
            };
            let arg_start = at + call.len();
            let arg_len = body[arg_start..]
                .find(")?;")
                .ok_or_else(|| format!("cannot parse serialize_field(\"{json_name}\")"))?;
            let arg = body[arg_start..arg_start + arg_len].to_owned();
            body.replace_range(
                arg_start..arg_start + arg_len,
                &format!("&crate::proto_json::Float({arg})"),
            );
        }
        code.replace_range(start..start + len, &body);
    }

    fs::write(path, code)?;
    Ok(())
}

/// Collects every message (nested ones included, map entries excluded) by
/// full proto name.
fn collect_messages<'a>(
    prefix: &str,
    message: &'a DescriptorProto,
    out: &mut Vec<(String, &'a DescriptorProto)>,
) {
    let full_name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        collect_messages(&full_name, nested, out);
    }
    let is_map_entry = message.options.as_ref().is_some_and(|o| o.map_entry());
    if !is_map_entry {
        out.push((full_name, message));
    }
}

/// Whether a field of `message` (full name `message_name`) holds
/// `double`/`float` values, directly or as the values of a map.
fn is_float_field(
    field: &FieldDescriptorProto,
    message_name: &str,
    message: &DescriptorProto,
) -> bool {
    match field.r#type() {
        Type::Double | Type::Float => true,
        // A map field is a repeated field of a nested `FooEntry` message
        // marked map_entry, whose field 2 is the value.
        Type::Message if field.label() == Label::Repeated => {
            let entry_name = field
                .type_name()
                .strip_prefix('.')
                .and_then(|name| name.strip_prefix(message_name))
                .and_then(|name| name.strip_prefix('.'));
            message
                .nested_type
                .iter()
                .filter(|nested| Some(nested.name()) == entry_name)
                .filter(|nested| nested.options.as_ref().is_some_and(|o| o.map_entry()))
                .flat_map(|entry| &entry.field)
                .any(|value| {
                    value.number() == 2 && matches!(value.r#type(), Type::Double | Type::Float)
                })
        }
        _ => false,
    }
}
