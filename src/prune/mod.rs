//! One-shot pruning on the layer-by-layer calibration pipeline of the official Wanda code:
//! capture block 0's inputs for every calibration sample; then for each block, run it unpruned
//! while collecting each linear layer's input statistics, prune all its linear layers, and run
//! the pruned block to produce the next block's inputs.

pub mod activations;
pub mod allocation;
pub mod expr;
pub mod mask;
pub mod metric;
pub mod registry;
pub mod ria;
pub mod sparsegpt;
pub mod stats;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::model::weights::all_finite;
use crate::model::{CausalLm, DecoderBlock, Linear};
use activations::Activations;
use allocation::Allocation;
use mask::{Group, Pattern, VARIANT_TOLERANCE};
use metric::{Metric, Params};
use registry::{MethodDef, Update};
use sparsegpt::MaskRule;
use stats::{Hessian, InputNorms, LayerStats, Needs};

/// What to prune and how: the metric choosing the mask, compared within `group` (unstructured
/// only), optionally by the Wanda variant's alpha search, and the weight update that follows.
pub struct Method {
    pub metric: Arc<dyn Metric>,
    pub group: Group,
    pub variant: bool,
    pub update: Update,
}

/// A method's settings besides its name, as the command line, configs and records spell them:
/// one struct, so an option added here reaches the run's identity, records and report columns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodOptions {
    /// A metric expression (`abs(W) * X`), named by the method's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A built-in's options (those at their defaults left out) or an expression's parameters.
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    /// The comparison group (unstructured only): the metric's own when none is given.
    #[serde(default)]
    pub group: Option<Group>,
    /// The Wanda variant: a per-row alpha search over the cumulative score.
    #[serde(default)]
    pub use_variant: bool,
}

impl MethodOptions {
    /// The options as named text values (parameters aside: their defaults live in the registry),
    /// for report columns and the settings a table cell compares. The destructuring makes a new
    /// field a compile error until it is listed here.
    pub fn named_values(&self) -> [(&'static str, Option<String>); 3] {
        let MethodOptions {
            metric,
            params: _,
            group,
            use_variant,
        } = self;
        [
            ("metric", metric.clone()),
            ("group", group.map(Group::name)),
            ("use_variant", Some(use_variant.to_string())),
        ]
    }
}

impl Method {
    /// Parses and cross-checks a method and its options against the pattern, loading nothing.
    pub fn parse(name: &str, options: &MethodOptions, pattern: Pattern) -> Result<Method> {
        let MethodOptions {
            metric: expression,
            params,
            group,
            use_variant: variant,
        } = options;
        let (metric, update) = match (expression, MethodDef::find(name)) {
            (Some(text), _) => (
                expr::ExpressionMetric::shared(name, expr::Expression::parse(text, params)?),
                Update::Zero,
            ),
            (None, Some(def)) => (def.build(params)?, def.update),
            (None, None) => bail!(
                "unknown method `{name}` (known: {}; or a metric expression: --metric \"abs(W) * X\")",
                registry::method_names().join(", ")
            ),
        };
        if group.is_some() && update.is_obs() {
            bail!(
                "--group applies to methods that only zero weights ({}, or an expression), not `{name}`, whose mask SparseGPT's update chooses",
                registry::names_with(Update::Zero).join(", ")
            );
        }
        let group = group.unwrap_or(metric.default_group());
        if *variant && (update.is_obs() || group != Group::PerOutput) {
            bail!("--use-variant needs a method that only zeroes weights, with the per-output group (it is the Wanda variant)");
        }
        if let Pattern::NM { .. } = pattern {
            if *variant {
                bail!("--use-variant works with unstructured sparsity only, not {pattern}");
            }
            if options.group.is_some() {
                bail!("N:M pruning compares the weights within each group of M inputs of a row; --group does not apply to {pattern}");
            }
        }
        Ok(Method {
            metric,
            group,
            variant: *variant,
            update,
        })
    }

