//! Which device a worker trains on: `--device auto|cpu|cuda:N`.
//!
//! [`DeviceChoice`] is what the flag says; [`Device::resolve`] settles it
//! once at start-up with the CUDA probe (`adjoint_kernels::cuda::probe`,
//! which never panics when `libcuda`, NVRTC or cuBLAS is missing):
//!
//! - `cpu`: the CPU, no probe.
//! - `auto`: the first GPU the probe finds, else the CPU with the log line
//!   "no CUDA device found: ...; using the CPU".
//! - `cuda` / `cuda:N`: GPU `N` (0 by default), or an error that says
//!   "no CUDA device found" and why: the worker does not start.
//!
//! A CUDA worker registers its GPU (kind "cuda", name, memory) so that the
//! coordinator sends it the jobs with `device = "gpu"` (or "cuda").

use std::fmt;
use std::str::FromStr;

use adjoint_proto::v1;

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU if there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// GPU ordinal `N` of `cuda:N`.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("device '{s}': use auto, cpu or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A GPU as the worker registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: u64,
    /// e.g. `sm_90`.
    pub arch: String,
}

/// The device a worker trains on, settled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(Gpu),
}

impl Device {
    /// Settles `choice` (see the module docs). `log` gets the line saying
    /// why `auto` fell back to the CPU.
    pub fn resolve(choice: DeviceChoice, log: &mut dyn FnMut(String)) -> Result<Device, String> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => match gpus() {
                Ok(gpus) if !gpus.is_empty() => Ok(Device::Cuda(gpus[0].clone())),
                Ok(_) => {
                    log("no CUDA device found; using the CPU".into());
                    Ok(Device::Cpu)
                }
                Err(e) => {
                    log(format!("{e}; using the CPU"));
                    Ok(Device::Cpu)
                }
            },
            DeviceChoice::Cuda(n) => {
                let gpus = gpus().map_err(|e| format!("--device cuda:{n}: {e}"))?;
                let count = gpus.len();
                gpus.into_iter().find(|g| g.ordinal == n).map(Device::Cuda).ok_or_else(|| {
                    format!("--device cuda:{n}: no CUDA device found with ordinal {n} ({count} found)")
                })
            }
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The job device kind it runs: "cpu" or "gpu".
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "gpu",
        }
    }

    /// What `Register.devices` reports: the GPU, or nothing.
    pub fn registered(&self) -> Vec<v1::Device> {
        match self {
            Device::Cpu => Vec::new(),
            Device::Cuda(g) => vec![v1::Device {
                kind: "cuda".into(),
                name: g.name.clone(),
                memory_bytes: g.memory_bytes,
            }],
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(g) => write!(
                f,
                "cuda:{} ({}, {} MiB, {})",
                g.ordinal,
                g.name,
                g.memory_bytes >> 20,
                g.arch
            ),
        }
    }
}

/// The GPUs the CUDA backend can run on; an error that starts "no CUDA
/// device found" when there are none. Never panics.
#[cfg(feature = "cuda")]
pub fn gpus() -> Result<Vec<Gpu>, String> {
    let found = adjoint_kernels::cuda::probe().map_err(|e| e.to_string())?;
    if found.is_empty() {
        return Err("no CUDA device found".into());
    }
    Ok(found
        .into_iter()
        .map(|d| Gpu {
            arch: d.arch(),
            ordinal: d.ordinal,
            name: d.name,
            memory_bytes: d.total_memory as u64,
        })
        .collect())
}

/// Without the `cuda` feature there is never a GPU.
#[cfg(not(feature = "cuda"))]
pub fn gpus() -> Result<Vec<Gpu>, String> {
    Err("no CUDA device found: this worker was built without the cuda feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
        }
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("auto, cpu or cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_registers_no_device_and_cuda_its_gpu() {
        assert!(Device::Cpu.registered().is_empty());
        let d = Device::Cuda(Gpu {
            ordinal: 0,
            name: "NVIDIA H100".into(),
            memory_bytes: 80 << 30,
            arch: "sm_90".into(),
        });
        let r = d.registered();
        assert_eq!((r[0].kind.as_str(), r[0].memory_bytes), ("cuda", 80 << 30));
        assert_eq!(d.kind(), "gpu");
    }

    /// Here (no GPU) `cuda:0` fails naming the reason and `auto` falls
    /// back to the CPU with a log line; on a GPU machine both pick it.
    #[test]
    fn without_a_gpu_cuda_fails_and_auto_uses_the_cpu() {
        let mut lines = Vec::new();
        let auto = Device::resolve(DeviceChoice::Auto, &mut |l| lines.push(l)).unwrap();
        match gpus() {
            Ok(found) => {
                eprintln!(
                    "a GPU is present ({}); checking that it is picked",
                    found[0].name
                );
                assert!(auto.is_cuda());
                assert!(
                    Device::resolve(DeviceChoice::Cuda(0), &mut |_| {})
                        .unwrap()
                        .is_cuda()
                );
            }
            Err(why) => {
                assert!(why.starts_with("no CUDA device found"), "{why}");
                assert_eq!(auto, Device::Cpu);
                assert!(lines[0].contains("no CUDA device found"), "{lines:?}");
                assert!(lines[0].ends_with("; using the CPU"), "{lines:?}");
                let err = Device::resolve(DeviceChoice::Cuda(0), &mut |_| {}).unwrap_err();
                assert!(
                    err.starts_with("--device cuda:0: no CUDA device found"),
                    "{err}"
                );
            }
        }
    }
}
