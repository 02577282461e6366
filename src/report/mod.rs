//! `repro report`: collects a sweep's records into a polars DataFrame (results.parquet and
//! results.csv) and renders the tables and charts the sweep names, from the records alone.

pub mod charts;
pub mod frame;
pub mod tables;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::config::{RunSpec, Selector};
use crate::pipeline::PruneSpec;
use crate::run_result::TIMINGS;
use crate::sweep::store::{Record, Status, Store};
use crate::sweep::SweepFile;

/// A table or chart: its layout (rows, columns, series) as selectors over run settings, the
/// metric shown, and the paper's numbers where it has them. experiments/*.yaml hold one each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artefact {
    /// Output file stem.
    pub name: String,
    pub title: String,
    /// Where the paper's numbers come from, e.g. "arXiv v2, Table 3 (p.6)".
    #[serde(default)]
    pub source: Option<String>,
    pub kind: ArtefactKind,
    pub metric: Metric,
    /// Table: headers of the row-label columns (one per element of a row's `label`).
    #[serde(default)]
    pub row_header: Vec<String>,
    /// Table rows.
    #[serde(default)]
    pub rows: Vec<Slot>,
    /// Table columns, and the bar groups of a bar chart.
    #[serde(default)]
    pub columns: Vec<Slot>,
    /// Line charts: the setting on the x axis and its values (evenly spaced, as the paper plots them).
    #[serde(default)]
    pub x: Option<XAxis>,
    /// Lines of a line chart, bars within each group of a bar chart.
    #[serde(default)]
    pub series: Vec<Slot>,
    #[serde(default)]
    pub log_y: bool,
    #[serde(default = "default_decimals")]
    pub decimals: usize,
}

fn default_decimals() -> usize {
    2
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtefactKind {
    Table,
    Line,
    Bars,
}

/// One row, column or series: its label, which runs it takes, and the paper's values along the
/// other axis (`null` where the paper has none).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub label: Labels,
    #[serde(default, rename = "where")]
    pub select: Selector,
    #[serde(default)]
    pub paper: Vec<Option<f64>>,
    /// Standard deviations the paper prints beside its means (Table 17).
    #[serde(default)]
    pub paper_std: Vec<Option<f64>>,
    /// A table column's own metric instead of the artefact's: the per-task zero-shot tables
    /// have one task per column and the mean last.
    #[serde(default)]
    pub metric: Option<Metric>,
}

/// A label, or several for tables with more than one row-label column.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Labels {
    One(String),
    Many(Vec<String>),
}

impl Labels {
    pub fn parts(&self) -> Vec<String> {
        match self {
            Labels::One(s) => vec![s.clone()],
            Labels::Many(v) => v.clone(),
        }
    }
    pub fn joined(&self) -> String {
        self.parts().join(" ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XField {
    Sparsity,
    Nsamples,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XAxis {
    pub field: XField,
    pub values: Vec<f64>,
    pub label: String,
}

/// What a cell shows: `ppl:<corpus>`, `acc:<task>` (%), `zero_shot_mean` (%), or a timing
/// (`prune_seconds`, `total_seconds`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Metric {
    Ppl(String),
    Acc(String),
    ZeroShotMean,
    Seconds(String),
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("ppl", c)) if !c.is_empty() => Ok(Metric::Ppl(c.into())),
            Some(("acc", t)) if !t.is_empty() => Ok(Metric::Acc(t.into())),
            _ if s == "zero_shot_mean" => Ok(Metric::ZeroShotMean),
            _ if TIMINGS.contains(&s.as_str()) => Ok(Metric::Seconds(s)),
            _ => Err(format!(
                "unknown metric `{s}`: use ppl:<corpus>, acc:<task>, zero_shot_mean, {}",
                TIMINGS.join(", ")
            )),
        }
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        match m {
            Metric::Ppl(c) => format!("ppl:{c}"),
            Metric::Acc(t) => format!("acc:{t}"),
            Metric::ZeroShotMean => "zero_shot_mean".into(),
            Metric::Seconds(s) => s,
        }
    }
}

