//! The `repro` command line: a thin layer over the library.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

use crate::eval::tasks::{task, ALL_TASKS};
use crate::eval::zeroshot::write_samples;
use crate::hub::Hub;
use crate::model::Streaming;
use crate::pipeline::{run_job, EvalSpec, ModelSpec, Observer, PrintLines, PruneSpec, Quiet};
use crate::prune::allocation::Allocation;
use crate::prune::mask::{Group, Pattern};
use crate::prune::metric::Params;
use crate::prune::{registry, MethodOptions};
use crate::run_result::RunResult;
use crate::{report, sweep};

#[derive(Parser)]
#[command(
    name = "repro",
    version,
    about = "Reproduce Wanda / SparseGPT / magnitude pruning of LLMs"
)]
pub struct Cli {
    /// Local hub mirror: DIR/models/<id>/... and DIR/datasets/<id>/... (default: $REPRO_HUB_MIRROR).
    #[arg(long, global = true)]
    pub hub_mirror: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Evaluate a model: perplexity on text corpora and zero-shot tasks.
    Eval(EvalArgs),
    /// Prune a model one-shot (magnitude, wanda, sparsegpt, ...), then optionally evaluate and save it.
    Prune(PruneArgs),
    /// Run a YAML sweep (models x methods x sparsities x ...), resumably, then write its report.
    Run(RunArgs),
    /// Collect a sweep directory's records into results.parquet/csv, tables and charts (no model needed).
    Report(ReportArgs),
    /// Submit a sweep's missing runs to SLURM as job arrays, with a report job after them.
    Slurm(sweep::slurm::SlurmArgs),
    /// Show a sweep directory's runs: done, running (where, since when), failed, pending; and an ETA.
    Status(sweep::status::StatusArgs),
    /// Time dense vs 2:4 sparse (cuSPARSELt) f16 linear layers at LLaMA-65B shapes (Table 5).
    Kernels(KernelsArgs),
    /// Compare two runs' per-document zero-shot outcomes (samples files): accuracies, agreement,
    /// the documents only one gets right, and McNemar's exact test.
    Compare(crate::eval::compare::CompareArgs),
}

#[derive(Args)]
pub struct KernelsArgs {
    /// cpu, cuda or cuda:N (the sparse kernels need CUDA; on a CPU only dense layers are timed).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Small shapes instead of LLaMA-65B's (a quick check that the benchmark runs).
    #[arg(long)]
    pub small: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The sweep's YAML file (see configs/).
    pub config: PathBuf,
    /// Print the plan (runs, which are cached, rough cost) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Rerun runs that already have a successful record.
    #[arg(long)]
    pub force: bool,
    /// Only runs whose label contains this pattern (`*` stands for anything: `wanda*2:4`), or whose id starts with it.
    #[arg(long)]
    pub only: Option<String>,
    /// Stop at the first failing run instead of recording it and going on.
    #[arg(long)]
    pub fail_fast: bool,
    /// Records and report go here instead of the config's `output`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// A frozen plan written by `repro slurm` (array-K.json); with --task-index, run that task's runs.
    #[arg(long, requires = "task_index", conflicts_with = "only")]
    pub plan: Option<PathBuf>,
    /// The task of --plan to run (a SLURM array task's $SLURM_ARRAY_TASK_ID).
    #[arg(long, requires = "plan")]
    pub task_index: Option<usize>,
    /// The plan also lists, one by one, the runs each problem blocks, and each run's phases.
    #[arg(long)]
    pub verbose: bool,
    /// The plan's wall time spread over this many workers (SLURM tasks, GPUs).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub workers: usize,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A sweep's output directory (holds sweep.json and runs/).
    pub run_dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model directory or hub id.
    #[arg(long)]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Window length: perplexity windows, and calibration samples when pruning (default:
    /// max_position_embeddings, as the official code; longer is refused).
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Hold the whole model in memory (off) or read one block at a time from disk (on) so models
    /// near or above RAM fit; auto streams when the weights exceed 70% of available memory (CPU).
    #[arg(long, value_enum, default_value_t = Streaming::Auto)]
    pub stream: Streaming,
    /// Evaluate 2:4-sparse linear layers with cuSPARSELt's sparse GEMM (CUDA, f16/bf16, resident
    /// model): faster, same results up to float rounding.
    #[arg(long)]
    pub sparse_kernels: bool,
    /// Memory the run may plan for, e.g. 8G or 512M (default: 80% of the memory available at the
    /// start). Calibration buffers that do not fit beside the weights in flight go to scratch files.
    #[arg(long, value_name = "SIZE", value_parser = crate::memory::parse_size)]
    pub max_memory: Option<u64>,
    /// Directory for scratch files: spilled calibration buffers, and a streamed model's pruned
    /// blocks when they are not saved (default: $TMPDIR, else /tmp).
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Print the run's memory plan (weights in flight, calibration buffers in memory or on disk,
    /// scratch size) from config.json alone, and exit without loading or running anything.
    #[arg(long)]
    pub plan: bool,
}

