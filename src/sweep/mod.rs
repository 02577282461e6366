//! `repro run`: plans a sweep (ids, what is cached), runs what is missing one job at a time,
//! each under a claim so that many workers can share the output directory (`claim.rs`),
//! records each outcome atomically, and renders the report.

pub mod claim;
pub mod dryrun;
pub mod estimate;
pub mod identity;
pub mod probe;
pub mod slurm;
pub mod status;
pub mod store;
pub mod tokens;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::RunArgs;
use crate::config::{PlannedRun, RunSpec, SweepConfig};
use crate::hub::Hub;
use crate::pipeline::{run_job, Observer};
use crate::report::Artefact;
use claim::{Attempt, Claims};
use identity::{run_id, Fingerprinter};
use store::{Environment, Record, Status, Store, RECORD_SCHEMA};

/// `RUN_DIR/sweep.json`: what `repro report` needs without the config file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SweepFile {
    pub name: String,
    pub config: String,
    /// The runs of the latest plan, in order.
    pub runs: Vec<PlanEntry>,
    pub artefacts: Vec<Artefact>,
    /// Planned runs whose model or data could not be identified (no id, so no record): label and reason.
    #[serde(default)]
    pub unresolved: Vec<(String, String)>,
}

impl SweepFile {
    /// `run_dir/sweep.json`, which `repro run` writes before its first run.
    pub fn load(run_dir: &std::path::Path) -> Result<SweepFile> {
        let path = run_dir.join("sweep.json");
        if !path.is_file() {
            bail!("{}: no sweep.json; is this the `output` directory of a `repro run` (or of `repro slurm`'s tasks, once one has started)?", run_dir.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a sweep file", path.display()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanEntry {
    pub id: String,
    pub label: String,
}

/// A planned run with its identity resolved (or the reason it could not be).
pub struct Planned {
    pub run: PlannedRun,
    pub id: Result<
        (
            String,
            serde_json::Value,
            std::collections::BTreeMap<String, serde_json::Value>,
        ),
        String,
    >,
    pub cached: bool,
}

impl Planned {
    pub fn id(&self) -> &str {
        self.id.as_ref().map_or("unresolved", |(id, _, _)| id.as_str())
    }
}

/// Expands the config, resolves every run's id and marks those with a successful record. An
/// unreadable record (a disk fault, a hand edit) is not a result: its run is redone.
pub fn plan(cfg: &SweepConfig, hub: &Hub, store: &Store, force: bool, dry_run: bool) -> Result<Vec<Planned>> {
    let mut fp = Fingerprinter::open(store.dir.join(".fingerprints.json"));
    let mut out: Vec<Planned> = Vec::new();
    for run in cfg.expand()? {
        let id = fp
            .run(hub, &run.spec)
            .map(|(m, d)| (run_id(&run.spec, &m, &d), m, d))
            .map_err(|e| crate::error_chain(&e));
        out.push(Planned { run, id, cached: false });
    }
    if store.dir.is_dir() && !dry_run {
        fp.save()?; // a dry run leaves no trace
    }
    for p in out.iter_mut().filter(|p| p.id.is_ok() && !force) {
        p.cached = match store.get(p.id()) {
            Ok(record) => record.is_some_and(|r| r.status == Status::Ok),
            Err(e) => {
                eprintln!("warning: {e:#}; the run will be redone");
                false
            }
        };
    }
    Ok(out)
}

/// The runs `--only` picks by label (`*` globs) or id prefix; all of them without it.
fn select<'a>(planned: &'a [Planned], only: Option<&str>) -> Result<Vec<&'a Planned>> {
    let picked: Vec<&Planned> = planned
        .iter()
        .filter(|p| only.is_none_or(|pat| glob(pat, &p.run.label) || p.id().starts_with(pat)))
        .collect();
    if let (Some(pat), true) = (only, picked.is_empty()) {
        let labels: Vec<&str> = planned.iter().take(5).map(|p| p.run.label.as_str()).collect();
        bail!(
            "--only `{pat}` matches none of the {} runs (labels look like: {})",
            planned.len(),
            labels.join("; ")
        );
    }
    Ok(picked)
}

/// Whether `pattern` occurs in `text`, `*` standing for any run of characters: `wanda*0.5`
/// picks every Wanda run at 0.5 whatever the model, as labels start with the model.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut rest = text;
    for part in pattern.split('*') {
        match rest.find(part) {
            Some(pos) => rest = &rest[pos + part.len()..],
            None => return false,
        }
    }
    true
}

