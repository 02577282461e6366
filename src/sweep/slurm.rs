//! `repro slurm CONFIG`: the sweep's missing runs as SLURM job arrays, plus a report job that
//! runs when they end. SLURM does the scheduling; each array task is a plain `repro run` on a
//! frozen list of run ids, and claims (see `claim.rs`) keep tasks of overlapping submissions
//! from running one run twice.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dryrun::{window_beyond, Problem};
use super::store::{Status, Store};
use super::{check_same_sweep, claim, load_sweep, plan, warn_unplanned_slots, PlanEntry, Planned};
use crate::hub::Hub;
use crate::model::shape::ModelShape;

#[derive(clap::Args)]
pub struct SlurmArgs {
    /// The sweep's YAML file (see configs/).
    pub config: PathBuf,
    /// Records and report go here instead of the config's `output`; it must be on a filesystem
    /// every node sees (NFS, Lustre, ...).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long)]
    pub partition: Option<String>,
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub qos: Option<String>,
    /// Time limit per task (SLURM's format, e.g. 4:00:00) for tasks whose runs have no finished
    /// run of the same model and method to estimate from.
    #[arg(long, value_parser = slurm_time)]
    pub time: Option<String>,
    /// GPUs per task (default: 1 when the sweep's device is CUDA, none on CPU).
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Host memory per task (SLURM's format, e.g. 64G); default: estimated from the model (see README).
    #[arg(long, value_parser = slurm_memory)]
    pub mem: Option<String>,
    /// At most K tasks of each array at once (the array's `%K`).
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// Passed to sbatch as an `#SBATCH` line (repeatable): `--sbatch-arg=--constraint=a100`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// One task per model (runs one after the other) instead of one per run.
    #[arg(long)]
    pub group_by_model: bool,
    /// Print the scripts and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Submit with sbatch (else the scripts are written and the commands printed).
    #[arg(long)]
    pub submit: bool,
    /// Also resubmit runs whose record says they failed.
    #[arg(long)]
    pub retry_failed: bool,
}

/// `array-K.json`: the runs of each task of one array, frozen at submission.
#[derive(Serialize, Deserialize)]
pub struct FrozenArray {
    pub sweep: String,
    pub tasks: Vec<Vec<PlanEntry>>,
}

/// The runs of task `index` of the frozen array `path`, found in the sweep's current plan.
pub fn task_runs<'a>(path: &Path, index: usize, planned: &'a [Planned]) -> Result<Vec<&'a Planned>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--plan {}: cannot read it", path.display()))?;
    let frozen: FrozenArray = serde_json::from_str(&text)
        .with_context(|| format!("--plan {}: not a frozen plan of `repro slurm`", path.display()))?;
    let Some(task) = frozen.tasks.get(index) else {
        bail!(
            "--task-index {index}: {} has {} task(s) (0 to {})",
            path.display(),
            frozen.tasks.len(),
            frozen.tasks.len().saturating_sub(1)
        );
    };
    task.iter()
        .map(|entry| {
            planned.iter().find(|p| p.id.is_ok() && p.id() == entry.id).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: run `{}` ({}) is no longer in the sweep's plan: the config, the model or the data changed since submission; resubmit with `repro slurm`",
                    path.display(),
                    entry.label,
                    entry.id
                )
            })
        })
        .collect()
}

/// What one task asks SLURM for; tasks asking alike share one array.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Request {
    time: Option<String>,
    mem: Option<String>,
    gpus: Option<u32>,
    /// For the script's comment: the GPU memory the rule expects the task to need, in GiB.
    gpu_mem_gib: Option<u64>,
}

/// Bytes per weight of a run's dtype (the default is f32 on CPU, f16 on CUDA).
fn dtype_bytes(dtype: Option<&str>, device: &str) -> u64 {
    match dtype {
        Some(d) if d.contains("16") => 2,
        Some(_) => 4,
        None if device.starts_with("cuda") => 2,
        None => 4,
    }
}

