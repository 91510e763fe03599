//! The worker's settings, from four places, the first that sets a field
//! winning: a flag, its `ADJOINT_*` environment variable, the TOML config
//! file (`--config`, keys named as the flags with `_` for `-`), and the
//! built-in default. `--print-config` shows the result.
//!
//! ```toml
//! coordinator = "http://adjoint:50051"
//! store = "/data/store"
//! ring_listen = "0.0.0.0:29500"
//! ring_advertise = "worker-0.adjoint-workers:29500"
//! metrics_listen = "0.0.0.0:9464"
//! collective_timeout = 60
//! log_format = "json"
//! trace_steps_every = 100
//! worker_token_file = "/etc/adjoint/worker-token"   # or ADJOINT_WORKER_TOKEN
//! ca_file = "/etc/adjoint/tls/ca.crt"              # with an https:// coordinator
//! device = "auto"                                  # auto, cpu or cuda:N
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use adjoint_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

/// The coordinator a worker looks for when nothing says otherwise.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

/// Settings as a file (or the flags) give them: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    pub coordinator: Option<String>,
    pub store: Option<PathBuf>,
    pub name: Option<String>,
    pub ring_listen: Option<String>,
    pub ring_advertise: Option<String>,
    pub threads: Option<usize>,
    pub memory: Option<u64>,
    pub collective_timeout: Option<u64>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<String>,
    pub trace_steps_every: Option<u64>,
    pub worker_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub tls_domain: Option<String>,
    pub device: Option<String>,
}

impl WorkerFile {
    /// Reads a config file; an unknown key or a bad value names the file.
    pub fn read(path: &Path) -> Result<WorkerFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("in config file {}: {e}", path.display()))
    }

    /// These settings, with `under`'s filling the fields they leave unset.
    pub fn or(self, under: WorkerFile) -> WorkerFile {
        WorkerFile {
            coordinator: self.coordinator.or(under.coordinator),
            store: self.store.or(under.store),
            name: self.name.or(under.name),
            ring_listen: self.ring_listen.or(under.ring_listen),
            ring_advertise: self.ring_advertise.or(under.ring_advertise),
            threads: self.threads.or(under.threads),
            memory: self.memory.or(under.memory),
            collective_timeout: self.collective_timeout.or(under.collective_timeout),
            metrics_listen: self.metrics_listen.or(under.metrics_listen),
            log_format: self.log_format.or(under.log_format),
            trace_steps_every: self.trace_steps_every.or(under.trace_steps_every),
            worker_token_file: self.worker_token_file.or(under.worker_token_file),
            ca_file: self.ca_file.or(under.ca_file),
            tls_domain: self.tls_domain.or(under.tls_domain),
            device: self.device.or(under.device),
        }
    }
}

/// The settings in effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerSettings {
    pub coordinator: String,
    pub store: PathBuf,
    pub name: String,
    pub ring_listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    pub collective_timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: String,
    pub trace_steps_every: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_domain: Option<String>,
    /// `auto`, `cpu` or `cuda:N` ([`crate::agent::DeviceChoice`]).
    pub device: String,
}

impl WorkerSettings {
    /// Fills defaults and checks what has none.
    pub fn resolve(s: WorkerFile) -> Result<WorkerSettings, String> {
        let Some(store) = s.store else {
            return Err(
                "no store folder: give --store, ADJOINT_STORE or store in the config file".into(),
            );
        };
        let log_format = s.log_format.unwrap_or_else(|| "text".into());
        log_format.parse::<LogFormat>()?;
        let collective_timeout = s.collective_timeout.unwrap_or(60);
        if collective_timeout == 0 {
            return Err("collective_timeout must be at least 1 second".into());
        }
        if s.threads == Some(0) {
            return Err("threads must be at least 1".into());
        }
        let device: crate::agent::DeviceChoice = s.device.as_deref().unwrap_or("auto").parse()?;
        Ok(WorkerSettings {
            coordinator: s.coordinator.unwrap_or_else(|| DEFAULT_COORDINATOR.into()),
            store,
            name: s.name.unwrap_or_else(crate::agent::default_name),
            ring_listen: s.ring_listen.unwrap_or_else(|| "127.0.0.1:0".into()),
            ring_advertise: s.ring_advertise,
            threads: s.threads,
            memory: s.memory,
            collective_timeout,
            metrics_listen: s.metrics_listen,
            log_format,
            trace_steps_every: s.trace_steps_every.unwrap_or(100),
            worker_token_file: s.worker_token_file,
            ca_file: s.ca_file,
            tls_domain: s.tls_domain,
            device: device.to_string(),
        })
    }

    /// The worker token (ADJOINT_WORKER_TOKEN, else the token file) and
    /// the CA to trust. The token is never part of the settings shown.
    pub fn credentials(&self) -> Result<adjoint_proto::dial::Credentials, String> {
        adjoint_proto::dial::Credentials::load(
            std::env::var("ADJOINT_WORKER_TOKEN").ok(),
            self.worker_token_file.as_deref(),
            self.ca_file.as_deref(),
            self.tls_domain.clone(),
        )
    }

    /// The device asked for (checked by [`WorkerSettings::resolve`]).
    pub fn device_choice(&self) -> crate::agent::DeviceChoice {
        self.device.parse().unwrap_or_default()
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.parse().unwrap_or_default()
    }

    /// As TOML, as `--print-config` shows it (and a config file takes it).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: WorkerFile = toml::from_str(
            "store = \"/s\"\nthreads = 4\nmetrics_listen = \"0.0.0.0:9464\"\ntrace_steps_every = 7",
        )
        .unwrap();
        let flags = WorkerFile {
            threads: Some(2),
            name: Some("w0".into()),
            ..WorkerFile::default()
        };
        let s = WorkerSettings::resolve(flags.or(file)).unwrap();
        assert_eq!((s.threads, s.trace_steps_every), (Some(2), 7));
        assert_eq!(s.metrics_listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(s.coordinator, DEFAULT_COORDINATOR);
        assert_eq!(s.collective_timeout, 60);
        assert_eq!(s.device, "auto");
        let again: WorkerFile = toml::from_str(&s.to_toml()).unwrap();
        assert_eq!(WorkerSettings::resolve(again).unwrap(), s);
    }

    #[test]
    fn bad_files_and_missing_fields_are_named() {
        let err = toml::from_str::<WorkerFile>("store = \"/s\"\nthread = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field `thread`"), "{err}");
        let err = WorkerSettings::resolve(WorkerFile::default()).unwrap_err();
        assert!(err.contains("--store"), "{err}");
        let zero = WorkerFile {
            store: Some("/s".into()),
            collective_timeout: Some(0),
            ..WorkerFile::default()
        };
        assert!(
            WorkerSettings::resolve(zero)
                .unwrap_err()
                .contains("collective_timeout")
        );
        let tpu = WorkerFile {
            store: Some("/s".into()),
            device: Some("tpu".into()),
            ..WorkerFile::default()
        };
        let err = WorkerSettings::resolve(tpu).unwrap_err();
        assert!(err.contains("use auto, cpu or cuda:N"), "{err}");
        let gpu = WorkerFile {
            store: Some("/s".into()),
            device: Some("CUDA:1".into()),
            ..WorkerFile::default()
        };
        assert_eq!(WorkerSettings::resolve(gpu).unwrap().device, "cuda:1");
    }
}
