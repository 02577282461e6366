//! Pruning metrics: a score per weight, lower = pruned first. A new built-in metric is one small
//! type implementing [`Metric`] plus one [`Builtin`] line in [`BUILTINS`]; a metric written as a
//! formula needs no Rust at all (see [`super::expr`]).

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
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

/// A built-in metric: its name, its options, and how to make it from their values.
pub struct Builtin {
    pub name: &'static str,
    pub options: &'static [MetricOption],
    pub build: fn(&Params) -> Arc<dyn Metric>,
}

/// Every built-in metric, by the name used on the command line and in configs.
pub static BUILTINS: [Builtin; 4] = [
    Builtin {
        name: "magnitude",
        options: &[],
        build: |_| Arc::new(Magnitude),
    },
    Builtin {
        name: "wanda",
        options: &[],
        build: |_| Arc::new(Wanda),
    },
    Builtin {
        name: "ria",
        options: &super::ria::OPTIONS,
        build: super::ria::Ria::build,
    },
    Builtin {
        name: "sparsegpt_metric",
        options: &[],
        build: |_| Arc::new(super::sparsegpt::SparseGptMetric),
    },
];

impl Builtin {
    pub fn find(name: &str) -> Option<&'static Builtin> {
        BUILTINS.iter().find(|b| b.name == name)
    }

    /// The metric with `params` (unknown names refused, the others at their defaults).
    pub fn with_params(&self, params: &Params) -> Result<Arc<dyn Metric>> {
        if let Some(unknown) = params
            .keys()
            .find(|k| !self.options.iter().any(|o| o.name == k.as_str()))
        {
            let allowed: Vec<String> = self
                .options
                .iter()
                .map(|o| format!("{} (default {}: {})", o.name, o.default, o.help))
                .collect();
            let allowed = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            bail!(
                "metric `{}` has no option `{unknown}`; its options: {allowed}",
                self.name
            );
        }
        let mut full = params.clone();
        for o in self.options {
            full.entry(o.name.to_string()).or_insert(o.default);
        }
        Ok((self.build)(&full))
    }

    /// `params` without the options at their defaults, so that naming a default does not make a
    /// different run.
    pub fn normalise(&self, params: &Params) -> Params {
        let default = |k: &str| self.options.iter().find(|o| o.name == k).map(|o| o.default);
        params
            .iter()
            .filter(|(k, v)| default(k) != Some(**v))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
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