/// The resource rule (README, "Running on a cluster"), for a task running `runs`:
/// - weights W = parameters (from config.json) x bytes of the run's dtype;
/// - GPU memory (CUDA): 1.25 W + 2 GiB (reported in the script; choose the GPU type with
///   `--sbatch-arg=--constraint=...` or `--gres`);
/// - host memory (unless `--mem`): 1.25 W + 4 GiB for a model held in host memory (CPU, not
///   streamed), 0.25 W + 4 GiB when streamed or on a GPU, whole GiB;
/// - time: 1.5 x the mean time of finished runs of the same model and method, summed over the
///   task's runs, plus 10 minutes, when every run has such a timing; else `--time`.
fn request(
    runs: &[&Planned],
    params: &dyn Fn(&str) -> Option<u64>,
    timings: &BTreeMap<(String, String), f64>,
    args: &SlurmArgs,
) -> Request {
    const GIB: u64 = 1 << 30;
    let weights = |p: &Planned| {
        params(&p.run.spec.model.model)
            .map(|n| n * dtype_bytes(p.run.spec.model.dtype.as_deref(), &p.run.spec.model.device))
    };
    let on_gpu = |p: &Planned| p.run.spec.model.device.starts_with("cuda");
    let streamed = |p: &Planned| p.run.spec.model.streaming == crate::model::Streaming::On;
    let host_gib = runs
        .iter()
        .map(|p| weights(p).map(|w| (if on_gpu(p) || streamed(p) { w / 4 } else { w + w / 4 }).div_ceil(GIB) + 4))
        .max()
        .flatten();
    let gpu_mem_gib = runs
        .iter()
        .filter(|p| on_gpu(p))
        .map(|p| weights(p).map(|w| (w + w / 4).div_ceil(GIB) + 2))
        .max()
        .flatten();
    let seconds: Option<f64> = runs
        .iter()
        .map(|p| {
            timings
                .get(&(p.run.spec.model.model.clone(), p.run.spec.method_name().to_string()))
                .map(|s| 1.5 * s)
        })
        .sum();
    Request {
        time: seconds.map(|s| slurm_duration(s + 600.0)).or_else(|| args.time.clone()),
        mem: args.mem.clone().or(host_gib.map(|g| format!("{g}G"))),
        gpus: args.gpus_per_task.or(runs.iter().any(|p| on_gpu(p)).then_some(1)),
        gpu_mem_gib,
    }
}

/// `--time` as sbatch reads it: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
/// days-hours:minutes, days-hours:minutes:seconds, or UNLIMITED. Checked here, since sbatch would
/// refuse it only at submission, after the scripts are written.
fn slurm_time(text: &str) -> Result<String, String> {
    let numbers = |part: &str, most: usize| {
        let fields: Vec<&str> = part.split(':').collect();
        fields.len() <= most
            && fields
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
    };
    let valid = match text.split_once('-') {
        _ if ["unlimited", "infinite"].contains(&text.to_ascii_lowercase().as_str()) => true,
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(text, 3),
    };
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a SLURM time limit: use minutes, hours:minutes:seconds or days-hours[:minutes[:seconds]], e.g. 90, 4:00:00 or 1-12"
        ))
    }
}

/// `--mem` as sbatch reads it: a whole number, in megabytes unless it ends in K, M, G or T.
fn slurm_memory(text: &str) -> Result<String, String> {
    let digits = text
        .strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a SLURM memory size: a whole number with K, M, G or T (megabytes without), e.g. 64G or 500M"
        ))
    }
}

/// Seconds as SLURM's `D-HH:MM:SS`, rounded up to the minute.
fn slurm_duration(seconds: f64) -> String {
    let m = (seconds / 60.0).ceil() as u64;
    format!("{}-{:02}:{:02}:00", m / 1440, m / 60 % 24, m % 60)
}

