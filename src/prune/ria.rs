//! RIA, "relative importance and activations" (Zhang et al., ICLR 2024, "Plug-and-Play"):
//! (|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ‖X_j‖₂^a, compared per output.
//! Here as the example of adding a metric with an option: this file plus one registry line.

use anyhow::Result;
use std::sync::Arc;
use tch::{Kind, Tensor};

use super::mask::Group;
use super::metric::{norms, Metric, MetricOption, Params};
use super::stats::{LayerStats, Needs};

pub const OPTIONS: [MetricOption; 1] = [MetricOption {
    name: "a",
    default: 0.5,
    help: "exponent of the activation norm (the paper's 0.5)",
}];

pub struct Ria {
    a: f64,
}

impl Ria {
    pub fn build(params: &Params) -> Arc<dyn Metric> {
        Arc::new(Ria { a: params["a"] })
    }
}

impl Metric for Ria {
    fn name(&self) -> &str {
        "ria"
    }
    fn needs(&self) -> Needs {
        Needs::NORMS
    }
    fn default_group(&self) -> Group {
        Group::PerOutput
    }
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
        let a = w.abs();
        let by_column = a.sum_dim_intlist(0, true, Kind::Float);
        let by_row = a.sum_dim_intlist(1, true, Kind::Float);
        let act = norms(stats, self.name())?.scaler_row.sqrt().pow_tensor_scalar(self.a);
        Ok((&a / by_column + &a / by_row) * act.reshape([1, -1]))
    }
}
