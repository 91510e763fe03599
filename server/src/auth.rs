//! Who may call the coordinator: the tokens file, the bearer token each
//! call carries, and the [`Caller`] it makes of it.
//!
//! Users' tokens name a user: each job belongs to the user who submitted it,
//! and only that user (or an admin) sees, watches, cancels or pulls it. The
//! worker token is the only key to `WorkerControl` (register, assignments,
//! datasets) and opens nothing else. Tokens are kept as SHA-256 digests and
//! compared in constant time; no token is ever logged or printed.
//!
//! ```toml
//! # adjoint tokens file: keep it private (chmod 600).
//! worker_token = "a-long-random-string"
//! [[users]]
//! name = "alice"
//! token = "another-long-random-string"
//! [[users]]
//! name = "ops"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! admin = true
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: anyone may do anything (loopback).
    Open,
    /// A user, by the name the tokens file gives; admins see every job.
    User { name: String, admin: bool },
    /// A worker (holds the worker token).
    Worker,
}

impl Caller {
    /// The name a job submitted by this caller is stored under (`""` when
    /// authentication is off).
    pub fn owner_name(&self) -> &str {
        match self {
            Caller::User { name, .. } => name,
            Caller::Open | Caller::Worker => "",
        }
    }

    /// Whether this caller may see jobs owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::User { name, admin } => *admin || name == owner,
            Caller::Worker => false,
        }
    }

    /// Whether uploads need no ownership check (auth off, or an admin).
    pub fn sees_everything(&self) -> bool {
        matches!(self, Caller::Open | Caller::User { admin: true, .. })
    }
}

/// A SHA-256 digest of a token.
type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &Digest32, b: &Digest32) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One user as the tokens file gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// The tokens file's layout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    worker_token: Option<String>,
    worker_token_sha256: Option<String>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Clone, PartialEq, Eq)]
struct User {
    name: String,
    admin: bool,
    token: Digest32,
}

/// The tokens the coordinator accepts, as digests. Its `Debug` shows user
/// names only.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    users: Vec<User>,
    worker: Option<Digest32>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "users",
                &self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            )
            .field("worker", &self.worker.is_some())
            .finish()
    }
}

/// A token or its digest from the file: exactly one of the two.
fn entry_digest(
    what: &str,
    token: Option<String>,
    sha256: Option<String>,
) -> Result<Digest32, String> {
    match (token, sha256) {
        (Some(token), None) => {
            if token.len() < 16 {
                return Err(format!(
                    "{what}: the token is {} characters; use at least 16",
                    token.len()
                ));
            }
            Ok(digest(&token))
        }
        (None, Some(hex)) => parse_hex32(&hex).ok_or_else(|| {
            format!("{what}: token_sha256 must be 64 hex digits (sha256sum of the token)")
        }),
        (Some(_), Some(_)) => Err(format!("{what}: give the token or its sha256, not both")),
        (None, None) => Err(format!("{what}: no token (give token or token_sha256)")),
    }
}

fn parse_hex32(hex: &str) -> Option<Digest32> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads a tokens file. Errors name the file and the entry, never a
    /// token.
    pub fn read(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// Parses a tokens file's text.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        // toml's messages quote the offending line, which may hold a token.
        let file: TokensFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = text.get(..s.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            format!("not a valid tokens file{at}: {}", e.message())
        })?;
        let worker = match (file.worker_token, file.worker_token_sha256) {
            (None, None) => None,
            (token, sha) => Some(entry_digest("worker_token", token, sha)?),
        };
        let mut users: Vec<User> = Vec::with_capacity(file.users.len());
        for (i, entry) in file.users.into_iter().enumerate() {
            let what = format!("users[{i}] ('{}')", entry.name);
            if entry.name.is_empty()
                || entry.name.len() > 64
                || !entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(format!(
                    "{what}: a user name is 1 to 64 letters, digits or - _ . @"
                ));
            }
            if users.iter().any(|u| u.name == entry.name) {
                return Err(format!("{what}: a second user of that name"));
            }
            let token = entry_digest(&what, entry.token, entry.token_sha256)?;
            if users.iter().any(|u| u.token == token) || worker == Some(token) {
                return Err(format!("{what}: the same token as another entry"));
            }
            users.push(User {
                name: entry.name,
                admin: entry.admin,
                token,
            });
        }
        if users.is_empty() && worker.is_none() {
            return Err("no tokens: give worker_token and at least one [[users]] entry".into());
        }
        Ok(Tokens { users, worker })
    }

    /// Names of the users the file defines (for the start-up log).
    pub fn user_names(&self) -> Vec<&str> {
        self.users.iter().map(|u| u.name.as_str()).collect()
    }

    /// Who holds `token`, if anyone. Every entry is compared, so the time
    /// taken does not depend on which one matches.
    pub fn identify(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        let mut found = None;
        for user in &self.users {
            if same(&user.token, &presented) {
                found = Some(Caller::User {
                    name: user.name.clone(),
                    admin: user.admin,
                });
            }
        }
        if let Some(worker) = &self.worker
            && same(worker, &presented)
        {
            found = Some(Caller::Worker);
        }
        found
    }
}

/// How calls are checked: open (no tokens) or against [`Tokens`]. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
}

/// Which service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    User,
    Worker,
}

impl Auth {
    /// No authentication: every call is [`Caller::Open`].
    pub fn open() -> Auth {
        Auth { tokens: None }
    }

    pub fn with_tokens(tokens: Tokens) -> Auth {
        Auth {
            tokens: Some(Arc::new(tokens)),
        }
    }

    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller of a user-API call, from its `authorization` metadata.
    #[allow(clippy::result_large_err)]
    pub fn user_call(&self, request: Request<()>) -> Result<Request<()>, Status> {
        self.admit(request, Door::User)
    }

