//! Every `.cu` file of `kernels/cuda/` compiles to PTX through the NVRTC
//! path the CUDA backend uses at start-up (`cuda::nvrtc::compile`), and the
//! PTX defines exactly the kernels the backend launches.
//!
//! NVRTC needs no GPU: CI installs it from PyPI (`scripts/nvrtc-env.sh`).
//! Where `libnvrtc` cannot be loaded the tests print why and pass.
#![cfg(feature = "cuda")]

use std::collections::BTreeSet;
use std::sync::Arc;

use adjoint_kernels::cuda::kernels::Kernel;
use adjoint_kernels::cuda::nvrtc;

/// NVRTC's default (virtual) architecture, and the real one of the H100
/// and H200 the GPU machines have (what the backend asks for there).
const ARCHES: [Option<&str>; 2] = [None, Some("sm_90")];

fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc::available() {
        Ok(()) => true,
        Err(why) => {
            println!(
                "{test}: skipped: {why} (scripts/nvrtc-env.sh installs NVRTC and prints the LD_LIBRARY_PATH to set)"
            );
            false
        }
    }
}

#[test]
fn every_source_compiles_and_defines_exactly_the_launched_kernels() {
    if !nvrtc_or_skip("every_source_compiles_and_defines_exactly_the_launched_kernels") {
        return;
    }
    for arch in ARCHES {
        let compiled = nvrtc::compile_all(arch).unwrap_or_else(|e| panic!("{arch:?}: {e}"));
        assert_eq!(compiled.len(), nvrtc::SOURCES.len());
        for (src, c) in &compiled {
            let defined: BTreeSet<&str> = c.entries.iter().map(String::as_str).collect();
            let launched: BTreeSet<&str> = Kernel::ALL
                .iter()
                .filter(|k| k.file() == src.name)
                .map(|k| k.name())
                .collect();
            assert_eq!(
                defined, launched,
                "{}.cu ({arch:?}): PTX entries vs the kernels the backend names",
                src.name
            );
            assert!(c.ptx.contains(".target"), "{}: not PTX", src.name);
            if arch.is_some_and(|a| a.starts_with("sm_")) {
                let cubin = c.cubin.as_ref().expect("a CUBIN for a real architecture");
                assert!(
                    cubin.starts_with(b"\x7fELF"),
                    "{}: CUBIN is not ELF",
                    src.name
                );
            }
        }
        let total: usize = compiled.iter().map(|(_, c)| c.entries.len()).sum();
        assert_eq!(total, Kernel::ALL.len());
        println!(
            "compiled {} sources, {total} kernels, for {}",
            compiled.len(),
            arch.unwrap_or("nvrtc's default architecture")
        );
    }
}

#[test]
fn compilation_is_cached_per_architecture_and_source() {
    if !nvrtc_or_skip("compilation_is_cached_per_architecture_and_source") {
        return;
    }
    let src = nvrtc::source("optim").expect("optim.cu");
    let a = nvrtc::compile(src, Some("sm_90")).unwrap();
    let b = nvrtc::compile(src, Some("sm_90")).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the second compile came from the cache"
    );
    let c = nvrtc::compile(src, Some("compute_80")).unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "another architecture compiles anew");
    assert_eq!(a.hash, c.hash);
    assert!(c.ptx.contains(".target sm_80"), "target of compute_80");
    assert!(c.cubin.is_none(), "a virtual architecture gives PTX only");
}

#[test]
fn a_broken_source_reports_nvrtcs_log() {
    if !nvrtc_or_skip("a_broken_source_reports_nvrtcs_log") {
        return;
    }
    static BROKEN: nvrtc::Source = nvrtc::Source {
        name: "broken",
        text: "#include \"common.cuh\"\nextern \"C\" __global__ void broken_f32(float* y) { y[0] = undefined_name; }\n",
    };
    let err = nvrtc::compile(&BROKEN, None).unwrap_err().to_string();
    assert!(err.contains("broken.cu"), "{err}");
    assert!(err.contains("undefined_name"), "{err}");
}