/// Warns, before anything runs, of report rows, columns and series that no run of the sweep
/// fills (a model or method the sweep does not run, or a misspelt name), rather than only when
/// the report comes out with empty cells.
pub(crate) fn warn_unplanned_slots(artefacts: &[Artefact], planned: &[Planned]) {
    let runs: Vec<(&RunSpec, &str)> = planned
        .iter()
        .map(|p| (&p.run.spec, p.run.method_label.as_str()))
        .collect();
    for a in artefacts {
        let empty = a.unplanned_slots(&runs);
        if !empty.is_empty() {
            eprintln!(
                "warning: report `{}`: {} match(es) no run of this sweep and will stay empty (not in `models` or `methods`, excluded, or misspelt)",
                a.name,
                empty.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
            );
        }
    }
}

/// The sweep at `config` with its report artefacts, its output replaced by `output` when given
/// (`repro run` and `repro slurm`'s `--output`).
pub(crate) fn load_sweep(config: &Path, output: Option<&PathBuf>) -> Result<(SweepConfig, Vec<Artefact>)> {
    let mut cfg = SweepConfig::load(config)?;
    if let Some(out) = output {
        cfg.output = out.clone();
    }
    let artefacts = cfg.artefacts(config)?;
    if cfg.output.as_os_str().is_empty() {
        bail!(
            "{}: `output` is empty: name the directory for the sweep's records and report",
            config.display()
        );
    }
    Ok((cfg, artefacts))
}

