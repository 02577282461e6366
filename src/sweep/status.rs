//! `repro status RUN_DIR`: where a sweep stands, from its records and claims alone (no model,
//! no scheduler), so it works from any machine that sees the directory.

use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::claim;
use super::store::{Status, Store};
use super::SweepFile;
use crate::resume::Kept;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A sweep's output directory (holds sweep.json, runs/ and claims/).
    pub run_dir: PathBuf,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One planned run's state.
#[derive(Serialize)]
struct RunState {
    id: String,
    label: String,
    /// done, failed, running or pending.
    state: &'static str,
    /// done and failed: how long the run took (with what its resumed parts took before).
    seconds: Option<f64>,
    error: Option<String>,
    /// running: the worker (host, pid, SLURM job), since when, and its last heartbeat.
    worker: Option<String>,
    since: Option<String>,
    heartbeat_seconds_ago: Option<f64>,
    /// pending: the claim a worker left behind when it died, which the next worker takes over.
    stale_claim: Option<String>,
    /// Not done: what earlier attempts kept, which the next attempt does not redo (in `--json`,
    /// `finished_parts` and `started_tasks`).
    #[serde(flatten)]
    kept: Kept,
    /// What the run warned of (a variant short of its target, resumed parts set aside, a saved
    /// checkpoint holding other zeros, ...): printed once into a task's log, kept in the record,
    /// and shown here so that a sweep's warnings are not lost among its logs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    sweep: String,
    run_dir: String,
    done: usize,
    failed: usize,
    running: usize,
    pending: usize,
    /// Runs whose record holds warnings.
    warned: usize,
    /// Mean seconds of the finished runs x (running + pending) / running workers (at least 1).
    eta_seconds: Option<f64>,
    runs: Vec<RunState>,
}

/// A Unix time as `2026-11-30T17:22:36Z`.
pub fn clock(unix: f64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(unix.max(0.0))).to_string()
}

pub fn status(args: &StatusArgs) -> Result<()> {
    let summary = summarise(&args.run_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "sweep `{}` in {}: {} runs: {} done, {} running, {} failed, {} pending{}",
        summary.sweep,
        summary.run_dir,
        summary.runs.len(),
        summary.done,
        summary.running,
        summary.failed,
        summary.pending,
        match summary.warned {
            0 => String::new(),
            n => format!("; {n} with warnings"),
        }
    );
    for r in &summary.runs {
        let detail = match r.state {
            "done" => format!("{:.1}s", r.seconds.unwrap_or_default()),
            "failed" => r.error.clone().unwrap_or_default(),
            "running" => format!(
                "{}, since {}, heartbeat {:.0} s ago",
                r.worker.as_deref().unwrap_or_default(),
                r.since.as_deref().unwrap_or_default(),
                r.heartbeat_seconds_ago.unwrap_or_default()
            ),
            _ => r
                .stale_claim
                .as_ref()
                .map_or(String::new(), |c| format!("stale claim: {c}")),
        };
        let parts = if r.kept.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.kept.describe())
        };
        println!("  {:<8} {:<16} {}  {detail}{parts}", r.state, r.id, r.label);
        for w in &r.warnings {
            println!("  {:<8} {:<16} warning: {w}", "", "");
        }
    }
    match summary.eta_seconds {
        Some(eta) => println!(
            "ETA: ~{} (from the {} finished runs' mean time)",
            humantime::format_duration(Duration::from_secs(eta.round() as u64)),
            summary.done + summary.failed
        ),
        None if summary.running + summary.pending == 0 => println!("nothing left to run"),
        None => println!("ETA: unknown until a run finishes"),
    }
    Ok(())
}

fn summarise(run_dir: &Path) -> Result<Summary> {
    let sweep = SweepFile::load(run_dir)?;
    let store = Store::open(run_dir);
    let claims = claim::all(run_dir);
    let mut runs = Vec::new();
    for entry in &sweep.runs {
        let record = store.get(&entry.id).ok().flatten();
        let claim = claims.iter().find(|(id, _)| *id == entry.id).map(|(_, found)| found);
        let stale = claim.and_then(|c| c.stale());
        let live = claim.filter(|_| stale.is_none());
        let mut state = RunState {
            id: entry.id.clone(),
            label: entry.label.clone(),
            state: "pending",
            seconds: record.as_ref().map(|r| r.work_seconds()),
            error: record.as_ref().and_then(|r| r.error.clone()),
            worker: None,
            since: None,
            heartbeat_seconds_ago: None,
            stale_claim: None,
            kept: Kept::default(),
            warnings: record.as_ref().map(|r| r.result.warnings.clone()).unwrap_or_default(),
        };
        // A live claim wins over a record: the run is being redone (forced, or retried).
        if let Some(c) = live {
            state.state = "running";
            state.worker = c.info.as_ref().map(|i| i.worker());
            state.since = c.info.as_ref().map(|i| clock(i.started_at));
            state.heartbeat_seconds_ago = Some(c.heartbeat_age().as_secs_f64());
        } else if let Some(r) = &record {
            state.state = if r.status == Status::Ok { "done" } else { "failed" };
        } else if let Some(why) = stale {
            let whose = claim
                .and_then(|c| c.info.as_ref())
                .map_or("unknown worker".into(), |i| i.worker());
            state.stale_claim = Some(format!("{whose}: {why}"));
        }
        if state.state != "done" {
            state.kept = Kept::read(&store.parts_path(&entry.id));
        }
        runs.push(state);
    }
    let count = |s: &str| runs.iter().filter(|r| r.state == s).count();
    let (done, failed, running, pending) = (count("done"), count("failed"), count("running"), count("pending"));
    let warned = runs.iter().filter(|r| !r.warnings.is_empty()).count();
    let finished: Vec<f64> = runs
        .iter()
        .filter(|r| matches!(r.state, "done" | "failed"))
        .filter_map(|r| r.seconds)
        .collect();
    let eta_seconds = (!finished.is_empty() && running + pending > 0).then(|| {
        finished.iter().sum::<f64>() / finished.len() as f64 * (running + pending) as f64 / running.max(1) as f64
    });
    Ok(Summary {
        sweep: sweep.name,
        run_dir: run_dir.display().to_string(),
        done,
        failed,
        running,
        pending,
        warned,
        eta_seconds,
        runs,
    })
}
