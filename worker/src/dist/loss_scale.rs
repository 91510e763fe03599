//! Dynamic loss scaling for fp16 training, with PyTorch `GradScaler`'s
//! rules and DeepSpeed's floor: backward is seeded with the scale, the
//! all-reduced gradients are divided by it; a step whose gradients are not
//! finite is an overflow: its update is skipped and the scale halves. After
//! `growth_interval` good steps in a row the scale doubles. Every rank sees
//! the same all-reduced gradients, so all decide alike.

/// Settings of the scaler (PyTorch's defaults; the floor is DeepSpeed's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaleConfig {
    /// The first step's scale.
    pub init: f32,
    /// Good steps in a row before the scale doubles.
    pub growth_interval: u64,
    /// An overflow at this scale is a real NaN/Inf: the job's `nan_policy`
    /// decides.
    pub min: f32,
}

impl Default for LossScaleConfig {
    fn default() -> LossScaleConfig {
        LossScaleConfig {
            init: 65536.0,
            growth_interval: 2000,
            min: 1.0,
        }
    }
}

/// What the scaler made of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Gradients finite: update.
    Apply,
    /// Gradients overflowed: skip the update; the scale is now `next`.
    Overflow { next: f32 },
    /// Gradients not finite at the floor scale: not an overflow.
    NotFinite,
}

/// The scale and the run of good steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    cfg: LossScaleConfig,
    scale: f32,
    good_steps: u64,
}

impl LossScaler {
    pub fn new(cfg: LossScaleConfig) -> LossScaler {
        LossScaler {
            cfg,
            scale: cfg.init.max(cfg.min),
            good_steps: 0,
        }
    }

    /// The scale this step's backward is seeded with.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Good steps since the scale last changed.
    pub fn good_steps(&self) -> u64 {
        self.good_steps
    }

    /// Resumes at `scale` after `good_steps` good steps (a checkpoint's).
    pub fn resume(&mut self, scale: f32, good_steps: u64) {
        self.scale = scale.max(self.cfg.min);
        self.good_steps = good_steps;
    }

    /// Updates the scale after a step whose gradients were (not) finite.
    pub fn update(&mut self, finite: bool) -> Verdict {
        if finite {
            self.good_steps += 1;
            if self.cfg.growth_interval > 0 && self.good_steps >= self.cfg.growth_interval {
                let grown = self.scale * 2.0;
                if grown.is_finite() {
                    self.scale = grown;
                }
                self.good_steps = 0;
            }
            return Verdict::Apply;
        }
        self.good_steps = 0;
        if self.scale <= self.cfg.min {
            return Verdict::NotFinite;
        }
        self.scale = (self.scale / 2.0).max(self.cfg.min);
        Verdict::Overflow { next: self.scale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_grows_after_good_steps_and_stops_at_the_floor() {
        let mut s = LossScaler::new(LossScaleConfig {
            init: 8.0,
            growth_interval: 3,
            min: 2.0,
        });
        assert_eq!(s.update(false), Verdict::Overflow { next: 4.0 });
        assert_eq!(s.update(true), Verdict::Apply);
        assert_eq!(s.update(true), Verdict::Apply);
        assert_eq!(s.scale(), 4.0);
        assert_eq!(s.update(true), Verdict::Apply);
        assert_eq!(s.scale(), 8.0);
        // An overflow resets the run of good steps.
        s.update(true);
        s.update(true);
        assert_eq!(s.update(false), Verdict::Overflow { next: 4.0 });
        assert_eq!(s.update(false), Verdict::Overflow { next: 2.0 });
        assert_eq!(s.update(false), Verdict::NotFinite);
        assert_eq!(s.scale(), 2.0);
    }
}
