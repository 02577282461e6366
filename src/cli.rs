//! The `repro` command line: a thin layer over the library.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Instant;

use crate::calib::CalibSource;
use crate::data::PplCorpus;
use crate::device::{device_name, dtype_name, parse_device, parse_dtype};
use crate::eval::ppl::perplexity;
use crate::eval::tasks::{task, ALL_TASKS};
use crate::eval::zeroshot::evaluate_task;
use crate::hub::Hub;
use crate::model::{self, Loaded};
use crate::prune::mask::{Group, Pattern};
use crate::prune::{prune_model, Method};
use crate::resources::peak_rss_bytes;

#[derive(Parser)]
#[command(name = "repro", version, about = "Reproduce Wanda / SparseGPT / magnitude pruning of LLMs")]
pub struct Cli {
    /// Local hub mirror: DIR/models/<id>/... and DIR/datasets/<id>/... (default: $REPRO_HUB_MIRROR).
    #[arg(long, global = true)]
    pub hub_mirror: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Evaluate a model: perplexity on text corpora and zero-shot tasks.
    Eval(EvalArgs),
    /// Prune a model one-shot (magnitude, wanda, sparsegpt, ...), then optionally evaluate and save it.
    Prune(PruneArgs),
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
    /// Sequence length for calibration and perplexity windows (default: max_position_embeddings, as the official code).
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct PplArgs {
    /// Windows per forward pass; does not change the result beyond float tolerance.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Evaluate only the first K windows (quick checks).
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Zero-shot: only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Perplexity corpora, comma separated: wikitext2, c4, wikitext2:<dir|repo>, c4:<dir|repo>,
    /// or any text source (parquet/txt/jsonl file, directory, dataset repo id[:file]).
    #[arg(long, value_delimiter = ',')]
    pub ppl: Vec<String>,
    /// Zero-shot tasks, comma separated: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub ppl_opts: PplArgs,
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// magnitude, wanda, ria, sparsegpt, ablate_mag_seq, ablate_mag_iter, ablate_wanda_seq, ablate_wanda_iter.
    #[arg(long)]
    pub method: String,
    /// Fraction of each linear layer's weights to remove.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// unstructured, or N:M such as 2:4 and 4:8.
    #[arg(long, default_value = "unstructured")]
    pub pattern: String,
    /// Comparison group for metric methods: per-output, per-input, per-layer (default: the metric's own).
    #[arg(long)]
    pub group: Option<String>,
    /// The Wanda variant (alpha search over each row's cumulative score).
    #[arg(long)]
    pub use_variant: bool,
    /// Calibration data: c4, c4:<dir|repo>, wikitext2, wikitext2:<dir|repo>, or a local file.
    #[arg(long, default_value = "c4")]
    pub calib: String,
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration samples per forward pass (results do not depend on it beyond float tolerance).
    #[arg(long, default_value_t = 8)]
    pub calib_batch_size: usize,
    /// Evaluations after pruning: perplexity corpora (as `eval --ppl`) and zero-shot task names.
    #[arg(long, value_delimiter = ',')]
    pub eval: Vec<String>,
    #[command(flatten)]
    pub ppl_opts: PplArgs,
    /// Write the pruned model as a Hugging Face checkpoint into this directory.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    let hub = Hub::new(cli.hub_mirror);
    match cli.command {
        Command::Eval(args) => eval(&hub, args),
        Command::Prune(args) => prune(&hub, args),
    }
}

fn load(hub: &Hub, args: &ModelArgs) -> Result<(Loaded, Map<String, Value>)> {
    let device = parse_device(&args.device)?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let loaded = model::load(hub, &args.model, device, kind)?;
    let info = loaded.model.info();
    let mut out = Map::new();
    out.insert("model".into(), json!(args.model));
    out.insert("architecture".into(), json!(info.architecture));
    out.insert("device".into(), json!(device_name(device)));
    out.insert("dtype".into(), json!(dtype_name(kind)));
    out.insert("seqlen".into(), json!(seqlen(args, &loaded)));
    Ok((loaded, out))
}

fn seqlen(args: &ModelArgs, loaded: &Loaded) -> usize {
    args.seqlen.unwrap_or(loaded.model.info().max_position_embeddings as usize)
}

/// Splits evaluation names into zero-shot tasks and perplexity corpora, and runs both.
fn evaluate(hub: &Hub, loaded: &Loaded, names: &[String], seqlen: usize, opts: &PplArgs, json_out: bool, out: &mut Map<String, Value>) -> Result<()> {
    let (tasks, corpora): (Vec<String>, Vec<String>) = names.iter().cloned().partition(|n| ALL_TASKS.contains(&n.as_str()));
    if !corpora.is_empty() {
        eval_ppl(hub, loaded, &corpora, seqlen, opts, json_out, out)?;
    }
    if !tasks.is_empty() {
        eval_tasks(hub, loaded, &tasks, opts, json_out, out)?;
    }
    Ok(())
}

/// Zero-shot accuracy per task; fills `zero_shot` with lm-eval's metric names and the mean acc.
fn eval_tasks(hub: &Hub, loaded: &Loaded, tasks: &[String], opts: &PplArgs, json_out: bool, out: &mut Map<String, Value>) -> Result<()> {
    let start = Instant::now();
    let mut results = Map::new();
    let mut accs = Vec::new();
    for name in tasks {
        let r = evaluate_task(loaded.model.as_ref(), &loaded.tokenizer, hub, name, opts.limit, opts.batch_size)?.result;
        if !json_out {
            let norm = r.acc_norm.map(|a| format!(", acc_norm {:.4}", a)).unwrap_or_default();
            println!("{name:<16} acc {:.4} ± {:.4}{norm}   ({} documents)", r.acc, r.acc_stderr.unwrap_or(f64::NAN), r.n);
        }
        accs.push(r.acc);
        results.insert(name.clone(), serde_json::to_value(r)?);
    }
    if accs.len() > 1 && !json_out {
        println!("{:<16} acc {:.4}", "mean", accs.iter().sum::<f64>() / accs.len() as f64);
    }
    out.insert("zero_shot".into(), Value::Object(results));
    out.insert("zero_shot_mean_acc".into(), json!(accs.iter().sum::<f64>() / accs.len() as f64));
    out.insert("zero_shot_limit".into(), json!(opts.limit));
    out.insert("zero_shot_seconds".into(), json!(start.elapsed().as_secs_f64()));
    Ok(())
}

/// Perplexity on each corpus; prints a line each unless `json`, and fills `ppl`, `n_tokens`, `ppl_details`.
fn eval_ppl(hub: &Hub, loaded: &Loaded, specs: &[String], seqlen: usize, opts: &PplArgs, json_out: bool, out: &mut Map<String, Value>) -> Result<()> {
    let mut ppl = Map::new();
    let mut details = Map::new();
    let start = Instant::now();
    let mut tokens = 0usize;
    for spec in specs {
        let corpus = PplCorpus::parse(spec);
        let label = corpus.label();
        let ids = corpus.token_ids(hub, seqlen, &|t| loaded.tokenizer.encode(t))?;
        let r = perplexity(loaded.model.as_ref(), &ids, seqlen, opts.batch_size, opts.max_windows, &label)?;
        if !json_out {
            println!("{label:<16} ppl {:>10.4}   ({} windows x {seqlen} tokens of {})", r.ppl, r.windows, r.n_tokens);
        }
        out.entry("n_tokens").or_insert(json!(r.n_tokens));
        tokens += r.windows * seqlen;
        ppl.insert(label.clone(), json!(r.ppl));
        details.insert(label, json!({"n_tokens": r.n_tokens, "windows": r.windows, "seqlen": seqlen, "batch_size": opts.batch_size}));
    }
    let secs = start.elapsed().as_secs_f64();
    out.insert("ppl".into(), Value::Object(ppl));
    out.insert("ppl_details".into(), Value::Object(details));
    out.insert("eval_seconds".into(), json!(secs));
    out.insert("eval_tokens_per_second".into(), json!(tokens as f64 / secs.max(1e-9)));
    Ok(())
}

fn finish(mut out: Map<String, Value>, start: Instant, json_out: bool) {
    out.insert("total_seconds".into(), json!(start.elapsed().as_secs_f64()));
    out.insert("peak_rss_bytes".into(), json!(peak_rss_bytes()));
    out.insert("repro_version".into(), json!(env!("CARGO_PKG_VERSION")));
    if json_out {
        println!("{}", Value::Object(out));
    }
}

fn eval(hub: &Hub, args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let (loaded, mut out) = load(hub, &args.model)?;
    let seqlen = seqlen(&args.model, &loaded);
    let mut names = args.ppl.clone();
    names.extend(args.tasks.iter().cloned());
    if names.is_empty() {
        names.push("wikitext2".into());
    }
    for t in &args.tasks {
        task(t)?;
    }
    evaluate(hub, &loaded, &names, seqlen, &args.ppl_opts, args.model.json, &mut out)?;
    finish(out, start, args.model.json);
    Ok(())
}

fn prune(hub: &Hub, args: PruneArgs) -> Result<()> {
    let start = Instant::now();
    let pattern = Pattern::parse(&args.pattern)?;
    pattern.check_sparsity(args.sparsity)?;
    let group = args.group.as_deref().map(Group::parse).transpose()?;
    let method = Method::parse(&args.method, group, args.use_variant, pattern)?;
    let (mut loaded, mut out) = load(hub, &args.model)?;
    let seqlen = seqlen(&args.model, &loaded);
    let calib = if method.needs_calibration() {
        let source = CalibSource::parse(&args.calib);
        let (file, windows) = source.windows(hub, &loaded.tokenizer, args.nsamples, seqlen, args.seed)?;
        let flat: Vec<i64> = windows.concat();
        out.insert(
            "calibration".into(),
            json!({"source": args.calib, "file": file, "nsamples": args.nsamples, "seqlen": seqlen, "seed": args.seed}),
        );
        Some(tch::Tensor::from_slice(&flat).view([args.nsamples as i64, seqlen as i64]))
    } else {
        None
    };
    let report = prune_model(loaded.model.as_mut(), &method, args.sparsity, pattern, calib.as_ref(), args.calib_batch_size)?;
    if !args.model.json {
        println!(
            "{} {} at {}: sparsity {:.4}, prune time {:.2}s (forward passes {:.2}s)",
            args.method, pattern, args.sparsity, report.sparsity_actual, report.prune_seconds, report.forward_seconds
        );
    }
    out.insert("method".into(), json!(args.method));
    out.insert("pattern".into(), json!(pattern.to_string()));
    out.insert("group".into(), json!(args.group));
    out.insert("use_variant".into(), json!(args.use_variant));
    out.insert("sparsity_target".into(), json!(args.sparsity));
    out.insert("sparsity_actual".into(), json!(report.sparsity_actual));
    out.insert("layers".into(), json!(report.layers));
    out.insert("prune_seconds".into(), json!(report.prune_seconds));
    out.insert("calibration_forward_seconds".into(), json!(report.forward_seconds));
    if !args.eval.is_empty() {
        evaluate(hub, &loaded, &args.eval, seqlen, &args.ppl_opts, args.model.json, &mut out)?;
    }
    if let Some(dir) = &args.save {
        crate::checkpoint::save(&loaded, dir, &Value::Object(out.clone()))?;
        if !args.model.json {
            println!("saved pruned checkpoint to {}", dir.display());
        }
        out.insert("saved_to".into(), json!(dir));
    }
    finish(out, start, args.model.json);
    Ok(())
}
