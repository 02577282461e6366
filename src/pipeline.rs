//! One job — load a model, optionally prune it, evaluate it — as a library function, so the
//! `prune`/`eval` commands and the sweep runner share one code path and one JSON result shape.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::calib::CalibSource;
use crate::data::{ppl_labels, PplCorpus};
use crate::device::{device_name, dtype_name, parse_device, parse_dtype};
use crate::eval::packing::TokenCounts;
use crate::eval::ppl::perplexity;
use crate::eval::tasks::{task, ALL_TASKS};
use crate::eval::zeroshot::{evaluate_docs, TaskDocs};
use crate::hub::{Hub, RepoKind};
use crate::memory::{MemoryOptions, MemoryPlan};
use crate::model::shape::ModelShape;
use crate::model::{self, Loaded, Streaming};
use crate::prune::allocation::Allocation;
use crate::prune::mask::{Group, Pattern};
use crate::prune::registry::{MethodDef, Update};
use crate::prune::{prune_model, Method, MethodOptions};
use crate::resources::peak_rss_bytes;
use crate::resume::{weights_digest, Kept, Parts, PplPart, TaskPart};
use crate::run_result::{CalibrationUsed, PplDetails, RunResult};
use serde_json::Value;

/// Which model, where, and at which precision and window length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub model: String,
    pub device: String,
    pub dtype: Option<String>,
    /// Calibration and perplexity window length (default: max_position_embeddings).
    pub seqlen: Option<usize>,
    /// Whole or block by block; it does not change results, so it is not part of a run's identity.
    #[serde(skip)]
    pub streaming: Streaming,
    /// 2:4-sparse layers on cuSPARSELt (`--sparse-kernels`): speed only, the product is the same
    /// up to float rounding, so not part of a run's identity either.
    #[serde(skip)]
    pub sparse_kernels: bool,
    /// The memory budget and where calibration buffers spill: how to run, not what.
    #[serde(skip)]
    pub memory: MemoryOptions,
}

/// How to prune. `calib` is ignored by data-free methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneSpec {
    /// A method name, or the name of the metric expression in `options.metric`.
    pub method: String,
    /// Written beside `method` (records of schema 1 and 2 read as they are).
    #[serde(flatten)]
    pub options: MethodOptions,
    pub sparsity: f64,
    pub pattern: Pattern,
    /// Sparsity per block: uniform (the paper's), OWL's, or a list.
    #[serde(default, skip_serializing_if = "Allocation::is_uniform")]
    pub allocation: Allocation,
    pub calib: String,
    pub nsamples: usize,
    pub seed: u64,
    pub calib_batch_size: usize,
}

/// Evaluations: perplexity corpora and zero-shot task names, mixed (tasks are recognised by name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub names: Vec<String>,
    pub batch_size: usize,
    pub max_windows: Option<usize>,
    pub limit: Option<usize>,
    /// Documents of each task that an earlier attempt scored and a resumed one skips: set only
    /// to estimate what a resumed run still costs, never part of a run's identity.
    #[serde(skip)]
    pub scored: BTreeMap<String, usize>,
}

impl PruneSpec {
    /// Parses and cross-checks method, group, variant, pattern and sparsity without loading anything.
    pub fn method(&self) -> Result<Method> {
        self.pattern.check_sparsity(self.sparsity)?;
        self.allocation.check_pattern(self.pattern)?;
        if let Some(mean) = self.allocation.list_target() {
            ensure!(
                (mean - self.sparsity).abs() < 1e-9,
                "a per-block allocation fixes the sparsity at its mean, {mean}; leave --sparsity out (or give {mean})"
            );
        }
        Method::parse(&self.method, &self.options, self.pattern)
    }