    /// The caller of a worker-API call: only the worker token opens it.
    #[allow(clippy::result_large_err)]
    pub fn worker_call(&self, request: Request<()>) -> Result<Request<()>, Status> {
        self.admit(request, Door::Worker)
    }

    #[allow(clippy::result_large_err)]
    fn admit(&self, mut request: Request<()>, door: Door) -> Result<Request<()>, Status> {
        let caller = match &self.tokens {
            None => Caller::Open,
            Some(tokens) => {
                let token = bearer_token(&request)?;
                let caller = tokens.identify(token).ok_or_else(|| {
                    Status::unauthenticated("the bearer token is not one this coordinator accepts")
                })?;
                match (door, &caller) {
                    (Door::Worker, Caller::Worker) | (Door::User, Caller::User { .. }) => {}
                    (Door::Worker, _) => {
                        return Err(Status::permission_denied(
                            "only the worker token may connect as a worker",
                        ));
                    }
                    (Door::User, _) => {
                        return Err(Status::permission_denied(
                            "the worker token cannot call the job API; use a user token",
                        ));
                    }
                }
                caller
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The token of an `authorization: Bearer TOKEN` header.
#[allow(clippy::result_large_err)]
fn bearer_token(request: &Request<()>) -> Result<&str, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Err(Status::unauthenticated(
            "no bearer token: this coordinator requires one (set ADJOINT_TOKEN or \
             ADJOINT_TOKEN_FILE, or --token-file)",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer TOKEN`")
        })?;
    Ok(token.trim())
}

/// The caller an interceptor attached to `request`.
#[allow(clippy::result_large_err)]
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the call was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
worker_token = "worker-token-0123456789"
[[users]]
name = "alice"
token = "alice-token-0123456789"
[[users]]
name = "ops"
token_sha256 = "SHA"
admin = true
"#;

    fn tokens() -> Tokens {
        let sha = crate::blobs::hex(&digest("ops-token-0123456789"));
        Tokens::parse(&FILE.replace("SHA", &sha)).unwrap()
    }

    fn call(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_name_their_holders() {
        let t = tokens();
        assert_eq!(
            t.identify("alice-token-0123456789"),
            Some(Caller::User {
                name: "alice".into(),
                admin: false
            })
        );
        assert_eq!(
            t.identify("ops-token-0123456789"),
            Some(Caller::User {
                name: "ops".into(),
                admin: true
            })
        );
        assert_eq!(t.identify("worker-token-0123456789"), Some(Caller::Worker));
        assert_eq!(t.identify("alice-token-012345678"), None);
        assert_eq!(t.identify(""), None);
    }

    #[test]
    fn doors_admit_only_their_callers() {
        let auth = Auth::with_tokens(tokens());
        let denied = |r: Result<Request<()>, Status>| r.unwrap_err();
        assert_eq!(
            denied(auth.user_call(call(None))).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            denied(auth.user_call(call(Some("nope-nope-nope-nope")))).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            denied(auth.user_call(call(Some("worker-token-0123456789")))).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            denied(auth.worker_call(call(Some("alice-token-0123456789")))).code(),
            tonic::Code::PermissionDenied
        );
        let ok = auth
            .user_call(call(Some("alice-token-0123456789")))
            .unwrap();
        assert_eq!(caller_of(&ok).unwrap().owner_name(), "alice");
        let ok = auth
            .worker_call(call(Some("worker-token-0123456789")))
            .unwrap();
        assert_eq!(caller_of(&ok).unwrap(), Caller::Worker);
        let open = Auth::open().user_call(call(None)).unwrap();
        assert_eq!(caller_of(&open).unwrap(), Caller::Open);
    }

    #[test]
    fn who_sees_what() {
        let alice = Caller::User {
            name: "alice".into(),
            admin: false,
        };
        let admin = Caller::User {
            name: "ops".into(),
            admin: true,
        };
        assert!(alice.may_see("alice"));
        assert!(!alice.may_see("bob"));
        assert!(!alice.may_see(""));
        assert!(admin.may_see("bob"));
        assert!(Caller::Open.may_see("bob"));
        assert!(!Caller::Worker.may_see(""));
    }

    #[test]
    fn bad_files_say_what_is_wrong_without_the_token() {
        let err = Tokens::parse("[[users]]\nname = \"a\"\ntoken = \"short\"\n").unwrap_err();
        assert!(
            err.contains("users[0] ('a')") && err.contains("at least 16"),
            "{err}"
        );
        assert!(!err.contains("short"), "{err}");
        let err =
            Tokens::parse("worker_token = \"secret-secret-secret\"\nextra = 1\n").unwrap_err();
        assert!(
            err.contains("`extra`") && !err.contains("secret-secret"),
            "{err}"
        );
        let err = Tokens::parse("worker_token = \"secret-secret-secret\"\nworker_token = 3\n")
            .unwrap_err();
        assert!(
            err.contains("line 2") && !err.contains("secret-secret"),
            "{err}"
        );
        let err = Tokens::parse(
            "[[users]]\nname = \"a\"\ntoken = \"same-token-0123456789\"\n\
             [[users]]\nname = \"b\"\ntoken = \"same-token-0123456789\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("users[1] ('b')") && err.contains("same token"),
            "{err}"
        );
        let err = Tokens::parse("").unwrap_err();
        assert!(err.contains("no tokens"), "{err}");
        let err =
            Tokens::parse("[[users]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"\n").unwrap_err();
        assert!(err.contains("user name"), "{err}");
        let debug = format!("{:?}", tokens());
        assert!(
            !debug.contains("token-0123") && debug.contains("alice"),
            "{debug}"
        );
    }
}
