//! `repro run --dry-run`: the plan as a researcher needs it before booking GPU time. Each
//! problem once (a model that cannot be had, with the cause in plain words and the fix; a dataset
//! that cannot be identified), the runs it blocks counted under it; then every runnable run with
//! its id, state, estimated time and memory; then per model and in total the runs, compute time,
//! peak memory, whether it fits on the selected device, and the wall time on N workers.

use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;

use super::estimate::{for_run, Estimate, Fit, Phases, Target};
use super::probe::{throughput, Throughput};
use super::store::{Status, Store};
use super::tokens::{calibration_name, count, tokenizer_of, EvalTokens};
use super::Planned;
use crate::calib::CalibSource;
use crate::config::{RunSpec, SweepConfig};
use crate::data::PplCorpus;
use crate::eval::tasks::task;
use crate::hub::{Hub, RepoKind};
use crate::model::shape::ModelShape;
use crate::run_result::RunResult;

/// How much of the plan to print.
#[derive(Clone, Copy, Debug)]
pub struct DryRunOptions {
    /// Estimate costs (a dry run); a real run lists its plan only, so that counting tokens and
    /// probing the device leave nothing in the memory its records measure.
    pub costs: bool,
    /// List the runs blocked by a problem one by one.
    pub verbose: bool,
    /// Workers the wall time is spread over (the SLURM path runs one run per task).
    pub workers: usize,
}

/// Why a model's runs cannot run as planned (the model cannot be had, or does not suit the
/// sweep), in plain words, and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub cause: String,
    pub fix: String,
    /// The error, each cause once.
    pub detail: Option<String>,
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A model's config.json (downloading that file alone when online and not on disk), or why not.
pub fn model_config(hub: &Hub, model: &str) -> Result<Value, Problem> {
    let repo = hub.repo(model, RepoKind::Model);
    // A directory of the user's (not the mirror's copy, which the cache and the hub complete).
    let own_dir = repo.local_dir().is_some_and(|d| !hub_mirrored(hub, d));
    if !own_dir && !repo.has_local("config.json") && offline() {
        return Err(Problem {
            cause: "offline and not cached".into(),
            fix: "download it where there is network (`repro eval --model ID` once), set --hub-mirror / REPRO_HUB_MIRROR to a mirror holding it, or unset HF_HUB_OFFLINE".into(),
            detail: None,
        });
    }
    let path = repo.get("config.json").map_err(|e| match own_dir {
        true => Problem {
            cause: "no config.json".into(),
            fix: "point it to a Hugging Face checkpoint directory".into(),
            detail: Some(crate::error_chain(&e)),
        },
        false => classify(model, &e),
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| Problem {
        cause: "config.json unreadable".into(),
        fix: format!("check {}", path.display()),
        detail: Some(e.to_string()),
    })?;
    serde_json::from_str(&text).map_err(|e| Problem {
        cause: "config.json is not JSON".into(),
        fix: format!("repair {}", path.display()),
        detail: Some(e.to_string()),
    })
}

/// The dataset repos a run reads (calibration, perplexity corpora, tasks) that cannot be had
/// offline: not in the mirror nor in the HF cache. Online, the hub is asked when ids are worked out.
fn datasets_missing_offline(hub: &Hub, spec: &RunSpec) -> Vec<String> {
    if !offline() {
        return Vec::new();
    }
    let calib = spec
        .prune
        .as_ref()
        .filter(|p| !p.calib.is_empty())
        .and_then(|p| match CalibSource::parse(&p.calib) {
            CalibSource::C4 { repo } | CalibSource::Wikitext2 { repo } => Some(repo),
            CalibSource::File { .. } => None,
        });
    let evals = spec.eval.names.iter().filter_map(|n| match task(n) {
        Ok(t) => Some(t.hub_id.to_string()),
        Err(_) => match PplCorpus::parse(n) {
            PplCorpus::Wikitext2 { repo } | PplCorpus::C4 { repo } => Some(repo),
            PplCorpus::Text { .. } => None,
        },
    });
    calib
        .into_iter()
        .chain(evals)
        .filter(|id| {
            let repo = hub.repo(id, RepoKind::Dataset);
            repo.local_dir().is_none() && repo.cached_revision().is_none()
        })
        .collect()
}

fn hub_mirrored(hub: &Hub, dir: &std::path::Path) -> bool {
    hub.mirror.as_ref().is_some_and(|m| dir.starts_with(m))
}

/// What the hub answered a request for a file: its HTTP status and `X-Error-Code` (the hub
/// answers 401 for a missing repo as for a gated one without a token; the code tells them apart).
fn hub_answer(e: &anyhow::Error) -> Option<(u16, String)> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<hf_hub::api::sync::ApiError>()? {
            hf_hub::api::sync::ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(code, response) => {
                    Some((*code, response.header("x-error-code").unwrap_or_default().to_string()))
                }
                ureq::Error::Transport(_) => Some((0, String::new())),
            },
            _ => None,
        })
}