impl Metric {
    /// This metric's value in a successful record, if it was measured.
    pub fn value(&self, r: &Record) -> Option<f64> {
        let res = &r.result;
        match self {
            Metric::Ppl(c) => res.ppl.get(c).copied(),
            Metric::Acc(t) => res.zero_shot.get(t).map(|a| 100.0 * a.acc),
            Metric::ZeroShotMean => res.zero_shot_mean_acc.map(|a| 100.0 * a),
            Metric::Seconds(s) => res.timing(s),
        }
    }

    pub fn axis_label(&self) -> String {
        match self {
            Metric::Ppl(c) => format!("{c} perplexity"),
            Metric::Acc(t) => format!("{t} accuracy (%)"),
            Metric::ZeroShotMean => "mean zero-shot accuracy (%)".into(),
            Metric::Seconds(s) => s.replace('_', " "),
        }
    }
}

impl Artefact {
    pub fn load(path: &Path) -> Result<Artefact> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow!("{}{at}: {e}", path.display())
        })
    }

    /// The parts each kind needs, checked when the sweep is read rather than after its runs.
    pub fn check(&self) -> Result<()> {
        let kind = match self.kind {
            ArtefactKind::Table => "table",
            ArtefactKind::Line => "line chart",
            ArtefactKind::Bars => "bar chart",
        };
        let file_safe = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !file_safe {
            bail!(
                "report `{}`: `name` becomes the file name in report/; use letters, digits, '.', '_' and '-'",
                self.name
            );
        }
        if self.title.contains('\n') || self.slots().any(|s| s.label.parts().iter().any(|l| l.contains('\n'))) {
            bail!(
                "report `{}`: a title or label holds a line break, which would split table rows",
                self.name
            );
        }
        // Paper values run along the other axis: a row's over the columns, a series' over x (line) or the groups (bars).
        let along = match self.kind {
            ArtefactKind::Line => self.x.as_ref().map_or(0, |x| x.values.len()),
            ArtefactKind::Table | ArtefactKind::Bars => self.columns.len(),
        };
        let paper_slots = match self.kind {
            ArtefactKind::Table => &self.rows,
            _ => &self.series,
        };
        if let Some(s) = paper_slots
            .iter()
            .find(|s| s.paper.len() > along || s.paper_std.len() > along)
        {
            bail!(
                "report `{}`: `{}` lists {} paper values for {along} places",
                self.name,
                s.label.joined(),
                s.paper.len().max(s.paper_std.len())
            );
        }
        let need = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow!("report `{}`: a {kind} needs {what}", self.name))
            }
        };
        match self.kind {
            ArtefactKind::Table => need(
                !self.rows.is_empty() && !self.columns.is_empty(),
                "`rows` and `columns`",
            ),
            ArtefactKind::Line => need(
                self.x.as_ref().is_some_and(|x| !x.values.is_empty()) && !self.series.is_empty(),
                "`x` (with values) and `series`",
            ),
            ArtefactKind::Bars => need(
                !self.columns.is_empty() && !self.series.is_empty(),
                "`columns` (groups) and `series` (bars)",
            ),
        }
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.rows.iter().chain(&self.columns).chain(&self.series)
    }

    /// The metrics its cells show: a table column's own or the artefact's; a chart's is the
    /// artefact's.
    pub fn metrics(&self) -> Vec<&Metric> {
        let mut out: Vec<&Metric> = Vec::new();
        if self.kind == ArtefactKind::Table {
            for m in self.columns.iter().map(|c| c.metric.as_ref().unwrap_or(&self.metric)) {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        if out.is_empty() {
            out.push(&self.metric);
        }
        out
    }

    /// Labels of rows, columns and series whose selector matches none of `runs` (each run's
    /// settings and method label): cells a sweep will leave empty, said before it runs.
    pub fn unplanned_slots(&self, runs: &[(&RunSpec, &str)]) -> Vec<String> {
        self.slots()
            .filter(|slot| !runs.iter().any(|(spec, label)| slot.select.matches(spec, label)))
            .map(|slot| slot.label.joined())
            .collect()
    }

    /// Labels of rows, columns and series whose selector and metric match no successful record:
    /// a misspelt model, method or corpus name renders as empty cells otherwise.
    fn unmatched_slots(&self, records: &[Record]) -> Vec<String> {
        let ok: Vec<&Record> = records.iter().filter(|r| r.status == Status::Ok).collect();
        if ok.is_empty() {
            return Vec::new();
        }
        self.slots()
            .filter(|slot| {
                let metric = slot.metric.as_ref().unwrap_or(&self.metric);
                !ok.iter()
                    .any(|r| slot.select.matches(&r.settings, &r.method_label) && metric.value(r).is_some())
            })
            .map(|slot| slot.label.joined())
            .collect()
    }
}

/// What one table cell or chart point shows: the metric over the successful runs it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub mean: f64,
    /// Sample standard deviation; None for a single run.
    pub std: Option<f64>,
    /// Settings other than the seed in which those runs differ. Non-empty means the spread is not
    /// a seed spread: a row's or column's `where` is looser than meant.
    pub mixed: Vec<&'static str>,
}

