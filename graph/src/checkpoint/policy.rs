//! Checkpoint policies as users write them (`none`, `every:K`, `sqrt`,
//! `selective`, `budget:BYTES`) and the byte sizes inside them
//! ([`parse_bytes`], [`format_bytes`]). Parsing and printing round-trip:
//! `p.to_string().parse() == Ok(p)`.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// The accepted forms, quoted in every parse error.
pub const POLICY_FORMS: &str =
    "none, every:K (K >= 1), sqrt, selective, budget:BYTES (e.g. budget:2GiB)";

/// Which forward values a training step keeps for backward, and which it
/// recomputes just before their first backward use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep every forward value backward reads: no recompute.
    None,
    /// Keep every K-th checkpoint boundary (a forward value all later
    /// computation flows through) and recompute the layers between.
    Every(usize),
    /// Segments of about √n boundaries each (Chen et al. 2016).
    Sqrt,
    /// Keep the outputs of expensive ops (matmuls) and recompute the cheap
    /// elementwise, normalisation and layout ops (JAX `dots_saveable`).
    Selective,
    /// The least recompute whose planned arena peak is at most this many
    /// bytes.
    Budget(usize),
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::None => f.write_str("none"),
            Policy::Every(k) => write!(f, "every:{k}"),
            Policy::Sqrt => f.write_str("sqrt"),
            Policy::Selective => f.write_str("selective"),
            Policy::Budget(bytes) => write!(f, "budget:{bytes}"),
        }
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Policy> {
        let bad = |message: String| Error::BadPolicy {
            input: s.to_owned(),
            message: format!("{message}; accepted forms: {POLICY_FORMS}"),
        };
        let text = s.trim();
        let (head, arg) = match text.split_once(':') {
            Some((h, a)) => (h.trim(), Some(a.trim())),
            None => (text, None),
        };
        match (head.to_ascii_lowercase().as_str(), arg) {
            ("none", None) => Ok(Policy::None),
            ("sqrt", None) => Ok(Policy::Sqrt),
            ("selective", None) => Ok(Policy::Selective),
            ("none" | "sqrt" | "selective", Some(_)) => {
                Err(bad(format!("'{head}' takes no argument")))
            }
            ("every", Some(k)) => match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Policy::Every(k)),
                _ => Err(bad(format!(
                    "every:K needs a whole number K >= 1, found '{k}'"
                ))),
            },
            ("budget", Some(b)) => parse_bytes(b)
                .map(Policy::Budget)
                .map_err(|e| bad(format!("budget: {e}"))),
            ("every" | "budget", None) => Err(bad(format!("'{head}' needs an argument after ':'"))),
            ("", _) => Err(bad("empty policy".into())),
            _ => Err(bad(format!("unknown policy '{head}'"))),
        }
    }
}

/// Multipliers of the accepted units, longest names first.
const UNITS: [(&str, u64); 7] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("B", 1),
];

/// Parses a byte size: a whole number, optionally followed by one of
/// `B KiB MiB GiB KB MB GB` (case-sensitive, space allowed), as in
/// `memory_budget = "2GiB"`. A fractional number is accepted with a unit
/// (`1.5GiB`) and rounded down to whole bytes. The error names what is
/// wrong and the accepted forms.
pub fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let forms = "a whole number of bytes, optionally with a unit B, KiB, MiB, GiB, KB, MB or GB \
                 (e.g. 2GiB, 512MiB, 1000000)";
    if number.is_empty() {
        return Err(format!("'{s}' is not a byte size: expected {forms}"));
    }
    let scale = if unit.is_empty() {
        1
    } else {
        match UNITS.iter().find(|(name, _)| *name == unit) {
            Some(&(_, m)) => m,
            None => return Err(format!("'{s}': unknown unit '{unit}': expected {forms}")),
        }
    };
    let too_big = || format!("'{s}' does not fit in {} bits", usize::BITS);
    if number.contains('.') {
        if unit.is_empty() || unit == "B" {
            return Err(format!("'{s}': a fraction of a byte; expected {forms}"));
        }
        let x: f64 = number
            .parse()
            .map_err(|_| format!("'{s}': '{number}' is not a number; expected {forms}"))?;
        let bytes = (x * scale as f64).floor();
        if !bytes.is_finite() || bytes >= usize::MAX as f64 {
            return Err(too_big());
        }
        return Ok(bytes as usize);
    }
    let n: u64 = number.parse().map_err(|_| too_big())?;
    n.checked_mul(scale)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(too_big)
}

/// A byte count for people: `1536 B (1.5 KiB)`-style short form, with the
/// largest binary unit that keeps the number at least 1 (`1.50 KiB`,
/// `64.0 MiB`, `999 B`).
pub fn format_bytes(bytes: usize) -> String {
    const NAMES: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut x = bytes as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < NAMES.len() {
        x /= 1024.0;
        unit += 1;
    }
    let digits = if x < 10.0 {
        2
    } else if x < 100.0 {
        1
    } else {
        0
    };
    format!("{x:.digits$} {}", NAMES[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale() {
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("3KB"), Ok(3000));
        assert_eq!(parse_bytes("7"), Ok(7));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("2gib").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1.5").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
        assert_eq!(format_bytes(300 << 30), "300 GiB");
    }
}