/// A failed download of config.json in plain words: no network, no such repo, a gated repo.
fn classify(model: &str, e: &anyhow::Error) -> Problem {
    let detail = Some(crate::error_chain(e));
    let problem = |cause: &str, fix: String| Problem {
        cause: cause.into(),
        fix,
        detail: detail.clone(),
    };
    match hub_answer(e) {
        Some((_, code)) if code == "GatedRepo" => problem(
            "gated",
            format!("accept its licence on https://huggingface.co/{model} and set HF_TOKEN to a token of that account"),
        ),
        Some((_, code)) if code == "EntryNotFound" => problem(
            "no config.json",
            "check that the repo holds a transformers checkpoint".into(),
        ),
        Some((401 | 404, _)) => problem(
            "not found on the hub",
            "check the id (organisation/name, case matters); a private repo needs HF_TOKEN".into(),
        ),
        Some((403, _)) => problem(
            "access refused",
            "set HF_TOKEN to a token of an account with access".into(),
        ),
        Some((0, _)) => problem(
            "the hub cannot be reached",
            "run where there is network, or put the model in the HF cache or a --hub-mirror".into(),
        ),
        _ => problem("config.json could not be had", "see the error below".into()),
    }
}

/// A model's shape and token counts, or the problem that keeps it from running.
struct ModelPlan {
    shape: Result<ModelShape, String>,
    tokens: EvalTokens,
    problem: Option<Problem>,
}

fn plan_model(hub: &Hub, model: &str, seqlen: Option<usize>, eval_names: &[String], count_tokens: bool) -> ModelPlan {
    let config = model_config(hub, model);
    let shape = match &config {
        Ok(c) => ModelShape::from_config(c).map_err(|e| format!("{e:#}")),
        Err(_) => Err("unknown shape".into()),
    };
    let problem = match (&config, &shape) {
        (Err(p), _) => Some(p.clone()),
        (Ok(_), Ok(shape)) => window_beyond(shape, seqlen),
        (Ok(_), Err(_)) => None,
    };
    let tokens = match (&config, &shape) {
        (Ok(c), Ok(_)) if count_tokens => {
            let tok = tokenizer_of(hub, model, c);
            let id = tok.as_ref().map_or("characters".to_string(), |(_, id)| id.clone());
            count(hub, tok.as_ref().map(|(t, _)| t), &id, eval_names)
        }
        _ => EvalTokens::default(),
    };
    ModelPlan { shape, tokens, problem }
}

/// A window longer than the model's positions: every run of the model would fail as it loads
/// (see `crate::pipeline`), after its wait in a queue; `repro slurm` submits none of them.
pub fn window_beyond(shape: &ModelShape, seqlen: Option<usize>) -> Option<Problem> {
    let max = shape.max_positions;
    seqlen.filter(|&n| n as u64 > max).map(|n| Problem {
        cause: format!("seqlen {n} is longer than its max_position_embeddings ({max} in config.json)"),
        fix: format!("set `seqlen:` to at most {max}, or leave it out for {max} (the paper's choice)"),
        detail: None,
    })
}

/// Phase-by-phase ratios of measured to estimated seconds over the plan's finished runs, per
/// model and over all models: a finished run's rates replace the probe's from then on.
#[derive(Default)]
struct Measured {
    sums: BTreeMap<Option<String>, (Phases<f64>, Phases<f64>, usize)>,
}

