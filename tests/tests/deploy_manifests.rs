//! The files in `deploy/` agree with the binaries they run.
//!
//! Every file there is read as text: the Dockerfile, the compose files, the
//! OpenTelemetry Collector config and the Kubernetes manifests, through a
//! small YAML reader for the subset they use that refuses what it does not
//! know (flow mappings, anchors, multi-line plain scalars...), so that a
//! change it cannot follow fails here instead of passing unchecked. Then,
//! for each container that runs `adjoint server` or `adjoint worker` (or the
//! `adjoint-server` / `adjoint-worker` binaries):
//!
//! - every `--flag` is a long flag of `ServerArgs` / `WorkerArgs`, as their
//!   clap definitions say; every `ADJOINT_*` variable is one those flags
//!   declare, for the role of the container it is set on; every `OTEL_*`
//!   variable is one adjoint's telemetry reads; every key of a config file
//!   in a ConfigMap is a setting of the role that reads it;
//! - the settings in effect (flag > variable > config file), resolved here
//!   and by the binary itself (`--print-config`), listen on the ports the
//!   file exposes (`ports`, `containerPort`, Services, probes, scrape
//!   annotations, health checks, `EXPOSE`); workers advertise their ring
//!   port, find the coordinator where it listens, and use the coordinator's
//!   store on the same volume; the images the manifests name are stages of
//!   the Dockerfile whose entrypoint is `adjoint`;
//! - `adjoint server --help` / `adjoint worker --help` list every flag and
//!   variable used, and docs/deploy.md mentions each.
//!
//! A problem names the file, the line and what is wrong; all of them are
//! reported at once. The binaries come from `cargo build --bins` (what
//! `cargo test --workspace` builds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use adjoint_client::local::binary;

/// The `OTEL_*` variables adjoint's telemetry reads (telemetry/src/init.rs
/// and the OpenTelemetry SDK under it).
const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The paths the metrics listener answers (telemetry/src/http.rs).
const METRICS_PATHS: &[&str] = &["/healthz", "/metrics"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every file under deploy/ that this test reads, as (path from the
/// repository root, text).
fn deploy_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let read = name == "Dockerfile"
                || name.ends_with(".Dockerfile")
                || name.ends_with(".yaml")
                || name.ends_with(".yml");
            if read {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let rel = path.strip_prefix(root).expect("under the root");
                out.push((rel.to_string_lossy().replace('\\', "/"), text));
            }
        }
    }
    let root = repo_root();
    let mut out = Vec::new();
    walk(&root.join("deploy"), &root, &mut out);
    out
}

// ---------------------------------------------------------------------------
// What the binaries accept, from their clap definitions.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Server,
    Worker,
}

impl Role {
    const ALL: [Role; 2] = [Role::Server, Role::Worker];

    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Worker => "worker",
        }
    }

    /// The settings that are addresses the process listens on.
    fn listen_keys(self) -> &'static [&'static str] {
        match self {
            Role::Server => &["listen", "metrics_listen"],
            Role::Worker => &["ring_listen", "metrics_listen"],
        }
    }
}

#[derive(Debug)]
struct Flag {
    long: String,
    env: Option<String>,
    takes_value: bool,
}

impl Flag {
    /// Its key in a config file.
    fn key(&self) -> String {
        self.long.replace('-', "_")
    }

    /// Whether it is a setting (not `--config` or `--print-config`).
    fn is_setting(&self) -> bool {
        self.long != "config" && self.long != "print-config"
    }
}

#[derive(Debug)]
struct Spec {
    flags: Vec<Flag>,
}

impl Spec {
    fn of(role: Role) -> Spec {
        let cmd = clap::Command::new(role.name());
        let cmd = match role {
            Role::Server => <adjoint_server::cli::ServerArgs as clap::Args>::augment_args(cmd),
            Role::Worker => <adjoint_worker::cli::WorkerArgs as clap::Args>::augment_args(cmd),
        };
        let flags = cmd
            .get_arguments()
            .filter_map(|a| {
                Some(Flag {
                    long: a.get_long()?.to_owned(),
                    env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    takes_value: a.get_action().takes_values(),
                })
            })
            .collect();
        Spec { flags }
    }

    fn flag(&self, long: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.long == long)
    }

    fn by_env(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.env.as_deref() == Some(name))
    }

    fn by_key(&self, key: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.is_setting() && f.key() == key)
    }

    fn longs(&self) -> String {
        let v: Vec<String> = self.flags.iter().map(|f| format!("--{}", f.long)).collect();
        v.join(", ")
    }

    fn envs(&self) -> String {
        let v: Vec<&str> = self.flags.iter().filter_map(|f| f.env.as_deref()).collect();
        v.join(", ")
    }

    fn keys(&self) -> String {
        let v: Vec<String> = self
            .flags
            .iter()
            .filter(|f| f.is_setting())
            .map(Flag::key)
            .collect();
        v.join(", ")
    }
}

struct Specs([Spec; 2]);

impl Specs {
    fn new() -> Specs {
        Specs([Spec::of(Role::Server), Spec::of(Role::Worker)])
    }

    fn get(&self, role: Role) -> &Spec {
        &self.0[role as usize]
    }

    fn any_env(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.by_env(name).is_some())
    }
}

// ---------------------------------------------------------------------------
// A YAML reader for the subset the manifests use: block mappings and
// sequences (also a sequence at its key's indentation), plain and quoted
// scalars, flow sequences of scalars, `{}`, block scalars (`|`, `>`),
// comments and `---` documents. Every node knows its line.

#[derive(Debug, Clone)]
enum Value {
    Null,
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

#[derive(Debug, Clone)]
struct Node {
    line: usize,
    value: Value,
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |n, k| n.get(k))
    }

    fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(v) => v,
            _ => &[],
        }
    }

    fn entries(&self) -> &[(String, Node)] {
        match &self.value {
            Value::Map(v) => v,
            _ => &[],
        }
    }
}

/// Removes a comment: `#` at the start or after a blank, outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        if double {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => double = false,
                _ => escaped = false,
            }
        } else if single {
            if c == '\'' {
                single = false;
            }
        } else {
            let opens = prev.is_whitespace() || matches!(prev, '[' | ',' | '{');
            match c {
                '"' if opens => double = true,
                '\'' if opens => single = true,
                '#' if prev.is_whitespace() => return line[..i].trim_end(),
                _ => {}
            }
        }
        prev = c;
    }
    line.trim_end()
}

fn unquote(s: &str) -> Result<String, String> {
    let s = s.trim();
    let mut out = String::new();
    if let Some(body) = s.strip_prefix('"') {
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' if chars.as_str().trim().is_empty() => return Ok(out),
                '"' => return Err(format!("text after the closing quote in {s}")),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('"' | '\\' | '/' | ' ')) => out.push(c),
                    other => return Err(format!("escape \\{other:?} in {s}")),
                },
                c => out.push(c),
            }
        }
        Err(format!("unclosed quote in {s}"))
    } else if let Some(body) = s.strip_prefix('\'') {
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\'' {
                out.push(c);
            } else if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
            } else if chars.collect::<String>().trim().is_empty() {
                return Ok(out);
            } else {
                return Err(format!("text after the closing quote in {s}"));
            }
        }
        Err(format!("unclosed quote in {s}"))
    } else {
        Ok(s.to_owned())
    }
}

/// `key: rest` (rest may be empty), for keys made of `[A-Za-z0-9_./-]` or
/// quoted.
fn split_key(text: &str) -> Option<(String, String)> {
    if let Some(q) = text.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = text[1..].find(q)? + 1;
        let rest = text[end + 1..].strip_prefix(':')?;
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        return Some((text[1..end].to_owned(), rest.trim().to_owned()));
    }
    let (key, rest) = match text.find(": ") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text.strip_suffix(':')?, ""),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.-/".contains(c);
    if key.is_empty() || !key.chars().all(plain) {
        return None;
    }
    Some((key.to_owned(), rest.trim().to_owned()))
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

struct Reader<'a> {
    lines: &'a [&'a str],
    /// The line number of `lines[0]`.
    first: usize,
    pos: usize,
    /// The current line, as the rest of a `- ` item at a deeper column.
    over: Option<(usize, String)>,
}

type Parsed<T> = Result<T, String>;

