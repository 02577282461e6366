//! Sweep configs: a YAML file naming models, methods, sparsities, patterns, calibration and
//! evaluations, expanded into the cross product of runs. Every struct denies unknown fields so a
//! typo is reported with the file, line, column and the allowed names instead of being ignored.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::eval::tasks::task;
use crate::model::Streaming;
use crate::pipeline::{EvalSpec, ModelSpec, PruneSpec};
use crate::prune::allocation::Allocation;
use crate::prune::mask::{Group, Pattern};
use crate::prune::metric::Params;
use crate::prune::registry::method_names;
use crate::prune::{Method, MethodOptions};
use crate::report::Metric;
use std::collections::BTreeMap;

/// A whole sweep file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    pub name: String,
    /// Where records, results and the report go (relative to the working directory).
    pub output: PathBuf,
    #[serde(default = "default_device")]
    pub device: DeviceName,
    /// f32, f16 or bf16; default f32 on CPU, f16 on CUDA.
    #[serde(default)]
    pub dtype: Option<DtypeName>,
    /// Calibration and perplexity window length; default max_position_embeddings (the paper's).
    #[serde(default)]
    pub seqlen: Option<usize>,
    /// auto, on or off: read one block at a time from disk (`repro prune --stream`); results are the same.
    #[serde(default)]
    pub stream: Streaming,
    pub models: Vec<String>,
    pub methods: Vec<MethodEntry>,
    /// Unstructured ratios; N:M patterns fix the sparsity at N/M, and `dense` ignores every pruning axis.
    #[serde(default = "default_sparsities")]
    pub sparsities: Vec<Ratio>,
    #[serde(default = "default_patterns")]
    pub patterns: Vec<Pattern>,
    /// Sparsity per block: uniform, owl, {owl: {m, lambda}} or a list of per-block sparsities;
    /// N:M patterns run uniform only.
    #[serde(default = "default_allocations")]
    pub allocations: Vec<Allocation>,
    #[serde(default)]
    pub calibration: Calibration,
    pub evaluation: Evaluation,
    /// Grid points to drop: a run is dropped when it matches every field an entry names.
    #[serde(default)]
    pub exclude: Vec<Selector>,
    /// Extra grids, each expanded on its own; fields it omits come from the top-level lists.
    #[serde(default)]
    pub include: Vec<GridPatch>,
    /// Tables and charts: a name from experiments/ or an inline definition.
    #[serde(default)]
    pub report: Vec<StrOr<crate::report::Artefact>>,
}

/// An `include` entry: any subset of the grid's lists plus calibration sizes and seeds.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GridPatch {
    pub models: Option<Vec<String>>,
    pub methods: Option<Vec<MethodEntry>>,
    pub sparsities: Option<Vec<Ratio>>,
    pub patterns: Option<Vec<Pattern>>,
    pub allocations: Option<Vec<Allocation>>,
    pub nsamples: Option<Vec<usize>>,
    pub seeds: Option<Vec<u64>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// c4, c4:<dir|repo>, wikitext2, wikitext2:<dir|repo>, or a local file.
    #[serde(default = "default_calib")]
    pub dataset: String,
    #[serde(default = "default_nsamples")]
    pub nsamples: Vec<usize>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Calibration samples per forward pass (speed only).
    #[serde(default = "default_calib_batch")]
    pub batch_size: usize,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            dataset: default_calib(),
            nsamples: default_nsamples(),
            seeds: default_seeds(),
            batch_size: default_calib_batch(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// Perplexity corpora, as `repro eval --ppl`.
    #[serde(default)]
    pub ppl: Vec<String>,
    /// Zero-shot tasks (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa).
    #[serde(default)]
    pub tasks: Vec<TaskName>,
    /// Only the first K perplexity windows (quick sweeps); recorded with every number.
    #[serde(default)]
    pub max_windows: Option<usize>,
    /// Only the first N documents of each task.
    #[serde(default)]
    pub limit: Option<usize>,
    /// `limit` for particular models, by their name in `models`: the official code evaluates
    /// 65B and 70B models on the first 2000 documents of each task.
    #[serde(default)]
    pub model_limits: std::collections::BTreeMap<String, usize>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Also write each run's per-document zero-shot outcomes (as `repro eval --samples`) to
    /// `<output>/samples/<run id>.jsonl`. Not part of a run's identity: it changes no number.
    #[serde(default)]
    pub samples: bool,
}