impl Measured {
    fn add(&mut self, model: &str, estimated: &Phases<f64>, result: &RunResult) {
        let measured = Phases {
            calibration: result.calibration_forward_seconds.unwrap_or(0.0),
            pruning: result.prune_seconds.unwrap_or(0.0),
            perplexity: result.eval_seconds.unwrap_or(0.0),
            zero_shot: result.zero_shot_seconds.unwrap_or(0.0),
        };
        for key in [Some(model.to_string()), None] {
            let (m, e, n) = self.sums.entry(key).or_default();
            *m = m.zip(measured, |a, b| a + b);
            *e = e.zip(*estimated, |a, b| a + b);
            *n += 1;
        }
    }

    /// `estimated` scaled phase by phase with the model's finished runs, else all finished runs.
    fn correct(&self, model: &str, estimated: Phases<f64>) -> Phases<f64> {
        let Some((m, e, _)) = self.sums.get(&Some(model.to_string())).or_else(|| self.sums.get(&None)) else {
            return estimated;
        };
        let ratio = m.zip(*e, |m, e| if e > 0.0 && m > 0.0 { m / e } else { 1.0 });
        estimated.zip(ratio, |x, k| x * k)
    }

    fn runs(&self) -> usize {
        self.sums.get(&None).map_or(0, |s| s.2)
    }
}

/// Estimates runs of a plan: each model's shape and token counts worked out once, the device's
/// rates probed once, and the plan's finished runs' measured rates applied. What the dry run
/// prints, and what a scheduler asks for each task's time and memory.
pub struct Estimator {
    models: BTreeMap<String, ModelPlan>,
    target: Target,
    rates: Result<Throughput, String>,
    measured: Measured,
}

impl Estimator {
    /// For the models of `selected`; the finished runs of `all` (in `store`) correct the rates.
    pub fn new(hub: &Hub, all: &[Planned], selected: &[&Planned], store: &Store) -> Estimator {
        Self::build(hub, all, selected, store, true)
    }

    /// With `costs` false, only what can keep a model from running is worked out.
    fn build(hub: &Hub, all: &[Planned], selected: &[&Planned], store: &Store, costs: bool) -> Estimator {
        // The runtime's own memory: this process with libtorch initialised, before the probe's
        // and the token counts' buffers (which a run does not hold) are allocated.
        let _ = tch::get_num_threads();
        let runtime_bytes = crate::resources::rss_bytes().unwrap_or(0);
        let mut models = BTreeMap::new();
        for p in selected {
            let m = &p.run.spec.model.model;
            if !models.contains_key(m) {
                let runs = all.iter().filter(|q| &q.run.spec.model.model == m);
                let calibrations = runs
                    .clone()
                    .filter_map(|q| q.run.spec.prune.as_ref().filter(|p| !p.calib.is_empty()))
                    .map(|p| calibration_name(&p.calib));
                let names: Vec<String> = runs
                    .flat_map(|q| q.run.spec.eval.names.clone())
                    .chain(calibrations)
                    .collect();
                models.insert(m.clone(), plan_model(hub, m, p.run.spec.model.seqlen, &names, costs));
            }
        }
        // Every run of a sweep has the sweep's device and dtype (the default written out).
        let spec = selected.first().map(|p| &p.run.spec.model);
        let device = spec.map_or("cpu", |s| s.device.as_str());
        let dtype = spec.and_then(|s| s.dtype.clone()).unwrap_or_else(|| "f32".into());
        let needed = costs && models.values().any(|m| m.shape.is_ok());
        let (target, rates) = target(device, &dtype, needed, runtime_bytes);
        let mut estimator = Estimator {
            models,
            target,
            rates,
            measured: Measured::default(),
        };
        for p in all.iter().filter(|p| p.id.is_ok()) {
            if let (Ok(Some(r)), Some(seconds)) = (
                store.get(p.id()),
                estimator.probe_estimate(&p.run.spec).and_then(|e| e.seconds),
            ) {
                if r.status == Status::Ok {
                    estimator.measured.add(&p.run.spec.model.model, &seconds, &r.result);
                }
            }
        }
        estimator
    }

    fn probe_estimate(&self, spec: &RunSpec) -> Option<Estimate> {
        let plan = self.models.get(&spec.model.model).filter(|m| m.problem.is_none())?;
        Some(for_run(spec, plan.shape.as_ref().ok()?, &plan.tokens, &self.target))
    }

    /// A run's cost, its times scaled to the measured rates of finished runs when there are any;
    /// `None` when its model's shape is unknown.
    pub fn estimate(&self, spec: &RunSpec) -> Option<Estimate> {
        let mut e = self.probe_estimate(spec)?;
        e.seconds = e.seconds.map(|s| self.measured.correct(&spec.model.model, s));
        Some(e)
    }
}

