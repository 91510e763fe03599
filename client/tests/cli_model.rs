//! The `adjoint model` and `adjoint check` commands, run as real processes:
//! determinism across processes and clear errors on bad files.

use std::path::Path;
use std::process::{Command, Output};

fn adjoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adjoint"))
        .args(args)
        .output()
        .expect("the adjoint binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = adjoint(args);
    assert!(
        out.status.success(),
        "adjoint {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hash_line(check_output: &str) -> String {
    let line = check_output.lines().next().unwrap();
    line.split("content hash ").nth(1).unwrap().to_owned()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[test]
fn models_and_their_gradients_serialise_identically_in_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["mlp", "transformer", "chain"] {
        for (ext, grad) in [("pb", false), ("json", false), ("pb", true)] {
            let a = path(dir.path(), &format!("{model}-{grad}-a.{ext}"));
            let b = path(dir.path(), &format!("{model}-{grad}-b.{ext}"));
            let mut args_a = vec!["model", model, "-o", a.as_str()];
            let mut args_b = vec!["model", model, "-o", b.as_str()];
            if grad {
                args_a.push("--grad");
                args_b.push("--grad");
            }
            ok(&args_a);
            ok(&args_b);
            let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert!(!bytes_a.is_empty());
            assert!(
                bytes_a == bytes_b,
                "{model} (grad: {grad}, {ext}) differs between processes"
            );
            let check_a = ok(&["check", a.as_str()]);
            let check_b = ok(&["check", b.as_str()]);
            assert_eq!(hash_line(&check_a), hash_line(&check_b));
        }
    }
}

#[test]
fn json_and_binary_forms_hold_the_same_graph() {
    let dir = tempfile::tempdir().unwrap();
    let pb = path(dir.path(), "t.pb");
    let json = path(dir.path(), "t.json");
    ok(&["model", "transformer", "-o", pb.as_str()]);
    ok(&["model", "transformer", "-o", json.as_str()]);
    let a = ok(&["check", pb.as_str()]);
    let b = ok(&["check", json.as_str()]);
    assert_eq!(a, b);
    assert!(a.contains("tokens"), "{a}");
    assert!(a.contains("i64[batch, 128]"), "{a}");
    assert!(a.contains("h.0.attn.qkv.weight"), "{a}");
    assert!(a.contains("(loss)"), "{a}");
}

#[test]
fn check_names_what_is_wrong_in_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bad.json");
    std::fs::write(
        &json,
        r#"{"name": "bad",
            "values": [{"name": "x", "dtype": "DATA_TYPE_F32",
                        "shape": {"dims": [{"size": "2"}]}}],
            "inputs": [{"value": "x", "role": "INPUT_ROLE_DATA"}],
            "nodes": [{"name": "mystery", "op": "Frobnicate", "inputs": ["x"], "outputs": ["y"]}],
            "outputs": ["y"]}"#,
    )
    .unwrap();
    let out = adjoint(&["check", json.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mystery") && err.contains("Frobnicate"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.pb");
    let full = path(dir.path(), "full.pb");
    ok(&["model", "mlp", "-o", full.as_str()]);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = adjoint(&["check", truncated.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated.pb"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = adjoint(&["model", "resnet", "-o", full.as_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mlp, transformer, chain"));
}