impl Reader<'_> {
    /// The next line that holds something: (indent, text, line number).
    fn peek(&mut self) -> Option<(usize, String, usize)> {
        if let Some((indent, text)) = &self.over {
            return Some((*indent, text.clone(), self.first + self.pos));
        }
        while self.pos < self.lines.len() {
            let text = strip_comment(self.lines[self.pos]);
            if text.trim().is_empty() {
                self.pos += 1;
                continue;
            }
            let indent = text.len() - text.trim_start().len();
            return Some((indent, text.trim_start().to_owned(), self.first + self.pos));
        }
        None
    }

    fn advance(&mut self) {
        self.over = None;
        self.pos += 1;
    }

    fn block(&mut self) -> Parsed<Node> {
        let (indent, text, line) = self.peek().expect("a line to read");
        if is_item(&text) {
            self.seq(indent)
        } else if split_key(&text).is_some() {
            self.map(indent)
        } else {
            self.advance();
            self.inline(&text, line, indent)
        }
    }

    fn seq(&mut self, indent: usize) -> Parsed<Node> {
        let line = self.peek().map_or(0, |p| p.2);
        let mut items = Vec::new();
        while let Some((ind, text, no)) = self.peek() {
            if ind > indent {
                return Err(format!("line {no}: unexpected indentation"));
            }
            if ind < indent || !is_item(&text) {
                break;
            }
            let rest = text[1..].trim_start();
            if rest.is_empty() {
                self.advance();
                match self.peek() {
                    Some((deeper, _, _)) if deeper > indent => items.push(self.block()?),
                    _ => items.push(Node {
                        line: no,
                        value: Value::Null,
                    }),
                }
            } else {
                let column = indent + (text.len() - rest.len());
                self.over = Some((column, rest.to_owned()));
                items.push(self.block()?);
            }
        }
        Ok(Node {
            line,
            value: Value::Seq(items),
        })
    }

    fn map(&mut self, indent: usize) -> Parsed<Node> {
        let line = self.peek().map_or(0, |p| p.2);
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some((ind, text, no)) = self.peek() {
            if ind < indent {
                break;
            }
            if ind > indent {
                return Err(format!("line {no}: unexpected indentation"));
            }
            let Some((key, rest)) = split_key(&text) else {
                return Err(format!("line {no}: expected `key: value`, found {text:?}"));
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("line {no}: key {key} given twice"));
            }
            self.advance();
            let value = if rest.is_empty() {
                match self.peek() {
                    Some((deeper, _, _)) if deeper > indent => self.block()?,
                    Some((same, t, _)) if same == indent && is_item(&t) => self.seq(indent)?,
                    _ => Node {
                        line: no,
                        value: Value::Null,
                    },
                }
            } else {
                self.inline(&rest, no, indent)?
            };
            entries.push((key, value));
        }
        Ok(Node {
            line,
            value: Value::Map(entries),
        })
    }

    /// A value written on its key's (or item's) line, which was read.
    fn inline(&mut self, rest: &str, line: usize, indent: usize) -> Parsed<Node> {
        let value = if rest.starts_with('|') || rest.starts_with('>') {
            Value::Str(self.block_scalar(indent, line)?)
        } else if rest.starts_with('[') {
            return self.flow(rest, line);
        } else if rest == "{}" {
            Value::Map(Vec::new())
        } else if rest.starts_with(['{', '&', '*', '!', '?', '%', '@', '`']) {
            return Err(format!(
                "line {line}: {rest:?}: flow mappings, anchors, aliases and tags are not read here"
            ));
        } else {
            Value::Str(unquote(rest).map_err(|e| format!("line {line}: {e}"))?)
        };
        Ok(Node { line, value })
    }

    /// The lines after a `|` or `>`, more indented than their key; line k
    /// of the text is line `key + 1 + k` of the file.
    fn block_scalar(&mut self, indent: usize, line: usize) -> Parsed<String> {
        let mut out: Vec<&str> = Vec::new();
        let mut content = None;
        while self.pos < self.lines.len() {
            let raw = self.lines[self.pos];
            if raw.trim().is_empty() {
                out.push("");
                self.pos += 1;
                continue;
            }
            let ind = raw.len() - raw.trim_start().len();
            if ind <= indent {
                break;
            }
            let content = *content.get_or_insert(ind);
            if ind < content {
                return Err(format!(
                    "line {}: less indented than the block scalar of line {line}",
                    self.first + self.pos
                ));
            }
            out.push(&raw[content..]);
            self.pos += 1;
        }
        while out.last() == Some(&"") {
            out.pop();
        }
        Ok(out.join("\n") + "\n")
    }

    /// `[a, "b", ...]`, possibly over several lines: scalars only.
    fn flow(&mut self, rest: &str, line: usize) -> Parsed<Node> {
        let mut text = rest.to_owned();
        let mut starts = vec![(0, line)];
        let balanced = |t: &str| {
            let (mut depth, mut single, mut double, mut escaped) = (0i32, false, false, false);
            for c in t.chars() {
                match c {
                    '\\' if double && !escaped => {
                        escaped = true;
                        continue;
                    }
                    '"' if !single && !escaped => double = !double,
                    '\'' if !double => single = !single,
                    '[' if !single && !double => depth += 1,
                    ']' if !single && !double => depth -= 1,
                    _ => {}
                }
                escaped = false;
            }
            depth == 0
        };
        while !balanced(&text) {
            if self.pos >= self.lines.len() {
                return Err(format!("line {line}: unclosed ["));
            }
            starts.push((text.len() + 1, self.first + self.pos));
            text.push(' ');
            text.push_str(strip_comment(self.lines[self.pos]).trim());
            self.pos += 1;
        }
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| format!("line {line}: text after ]"))?;
        let line_at = |offset: usize| {
            starts
                .iter()
                .rev()
                .find(|(o, _)| *o <= offset + 1)
                .map_or(line, |s| s.1)
        };
        let mut items = Vec::new();
        let (mut start, mut single, mut double, mut escaped) = (0, false, false, false);
        let push = |from: usize, to: usize, items: &mut Vec<Node>| -> Parsed<()> {
            let item = inner[from..to].trim();
            if item.is_empty() {
                return if to == inner.len() && !items.is_empty() || inner.trim().is_empty() {
                    Ok(())
                } else {
                    Err(format!("line {}: empty item in [...]", line_at(from)))
                };
            }
            if item.starts_with(['[', '{']) {
                return Err(format!("line {}: nested flow collections", line_at(from)));
            }
            let value = unquote(item).map_err(|e| format!("line {}: {e}", line_at(from)))?;
            items.push(Node {
                line: line_at(from),
                value: Value::Str(value),
            });
            Ok(())
        };
        for (i, c) in inner.char_indices() {
            match c {
                '\\' if double && !escaped => {
                    escaped = true;
                    continue;
                }
                '"' if !single && !escaped => double = !double,
                '\'' if !double => single = !single,
                ',' if !single && !double => {
                    push(start, i, &mut items)?;
                    start = i + 1;
                }
                _ => {}
            }
            escaped = false;
        }
        push(start, inner.len(), &mut items)?;
        Ok(Node {
            line,
            value: Value::Seq(items),
        })
    }
}

/// The documents of a YAML file (empty ones left out).
fn parse_yaml(text: &str) -> Parsed<Vec<Node>> {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| {
        l.chars()
            .take_while(|c| c.is_whitespace())
            .any(|c| c == '\t')
    }) {
        return Err(format!("line {}: a tab in the indentation", i + 1));
    }
    let mut docs = Vec::new();
    let mut start = 0;
    for end in 0..=lines.len() {
        let boundary = end == lines.len() || lines[end].trim_end() == "---";
        if !boundary {
            continue;
        }
        let mut reader = Reader {
            lines: &lines[start..end],
            first: start + 1,
            pos: 0,
            over: None,
        };
        if let Some((indent, _, no)) = reader.peek() {
            if indent != 0 {
                return Err(format!("line {no}: a document starts indented"));
            }
            let node = reader.block()?;
            if let Some((_, text, no)) = reader.peek() {
                return Err(format!("line {no}: unexpected {text:?}"));
            }
            docs.push(node);
        }
        start = end + 1;
    }
    Ok(docs)
}

// ---------------------------------------------------------------------------
// The Dockerfile.

#[derive(Debug)]
struct Instruction {
    op: String,
    /// The instruction's lines (continuations joined), each with its number.
    pieces: Vec<(usize, String)>,
}

impl Instruction {
    fn line(&self) -> usize {
        self.pieces[0].0
    }

    fn text(&self) -> String {
        let v: Vec<&str> = self.pieces.iter().map(|p| p.1.as_str()).collect();
        v.join(" ")
    }

    /// The commands it runs: the exec form's array, or the shell form's
    /// words split at `&&`, `||`, `;` and `|` (up to a redirection).
    fn commands(&self) -> Vec<Vec<Tok>> {
        let text = self.text();
        if text.trim_start().starts_with('[')
            && let Ok(words) = serde_json::from_str::<Vec<String>>(text.trim())
        {
            let line = self.line();
            return vec![words.into_iter().map(|text| Tok { text, line }).collect()];
        }
        let mut commands = vec![Vec::new()];
        let mut redirected = false;
        for (line, piece) in &self.pieces {
            for word in piece.split_whitespace() {
                if matches!(word, "&&" | "||" | ";" | "|") {
                    commands.push(Vec::new());
                    redirected = false;
                    continue;
                }
                if word.starts_with(['>', '<']) || word.starts_with("2>") {
                    redirected = true;
                }
                if !redirected {
                    let text = word.trim_matches(['"', '\'']).to_owned();
                    commands
                        .last_mut()
                        .expect("one")
                        .push(Tok { text, line: *line });
                }
            }
        }
        commands.retain(|c| !c.is_empty());
        commands
    }
}

fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<Instruction> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (body, more) = match t.strip_suffix('\\') {
            Some(b) => (b.trim(), true),
            None => (t, false),
        };
        match &mut current {
            Some(c) => c.pieces.push((i + 1, body.to_owned())),
            None => {
                let (op, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                current = Some(Instruction {
                    op: op.to_ascii_uppercase(),
                    pieces: vec![(i + 1, rest.trim().to_owned())],
                });
            }
        }
        if !more {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

#[derive(Debug, Default)]
struct Stage {
    line: usize,
    entrypoint: Option<Vec<String>>,
    exposes: Vec<(u16, usize)>,
}

// ---------------------------------------------------------------------------
// What the files say, gathered.

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
}

#[derive(Debug, Clone)]
struct Env {
    name: String,
    /// The value (references expanded; a stand-in for a downward-API
    /// value), or None where it is not known here.
    value: Option<String>,
    line: usize,
}

#[derive(Debug, Clone)]
enum PortRef {
    Num(u16),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Num(n) => write!(f, "{n}"),
            PortRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A port something outside the process expects it to answer on.
#[derive(Debug, Clone)]
struct PortUse {
    port: PortRef,
    line: usize,
    what: String,
    /// The metrics port (probes, scrape annotations), else any listener.
    metrics: bool,
    path: Option<String>,
}

#[derive(Debug, Clone)]
struct Mount {
    /// `volume:NAME` (compose), `pvc:CLAIM`, `configmap:NAME`,
    /// `bind:PATH`, ...
    volume: String,
    path: String,
    line: usize,
}

/// One container (a compose service, a Kubernetes container, a Dockerfile
/// command).
#[derive(Debug, Default, Clone)]
struct Unit {
    file: String,
    /// compose file or the k8s directory: the units that run together.
    group: String,
    name: String,
    line: usize,
    k8s: bool,
    image: Option<String>,
    /// The role it runs, with the binary (`adjoint`, `adjoint-server`...)
    /// and the line.
    role: Option<(Role, String, usize)>,
    /// Whether the role is the first argument, given to the image's
    /// entrypoint.
    role_first: bool,
    args: Vec<Tok>,
    env: Vec<Env>,
    exposed: Vec<(u16, usize, String)>,
    named_ports: BTreeMap<String, u16>,
    uses: Vec<PortUse>,
    mounts: Vec<Mount>,
    component: Option<String>,
    build_target: Option<(String, usize)>,
}

impl Unit {
    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.file)
    }

    fn short_name(&self) -> &str {
        self.name.rsplit(' ').next().unwrap_or(&self.name)
    }

    fn env_value(&self, name: &str) -> Option<&Env> {
        self.env.iter().rev().find(|e| e.name == name)
    }
}

#[derive(Debug)]
struct ConfigFile {
    file: String,
    /// The line of its ConfigMap key; text line k is file line `line+1+k`.
    line: usize,
    map: String,
    text: String,
}

impl ConfigFile {
    fn key_line(&self, key: &str) -> usize {
        self.text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
            .map_or(self.line, |k| self.line + 1 + k)
    }
}

#[derive(Debug)]
struct Service {
    file: String,
    name: String,
    line: usize,
    component: Option<String>,
    ports: Vec<(u16, PortRef, usize)>,
}