/// Picks runs by their settings; every field given must match. `method` matches a method's
/// name or label (`dense` picks the unpruned baseline).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub model: Option<String>,
    pub method: Option<String>,
    pub group: Option<Group>,
    pub sparsity: Option<Ratio>,
    pub pattern: Option<Pattern>,
    pub allocation: Option<Allocation>,
    pub nsamples: Option<usize>,
    pub seed: Option<u64>,
    /// Metric options or expression parameters, each at this value (a built-in's default
    /// matches runs that left it out).
    pub params: Option<Params>,
    /// A metric expression, as the method wrote it.
    pub metric: Option<String>,
    pub use_variant: Option<bool>,
}

/// A method with its options. Written as a bare name (`wanda`) or a map
/// (`{name: wanda, group: per-layer, use_variant: false, label: wanda-layer}`); a metric
/// expression is a map with `metric` (`{name: my_metric, metric: "abs(W) * X^a", params: {a: [0.5, 1]}}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "StrOr<MethodOpts>", into = "MethodOpts")]
pub struct MethodEntry(MethodOpts);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MethodOpts {
    /// dense, a built-in method (`repro prune --help` lists them), or the name of `metric`.
    pub name: String,
    /// A metric expression over W, X, Hdiag, Hinv and `params` (README, "Try your own metric").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A built-in metric's options or the expression's parameters: a number, or a list to sweep.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub group: Option<Group>,
    #[serde(default)]
    pub use_variant: bool,
    /// This method's allocation instead of the grid's `allocations` (e.g. `owl` for Wanda+OWL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// Name in tables and charts (default: the name, plus the group when one is set).
    #[serde(default)]
    pub label: Option<String>,
}

pub const DENSE: &str = "dense";

/// A number, or a list of numbers to sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(f64),
    Many(Vec<f64>),
}

