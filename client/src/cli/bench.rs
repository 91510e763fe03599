//! `adjoint bench`: the reference workloads (WORKLOADS.md) on the CPU
//! engine, one JSON line each.

use std::time::Instant;

use adjoint_graph::checkpoint::Policy;
use adjoint_graph::precision::Precision;
use adjoint_graph::rng::Stream;
use adjoint_graph::{Graph, zoo};
use adjoint_kernels::{Backend, CpuBackend, alloc_count};
use adjoint_worker::executor::encode;
use adjoint_worker::{ExecOptions, Executor, OptimizerConfig, StepKey, Trainer};
use anyhow::{Context, Result, bail};
use clap::Args;

/// Time a reference workload: forward, forward+backward, and a full step
/// with the optimizer; print one JSON line.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// mlp, transformer, moe, chain or allreduce.
    workload: String,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// allreduce: MiB per worker.
    #[arg(long, default_value_t = 64)]
    mb: usize,
    /// allreduce: worker processes.
    #[arg(long, default_value_t = 2)]
    world: usize,
    /// allreduce worker processes only: this worker's rank.
    #[arg(long, hide = true)]
    rank: Option<usize>,
    /// allreduce worker processes only: every rank's address.
    #[arg(long, hide = true)]
    peers: Option<String>,
    /// Activation checkpointing of the training step: none, every:K, sqrt,
    /// selective or budget:BYTES.
    #[arg(long, default_value = "none")]
    checkpoint: String,
    /// moe: experts (default 16).
    #[arg(long)]
    experts: Option<usize>,
    /// moe: tokens per step (default 2048).
    #[arg(long)]
    tokens: Option<usize>,
    /// After timing, profile `steps` forward+backward runs and print where
    /// the time goes (per instruction kind, slowest instructions) to stderr.
    #[arg(long)]
    profile: bool,
    /// Where the step runs: cpu, or cuda / cuda:N (the CUDA backend; each
    /// timed step ends with a device synchronize; TF32 off).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision of the step: f32, or bf16 (matmuls in bfloat16, f32
    /// master weights; on the CPU bf16 is stored, not computed, so it is
    /// slower there).
    #[arg(long, default_value = "f32")]
    precision: String,
}

fn median_ms(mut f: impl FnMut() -> Result<()>, warmup: usize, steps: usize) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Random data for every input: normal floats, ints in `[0, classes)`.
fn batch_bytes(g: &Graph, classes: usize) -> Vec<Vec<u8>> {
    g.inputs
        .iter()
        .enumerate()
        .map(|(k, i)| {
            let n: usize = g.static_shape(i.value).iter().product();
            let s = Stream {
                seed: 42,
                step: 0,
                rank: 0,
                site: k as u64,
            };
            let elem = adjoint_worker::program::elem_type(g.ty(i.value).dtype)
                .expect("zoo inputs are f32 or i64");
            let data: Vec<f64> = if g.ty(i.value).dtype.is_float() {
                (0..n as u64).map(|e| s.normal(e)).collect()
            } else {
                (0..n as u64)
                    .map(|e| (s.uniform(e) * classes as f64).floor())
                    .collect()
            };
            encode(elem, &data)
        })
        .collect()
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.workload == "allreduce" {
        let (mb, world, iters, rank, peers) =
            (args.mb, args.world, args.steps, args.rank, args.peers);
        return super::bench_allreduce::run(super::bench_allreduce::Config {
            mb,
            world,
            iters,
            rank,
            peers,
        });
    }
    if let Some(t) = args.threads {
        CpuBackend::set_threads(t);
    }
    match args.device.parse::<adjoint_worker::agent::DeviceChoice>() {
        Ok(adjoint_worker::agent::DeviceChoice::Cpu) => {
            CpuBackend::in_context(|| measure(&args, &|| Ok(CpuBackend::new()), "cpu"))
        }
        Ok(adjoint_worker::agent::DeviceChoice::Cuda(n)) => cuda(&args, n),
        _ => bail!("--device '{}': use cpu or cuda:N", args.device),
    }
}

