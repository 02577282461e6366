//! RIA, "relative importance and activations" (Zhang et al., ICLR 2024, "Plug-and-Play"):
//! (|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ‖X_j‖₂^a with a = 0.5, compared per output.
//! Here as the example of adding a metric: this file plus one registry line.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::mask::Group;
use super::metric::{norms, Metric};
use super::stats::LayerStats;

pub struct Ria;

const ACTIVATION_POWER: f64 = 0.5;

impl Metric for Ria {
    fn name(&self) -> &'static str {
        "ria"
    }
    fn needs_calibration(&self) -> bool {
        true
    }
    fn default_group(&self) -> Group {
        Group::PerOutput
    }
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
        let a = w.abs();
        let by_column = a.sum_dim_intlist(0, true, Kind::Float);
        let by_row = a.sum_dim_intlist(1, true, Kind::Float);
        let act = norms(stats, self.name())?.scaler_row.sqrt().pow_tensor_scalar(ACTIVATION_POWER);
        Ok((&a / by_column + &a / by_row) * act.reshape([1, -1]))
    }
}