impl OneOrMany {
    fn values(&self) -> Vec<f64> {
        match self {
            OneOrMany::One(v) => vec![*v],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

impl MethodEntry {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The label in tables and charts (without parameter values).
    pub fn label(&self) -> String {
        self.0
            .label
            .clone()
            .unwrap_or_else(|| match (&self.0.group, self.0.use_variant) {
                (Some(g), _) => format!("{} ({})", self.0.name, g.name()),
                (None, true) => format!("{} (variant)", self.0.name),
                (None, false) => self.0.name.clone(),
            })
    }

    /// The label of one point of the parameter grid: the swept parameters' values appended.
    pub fn label_at(&self, params: &Params) -> String {
        let swept: Vec<String> = self
            .0
            .params
            .iter()
            .filter(|(_, v)| v.values().len() > 1)
            .map(|(k, _)| format!("{k}={}", params[k]))
            .collect();
        match swept.is_empty() {
            true => self.label(),
            false => format!("{} {}", self.label(), swept.join(" ")),
        }
    }

    /// Every combination of the parameter values (one empty set when there are none).
    pub fn param_grid(&self) -> Vec<Params> {
        let mut grid = vec![Params::new()];
        for (name, values) in &self.0.params {
            grid = grid
                .iter()
                .flat_map(|point| {
                    values.values().into_iter().map(move |v| {
                        let mut p = point.clone();
                        p.insert(name.clone(), v);
                        p
                    })
                })
                .collect();
        }
        grid
    }

    /// The options of one point of the parameter grid.
    fn options_at(&self, params: &Params) -> MethodOptions {
        MethodOptions {
            metric: self.0.metric.clone(),
            params: params.clone(),
            group: self.0.group,
            use_variant: self.0.use_variant,
        }
    }
}

impl TryFrom<StrOr<MethodOpts>> for MethodEntry {
    type Error = String;
    fn try_from(v: StrOr<MethodOpts>) -> Result<Self, String> {
        let opts = match v {
            StrOr::Str(name) => MethodOpts {
                name,
                metric: None,
                params: BTreeMap::new(),
                group: None,
                use_variant: false,
                allocation: None,
                label: None,
            },
            StrOr::Map(o) => o,
        };
        if opts.metric.is_some() && (opts.name == DENSE || method_names().contains(&opts.name.as_str())) {
            return Err(format!("method `{}` with a `metric` expression: `{}` is a built-in method; give the expression a name of its own", opts.name, opts.name));
        }
        if let Some((k, _)) = opts.params.iter().find(|(_, v)| v.values().is_empty()) {
            return Err(format!(
                "method `{}`: `params.{k}` is an empty list; give at least one value",
                opts.name
            ));
        }
        let entry = MethodEntry(opts);
        if entry.name() != DENSE {
            for params in entry.param_grid() {
                Method::parse(entry.name(), &entry.options_at(&params), Pattern::Unstructured)
                    .map_err(|e| format!("method `{}`: {e} (or dense)", entry.name()))?;
            }
        } else if entry.0.group.is_some()
            || entry.0.use_variant
            || !entry.0.params.is_empty()
            || entry.0.allocation.is_some()
        {
            return Err("method `dense` takes no group, use_variant, params or allocation".into());
        }
        Ok(entry)
    }
}

impl From<MethodEntry> for MethodOpts {
    fn from(m: MethodEntry) -> MethodOpts {
        m.0
    }
}

/// A sparsity ratio in [0, 1).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(pub f64);

impl TryFrom<f64> for Ratio {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..1.0).contains(&v) {
            Ok(Ratio(v))
        } else {
            Err(format!("sparsity {v} must be in [0, 1), e.g. 0.5 for 50%"))
        }
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

/// `cpu`, `cuda` or `cuda:N`, checked when the config is read (CUDA itself is checked per run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceName(pub String);

impl TryFrom<String> for DeviceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = s == "cpu" || s == "cuda" || s.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
        if ok {
            Ok(DeviceName(s))
        } else {
            Err(format!("unknown device `{s}`: use cpu, cuda or cuda:N"))
        }
    }
}

impl From<DeviceName> for String {
    fn from(d: DeviceName) -> String {
        d.0
    }
}

/// The dtype a run on `device` gets when none is named (f32 on CPU, f16 on CUDA).
fn default_dtype(device: &str) -> String {
    let device = if device == "cpu" {
        tch::Device::Cpu
    } else {
        tch::Device::Cuda(0)
    };
    crate::device::parse_dtype(None, device)
        .map(crate::device::dtype_name)
        .unwrap_or("f32")
        .into()
}

/// `f32`, `f16` or `bf16`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "String", into = "String")]
pub struct DtypeName(pub String);

impl TryFrom<String> for DtypeName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // One spelling per dtype (`float32` is `f32`), so that it cannot change a run's id.
        crate::device::parse_dtype(Some(&s), tch::Device::Cpu)
            .map(|k| DtypeName(crate::device::dtype_name(k).into()))
            .map_err(|e| e.to_string())
    }
}

impl From<DtypeName> for String {
    fn from(d: DtypeName) -> String {
        d.0
    }
}

/// A zero-shot task name, checked against the task registry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "String", into = "String")]
pub struct TaskName(pub String);

impl Evaluation {
    /// Why no run of the sweep can have `metric`, if none can: a report cell for a corpus or task
    /// the sweep does not evaluate would stay empty, found out only when the sweep has finished.
    fn never_measures(&self, metric: &Metric) -> Option<String> {
        let tasks: Vec<&str> = self.tasks.iter().map(|t| t.0.as_str()).collect();
        match metric {
            Metric::Ppl(corpus) => {
                let labels = crate::data::ppl_labels(&self.ppl);
                (!labels.contains(corpus)).then(|| match labels.as_slice() {
                    [] => format!("`evaluation.ppl` is empty; add `{corpus}` to it"),
                    l => format!(
                        "`evaluation.ppl` measures {} only; add `{corpus}` to it, or show ppl:{}",
                        l.join(", "),
                        l[0]
                    ),
                })
            }
            Metric::Acc(task) => (!tasks.contains(&task.as_str())).then(|| match tasks.as_slice() {
                [] => format!("`evaluation.tasks` is empty; add `{task}` to it"),
                t => format!(
                    "`evaluation.tasks` runs {} only; add `{task}` to it, or show acc:{}",
                    t.join(", "),
                    t[0]
                ),
            }),
            Metric::ZeroShotMean => tasks
                .is_empty()
                .then(|| "`evaluation.tasks` is empty, so there is no mean accuracy; add the tasks to it".to_string()),
            Metric::Seconds(_) => None,
        }
    }
}