#[derive(Args, Clone)]
pub struct PplArgs {
    /// Perplexity windows / zero-shot requests per forward pass; changes speed, not results (beyond float rounding).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Evaluate only the first K windows (quick checks).
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Zero-shot: only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Zero-shot: write every document's outcome to FILE, one JSON object a line (task, doc,
    /// each choice's loglikelihood, prediction, gold, acc, acc_norm), for per-item comparisons.
    #[arg(long, value_name = "FILE")]
    pub samples: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Perplexity corpora, comma separated: wikitext2, c4, wikitext2:<dir|repo>, c4:<dir|repo>,
    /// or any text source (parquet/txt/jsonl file, directory, dataset repo id[:file]).
    /// With neither --ppl nor --tasks: wikitext2.
    #[arg(long, value_delimiter = ',', value_parser = trimmed)]
    pub ppl: Vec<String>,
    /// Zero-shot tasks, comma separated: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa.
    #[arg(long, value_delimiter = ',', value_parser = trimmed)]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub ppl_opts: PplArgs,
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    /// Fraction of each linear layer's weights to remove (default: N/M for an N:M pattern, else 0.5).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// unstructured, or N:M such as 2:4 and 4:8.
    #[arg(long, default_value = "unstructured")]
    pub pattern: String,
    /// Sparsity per block: uniform (every block at --sparsity), owl (outlier-weighted, OWL's
    /// paper; by the Wanda scores of the dense model, so it calibrates), or one sparsity per block
    /// (0.6,0.7,...; the run's sparsity is their mean).
    #[arg(long, default_value = "uniform")]
    pub allocation: String,
    /// OWL: a score is an outlier above M times its block's mean score (default 5, the paper's).
    #[arg(long)]
    pub owl_m: Option<f64>,
    /// OWL: block densities spread over ±lambda around the target (default 0.08, the paper's for LLaMA).
    #[arg(long)]
    pub owl_lambda: Option<f64>,
    /// Calibration data: c4, c4:<dir|repo>, wikitext2, wikitext2:<dir|repo>, or a local file.
    #[arg(long, default_value = "c4")]
    pub calib: String,
    /// Calibration samples (windows of --seqlen tokens), as the paper's 128.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Seed of the calibration draws (Python's `random`, as the official code seeds it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration samples per forward pass (results do not depend on it beyond float tolerance).
    #[arg(long, default_value_t = 8)]
    pub calib_batch_size: usize,
    /// Evaluations after pruning: perplexity corpora (as `eval --ppl`) and zero-shot task names.
    #[arg(long, value_delimiter = ',', value_parser = trimmed)]
    pub eval: Vec<String>,
    #[command(flatten)]
    pub ppl_opts: PplArgs,
    /// Write the pruned model as a Hugging Face checkpoint into this directory.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// The method and its options, every flag's choices and help from the method registry.
#[derive(Args)]
pub struct MethodArgs {
    #[arg(long, required_unless_present = "metric", conflicts_with = "metric", help = registry::help())]
    pub method: Option<String>,
    /// A metric expression instead of --method, over W, X, Hdiag, Hinv: e.g. "abs(W) * X^a"
    /// (README, "Try your own metric").
    #[arg(long)]
    pub metric: Option<String>,
    /// A method's option (`--method ria --param a=0.25`) or an expression parameter, NAME=VALUE; repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, f64)>,
    /// Comparison group for methods that only zero weights (not SparseGPT's update): per-output,
    /// per-input, per-layer, per-input-128, per-output-128 (default: the metric's own).
    #[arg(long, value_parser = |s: &str| Group::parse(s).map_err(|e| e.to_string()))]
    pub group: Option<Group>,
    /// The Wanda variant (alpha search over each row's cumulative score).
    #[arg(long)]
    pub use_variant: bool,
}

impl MethodArgs {
    /// The method's name (an expression is named by itself) and its options.
    fn spec(&self) -> Result<(String, MethodOptions)> {
        let mut params = Params::new();
        for (name, value) in &self.params {
            if params.insert(name.clone(), *value).is_some() {
                bail!("--param {name} is given twice; give each parameter once");
            }
        }
        let name = self.method.clone().or_else(|| self.metric.clone()).unwrap_or_default();
        let options = MethodOptions {
            metric: self.metric.clone(),
            params,
            group: self.group,
            use_variant: self.use_variant,
        };
        Ok((name, options))
    }
}

fn parse_param(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE (e.g. a=0.5)"))?;
    let value = value
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("`{s}`: `{value}` is not a number"))?;
    Ok((name.trim().to_string(), value))
}