/// One run of the selection with its estimate (none for cached runs and unknown shapes).
struct Row<'a> {
    planned: &'a Planned,
    estimate: Option<Estimate>,
    seconds: Option<f64>,
    /// The live worker holding this run's claim, if another one is running it now.
    holder: Option<super::claim::ClaimInfo>,
    /// What an earlier attempt kept, which this one takes (`crate::resume`): finished evaluation
    /// parts, and the scored documents of tasks it stopped inside.
    kept: crate::resume::Kept,
}

/// Prints the plan of the selected runs and what they will cost.
pub fn print_plan(
    cfg: &SweepConfig,
    hub: &Hub,
    all: &[Planned],
    selected: &[&Planned],
    store: &Store,
    opts: DryRunOptions,
) -> Result<()> {
    let cached = selected.iter().filter(|p| p.cached).count();
    println!(
        "sweep `{}`: {} runs, {} cached, {} to run -> {}",
        cfg.name,
        selected.len(),
        cached,
        selected.len() - cached,
        cfg.output.display()
    );
    let est = Estimator::build(hub, all, selected, store, opts.costs);
    let rows: Vec<Row> = selected
        .iter()
        .map(|p| {
            let kept = if p.id.is_ok() && !p.cached {
                crate::resume::Kept::read(&store.parts_path(p.id()))
            } else {
                crate::resume::Kept::default()
            };
            // A resumed attempt loads and prunes again but evaluates only the missing parts.
            let estimate = if p.cached || !opts.costs {
                None
            } else if kept.is_empty() {
                est.estimate(&p.run.spec)
            } else {
                let mut left = p.run.spec.clone();
                left.eval = left.eval.without_parts(&kept);
                est.estimate(&left)
            };
            Row {
                planned: p,
                seconds: estimate.as_ref().and_then(|e| e.seconds).map(|s| s.total()),
                estimate,
                holder: (p.id.is_ok() && !p.cached)
                    .then(|| super::claim::holder(&store.dir, p.id()))
                    .flatten(),
                kept,
            }
        })
        .collect();
    let models: BTreeMap<&str, &ModelPlan> = est.models.iter().map(|(k, v)| (k.as_str(), v)).collect();
    print_problems(hub, &models, &rows, opts.verbose);
    print_runs(&rows, &models, opts);
    if opts.costs {
        print_models(cfg, &models, &rows, &est.target);
        print_totals(&rows, &est.rates, &est.measured, opts.workers);
    }
    Ok(())
}

/// The selected device's rates (probed or cached) and memory, or why they are unknown.
fn target(device: &str, dtype: &str, needed: bool, runtime_bytes: u64) -> (Target, Result<Throughput, String>) {
    let rates = if needed {
        throughput(device, Some(dtype))
    } else {
        Err("nothing to estimate".into())
    };
    let f32_rates = match (&rates, dtype) {
        (Ok(r), "f32") => Some(r.clone()),
        (Ok(_), _) => throughput(device, Some("f32")).ok(),
        _ => None,
    };
    let memory_bytes = match device {
        "cpu" => crate::resources::mem_available_bytes(),
        _ => rates.as_ref().ok().and_then(|r| r.memory_bytes),
    };
    (
        Target {
            rates: rates.clone().ok(),
            f32_rates,
            memory_bytes,
            runtime_bytes,
        },
        rates,
    )
}