/// The workload on GPU `ordinal`.
#[cfg(feature = "cuda")]
fn cuda(args: &BenchArgs, ordinal: usize) -> Result<()> {
    use adjoint_kernels::cuda::CudaBackend;
    let open =
        || CudaBackend::new(ordinal).map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e}"));
    open()?;
    measure(args, &open, &format!("cuda:{ordinal}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &BenchArgs, _: usize) -> Result<()> {
    bail!("this adjoint was built without the cuda feature")
}

/// Builds the workload and times it on backends from `new` (on a thread
/// of the kernels' pool for the CPU).
fn measure<B: Backend>(args: &BenchArgs, new: &dyn Fn() -> Result<B>, device: &str) -> Result<()> {
    let Some(batch) = zoo::workload_batch(&args.workload) else {
        bail!(
            "unknown workload '{}': choose one of {}",
            args.workload,
            zoo::MODELS.join(", ")
        );
    };
    let (graph, batch) = match args.workload.as_str() {
        "moe" => {
            let mut cfg = zoo::MoeConfig::default();
            if let Some(e) = args.experts {
                cfg.layer.experts = e;
            }
            let tokens = args.tokens.unwrap_or(batch);
            cfg.tokens = Some(tokens);
            (zoo::moe(&cfg)?, tokens)
        }
        _ if args.experts.is_some() || args.tokens.is_some() => {
            bail!("--experts and --tokens apply to the moe workload only")
        }
        name => (zoo::by_name(name).context("zoo")??.bind_batch(batch), batch),
    };
    let (classes, optimizer) = match args.workload.as_str() {
        "mlp" | "moe" => (10, Some(OptimizerConfig::sgd(0.01))),
        "transformer" => (256, Some(OptimizerConfig::adamw(1e-3))),
        _ => (1, None),
    };
    let data = batch_bytes(&graph, classes);
    let feed: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let key = StepKey::default();

    let precision = Precision::parse(&args.precision).map_err(anyhow::Error::msg)?;
    let fwd_graph = adjoint_graph::precision::apply(&graph, precision)?;
    let mut fwd = Executor::new(new()?, fwd_graph, &[], ExecOptions::default())?;
    fwd.init_params(0)?;
    for (input, bytes) in graph.inputs.iter().zip(&feed) {
        fwd.write_bytes(input.value, bytes)?;
    }
    let fwd_ms = median_ms(
        || {
            fwd.run(key, &mut |_, _| {})?;
            Ok(fwd.backend.synchronize()?)
        },
        args.warmup,
        args.steps,
    )?;

    let opt = optimizer.unwrap_or(OptimizerConfig::sgd(0.0));
    // Heap bytes from here on: the setup's peak (graph transforms, f64
    // initial values, buffers), then the steady state of the steps (what
    // stays live from the setup plus any kernel scratch).
    let baseline = alloc_count::reset_peak();
    let policy: Policy = args.checkpoint.parse()?;
    let mut trainer = Trainer::with_precision(
        new()?,
        &graph,
        opt,
        ExecOptions::default(),
        0,
        &policy,
        precision,
    )?;
    trainer.step(&feed)?;
    let setup_peak = alloc_count::peak_bytes() - baseline;
    alloc_count::reset_peak();
    let fwdbwd_ms = median_ms(
        || {
            let exec = trainer.executor_mut();
            exec.run(key, &mut |_, _| {})?;
            Ok(exec.backend.synchronize()?)
        },
        args.warmup,
        args.steps,
    )?;
    let step_ms = match optimizer {
        Some(_) => median_ms(
            || {
                trainer.step(&feed)?;
                Ok(trainer.executor_mut().backend.synchronize()?)
            },
            args.warmup,
            args.steps,
        )?,
        None => fwdbwd_ms,
    };
    if args.profile {
        let exec = trainer.executor_mut();
        exec.start_profile();
        for _ in 0..args.steps {
            exec.run(key, &mut |_, _| {})?;
        }
        let secs = exec.take_profile();
        super::bench_profile::print(exec, &secs, args.steps);
    }
    let gemm_peak = gemm_peak_gflops(new()?, args.warmup, args.steps)?;
    let measured =
        alloc_count::installed().then(|| (alloc_count::peak_bytes() - baseline, setup_peak));
    let exec = trainer.executor();
    let (fwd_flops, joint_flops) = (graph.flops() as f64, exec.graph().flops() as f64);
    let line = serde_json::json!({
        "workload": args.workload,
        "impl": "adjoint",
        "device": device,
        "threads": (device == "cpu").then(CpuBackend::threads),
        "batch": batch,
        "experts": (args.workload == "moe").then(|| args.experts.unwrap_or(16)),
        "fwd_ms": round(fwd_ms),
        "fwdbwd_ms": round(fwdbwd_ms),
        "step_ms": round(step_ms),
        "checkpoint": policy.to_string(),
        "precision": precision.name(),
        "recompute_gflop": round(trainer.recompute_flops() as f64 / 1e9),
        "peak_bytes": exec.plan().arena_bytes,
        // Counted heap bytes at the peak of the timed steps (the arena,
        // parameter, gradient, input and optimizer buffers, the compiled
        // program and kernel scratch), and at the peak of the setup.
        "measured_peak_bytes": measured.map(|m| m.0),
        "setup_peak_bytes": measured.map(|m| m.1),
        "planned_total_bytes": exec.plan().arena_bytes + exec.param_bytes() + exec.plan().grad_bytes
            + exec.input_bytes() + exec.state_bytes() + if optimizer.is_some() { trainer.optimizer().state_bytes() } else { 0 },
        "fwd_peak_bytes": fwd.plan().arena_bytes,
        "param_bytes": exec.param_bytes(),
        "grad_bytes": exec.plan().grad_bytes,
        "optim_bytes": if optimizer.is_some() { trainer.optimizer().state_bytes() } else { 0 },
        "gflops": round(joint_flops / step_ms / 1e6),
        // The same run's 1024³ matmul, and the step's share of it.
        "gemm_peak_gflops": round(gemm_peak),
        "peak_fraction": round(joint_flops / step_ms / 1e6 / gemm_peak),
        "fwd_gflops": round(fwd_flops / fwd_ms / 1e6),
        // Backward alone, when the two timings leave it a positive time.
        "bwd_gflops": (fwdbwd_ms > fwd_ms).then(|| round((joint_flops - fwd_flops) / (fwdbwd_ms - fwd_ms) / 1e6)),
    });
    println!("{line}");
    Ok(())
}

/// GFLOP/s of a 1024³ f32 matmul on the backend's threads: the GEMM peak
/// a step's model FLOP/s is measured against (median of `steps`).
fn gemm_peak_gflops<B: Backend>(mut backend: B, warmup: usize, steps: usize) -> Result<f64> {
    const N: usize = 1024;
    let bytes = N * N * 4;
    let view = |buffer| adjoint_kernels::View {
        buffer,
        offset: 0,
        len: N * N,
        elem: adjoint_kernels::ElemType::F32,
    };
    let (a, b, c) = (
        view(backend.alloc(bytes)?),
        view(backend.alloc(bytes)?),
        view(backend.alloc(bytes)?),
    );
    backend.fill(a, 1.0)?;
    backend.fill(b, 0.5)?;
    let dims = adjoint_kernels::MatMulDims {
        m: N,
        n: N,
        k: N,
        trans_a: false,
        trans_b: false,
        batch: &[],
        a_batch_strides: &[],
        b_batch_strides: &[],
        c_batch_strides: &[],
    };
    let ms = median_ms(
        || {
            backend.matmul(a, b, c, &dims)?;
            Ok(backend.synchronize()?)
        },
        warmup,
        steps.max(5),
    )?;
    Ok(2.0 * (N * N * N) as f64 / ms / 1e6)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
