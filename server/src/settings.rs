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
//! auth = "auto"                  # on | off | auto: on unless listening on loopback
//! tokens = "/etc/adjoint/tokens.toml"
//! tls_cert = "/etc/adjoint/tls/server.crt"
//! tls_key = "/etc/adjoint/tls/server.key"
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
    pub auth: Option<String>,
    pub tokens: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
            auth: self.auth.or(under.auth),
            tokens: self.tokens.or(under.tokens),
            tls_cert: self.tls_cert.or(under.tls_cert),
            tls_key: self.tls_key.or(under.tls_key),
        }
    }
}

/// Whether calls need bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    On,
    Off,
    /// On unless the server listens on a loopback address.
    Auto,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<AuthMode, String> {
        match s {
            "on" => Ok(AuthMode::On),
            "off" => Ok(AuthMode::Off),
            "auto" => Ok(AuthMode::Auto),
            other => Err(format!("auth must be on, off or auto, not '{other}'")),
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
    pub auth: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
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
        let auth = s.auth.unwrap_or_else(|| "auto".into());
        let mode = auth.parse::<AuthMode>().map_err(anyhow::Error::msg)?;
        let listen = s
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address"));
        let settings = ServerSettings {
            listen,
            data_dir,
            store: s.store,
            heartbeat_ms,
            metrics_listen: s.metrics_listen,
            log_format,
            auth,
            tokens: s.tokens,
            tls_cert: s.tls_cert,
            tls_key: s.tls_key,
        };
        if settings.tls_cert.is_some() != settings.tls_key.is_some() {
            bail!("TLS needs both --tls-cert and --tls-key");
        }
        if settings.auth_on() && settings.tokens.is_none() {
            let why = match mode {
                AuthMode::On => "auth is on".to_owned(),
                _ => format!("{listen} is not a loopback address, so bearer tokens are required"),
            };
            bail!(
                "{why}: give --tokens FILE (users' and the worker token), or --auth off to \
                 let anyone who reaches the port submit jobs and register workers"
            );
        }
        Ok(settings)
    }

    /// Whether calls need bearer tokens, `auto` resolved.
    pub fn auth_on(&self) -> bool {
        match self.auth.parse::<AuthMode>() {
            Ok(AuthMode::On) => true,
            Ok(AuthMode::Off) => false,
            _ => !self.listen.ip().is_loopback(),
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.parse().unwrap_or_default()
    }

    /// As TOML, as `--print-config` shows it (and a config file takes it).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The coordinator's config; reads the tokens file and the TLS
    /// certificate and key.
    pub fn config(&self) -> anyhow::Result<crate::Config> {
        let auth = match (&self.tokens, self.auth_on()) {
            (Some(path), true) => crate::auth::Auth::with_tokens(
                crate::auth::Tokens::read(path).map_err(anyhow::Error::msg)?,
            ),
            _ => crate::auth::Auth::open(),
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::TlsIdentity::read(cert, key).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        Ok(crate::Config {
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            metrics_listen: self.metrics_listen,
            auth,
            tls,
        })
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
    fn auth_is_on_off_loopback_unless_turned_off() {
        let at = |listen: &str, auth: Option<&str>, tokens: bool| {
            ServerSettings::resolve(ServerFile {
                data_dir: Some("/d".into()),
                listen: Some(listen.parse().unwrap()),
                auth: auth.map(str::to_owned),
                tokens: tokens.then(|| "/t.toml".into()),
                ..ServerFile::default()
            })
        };
        assert!(!at("127.0.0.1:1", None, false).unwrap().auth_on());
        assert!(!at("[::1]:1", None, false).unwrap().auth_on());
        let err = at("0.0.0.0:1", None, false).unwrap_err().to_string();
        assert!(
            err.contains("not a loopback") && err.contains("--tokens"),
            "{err}"
        );
        assert!(at("0.0.0.0:1", None, true).unwrap().auth_on());
        assert!(!at("0.0.0.0:1", Some("off"), false).unwrap().auth_on());
        let err = at("127.0.0.1:1", Some("on"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth is on"), "{err}");
        assert!(at("127.0.0.1:1", Some("on"), true).unwrap().auth_on());
        let err = at("127.0.0.1:1", Some("yes"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("on, off or auto"), "{err}");
        let half_tls = ServerSettings::resolve(ServerFile {
            data_dir: Some("/d".into()),
            tls_cert: Some("/c.pem".into()),
            ..ServerFile::default()
        });
        assert!(half_tls.unwrap_err().to_string().contains("--tls-key"));
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