impl TryFrom<String> for TaskName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        task(&s).map(|_| TaskName(s)).map_err(|e| e.to_string())
    }
}

impl From<TaskName> for String {
    fn from(t: TaskName) -> String {
        t.0
    }
}

/// Either a bare string or a map deserialized as `T` (keeping `T`'s unknown-field errors, which
/// an untagged enum would swallow).
#[derive(Clone, Debug, PartialEq)]
pub enum StrOr<T> {
    Str(String),
    Map(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for StrOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a map")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(StrOr::Str(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(m)).map(StrOr::Map)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T: Serialize> Serialize for StrOr<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StrOr::Str(x) => s.serialize_str(x),
            StrOr::Map(x) => x.serialize(s),
        }
    }
}

/// An include entry's list, or the top-level one it omits.
fn or<T: Clone>(patch: &Option<Vec<T>>, base: &[T]) -> Vec<T> {
    patch.clone().unwrap_or_else(|| base.to_vec())
}

fn default_device() -> DeviceName {
    DeviceName("cpu".into())
}
fn default_sparsities() -> Vec<Ratio> {
    vec![Ratio(0.5)]
}
fn default_patterns() -> Vec<Pattern> {
    vec![Pattern::Unstructured]
}
fn default_allocations() -> Vec<Allocation> {
    vec![Allocation::Uniform]
}
fn default_calib() -> String {
    "c4".into()
}
fn default_nsamples() -> Vec<usize> {
    vec![128]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_calib_batch() -> usize {
    8
}
fn default_eval_batch() -> usize {
    1
}

/// One grid point: what to run, and how it is named in logs and tables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub model: ModelSpec,
    /// `None` for the dense baseline.
    pub prune: Option<PruneSpec>,
    pub eval: EvalSpec,
}

#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub label: String,
    pub method_label: String,
    pub spec: RunSpec,
}

impl RunSpec {
    pub fn method_name(&self) -> &str {
        self.prune.as_ref().map_or(DENSE, |p| p.method.as_str())
    }
}

impl Selector {
    /// Whether the run with these settings and method label is picked.
    pub fn matches(&self, spec: &RunSpec, method_label: &str) -> bool {
        let p = spec.prune.as_ref();
        let eq = |a: f64, b: f64| (a - b).abs() < 1e-9;
        self.model.as_ref().is_none_or(|m| *m == spec.model.model)
            && self
                .method
                .as_ref()
                .is_none_or(|m| m == spec.method_name() || m == method_label)
            && self.group.is_none_or(|g| p.and_then(|p| p.options.group) == Some(g))
            && self
                .use_variant
                .is_none_or(|v| p.is_some_and(|p| p.options.use_variant) == v)
            && self
                .metric
                .as_ref()
                .is_none_or(|e| p.and_then(|p| p.options.metric.as_ref()) == Some(e))
            && self.sparsity.is_none_or(|s| eq(s.0, p.map_or(0.0, |p| p.sparsity)))
            && self.pattern.is_none_or(|x| p.is_some_and(|p| p.pattern == x))
            && self
                .allocation
                .as_ref()
                .is_none_or(|a| *a == p.map_or(Allocation::Uniform, |p| p.allocation.clone()))
            && self.nsamples.is_none_or(|n| p.is_some_and(|p| p.nsamples == n))
            && self.seed.is_none_or(|s| p.is_some_and(|p| p.seed == s))
            && self.params.as_ref().is_none_or(|want| {
                p.is_some_and(|p| want.iter().all(|(k, v)| p.param(k).is_some_and(|got| eq(got, *v))))
            })
    }
}

