//! What a check reports: the three comparisons and their outcome, and how
//! the elementwise and inner-product comparisons are measured.

use std::fmt;

use super::Options;
use crate::interp::{Tensor, unravel};

/// The element where finite differences and J·v disagree most.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst {
    /// Name of the output.
    pub output: String,
    /// Multi-index of the element in the output.
    pub index: Vec<usize>,
    pub fd: f64,
    pub jvp: f64,
    /// `|fd − jvp|`.
    pub error: f64,
    /// `atol + rtol·max(|fd|, |jvp|)`.
    pub allowed: f64,
}

/// FD against J·v, element by element.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementCheck {
    pub elements: usize,
    /// Elements outside the tolerance (NaNs count as failures).
    pub failed: usize,
    /// The element with the largest error relative to its tolerance.
    pub worst: Option<Worst>,
}

impl ElementCheck {
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// Two inner products that should agree.
#[derive(Debug, Clone, PartialEq)]
pub struct DotCheck {
    pub lhs: f64,
    pub rhs: f64,
    /// `|lhs − rhs|`.
    pub error: f64,
    pub allowed: f64,
}

impl DotCheck {
    pub fn passed(&self) -> bool {
        self.error <= self.allowed
    }
}

/// The outcome of one gradient check. `Display` names each check, whether
/// it passed and its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The graph checked.
    pub graph: String,
    /// 1 for [`check`](super::check), 2 for
    /// [`check_second_order`](super::check_second_order).
    pub order: u32,
    /// Names of the `wrt` values and of the float outputs compared.
    pub wrt: Vec<String>,
    pub outputs: Vec<String>,
    /// FD vs J·v, elementwise.
    pub fd_vs_jvp: ElementCheck,
    /// `⟨u, FD⟩` vs `⟨Jᵀu, v⟩`.
    pub fd_vs_vjp: DotCheck,
    /// `⟨u, J·v⟩` vs `⟨Jᵀu, v⟩`.
    pub adjoint: DotCheck,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.fd_vs_jvp.passed() && self.fd_vs_vjp.passed() && self.adjoint.passed()
    }

    /// `Ok(self)` when every check passed, else `Err` with the report text.
    pub fn into_result(self) -> Result<Report, String> {
        if self.passed() {
            Ok(self)
        } else {
            Err(self.to_string())
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "pass" } else { "FAIL" }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gradcheck of '{}' (order {}) wrt [{}], outputs [{}]: {}",
            self.graph,
            self.order,
            self.wrt.join(", "),
            self.outputs.join(", "),
            if self.passed() { "passed" } else { "FAILED" }
        )?;
        let e = &self.fd_vs_jvp;
        write!(
            f,
            "  FD vs J·v: {}: {} of {} elements outside tolerance",
            verdict(e.passed()),
            e.failed,
            e.elements
        )?;
        if let Some(w) = &e.worst {
            write!(
                f,
                "; worst: output '{}' at {:?}: FD {:e}, J·v {:e}, |diff| {:e} (allowed {:e})",
                w.output, w.index, w.fd, w.jvp, w.error, w.allowed
            )?;
        }
        writeln!(f)?;
        for (name, d) in [
            ("⟨u, FD⟩ vs ⟨Jᵀu, v⟩", &self.fd_vs_vjp),
            ("adjoint ⟨u, J·v⟩ vs ⟨Jᵀu, v⟩", &self.adjoint),
        ] {
            let (ok, lhs, rhs, error, allowed) =
                (verdict(d.passed()), d.lhs, d.rhs, d.error, d.allowed);
            writeln!(
                f,
                "  {name}: {ok}: {lhs:e} vs {rhs:e}, |diff| {error:e} (allowed {allowed:e})"
            )?;
        }
        Ok(())
    }
}

/// An inner product over lists of tensors and the sum of the magnitudes of
/// its terms (the scale its rounding error is relative to).
pub(super) struct Dot {
    pub(super) value: f64,
    pub(super) magnitude: f64,
}

impl Dot {
    pub(super) fn of(a: &[Tensor], b: &[Tensor]) -> Dot {
        let mut value = 0.0;
        let mut magnitude = 0.0;
        for (x, y) in a.iter().zip(b) {
            for (p, q) in x.data.iter().zip(&y.data) {
                value += p * q;
                magnitude += (p * q).abs();
            }
        }
        Dot { value, magnitude }
    }
}

pub(super) fn elementwise(
    names: &[String],
    fd: &[Tensor],
    jv: &[Tensor],
    opts: &Options,
) -> ElementCheck {
    let mut check = ElementCheck {
        elements: 0,
        failed: 0,
        worst: None,
    };
    let mut worst_ratio = -1.0;
    for ((name, f), j) in names.iter().zip(fd).zip(jv) {
        for (i, (&a, &b)) in f.data.iter().zip(&j.data).enumerate() {
            check.elements += 1;
            let error = (a - b).abs();
            let allowed = opts.atol + opts.rtol * a.abs().max(b.abs());
            let ok = error <= allowed;
            if !ok {
                check.failed += 1;
            }
            let ratio = match error / allowed {
                r if !r.is_nan() => r,
                _ if ok => 0.0,
                _ => f64::INFINITY,
            };
            if ratio > worst_ratio {
                worst_ratio = ratio;
                check.worst = Some(Worst {
                    output: name.clone(),
                    index: unravel(i, &f.shape),
                    fd: a,
                    jvp: b,
                    error,
                    allowed,
                });
            }
        }
    }
    check
}