/// The settings that change a run's numbers, besides the seed. Batch sizes (float noise only)
/// and the list of evaluations (which metrics exist, not their values) are left out.
fn protocol(s: &RunSpec) -> Vec<(&'static str, String)> {
    let p = s.prune.as_ref();
    let prune = |f: &dyn Fn(&PruneSpec) -> String| p.map(f).unwrap_or_default();
    let options = p.map(|p| p.options.clone()).unwrap_or_default();
    let mut settings = vec![
        ("model", s.model.model.clone()),
        ("device", s.model.device.clone()),
        ("dtype", format!("{:?}", s.model.dtype)),
        ("seqlen", format!("{:?}", s.model.seqlen)),
        ("method", s.method_name().to_string()),
        ("params", prune(&|p| format!("{:?}", p.options.params))),
        ("sparsity", prune(&|p| p.sparsity.to_string())),
        ("pattern", prune(&|p| p.pattern.to_string())),
        ("allocation", prune(&|p| format!("{:?}", p.allocation))),
        ("calibration", prune(&|p| p.calib.clone())),
        ("nsamples", prune(&|p| p.nsamples.to_string())),
        ("max_windows", format!("{:?}", s.eval.max_windows)),
        ("limit", format!("{:?}", s.eval.limit)),
    ];
    settings.extend(options.named_values().map(|(k, v)| (k, format!("{v:?}"))));
    settings
}

