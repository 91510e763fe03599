//! Dialing the coordinator: a channel (plain HTTP/2, or TLS trusting a CA
//! file or the system's roots) and the bearer token every call carries.
//! The CLI, the Rust client and the worker all connect through here.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// What a caller presents: a token, and for TLS the CA it trusts. Its
/// `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    tls_domain: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("tls_domain", &self.tls_domain)
            .finish()
    }
}

impl Credentials {
    /// No token, no CA: plain calls to an open coordinator (or TLS with the
    /// system's roots for an `https://` address).
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// From what a command line gives: a token (from the environment) or a
    /// file holding it, a CA file, and the name the server's certificate
    /// must carry when it differs from the address's host.
    pub fn load(
        token: Option<String>,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
        tls_domain: Option<String>,
    ) -> Result<Credentials, String> {
        let token = match (token.filter(|t| !t.trim().is_empty()), token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!("token file {} is empty", path.display()));
                }
                Some(token.to_owned())
            }
            (None, None) => None,
        };
        let ca_pem = match ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let credentials = Credentials {
            token,
            ca_pem,
            tls_domain,
        };
        credentials.bearer()?;
        Ok(credentials)
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Credentials {
        self.token = Some(token.into());
        self
    }

    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Credentials {
        self.ca_pem = Some(pem.into());
        self
    }

    pub fn with_tls_domain(mut self, domain: impl Into<String>) -> Credentials {
        self.tls_domain = Some(domain.into());
        self
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether a CA file was given (so the coordinator speaks TLS).
    pub fn trusts_a_ca(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// An endpoint for `url` (`http://` or `https://`), with TLS set up for
    /// `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad coordinator address '{url}': {e}"))?
            .connect_timeout(Duration::from_secs(10));
        let https = url.starts_with("https://");
        if !https {
            if self.ca_pem.is_some() {
                return Err(format!(
                    "a CA file is given but '{url}' is not https://: use https://HOST:PORT"
                ));
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS for '{url}': {e}"))
    }

    /// The interceptor that adds `authorization: Bearer TOKEN` (when there
    /// is a token) after `inner` has done its part.
    pub fn interceptor<I: Interceptor>(&self, inner: I) -> Result<Authorize<I>, String> {
        Ok(Authorize {
            inner,
            bearer: self.bearer()?,
        })
    }

    fn bearer(&self) -> Result<Option<AsciiMetadataValue>, String> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let mut value: AsciiMetadataValue = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token holds characters a header cannot carry".to_owned())?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// An error and its sources, `: `-separated, for messages about a failed
/// connection (a TLS failure is a source of a transport error). A source
/// whose text the message already ends with (rustls repeats its source's)
/// is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An interceptor that runs `inner`, then sets the bearer token.
#[derive(Debug, Clone)]
pub struct Authorize<I> {
    inner: I,
    bearer: Option<AsciiMetadataValue>,
}

impl<I: Interceptor> Interceptor for Authorize<I> {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.inner.call(request)?;
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_rides_in_the_header_and_never_in_debug() {
        let c = Credentials::none().with_token("secret-token-123");
        assert!(!format!("{c:?}").contains("secret"));
        let mut i = c.interceptor(Ok::<_, tonic::Status>).unwrap();
        let r = i.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get("authorization").unwrap(),
            "Bearer secret-token-123"
        );
        let mut none = Credentials::none()
            .interceptor(Ok::<_, tonic::Status>)
            .unwrap();
        let r = none.call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
    }

    #[test]
    fn bad_inputs_are_named() {
        let err =
            Credentials::load(None, Some(Path::new("/no/such/token")), None, None).unwrap_err();
        assert!(err.contains("/no/such/token"), "{err}");
        let err = Credentials::load(Some("a\nb".into()), None, None, None).unwrap_err();
        assert!(err.contains("header"), "{err}");
        let err = Credentials::none()
            .with_ca_pem(b"x".to_vec())
            .endpoint("http://127.0.0.1:1")
            .unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }
}
