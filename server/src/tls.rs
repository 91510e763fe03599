//! TLS for the coordinator's port: a certificate chain and its private key,
//! both PEM, read at start-up (rustls through tonic).

use std::path::Path;

use tonic::transport::{Identity, ServerTlsConfig};

/// A server certificate chain and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads both files and checks that they hold PEM blocks of the right
    /// kinds (rustls checks the rest when serving starts).
    pub fn read(cert: &Path, key: &Path) -> Result<TlsIdentity, String> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let cert_pem = read("TLS certificate", cert)?;
        let key_pem = read("TLS key", key)?;
        if !contains(&cert_pem, b"-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "TLS certificate {}: no PEM CERTIFICATE block",
                cert.display()
            ));
        }
        if !contains(&key_pem, b"PRIVATE KEY-----") {
            return Err(format!(
                "TLS key {}: no PEM PRIVATE KEY block",
                key.display()
            ));
        }
        Ok(TlsIdentity { cert_pem, key_pem })
    }

    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