/// `metric` over the successful records matched by all `selectors` (and at `x`, on a line chart).
pub fn cell(
    records: &[Record],
    metric: &Metric,
    selectors: &[&Selector],
    x: Option<(XField, f64)>,
) -> Option<Aggregate> {
    let runs: Vec<(&Record, f64)> = records
        .iter()
        .filter(|r| r.status == Status::Ok && selectors.iter().all(|s| s.matches(&r.settings, &r.method_label)))
        .filter(|r| {
            x.is_none_or(|(field, v)| {
                let p = r.settings.prune.as_ref();
                let got = match field {
                    XField::Sparsity => p.map_or(0.0, |p| p.sparsity),
                    XField::Nsamples => p.map_or(0.0, |p| p.nsamples as f64),
                };
                (got - v).abs() < 1e-9
            })
        })
        .filter_map(|r| Some((r, metric.value(r)?)))
        .collect();
    let (first, _) = runs.first()?;
    let n = runs.len() as f64;
    let mean = runs.iter().map(|(_, v)| v).sum::<f64>() / n;
    let std = (runs.len() > 1).then(|| (runs.iter().map(|(_, v)| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    let settings: Vec<_> = runs.iter().map(|(r, _)| protocol(&r.settings)).collect();
    let mixed = protocol(&first.settings)
        .iter()
        .enumerate()
        .filter(|(k, (_, v))| settings.iter().any(|s| s[*k].1 != *v))
        .map(|(_, (name, _))| *name)
        .collect();
    Some(Aggregate { mean, std, mixed })
}

/// One warning for all cells of an artefact (labelled by `at`) whose runs differ in more than the seed.
pub(crate) fn warn_mixed<'a>(a: &Artefact, cells: impl IntoIterator<Item = (String, &'a Aggregate)>) {
    let mixed: Vec<String> = cells
        .into_iter()
        .filter(|(_, c)| !c.mixed.is_empty())
        .map(|(at, c)| format!("{at} (differ in {})", c.mixed.join(", ")))
        .collect();
    if !mixed.is_empty() {
        eprintln!(
            "warning: report `{}`: {} runs that differ in more than the seed, so their ± is not a seed spread: {}; \
             narrow the row's, column's or series' `where`",
            a.name,
            if mixed.len() == 1 {
                "one cell averages".to_string()
            } else {
                format!("{} cells average", mixed.len())
            },
            mixed.join("; ")
        );
    }
}

/// Reads `RUN_DIR/sweep.json` and the records of its latest plan; writes results.parquet,
/// results.csv and every artefact; returns the files written.
pub fn report(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let sweep = SweepFile::load(run_dir)?;
    let store = Store::open(run_dir);
    let mut records = Vec::new();
    for entry in &sweep.runs {
        match store.get(&entry.id) {
            Ok(Some(r)) => records.push(r),
            Ok(None) => {}
            Err(e) => eprintln!("warning: {e:#}; left out of the report (`repro run` redoes that run)"),
        }
    }
    // Everything is rendered into a staging directory, then renamed into place file by file, so
    // workers that finish together (`repro run` on a cluster) never leave a half-written file.
    let stage = tempfile::Builder::new()
        .prefix(".report-")
        .tempdir_in(run_dir)
        .with_context(|| format!("cannot write in {}", run_dir.display()))?;
    let mut written = frame::write(&records, stage.path())?;
    let out = stage.path().join("report");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for a in &sweep.artefacts {
        let unmatched = a.unmatched_slots(&records);
        if !unmatched.is_empty() {
            eprintln!(
                "warning: report `{}`: no successful run for {} (not run yet, or a misspelt model, method or metric name)",
                a.name,
                unmatched.join(", ")
            );
        }
        match a.kind {
            ArtefactKind::Table => written.extend(tables::write(a, &records, &out)?),
            ArtefactKind::Line | ArtefactKind::Bars => written.extend(charts::write(a, &records, &out)?),
        }
    }
    let written = written
        .into_iter()
        .map(|staged| {
            let path = run_dir.join(staged.strip_prefix(stage.path()).unwrap_or(&staged));
            std::fs::create_dir_all(path.parent().unwrap_or(run_dir))?;
            std::fs::rename(&staged, &path).map(|()| path)
        })
        .collect::<std::io::Result<Vec<PathBuf>>>()
        .with_context(|| format!("cannot move the report into {}", run_dir.display()))?;
    let ok = records.iter().filter(|r| r.status == Status::Ok).count();
    for (label, why) in &sweep.unresolved {
        eprintln!("warning: planned run `{label}` could not be identified, so it has no record: {why}");
    }
    let planned = sweep.runs.len() + sweep.unresolved.len();
    println!(
        "report: {} of {planned} planned runs have records ({ok} ok)",
        records.len()
    );
    for f in &written {
        println!("  {}", f.display());
    }
    Ok(written)
}