fn print_problems(hub: &Hub, models: &BTreeMap<&str, &ModelPlan>, rows: &[Row], verbose: bool) {
    // Runs blocked by their model, by a dataset not at hand offline, then runs whose inputs
    // could not be identified, grouped by error. A run may be blocked by more than one.
    let mut lines: Vec<(String, Vec<&Row>)> = Vec::new();
    // Models with the same cause and fix on one line, the first one's error as the example.
    let mut by_cause: Vec<(&Problem, Vec<&str>)> = Vec::new();
    for model in order(rows.iter().map(|r| r.planned.run.spec.model.model.as_str())) {
        if let Some(p) = models.get(model).and_then(|m| m.problem.as_ref()) {
            match by_cause.iter_mut().find(|(q, _)| q.cause == p.cause && q.fix == p.fix) {
                Some((_, ms)) => ms.push(model),
                None => by_cause.push((p, vec![model])),
            }
        }
    }
    for (p, names) in by_cause {
        let blocked: Vec<&Row> = rows
            .iter()
            .filter(|r| names.contains(&r.planned.run.spec.model.model.as_str()))
            .collect();
        let count = |m: &str| rows.iter().filter(|r| r.planned.run.spec.model.model == m).count();
        let listed: Vec<String> = names.iter().map(|m| format!("`{m}` ({})", count(m))).collect();
        let detail = p.detail.as_ref().map(|d| format!("\n      {d}")).unwrap_or_default();
        let what = if names.len() == 1 { "model" } else { "models" };
        lines.push((
            format!(
                "{what} {}: {}\n      fix: {}{detail}",
                listed.join(", "),
                p.cause,
                p.fix
            ),
            blocked,
        ));
    }
    let missing: Vec<(&Row, Vec<String>)> = rows
        .iter()
        .map(|r| (r, datasets_missing_offline(hub, &r.planned.run.spec)))
        .collect();
    for dataset in order(missing.iter().flat_map(|(_, ds)| ds.iter().map(String::as_str))) {
        let blocked: Vec<&Row> = missing
            .iter()
            .filter(|(_, ds)| ds.iter().any(|d| d == dataset))
            .map(|(r, _)| *r)
            .collect();
        lines.push((
            format!("dataset `{dataset}`: offline and not cached\n      fix: download it where there is network, set --hub-mirror / REPRO_HUB_MIRROR to a mirror holding it, or unset HF_HUB_OFFLINE"),
            blocked,
        ));
    }
    let mut by_error: Vec<(&str, Vec<&Row>)> = Vec::new();
    for r in rows.iter().filter(|r| {
        models
            .get(r.planned.run.spec.model.model.as_str())
            .is_none_or(|m| m.problem.is_none())
    }) {
        if let Err(e) = &r.planned.id {
            match by_error.iter_mut().find(|(known, _)| known == e) {
                Some((_, rs)) => rs.push(r),
                None => by_error.push((e, vec![r])),
            }
        }
    }
    lines.extend(
        by_error
            .into_iter()
            .map(|(e, rs)| (format!("cannot be identified: {e}"), rs)),
    );
    if lines.is_empty() {
        return;
    }
    let blocked = rows
        .iter()
        .filter(|r| lines.iter().any(|(_, rs)| rs.iter().any(|b| std::ptr::eq(*b, *r))))
        .count();
    println!("\n{} problem(s), {blocked} run(s) cannot run as planned:", lines.len());
    for (line, rs) in &lines {
        println!("  {} run(s) - {line}", rs.len());
        if verbose {
            for r in rs {
                println!("      {}", r.planned.run.label);
            }
        }
    }
    if !verbose {
        println!("  (--verbose lists the runs of each)");
    }
}

/// Distinct items in order of first appearance.
fn order<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn print_runs(rows: &[Row], models: &BTreeMap<&str, &ModelPlan>, opts: DryRunOptions) {
    let blocked = |r: &Row| {
        r.planned.id.is_err()
            || models
                .get(r.planned.run.spec.model.model.as_str())
                .is_some_and(|m| m.problem.is_some())
    };
    let shown: Vec<&Row> = rows.iter().filter(|r| opts.verbose || !blocked(r)).collect();
    if shown.is_empty() {
        return;
    }
    println!("\n  {:<10} {:<16} {:>9} {:>10}  label", "state", "id", "time", "memory");
    for r in shown {
        let state = match (&r.planned.id, r.planned.cached, blocked(r)) {
            (Err(_), _, _) => "unresolved",
            (_, true, _) => "cached",
            (_, _, true) => "blocked",
            _ if r.holder.is_some() => "running",
            _ => "todo",
        };
        let time = r.seconds.map_or_else(
            || {
                if r.planned.cached || !opts.costs {
                    String::new()
                } else {
                    "?".into()
                }
            },
            duration,
        );
        let memory = r.estimate.as_ref().map_or(String::new(), |e| {
            bytes(peak_bytes(e, &r.planned.run.spec.model.device))
        });
        println!(
            "  {state:<10} {:<16} {time:>9} {memory:>10}  {}",
            r.planned.id(),
            r.planned.run.label
        );
        if let Some(worker) = &r.holder {
            println!(
                "  {:>39}  held by another worker: {} since {}",
                "",
                worker.worker(),
                super::status::clock(worker.started_at)
            );
        }
        if !r.kept.is_empty() {
            println!(
                "  {:>39}  resumes: {} by an earlier attempt (not in the time shown)",
                "",
                r.kept.describe()
            );
        }
        if let Some(p) = r.estimate.as_ref().and_then(|e| e.seconds).filter(|_| opts.verbose) {
            println!(
                "  {:>39}  calibration {}, pruning {}, perplexity {}, zero-shot {}",
                "",
                duration(p.calibration),
                duration(p.pruning),
                duration(p.perplexity),
                duration(p.zero_shot)
            );
        }
    }
}