/// List items as written after a comma and a space (`--ppl "wikitext2, c4"`).
fn trimmed(item: &str) -> Result<String, std::convert::Infallible> {
    Ok(item.trim().to_string())
}

pub fn run(cli: Cli) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    let hub = Hub::new(cli.hub_mirror);
    let needs_hub = !matches!(
        cli.command,
        Command::Report(_) | Command::Status(_) | Command::Kernels(_) | Command::Compare(_)
    );
    if let Some(m) = hub.mirror.as_ref().filter(|m| needs_hub && !m.is_dir()) {
        bail!(
            "hub mirror {}: no such directory (from --hub-mirror or REPRO_HUB_MIRROR; an empty value means none)",
            m.display()
        );
    }
    match cli.command {
        Command::Eval(args) => eval(&hub, args),
        Command::Prune(args) => prune(&hub, args),
        Command::Run(args) => sweep::run(&hub, &args),
        Command::Report(args) => report::report(&args.run_dir).map(|_| ()),
        Command::Slurm(args) => sweep::slurm::slurm(&hub, &args),
        Command::Status(args) => sweep::status::status(&args),
        Command::Kernels(args) => crate::kernels::main(&args.device, args.small, args.json),
        Command::Compare(args) => crate::eval::compare::main(&args),
    }
}

impl ModelArgs {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            seqlen: self.seqlen,
            streaming: self.stream,
            sparse_kernels: self.sparse_kernels,
            memory: crate::memory::MemoryOptions {
                max_memory: self.max_memory,
                scratch: self.scratch.clone(),
            },
        }
    }
    fn observer(&self) -> &'static dyn Observer {
        if self.json {
            &Quiet
        } else {
            &PrintLines
        }
    }
}

