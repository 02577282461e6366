//! The one list of pruning methods. Each entry says what the method is: its name, a line of help,
//! its numeric options with the defaults its paper uses, the metric whose scores choose the mask,
//! and what happens to the weights once the mask is chosen. The CLI's choices and help, config
//! validation, records and report columns are all derived from this list; a new built-in metric
//! is one file implementing [`Metric`] plus one line here.

use anyhow::{bail, Result};
use std::sync::Arc;

use super::metric::{Magnitude, Metric, MetricOption, Params, Wanda};
use super::sparsegpt::SparseGptMetric;

/// What happens to a layer's weights once its mask is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The masked weights are zeroed; the others keep their values.
    Zero,
    /// SparseGPT's OBS update of the surviving weights, the mask chosen by the metric on the
    /// dense weights before any update (Table 8's "sequential" ablation).
    ObsFixedMask,
    /// SparseGPT's OBS update, the mask chosen per block of 128 columns (per M columns for N:M) by
    /// the metric on the weights as updated so far: SparseGPT itself with its own saliency, and
    /// Table 8's "iterative" ablation with another metric.
    ObsPerBlock,
}

impl Update {
    pub fn is_obs(self) -> bool {
        self != Update::Zero
    }
}

/// A built-in method.
pub struct MethodDef {
    pub name: &'static str,
    pub about: &'static str,
    pub options: &'static [MetricOption],
    /// The metric that chooses the mask, from the full option values (defaults filled in).
    pub metric: fn(&Params) -> Arc<dyn Metric>,
    pub update: Update,
}

/// Every built-in method, by the name used on the command line and in configs.
pub static METHODS: [MethodDef; 9] = [
    MethodDef {
        name: "magnitude",
        about: "|W|, one threshold per layer",
        options: &[],
        metric: |_| Arc::new(Magnitude),
        update: Update::Zero,
    },
    MethodDef {
        name: "wanda",
        about: "|W|·‖X‖, per output",
        options: &[],
        metric: |_| Arc::new(Wanda),
        update: Update::Zero,
    },
    MethodDef {
        name: "sparsegpt",
        about: "SparseGPT: its saliency w²/[H⁻¹]²_jj per 128-column block, with its OBS weight update",
        options: &[],
        metric: |_| Arc::new(SparseGptMetric),
        update: Update::ObsPerBlock,
    },
    MethodDef {
        name: "ria",
        about: "RIA: relative importance times ‖X‖^a, per output",
        options: &super::ria::OPTIONS,
        metric: super::ria::Ria::build,
        update: Update::Zero,
    },
    MethodDef {
        name: "sparsegpt_metric",
        about: "SparseGPT's saliency without its weight update (Table 7)",
        options: &[],
        metric: |_| Arc::new(SparseGptMetric),
        update: Update::Zero,
    },
    MethodDef {
        name: "ablate_mag_seq",
        about: "Table 8: magnitude mask, then SparseGPT's update",
        options: &[],
        metric: |_| Arc::new(Magnitude),
        update: Update::ObsFixedMask,
    },
    MethodDef {
        name: "ablate_mag_iter",
        about: "Table 8: magnitude mask re-chosen per block during SparseGPT's update",
        options: &[],
        metric: |_| Arc::new(Magnitude),
        update: Update::ObsPerBlock,
    },
    MethodDef {
        name: "ablate_wanda_seq",
        about: "Table 8: Wanda mask, then SparseGPT's update",
        options: &[],
        metric: |_| Arc::new(Wanda),
        update: Update::ObsFixedMask,
    },
    MethodDef {
        name: "ablate_wanda_iter",
        about: "Table 8: Wanda mask re-chosen per block during SparseGPT's update",
        options: &[],
        metric: |_| Arc::new(Wanda),
        update: Update::ObsPerBlock,
    },
];

impl MethodDef {
    pub fn find(name: &str) -> Option<&'static MethodDef> {
        METHODS.iter().find(|m| m.name == name)
    }

    /// The mask's metric with `params` (unknown names refused, the others at their defaults).
    pub fn build(&self, params: &Params) -> Result<Arc<dyn Metric>> {
        if let Some(unknown) = params
            .keys()
            .find(|k| !self.options.iter().any(|o| o.name == k.as_str()))
        {
            let allowed: Vec<String> = self
                .options
                .iter()
                .map(|o| format!("{} (default {}: {})", o.name, o.default, o.help))
                .collect();
            let allowed = match allowed.is_empty() {
                true => "none".to_string(),
                false => allowed.join(", "),
            };
            bail!(
                "method `{}` has no option `{unknown}`; its options: {allowed}",
                self.name
            );
        }
        let mut full = params.clone();
        for o in self.options {
            full.entry(o.name.to_string()).or_insert(o.default);
        }
        Ok((self.metric)(&full))
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

pub fn method_names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// The names of the methods of one kind of update, for messages.
pub fn names_with(update: Update) -> Vec<&'static str> {
    METHODS.iter().filter(|m| m.update == update).map(|m| m.name).collect()
}

/// `repro prune --help`'s list of methods, with their options.
pub fn help() -> String {
    let lines: Vec<String> = METHODS
        .iter()
        .map(|m| {
            let options: Vec<String> = m
                .options
                .iter()
                .map(|o| format!(" [--param {}=V: {}, default {}]", o.name, o.help, o.default))
                .collect();
            format!("{}: {}{}", m.name, m.about, options.concat())
        })
        .collect();
    format!("A built-in method, one of:\n{}", lines.join("\n"))
}