/// A model's shape from its config.json (as the dry run reads it), wherever the hub finds it: a
/// local directory, the mirror, the HF cache, or config.json fetched alone.
fn model_shape(hub: &Hub, model: &str) -> Option<ModelShape> {
    ModelShape::from_config(&super::dryrun::model_config(hub, model).ok()?).ok()
}

/// `'text'` for the shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// `name` as found on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `#SBATCH` lines every job of a submission shares.
fn common_lines(args: &SlurmArgs, name: &str, cwd: &Path) -> Vec<String> {
    let mut lines = vec![format!("--job-name={name}"), format!("--chdir={}", cwd.display())];
    for (flag, value) in [
        ("partition", &args.partition),
        ("account", &args.account),
        ("qos", &args.qos),
    ] {
        if let Some(v) = value {
            lines.push(format!("--{flag}={v}"));
        }
    }
    lines
}

fn script(sbatch_lines: &[String], command: &str) -> String {
    let mut s = String::from("#!/bin/bash\n");
    for l in sbatch_lines {
        s.push_str(&format!("#SBATCH {l}\n"));
    }
    s.push_str("set -euo pipefail\n");
    s.push_str(command);
    s.push('\n');
    s
}

/// An array's script and frozen plan, to be written as `array-K.sbatch` / `array-K.json`.
struct Array {
    script: String,
    frozen: FrozenArray,
}

