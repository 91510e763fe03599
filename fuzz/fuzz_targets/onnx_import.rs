//! `onnx_import`: see `adjoint_tests::fuzz_entry::onnx_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Rejected inputs are fine; only a panic (or a crash, timeout or OOM)
    // is a finding.
    let _ = adjoint_tests::fuzz_entry::onnx_import(data);
});
