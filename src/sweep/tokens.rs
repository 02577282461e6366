//! How many tokens a run's evaluations put through the model: each perplexity corpus's length
//! and each zero-shot request's, counted with the model's tokenizer once per tokenizer and data
//! file and cached in the user's cache directory (a dry run writes nothing into a sweep's output).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use crate::calib::CalibSource;
use crate::data::PplCorpus;
use crate::eval::tasks::{task, ALL_TASKS};
use crate::eval::zeroshot::TaskDocs;
use crate::hub::{Hub, RepoKind};
use crate::sweep::identity::hex;
use crate::tokenizer::Tokenizer;

/// Characters per token assumed when the model's tokenizer is not at hand (LLaMA's gives 3.8 on WikiText-2).
const CHARS_PER_TOKEN: usize = 4;

/// One evaluation's token counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Counted {
    /// A perplexity corpus: tokens of the whole corpus (C4 before its 256 x seqlen cut), and the
    /// memory that reading and encoding it took here (the tokenizer's buffers dwarf the ids).
    Corpus { tokens: u64, encode_bytes: u64 },
    /// A zero-shot task: per document, the tokens of each request (context + continuation); per
    /// document, [tokens of its packed units (each distinct context once, then every
    /// continuation), continuation tokens scored]; and the seconds one request took to encode
    /// here (a run encodes each twice).
    Task {
        requests: Vec<Vec<u32>>,
        units: Vec<[u32; 2]>,
        encode_seconds: f64,
    },
    /// A calibration source (`calibration:SPEC`): the memory that reading it took here (a run
    /// reads the whole file, all of C4's first shard, to draw its samples).
    Calibration { read_bytes: u64 },
}

/// The name under which a calibration source is counted.
pub fn calibration_name(spec: &str) -> String {
    format!("calibration:{spec}")
}

/// The counts of every evaluation a model's runs name; the names that could not be counted say why.
#[derive(Clone, Debug, Default)]
pub struct EvalTokens {
    pub counted: BTreeMap<String, Counted>,
    pub missing: BTreeMap<String, String>,
    /// Counted as characters / 4: the model's tokenizer was not available.
    pub approximate: bool,
}

/// The model's tokenizer and an id for its content (models sharing one share its counts), when
/// its files are on disk: a dry run downloads nothing but config.json.
pub fn tokenizer_of(hub: &Hub, model: &str, config: &serde_json::Value) -> Option<(Tokenizer, String)> {
    let repo = hub.repo(model, RepoKind::Model);
    if !repo.has_local("tokenizer.json") {
        return None;
    }
    let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or("llama");
    let bos = config.get("bos_token_id").and_then(|v| v.as_u64()).map(|b| b as u32);
    let tokenizer = Tokenizer::from_repo(&repo, model_type, bos).ok()?;
    let mut h = Sha256::new();
    for file in ["tokenizer.json", "tokenizer_config.json"]
        .into_iter()
        .filter(|f| repo.has_local(f))
    {
        h.update(std::fs::read(repo.get(file).ok()?).ok()?);
    }
    Some((tokenizer, hex(&h.finalize())))
}

/// Counts `names` (perplexity corpora and task names) with `tokenizer` (characters / 4 without one).
pub fn count(hub: &Hub, tokenizer: Option<&Tokenizer>, tokenizer_id: &str, names: &[String]) -> EvalTokens {
    let mut out = EvalTokens {
        approximate: tokenizer.is_none(),
        ..Default::default()
    };
    for name in names {
        if out.counted.contains_key(name) || out.missing.contains_key(name) {
            continue;
        }
        match count_one(hub, tokenizer, tokenizer_id, name) {
            Ok(c) => {
                out.counted.insert(name.clone(), c);
            }
            Err(e) => {
                out.missing.insert(name.clone(), format!("{e:#}"));
            }
        }
    }
    out
}

