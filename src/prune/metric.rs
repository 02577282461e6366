//! Pruning metrics: a score per weight, lower = pruned first. A new metric is one small type
//! implementing [`Metric`] plus one line in [`registry`].

use anyhow::{bail, Result};
use tch::Tensor;

use super::mask::Group;
use super::stats::{InputNorms, LayerStats};

pub trait Metric: Sync {
    fn name(&self) -> &'static str;
    /// Whether the score reads calibration statistics (otherwise no forward passes are needed).
    fn needs_calibration(&self) -> bool;
    /// Whether it reads the Hessian of the layer's inputs rather than (only) their norms; the
    /// Hessian costs a (cols x cols) matrix per layer, so it is collected only when asked for.
    fn needs_hessian(&self) -> bool {
        false
    }
    /// The comparison group the metric's paper uses.
    fn default_group(&self) -> Group;
    /// Score of every weight of `w` (out, in) given the layer's input statistics.
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor>;
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
    fn score(&self, w: &Tensor, _: &LayerStats) -> Result<Tensor> {
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
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
        Ok(w.abs() * norms(stats, self.name())?.scaler_row.sqrt().reshape([1, -1]))
    }
}

pub(crate) fn norms<'a>(stats: &LayerStats<'a>, metric: &str) -> Result<&'a InputNorms> {
    match stats.norms {
        Some(n) => Ok(n),
        None => bail!("metric `{metric}` needs input norms but none were collected"),
    }
}

pub(crate) fn hessian<'a>(stats: &LayerStats<'a>, metric: &str) -> Result<&'a Tensor> {
    match stats.hessian {
        Some(h) => Ok(h),
        None => bail!("metric `{metric}` needs the input Hessian but none was collected"),
    }
}

/// Every metric repro knows, by the name used on the command line and in configs.
pub fn registry() -> Vec<&'static dyn Metric> {
    vec![&Magnitude, &Wanda, &super::ria::Ria, &super::sparsegpt::SparseGptMetric]
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