/// The memory a run needs where it is scarce: the host's on CPU (runtime included), the GPU's otherwise.
fn peak_bytes(e: &Estimate, device: &str) -> u64 {
    if device == "cpu" {
        e.host_bytes
    } else {
        e.device_bytes
    }
}

fn fit_word(fit: Fit) -> &'static str {
    match fit {
        Fit::Fits => "fits",
        Fit::Streams => "fits streamed",
        Fit::NeedsStreaming => "needs `stream: on`",
        Fit::CannotFit => "cannot fit",
        Fit::Unknown => "?",
    }
}

fn print_models(cfg: &SweepConfig, models: &BTreeMap<&str, &ModelPlan>, rows: &[Row], target: &Target) {
    let memory = target.memory_bytes.map_or("memory unknown".to_string(), bytes);
    let on = format!("on {} ({memory})", cfg.device.0);
    let width = models.keys().map(|m| m.len()).max().unwrap_or(5).max(5);
    println!(
        "\n  {:<width$} {:>5} {:>5} {:>8} {:>10} {:>10} {:>11}  {on}",
        "model", "runs", "todo", "params", "compute", "time", "peak memory"
    );
    for model in order(rows.iter().map(|r| r.planned.run.spec.model.model.as_str())) {
        let Some(plan) = models.get(model) else { continue };
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.planned.run.spec.model.model == model)
            .collect();
        let todo: Vec<&&Row> = mine.iter().filter(|r| !r.planned.cached).collect();
        let (params, compute, time, peak, fit) = match &plan.shape {
            Ok(shape) => {
                let est: Vec<&Estimate> = todo.iter().filter_map(|r| r.estimate.as_ref()).collect();
                let flops = est.iter().fold(0.0, |a, e| a + e.flops());
                let secs: Option<f64> = todo.iter().map(|r| r.seconds).sum();
                let peak = mine
                    .iter()
                    .filter_map(|r| Some(peak_bytes(r.estimate.as_ref()?, &r.planned.run.spec.model.device)))
                    .max();
                let worst = est
                    .iter()
                    .map(|e| e.fit)
                    .max_by_key(|f| fit_rank(*f))
                    .map_or("", fit_word);
                (
                    count_words(shape.params() as f64),
                    flops_words(flops),
                    secs.map_or("?".into(), duration),
                    peak.map_or("".into(), bytes),
                    worst.to_string(),
                )
            }
            Err(why) => ("?".into(), "?".into(), "?".into(), "?".into(), why.clone()),
        };
        println!(
            "  {model:<width$} {:>5} {:>5} {params:>8} {compute:>10} {time:>10} {peak:>11}  {fit}",
            mine.len(),
            todo.len()
        );
    }
}

fn fit_rank(f: Fit) -> u8 {
    match f {
        Fit::Fits => 0,
        Fit::Streams => 1,
        Fit::Unknown => 2,
        Fit::NeedsStreaming => 3,
        Fit::CannotFit => 4,
    }
}

