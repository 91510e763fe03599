//! `adjoint inspect`: an ONNX model described for a person: opset,
//! producer, inputs and outputs, parameters, the ops it uses and whether
//! adjoint imports them, and the memory a worker needs to train it.

// The importer's external-data callback returns the graph crate's error,
// large by design (it names node, op and provenance).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use adjoint_client::onnx_file::{self, OnnxOptions};
use adjoint_client::spec::optimizer_spec;
use adjoint_graph::checkpoint::format_bytes;
use adjoint_graph::onnx::{ImportOptions, import};
use adjoint_proto::onnx::tensor_proto::DataType;
use adjoint_proto::onnx::tensor_shape_proto::dimension::Value as DimValue;
use adjoint_proto::onnx::type_proto::Value as TypeValue;
use adjoint_proto::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto, tensor_shape_proto, type_proto,
};
use adjoint_proto::v1::JobSpec;
use anyhow::{Context, Result, bail};
use clap::Args;
use prost::Message;

/// Describe an ONNX model: opset, producer, inputs and outputs, parameters,
/// the ops it uses (and whether adjoint supports them), and the memory a
/// worker needs to train it at a batch size.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model (external data files next to it).
    model: PathBuf,
    /// Samples per worker for the memory estimate (default: the batch the
    /// model fixes).
    #[arg(long)]
    batch: Option<usize>,
    /// The loss for the estimate (default: cross_entropy, else mse).
    #[arg(long)]
    loss: Option<String>,
    /// The output the loss reads (default: the only output).
    #[arg(long)]
    loss_output: Option<String>,
    /// The label input's name (default `labels`).
    #[arg(long)]
    label: Option<String>,
    /// Initializers kept frozen (`*` globs; repeatable).
    #[arg(long)]
    freeze: Vec<String>,
    /// The optimizer whose state the estimate counts.
    #[arg(long, default_value = "sgd:lr=0.01")]
    optimizer: String,
}