fn count_one(hub: &Hub, tokenizer: Option<&Tokenizer>, tokenizer_id: &str, name: &str) -> Result<Counted> {
    let is_task = ALL_TASKS.contains(&name);
    let calibration = name.strip_prefix("calibration:").map(CalibSource::parse);
    let files = match (&calibration, is_task) {
        (Some(source), _) => vec![local_calibration(hub, source)?],
        (None, true) => {
            let t = task(name)?;
            vec![hub.repo(t.hub_id, RepoKind::Dataset).get(t.file)?]
        }
        (None, false) => PplCorpus::parse(name).locate(hub)?,
    };
    let cache = cache_path(tokenizer_id, name, &files);
    if let Some(hit) = cache
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return Ok(hit);
    }
    let encode = |text: &str| -> Result<usize> {
        match tokenizer {
            Some(t) => Ok(t.encode(text)?.len()),
            None => Ok(text.len() / CHARS_PER_TOKEN + 1),
        }
    };
    let counted = if let Some(source) = calibration {
        let Some(tokenizer) = tokenizer else {
            anyhow::bail!("the model's tokenizer is not at hand")
        };
        crate::resources::reset_peak_rss();
        let before = crate::resources::rss_bytes().unwrap_or(0);
        source.windows(hub, tokenizer, 1, 2, 0)?;
        Counted::Calibration {
            read_bytes: crate::resources::peak_rss_bytes().unwrap_or(0).saturating_sub(before),
        }
    } else if is_task {
        let docs = TaskDocs::load(hub, name, None)?;
        let mut encoding = std::time::Duration::ZERO;
        let mut n = 0usize;
        let (mut requests, mut units) = (Vec::new(), Vec::new());
        for d in &docs.docs {
            let doc_requests = d.requests();
            let mut contexts: HashMap<&str, u32> = HashMap::new();
            let (mut lens, mut unit) = (Vec::new(), [0u32; 2]);
            for (ctx, cont) in &doc_requests {
                let start = Instant::now();
                let whole = encode(&format!("{ctx}{cont}"))? as u32;
                encoding += start.elapsed();
                n += 1;
                let ctx_len = match contexts.get(ctx.as_str()) {
                    Some(&len) => len,
                    None => {
                        let len = (encode(ctx)? as u32).min(whole);
                        unit[0] += len;
                        *contexts.entry(ctx.as_str()).or_insert(len)
                    }
                };
                unit[0] += whole - ctx_len;
                unit[1] += whole - ctx_len;
                lens.push(whole);
            }
            requests.push(lens);
            units.push(unit);
        }
        Counted::Task {
            requests,
            units,
            encode_seconds: encoding.as_secs_f64() / n.max(1) as f64,
        }
    } else {
        crate::resources::reset_peak_rss();
        let before = crate::resources::rss_bytes().unwrap_or(0);
        let ids = PplCorpus::parse(name).token_ids(hub, usize::MAX / 512, &|t| encode(t).map(|n| vec![0i64; n]))?;
        let encode_bytes = crate::resources::peak_rss_bytes().unwrap_or(0).saturating_sub(before);
        Counted::Corpus {
            tokens: ids.len() as u64,
            encode_bytes,
        }
    };
    if let Some(file) = cache {
        let written = std::fs::create_dir_all(file.parent().unwrap_or(&file))
            .context("creating the token-count cache")
            .and_then(|_| crate::sweep::store::write_atomic(&file, &serde_json::to_vec(&counted)?));
        if let Err(e) = written {
            eprintln!("warning: token counts not cached ({e:#})");
        }
    }
    Ok(counted)
}

/// A calibration source's file when it is on disk: a dry run does not download C4's shard.
fn local_calibration(hub: &Hub, source: &CalibSource) -> Result<PathBuf> {
    if let CalibSource::C4 { repo } | CalibSource::Wikitext2 { repo } = source {
        let r = hub.repo(repo, RepoKind::Dataset);
        anyhow::ensure!(
            r.local_dir().is_some() || r.cached_revision().is_some(),
            "dataset `{repo}` is not on disk"
        );
    }
    source.locate(hub)
}

/// A cache entry per tokenizer, evaluation and data files (by path, size and mtime).
fn cache_path(tokenizer_id: &str, name: &str, files: &[PathBuf]) -> Option<PathBuf> {
    let mut h = Sha256::new();
    h.update(format!("{tokenizer_id}\0{name}\0"));
    for f in files {
        let meta = std::fs::metadata(f).ok()?;
        let mtime = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        h.update(format!("{}\0{}\0{mtime}\0", f.display(), meta.len()));
    }
    Some(
        super::probe::user_cache_dir()?
            .join("tokens")
            .join(format!("{}.json", &hex(&h.finalize())[..24])),
    )
}
