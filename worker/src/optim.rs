//! Optimizers: a separate stage after backward, over the flat trainable
//! parameter and gradient views (one pass for all parameters).

use adjoint_kernels::{AdamWParams, Backend, BufferId, ElemType, SgdParams, View};

use crate::{Error, Result};

/// Which optimizer, with PyTorch's defaults and semantics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD`.
    Sgd {
        lr: f32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        nesterov: bool,
    },
    /// `torch.optim.AdamW`.
    AdamW {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

impl OptimizerConfig {
    pub fn sgd(lr: f32) -> OptimizerConfig {
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    pub fn adamw(lr: f32) -> OptimizerConfig {
        OptimizerConfig::AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// Parses `sgd`, `sgd:lr=0.01,momentum=0.9`, `adamw:lr=1e-3,wd=0.1`, …
    /// Keys: lr, momentum, dampening, wd (or weight_decay), nesterov,
    /// beta1, beta2, eps.
    pub fn parse(spec: &str) -> Result<OptimizerConfig> {
        let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
        let mut cfg = match name {
            "sgd" => OptimizerConfig::sgd(0.01),
            "adamw" => OptimizerConfig::adamw(1e-3),
            other => {
                return Err(Error::Data(format!(
                    "unknown optimizer '{other}': use sgd or adamw"
                )));
            }
        };
        for kv in args.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| Error::Data(format!("optimizer option '{kv}' is not key=value")))?;
            let num = || {
                value.parse::<f32>().map_err(|_| {
                    Error::Data(format!(
                        "optimizer option '{key}': '{value}' is not a number"
                    ))
                })
            };
            match (&mut cfg, key) {
                (OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::AdamW { lr, .. }, "lr") => {
                    *lr = num()?
                }
                (
                    OptimizerConfig::Sgd { weight_decay, .. }
                    | OptimizerConfig::AdamW { weight_decay, .. },
                    "wd" | "weight_decay",
                ) => *weight_decay = num()?,
                (OptimizerConfig::Sgd { momentum, .. }, "momentum") => *momentum = num()?,
                (OptimizerConfig::Sgd { dampening, .. }, "dampening") => *dampening = num()?,
                (OptimizerConfig::Sgd { nesterov, .. }, "nesterov") => {
                    *nesterov = value == "true" || value == "1"
                }
                (OptimizerConfig::AdamW { beta1, .. }, "beta1") => *beta1 = num()?,
                (OptimizerConfig::AdamW { beta2, .. }, "beta2") => *beta2 = num()?,
                (OptimizerConfig::AdamW { eps, .. }, "eps") => *eps = num()?,
                (_, other) => {
                    return Err(Error::Data(format!(
                        "optimizer '{name}' has no option '{other}'"
                    )));
                }
            }
        }
        Ok(cfg)
    }

    /// State buffers per parameter element: SGD with momentum 1, AdamW 2.
    pub fn state_per_element(&self) -> usize {
        match self {
            OptimizerConfig::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            OptimizerConfig::AdamW { .. } => 2,
        }
    }
}

/// An optimizer with its state over the flat gradient layout.
#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    state: Vec<BufferId>,
    elements: usize,
    step: u64,
}

impl Optimizer {
    /// Allocates state for `elements` f32 parameters.
    pub fn new<B: Backend>(
        backend: &mut B,
        config: OptimizerConfig,
        elements: usize,
    ) -> Result<Optimizer> {
        let state = (0..config.state_per_element())
            .map(|_| backend.alloc(elements * 4))
            .collect::<adjoint_kernels::Result<Vec<_>>>()?;
        Ok(Optimizer {
            config,
            state,
            elements,
            step: 0,
        })
    }

    /// Bytes of optimizer state.
    pub fn state_bytes(&self) -> usize {
        self.state.len() * self.elements * 4
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f32 {
        match self.config {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::AdamW { lr, .. } => lr,
        }
    }

    /// Sets the learning rate of the following steps (for schedules).
    pub fn set_lr(&mut self, new: f32) {
        match &mut self.config {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::AdamW { lr, .. } => *lr = new,
        }
    }

    /// Sets the count of steps taken (when resuming from a checkpoint: it
    /// drives SGD's first-step momentum and AdamW's bias correction).
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    /// Names of the state buffers, PyTorch's: `momentum_buffer` for SGD
    /// with momentum, `exp_avg` and `exp_avg_sq` for AdamW.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.config {
            OptimizerConfig::Sgd { .. } => &["momentum_buffer"][..self.state.len()],
            OptimizerConfig::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// The state buffers as flat f32 views over the gradient layout, in the
    /// order of [`Optimizer::state_names`].
    pub fn state_views(&self) -> Vec<View> {
        (0..self.state.len()).map(|i| self.state_view(i)).collect()
    }

    fn state_view(&self, i: usize) -> View {
        View {
            buffer: self.state[i],
            offset: 0,
            len: self.elements,
            elem: ElemType::F32,
        }
    }

    /// Updates `params` from `grads` (flat f32 views of equal length).
    pub fn step<B: Backend>(&mut self, backend: &mut B, params: View, grads: View) -> Result<()> {
        self.step_ranges(backend, params, grads, &[(0, self.elements)])
    }

    /// [`Optimizer::step`] on element ranges `(start, end)` of the flat
    /// views only: elements outside them keep their values and optimizer
    /// state (a lazy update, for experts no token chose). The step count,
    /// and so AdamW's bias correction, advances for all. SGD's first-step
    /// rule (the momentum buffer starts as the gradient) applies on the
    /// first step of the optimizer, not of each range.
    pub fn step_ranges<B: Backend>(
        &mut self,
        backend: &mut B,
        params: View,
        grads: View,
        ranges: &[(usize, usize)],
    ) -> Result<()> {
        self.step += 1;
        for &(lo, hi) in ranges {
            let sub = |v: View| View {
                offset: v.offset + 4 * lo,
                len: hi - lo,
                ..v
            };
            self.update(backend, sub(params), sub(grads), lo, hi)?;
        }
        Ok(())
    }

    /// One fused update of elements `lo..hi`, given as `params` and
    /// `grads`.
    fn update<B: Backend>(
        &mut self,
        backend: &mut B,
        params: View,
        grads: View,
        lo: usize,
        hi: usize,
    ) -> Result<()> {
        let state = |i: usize| View {
            offset: 4 * lo,
            len: hi - lo,
            ..self.state_view(i)
        };
        match self.config {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                dampening,
                weight_decay,
                nesterov,
            } => {
                let p = SgdParams {
                    lr,
                    momentum,
                    dampening,
                    weight_decay,
                    nesterov,
                    first_step: self.step == 1,
                };
                let buf = if momentum != 0.0 {
                    state(0)
                } else {
                    View { len: 0, ..params }
                };
                backend.sgd(params, grads, buf, &p)?;
            }
            OptimizerConfig::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let p = AdamWParams {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    step: self.step,
                };
                backend.adamw(params, grads, state(0), state(1), &p)?;
            }
        }
        Ok(())
    }
}