impl SweepConfig {
    /// Reads and validates a sweep file; errors name the file, line and column.
    pub fn load(path: &Path) -> Result<SweepConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read sweep config {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<SweepConfig> {
        let cfg: SweepConfig = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow!("{}{at}: {e}", path.display())
        })?;
        let bad = |field: &str, why: &str| anyhow!("{}: `{field}` {why}", path.display());
        if cfg.models.is_empty() {
            return Err(bad("models", "is empty: name at least one hub id or model directory"));
        }
        if cfg.methods.is_empty() {
            return Err(bad(
                "methods",
                &format!(
                    "is empty: name at least one method ({DENSE}, {}, or a metric expression)",
                    method_names().join(", ")
                ),
            ));
        }
        if cfg.calibration.nsamples.contains(&0)
            || cfg
                .include
                .iter()
                .any(|p| p.nsamples.as_ref().is_some_and(|n| n.contains(&0)))
        {
            return Err(bad("nsamples", "contains 0: every run needs at least one sample"));
        }
        if let Some(p) = cfg
            .evaluation
            .ppl
            .iter()
            .find(|p| p.trim().is_empty() || crate::eval::tasks::ALL_TASKS.contains(&p.as_str()))
        {
            return Err(bad(
                "evaluation.ppl",
                &format!("names `{p}`, which is not a perplexity corpus (zero-shot tasks go under `tasks`)"),
            ));
        }
        if cfg.evaluation.ppl.is_empty() && cfg.evaluation.tasks.is_empty() {
            return Err(bad("evaluation", "names nothing to measure: set `ppl` and/or `tasks`"));
        }
        let all_models: Vec<&String> = cfg
            .models
            .iter()
            .chain(cfg.include.iter().flat_map(|p| p.models.iter().flatten()))
            .collect();
        if let Some(m) = cfg.evaluation.model_limits.keys().find(|m| !all_models.contains(m)) {
            return Err(bad(
                "evaluation.model_limits",
                &format!("names `{m}`, which is not in `models` (spell it as `models` does)"),
            ));
        }
        if cfg.evaluation.batch_size == 0 || cfg.calibration.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1"));
        }
        if cfg.seqlen.is_some_and(|n| n < 2) {
            return Err(bad(
                "seqlen",
                "must be at least 2 (leave it out for max_position_embeddings, as the paper)",
            ));
        }
        if cfg.evaluation.max_windows == Some(0) {
            return Err(bad(
                "evaluation.max_windows",
                "must be at least 1 (leave it out for every window)",
            ));
        }
        if cfg.evaluation.samples && cfg.evaluation.tasks.is_empty() {
            return Err(bad(
                "evaluation.samples",
                "writes zero-shot outcomes, and `tasks` names none; name some or leave `samples` out",
            ));
        }
        if cfg.evaluation.limit == Some(0) || cfg.evaluation.model_limits.values().any(|&l| l == 0) {
            return Err(bad(
                "evaluation.limit",
                "must be at least 1 (leave it out for every document)",
            ));
        }
        let empty = [
            ("sparsities", cfg.sparsities.is_empty()),
            ("patterns", cfg.patterns.is_empty()),
            ("allocations", cfg.allocations.is_empty()),
            ("calibration.nsamples", cfg.calibration.nsamples.is_empty()),
            ("calibration.seeds", cfg.calibration.seeds.is_empty()),
        ];
        if let Some((field, _)) = empty.iter().find(|(_, is_empty)| *is_empty) {
            return Err(bad(
                field,
                "is empty, which would drop every pruned run; leave it out for the default",
            ));
        }
        for (i, p) in cfg.include.iter().enumerate() {
            let lists = [
                ("models", p.models.as_ref().map(Vec::len)),
                ("methods", p.methods.as_ref().map(Vec::len)),
                ("sparsities", p.sparsities.as_ref().map(Vec::len)),
                ("patterns", p.patterns.as_ref().map(Vec::len)),
                ("allocations", p.allocations.as_ref().map(Vec::len)),
                ("nsamples", p.nsamples.as_ref().map(Vec::len)),
                ("seeds", p.seeds.as_ref().map(Vec::len)),
            ];
            if let Some((field, _)) = lists.iter().find(|(_, len)| *len == Some(0)) {
                return Err(bad(
                    &format!("include[{i}].{field}"),
                    "is empty, so the entry adds nothing; leave the field out to use the top-level list",
                ));
            }
        }
        // One name, one formula: `where: {method: NAME}` and the labels could not tell two apart.
        let entries: Vec<&MethodEntry> = cfg
            .methods
            .iter()
            .chain(cfg.include.iter().flat_map(|p| p.methods.iter().flatten()))
            .collect();
        for (i, a) in entries.iter().enumerate() {
            if let Some(b) = entries[..i]
                .iter()
                .find(|b| b.name() == a.name() && b.0.metric != a.0.metric)
            {
                return Err(bad(
                    "methods",
                    &format!(
                        "name `{}` twice for different metrics ({:?} and {:?}); give each its own name",
                        a.name(),
                        b.0.metric,
                        a.0.metric
                    ),
                ));
            }
        }
        cfg.expand().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if let Some(i) = cfg
            .unmatched_exclude()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
        {
            return Err(bad(
                &format!("exclude[{i}]"),
                "matches no run of the grid, so it drops nothing: check its model, method and pattern names",
            ));
        }
        Ok(cfg)
    }

    /// The runs, in order, duplicates removed (`exclude` drops points of the main grid, `include`
    /// grids are added after it; one dense baseline per model; data-free methods
    /// once whatever the calibration lists say).
    pub fn expand(&self) -> Result<Vec<PlannedRun>> {
        let base = GridPatch {
            models: Some(self.models.clone()),
            methods: Some(self.methods.clone()),
            sparsities: Some(self.sparsities.clone()),
            patterns: Some(self.patterns.clone()),
            allocations: Some(self.allocations.clone()),
            nsamples: Some(self.calibration.nsamples.clone()),
            seeds: Some(self.calibration.seeds.clone()),
        };
        let mut runs: Vec<PlannedRun> = Vec::new();
        let base = self
            .expand_one(&base)?
            .into_iter()
            .filter(|r| !self.exclude.iter().any(|s| s.matches(&r.spec, &r.method_label)));
        let mut included = Vec::new();
        for patch in &self.include {
            included.extend(self.expand_one(patch)?);
        }
        for run in base.chain(included) {
            if !runs.iter().any(|r| r.spec == run.spec) {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// The first `exclude` entry that matches no point of the main grid (a misspelt name).
    fn unmatched_exclude(&self) -> Result<Option<usize>> {
        let grid = self.expand_one(&GridPatch::default())?;
        Ok(self
            .exclude
            .iter()
            .position(|s| !grid.iter().any(|r| s.matches(&r.spec, &r.method_label))))
    }

    fn expand_one(&self, patch: &GridPatch) -> Result<Vec<PlannedRun>> {
        let models = or(&patch.models, &self.models);
        let methods = or(&patch.methods, &self.methods);
        let sparsities = or(&patch.sparsities, &self.sparsities);
        let patterns = or(&patch.patterns, &self.patterns);
        let allocations = or(&patch.allocations, &self.allocations);
        let nsamples = or(&patch.nsamples, &self.calibration.nsamples);
        let seeds = or(&patch.seeds, &self.calibration.seeds);
        let mut out = Vec::new();
        for model in &models {
            let eval = EvalSpec {
                names: self
                    .evaluation
                    .ppl
                    .iter()
                    .cloned()
                    .chain(self.evaluation.tasks.iter().map(|t| t.0.clone()))
                    .collect(),
                batch_size: self.evaluation.batch_size,
                max_windows: self.evaluation.max_windows,
                scored: Default::default(),
                limit: self
                    .evaluation
                    .model_limits
                    .get(model)
                    .copied()
                    .or(self.evaluation.limit),
            };
            let model_spec = ModelSpec {
                model: model.clone(),
                device: self.device.0.clone(),
                // The default written out, so that naming it does not change the run's id.
                dtype: Some(
                    self.dtype
                        .as_ref()
                        .map_or_else(|| default_dtype(&self.device.0), |d| d.0.clone()),
                ),
                seqlen: self.seqlen,
                streaming: self.stream,
                sparse_kernels: false,
                memory: Default::default(),
            };
            for m in &methods {
                if m.name() == DENSE {
                    let spec = RunSpec {
                        model: model_spec.clone(),
                        prune: None,
                        eval: eval.clone(),
                    };
                    out.push(PlannedRun {
                        label: format!("{model} dense"),
                        method_label: DENSE.into(),
                        spec,
                    });
                    continue;
                }
                let allocations = m.0.allocation.clone().map_or_else(|| allocations.clone(), |a| vec![a]);
                // N:M fixes every layer's sparsity, so it runs uniform only.
                let grid = patterns.iter().flat_map(|p| {
                    allocations
                        .iter()
                        .filter(move |a| a.is_uniform() || *p == Pattern::Unstructured)
                        .map(move |a| (p, a))
                });
                for (pattern, allocation) in grid {
                    let ratios: Vec<f64> = match (pattern, allocation.list_target()) {
                        (Pattern::NM { n, m }, _) => vec![*n as f64 / *m as f64],
                        (Pattern::Unstructured, Some(mean)) => vec![mean],
                        (Pattern::Unstructured, None) => sparsities.iter().map(|r| r.0).collect(),
                    };
                    for (sparsity, params) in ratios
                        .iter()
                        .flat_map(|&s| m.param_grid().into_iter().map(move |p| (s, p)))
                    {
                        for &ns in &nsamples {
                            for &seed in &seeds {
                                let mut p = PruneSpec {
                                    method: m.name().to_string(),
                                    options: m.options_at(&params),
                                    sparsity,
                                    pattern: *pattern,
                                    allocation: allocation.clone(),
                                    calib: self.calibration.dataset.clone(),
                                    nsamples: ns,
                                    seed,
                                    calib_batch_size: self.calibration.batch_size,
                                };
                                let method = p
                                    .method()
                                    .map_err(|e| anyhow!("method `{}` with pattern {pattern}: {e}", m.label()))?;
                                let needs_calibration = p.needs_calibration(&method);
                                p.normalise(&method);
                                let method_label = match (&m.0.allocation, &m.0.label) {
                                    _ if allocation.is_uniform() => m.label_at(&params),
                                    (Some(_), Some(_)) => m.label_at(&params),
                                    _ => format!("{} {allocation}", m.label_at(&params)),
                                };
                                let label = match needs_calibration {
                                    true => format!("{model} {method_label} {pattern} {sparsity} n{ns} seed{seed}"),
                                    false => format!("{model} {method_label} {pattern} {sparsity}"),
                                };
                                let spec = RunSpec {
                                    model: model_spec.clone(),
                                    prune: Some(p),
                                    eval: eval.clone(),
                                };
                                out.push(PlannedRun {
                                    label,
                                    method_label,
                                    spec,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The artefacts to render, with names resolved to `experiments/<name>.yaml` beside the config's folder.
    pub fn artefacts(&self, config_path: &Path) -> Result<Vec<crate::report::Artefact>> {
        let dir = config_path.parent().unwrap_or(Path::new("."));
        let artefacts: Vec<crate::report::Artefact> = self
            .report
            .iter()
            .map(|r| match r {
                StrOr::Map(a) => a
                    .check()
                    .map(|_| a.clone())
                    .map_err(|e| anyhow!("{}: {e}", config_path.display())),
                StrOr::Str(name) => {
                    let candidates = [
                        dir.join("../experiments").join(format!("{name}.yaml")),
                        PathBuf::from("experiments").join(format!("{name}.yaml")),
                    ];
                    let Some(file) = candidates.iter().find(|p| p.is_file()) else {
                        bail!(
                            "{}: report entry `{name}`: no {} (nor {})",
                            config_path.display(),
                            candidates[0].display(),
                            candidates[1].display()
                        );
                    };
                    let a = crate::report::Artefact::load(file)?;
                    a.check().map_err(|e| anyhow!("{}: {e}", file.display()))?;
                    Ok(a)
                }
            })
            .collect::<Result<_>>()?;
        for a in &artefacts {
            for m in a.metrics() {
                if let Some(why) = self.evaluation.never_measures(m) {
                    let shown = String::from(m.clone());
                    bail!(
                        "{}: report `{}` shows `{shown}`, but {why}",
                        config_path.display(),
                        a.name
                    );
                }
            }
        }
        // Names are file names in report/: two alike would overwrite each other.
        for (i, a) in artefacts.iter().enumerate() {
            if artefacts[..i].iter().any(|b| b.name == a.name) {
                bail!(
                    "{}: two report entries are named `{}`; their files would overwrite each other",
                    config_path.display(),
                    a.name
                );
            }
        }
        Ok(artefacts)
    }
}
