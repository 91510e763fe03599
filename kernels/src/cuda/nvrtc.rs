//! The kernel sources, embedded in the binary, and their compilation to
//! PTX by NVRTC.
//!
//! Each `.cu` file of `kernels/cuda/` is one module; [`assemble`] pastes
//! `common.cuh` in place of its `#include "common.cuh"` line (NVRTC has no
//! file system to include from). [`compile`] runs NVRTC once per (virtual
//! architecture, source hash) in the process and caches the PTX; the
//! backend loads it into each device's context once. `tests/cuda_nvrtc.rs`
//! compiles every file through this same function.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use std::ffi::{CStr, CString};

use cudarc::nvrtc::{result, sys};

use super::probe::{Library, NoCuda, guard};

/// One `.cu` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The file name without `.cu`, e.g. `elementwise`.
    pub name: &'static str,
    pub text: &'static str,
}

/// The shared header every source includes.
pub const COMMON: &str = include_str!("../../cuda/common.cuh");

const INCLUDE_LINE: &str = "#include \"common.cuh\"";

macro_rules! sources {
    ($($name:literal),* $(,)?) => {
        /// Every kernel source, one per op family.
        pub const SOURCES: &[Source] = &[
            $(Source { name: $name, text: include_str!(concat!("../../cuda/", $name, ".cu")) },)*
        ];
    };
}

sources!(
    "elementwise",
    "layout",
    "reduce",
    "nn",
    "loss",
    "index",
    "moe",
    "optim",
    "fused"
);

/// The source named `name`.
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}

/// The text NVRTC compiles: the source with `common.cuh` pasted in.
pub fn assemble(src: &Source) -> String {
    src.text.replacen(INCLUDE_LINE, COMMON, 1)
}

/// PTX of one source and the kernels (`.entry` names) it defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub ptx: String,
    /// Machine code, when compiled for a real architecture (`sm_XY`).
    pub cubin: Option<Vec<u8>>,
    pub entries: Vec<String>,
    /// The hash of the assembled source (FNV-1a), the cache key with the
    /// architecture.
    pub hash: u64,
}

/// Why a source did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Unavailable(NoCuda),
    #[error("nvrtc: {file}.cu does not compile ({status}):\n{log}")]
    Failed {
        file: &'static str,
        status: String,
        log: String,
    },
}

type Cache = Mutex<HashMap<(Option<String>, u64), Arc<Compiled>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Whether NVRTC loads here (it needs no GPU).
pub fn available() -> Result<(), NoCuda> {
    Library::Nvrtc.require()
}

/// Compiles `src` for `arch`, once per process: a virtual architecture
/// (`compute_90`: PTX only), a real one (`sm_90`: PTX and a CUBIN, which
/// the backend loads, so the driver need not JIT PTX that a newer NVRTC
/// wrote), or `None` for NVRTC's default (PTX only).
pub fn compile(src: &'static Source, arch: Option<&str>) -> Result<Arc<Compiled>, CompileError> {
    available().map_err(CompileError::Unavailable)?;
    let text = assemble(src);
    let hash = crate::rng::key_of(&text);
    let key = (arch.map(str::to_owned), hash);
    if let Some(hit) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    let mut options = vec!["--std=c++17".to_owned()];
    if let Some(arch) = arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    let (ptx, cubin) = guard("nvrtc", || run_nvrtc(src.name, &text, &options))
        .map_err(CompileError::Unavailable)??;
    let compiled = Arc::new(Compiled {
        entries: entries(&ptx),
        ptx,
        cubin,
        hash,
    });
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, compiled.clone());
    Ok(compiled)
}

/// One NVRTC program: create, compile, take the PTX (and the CUBIN when
/// compiled for a real architecture), destroy.
fn run_nvrtc(
    file: &'static str,
    text: &str,
    options: &[String],
) -> Result<(String, Option<Vec<u8>>), CompileError> {
    let fail = |status: String, log: String| CompileError::Failed { file, status, log };
    let src = CString::new(text).map_err(|_| fail("source holds a NUL".into(), String::new()))?;
    let name = CString::new(format!("{file}.cu")).unwrap_or_default();
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| fail(format!("{e}"), String::new()))?;
    // SAFETY: `prog` was just created and is destroyed once, below; `src`
    // and `name` outlive it; the buffers handed to NVRTC have the sizes
    // NVRTC reported.
    unsafe {
        let out = match result::compile_program(prog, options) {
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log =
                    CStr::from_bytes_until_nul(&log.iter().map(|&c| c as u8).collect::<Vec<_>>())
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_default();
                Err(fail(format!("{e}"), log))
            }
            Ok(()) => result::get_ptx(prog)
                .map_err(|e| fail(format!("{e}"), String::new()))
                .map(|ptx| {
                    let bytes: Vec<u8> = ptx
                        .iter()
                        .map(|&c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect();
                    (String::from_utf8_lossy(&bytes).into_owned(), cubin(prog))
                }),
        };
        let _ = result::destroy_program(prog);
        out
    }
}

/// The CUBIN of a compiled program, if it was compiled for a real
/// architecture.
///
/// # Safety
/// `prog` is a live, successfully compiled program.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Option<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: the caller's contract; `size` is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds the `size` bytes NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
        .result()
        .ok()?;
    Some(buf)
}

/// Every source compiled for `arch`, in [`SOURCES`] order (the files on
/// threads of their own: NVRTC programs are independent).
pub fn compile_all(
    arch: Option<&str>,
) -> Result<Vec<(&'static Source, Arc<Compiled>)>, CompileError> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> = SOURCES
            .iter()
            .map(|s| (s, scope.spawn(move || compile(s, arch))))
            .collect();
        jobs.into_iter()
            .map(|(s, job)| {
                let compiled = job.join().unwrap_or_else(|_| {
                    Err(CompileError::Unavailable(NoCuda::Driver(format!(
                        "nvrtc: compiling {}.cu panicked",
                        s.name
                    ))))
                })?;
                Ok((s, compiled))
            })
            .collect()
    })
}

/// The kernel names a PTX module defines (its `.entry` directives).
pub fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let rest = &line[line.find(".entry ")? + ".entry ".len()..];
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_include_the_common_header_once() {
        for s in SOURCES {
            assert_eq!(s.text.matches(INCLUDE_LINE).count(), 1, "{}", s.name);
            let text = assemble(s);
            assert!(!text.contains(INCLUDE_LINE), "{}", s.name);
            assert!(text.contains("ADJOINT_COMMON_CUH"), "{}", s.name);
        }
    }

    #[test]
    fn every_kernel_names_an_existing_source() {
        for k in super::super::kernels::Kernel::ALL {
            let src = source(k.file()).unwrap_or_else(|| panic!("{k:?}: no {}.cu", k.file()));
            assert!(
                src.text.contains(k.name()) || k.name().starts_with("cast_") || {
                    // Macro-made names: the op part appears in the macro call.
                    let op = k.name().rsplit_once('_').map_or(k.name(), |(op, _)| op);
                    src.text.contains(op)
                },
                "{k:?}"
            );
        }
    }

    #[test]
    fn entries_are_read_from_ptx() {
        let ptx = ".visible .entry add_f32(\n\t.param .u64 a\n)\n.visible .entry fill_u8(\n";
        assert_eq!(entries(ptx), ["add_f32", "fill_u8"]);
    }
}