#[derive(Debug, Default)]
struct Manifests {
    units: Vec<Unit>,
    services: Vec<Service>,
    /// ConfigMap keys that hold config files, by key (the file name).
    configs: BTreeMap<String, ConfigFile>,
    dockerfile: Option<String>,
    stages: BTreeMap<String, Stage>,
    /// The OTLP gRPC port of each collector config file in deploy/.
    collectors: BTreeMap<String, u16>,
    problems: Vec<String>,
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// (host, port) of `scheme://host:port/...` or `host:port`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// A Kubernetes quantity divided by `divisor`, rounded up (what the
/// downward API's resourceFieldRef gives).
fn quantity(q: &str, divisor: &str) -> Option<u64> {
    fn parse(q: &str) -> Option<f64> {
        let units: [(&str, f64); 9] = [
            ("Ki", 1024.0),
            ("Mi", 1024f64.powi(2)),
            ("Gi", 1024f64.powi(3)),
            ("Ti", 1024f64.powi(4)),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("m", 1e-3),
        ];
        for (suffix, scale) in units {
            if let Some(n) = q.strip_suffix(suffix) {
                return Some(n.parse::<f64>().ok()? * scale);
            }
        }
        q.parse().ok()
    }
    Some((parse(q)? / parse(divisor)?).ceil() as u64)
}

/// Expands `$(NAME)` with the variables defined before it (Kubernetes).
fn expand(value: &str, env: &[Env]) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find(')')?;
        let name = &after[..end];
        out.push_str(
            env.iter()
                .rev()
                .find(|e| e.name == name)?
                .value
                .as_deref()?,
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn tokens(node: &Node) -> Vec<Tok> {
    match &node.value {
        Value::Str(s) => s
            .split_whitespace()
            .map(|w| Tok {
                text: w.to_owned(),
                line: node.line,
            })
            .collect(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|n| {
                Some(Tok {
                    text: n.str()?.to_owned(),
                    line: n.line,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Finds the role a command runs and keeps the arguments after it: the
/// command word is `adjoint-server`/`adjoint-worker`, or `adjoint` and then
/// `server`/`worker`, or (given to an adjoint image's entrypoint) the role
/// itself.
fn set_role(unit: &mut Unit, toks: &[Tok]) {
    let base = |i: usize| {
        toks.get(i)
            .map(|t| t.text.rsplit('/').next().unwrap_or(&t.text))
    };
    let role = |word: Option<&str>| match word {
        Some("server") => Some(Role::Server),
        Some("worker") => Some(Role::Worker),
        _ => None,
    };
    let adjoint_image = unit
        .image
        .as_deref()
        .is_some_and(|im| image_repo(im) == "adjoint");
    let found = match base(0) {
        Some("adjoint-server") => Some((Role::Server, "adjoint-server", 0)),
        Some("adjoint-worker") => Some((Role::Worker, "adjoint-worker", 0)),
        Some("adjoint") => role(base(1)).map(|r| (r, "adjoint", 1)),
        word if adjoint_image => role(word).map(|r| (r, "adjoint", 0)),
        _ => None,
    };
    if let Some((role, bin, i)) = found {
        unit.role = Some((role, bin.to_owned(), toks[i].line));
        unit.role_first = i == 0 && bin == "adjoint";
        unit.args = toks[i + 1..].to_vec();
    }
}

/// `registry/path/adjoint:cpu` -> `adjoint`.
fn image_repo(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split([':', '@']).next().unwrap_or(last)
}

fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split('@').next()?.split_once(':').map(|(_, t)| t)
}

impl Manifests {
    fn read(files: &[(String, String)]) -> Manifests {
        let mut m = Manifests::default();
        for (file, text) in files {
            if file
                .rsplit('/')
                .next()
                .is_some_and(|n| n.contains("Dockerfile"))
            {
                m.read_dockerfile(file, text);
                continue;
            }
            let docs = match parse_yaml(text) {
                Ok(d) => d,
                Err(e) => {
                    m.problems.push(format!("{file}: {e}"));
                    continue;
                }
            };
            let group = if file.contains("/k8s/") {
                file.rsplit_once('/')
                    .map_or(file.clone(), |(d, _)| d.to_owned())
            } else {
                file.clone()
            };
            for doc in &docs {
                if let Some(services) = doc.get("services") {
                    m.read_compose(file, services);
                } else if doc.get("kind").is_some() {
                    m.read_k8s(file, &group, doc);
                } else if let Some(receivers) = doc.get("receivers") {
                    let port = receivers
                        .path(&["otlp", "protocols", "grpc", "endpoint"])
                        .and_then(Node::str)
                        .and_then(port_of);
                    let name = file.rsplit('/').next().unwrap_or(file).to_owned();
                    m.collectors.insert(name, port.unwrap_or(4317));
                }
            }
        }
        m
    }

    fn read_dockerfile(&mut self, file: &str, text: &str) {
        self.dockerfile = Some(file.to_owned());
        let mut stage = String::new();
        for ins in parse_dockerfile(text) {
            let line = ins.line();
            match ins.op.as_str() {
                "FROM" => {
                    let words: Vec<String> =
                        ins.text().split_whitespace().map(str::to_owned).collect();
                    stage = match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                        Some(i) => words.get(i + 1).cloned().unwrap_or_default(),
                        None => format!("#{}", self.stages.len()),
                    }
                    .to_ascii_lowercase();
                    self.stages.insert(
                        stage.clone(),
                        Stage {
                            line,
                            ..Stage::default()
                        },
                    );
                }
                "EXPOSE" => {
                    for word in ins.text().split_whitespace() {
                        match word.split('/').next().and_then(|p| p.parse().ok()) {
                            Some(p) => self
                                .stages
                                .entry(stage.clone())
                                .or_default()
                                .exposes
                                .push((p, line)),
                            None => self
                                .problems
                                .push(format!("{file}:{line}: EXPOSE {word}: not a port")),
                        }
                    }
                }
                "ENV" => {
                    let text = ins.text();
                    let names: Vec<&str> = if text.contains('=') {
                        text.split_whitespace()
                            .filter_map(|w| w.split_once('=').map(|(k, _)| k))
                            .collect()
                    } else {
                        text.split_whitespace().take(1).collect()
                    };
                    let mut unit = Unit {
                        file: file.to_owned(),
                        group: file.to_owned(),
                        name: format!("stage {stage}"),
                        line,
                        ..Unit::default()
                    };
                    unit.env = names
                        .into_iter()
                        .map(|n| Env {
                            name: n.to_owned(),
                            value: None,
                            line,
                        })
                        .collect();
                    self.units.push(unit);
                }
                "ENTRYPOINT" | "CMD" | "RUN" => {
                    if ins.op == "ENTRYPOINT" {
                        let words = serde_json::from_str::<Vec<String>>(ins.text().trim()).ok();
                        self.stages.entry(stage.clone()).or_default().entrypoint = words;
                    }
                    for command in ins.commands() {
                        let mut unit = Unit {
                            file: file.to_owned(),
                            group: file.to_owned(),
                            name: format!("{} in stage {stage}", ins.op),
                            line,
                            ..Unit::default()
                        };
                        set_role(&mut unit, &command);
                        if unit.role.is_some() {
                            self.units.push(unit);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn read_compose(&mut self, file: &str, services: &Node) {
        for (name, svc) in services.entries() {
            let mut u = Unit {
                file: file.to_owned(),
                group: file.to_owned(),
                name: format!("service {name}"),
                line: svc.line,
                image: svc.get("image").and_then(Node::str).map(str::to_owned),
                ..Unit::default()
            };
            let mut toks = Vec::new();
            for key in ["entrypoint", "command"] {
                if let Some(n) = svc.get(key) {
                    toks.extend(tokens(n));
                }
            }
            set_role(&mut u, &toks);
            if let Some(env) = svc.get("environment") {
                for (k, v) in env.entries() {
                    let value = v.str().map(str::to_owned);
                    u.env.push(Env {
                        name: k.clone(),
                        value: value.filter(|v| !v.contains('$')),
                        line: v.line,
                    });
                }
                for item in env.items() {
                    let text = item.str().unwrap_or("");
                    let (k, v) = text
                        .split_once('=')
                        .map_or((text, None), |(k, v)| (k, Some(v)));
                    u.env.push(Env {
                        name: k.to_owned(),
                        value: v.filter(|v| !v.contains('$')).map(str::to_owned),
                        line: item.line,
                    });
                }
            }
            for key in ["ports", "expose"] {
                for item in svc.get(key).map_or(&[][..], Node::items) {
                    let target = match item.str() {
                        Some(s) => s.rsplit(':').next().unwrap_or(s).to_owned(),
                        None => item
                            .get("target")
                            .and_then(Node::str)
                            .unwrap_or("")
                            .to_owned(),
                    };
                    let target = target.split('/').next().unwrap_or("");
                    match target.parse() {
                        Ok(p) => u.exposed.push((p, item.line, format!("compose {key}"))),
                        Err(_) => self.problems.push(format!(
                            "{file}:{}: {key} entry {target:?}: one container port expected",
                            item.line
                        )),
                    }
                }
            }
            for item in svc.get("volumes").map_or(&[][..], Node::items) {
                let Some(spec) = item.str() else { continue };
                let mut parts = spec.split(':');
                let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let volume = if src.starts_with(['.', '/', '~']) {
                    format!("bind:{src}")
                } else {
                    format!("volume:{src}")
                };
                u.mounts.push(Mount {
                    volume,
                    path: dst.to_owned(),
                    line: item.line,
                });
            }
            if let Some(test) = svc.path(&["healthcheck", "test"]) {
                for t in tokens(test) {
                    for (i, _) in t.text.match_indices("/dev/tcp/") {
                        let rest = &t.text[i + "/dev/tcp/".len()..];
                        let port: String = rest
                            .split('/')
                            .nth(1)
                            .unwrap_or("")
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        let path = t.text[i..].find("GET ").map(|g| {
                            let after = &t.text[i + g + 4..];
                            after.split_whitespace().next().unwrap_or("").to_owned()
                        });
                        u.uses.push(PortUse {
                            port: PortRef::Num(port.parse().unwrap_or(0)),
                            line: t.line,
                            what: "the health check".into(),
                            metrics: path.is_some(),
                            path,
                        });
                    }
                }
            }
            if let Some(target) = svc.path(&["build", "target"]) {
                u.build_target = target.str().map(|t| (t.to_owned(), target.line));
            }
            self.units.push(u);
        }
    }

    fn read_k8s(&mut self, file: &str, group: &str, doc: &Node) {
        let kind = doc.get("kind").and_then(Node::str).unwrap_or("");
        let name = doc
            .path(&["metadata", "name"])
            .and_then(Node::str)
            .unwrap_or("")
            .to_owned();
        let template = match kind {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                doc.path(&["spec", "template"])
            }
            "CronJob" => doc.path(&["spec", "jobTemplate", "spec", "template"]),
            "Pod" => Some(doc),
            _ => None,
        };
        match kind {
            "Service" => {
                let component = doc
                    .path(&["spec", "selector", "app.kubernetes.io/component"])
                    .and_then(Node::str)
                    .map(str::to_owned);
                let mut ports = Vec::new();
                for p in doc.path(&["spec", "ports"]).map_or(&[][..], Node::items) {
                    let Some(port) = p
                        .get("port")
                        .and_then(Node::str)
                        .and_then(|s| s.parse().ok())
                    else {
                        self.problems
                            .push(format!("{file}:{}: a Service port without a port", p.line));
                        continue;
                    };
                    let target = match p.get("targetPort").and_then(Node::str) {
                        None => PortRef::Num(port),
                        Some(t) => t
                            .parse()
                            .map_or_else(|_| PortRef::Name(t.to_owned()), PortRef::Num),
                    };
                    ports.push((port, target, p.line));
                }
                self.services.push(Service {
                    file: file.to_owned(),
                    name: name.clone(),
                    line: doc.line,
                    component,
                    ports,
                });
            }
            "ConfigMap" => {
                for (key, value) in doc.get("data").map_or(&[][..], Node::entries) {
                    if key.ends_with(".toml") {
                        self.configs.insert(
                            key.clone(),
                            ConfigFile {
                                file: file.to_owned(),
                                line: value.line,
                                map: name.clone(),
                                text: value.str().unwrap_or("").to_owned(),
                            },
                        );
                    } else {
                        // Keys read as variables (envFrom).
                        let mut u = Unit {
                            file: file.to_owned(),
                            group: group.to_owned(),
                            name: format!("ConfigMap {name}"),
                            line: doc.line,
                            k8s: true,
                            ..Unit::default()
                        };
                        u.env.push(Env {
                            name: key.clone(),
                            value: value.str().map(str::to_owned),
                            line: value.line,
                        });
                        self.units.push(u);
                    }
                }
            }
            "Kustomization" => {
                let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
                for r in doc.get("resources").map_or(&[][..], Node::items) {
                    let Some(res) = r.str() else { continue };
                    let path = repo_root().join(dir).join(res);
                    if !res.contains("://") && !path.exists() {
                        self.problems
                            .push(format!("{file}:{}: resource {res} does not exist", r.line));
                    }
                }
            }
            _ => {}
        }
        let Some(template) = template else { return };
        let pod_meta = template.get("metadata");
        let Some(pod) = template.get("spec") else {
            return;
        };
        let component = pod_meta
            .and_then(|m| m.path(&["labels", "app.kubernetes.io/component"]))
            .and_then(Node::str)
            .map(str::to_owned);
        let annotations = pod_meta.and_then(|m| m.get("annotations"));
        let scrape = annotations
            .and_then(|a| a.get("prometheus.io/port"))
            .map(|p| PortUse {
                port: p
                    .str()
                    .and_then(|s| s.parse().ok())
                    .map_or_else(|| PortRef::Name(p.str().unwrap_or("").into()), PortRef::Num),
                line: p.line,
                what: "the prometheus.io/port annotation".into(),
                metrics: true,
                path: annotations
                    .and_then(|a| a.get("prometheus.io/path"))
                    .and_then(Node::str)
                    .map(str::to_owned),
            });
        let mut volumes = BTreeMap::new();
        for v in pod.get("volumes").map_or(&[][..], Node::items) {
            let vname = v.get("name").and_then(Node::str).unwrap_or("").to_owned();
            let id = if let Some(c) = v.path(&["persistentVolumeClaim", "claimName"]) {
                format!("pvc:{}", c.str().unwrap_or(""))
            } else if let Some(c) = v.path(&["configMap", "name"]) {
                format!("configmap:{}", c.str().unwrap_or(""))
            } else {
                format!("pod volume {name}/{vname}")
            };
            volumes.insert(vname, id);
        }
        for key in ["initContainers", "containers"] {
            for c in pod.get(key).map_or(&[][..], Node::items) {
                let cname = c.get("name").and_then(Node::str).unwrap_or("");
                let mut u = Unit {
                    file: file.to_owned(),
                    group: group.to_owned(),
                    name: format!("{kind} {name}, container {cname}"),
                    line: c.line,
                    k8s: true,
                    image: c.get("image").and_then(Node::str).map(str::to_owned),
                    component: component.clone(),
                    ..Unit::default()
                };
                let mut toks = Vec::new();
                for key in ["command", "args"] {
                    if let Some(n) = c.get(key) {
                        toks.extend(tokens(n));
                    }
                }
                let limits = c.path(&["resources", "limits"]);
                for e in c.get("env").map_or(&[][..], Node::items) {
                    let ename = e.get("name").and_then(Node::str).unwrap_or("").to_owned();
                    let value = if let Some(v) = e.get("value") {
                        v.str().and_then(|v| expand(v, &u.env))
                    } else if let Some(f) = e.path(&["valueFrom", "fieldRef", "fieldPath"]) {
                        match f.str() {
                            Some("metadata.name") => Some(format!("{name}-0")),
                            Some("metadata.namespace") => Some("adjoint".to_owned()),
                            _ => Some("stand-in".to_owned()),
                        }
                    } else if let Some(r) = e.path(&["valueFrom", "resourceFieldRef"]) {
                        let resource = r.get("resource").and_then(Node::str).unwrap_or("");
                        let divisor = r.get("divisor").and_then(Node::str).unwrap_or("1");
                        let limit = resource
                            .strip_prefix("limits.")
                            .and_then(|res| limits?.get(res)?.str());
                        Some(
                            limit
                                .and_then(|l| quantity(l, divisor))
                                .unwrap_or(1)
                                .to_string(),
                        )
                    } else {
                        None
                    };
                    u.env.push(Env {
                        name: ename,
                        value,
                        line: e.line,
                    });
                }
                let toks: Vec<Tok> = toks
                    .into_iter()
                    .map(|t| Tok {
                        text: expand(&t.text, &u.env).unwrap_or(t.text),
                        line: t.line,
                    })
                    .collect();
                set_role(&mut u, &toks);
                for p in c.get("ports").map_or(&[][..], Node::items) {
                    let cp = p.get("containerPort");
                    let n = cp.and_then(Node::str).and_then(|s| s.parse().ok());
                    match n {
                        Some(n) => {
                            let line = cp.map_or(p.line, |c| c.line);
                            u.exposed.push((n, line, "containerPort".into()));
                            if let Some(pn) = p.get("name").and_then(Node::str) {
                                u.named_ports.insert(pn.to_owned(), n);
                            }
                        }
                        None => self
                            .problems
                            .push(format!("{file}:{}: a port without a containerPort", p.line)),
                    }
                }
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let Some(pr) = c.get(probe) else { continue };
                    for (kind, metrics) in
                        [("httpGet", true), ("tcpSocket", false), ("grpc", false)]
                    {
                        let Some(h) = pr.get(kind) else { continue };
                        let Some(port) = h.get("port") else { continue };
                        let text = port.str().unwrap_or("");
                        u.uses.push(PortUse {
                            port: text
                                .parse()
                                .map_or_else(|_| PortRef::Name(text.to_owned()), PortRef::Num),
                            line: port.line,
                            what: format!("the {probe}"),
                            metrics,
                            path: metrics.then(|| {
                                h.get("path").and_then(Node::str).unwrap_or("/").to_owned()
                            }),
                        });
                    }
                }
                u.uses.extend(scrape.clone());
                for vm in c.get("volumeMounts").map_or(&[][..], Node::items) {
                    let vname = vm.get("name").and_then(Node::str).unwrap_or("");
                    let path = vm.get("mountPath").and_then(Node::str).unwrap_or("");
                    match volumes.get(vname) {
                        Some(id) => u.mounts.push(Mount {
                            volume: id.clone(),
                            path: path.to_owned(),
                            line: vm.line,
                        }),
                        None => self.problems.push(format!(
                            "{file}:{}: volumeMount {vname}: no such volume in the pod",
                            vm.line
                        )),
                    }
                }
                self.units.push(u);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The checks.

/// A flag as given: (long name, value, line).
type Given = (String, Option<String>, usize);

/// What a unit asks of its role: flags as given, and the settings in
/// effect as this test resolves them: key -> (value, where it comes from).
#[derive(Debug, Default)]
struct Resolved {
    flags: Vec<Given>,
    settings: BTreeMap<String, (String, String)>,
    /// The config file a unit reads, when it is a ConfigMap key.
    config: Option<String>,
}

/// The names each check found in use, with where (for --help and docs).
#[derive(Debug, Default)]
struct Used {
    flags: BTreeMap<(Role, String), String>,
    binaries: BTreeSet<(Role, String)>,
    envs: BTreeMap<(String, Option<Role>), String>,
    keys: BTreeMap<(Role, String), String>,
}

struct Check<'a> {
    m: &'a Manifests,
    specs: &'a Specs,
    problems: Vec<String>,
    used: Used,
    resolved: Vec<Resolved>,
}

impl<'a> Check<'a> {
    fn new(m: &'a Manifests, specs: &'a Specs) -> Check<'a> {
        Check {
            m,
            specs,
            problems: m.problems.clone(),
            used: Used::default(),
            resolved: Vec::new(),
        }
    }

    fn run(mut self) -> (Vec<String>, Used, Vec<Resolved>) {
        let m = self.m;
        for unit in &m.units {
            let r = self.unit(unit);
            self.resolved.push(r);
        }
        self.config_files();
        self.ports();
        self.groups();
        self.services();
        self.images();
        (self.problems, self.used, self.resolved)
    }

    fn unit(&mut self, u: &Unit) -> Resolved {
        let role = u.role.as_ref().map(|r| r.0);
        for e in &u.env {
            if e.name.starts_with("OTEL_") {
                self.used
                    .envs
                    .entry((e.name.clone(), None))
                    .or_insert_with(|| u.at(e.line));
                if !OTEL_VARS.contains(&e.name.as_str()) {
                    self.problems.push(format!(
                        "{}: {} is not one of the OTEL_* variables adjoint reads ({})",
                        u.at(e.line),
                        e.name,
                        OTEL_VARS.join(", ")
                    ));
                }
            }
            if !e.name.starts_with("ADJOINT_") {
                continue;
            }
            self.used
                .envs
                .entry((e.name.clone(), role))
                .or_insert_with(|| u.at(e.line));
            match role {
                Some(role) => {
                    let spec = self.specs.get(role);
                    if spec.by_env(&e.name).is_none() {
                        self.problems.push(format!(
                            "{}: {} is set on {}, which runs `adjoint {}`, but that reads none such \
                             (its variables: {})",
                            u.at(e.line),
                            e.name,
                            u.name,
                            role.name(),
                            spec.envs()
                        ));
                    }
                }
                // The image, or a ConfigMap's variables: either role may
                // read them.
                None if u.name.starts_with("stage ") || u.name.starts_with("ConfigMap ") => {
                    if !self.specs.any_env(&e.name) {
                        self.problems.push(format!(
                            "{}: {} is no variable of adjoint server or worker",
                            u.at(e.line),
                            e.name
                        ));
                    }
                }
                None => self.problems.push(format!(
                    "{}: {} is set on {}, which runs neither `adjoint server` nor `adjoint worker`",
                    u.at(e.line),
                    e.name,
                    u.name
                )),
            }
        }
        let Some((role, bin, _)) = &u.role else {
            return Resolved::default();
        };
        let spec = self.specs.get(*role);
        self.used.binaries.insert((*role, bin.clone()));
        let mut given: Vec<Given> = Vec::new();
        let mut i = 0;
        while i < u.args.len() {
            let t = &u.args[i];
            i += 1;
            if t.text == "--help" || t.text == "-h" {
                continue;
            }
            let Some(body) = t.text.strip_prefix("--") else {
                let what = if t.text.starts_with('-') {
                    "short flags: it has none"
                } else {
                    "arguments that are no flags: it takes none"
                };
                self.problems.push(format!(
                    "{}: `{}` given to `adjoint {}`, which takes no {what}",
                    u.at(t.line),
                    t.text,
                    role.name()
                ));
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let Some(flag) = spec.flag(name) else {
                self.problems.push(format!(
                    "{}: `--{name}` is not a flag of `adjoint {}` (its flags: {})",
                    u.at(t.line),
                    role.name(),
                    spec.longs()
                ));
                continue;
            };
            self.used
                .flags
                .entry((*role, name.to_owned()))
                .or_insert_with(|| u.at(t.line));
            let value = if !flag.takes_value {
                if inline.is_some() {
                    self.problems
                        .push(format!("{}: `--{name}` takes no value", u.at(t.line)));
                }
                None
            } else if inline.is_some() {
                inline
            } else if let Some(v) = u.args.get(i) {
                i += 1;
                Some(v.text.clone())
            } else {
                self.problems
                    .push(format!("{}: `--{name}` needs a value", u.at(t.line)));
                None
            };
            given.push((name.to_owned(), value, t.line));
        }
        // The settings in effect: the config file, under the variables,
        // under the flags.
        let mut r = Resolved {
            flags: given,
            ..Resolved::default()
        };
        let config = r
            .flags
            .iter()
            .find(|g| g.0 == "config")
            .map(|g| (g.1.clone(), g.2))
            .or_else(|| {
                u.env_value("ADJOINT_CONFIG")
                    .map(|e| (e.value.clone(), e.line))
            });
        if let Some((Some(path), line)) = config {
            self.config_file(u, *role, &path, line, &mut r);
        }
        for e in &u.env {
            if let (Some(flag), Some(value)) = (spec.by_env(&e.name), &e.value)
                && flag.is_setting()
            {
                r.settings.insert(
                    flag.key(),
                    (value.clone(), format!("{} at {}", e.name, u.at(e.line))),
                );
            }
        }
        for (name, value, line) in &r.flags {
            if let (Some(flag), Some(value)) = (spec.flag(name), value)
                && flag.is_setting()
            {
                r.settings.insert(
                    flag.key(),
                    (value.clone(), format!("--{name} at {}", u.at(*line))),
                );
            }
        }
        r
    }

    /// The settings of the config file a unit reads.
    fn config_file(&mut self, u: &Unit, role: Role, path: &str, line: usize, r: &mut Resolved) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(cfg) = self.m.configs.get(name) else {
            self.problems.push(format!(
                "{}: config file {path}: no ConfigMap in deploy/ has a key {name}",
                u.at(line)
            ));
            return;
        };
        if u.k8s {
            let mounted = u.mounts.iter().any(|mt| {
                mt.path.trim_end_matches('/') == dir
                    && mt.volume == format!("configmap:{}", cfg.map)
            });
            if !mounted {
                self.problems.push(format!(
                    "{}: config file {path}: ConfigMap {} is not mounted at {dir} in {}",
                    u.at(line),
                    cfg.map,
                    u.name
                ));
            }
        }
        let table: toml::Table = match cfg.text.parse() {
            Ok(t) => t,
            Err(e) => {
                self.problems.push(format!(
                    "{}:{}: {name} is not TOML: {e}",
                    cfg.file, cfg.line
                ));
                return;
            }
        };
        r.config = Some(name.to_owned());
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            let at = format!("{name} at {}:{}", cfg.file, cfg.key_line(&key));
            self.used
                .keys
                .entry((role, key.clone()))
                .or_insert_with(|| format!("{}:{}", cfg.file, cfg.key_line(&key)));
            r.settings.insert(key, (text, at));
        }
    }

    /// Every key of every config file is a setting of the role that reads
    /// it (by the units that use it, else by its name).
    fn config_files(&mut self) {
        for (name, cfg) in &self.m.configs {
            let mut roles: BTreeSet<Role> = self
                .m
                .units
                .iter()
                .zip(&self.resolved)
                .filter(|(_, r)| r.config.as_deref() == Some(name.as_str()))
                .filter_map(|(u, _)| u.role.as_ref().map(|r| r.0))
                .collect();
            if roles.is_empty() {
                roles.extend(Role::ALL.into_iter().filter(|r| name.starts_with(r.name())));
            }
            if roles.is_empty() {
                self.problems.push(format!(
                    "{}:{}: {name}: no adjoint server or worker reads it, and its name says \
                     neither server nor worker",
                    cfg.file, cfg.line
                ));
            }
            let table: toml::Table = match cfg.text.parse() {
                Ok(t) => t,
                Err(e) => {
                    self.problems.push(format!(
                        "{}:{}: {name} is not TOML: {e}",
                        cfg.file, cfg.line
                    ));
                    continue;
                }
            };
            for role in roles {
                let spec = self.specs.get(role);
                for (key, value) in &table {
                    let line = cfg.key_line(key);
                    self.used
                        .keys
                        .entry((role, key.clone()))
                        .or_insert_with(|| format!("{}:{line}", cfg.file));
                    if spec.by_key(key).is_none() {
                        self.problems.push(format!(
                            "{}:{line}: `{key}` in {name} is not a setting of `adjoint {}` \
                             (its keys: {})",
                            cfg.file,
                            role.name(),
                            spec.keys()
                        ));
                    }
                    if value.is_table() || value.is_array() {
                        self.problems.push(format!(
                            "{}:{line}: `{key}` in {name}: settings are plain values",
                            cfg.file
                        ));
                    }
                }
            }
        }
    }

    /// The ports a unit listens on: (port, setting).
    fn listening(&self, i: usize) -> Vec<(u16, String)> {
        let Some((role, _, _)) = &self.m.units[i].role else {
            return Vec::new();
        };
        role.listen_keys()
            .iter()
            .filter_map(|k| {
                let (v, _) = self.resolved[i].settings.get(*k)?;
                Some((port_of(v)?, (*k).to_owned()))
            })
            .filter(|(p, _)| *p != 0)
            .collect()
    }

    fn ports(&mut self) {
        for (i, u) in self.m.units.iter().enumerate() {
            let Some((role, _, _)) = &u.role else {
                continue;
            };
            let listening = self.listening(i);
            let list = || {
                let v: Vec<String> = listening
                    .iter()
                    .map(|(p, k)| format!("{p} ({k})"))
                    .collect();
                if v.is_empty() {
                    "nothing".to_owned()
                } else {
                    v.join(", ")
                }
            };
            for (port, line, what) in &u.exposed {
                if !listening.iter().any(|(p, _)| p == port) {
                    self.problems.push(format!(
                        "{}: port {port} is exposed ({what}) but `adjoint {}` in {} listens on {}",
                        u.at(*line),
                        role.name(),
                        u.name,
                        list()
                    ));
                }
            }
            if u.k8s {
                for (port, key) in &listening {
                    if !u.exposed.iter().any(|(p, _, _)| p == port) {
                        self.problems.push(format!(
                            "{}: `adjoint {}` listens on {port} ({key}) but {} declares no \
                             containerPort {port}",
                            u.at(u.line),
                            role.name(),
                            u.name
                        ));
                    }
                }
            }
            let metrics = self.resolved[i]
                .settings
                .get("metrics_listen")
                .and_then(|(v, _)| port_of(v));
            for use_ in &u.uses {
                let port = match &use_.port {
                    PortRef::Num(n) => Some(*n),
                    PortRef::Name(n) => u.named_ports.get(n).copied(),
                };
                let Some(port) = port else {
                    self.problems.push(format!(
                        "{}: {} uses port {}, which {} does not declare",
                        u.at(use_.line),
                        use_.what,
                        use_.port,
                        u.name
                    ));
                    continue;
                };
                if use_.metrics && metrics != Some(port) {
                    self.problems.push(format!(
                        "{}: {} asks port {port} for metrics, but the metrics listen on {}",
                        u.at(use_.line),
                        use_.what,
                        metrics.map_or("no port (metrics_listen is not set)".into(), |m| m
                            .to_string())
                    ));
                } else if !use_.metrics && !listening.iter().any(|(p, _)| *p == port) {
                    self.problems.push(format!(
                        "{}: {} uses port {port}, but `adjoint {}` listens on {}",
                        u.at(use_.line),
                        use_.what,
                        role.name(),
                        list()
                    ));
                }
                if let Some(path) = &use_.path
                    && !METRICS_PATHS.contains(&path.as_str())
                {
                    self.problems.push(format!(
                        "{}: {} asks for {path}; the metrics port answers {}",
                        u.at(use_.line),
                        use_.what,
                        METRICS_PATHS.join(" and ")
                    ));
                }
            }
            if *role == Role::Worker {
                let s = &self.resolved[i].settings;
                let ring = s.get("ring_listen").and_then(|(v, _)| port_of(v));
                if let Some((adv, at)) = s.get("ring_advertise") {
                    let port = port_of(adv);
                    if port.is_none() || port != ring || ring == Some(0) {
                        self.problems.push(format!(
                            "{}: ring_advertise {adv} ({at}) is not the port the ring listens on ({})",
                            u.at(u.line),
                            s.get("ring_listen").map_or("127.0.0.1:0, the default", |v| &v.0)
                        ));
                    }
                } else if u.k8s || u.file.contains("compose") {
                    self.problems.push(format!(
                        "{}: {} sets no ring_advertise: its peers would dial the address it binds",
                        u.at(u.line),
                        u.name
                    ));
                }
            }
        }
    }

    /// Workers find the coordinator where it listens and share its store.
    fn groups(&mut self) {
        let groups: BTreeSet<&str> = self.m.units.iter().map(|u| u.group.as_str()).collect();
        for group in groups {
            let of = |role: Role| -> Vec<usize> {
                (0..self.m.units.len())
                    .filter(|&i| {
                        let u = &self.m.units[i];
                        u.group == group
                            && u.role.as_ref().is_some_and(|r| r.0 == role)
                            && !u.name.contains(" in stage ")
                    })
                    .collect()
            };
            let (servers, workers) = (of(Role::Server), of(Role::Worker));
            if servers.len() != 1 || workers.is_empty() {
                continue;
            }
            let s = servers[0];
            let (server, ss) = (&self.m.units[s], &self.resolved[s].settings);
            let listen = ss
                .get("listen")
                .and_then(|(v, _)| port_of(v))
                .unwrap_or(50051);
            let store = ss.get("store").map(|(v, _)| v.clone()).or_else(|| {
                ss.get("data_dir")
                    .map(|(d, _)| format!("{}/store", d.trim_end_matches('/')))
            });
            for &w in &workers {
                let (worker, ws) = (&self.m.units[w], &self.resolved[w].settings);
                match ws.get("coordinator") {
                    None => self.problems.push(format!(
                        "{}: {} sets no coordinator: it would look on 127.0.0.1",
                        worker.at(worker.line),
                        worker.name
                    )),
                    Some((url, at)) => match host_port(url) {
                        None => self.problems.push(format!(
                            "{}: coordinator {url} ({at}): no host:port",
                            worker.at(worker.line)
                        )),
                        Some((host, port)) => {
                            let target = if server.k8s {
                                self.service_target(&host, port, server)
                            } else if host == server.short_name() {
                                Some(port)
                            } else {
                                None
                            };
                            if target != Some(listen) {
                                self.problems.push(format!(
                                    "{}: coordinator {url} ({at}) does not reach {}, which listens \
                                     on {listen}",
                                    worker.at(worker.line),
                                    server.name
                                ));
                            }
                        }
                    },
                }
                let wstore = ws.get("store").map(|(v, _)| v.clone());
                if wstore.as_deref().map(|p| p.trim_end_matches('/'))
                    != store.as_deref().map(|p| p.trim_end_matches('/'))
                {
                    self.problems.push(format!(
                        "{}: {} uses the store {} but the coordinator ({}) uses {}",
                        worker.at(worker.line),
                        worker.name,
                        wstore.as_deref().unwrap_or("(none)"),
                        server.name,
                        store.as_deref().unwrap_or("(none)")
                    ));
                    continue;
                }
                let Some(store) = &store else { continue };
                let on = |u: &Unit| -> Option<Mount> {
                    u.mounts
                        .iter()
                        .filter(|mt| {
                            let p = mt.path.trim_end_matches('/');
                            store == p || store.starts_with(&format!("{p}/"))
                        })
                        .max_by_key(|mt| mt.path.len())
                        .cloned()
                };
                match (on(server), on(worker)) {
                    (Some(a), Some(b)) if a.volume == b.volume && a.path == b.path => {}
                    (a, b) => self.problems.push(format!(
                        "{}: the store {store} is on {} in {} but on {} in {}: the workers would \
                         not see the coordinator's blobs",
                        worker.at(b.as_ref().map_or(worker.line, |m| m.line)),
                        a.map_or("no volume".to_owned(), |m| format!(
                            "{} at {}",
                            m.volume, m.path
                        )),
                        server.name,
                        b.map_or("no volume".to_owned(), |m| format!(
                            "{} at {}",
                            m.volume, m.path
                        )),
                        worker.name
                    )),
                }
            }
        }
        // OTLP endpoints that name a compose service running a collector
        // configured here use its port.
        for u in &self.m.units {
            for e in &u.env {
                if !e.name.starts_with("OTEL_EXPORTER_OTLP") {
                    continue;
                }
                let Some((host, port)) = e.value.as_deref().and_then(host_port) else {
                    continue;
                };
                let collector = self
                    .m
                    .units
                    .iter()
                    .find(|c| c.group == u.group && !c.k8s && c.short_name() == host);
                let Some(collector) = collector else { continue };
                for mt in &collector.mounts {
                    let name = mt.volume.rsplit('/').next().unwrap_or("");
                    if let Some(want) = self.m.collectors.get(name)
                        && *want != port
                    {
                        self.problems.push(format!(
                            "{}: {} sends to port {port}, but {} takes OTLP/gRPC on {want} ({name})",
                            u.at(e.line),
                            e.name,
                            collector.name
                        ));
                    }
                }
            }
        }
    }

    /// The container port a Service `host:port` reaches in `server`'s pods.
    fn service_target(&self, host: &str, port: u16, server: &Unit) -> Option<u16> {
        let name = host.split('.').next()?;
        let svc = self.m.services.iter().find(|s| s.name == name)?;
        if svc.component != server.component {
            return None;
        }
        let (_, target, _) = svc.ports.iter().find(|(p, _, _)| *p == port)?;
        match target {
            PortRef::Num(n) => Some(*n),
            PortRef::Name(n) => server.named_ports.get(n).copied(),
        }
    }

    /// Services select a workload here and reach ports it declares;
    /// Service links do not shadow adjoint's variables.
    fn services(&mut self) {
        for svc in &self.m.services {
            let selected: Vec<&Unit> = self
                .m
                .units
                .iter()
                .filter(|u| u.k8s && u.component.is_some() && u.component == svc.component)
                .collect();
            if selected.is_empty() {
                self.problems.push(format!(
                    "{}:{}: Service {} selects no workload in deploy/ (app.kubernetes.io/component \
                     {:?})",
                    svc.file, svc.line, svc.name, svc.component
                ));
            }
            for u in &selected {
                for (port, target, line) in &svc.ports {
                    let resolved = match target {
                        PortRef::Num(n) => u.exposed.iter().any(|(p, _, _)| p == n),
                        PortRef::Name(n) => u.named_ports.contains_key(n),
                    };
                    if !resolved {
                        self.problems.push(format!(
                            "{}:{line}: Service {} port {port} targets {target}, which {} does not \
                             declare",
                            svc.file, svc.name, u.name
                        ));
                    }
                }
            }
            let prefix = svc.name.to_ascii_uppercase().replace('-', "_");
            let mut injected = vec![
                format!("{prefix}_SERVICE_HOST"),
                format!("{prefix}_SERVICE_PORT"),
                format!("{prefix}_PORT"),
            ];
            for (port, _, _) in &svc.ports {
                let base = format!("{prefix}_PORT_{port}_TCP");
                injected.extend([
                    format!("{base}_PROTO"),
                    format!("{base}_PORT"),
                    format!("{base}_ADDR"),
                ]);
                injected.push(base);
            }
            for name in injected {
                if self.specs.any_env(&name) {
                    self.problems.push(format!(
                        "{}:{}: Service {} makes Kubernetes set {name} in every pod of the \
                         namespace, which adjoint reads as a setting: rename the Service",
                        svc.file, svc.line, svc.name
                    ));
                }
            }
        }
    }

    /// The images and build targets the manifests name are Dockerfile
    /// stages; those run as `IMAGE server|worker` start `adjoint`; EXPOSE
    /// lists the ports configured.
    fn images(&mut self) {
        let Some(dockerfile) = &self.m.dockerfile else {
            return;
        };
        let mut configured: BTreeMap<u16, String> = BTreeMap::new();
        for i in 0..self.m.units.len() {
            for (p, k) in self.listening(i) {
                configured.entry(p).or_insert_with(|| {
                    format!(
                        "{k} of {} in {}",
                        self.m.units[i].name, self.m.units[i].file
                    )
                });
            }
        }
        let mut used_stages = BTreeSet::new();
        for u in &self.m.units {
            let tag = u
                .image
                .as_deref()
                .filter(|im| image_repo(im) == "adjoint")
                .and_then(image_tag);
            for (stage, line) in u
                .build_target
                .iter()
                .map(|(t, l)| (t.as_str(), *l))
                .chain(tag.map(|t| (t, u.line)))
            {
                match self.m.stages.get(stage) {
                    None => self.problems.push(format!(
                        "{}: image or build target {stage}: {dockerfile} has no stage {stage} \
                         (stages: {})",
                        u.at(line),
                        self.m.stages.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    Some(st) => {
                        used_stages.insert(stage.to_owned());
                        if u.role_first && st.entrypoint.as_deref() != Some(&["adjoint".to_owned()])
                        {
                            self.problems.push(format!(
                                "{}: {} gives `{}` as the first argument, but stage {stage} of \
                                 {dockerfile} does not have ENTRYPOINT [\"adjoint\"]",
                                u.at(u.role.as_ref().map_or(u.line, |r| r.2)),
                                u.name,
                                u.role.as_ref().map_or("", |r| r.0.name())
                            ));
                        }
                    }
                }
            }
        }
        let all: BTreeSet<u16> = configured.keys().copied().collect();
        for stage in used_stages {
            let st = &self.m.stages[&stage];
            for (p, line) in &st.exposes {
                if !all.contains(p) {
                    self.problems.push(format!(
                        "{dockerfile}:{line}: EXPOSE {p}: no adjoint process in deploy/ listens there"
                    ));
                }
            }
            for (p, what) in &configured {
                if !st.exposes.iter().any(|(e, _)| e == p) {
                    self.problems.push(format!(
                        "{dockerfile}:{}: stage {stage} does not EXPOSE {p} ({what})",
                        st.line
                    ));
                }
            }
        }
    }
}

/// Reads and checks `m`: the problems, what is used, and each unit's
/// settings.
fn check(m: &Manifests) -> (Vec<String>, Used, Vec<Resolved>) {
    let specs = Specs::new();
    Check::new(m, &specs).run()
}

fn report(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "deploy/ disagrees with adjoint ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// Runs a binary with the ADJOINT_* and OTEL_* of this environment
/// removed, and `env` set.
fn run(bin: &str, args: &[String], env: &[(String, String)]) -> Result<String, String> {
    let path = binary(bin);
    let mut cmd = Command::new(&path);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("ADJOINT_") || k.starts_with("OTEL_") {
            cmd.env_remove(&*k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({e}): build the binaries first (cargo build --bins)",
            path.display()
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `text` has `--long` as a whole flag.
fn has_flag(text: &str, long: &str) -> bool {
    let needle = format!("--{long}");
    text.match_indices(&needle).any(|(i, _)| {
        let next = text[i + needle.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn the_deploy_files_agree_with_the_flags_variables_and_settings() {
    let m = Manifests::read(&deploy_files());
    let roles: BTreeSet<Role> = m
        .units
        .iter()
        .filter_map(|u| u.role.as_ref().map(|r| r.0))
        .collect();
    assert_eq!(
        roles.len(),
        2,
        "deploy/ should run both a coordinator and workers; found {roles:?} in {:#?}",
        m.units.iter().map(|u| &u.name).collect::<Vec<_>>()
    );
    assert!(m.dockerfile.is_some(), "deploy/Dockerfile is read");
    assert!(
        !m.configs.is_empty(),
        "the ConfigMap's config files are read"
    );
    let (mut problems, used, _) = check(&m);

    // docs/deploy.md names whatever the manifests rely on.
    let docs_path = repo_root().join("docs/deploy.md");
    let docs = std::fs::read_to_string(&docs_path).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for ((name, _), at) in &used.envs {
        if seen.insert(name) && !docs.contains(name.as_str()) {
            problems.push(format!(
                "docs/deploy.md does not mention {name} (used at {at})"
            ));
        }
    }
    for ((role, long), at) in &used.flags {
        if !has_flag(&docs, long) {
            problems.push(format!(
                "docs/deploy.md does not mention `adjoint {}` --{long} (used at {at})",
                role.name()
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for ((_, key), at) in &used.keys {
        if seen.insert(key) && !docs.contains(&format!("`{key}`")) {
            problems.push(format!(
                "docs/deploy.md does not mention the config key `{key}` (used at {at})"
            ));
        }
    }
    report(&problems);
}

#[test]
fn the_binaries_accept_what_the_deploy_files_give_them() {
    let m = Manifests::read(&deploy_files());
    let (_, used, resolved) = check(&m);
    let mut problems = Vec::new();

    // `--help` lists every flag and variable used, for each binary used.
    for role in Role::ALL {
        let mut runs = vec![("adjoint".to_owned(), vec![role.name().to_owned()])];
        for (r, bin) in &used.binaries {
            if *r == role && bin != "adjoint" {
                runs.push((bin.clone(), Vec::new()));
            }
        }
        for (bin, mut args) in runs {
            args.push("--help".into());
            let help = match run(&bin, &args, &[]) {
                Ok(h) => h,
                Err(e) => {
                    problems.push(format!("`{bin} {}` fails: {e}", args.join(" ")));
                    continue;
                }
            };
            for ((r, long), at) in &used.flags {
                if *r == role && !has_flag(&help, long) {
                    problems.push(format!(
                        "{at}: `{bin} {}` does not list --{long}",
                        args.join(" ")
                    ));
                }
            }
            for ((name, r), at) in &used.envs {
                if *r == Some(role) && !help.contains(&format!("env: {name}=")) {
                    problems.push(format!(
                        "{at}: `{bin} {}` does not list {name}",
                        args.join(" ")
                    ));
                }
            }
        }
    }

    // Each container's flags, variables and config file, given to the
    // binary with --print-config: it accepts them, and its settings in
    // effect are the ones this test resolved.
    let dir = tempfile::tempdir().unwrap();
    let mut printed_units = 0;
    for (u, r) in m.units.iter().zip(&resolved) {
        let Some((role, _, line)) = &u.role else {
            continue;
        };
        if u.name.contains(" in stage ") {
            continue;
        }
        let local = |path: &str| -> String {
            let name = path.rsplit('/').next().unwrap_or(path);
            match m.configs.get(name) {
                Some(cfg) => {
                    let local = dir.path().join(name);
                    std::fs::write(&local, &cfg.text).unwrap();
                    local.to_string_lossy().into_owned()
                }
                None => path.to_owned(),
            }
        };
        let mut args = vec![role.name().to_owned()];
        for (long, value, _) in &r.flags {
            args.push(format!("--{long}"));
            if let Some(v) = value {
                args.push(if long == "config" {
                    local(v)
                } else {
                    v.clone()
                });
            }
        }
        args.push("--print-config".into());
        let env: Vec<(String, String)> = u
            .env
            .iter()
            .filter(|e| e.name.starts_with("ADJOINT_"))
            .filter_map(|e| {
                let v = e.value.clone()?;
                let v = if e.name == "ADJOINT_CONFIG" {
                    local(&v)
                } else {
                    v
                };
                Some((e.name.clone(), v))
            })
            .collect();
        let printed = match run("adjoint", &args, &env) {
            Ok(out) => out,
            Err(e) => {
                problems.push(format!(
                    "{}: `adjoint {}` with the variables of {} fails: {e}",
                    u.at(*line),
                    args.join(" "),
                    u.name
                ));
                continue;
            }
        };
        printed_units += 1;
        let printed: toml::Table = match printed.parse() {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!(
                    "`adjoint {} --print-config` printed no TOML ({e}):\n{printed}",
                    role.name()
                ));
                continue;
            }
        };
        for (key, (want, from)) in &r.settings {
            let Some(got) = printed.get(key) else {
                continue;
            };
            let got = match got {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if &got != want {
                problems.push(format!(
                    "{}: {} of {} is {got} for the binary, {want} by {from} for this test",
                    u.at(*line),
                    key,
                    u.name
                ));
            }
        }
    }
    assert!(
        printed_units >= 2 || !problems.is_empty(),
        "--print-config ran for {printed_units} containers: deploy/ runs no coordinator and worker?"
    );
    report(&problems);
}

/// Replaces `from` (found once) in `file` of `files`; returns the line.
fn edit(files: &mut [(String, String)], file: &str, from: &str, to: &str) -> usize {
    let (_, text) = files
        .iter_mut()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("{file} is in deploy/"));
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{file} holds {from:?}"));
    let line = text[..at].matches('\n').count() + 1;
    *text = text.replacen(from, to, 1);
    line
}

#[test]
fn a_wrong_flag_variable_key_or_port_is_named_with_its_file_and_line() {
    let mut files = deploy_files();
    let flag = edit(
        &mut files,
        "deploy/k8s/workers.yaml",
        "\"--config\"",
        "\"--confg\"",
    );
    let var = edit(
        &mut files,
        "deploy/compose.yaml",
        "ADJOINT_RING_ADVERTISE: \"worker-1:29500\"",
        "ADJOINT_RING_ADVERTIZE: \"worker-1:29500\"",
    );
    let key = edit(
        &mut files,
        "deploy/k8s/configmap.yaml",
        "heartbeat_ms = 1000",
        "heartbeat = 1000",
    );
    let port = edit(
        &mut files,
        "deploy/k8s/coordinator.yaml",
        "containerPort: 50051",
        "containerPort: 50052",
    );
    let otel = edit(
        &mut files,
        "deploy/compose.yaml",
        "OTEL_SERVICE_NAME: adjoint-coordinator",
        "OTEL_SERVICE: adjoint-coordinator",
    );
    let (problems, _, _) = check(&Manifests::read(&files));
    let all = problems.join("\n");
    for (at, what) in [
        (
            format!("deploy/k8s/workers.yaml:{flag}:"),
            "`--confg` is not a flag of `adjoint worker`",
        ),
        (
            format!("deploy/compose.yaml:{var}:"),
            "ADJOINT_RING_ADVERTIZE is set on service worker-1",
        ),
        (
            format!("deploy/k8s/configmap.yaml:{key}:"),
            "`heartbeat` in server.toml is not a setting",
        ),
        (
            format!("deploy/k8s/coordinator.yaml:{port}:"),
            "port 50052 is exposed",
        ),
        (
            format!("deploy/compose.yaml:{otel}:"),
            "OTEL_SERVICE is not one of the OTEL_* variables",
        ),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&at) && p.contains(what)),
            "no problem `{at} ...{what}...` among:\n{all}"
        );
    }
}

#[test]
fn the_yaml_reader_reads_the_subset_the_manifests_use_and_refuses_the_rest() {
    let text = "\
# a comment
a: 1 # trailing
b:
- x
- \"y # not a comment\"
c:
  d: [one, \"t,w\\\\o\", 'it''s']
  e: |
    k = \"v\"   # kept
    # kept too

  f: {}
g:
  - name: n
    value: $(N).svc:1
  -
    nested: true
---
h: 'end'
";
    let docs = parse_yaml(text).unwrap();
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    assert_eq!(d.get("a").and_then(Node::str), Some("1"));
    let b: Vec<_> = d
        .get("b")
        .unwrap()
        .items()
        .iter()
        .map(|n| n.str().unwrap())
        .collect();
    assert_eq!(b, ["x", "y # not a comment"]);
    let c = d.get("c").unwrap();
    let flow: Vec<_> = c
        .get("d")
        .unwrap()
        .items()
        .iter()
        .map(|n| n.str().unwrap())
        .collect();
    assert_eq!(flow, ["one", "t,w\\o", "it's"]);
    assert_eq!(
        c.get("e").and_then(Node::str),
        Some("k = \"v\"   # kept\n# kept too\n")
    );
    assert_eq!(c.get("e").unwrap().line, 8);
    assert!(c.get("f").unwrap().entries().is_empty());
    let g = d.get("g").unwrap().items();
    assert_eq!(g[0].get("value").and_then(Node::str), Some("$(N).svc:1"));
    assert_eq!(g[0].get("value").unwrap().line, 15);
    assert_eq!(g[1].get("nested").and_then(Node::str), Some("true"));
    assert_eq!(docs[1].get("h").and_then(Node::str), Some("end"));
    assert_eq!(docs[1].line, 19);

    for bad in [
        "a: &x 1\n",
        "a: {b: 1}\n",
        "a:\n  b: 1\n   c: 2\n",
        "a: 1\na: 2\n",
        "a:\n\t- b\n",
        "a: [b, [c]]\n",
        "a: \"open\n",
        "a:\n  plain\n  more\n",
    ] {
        assert!(parse_yaml(bad).is_err(), "{bad:?} should be refused");
    }
}