pub fn run(hub: &Hub, args: &RunArgs) -> Result<()> {
    let (cfg, artefacts) = load_sweep(&args.config, args.output.as_ref())?;
    let store = Store::open(&cfg.output);
    if !args.dry_run {
        std::fs::create_dir_all(&cfg.output)
            .with_context(|| format!("cannot create the sweep's output {}", cfg.output.display()))?;
        store.check_writable()?;
    }
    let planned = plan(&cfg, hub, &store, args.force, args.dry_run)?;
    if planned.is_empty() {
        bail!(
            "{}: the sweep plans no runs (does `exclude` drop every grid point?)",
            args.config.display()
        );
    }
    warn_unplanned_slots(&artefacts, &planned);
    let selected = match (&args.plan, args.task_index) {
        (Some(frozen), Some(task)) => slurm::task_runs(frozen, task, &planned)?,
        _ => select(&planned, args.only.as_deref())?,
    };
    let opts = dryrun::DryRunOptions {
        costs: args.dry_run,
        verbose: args.verbose,
        workers: args.workers,
    };
    dryrun::print_plan(&cfg, hub, &planned, &selected, &store, opts)?;
    if args.dry_run {
        return Ok(());
    }
    // A device that is not there fails the sweep once, not each of its runs.
    crate::device::parse_device(&cfg.device.0).with_context(|| format!("{}: `device`", args.config.display()))?;
    check_same_sweep(&cfg, &args.config)?;
    // The whole plan, so that a report after `--only` still shows every finished run.
    let sweep = SweepFile {
        name: cfg.name.clone(),
        config: args.config.display().to_string(),
        runs: planned
            .iter()
            .filter(|p| p.id.is_ok())
            .map(|p| PlanEntry {
                id: p.id().to_string(),
                label: p.run.label.clone(),
            })
            .collect(),
        artefacts,
        unresolved: planned
            .iter()
            .filter_map(|p| Some((p.run.label.clone(), p.id.as_ref().err()?.clone())))
            .collect(),
    };
    store::write_atomic(&cfg.output.join("sweep.json"), &serde_json::to_vec_pretty(&sweep)?)?;

    let todo: Vec<&Planned> = selected.into_iter().filter(|p| !p.cached).collect();
    let claims = Claims::open(&cfg.output)?;
    let started = now();
    let bar = crate::progress::bar(todo.len() as u64, "sweep");
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut failed = 0;
    let mut held = 0;
    let mut stopped = None;
    for p in todo {
        bar.set_message(p.run.label.clone());
        if p.id.is_ok() {
            if let Attempt::HeldBy(worker) = claims.claim(p.id(), &p.run.label)? {
                say(format!(
                    "held   {} {} (another worker runs it: {}, since {})",
                    p.id(),
                    p.run.label,
                    worker.worker(),
                    status::clock(worker.started_at)
                ));
                held += 1;
                bar.inc(1);
                continue;
            }
            // Another worker may have finished it between this one's plan and its claim.
            if let Ok(Some(r)) = store.get(p.id()) {
                if r.finished_at > started || (r.status == Status::Ok && !args.force) {
                    claims.release()?;
                    say(format!(
                        "skip   {} {} (another worker finished it meanwhile)",
                        p.id(),
                        p.run.label
                    ));
                    bar.inc(1);
                    continue;
                }
            }
        }
        if args.force && p.id.is_ok() {
            if let Err(e) = store.drop_parts(p.id()) {
                say(format!(
                    "warning: {} {}: {e:#}; parts it holds are still taken if measured on the same weights",
                    p.id(),
                    p.run.label
                ));
            }
        }
        let record = execute(hub, p, &store, &bar);
        if p.id.is_ok() && !claims.still_ours() {
            say(format!(
                "DROPPED {} {}: its claim was taken over by another worker, which redoes it; no record written",
                record.id, record.label
            ));
            bar.inc(1);
            continue;
        }
        // A forced rerun that fails keeps the earlier successful record.
        let keeps_earlier = record.status == Status::Failed
            && store
                .get(&record.id)
                .is_ok_and(|r| r.is_some_and(|r| r.status == Status::Ok));
        let line = match &record.error {
            None => format!(
                "done   {} ({:.1}s) {}{}",
                record.id,
                record.finished_at - record.started_at,
                record.label,
                match record.result.resumed.as_slice() {
                    [] => String::new(),
                    parts => format!(" (resumed {} from an earlier attempt)", parts.join(", ")),
                }
            ),
            Some(e) if keeps_earlier => format!(
                "FAILED {} {}: {e} (its earlier successful record is kept)",
                record.id, record.label
            ),
            Some(e) if store.parts_path(&record.id).is_file() => format!(
                "FAILED {} {}: {e} (the evaluation parts it finished are kept in {} for the next attempt)",
                record.id,
                record.label,
                store.parts_path(&record.id).display()
            ),
            Some(e) => format!("FAILED {} {}: {e}", record.id, record.label),
        };
        // An unresolvable model has no id to file a record under; its error is reported only.
        if p.id.is_ok() && !keeps_earlier {
            if cfg.evaluation.samples {
                store.put_samples(&record)?;
            }
            store.put(&record)?;
            // The record holds the parts now; a file left over is only stale, never read again
            // unless the run is forced.
            if record.status == Status::Ok {
                if let Err(e) = store.drop_parts(&record.id) {
                    say(format!("warning: {} {}: {e:#}", record.id, record.label));
                }
            }
        }
        claims.release()?;
        say(line);
        bar.inc(1);
        if record.status == Status::Failed {
            failed += 1;
            if args.fail_fast {
                stopped = Some(format!(
                    "run {} failed (--fail-fast): {}",
                    record.label,
                    record.error.unwrap_or_default()
                ));
                break;
            }
        }
    }
    bar.finish_and_clear();
    crate::report::report(&cfg.output)?;
    if held > 0 {
        eprintln!(
            "{held} run(s) held by other workers: their records land when they finish (watch with `repro status {}`)",
            cfg.output.display()
        );
    }
    if let Some(why) = stopped {
        bail!(why);
    }
    if failed > 0 {
        bail!(
            "{failed} run(s) failed; see the errors above (and their records in {})",
            cfg.output.join("runs").display()
        );
    }
    Ok(())
}