pub fn slurm(hub: &Hub, args: &SlurmArgs) -> Result<()> {
    let (cfg, artefacts) = load_sweep(&args.config, args.output.as_ref())?;
    let output = absolute(&cfg.output)?;
    let sbatch = match (args.submit, on_path("sbatch")) {
        (true, None) => bail!("--submit: `sbatch` is not on PATH; run `repro slurm` on a login node of the cluster (or leave out --submit to only write the scripts)"),
        (_, found) => found,
    };
    if args.submit && args.dry_run {
        bail!("--dry-run and --submit contradict each other: --dry-run writes and submits nothing");
    }
    if output.starts_with("/tmp") || output.starts_with(std::env::temp_dir()) {
        eprintln!("warning: {} is in a temporary directory, which is local to each node: tasks on other nodes cannot share it (use a directory on the cluster's shared filesystem)", output.display());
    }
    check_same_sweep(&cfg, &args.config)?;
    let store = Store::open(&output);
    let planned = plan(&cfg, hub, &store, false, args.dry_run)?;
    warn_unplanned_slots(&artefacts, &planned);

    // The runs still missing: no record (or a failed one, with --retry-failed), no live worker.
    let (mut failed, mut running, mut todo) = (0, 0, Vec::new());
    let mut unresolved: BTreeMap<&str, usize> = BTreeMap::new();
    // Each model's config.json read once: its window checked here, its size sizes the requests.
    let mut shapes: BTreeMap<&str, Option<ModelShape>> = BTreeMap::new();
    let mut unsuited: BTreeMap<&str, (Problem, usize)> = BTreeMap::new();
    for p in planned.iter().filter(|p| !p.cached) {
        if let Err(e) = &p.id {
            *unresolved.entry(e).or_default() += 1;
            continue;
        }
        let model = p.run.spec.model.model.as_str();
        let shape = shapes.entry(model).or_insert_with(|| model_shape(hub, model));
        if let Some(problem) = shape.as_ref().and_then(|s| window_beyond(s, p.run.spec.model.seqlen)) {
            unsuited.entry(model).or_insert((problem, 0)).1 += 1;
            continue;
        }
        if store
            .get(p.id())
            .ok()
            .flatten()
            .is_some_and(|r| r.status == Status::Failed)
            && !args.retry_failed
        {
            failed += 1;
        } else if claim::holder(&output, p.id()).is_some() {
            running += 1;
        } else {
            todo.push(p);
        }
    }
    for (why, n) in unresolved {
        eprintln!("warning: {n} run(s) cannot be identified, so they are not submitted: {why}");
    }
    for (model, (p, n)) in unsuited {
        eprintln!(
            "warning: {n} run(s) of `{model}` are not submitted: {}; fix: {}",
            p.cause, p.fix
        );
    }
    let cached = planned.iter().filter(|p| p.cached).count();
    println!(
        "sweep `{}`: {} runs: {cached} done, {running} running, {failed} failed, {} to submit -> {}",
        cfg.name,
        planned.len(),
        todo.len(),
        output.display()
    );
    if failed > 0 && !args.retry_failed {
        println!("  ({failed} failed run(s) are not resubmitted; add --retry-failed to retry them; `repro status {}` shows their errors)", output.display());
    }
    if todo.is_empty() {
        println!("nothing to submit");
        return Ok(());
    }

    // Tasks, then arrays of tasks that ask for the same resources.
    let mut tasks: Vec<Vec<&Planned>> = Vec::new();
    for p in todo {
        match tasks
            .iter_mut()
            .find(|t| args.group_by_model && t[0].run.spec.model.model == p.run.spec.model.model)
        {
            Some(t) => t.push(p),
            None => tasks.push(vec![p]),
        }
    }
    let mut timings: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for p in planned.iter().filter(|p| p.cached) {
        if let Ok(Some(r)) = store.get(p.id()) {
            timings
                .entry((r.settings.model.model.clone(), r.settings.method_name().to_string()))
                .or_default()
                .push(r.work_seconds());
        }
    }
    let timings: BTreeMap<(String, String), f64> = timings
        .into_iter()
        .map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    let params = |m: &str| shapes.get(m)?.as_ref().map(ModelShape::params);
    let mut arrays: Vec<(Request, Vec<Vec<&Planned>>)> = Vec::new();
    for t in tasks {
        let req = request(&t, &params, &timings, args);
        match arrays.iter_mut().find(|(r, _)| *r == req) {
            Some((_, a)) => a.push(t),
            None => arrays.push((req, vec![t])),
        }
    }

    // The submission's directory: scripts, frozen plans, logs.
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string();
    let mut dir = output.join("slurm").join(&stamp);
    for n in 2.. {
        if !dir.exists() {
            break;
        }
        dir = output.join("slurm").join(format!("{stamp}-{n}"));
    }
    let logs = dir.join("logs");
    let exe = std::env::current_exe().context("cannot find the repro binary to put in the scripts")?;
    let config = absolute(&args.config)?;
    let mirror = hub
        .mirror
        .as_ref()
        .map(|m| absolute(m))
        .transpose()?
        .map_or(String::new(), |m| {
            format!(" --hub-mirror {}", quote(&m.to_string_lossy()))
        });
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let common = common_lines(args, &format!("repro-{}", cfg.name), &cwd);

    let arrays: Vec<Array> = arrays
        .into_iter()
        .enumerate()
        .map(|(k, (req, tasks))| {
            let mut lines = common.clone();
            lines.push(format!("--output={}/%x-%A_%a.out", logs.display()));
            lines.push(format!(
                "--array=0-{}{}",
                tasks.len() - 1,
                args.max_parallel.map_or(String::new(), |m| format!("%{m}"))
            ));
            lines.extend(req.time.as_ref().map(|t| format!("--time={t}")));
            lines.extend(req.mem.as_ref().map(|m| format!("--mem={m}")));
            lines.extend(req.gpus.map(|g| format!("--gpus-per-task={g}")));
            lines.extend(args.cpus_per_task.map(|c| format!("--cpus-per-task={c}")));
            lines.extend(args.sbatch_args.iter().cloned());
            let frozen_path = dir.join(format!("array-{k}.json"));
            let mut command = String::new();
            if let Some(g) = req.gpu_mem_gib {
                command.push_str(&format!("# expected GPU memory per task: {g} GiB\n"));
            }
            command.push_str(&format!(
                "exec {}{mirror} run {} --output {} --plan {} --task-index \"$SLURM_ARRAY_TASK_ID\"",
                quote(&exe.to_string_lossy()),
                quote(&config.to_string_lossy()),
                quote(&output.to_string_lossy()),
                quote(&frozen_path.to_string_lossy())
            ));
            let frozen = FrozenArray {
                sweep: cfg.name.clone(),
                tasks: tasks
                    .iter()
                    .map(|t| {
                        t.iter()
                            .map(|p| PlanEntry {
                                id: p.id().to_string(),
                                label: p.run.label.clone(),
                            })
                            .collect()
                    })
                    .collect(),
            };
            Array {
                script: script(&lines, &command),
                frozen,
            }
        })
        .collect();
    let mut report_lines = common.clone();
    report_lines.extend([
        format!("--output={}/%x-%j.out", logs.display()),
        "--time=00:30:00".into(),
        "--mem=4G".into(),
        "--cpus-per-task=1".into(),
    ]);
    let report = script(
        &report_lines,
        &format!(
            "exec {} report {}",
            quote(&exe.to_string_lossy()),
            quote(&output.to_string_lossy())
        ),
    );

    if args.dry_run {
        for (k, a) in arrays.iter().enumerate() {
            println!(
                "# {} (tasks: {})\n{}",
                dir.join(format!("array-{k}.sbatch")).display(),
                a.frozen.tasks.len(),
                a.script
            );
            for (i, t) in a.frozen.tasks.iter().enumerate() {
                println!(
                    "#   task {i}: {}",
                    t.iter().map(|e| e.label.as_str()).collect::<Vec<_>>().join("; ")
                );
            }
        }
        println!(
            "# {} (after every array: --dependency=afterany:...)\n{report}",
            dir.join("report.sbatch").display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut scripts = Vec::new();
    for (k, a) in arrays.iter().enumerate() {
        super::store::write_atomic(
            &dir.join(format!("array-{k}.json")),
            &serde_json::to_vec_pretty(&a.frozen)?,
        )?;
        let path = dir.join(format!("array-{k}.sbatch"));
        super::store::write_atomic(&path, a.script.as_bytes())?;
        scripts.push(path);
    }
    let report_path = dir.join("report.sbatch");
    super::store::write_atomic(&report_path, report.as_bytes())?;
    let tasks: usize = arrays.iter().map(|a| a.frozen.tasks.len()).sum();
    println!(
        "wrote {} array script(s) ({tasks} task(s)) and report.sbatch in {}",
        scripts.len(),
        dir.display()
    );
    let Some(sbatch) = sbatch.filter(|_| args.submit) else {
        println!("submit with:");
        for s in &scripts {
            println!("  sbatch --parsable {}   # -> job id A", s.display());
        }
        println!("  sbatch --dependency=afterany:A[:B...] {}", report_path.display());
        return Ok(());
    };
    let mut ids = Vec::new();
    for s in &scripts {
        let id = submit(&sbatch, &[], s).with_context(|| match ids.is_empty() {
            true => "nothing was submitted".to_string(),
            false => format!(
                "array job(s) {} were submitted already (scancel them, or let them run)",
                ids.join(", ")
            ),
        })?;
        println!("submitted array job {id}: {}", s.display());
        ids.push(id);
    }
    let report_id = submit(
        &sbatch,
        &[format!("--dependency=afterany:{}", ids.join(":"))],
        &report_path,
    )
    .with_context(|| {
        format!(
            "the arrays ({}) run, but their report will not be written by a job: run `repro report {}` when they end",
            ids.join(", "),
            output.display()
        )
    })?;
    println!(
        "submitted report job {report_id} (runs when job(s) {} end)",
        ids.join(", ")
    );
    println!("watch with: repro status {}", output.display());
    Ok(())
}

/// Submits `script`; the job id, or sbatch's own message.
fn submit(sbatch: &Path, extra: &[String], script: &Path) -> Result<String> {
    let out = crate::threads::without_own_settings(&mut std::process::Command::new(sbatch))
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .with_context(|| format!("cannot run {}", sbatch.display()))?;
    if !out.status.success() {
        bail!(
            "sbatch rejected {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `jobid` or `jobid;cluster`.
    Ok(stdout.trim().split(';').next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;

    /// sbatch's time and memory formats pass as written; anything else is refused with the format.
    #[test]
    fn time_and_memory_take_slurm_formats_only() {
        for ok in [
            "90",
            "30:00",
            "4:00:00",
            "1-12",
            "2-04:30",
            "0-00:10:00",
            "UNLIMITED",
            "infinite",
        ] {
            assert_eq!(slurm_time(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "99x", "4h", "1:2:3:4", "1-2-3", "-5", "1-", "4:00:", "1.5"] {
            let e = slurm_time(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}` is not a SLURM time limit")), "{e}");
        }
        for ok in ["64G", "500M", "2048", "1t", "0"] {
            assert_eq!(slurm_memory(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "G", "64GB", "1.5G", "-1G", "64 G"] {
            assert!(
                slurm_memory(bad).unwrap_err().contains("is not a SLURM memory size"),
                "{bad}"
            );
        }
        // slurm_duration writes what --time reads.
        assert!(slurm_time(&slurm_duration(100_000.0)).is_ok());
    }

    /// The resource rule on a 1 G-parameter model: f32 on CPU, streamed, and f16 on CUDA.
    #[test]
    fn requests_follow_the_rule() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: SlurmArgs,
        }
        let planned = |extra: &str| -> Vec<Planned> {
            let text = format!("name: t\noutput: o\nmodels: [m]\nmethods: [magnitude]\nsparsities: [0.5]\nevaluation: {{ppl: [wikitext2]}}\n{extra}");
            let cfg = SweepConfig::parse(&text, Path::new("t.yaml")).unwrap();
            cfg.expand()
                .unwrap()
                .into_iter()
                .map(|run| Planned {
                    run,
                    id: Ok(("x".into(), serde_json::Value::Null, BTreeMap::new())),
                    cached: false,
                })
                .collect()
        };
        let args = Cli::parse_from(["repro", "c.yaml", "--time", "2:00:00"]).args;
        let params = |_: &str| Some(1u64 << 30);
        let none = BTreeMap::new();
        let req = |runs: &[Planned], timings: &BTreeMap<(String, String), f64>, args: &SlurmArgs| {
            request(&runs.iter().collect::<Vec<_>>(), &params, timings, args)
        };

        let resident = req(&planned(""), &none, &args);
        assert_eq!(
            resident,
            Request {
                time: Some("2:00:00".into()),
                mem: Some("9G".into()),
                gpus: None,
                gpu_mem_gib: None
            }
        );
        assert_eq!(req(&planned("stream: on\n"), &none, &args).mem.as_deref(), Some("5G"));
        let gpu = req(&planned("device: cuda\n"), &none, &args);
        assert_eq!(
            (gpu.mem.as_deref(), gpu.gpus, gpu.gpu_mem_gib),
            (Some("5G"), Some(1), Some(5))
        );
        // A finished run of the same model and method sets the time; --mem wins over the rule.
        let timed = BTreeMap::from([(("m".to_string(), "magnitude".to_string()), 100.0)]);
        let given = Cli::parse_from(["repro", "c.yaml", "--mem", "64G"]).args;
        assert_eq!(
            req(&planned(""), &timed, &given),
            Request {
                time: Some("0-00:13:00".into()),
                mem: Some("64G".into()),
                gpus: None,
                gpu_mem_gib: None
            }
        );
    }

    #[test]
    fn durations_in_slurm_format() {
        assert_eq!(slurm_duration(59.0), "0-00:01:00");
        assert_eq!(slurm_duration(3600.0 * 25.0 + 61.0), "1-01:02:00");
    }

    #[test]
    fn weights_follow_the_dtype_and_device_default() {
        assert_eq!(dtype_bytes(None, "cpu"), 4);
        assert_eq!(dtype_bytes(None, "cuda:1"), 2);
        assert_eq!(dtype_bytes(Some("bf16"), "cpu"), 2);
        assert_eq!(dtype_bytes(Some("f32"), "cuda"), 4);
    }
}