    /// The built-in method named, unless the name is an expression's.
    fn builtin(&self) -> Option<&'static MethodDef> {
        MethodDef::find(&self.method).filter(|_| self.options.metric.is_none())
    }

    /// The value of a metric option or expression parameter in force (a built-in's default when
    /// left out).
    pub fn param(&self, name: &str) -> Option<f64> {
        let default = || {
            self.builtin()?
                .options
                .iter()
                .find(|o| o.name == name)
                .map(|o| o.default)
        };
        self.options.params.get(name).copied().or_else(default)
    }

    /// The names of the metric options and expression parameters of this run, set or defaulted.
    pub fn param_names(&self) -> Vec<String> {
        let defaults = self
            .builtin()
            .into_iter()
            .flat_map(|b| b.options.iter().map(|o| o.name.to_string()));
        self.options.params.keys().cloned().chain(defaults).collect()
    }

    /// Whether the run draws calibration data: for the method's statistics or OWL's outlier ratios.
    pub fn needs_calibration(&self, method: &Method) -> bool {
        method.needs_calibration() || self.allocation.needs_calibration()
    }

    /// One spelling per run: the group in force written out, options at their defaults left
    /// out, and a data-free method's calibration settings cleared (nothing about them can change
    /// its result), so that equal runs get equal ids.
    pub fn normalise(&mut self, method: &Method) {
        self.options.group = self.group_in_force(method);
        if let Some(builtin) = self.builtin() {
            self.options.params = builtin.normalise(&self.options.params);
        }
        if !self.needs_calibration(method) {
            self.calib = String::new();
            self.nsamples = 0;
            self.seed = 0;
            self.calib_batch_size = 0;
        }
    }

    /// The comparison group in force: a metric's own default when none was given (unstructured
    /// only; N:M fixes the groups), so that a run records what it did.
    pub fn group_in_force(&self, method: &Method) -> Option<Group> {
        match (method.update, self.pattern) {
            (Update::Zero, Pattern::Unstructured) => Some(method.group),
            _ => self.options.group,
        }
    }

    /// Checks the calibration settings and finds its file before any model is loaded.
    fn check_calibration(&self, hub: &Hub) -> Result<()> {
        ensure!(self.nsamples >= 1, "--nsamples must be at least 1 (the paper uses 128)");
        ensure!(self.calib_batch_size >= 1, "--calib-batch-size must be at least 1");
        CalibSource::parse(&self.calib).locate(hub).map(|_| ())
    }
}