/// Records of another sweep would vanish from this one's report; refuse to mix them.
fn check_same_sweep(cfg: &SweepConfig, config: &std::path::Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(cfg.output.join("sweep.json")) {
        if let Ok(earlier) = serde_json::from_str::<SweepFile>(&text) {
            if earlier.name != cfg.name {
                bail!(
                    "{}: {} holds the records of sweep `{}` (from {}); give sweep `{}` its own `output` (or --output); nothing was changed there",
                    config.display(),
                    cfg.output.display(),
                    earlier.name,
                    earlier.config,
                    cfg.name
                );
            }
        }
    }
    Ok(())
}

/// Shows the current run's stage on the sweep bar.
struct StageOnBar<'a>(&'a ProgressBar, &'a str);
impl Observer for StageOnBar<'_> {
    fn stage(&self, stage: &str) {
        self.0.set_message(format!("{}: {stage}", self.1));
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Turns a panic in `job` (a bug, or a libtorch error that tch raises as a panic) into an
/// error, so that it fails one run and not the whole sweep.
fn catch_panic<T>(job: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(anyhow::anyhow!("internal error (panic): {}", msg.unwrap_or_default()))
    })
}

/// Runs one job, resuming the evaluation parts an earlier attempt finished, and turns its
/// outcome, success or error, into a record.
fn execute(hub: &Hub, p: &Planned, store: &Store, bar: &ProgressBar) -> Record {
    crate::resources::reset_peak_rss();
    let started_at = now();
    let (id, model_identity, data_identity) = match &p.id {
        Ok((id, m, d)) => (id.clone(), m.clone(), d.clone()),
        Err(_) => ("unresolved".into(), serde_json::Value::Null, Default::default()),
    };
    let outcome = match &p.id {
        Err(e) => Err(anyhow::anyhow!("{e}")),
        Ok(_) => catch_panic(|| {
            run_job(
                hub,
                &p.run.spec.model,
                p.run.spec.prune.as_ref(),
                &p.run.spec.eval,
                None,
                Some(&store.parts_path(p.id())),
                &StageOnBar(bar, &p.run.label),
            )
        }),
    };
    let (status, error, result) = match outcome {
        Ok(out) => (Status::Ok, None, out),
        Err(e) => (Status::Failed, Some(crate::error_chain(&e)), Default::default()),
    };
    Record {
        schema: RECORD_SCHEMA,
        id,
        label: p.run.label.clone(),
        method_label: p.run.method_label.clone(),
        status,
        error,
        settings: p.run.spec.clone(),
        model_identity,
        data_identity,
        environment: Environment::current(),
        started_at,
        finished_at: now(),
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_becomes_an_error() {
        let e = catch_panic(|| -> Result<()> { panic!("index {} out of range", 7) }).unwrap_err();
        assert_eq!(e.to_string(), "internal error (panic): index 7 out of range");
        assert_eq!(catch_panic(|| Ok(3)).unwrap(), 3);
    }

    #[test]
    fn only_patterns_match_anywhere_in_the_label() {
        let label = "llama-tiny wanda unstructured 0.5 n128 seed0";
        for yes in ["wanda", "wanda*", "*wanda", "wanda*0.5", "llama*seed0", "*", ""] {
            assert!(glob(yes, label), "{yes}");
        }
        for no in ["sparsegpt", "0.5*wanda", "wanda*0.6", "seed0*n128"] {
            assert!(!glob(no, label), "{no}");
        }
    }
}
