//! The coordinator's settings, from four places, the first that sets a
//! field winning: a flag, its `ADJOINT_*` environment variable, the TOML
//! config file (`--config`, keys named as the flags with `_` for `-`), and
//! the built-in default. `--print-config` shows the result.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! data_dir = "/data"
//! store = "/data/store"          # default: DATA_DIR/store
//! heartbeat_ms = 1000
//! metrics_listen = "0.0.0.0:9464"
//! log_format = "json"            # or "text"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adjoint_telemetry::LogFormat;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Where the coordinator listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Settings as a file (or the flags) give them: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: Option<String>,
}

impl ServerFile {
    /// Reads a config file; an unknown key or a bad value names the file.
    pub fn read(path: &Path) -> anyhow::Result<ServerFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// These settings, with `under`'s filling the fields they leave unset.
    pub fn or(self, under: ServerFile) -> ServerFile {
        ServerFile {
            listen: self.listen.or(under.listen),
            data_dir: self.data_dir.or(under.data_dir),
            store: self.store.or(under.store),
            heartbeat_ms: self.heartbeat_ms.or(under.heartbeat_ms),
            metrics_listen: self.metrics_listen.or(under.metrics_listen),
            log_format: self.log_format.or(under.log_format),
        }
    }
}

/// The settings in effect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub heartbeat_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: String,
}

impl ServerSettings {
    /// Fills defaults and checks what has none.
    pub fn resolve(s: ServerFile) -> anyhow::Result<ServerSettings> {
        let Some(data_dir) = s.data_dir else {
            bail!(
                "no data folder: give --data-dir, ADJOINT_DATA_DIR or data_dir in the config file"
            );
        };
        let heartbeat_ms = s.heartbeat_ms.unwrap_or(1000);
        if heartbeat_ms == 0 {
            bail!("heartbeat_ms must be at least 1");
        }
        let log_format = s.log_format.unwrap_or_else(|| "text".into());
        log_format
            .parse::<LogFormat>()
            .map_err(anyhow::Error::msg)?;
        Ok(ServerSettings {
            listen: s
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address")),
            data_dir,
            store: s.store,
            heartbeat_ms,
            metrics_listen: s.metrics_listen,
            log_format,
        })
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.parse().unwrap_or_default()
    }

    /// As TOML, as `--print-config` shows it (and a config file takes it).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn config(&self) -> crate::Config {
        crate::Config {
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            metrics_listen: self.metrics_listen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: ServerFile =
            toml::from_str("data_dir = \"/data\"\nheartbeat_ms = 250\nlog_format = \"json\"")
                .unwrap();
        let flags = ServerFile {
            heartbeat_ms: Some(500),
            ..ServerFile::default()
        };
        let s = ServerSettings::resolve(flags.or(file)).unwrap();
        assert_eq!(s.heartbeat_ms, 500);
        assert_eq!(s.data_dir, PathBuf::from("/data"));
        assert_eq!(s.log_format(), LogFormat::Json);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        // What --print-config prints reads back as the same settings.
        let again: ServerFile = toml::from_str(&s.to_toml()).unwrap();
        assert_eq!(ServerSettings::resolve(again).unwrap(), s);
    }

    #[test]
    fn bad_files_and_missing_fields_are_named() {
        let err = toml::from_str::<ServerFile>("listen = \"x\"\nlisten_port = 3").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = toml::from_str::<ServerFile>("data_dir = \"/d\"\nport = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
        let err = ServerSettings::resolve(ServerFile::default()).unwrap_err();
        assert!(err.to_string().contains("--data-dir"), "{err}");
        let bad = ServerFile {
            data_dir: Some("/d".into()),
            log_format: Some("xml".into()),
            ..ServerFile::default()
        };
        assert!(
            ServerSettings::resolve(bad)
                .unwrap_err()
                .to_string()
                .contains("xml")
        );
    }
}
