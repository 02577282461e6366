//! Pruning metrics: a score per weight, lower = pruned first. A new built-in metric is one small
//! type implementing [`Metric`] plus one line in [`super::registry::METHODS`]; a metric written
//! as a formula needs no Rust at all (see [`super::expr`]).

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::Tensor;

use super::mask::Group;
use super::stats::{InputNorms, LayerStats, Needs};

/// Named numeric options of a metric (RIA's `a`) or parameters of an expression, by name.
pub type Params = BTreeMap<String, f64>;

pub trait Metric: Send + Sync {
    fn name(&self) -> &str;
    /// The calibration statistics the score reads (none: no forward passes are needed).
    fn needs(&self) -> Needs;
    /// The comparison group the metric's paper uses.
    fn default_group(&self) -> Group;
    /// Score of every weight of `w` (out, in) given the layer's input statistics.
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor>;
}

/// A numeric option of a built-in metric, with the default its paper uses.
pub struct MetricOption {
    pub name: &'static str,
    pub default: f64,
    pub help: &'static str,
}

/// |W|: the classic baseline, one threshold per layer.
pub struct Magnitude;

impl Metric for Magnitude {
    fn name(&self) -> &str {
        "magnitude"
    }
    fn needs(&self) -> Needs {
        Needs::NONE
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
    fn name(&self) -> &str {
        "wanda"
    }
    fn needs(&self) -> Needs {
        Needs::NORMS
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