    /// A built-in method with its defaults.
    pub fn named(name: &str, pattern: Pattern) -> Result<Method> {
        Method::parse(name, &MethodOptions::default(), pattern)
    }

    /// What the method reads about each layer's calibration inputs: its metric's statistics, and
    /// the Hessian for SparseGPT's update.
    pub fn needs(&self) -> Needs {
        let needs = self.metric.needs();
        Needs {
            hessian: needs.hessian || self.update.is_obs(),
            ..needs
        }
    }

    pub fn needs_calibration(&self) -> bool {
        self.needs().any()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerSparsity {
    pub name: String,
    /// The sparsity asked of this layer: the run's, or its block's under a non-uniform allocation.
    pub target: f64,
    pub zeros: i64,
    pub numel: i64,
    pub sparsity: f64,
    /// How far rounding alone can move the sparsity: one weight per row or column, one more.
    #[serde(skip)]
    rounding: f64,
    /// The Wanda variant's alpha for this layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub layers: Vec<LayerSparsity>,
    /// Fraction of zeros over all pruned linear layers (the official `check_sparsity`).
    pub sparsity_actual: f64,
    /// Metric + mask + weight update only, without forward passes (as the paper times it).
    pub prune_seconds: f64,
    /// Calibration forward passes (capture, statistics, pruned outputs, OWL's dense pass).
    pub forward_seconds: f64,
    /// The per-block sparsities of a non-uniform allocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocationReport {
    pub kind: Allocation,
    /// OWL's per-block outlier ratios (% of Wanda scores above M times their block's mean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_ratios: Option<Vec<f64>>,
    /// The sparsity each block was pruned to.
    pub block_sparsity: Vec<f64>,
}

impl PruneReport {
    fn new(layers: Vec<LayerSparsity>, prune_seconds: f64, forward_seconds: f64) -> Self {
        let (zeros, numel) = layers.iter().fold((0, 0), |(z, n), l| (z + l.zeros, n + l.numel));
        PruneReport {
            sparsity_actual: zeros as f64 / numel.max(1) as f64,
            layers,
            prune_seconds,
            forward_seconds,
            allocation: None,
        }
    }

    /// Names the layers whose sparsity is further from their target than the method explains, and
    /// why that can be. Rounding explains up to one weight per comparison group (int(n·s) per
    /// row, one more at a magnitude threshold); the variant's alpha search stops within its
    /// tolerance. Beyond that: weights that were zero already, inputs SparseGPT found dead, ties.
    pub fn sparsity_warning(&self) -> Option<String> {
        let off = |l: &LayerSparsity| (l.sparsity - l.target).abs() - l.alpha.map_or(l.rounding, |_| VARIANT_TOLERANCE);
        let missed: Vec<&LayerSparsity> = self.layers.iter().filter(|l| l.target > 0.0 && off(l) > 0.0).collect();
        let furthest = missed.iter().max_by(|a, b| off(a).total_cmp(&off(b)))?;
        let why = match furthest.alpha {
            Some(a) if a >= 0.799 => format!("--use-variant's alpha search stopped at the top of its bracket [0, 0.8] (alpha {a:.4}), as the official one does"),
            Some(a) => format!("--use-variant's alpha search stopped at its 0.001 resolution (alpha {a:.4}), as the official one does"),
            None => "more than rounding explains: weights that were zero already (a pruned checkpoint?), inputs SparseGPT found dead, or ties".into(),
        };
        Some(format!(
            "{} of {} layers ended away from their target sparsity (furthest: {} at {:.4}, asked {}): {why}; overall sparsity {:.4} is what the results show",
            missed.len(),
            self.layers.len(),
            furthest.name,
            furthest.sparsity,
            furthest.target,
            self.sparsity_actual
        ))
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Prunes every linear layer of every block in place, each block at the sparsity `allocation`
/// gives it (`sparsity` for all, uniformly). `calib` is (nsamples, seqlen) token ids, needed
/// unless the method is data-free and the allocation not OWL. `batch_size` samples go through a
/// block at once. The calibration buffers live in scratch files under `spill_to` when given
/// (`crate::memory::MemoryPlan`), else in memory.
pub fn prune_model(
    model: &mut dyn CausalLm,
    method: &Method,
    sparsity: f64,
    pattern: Pattern,
    allocation: &Allocation,
    calib: Option<&Tensor>,
    batch_size: usize,
    spill_to: Option<&Path>,
) -> Result<PruneReport> {
    pattern.check_sparsity(sparsity)?;
    allocation.check_pattern(pattern)?;
    if let Pattern::NM { m, .. } = pattern {
        // Every block has the same shapes: check block 0's layers before any work.
        for (name, linear) in model.stack().block(0)?.linears() {
            let cols = linear.weight.size()[1];
            ensure!(
                cols % m == 0,
                "--pattern {pattern}: layer `{name}` has {cols} inputs, not a multiple of M = {m}; choose an M that divides every layer's input size"
            );
        }
    }
    let device = model.device();
    let n_blocks = model.stack().n_blocks();
    let block_prefix = model.info().block_prefix;
    let batch_size = batch_size.max(1);
    if sparsity == 0.0 {
        // The official main.py prunes only `if args.sparsity_ratio != 0`: the model stays as it is
        // (SparseGPT would otherwise still update weights, and thresholds prune ties).
        let mut layers = Vec::new();
        for b in 0..n_blocks {
            layers.extend(block_sparsity(
                &format!("{block_prefix}{b}"),
                &*model.stack().block(b)?,
                &HashMap::new(),
                0.0,
            ));
        }
        return Ok(PruneReport::new(layers, 0.0, 0.0));
    }
    let mut prune_seconds = 0.0;
    let mut forward_seconds = 0.0;
    let (targets, outlier_ratios) = match allocation {
        Allocation::Uniform => (vec![sparsity; n_blocks], None),
        Allocation::Blocks(list) => {
            ensure!(
                list.len() == n_blocks,
                "the allocation lists {} per-block sparsities, but the model has {n_blocks} blocks; give one per block",
                list.len()
            );
            (list.clone(), None)
        }
        Allocation::Owl { m, lambda } => {
            let ids = calib.context("OWL needs calibration data for its outlier ratios")?;
            let t = Instant::now();
            let ratios = owl_outlier_ratios(model, ids, batch_size, *m, spill_to)?;
            forward_seconds += t.elapsed().as_secs_f64();
            (allocation::owl_sparsities(&ratios, *lambda, sparsity)?, Some(ratios))
        }
    };
    let mut layers = Vec::new();
    let bar = crate::progress::bar(n_blocks as u64, "pruning");

    let mut acts = match (method.needs_calibration(), calib) {
        (false, _) => None,
        (true, Some(ids)) => {
            let t = Instant::now();
            let a = Activations::capture(model, ids, batch_size, spill_to)?;
            forward_seconds += t.elapsed().as_secs_f64();
            Some(a)
        }
        (true, None) => bail!("this method needs calibration data"),
    };

    for (b, &target) in targets.iter().enumerate() {
        let block_name = format!("{block_prefix}{b}");
        let mut block = model.stack_mut().take_block(b)?;
        let mut alphas = HashMap::new();
        let mut stats = BlockStats::default();
        if let Some(a) = &acts {
            bar.set_message(format!("block {b}: calibration statistics"));
            let t = Instant::now();
            stats = BlockStats::collect(a, block.as_ref(), method.needs(), method.update.is_obs(), device)?;
            forward_seconds += t.elapsed().as_secs_f64();
        }
        let BlockStats {
            norms,
            hessians,
            leader,
        } = stats;
        let mut hessians = SharedHessians::new(hessians, &leader);
        // A block given sparsity 0 stays as it is, as the whole model does at sparsity 0.
        for (name, linear) in block.linears_mut().into_iter().filter(|_| target > 0.0) {
            bar.set_message(format!("block {b}: {name}"));
            let t = Instant::now();
            let key = leader.get(name).copied().unwrap_or(name);
            let alpha = prune_layer(linear, method, target, pattern, norms.get(key), hessians.take(key))
                .with_context(|| format!("pruning {block_name}.{name}"))?;
            if let Some(alpha) = alpha {
                alphas.insert(name, alpha);
            }
            sync(device);
            prune_seconds += t.elapsed().as_secs_f64();
        }
        // The official code also runs the last pruned block, whose outputs nothing reads.
        if let Some(a) = acts.as_mut().filter(|_| b + 1 < n_blocks) {
            bar.set_message(format!("block {b}: pruned outputs"));
            let t = Instant::now();
            a.advance(block.as_ref())?;
            forward_seconds += t.elapsed().as_secs_f64();
        }
        layers.extend(block_sparsity(&block_name, block.as_ref(), &alphas, target));
        model.stack_mut().put_back(b, block)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut report = PruneReport::new(layers, prune_seconds, forward_seconds);
    if !allocation.is_uniform() {
        report.allocation = Some(AllocationReport {
            kind: allocation.clone(),
            outlier_ratios,
            block_sparsity: targets,
        });
    }
    Ok(report)
}

/// OWL's first pass: each block's outlier ratio from the Wanda scores of the dense model, the
/// calibration samples running through the unpruned blocks (as the official code's pass that
/// precedes its pruning pass).
fn owl_outlier_ratios(
    model: &dyn CausalLm,
    ids: &Tensor,
    batch_size: usize,
    m: f64,
    spill_to: Option<&Path>,
) -> Result<Vec<f64>> {
    let n_blocks = model.stack().n_blocks();
    let bar = crate::progress::bar(n_blocks as u64, "OWL outlier ratios");
    let mut acts = Activations::capture(model, ids, batch_size, spill_to)?;
    let mut ratios = Vec::with_capacity(n_blocks);
    for b in 0..n_blocks {
        let block = model.stack().block(b)?;
        let stats = BlockStats::collect(&acts, &*block, Needs::NORMS, false, model.device())?;
        let mut scores = Vec::new();
        for (name, linear) in block.linears() {
            let norms = stats.norms.get(stats.leader.get(name).copied().unwrap_or(name));
            let stats = LayerStats {
                norms,
                ..LayerStats::default()
            };
            scores.push(metric::Wanda.score(&linear.weight, &stats)?);
        }
        ratios.push(allocation::outlier_ratio(&scores, m));
        if b + 1 < n_blocks {
            acts.advance(&*block)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(ratios)
}

/// One block's calibration statistics per distinct input, under the first layer's name;
/// `leader` maps every layer to the layer whose statistics it shares (q/k/v, gate/up see the
/// same tensor).
#[derive(Default)]
struct BlockStats {
    norms: HashMap<&'static str, InputNorms>,
    hessians: HashMap<&'static str, Hessian>,
    leader: HashMap<&'static str, &'static str>,
}

impl BlockStats {
    fn collect(
        acts: &Activations,
        block: &dyn DecoderBlock,
        needs: Needs,
        obs_update: bool,
        device: Device,
    ) -> Result<BlockStats> {
        let mut stats = BlockStats::default();
        acts.observe(block, &mut |names, x| {
            let key = names[0];
            stats.leader.extend(names.iter().map(|n| (*n, key)));
            let cols = x.size()[2];
            if needs.norms {
                stats
                    .norms
                    .entry(key)
                    .or_insert_with(|| {
                        // Collected beside the Hessian the way the official ablation code does.
                        if obs_update {
                            InputNorms::for_ablation(cols, device)
                        } else {
                            InputNorms::new(cols, device)
                        }
                    })
                    .add_batch(x);
            }
            if needs.hessian {
                stats
                    .hessians
                    .entry(key)
                    .or_insert_with(|| Hessian::new(cols, device))
                    .add_batch(x);
            }
        })?;
        Ok(stats)
    }
}

/// Finished Hessians, each shared by the layers that saw the same input: the last layer to ask
/// gets the matrix itself, the others a copy (SparseGPT modifies its Hessian in place).
struct SharedHessians<'a> {
    finished: HashMap<&'a str, (Tensor, usize)>,
}

impl<'a> SharedHessians<'a> {
    fn new(hessians: HashMap<&'a str, Hessian>, leader: &HashMap<&'a str, &'a str>) -> Self {
        let finished = hessians
            .into_iter()
            .map(|(key, h)| (key, (h.finish(), leader.values().filter(|l| **l == key).count())))
            .collect();
        SharedHessians { finished }
    }

    fn take(&mut self, key: &str) -> Option<Tensor> {
        let (h, users) = self.finished.get_mut(key)?;
        *users -= 1;
        if *users > 0 {
            return Some(h.copy());
        }
        self.finished.remove(key).map(|(h, _)| h)
    }
}

/// Prunes one linear layer in place from its statistics (`hessian` when the method needs it);
/// returns the Wanda variant's alpha when it searched one.
fn prune_layer(
    linear: &mut Linear,
    method: &Method,
    sparsity: f64,
    pattern: Pattern,
    norms: Option<&InputNorms>,
    hessian: Option<Tensor>,
) -> Result<Option<f64>> {
    if norms.is_some_and(|n| !all_finite(&n.scaler_row)) || hessian.as_ref().is_some_and(|h| !all_finite(h)) {
        bail!("its calibration inputs hold NaN or infinite values: activations overflowed the run's dtype (f16 ends at ±65504); use --dtype bf16 or f32");
    }
    let metric = method.metric.as_ref();
    // The mask the metric picks on the weights as they are (for an update: before it starts).
    let mask_now = |w: &Tensor| -> Result<(Tensor, Option<f64>)> {
        let stats = LayerStats {
            norms,
            hessian: hessian.as_ref(),
            hinv_diag: None,
        };
        let score = metric.score(w, &stats)?;
        Ok(match pattern {
            Pattern::NM { n, m } => (mask::n_m(&score, n, m)?, None),
            Pattern::Unstructured if method.variant => {
                let (mask, a) = mask::variant(&score, sparsity);
                (mask, Some(a))
            }
            Pattern::Unstructured => (mask::unstructured(&score, sparsity, method.group), None),
        })
    };
    let w = &linear.weight;
    match method.update {
        Update::Zero => {
            let (mask, alpha) = mask_now(w)?;
            let _ = linear.weight.masked_fill_(&mask, 0.0);
            Ok(alpha)
        }
        Update::ObsFixedMask | Update::ObsPerBlock => {
            let rule_mask;
            let rule = match method.update {
                Update::ObsFixedMask => {
                    rule_mask = mask_now(&w.to_kind(Kind::Float))?.0;
                    MaskRule::Fixed(&rule_mask)
                }
                _ => MaskRule::PerBlock { metric, norms },
            };
            let h = hessian
                .as_ref()
                .expect("every linear layer saw calibration inputs")
                .shallow_clone();
            let new = sparsegpt::prune(w, h, sparsity, pattern, rule)?;
            linear.weight.copy_(&new);
            Ok(None)
        }
    }
}

/// Zeros per linear layer of one block, by hub name.
pub fn block_sparsity(
    block_name: &str,
    block: &dyn DecoderBlock,
    alphas: &HashMap<&str, f64>,
    target: f64,
) -> Vec<LayerSparsity> {
    block
        .linears()
        .into_iter()
        .map(|(name, linear)| {
            let numel = linear.weight.numel() as i64;
            let zeros = linear.weight.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            let narrowest = linear.weight.size().into_iter().min().unwrap_or(1).max(1);
            LayerSparsity {
                alpha: alphas.get(name).copied(),
                name: format!("{block_name}.{name}"),
                target,
                zeros,
                numel,
                sparsity: zeros as f64 / numel as f64,
                rounding: (1.0 / narrowest as f64 + 1.0 / numel as f64) * (1.0 + 1e-9),
            }
        })
        .collect()
}
