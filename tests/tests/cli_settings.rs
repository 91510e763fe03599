//! The coordinator's and worker's settings through the real binary: a
//! flag beats its environment variable, which beats the config file, which
//! beats the default (`--print-config` shows the result); an unknown key
//! in the file is an error naming it; `--log-format json` writes one JSON
//! object per log line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use adjoint_client::local::binary;

fn adjoint() -> Command {
    Command::new(binary("adjoint"))
}

#[test]
fn flags_beat_env_beat_the_config_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        "store = \"/from-file\"\nthreads = 4\ncollective_timeout = 30\nring_listen = \"0.0.0.0:29500\"\n",
    )
    .unwrap();
    let out = adjoint()
        .args(["worker", "--config"])
        .arg(&file)
        .args(["--threads", "2", "--print-config"])
        .env("ADJOINT_COLLECTIVE_TIMEOUT", "9")
        .env("ADJOINT_THREADS", "3")
        .env_remove("ADJOINT_STORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["threads"].as_integer(), Some(2), "the flag wins");
    assert_eq!(
        printed["collective_timeout"].as_integer(),
        Some(9),
        "env beats the file"
    );
    assert_eq!(
        printed["store"].as_str(),
        Some("/from-file"),
        "the file beats no default"
    );
    assert_eq!(printed["ring_listen"].as_str(), Some("0.0.0.0:29500"));
    assert_eq!(
        printed["trace_steps_every"].as_integer(),
        Some(100),
        "the default"
    );

    std::fs::write(&file, "data_dir = \"/d\"\nlisten_addr = \"0.0.0.0:1\"\n").unwrap();
    let out = adjoint()
        .args(["server", "--config"])
        .arg(&file)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `listen_addr`"), "{err}");
    assert!(
        err.contains("worker.toml"),
        "the error names the file: {err}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = adjoint()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("adjoint-server listening on"), "{first}");
    server.kill().unwrap();
    let out = server.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
