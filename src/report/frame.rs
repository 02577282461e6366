//! Records as one polars DataFrame row each: settings, protocol knobs, every metric (a column
//! per perplexity corpus and per task), timings, memory and versions.

use anyhow::{anyhow, Context, Result};
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::prune::allocation::Allocation;
use crate::prune::MethodOptions;
use crate::run_result::RunResult;
use crate::sweep::store::{Record, Status};

fn text(name: &str, records: &[Record], f: impl Fn(&Record) -> Option<String>) -> Column {
    Column::new(name.into(), records.iter().map(f).collect::<Vec<_>>())
}

fn float(name: &str, records: &[Record], f: impl Fn(&Record) -> Option<f64>) -> Column {
    Column::new(name.into(), records.iter().map(f).collect::<Vec<_>>())
}

/// The keys of a per-name map of the results, over all records.
fn keys<V>(records: &[Record], map: impl Fn(&Record) -> &BTreeMap<String, V>) -> BTreeSet<String> {
    records.iter().flat_map(|r| map(r).keys().cloned()).collect()
}

/// A successful run's result.
fn ok(r: &Record) -> Option<&RunResult> {
    (r.status == Status::Ok).then_some(&r.result)
}

/// A measured value, for successful runs only.
fn measured(name: &str, records: &[Record], f: impl Fn(&RunResult) -> Option<f64>) -> Column {
    float(name, records, |r| ok(r).and_then(&f))
}

pub fn frame(records: &[Record]) -> Result<DataFrame> {
    let prune = |r: &Record| r.settings.prune.clone();
    let mut cols = vec![
        text("id", records, |r| Some(r.id.clone())),
        text("label", records, |r| Some(r.label.clone())),
        text("status", records, |r| {
            Some(if r.status == Status::Ok { "ok" } else { "failed" }.into())
        }),
        text("model", records, |r| Some(r.settings.model.model.clone())),
        text("method", records, |r| Some(r.settings.method_name().into())),
        text("method_label", records, |r| Some(r.method_label.clone())),
        text("allocation", records, |r| {
            prune(r).map(|p| {
                if p.allocation.is_uniform() {
                    "uniform".into()
                } else {
                    p.allocation.to_string()
                }
            })
        }),
        float("owl_m", records, |r| match prune(r)?.allocation {
            Allocation::Owl { m, .. } => Some(m),
            _ => None,
        }),
        float("owl_lambda", records, |r| match prune(r)?.allocation {
            Allocation::Owl { lambda, .. } => Some(lambda),
            _ => None,
        }),
        text("pattern", records, |r| Some(prune(r)?.pattern.to_string())),
        float("sparsity", records, |r| Some(prune(r).map_or(0.0, |p| p.sparsity))),
        text("calibration", records, |r| {
            prune(r).map(|p| p.calib).filter(|c| !c.is_empty())
        }),
        float("nsamples", records, |r| {
            prune(r).filter(|p| !p.calib.is_empty()).map(|p| p.nsamples as f64)
        }),
        float("seed", records, |r| {
            prune(r).filter(|p| !p.calib.is_empty()).map(|p| p.seed as f64)
        }),
        measured("seqlen", records, |r| Some(r.seqlen as f64)),
        text("device", records, |r| ok(r).map(|r| r.device.clone())),
        text("dtype", records, |r| ok(r).map(|r| r.dtype.clone())),
        float("max_windows", records, |r| {
            r.settings.eval.max_windows.map(|m| m as f64)
        }),
        float("zero_shot_limit", records, |r| r.settings.eval.limit.map(|m| m as f64)),
        float("eval_batch_size", records, |r| Some(r.settings.eval.batch_size as f64)),
    ];
    // One column per method option, then one per metric option or expression parameter, with a
    // built-in's default where left out.
    for (k, (name, _)) in MethodOptions::default().named_values().into_iter().enumerate() {
        cols.push(text(name, records, |r| prune(r)?.options.named_values()[k].1.clone()));
    }
    let options: BTreeSet<String> = records.iter().filter_map(prune).flat_map(|p| p.param_names()).collect();
    for option in options {
        cols.push(float(&format!("param_{option}"), records, |r| prune(r)?.param(&option)));
    }
    for corpus in keys(records, |r| &r.result.ppl) {
        cols.push(measured(&format!("ppl_{corpus}"), records, |r| {
            r.ppl.get(&corpus).copied()
        }));
        cols.push(measured(&format!("windows_{corpus}"), records, |r| {
            r.ppl_details.get(&corpus).map(|d| d.windows as f64)
        }));
    }
    for task in keys(records, |r| &r.result.zero_shot) {
        cols.push(measured(&format!("acc_{task}"), records, |r| {
            r.zero_shot.get(&task).map(|t| t.acc)
        }));
    }
    cols.extend([
        measured("zero_shot_mean_acc", records, |r| r.zero_shot_mean_acc),
        measured("sparsity_actual", records, |r| r.sparsity_actual),
        measured("load_seconds", records, |r| Some(r.load_seconds)),
        measured("prune_seconds", records, |r| r.prune_seconds),
        measured("calibration_forward_seconds", records, |r| {
            r.calibration_forward_seconds
        }),
        measured("eval_seconds", records, |r| r.eval_seconds),
        measured("total_seconds", records, |r| Some(r.total_seconds)),
        measured("peak_rss_bytes", records, |r| r.peak_rss_bytes.map(|b| b as f64)),
    ]);
    cols.push(text("repro_version", records, |r| {
        Some(r.environment.repro_version.clone())
    }));
    cols.push(text("libtorch_version", records, |r| {
        Some(r.environment.libtorch_version.clone())
    }));
    cols.push(text("error", records, |r| r.error.clone()));
    DataFrame::new(records.len(), cols).map_err(|e| anyhow!("building the results table: {e}"))
}

/// results.parquet and results.csv in `dir`.
pub fn write(records: &[Record], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut df = frame(records)?;
    let parquet = dir.join("results.parquet");
    let csv = dir.join("results.csv");
    let f = std::fs::File::create(&parquet).with_context(|| format!("cannot create {}", parquet.display()))?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| anyhow!("writing {}: {e}", parquet.display()))?;
    let f = std::fs::File::create(&csv).with_context(|| format!("cannot create {}", csv.display()))?;
    CsvWriter::new(f)
        .finish(&mut df)
        .map_err(|e| anyhow!("writing {}: {e}", csv.display()))?;
    Ok(vec![parquet, csv])
}