impl PplArgs {
    /// The evaluations `names` with these options; an option that none of them uses is refused
    /// rather than silently ignored.
    fn spec(&self, names: Vec<String>) -> Result<EvalSpec> {
        let tasks = names.iter().filter(|n| ALL_TASKS.contains(&n.as_str())).count();
        for (flag, given) in [("--limit", self.limit.is_some()), ("--samples", self.samples.is_some())] {
            if given && tasks == 0 {
                bail!("{flag} applies to zero-shot tasks, and none is asked for; name some (--tasks, or in --eval)");
            }
        }
        if self.max_windows.is_some() && tasks == names.len() {
            bail!(
                "--max-windows applies to perplexity corpora, and none is asked for; name some (--ppl, or in --eval)"
            );
        }
        Ok(EvalSpec {
            names,
            batch_size: self.batch_size,
            max_windows: self.max_windows,
            limit: self.limit,
            scored: Default::default(),
        })
    }
}

/// `--samples`: created before any model work, so a path that cannot be written fails at once
/// rather than after the evaluation.
struct SamplesFile(Option<(PathBuf, std::fs::File)>);

impl SamplesFile {
    fn create(path: Option<&Path>) -> Result<Self> {
        let file = path
            .map(|p| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::File::create(p))
                    .map(|f| (p.to_path_buf(), f))
                    .with_context(|| format!("--samples {}: cannot create the file", p.display()))
            })
            .transpose()?;
        Ok(SamplesFile(file))
    }

    fn write(self, out: &RunResult) -> Result<()> {
        let Some((path, file)) = self.0 else { return Ok(()) };
        write_samples(std::io::BufWriter::new(file), &out.zero_shot_samples)
            .with_context(|| format!("--samples {}", path.display()))
    }
}

fn print_json(out: RunResult, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}

fn eval(hub: &Hub, args: EvalArgs) -> Result<()> {
    let mut names = args.ppl.clone();
    names.extend(args.tasks.iter().cloned());
    if names.is_empty() {
        names.push("wikitext2".into());
    }
    for t in &args.tasks {
        task(t)?;
    }
    if let Some(t) = args.ppl.iter().find(|p| ALL_TASKS.contains(&p.as_str())) {
        bail!("--ppl {t}: `{t}` is a zero-shot task; pass it with --tasks");
    }
    let eval = args.ppl_opts.spec(names)?;
    if args.model.plan {
        return print_plan(hub, &args.model, None);
    }
    let samples = SamplesFile::create(args.ppl_opts.samples.as_deref())?;
    let out = run_job(hub, &args.model.spec(), None, &eval, None, None, args.model.observer())?;
    samples.write(&out)?;
    print_json(out, args.model.json)
}

fn prune(hub: &Hub, args: PruneArgs) -> Result<()> {
    let pattern = Pattern::parse(&args.pattern)?;
    let (method, options) = args.method.spec()?;
    let allocation = Allocation::parse(&args.allocation, args.owl_m, args.owl_lambda)?;
    let sparsity = match (args.sparsity, allocation.list_target()) {
        (Some(s), _) => s,
        (None, Some(mean)) => mean,
        (None, None) => pattern.default_sparsity(),
    };
    let spec = PruneSpec {
        method,
        options,
        sparsity,
        pattern,
        allocation,
        calib: args.calib.clone(),
        nsamples: args.nsamples,
        seed: args.seed,
        calib_batch_size: args.calib_batch_size,
    };
    let eval = args.ppl_opts.spec(args.eval.clone())?;
    if args.model.plan {
        return print_plan(hub, &args.model, Some(&spec));
    }
    let samples = SamplesFile::create(args.ppl_opts.samples.as_deref())?;
    let out = run_job(
        hub,
        &args.model.spec(),
        Some(&spec),
        &eval,
        args.save.as_deref(),
        None,
        args.model.observer(),
    )?;
    samples.write(&out)?;
    print_json(out, args.model.json)
}

/// `--plan`: the memory plan on stdout (one JSON object with `--json`).
fn print_plan(hub: &Hub, model: &ModelArgs, prune: Option<&PruneSpec>) -> Result<()> {
    let plan = crate::pipeline::plan_only(hub, &model.spec(), prune)?;
    if model.json {
        println!("{}", serde_json::to_string(&plan.numbers())?);
    } else {
        for line in plan.lines() {
            println!("{line}");
        }
    }
    Ok(())
}
