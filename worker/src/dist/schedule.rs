//! Learning-rate schedules: constant or cosine decay to a floor, each after
//! an optional linear warmup.

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    /// The base rate.
    Constant,
    /// Cosine decay from the base rate to `min_lr`, reached at the last step.
    Cosine { min_lr: f32 },
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Steps of linear warmup: step `s < warmup_steps` uses
    /// `base · (s + 1) / warmup_steps`.
    pub warmup_steps: u64,
    /// Steps of the whole run (the cosine reaches `min_lr` at the last one).
    pub total_steps: u64,
}

impl LrSchedule {
    /// The base rate at every step.
    pub fn constant() -> LrSchedule {
        LrSchedule {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    /// Parses `constant` or `cosine` (empty means constant).
    pub fn parse(
        kind: &str,
        warmup_steps: u64,
        min_lr: f32,
        total_steps: u64,
    ) -> crate::Result<LrSchedule> {
        let kind = match kind {
            "" | "constant" => ScheduleKind::Constant,
            "cosine" => ScheduleKind::Cosine { min_lr },
            other => {
                return Err(crate::Error::Data(format!(
                    "unknown learning-rate schedule '{other}': use constant or cosine"
                )));
            }
        };
        Ok(LrSchedule {
            kind,
            warmup_steps,
            total_steps,
        })
    }

    /// The rate of optimizer step `step` (0-based) for base rate `base`.
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        if step < self.warmup_steps {
            return base * (step + 1) as f32 / self.warmup_steps as f32;
        }
        match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Cosine { min_lr } => {
                let span = self
                    .total_steps
                    .saturating_sub(self.warmup_steps + 1)
                    .max(1);
                let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
                (f64::from(min_lr) + (f64::from(base) - f64::from(min_lr)) * c) as f32
            }
        }
    }
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule::constant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = LrSchedule::parse("cosine", 4, 0.1, 14).unwrap();
        assert_eq!(s.lr(1.0, 0), 0.25);
        assert_eq!(s.lr(1.0, 3), 1.0);
        assert_eq!(s.lr(1.0, 4), 1.0);
        assert!((s.lr(1.0, 13) - 0.1).abs() < 1e-6);
        assert!(s.lr(1.0, 8) < 1.0 && s.lr(1.0, 8) > 0.1);
        assert_eq!(LrSchedule::constant().lr(0.5, 100), 0.5);
        assert!(LrSchedule::parse("step", 0, 0.0, 1).is_err());
    }
}
