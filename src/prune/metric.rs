//! Pruning metrics: a score per weight, lower = pruned first. A new metric is one small type
//! implementing [`Metric`] plus one line in [`registry`].

use anyhow::{bail, Result};
use tch::Tensor;

use super::mask::Group;
use super::stats::InputNorms;

pub trait Metric: Sync {
    fn name(&self) -> &'static str;
    /// Whether the score reads calibration statistics (otherwise no forward passes are needed).
    fn needs_calibration(&self) -> bool;
    /// The comparison group the metric's paper uses.
    fn default_group(&self) -> Group;
    /// Score of every weight of `w` (out, in); `norms` holds the layer's input statistics.
    fn score(&self, w: &Tensor, norms: Option<&InputNorms>) -> Result<Tensor>;
}

/// |W|: the classic baseline, one threshold per layer.
pub struct Magnitude;

impl Metric for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }
    fn needs_calibration(&self) -> bool {
        false
    }
    fn default_group(&self) -> Group {
        Group::PerLayer
    }
    fn score(&self, w: &Tensor, _: Option<&InputNorms>) -> Result<Tensor> {
        Ok(w.abs())
    }
}

/// Wanda: |W_ij| · ‖X_j‖₂, compared per output.
pub struct Wanda;

impl Metric for Wanda {
    fn name(&self) -> &'static str {
        "wanda"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn default_group(&self) -> Group {
        Group::PerOutput
    }
    fn score(&self, w: &Tensor, norms: Option<&InputNorms>) -> Result<Tensor> {
        Ok(w.abs() * required(norms, self.name())?.scaler_row.sqrt().reshape([1, -1]))
    }
}

pub(crate) fn required<'a>(norms: Option<&'a InputNorms>, metric: &str) -> Result<&'a InputNorms> {
    match norms {
        Some(n) => Ok(n),
        None => bail!("metric `{metric}` needs calibration statistics but none were collected"),
    }
}

/// Every metric repro knows, by the name used on the command line and in configs.
pub fn registry() -> Vec<&'static dyn Metric> {
    vec![&Magnitude, &Wanda, &super::ria::Ria]
}

pub fn by_name(name: &str) -> Result<&'static dyn Metric> {
    match registry().into_iter().find(|m| m.name() == name) {
        Some(m) => Ok(m),
        None => {
            let names: Vec<_> = registry().iter().map(|m| m.name()).collect();
            bail!("unknown pruning metric `{name}` (known: {})", names.join(", "))
        }
    }
}