impl EvalSpec {
    /// The zero-shot tasks, and the perplexity corpora with their report labels, each once and in
    /// order. A task's name and a corpus's label are also the keys its finished part is kept under
    /// (`crate::resume`).
    fn parts(&self) -> (Vec<&str>, Vec<(&str, String)>) {
        let mut names: Vec<&str> = Vec::new();
        for n in &self.names {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        let (tasks, specs): (Vec<&str>, Vec<&str>) = names.into_iter().partition(|n| ALL_TASKS.contains(n));
        let labels = ppl_labels(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        (tasks, specs.into_iter().zip(labels).collect())
    }

    /// This evaluation without what an earlier attempt kept (the finished parts by the keys they
    /// are kept under, and the documents of started tasks): what a resumed attempt still runs.
    pub fn without_parts(&self, kept: &Kept) -> EvalSpec {
        let finished = &kept.finished;
        let (tasks, corpora) = self.parts();
        let left: Vec<String> = tasks
            .into_iter()
            .filter(|t| !finished.iter().any(|f| f == t))
            .chain(
                corpora
                    .into_iter()
                    .filter(|(_, l)| !finished.contains(l))
                    .map(|(s, _)| s),
            )
            .map(str::to_string)
            .collect();
        let mut scored = kept.started.clone();
        scored.retain(|t, _| left.contains(t));
        EvalSpec {
            names: left,
            scored,
            ..self.clone()
        }
    }

    /// Fails on unknown tasks, corpora that cannot be found and empty limits before any model
    /// is loaded or pruned.
    pub fn check(&self, hub: &Hub) -> Result<()> {
        ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(
            self.max_windows != Some(0),
            "--max-windows must be at least 1 (leave it out for every window)"
        );
        ensure!(
            self.limit != Some(0),
            "--limit must be at least 1 (leave it out for every document)"
        );
        for n in &self.names {
            if ALL_TASKS.contains(&n.as_str()) {
                let t = task(n)?;
                hub.repo(t.hub_id, RepoKind::Dataset)
                    .get(t.file)
                    .with_context(|| format!("task {n}"))?;
            } else {
                PplCorpus::parse(n).locate(hub)?;
            }
        }
        Ok(())
    }
}

/// Receives each stage name ("loading", "pruning", "wikitext2", ...) and each human-readable result line.
pub trait Observer {
    fn stage(&self, _stage: &str) {}
    fn line(&self, _line: &str) {}
}

/// Prints result lines to stdout: the plain `repro prune`/`repro eval` output.
pub struct PrintLines;
impl Observer for PrintLines {
    fn line(&self, line: &str) {
        println!("{line}");
    }
}

/// Reports nothing (`--json`).
pub struct Quiet;
impl Observer for Quiet {}

/// Loads, prunes (when `prune` is given), evaluates, and saves the model as a Hugging Face
/// checkpoint when `save` names a directory; returns the result object that `--json` prints and
/// sweep records store. With `parts_file`, each finished evaluation part is kept there, and
/// those an earlier attempt kept for the same weights are taken instead of evaluated (`resume`).
pub fn run_job(
    hub: &Hub,
    spec: &ModelSpec,
    prune: Option<&PruneSpec>,
    eval: &EvalSpec,
    save: Option<&Path>,
    parts_file: Option<&Path>,
    obs: &dyn Observer,
) -> Result<RunResult> {
    let start = Instant::now();
    let method = prune.map(PruneSpec::method).transpose()?;
    // The pruning settings when the method draws calibration data.
    let calibrated = prune.filter(|p| method.as_ref().is_some_and(|m| p.needs_calibration(m)));
    if let Some(p) = calibrated {
        p.check_calibration(hub)?;
    }
    eval.check(hub)?;
    if let Some(dir) = spec.memory.scratch.as_ref().filter(|d| !d.is_dir()) {
        bail!(
            "--scratch {}: no such directory; create it or name another",
            dir.display()
        );
    }
    obs.stage("loading");
    let device = parse_device(&spec.device)?;
    let kind = parse_dtype(spec.dtype.as_deref(), device)?;
    ensure!(
        !spec.sparse_kernels || matches!(device, tch::Device::Cuda(_)),
        "--sparse-kernels runs 2:4 layers on cuSPARSELt, which needs --device cuda"
    );
    if let Some(dir) = save {
        refuse_saving_over_source(hub, &spec.model, dir)?;
    }
    let mut loaded = model::load(hub, &spec.model, device, kind, spec.streaming)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let seqlen = window_length(spec.seqlen, loaded.model.info().max_position_embeddings)?;
    let plan = memory_plan(
        &loaded.config,
        spec,
        kind,
        device,
        loaded.model.stack().is_streamed(),
        prune.zip(method.as_ref()),
        seqlen,
    )?;
    for line in plan.lines() {
        eprintln!("{line}");
    }
    plan.check_scratch()?;
    if let (Some(dir), Some(streamed)) = (&spec.memory.scratch, loaded.model.stack_mut().streamed_mut()) {
        streamed.set_scratch(dir);
    }
    if let Some(p) = calibrated {
        check_gpu_calibration_memory(&loaded, &plan, p.nsamples, seqlen, p.calib_batch_size)?;
    }
    let evaluations = Evaluations::prepare(hub, &loaded, eval, seqlen, obs)?;
    if let Some(dir) = save {
        if loaded.model.stack().is_streamed() {
            // A streamed model writes each pruned block straight into the checkpoint.
            crate::checkpoint::begin_streamed_save(dir)?;
            loaded.model.stack_mut().write_blocks_to(dir)?;
        } else {
            crate::checkpoint::check_target(dir, false)?;
        }
    }
    let mut out = RunResult {
        model: spec.model.clone(),
        architecture: loaded.model.info().architecture.to_string(),
        device: device_name(device),
        dtype: dtype_name(kind).to_string(),
        seqlen,
        streamed: loaded.model.stack().is_streamed(),
        load_seconds,
        memory_plan: Some(plan.numbers()),
        repro_version: env!("CARGO_PKG_VERSION").to_string(),
        ..RunResult::default()
    };
    if let (Some(p), Some(method)) = (prune, method) {
        let spill_to = plan.spill_to.as_deref();
        prune_step(hub, &mut loaded, p, &method, seqlen, spill_to, obs, &mut out)?;
    }
    if prune.is_none() {
        if let Some(saved) = crate::checkpoint::check_saved_sparsity(&loaded)? {
            obs.line(&format!("checkpoint saved by repro: sparsity {:.4}", saved.sparsity));
            out.sparsity_actual = Some(saved.sparsity);
            if let Some(w) = saved.warning {
                eprintln!("warning: {w}");
                out.warnings.push(w);
            }
        }
    }
    let mut parts = match parts_file {
        Some(path) if !evaluations.is_empty() => {
            obs.stage("weights digest");
            // Unpruned weights are the checkpoint's, which the run id already names.
            let digest = match prune {
                Some(_) => weights_digest(loaded.model.as_ref())?,
                None => "checkpoint".to_string(),
            };
            let (parts, warning) = Parts::open(path.to_path_buf(), digest);
            if let Some(w) = warning {
                eprintln!("warning: {w}");
                out.warnings.push(w);
            }
            parts
        }
        _ => Parts::not_kept(),
    };
    if spec.sparse_kernels {
        out.sparse_kernel_layers = Some(crate::kernels::use_sparse_kernels(loaded.model.as_mut())?);
    }
    let evaluated = evaluations.run(&loaded, eval, seqlen, obs, &mut parts, &mut out);
    out.warnings.extend(parts.unkept().map(str::to_string));
    out.resumed = parts.resumed().to_vec();
    out.resumed_seconds = (!out.resumed.is_empty()).then(|| parts.resumed_seconds());
    if let Some(dir) = save {
        // A failed evaluation does not throw the pruned model away.
        out.saved_to = Some(dir.to_path_buf());
        crate::checkpoint::save(&mut loaded, dir, &serde_json::to_value(&out)?)?;
        obs.line(&format!("saved the model to {}", dir.display()));
        evaluated.with_context(|| format!("the model was saved to {} (without this evaluation)", dir.display()))?;
    } else {
        evaluated?;
    }
    out.total_seconds = start.elapsed().as_secs_f64();
    out.peak_rss_bytes = peak_rss_bytes();
    Ok(out)
}

/// `--seqlen`, or the model's max_position_embeddings as the official code uses; longer windows
/// would index past learned position tables (OPT) or leave the range a model was trained on.
fn window_length(requested: Option<usize>, max_positions: i64) -> Result<usize> {
    if max_positions < 2 {
        bail!("config.json: `max_position_embeddings` = {max_positions}, but a window needs at least 2 positions; fix the field");
    }
    match requested {
        None => Ok(max_positions as usize),
        Some(n) if n < 2 => bail!("--seqlen must be at least 2 (got {n})"),
        Some(n) if n as i64 > max_positions => {
            bail!("seqlen {n} (--seqlen, or a sweep's `seqlen:`) is longer than the model's max_position_embeddings ({max_positions} in config.json); use at most {max_positions}")
        }
        Some(n) => Ok(n),
    }
}

/// Saving into the directory the model is read from would overwrite it (mid-run, for a
/// streamed model).
fn refuse_saving_over_source(hub: &Hub, model: &str, dir: &Path) -> Result<()> {
    let config = hub.repo(model, RepoKind::Model).get("config.json")?;
    let source = config.parent().and_then(|d| d.canonicalize().ok());
    if source.is_some() && dir.canonicalize().ok() == source {
        bail!(
            "--save {}: this is the directory of the model `{model}` itself; choose another directory",
            dir.display()
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn prune_step(
    hub: &Hub,
    loaded: &mut Loaded,
    p: &PruneSpec,
    method: &Method,
    seqlen: usize,
    spill_to: Option<&Path>,
    obs: &dyn Observer,
    out: &mut RunResult,
) -> Result<()> {
    // At sparsity 0 nothing is pruned (as the official code), so no calibration is drawn.
    let calib = if p.needs_calibration(method) && p.sparsity > 0.0 {
        obs.stage("calibration data");
        let (file, windows) =
            CalibSource::parse(&p.calib).windows(hub, &loaded.tokenizer, p.nsamples, seqlen, p.seed)?;
        out.calibration = Some(CalibrationUsed {
            source: p.calib.clone(),
            file,
            nsamples: p.nsamples,
            seqlen,
            seed: p.seed,
        });
        Some(tch::Tensor::from_slice(&windows.concat()).view([p.nsamples as i64, seqlen as i64]))
    } else {
        None
    };
    obs.stage("pruning");
    let report = prune_model(
        loaded.model.as_mut(),
        method,
        p.sparsity,
        p.pattern,
        &p.allocation,
        calib.as_ref(),
        p.calib_batch_size,
        spill_to,
    )?;
    let allocated = match p.allocation.is_uniform() {
        true => String::new(),
        false => format!(" ({} allocation)", p.allocation),
    };
    obs.line(&format!(
        "{} {} at {}{allocated}: sparsity {:.4}, prune time {:.2}s (forward passes {:.2}s)",
        p.method, p.pattern, p.sparsity, report.sparsity_actual, report.prune_seconds, report.forward_seconds
    ));
    if let Some(a) = &report.allocation {
        let per_block: Vec<String> = a.block_sparsity.iter().map(|s| format!("{s:.4}")).collect();
        obs.line(&format!("per-block sparsity: {}", per_block.join(", ")));
    }
    if let Some(warning) = report.sparsity_warning() {
        eprintln!("warning: {warning}");
        out.warnings.push(warning);
    }
    out.method = Some(p.method.clone());
    out.metric = p.options.metric.clone();
    out.params = p.options.params.clone();
    out.pattern = Some(p.pattern.to_string());
    out.group = p.group_in_force(method);
    out.use_variant = Some(p.options.use_variant);
    out.sparsity_target = Some(p.sparsity);
    out.sparsity_actual = Some(report.sparsity_actual);
    out.prune_seconds = Some(report.prune_seconds);
    out.calibration_forward_seconds = Some(report.forward_seconds);
    out.allocation = report.allocation;
    out.layers = report.layers;
    Ok(())
}

/// The memory plan of a run of the model whose config.json is `config`: pruning's calibration
/// buffers and statistics (when `prune` calibrates) beside the weights in flight, in `kind`.
fn memory_plan(
    config: &Value,
    spec: &ModelSpec,
    kind: tch::Kind,
    device: tch::Device,
    streamed: bool,
    prune: Option<(&PruneSpec, &Method)>,
    seqlen: usize,
) -> Result<MemoryPlan> {
    let shape = ModelShape::from_config(config)?;
    let elt = kind.elt_size_in_bytes() as f64;
    let calibration = prune
        .filter(|(p, _)| p.sparsity > 0.0)
        .map(|(p, m)| {
            // An OWL allocation calibrates even for a data-free method: its buffers count.
            let calibrates = p.needs_calibration(m);
            crate::sweep::estimate::calibration_memory(
                &shape,
                m,
                calibrates,
                p.nsamples,
                seqlen,
                p.calib_batch_size,
                elt,
            )
        })
        .unwrap_or_default();
    Ok(MemoryPlan::new(
        &shape,
        kind,
        device,
        streamed,
        calibration,
        &spec.memory,
    ))
}

/// `--plan`: the memory plan of a run from config.json alone, without loading or running anything.
pub fn plan_only(hub: &Hub, spec: &ModelSpec, prune: Option<&PruneSpec>) -> Result<MemoryPlan> {
    let method = prune.map(PruneSpec::method).transpose()?;
    let device = parse_device(&spec.device)?;
    let kind = parse_dtype(spec.dtype.as_deref(), device)?;
    let (config_path, config) = model::read_config(&hub.repo(&spec.model, RepoKind::Model))?;
    let shape = ModelShape::from_config(&config).with_context(|| config_path.display().to_string())?;
    let seqlen = window_length(spec.seqlen, shape.max_positions as i64)?;
    let weights = shape.params() * kind.elt_size_in_bytes() as u64;
    let streamed = spec.streaming.decide(weights, device);
    memory_plan(
        &config,
        spec,
        kind,
        device,
        streamed,
        prune.zip(method.as_ref()),
        seqlen,
    )
}

/// On a GPU, calibration's two activation buffers (every sample's hidden states entering and
/// leaving the current block) and one batch's activations (MLP, eager attention) live in device
/// memory beside the weights: refuse sizes that cannot fit rather than abort mid-allocation. (On
/// the CPU the memory plan moves the buffers to disk instead.)
fn check_gpu_calibration_memory(
    loaded: &Loaded,
    plan: &MemoryPlan,
    nsamples: usize,
    seqlen: usize,
    batch: usize,
) -> Result<()> {
    let tch::Device::Cuda(i) = loaded.model.device() else {
        return Ok(());
    };
    let Some((free, _)) = crate::device::cuda_memory(i) else {
        return Ok(());
    };
    let (buffer, working) = (plan.calibration.buffer as u128, plan.calibration.working as u128);
    let needed = 2 * buffer + working;
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    ensure!(
        needed <= free as u128,
        "calibration with --nsamples {nsamples} x seqlen {seqlen} needs {:.1} GiB of cuda:{i} (with the weights loaded): \
         two activation buffers of {:.1} GiB each and the working set of {} sample(s) at a time, more than the {:.1} GiB \
         free; use a smaller --nsamples or --seqlen, a smaller --calib-batch-size, or --stream on (blocks then occupy \
         the GPU one at a time)",
        gib(needed),
        gib(buffer),
        batch.min(nsamples),
        gib(free as u128),
    );
    Ok(())
}

/// Evaluation names split into zero-shot tasks and tokenized perplexity corpora, each once, in
/// order; made before pruning so that a corpus too short for one window fails before the work.
struct Evaluations {
    tasks: Vec<TaskDocs>,
    corpora: Vec<Corpus>,
}

struct Corpus {
    spec: String,
    label: String,
    ids: Vec<i64>,
}

impl Evaluations {
    fn prepare(hub: &Hub, loaded: &Loaded, eval: &EvalSpec, seqlen: usize, obs: &dyn Observer) -> Result<Self> {
        let (tasks, specs) = eval.parts();
        let tasks = tasks
            .iter()
            .map(|t| TaskDocs::load(hub, t, eval.limit))
            .collect::<Result<Vec<_>>>()?;
        let mut corpora = Vec::new();
        for (spec, label) in specs {
            obs.stage(&format!("tokenizing {label}"));
            let ids = PplCorpus::parse(spec).token_ids(hub, seqlen, &|t| loaded.tokenizer.encode(t))?;
            ensure!(
                ids.len() >= seqlen,
                "{label}: {} tokens do not fill one window of seqlen {seqlen}; use a smaller --seqlen or a longer text",
                ids.len()
            );
            corpora.push(Corpus {
                spec: spec.to_string(),
                label,
                ids,
            });
        }
        Ok(Evaluations { tasks, corpora })
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.corpora.is_empty()
    }

    fn run(
        &self,
        loaded: &Loaded,
        eval: &EvalSpec,
        seqlen: usize,
        obs: &dyn Observer,
        parts: &mut Parts,
        out: &mut RunResult,
    ) -> Result<()> {
        if !self.corpora.is_empty() {
            eval_ppl(loaded, &self.corpora, seqlen, eval, obs, parts, out)?;
        }
        if !self.tasks.is_empty() {
            eval_tasks(loaded, &self.tasks, eval, obs, parts, out)?;
        }
        Ok(())
    }
}

/// Zero-shot accuracy per task; fills `zero_shot` with lm-eval's metric names and the mean acc.
/// `zero_shot_seconds` adds up the tasks' own times, those of an earlier attempt included.
fn eval_tasks(
    loaded: &Loaded,
    tasks: &[TaskDocs],
    eval: &EvalSpec,
    obs: &dyn Observer,
    parts: &mut Parts,
    out: &mut RunResult,
) -> Result<()> {
    let mut seconds = 0.0;
    let mut accs = Vec::new();
    let mut all_tokens = TokenCounts::default();
    for td in tasks {
        let name = td.task.name;
        let (part, earlier) = parts.task(name, |scored, keep| {
            match scored.docs {
                0 => obs.stage(name),
                n => obs.stage(&format!("{name} after the {n} documents an earlier attempt scored")),
            }
            let evaluated = evaluate_docs(
                loaded.model.as_ref(),
                &loaded.tokenizer,
                td,
                eval.batch_size,
                scored,
                keep,
            )?;
            Ok(TaskPart {
                result: evaluated.result,
                tokens: evaluated.tokens,
                samples: evaluated.samples,
                seconds: evaluated.seconds,
            })
        })?;
        let earlier = if earlier { EARLIER } else { "" };
        let r = part.result;
        all_tokens.add(part.tokens);
        out.zero_shot_tokens.insert(name.to_string(), part.tokens);
        let norm = r.acc_norm.map(|a| format!(", acc_norm {:.4}", a)).unwrap_or_default();
        obs.line(&format!(
            "{name:<16} acc {:.4} ± {:.4}{norm}   ({} documents){earlier}",
            r.acc,
            r.acc_stderr.unwrap_or(f64::NAN),
            r.n
        ));
        accs.push(r.acc);
        seconds += part.seconds;
        out.zero_shot.insert(name.to_string(), r);
        out.zero_shot_samples.extend(part.samples);
    }
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    if accs.len() > 1 {
        obs.line(&format!("{:<16} acc {:.4}", "mean", mean));
    }
    out.zero_shot_mean_acc = Some(mean);
    out.zero_shot_padding_fraction = Some(all_tokens.padding_fraction());
    out.zero_shot_limit = eval.limit;
    out.zero_shot_seconds = Some(seconds);
    Ok(())
}

/// Marks a result line whose part an earlier attempt of the run measured.
const EARLIER: &str = "   (finished by an earlier attempt)";

/// Perplexity on each corpus; fills `ppl`, `n_tokens`, `ppl_details`. `eval_seconds` adds up
/// the corpora's own times, those of an earlier attempt included.
fn eval_ppl(
    loaded: &Loaded,
    corpora: &[Corpus],
    seqlen: usize,
    eval: &EvalSpec,
    obs: &dyn Observer,
    parts: &mut Parts,
    out: &mut RunResult,
) -> Result<()> {
    let mut secs = 0.0;
    let mut tokens = 0usize;
    for Corpus { spec, label, ids } in corpora {
        let (part, earlier) = parts.ppl(label, || {
            obs.stage(label);
            let start = Instant::now();
            let r = perplexity(
                loaded.model.as_ref(),
                ids,
                seqlen,
                eval.batch_size,
                eval.max_windows,
                label,
            )?;
            let details = PplDetails {
                source: spec.clone(),
                n_tokens: r.n_tokens,
                windows: r.windows,
                seqlen,
                batch_size: eval.batch_size,
                max_windows: eval.max_windows,
            };
            Ok(PplPart {
                ppl: r.ppl,
                details,
                seconds: start.elapsed().as_secs_f64(),
            })
        })?;
        let earlier = if earlier { EARLIER } else { "" };
        let d = &part.details;
        obs.line(&format!(
            "{label:<16} ppl {:>10.4}   ({} windows x {seqlen} tokens of {}){earlier}",
            part.ppl, d.windows, d.n_tokens
        ));
        tokens += d.windows * seqlen;
        secs += part.seconds;
        out.ppl.insert(label.clone(), part.ppl);
        out.ppl_details.insert(label.clone(), part.details);
    }
    out.eval_seconds = Some(secs);
    out.eval_tokens_per_second = Some(tokens as f64 / secs.max(1e-9));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed attempt's evaluation drops the finished parts by the keys they are kept under:
    /// task names, and corpus labels (the whole spec where two corpora share a short label).
    #[test]
    fn finished_parts_leave_the_evaluation_by_their_keys() {
        let eval = EvalSpec {
            names: [
                "rte",
                "wikitext2",
                "a/test.txt",
                "hellaswag",
                "b/test.txt",
                "books/heldout.txt",
                "rte",
            ]
            .map(String::from)
            .to_vec(),
            batch_size: 4,
            max_windows: Some(8),
            limit: Some(100),
            scored: BTreeMap::new(),
        };
        let (tasks, corpora) = eval.parts();
        assert_eq!(tasks, ["rte", "hellaswag"]);
        let labels: Vec<&str> = corpora.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["wikitext2", "a/test.txt", "b/test.txt", "heldout.txt"]);
        let kept = Kept {
            finished: ["rte", "heldout.txt", "a/test.txt", "wikitext2"]
                .map(String::from)
                .to_vec(),
            started: BTreeMap::from([("hellaswag".into(), 60), ("boolq".into(), 20)]),
        };
        let left = eval.without_parts(&kept);
        assert_eq!(left.names, ["hellaswag", "b/test.txt"]);
        assert_eq!((left.batch_size, left.max_windows, left.limit), (4, Some(8), Some(100)));
        assert_eq!(
            left.scored,
            BTreeMap::from([("hellaswag".to_string(), 60)]),
            "tasks of this evaluation only"
        );
        assert_eq!(
            eval.without_parts(&Kept::default()).names,
            [
                "rte",
                "hellaswag",
                "wikitext2",
                "a/test.txt",
                "b/test.txt",
                "books/heldout.txt"
            ]
        );
    }
}
