//! From a job's `JobSpec` to the settings of [`crate::dist`]: optimizer,
//! schedule, batch and the number of steps.
//!
//! Defaults, where a field is zero (proto3 cannot tell zero from unset):
//!
//! - optimizer name: `sgd`;
//! - `sgd`: lr 0.01; momentum, dampening and weight decay stay 0;
//! - `adamw`: lr 0.001, beta1 0.9, beta2 0.999, eps 1e-8, weight decay
//!   0.01 (so an AdamW job cannot ask for weight decay exactly 0; a tiny
//!   value such as 1e-12 does the same);
//! - `grad_accum`: 1;
//! - schedule: `constant` (an empty kind);
//! - `steps`: when 0, `epochs` full passes over the data (at least 1);
//! - `checkpoint`: `none` when empty or `auto` (the coordinator resolves
//!   `auto` to a concrete policy before it assigns the job).

use adjoint_graph::checkpoint::Policy;
use adjoint_proto::v1;

use crate::OptimizerConfig;
use crate::dist::LrSchedule;

/// The checkpoint policy of a job spec.
pub fn checkpoint(text: &str) -> Result<Policy, String> {
    match text.trim() {
        "" | "auto" => Ok(Policy::None),
        other => other
            .parse()
            .map_err(|e: adjoint_graph::Error| e.to_string()),
    }
}

/// The optimizer a job asks for, with the defaults above.
pub fn optimizer(spec: Option<&v1::OptimizerSpec>) -> Result<OptimizerConfig, String> {
    let default = v1::OptimizerSpec::default();
    let o = spec.unwrap_or(&default);
    let or = |x: f64, d: f32| if x == 0.0 { d } else { x as f32 };
    match o.name.to_ascii_lowercase().as_str() {
        "" | "sgd" => Ok(OptimizerConfig::Sgd {
            lr: or(o.lr, 0.01),
            momentum: o.momentum as f32,
            dampening: o.dampening as f32,
            weight_decay: o.weight_decay as f32,
            nesterov: o.nesterov,
        }),
        "adamw" => Ok(OptimizerConfig::AdamW {
            lr: or(o.lr, 1e-3),
            beta1: or(o.beta1, 0.9),
            beta2: or(o.beta2, 0.999),
            eps: or(o.eps, 1e-8),
            weight_decay: or(o.weight_decay, 0.01),
        }),
        other => Err(format!("unknown optimizer '{other}': use sgd or adamw")),
    }
}

/// The learning-rate schedule over `total_steps`.
pub fn schedule(spec: Option<&v1::LrSchedule>, total_steps: u64) -> Result<LrSchedule, String> {
    let Some(s) = spec else {
        return Ok(LrSchedule {
            total_steps,
            ..LrSchedule::constant()
        });
    };
    LrSchedule::parse(
        &s.kind.to_ascii_lowercase(),
        s.warmup_steps,
        s.min_lr as f32,
        total_steps,
    )
    .map_err(|e| e.to_string())
}

/// Optimizer steps of the job: `steps` if set, else `epochs` (at least one)
/// times the full steps per epoch.
pub fn total_steps(spec: &v1::JobSpec, steps_per_epoch: u64) -> u64 {
    if spec.steps > 0 {
        spec.steps
    } else {
        spec.epochs.max(1) * steps_per_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_take_the_documented_defaults() {
        assert_eq!(optimizer(None).unwrap(), OptimizerConfig::sgd(0.01));
        let adamw = v1::OptimizerSpec {
            name: "adamw".into(),
            lr: 0.002,
            ..Default::default()
        };
        assert_eq!(
            optimizer(Some(&adamw)).unwrap(),
            OptimizerConfig::adamw(0.002)
        );
        let sgd = v1::OptimizerSpec {
            name: "SGD".into(),
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        };
        assert_eq!(
            optimizer(Some(&sgd)).unwrap(),
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.0,
                weight_decay: 0.0,
                nesterov: true
            }
        );
        let bad = v1::OptimizerSpec {
            name: "lion".into(),
            ..Default::default()
        };
        assert!(optimizer(Some(&bad)).unwrap_err().contains("lion"));
    }

    #[test]
    fn steps_come_from_steps_or_epochs() {
        let mut spec = v1::JobSpec {
            steps: 7,
            epochs: 3,
            ..Default::default()
        };
        assert_eq!(total_steps(&spec, 10), 7);
        spec.steps = 0;
        assert_eq!(total_steps(&spec, 10), 30);
        spec.epochs = 0;
        assert_eq!(total_steps(&spec, 10), 10);
        let s = schedule(
            Some(&v1::LrSchedule {
                kind: "cosine".into(),
                warmup_steps: 2,
                min_lr: 0.0,
            }),
            10,
        )
        .unwrap();
        assert_eq!(s.total_steps, 10);
        assert!(
            schedule(
                Some(&v1::LrSchedule {
                    kind: "linear".into(),
                    ..Default::default()
                }),
                1
            )
            .is_err()
        );
    }
}