pub fn run(args: InspectArgs) -> Result<()> {
    if !onnx_file::is_onnx(&args.model) {
        bail!(
            "{} is not an ONNX model (`.onnx`); `adjoint check` describes native graphs",
            args.model.display()
        );
    }
    let path = &args.model;
    let bytes = onnx_file::read_inlined(path)?;
    let model = ModelProto::decode(&bytes[..])
        .with_context(|| format!("invalid ONNX model {}", path.display()))?;
    let graph = model.graph.clone().unwrap_or_default();
    let opset = default_opset(&model.opset_import);

    println!("{}", path.display());
    let producer = format!("{} {}", model.producer_name(), model.producer_version());
    println!(
        "  producer    {}",
        if producer.trim().is_empty() {
            "-"
        } else {
            producer.trim()
        }
    );
    println!("  IR version  {}", model.ir_version());
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| {
            let domain = if o.domain().is_empty() {
                "ai.onnx"
            } else {
                o.domain()
            };
            format!("{domain} {}", o.version())
        })
        .collect();
    println!("  opset       {}", opsets.join(", "));
    if !graph.name().is_empty() {
        println!("  graph       {}", graph.name());
    }

    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name()))
        .collect();
    println!("\ninputs");
    print_values(&inputs);
    println!("\noutputs");
    print_values(&graph.output.iter().collect::<Vec<_>>());

    let opts = OnnxOptions {
        batch: args.batch,
        freeze: args.freeze.clone(),
        ..OnnxOptions::default()
    };
    let imported = onnx_file::load(path, &opts);

    // Parameters: as imported, or the initializers as the file has them.
    let mut total_elements = 0u64;
    let mut total_bytes = 0u64;
    match &imported {
        Ok(m) => {
            let g = &m.graph;
            let rows: Vec<[String; 4]> = g
                .params
                .iter()
                .map(|p| {
                    let shape = g.static_shape(p.value);
                    let dtype = g.ty(p.value).dtype;
                    let n = shape.iter().product::<usize>() as u64;
                    total_elements += n;
                    total_bytes += n * dtype.size_bytes() as u64;
                    [
                        g.name_of(p.value).to_owned(),
                        format!("{shape:?}"),
                        format!("{dtype:?}").to_lowercase(),
                        if p.trainable { "yes" } else { "frozen" }.to_owned(),
                    ]
                })
                .collect();
            println!("\nparameters ({})", rows.len());
            table(&["name", "shape", "dtype", "trainable"], &rows);
            if !g.state.is_empty() {
                let state: Vec<[String; 3]> = g
                    .state
                    .iter()
                    .map(|st| {
                        let shape = g.static_shape(st.value);
                        let role = if st.update.is_some() {
                            "updated in training"
                        } else {
                            "read only"
                        };
                        [
                            g.name_of(st.value).to_owned(),
                            format!("{shape:?}"),
                            role.to_owned(),
                        ]
                    })
                    .collect();
                println!(
                    "\nstate ({}: BatchNormalization running statistics)",
                    state.len()
                );
                table(&["name", "shape", "role"], &state);
            }
            let constants = graph
                .initializer
                .len()
                .saturating_sub(rows.len() + g.state.len());
            if constants > 0 {
                println!("  (+ {constants} initializer(s) used as constants or unused)");
            }
        }
        Err(_) => {
            let rows: Vec<[String; 4]> = graph
                .initializer
                .iter()
                .map(|t| {
                    let n = t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>();
                    let width = DataType::try_from(t.data_type()).map_or(0, element_bytes);
                    total_elements += n;
                    total_bytes += n * width;
                    [
                        t.name().to_owned(),
                        format!("{:?}", t.dims),
                        dtype_name(t.data_type()),
                        "?".to_owned(),
                    ]
                })
                .collect();
            println!("\ninitializers ({})", rows.len());
            table(&["name", "shape", "dtype", "trainable"], &rows);
        }
    }

    // The op histogram, each op checked against the importer.
    let import_error = imported.as_ref().err();
    let failing_op = import_error.and_then(failing_op);
    let mut histogram: BTreeMap<(String, String), usize> = BTreeMap::new();
    for n in &graph.node {
        *histogram
            .entry((n.domain().to_owned(), n.op_type().to_owned()))
            .or_default() += 1;
    }
    let mut unsupported = Vec::new();
    let rows: Vec<[String; 3]> = histogram
        .iter()
        .map(|((domain, op), count)| {
            let ok = failing_op.as_deref() != Some(op.as_str())
                && supported(domain, op, opset, &model.opset_import);
            let name = if domain.is_empty() || domain == "ai.onnx" {
                op.clone()
            } else {
                format!("{domain}.{op}")
            };
            if !ok {
                unsupported.push(name.clone());
            }
            [
                name,
                count.to_string(),
                if ok { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    println!("\nops ({} nodes)", graph.node.len());
    table(&["op", "count", "supported"], &rows);

    println!(
        "\ntotal parameters {total_elements} ({})",
        format_bytes(total_bytes as usize)
    );

    let m = match imported {
        Ok(m) => m,
        Err(e) => {
            if !unsupported.is_empty() {
                println!("unsupported ops: {}", unsupported.join(", "));
            }
            return Err(e.context(format!("{} cannot be trained as it is", path.display())));
        }
    };
    memory(&args, &m.graph)
}

/// The memory estimate, as `adjoint estimate` plans it.
fn memory(args: &InspectArgs, graph: &adjoint_graph::Graph) -> Result<()> {
    let fixed = graph
        .inputs
        .first()
        .and_then(|i| graph.ty(i.value).shape.dims().first().copied())
        .and_then(adjoint_graph::Dim::fixed);
    let Some(batch) = args.batch.or(fixed) else {
        println!("memory per worker: the batch is symbolic; pass --batch N for an estimate");
        return Ok(());
    };
    let kinds: Vec<String> = match &args.loss {
        Some(k) => vec![k.clone()],
        None => onnx_file::LOSSES.iter().map(|s| s.to_string()).collect(),
    };
    let mut last_error = None;
    for kind in kinds {
        let opts = OnnxOptions {
            batch: Some(batch),
            freeze: args.freeze.clone(),
            loss: Some(kind.clone()),
            loss_output: args.loss_output.clone(),
            label: args.label.clone(),
        };
        let m = match onnx_file::load(&args.model, &opts) {
            Ok(m) => m,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let loss = m.loss.clone().context("the loss that was asked for")?;
        let mut spec = JobSpec {
            workers: 1,
            batch_size: batch as u64,
            grad_accum: 1,
            steps: 1,
            expert_parallel: 1,
            optimizer: Some(optimizer_spec(&args.optimizer)?),
            checkpoint: "none".into(),
            nan_policy: "fail".into(),
            ..JobSpec::default()
        };
        let e = adjoint_server::plan::estimate(&m.graph, &mut spec, None)
            .context("planning a training step")?;
        println!(
            "\nmemory per worker at batch {batch} ({} on '{}' vs '{}', {}, no checkpointing)",
            loss.kind,
            loss.output,
            loss.label,
            spec.optimizer.as_ref().map_or("sgd", |o| o.name.as_str()),
        );
        let rows = [
            ("activations (planned arena peak)", e.arena_bytes),
            ("parameters", e.param_bytes),
            ("gradients", e.grad_bytes),
            ("optimizer state", e.optimizer_bytes),
            ("inputs", e.input_bytes),
            ("total", e.total_bytes),
        ];
        for (what, bytes) in rows {
            println!("  {what:<34} {}", format_bytes(bytes as usize));
        }
        let flops = e.flops_per_step as f64;
        let (value, unit) = if flops >= 1e9 {
            (flops / 1e9, "GFLOP")
        } else {
            (flops / 1e6, "MFLOP")
        };
        println!("  {:<34} {value:.3} {unit}", "FLOPs per step");
        return Ok(());
    }
    match last_error {
        Some(e) => println!("memory per worker: no loss could be added for an estimate: {e:#}"),
        None => println!("memory per worker: no estimate"),
    }
    Ok(())
}

/// The default domain's opset (0 when the model imports none).
fn default_opset(opsets: &[OperatorSetIdProto]) -> i64 {
    opsets
        .iter()
        .filter(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .max()
        .unwrap_or(0)
}

/// The op an import error says is unknown or unsupported, if it names one.
fn failing_op(e: &anyhow::Error) -> Option<String> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<adjoint_graph::Error>() {
            Some(adjoint_graph::Error::UnknownOp { op, .. }) => Some(op.clone()),
            Some(adjoint_graph::Error::Unsupported(m)) => {
                let rest = m.split_once("ONNX op '")?.1;
                Some(rest.split_once('\'')?.0.to_owned())
            }
            _ => None,
        })
}

/// Whether the importer has `op`: it imports a one-node model of it and
/// only an unknown-op or not-supported error says no (a node the probe
/// feeds wrongly still shows the op is in the table).
fn supported(domain: &str, op: &str, opset: i64, opsets: &[OperatorSetIdProto]) -> bool {
    let value = |name: &str| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: [2, 2]
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(DimValue::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = ModelProto {
        ir_version: Some(8),
        opset_import: if opsets.is_empty() {
            vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }]
        } else {
            opsets.to_vec()
        },
        graph: Some(GraphProto {
            name: Some("probe".into()),
            node: vec![NodeProto {
                input: vec!["x".into(), "x".into()],
                output: vec!["y".into()],
                op_type: Some(op.into()),
                domain: Some(domain.into()),
                ..Default::default()
            }],
            input: vec![value("x")],
            output: vec![ValueInfoProto {
                name: Some("y".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let no_files = |l: &str| -> adjoint_graph::Result<Vec<u8>> {
        Err(adjoint_graph::Error::Unsupported(format!("no file '{l}'")))
    };
    match import(&probe.encode_to_vec(), &ImportOptions::default(), &no_files) {
        Err(adjoint_graph::Error::UnknownOp { op: o, .. }) => o != op,
        Err(adjoint_graph::Error::Unsupported(m)) => {
            !(m.contains(&format!("'{op}'")) && m.contains("not supported")
                || !domain.is_empty() && domain != "ai.onnx" && m.contains("domain"))
        }
        _ => true,
    }
}

fn print_values(values: &[&ValueInfoProto]) {
    let rows: Vec<[String; 3]> = values
        .iter()
        .map(|v| {
            let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(TypeValue::TensorType(t)) => {
                    let dims: Vec<String> = t
                        .shape
                        .as_ref()
                        .map(|s| {
                            s.dim
                                .iter()
                                .map(|d| match &d.value {
                                    Some(DimValue::DimValue(n)) => n.to_string(),
                                    Some(DimValue::DimParam(p)) => p.clone(),
                                    None => "?".into(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let shape = if t.shape.is_some() {
                        format!("[{}]", dims.join(", "))
                    } else {
                        "unknown".into()
                    };
                    (dtype_name(t.elem_type()), shape)
                }
                None => ("?".into(), "unknown".into()),
            };
            [v.name().to_owned(), dtype, shape]
        })
        .collect();
    table(&["name", "dtype", "shape"], &rows);
}

/// `float32`, `int64`, ... for an ONNX element type number.
fn dtype_name(code: i32) -> String {
    match DataType::try_from(code) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(DataType::Float16) => "float16".into(),
        Ok(t) => t.as_str_name().to_lowercase(),
        Err(_) => format!("type {code}"),
    }
}

fn element_bytes(t: DataType) -> u64 {
    match t {
        DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64 => 8,
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Complex128 => 16,
        _ => 1,
    }
}

/// Left-aligned columns under a header.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    if rows.is_empty() {
        println!("  (none)");
        return;
    }
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
