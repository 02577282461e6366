//! What one job measured, as one typed struct: `--json` prints it, sweep records store it, the
//! report reads it. Every field is optional on reading, so records of earlier layouts (and of
//! failed runs, whose result is empty) read as they are; fields of later ones are ignored.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::eval::packing::TokenCounts;
use crate::eval::tasks::TaskResult;
use crate::eval::zeroshot::Sample;
use crate::memory::PlanNumbers;
use crate::prune::mask::Group;
use crate::prune::metric::Params;
use crate::prune::{AllocationReport, LayerSparsity};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    pub model: String,
    pub architecture: String,
    pub device: String,
    pub dtype: String,
    /// The window length used for calibration and perplexity.
    pub seqlen: usize,
    pub streamed: bool,
    pub load_seconds: f64,
    /// What the run planned to hold in memory, and where the calibration buffers lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_plan: Option<PlanNumbers>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,

    // Pruning (absent for an unpruned model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationUsed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The metric expression, for an expression method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_variant: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity_target: Option<f64>,
    /// A non-uniform allocation: its kind and each block's sparsity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationReport>,
    /// Zeros over all pruned linear layers (the official `check_sparsity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity_actual: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSparsity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_forward_seconds: Option<f64>,
    /// Layers running on cuSPARSELt (`--sparse-kernels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse_kernel_layers: Option<usize>,

    // Perplexity, by corpus label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ppl: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ppl_details: BTreeMap<String, PplDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_tokens_per_second: Option<f64>,

    // Zero-shot, by task name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub zero_shot: BTreeMap<String, TaskResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_mean_acc: Option<f64>,
    /// Tokens computed per task: packed, padding, and what unshared or lm-eval's rows would take.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub zero_shot_tokens: BTreeMap<String, TokenCounts>,
    /// Padding over all computed zero-shot tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_padding_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_seconds: Option<f64>,
    /// Every document's outcome, task after task: written where asked (`--samples`), never into
    /// the run's JSON (a Table 2 sweep would carry 19,000 per model state).
    #[serde(skip)]
    pub zero_shot_samples: Vec<Sample>,

    /// Evaluation parts (corpus labels, task names) taken from an earlier attempt of the run,
    /// measured on the same weights (`resume`); their times are that attempt's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<String>,
    /// What those parts took in the earlier attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_seconds: Option<f64>,

    pub repro_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_to: Option<PathBuf>,
    pub total_seconds: f64,
    /// Peak resident memory of the process (Linux), reset at the start of each sweep run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// The calibration a pruning run drew.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CalibrationUsed {
    /// As given (`c4:c4-format-sample`).
    pub source: String,
    /// The file read.
    pub file: PathBuf,
    pub nsamples: usize,
    pub seqlen: usize,
    pub seed: u64,
}

/// How one corpus was evaluated: `windows × seqlen` of its `n_tokens` tokens were scored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PplDetails {
    pub source: String,
    pub n_tokens: usize,
    pub windows: usize,
    pub seqlen: usize,
    pub batch_size: usize,
    pub max_windows: Option<usize>,
}

/// The timings a report may show, by their field names.
pub const TIMINGS: [&str; 4] = [
    "prune_seconds",
    "calibration_forward_seconds",
    "eval_seconds",
    "total_seconds",
];

impl RunResult {
    /// Nothing measured: a failed run's.
    pub fn is_empty(&self) -> bool {
        *self == RunResult::default()
    }

    /// One of [`TIMINGS`], if the run measured it.
    pub fn timing(&self, name: &str) -> Option<f64> {
        match name {
            "prune_seconds" => self.prune_seconds,
            "calibration_forward_seconds" => self.calibration_forward_seconds,
            "eval_seconds" => self.eval_seconds,
            "total_seconds" => Some(self.total_seconds),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result object as stop-10 builds wrote it (a string-keyed map): `group: null`,
    /// `zero_shot_limit: null`, per-layer entries without `target`, and a key since retired.
    const EARLIER_LAYOUT: &str = r#"{
        "model": "llama-tiny", "architecture": "llama", "device": "cpu", "dtype": "f32",
        "seqlen": 64, "streamed": false, "load_seconds": 0.5,
        "calibration": {"source": "c4:c4-format-sample", "file": "/m/c4.json.gz", "nsamples": 8, "seqlen": 64, "seed": 0},
        "method": "wanda", "pattern": "unstructured", "group": null, "use_variant": false,
        "sparsity_target": 0.5, "sparsity_actual": 0.4999,
        "layers": [{"name": "model.layers.0.self_attn.q_proj", "zeros": 8, "numel": 16, "sparsity": 0.5}],
        "prune_seconds": 1.0, "calibration_forward_seconds": 2.0,
        "zero_shot": {"rte": {"n": 10, "acc": 0.5, "acc_stderr": 0.16, "acc_norm": null, "acc_norm_stderr": null}},
        "zero_shot_mean_acc": 0.5, "zero_shot_limit": null, "zero_shot_seconds": 3.0,
        "ppl": {"wikitext2": 308.5}, "ppl_details": {"wikitext2": {"source": "wikitext2", "n_tokens": 1000, "windows": 4, "seqlen": 64, "batch_size": 1, "max_windows": 4}},
        "eval_seconds": 4.0, "eval_tokens_per_second": 64.0, "n_tokens": 1000,
        "repro_version": "0.1.0", "total_seconds": 9.0, "peak_rss_bytes": 123456
    }"#;

    #[test]
    fn earlier_results_read_and_round_trip() {
        let r: RunResult = serde_json::from_str(EARLIER_LAYOUT).unwrap();
        assert_eq!((r.seqlen, r.group, r.use_variant), (64, None, Some(false)));
        assert_eq!(r.layers[0].target, 0.0);
        assert_eq!(r.zero_shot["rte"].acc, 0.5);
        assert_eq!(r.ppl_details["wikitext2"].windows, 4);
        assert_eq!(r.timing("prune_seconds"), Some(1.0));
        assert_eq!(r.peak_rss_bytes, Some(123456));
        let again: RunResult = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        // A failed run's empty result, `{}` in earlier records.
        assert!(serde_json::from_str::<RunResult>("{}").unwrap().is_empty());
        assert!(!r.is_empty());
    }
}