fn print_totals(rows: &[Row], rates: &Result<Throughput, String>, measured: &Measured, workers: usize) {
    let todo: Vec<&Row> = rows.iter().filter(|r| !r.planned.cached).collect();
    let mut times: Vec<f64> = todo.iter().filter_map(|r| r.seconds).collect();
    let unknown = todo.len() - times.len();
    let total = times.iter().fold(0.0, |a, t| a + t);
    let flops = todo
        .iter()
        .filter_map(|r| r.estimate.as_ref())
        .fold(0.0, |a, e| a + e.flops());
    let peak = todo
        .iter()
        .filter_map(|r| r.estimate.as_ref())
        .map(|e| e.device_bytes)
        .max();
    let host = todo
        .iter()
        .filter_map(|r| r.estimate.as_ref())
        .map(|e| e.host_bytes)
        .max();
    times.sort_by(|a, b| b.total_cmp(a));
    // Longest run first onto the least loaded worker.
    let mut load = vec![0.0f64; workers.max(1)];
    for t in &times {
        let least = load
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("at least one worker");
        *least += t;
    }
    let wall = load.iter().copied().fold(0.0, f64::max);
    if times.is_empty() && flops == 0.0 {
        println!("\n  total: {} run(s) to run, none of them estimated", todo.len());
    } else {
        println!(
            "\n  total: {} run(s) to run, {} compute, {} of run time, peak memory {} on the device, {} on the host",
            todo.len(),
            flops_words(flops),
            duration(total),
            peak.map_or("?".into(), bytes),
            host.map_or("?".into(), bytes)
        );
        println!(
            "  wall time on {} worker(s): {} (--workers N for more)",
            workers.max(1),
            duration(wall)
        );
    }
    if unknown > 0 {
        println!("  {unknown} run(s) without an estimate (see the problems above) are not in these times");
    }
    match rates {
        Ok(r) => println!(
            "  rates: {} {}: {:.0} GFLOP/s matmul, {:.1} GB/s, {:.1} us per small op{}",
            r.device,
            r.dtype,
            r.matmul_flops / 1e9,
            r.bandwidth / 1e9,
            r.op_latency * 1e6,
            match measured.runs() {
                0 => " (probe); no finished run measured yet".to_string(),
                n => format!(" (probe), scaled phase by phase to the {n} finished run(s) of this plan"),
            }
        ),
        Err(why) if todo.iter().any(|r| r.estimate.is_some()) => println!("  no times: {why}"),
        Err(_) => {}
    }
    let uncounted: Vec<&String> = todo
        .iter()
        .filter_map(|r| r.estimate.as_ref())
        .flat_map(|e| &e.uncounted)
        .collect();
    if let Some(first) = uncounted.first() {
        println!("  not in these times (its tokens could not be counted): {first}");
    }
}

fn duration(s: f64) -> String {
    match s {
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 60.0 => format!("{s:.0} s"),
        s if s < 3600.0 => format!("{:.1} min", s / 60.0),
        s if s < 48.0 * 3600.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86400.0),
    }
}

fn bytes(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib < 1024.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{:.1} GiB", mib / 1024.0)
    }
}

fn count_words(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1} B", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n => format!("{:.0} K", n / 1e3),
    }
}

fn flops_words(f: f64) -> String {
    match f {
        f if f >= 1e18 => format!("{:.1} EFLOP", f / 1e18),
        f if f >= 1e15 => format!("{:.1} PFLOP", f / 1e15),
        f if f >= 1e12 => format!("{:.1} TFLOP", f / 1e12),
        f => format!("{:.1} GFLOP", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_error(answer: &str) -> anyhow::Error {
        let response: ureq::Response = answer.parse().unwrap();
        let e = hf_hub::api::sync::ApiError::RequestError(Box::new(ureq::Error::Status(response.status(), response)));
        anyhow::Error::new(e).context("model `org/m`: file config.json not found locally and the download failed")
    }

    #[test]
    fn hub_answers_become_plain_causes() {
        let cause = |answer: &str| classify("org/m", &hub_error(answer)).cause;
        assert_eq!(
            cause("HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\n\r\n"),
            "gated"
        );
        assert_eq!(
            cause("HTTP/1.1 401 Unauthorized\r\nX-Error-Code: RepoNotFound\r\n\r\n"),
            "not found on the hub"
        );
        assert_eq!(
            cause("HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\n\r\n"),
            "no config.json"
        );
        assert!(classify(
            "org/m",
            &hub_error("HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\n\r\n")
        )
        .fix
        .contains("HF_TOKEN"));
    }

    #[test]
    fn error_chains_say_each_cause_once() {
        let inner = anyhow::anyhow!("Dns Failed: no such host");
        let e = inner
            .context("https://hub/x: Dns Failed: no such host")
            .context("asking the hub for model `m`");
        assert_eq!(
            crate::error_chain(&e),
            "asking the hub for model `m`: https://hub/x: Dns Failed: no such host"
        );
    }
}
