//! Replays every saved fuzz input through its target's entry
//! (`adjoint_tests::fuzz_entry`) on stable: the seed corpus
//! `fuzz/corpus/<target>/` must not panic, and each input of
//! `fuzz/regressions/<target>/` (once a crash `scripts/fuzz.sh` found) must
//! not panic and must be rejected with an error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use adjoint_tests::fuzz_entry::{TARGETS, entry};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The target folders of `dir` (`fuzz/corpus` or `fuzz/regressions`), each
/// of which must name a target.
fn target_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    for (name, path) in &dirs {
        assert!(
            entry(name).is_some(),
            "{} is not a fuzz target's folder (targets: {:?})",
            path.display(),
            TARGETS.map(|(n, _)| n)
        );
    }
    dirs
}

/// Runs every file of `dir` through target `target`; returns how many were
/// accepted. Failures (panics, and accepted inputs when `must_reject`) are
/// collected and reported together, naming the files.
fn replay(target: &str, dir: &Path, must_reject: bool) -> usize {
    let run = entry(target).unwrap();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for file in files(dir) {
        let data = std::fs::read(&file).unwrap();
        match catch_unwind(AssertUnwindSafe(|| run(&data))) {
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{}: panicked: {message}", file.display()));
            }
            Ok(Ok(())) if must_reject => failures.push(format!(
                "{}: accepted, but a regression input must be rejected \
                 (move it to fuzz/corpus/{target}/ if it is valid now)",
                file.display()
            )),
            Ok(Ok(())) => {
                println!("{}: accepted", file.display());
                accepted += 1;
            }
            Ok(Err(e)) => println!("{}: rejected: {e:#}", file.display()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    accepted
}

fn corpus(target: &str) {
    let dir = fuzz_dir().join("corpus").join(target);
    assert!(
        !files(&dir).is_empty(),
        "{} has no seed inputs",
        dir.display()
    );
    let accepted = replay(target, &dir, false);
    // The seeds include valid inputs, so the target reaches past parsing.
    assert!(accepted > 0, "no seed of {target} is accepted");
}

#[test]
fn corpus_graph_proto() {
    corpus("graph_proto");
}

#[test]
fn corpus_graph_json() {
    corpus("graph_json");
}

#[test]
fn corpus_onnx_import() {
    corpus("onnx_import");
}

#[test]
fn corpus_job_spec() {
    corpus("job_spec");
}

#[test]
fn corpus_folders_are_targets() {
    let dirs = target_dirs(&fuzz_dir().join("corpus"));
    assert_eq!(dirs.len(), TARGETS.len(), "one corpus folder per target");
}

#[test]
fn regressions_are_rejected() {
    for (target, dir) in target_dirs(&fuzz_dir().join("regressions")) {
        replay(&target, &dir, true);
    }
}

/// The valid seeds are accepted: the entries reach past parsing, and
/// documented inputs load (`full.toml` is client/src/spec.rs's example,
/// whose `checkpoint = "budget:1GiB"` normalize once rejected).
#[test]
fn valid_seeds_are_accepted() {
    let valid = [
        ("graph_proto", "mlp.pb"),
        ("graph_json", "mlp.json"),
        ("graph_json", "tensor-base64.json"),
        ("graph_json", "infinite-fill.json"),
        ("onnx_import", "mlp.onnx"),
        ("onnx_import", "transformer.onnx"),
        ("onnx_import", "matmul.onnx"),
        ("job_spec", "full.toml"),
        ("job_spec", "minimal.toml"),
        ("job_spec", "blob-spec.bin"),
        ("job_spec", "inline-graph-spec.bin"),
    ];
    for (target, name) in valid {
        let path = fuzz_dir().join("corpus").join(target).join(name);
        let data = std::fs::read(&path).unwrap();
        if let Err(e) = entry(target).unwrap()(&data) {
            panic!("{}: rejected: {e:#}", path.display());
        }
    }
}
