//! Zero-shot accuracy on lm-eval tasks: documents from the task's hub dataset, loglikelihood
//! requests scored by the model, metrics aggregated as lm-eval does.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

use super::loglik::{loglikelihoods, LogLik};
use super::packing::TokenCounts;
use super::tasks::{aggregate, argmax, load_docs, task, Doc, Task, TaskResult};
use super::NON_FINITE_HINT;
use crate::hub::{Hub, RepoKind};
use crate::model::CausalLm;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct TaskEval {
    pub task: String,
    pub result: TaskResult,
    pub samples: Vec<Sample>,
    pub tokens: TokenCounts,
    /// What scoring took, earlier attempts' slices included.
    pub seconds: f64,
}

/// One document's outcome, for per-item comparisons (`--samples`, one JSON line each): between
/// pruning methods, devices, or against lm-eval's own per-document log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub task: String,
    /// The document's index in the task's split.
    pub doc: usize,
    /// Each choice's summed log-probability, in the task's choice order.
    pub loglikelihoods: Vec<f64>,
    /// The argmax of `loglikelihoods` (the first, on ties, as lm-eval's argmax).
    pub prediction: usize,
    pub gold: usize,
    pub acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
}

/// Writes `samples` as JSON lines.
pub fn write_samples(mut w: impl std::io::Write, samples: &[Sample]) -> Result<()> {
    for s in samples {
        serde_json::to_writer(&mut w, s)?;
        w.write_all(b"\n")?;
    }
    Ok(w.flush()?)
}

/// Evaluates `name` on its first `limit` documents (all when `None`).
pub fn evaluate_task(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    hub: &Hub,
    name: &str,
    limit: Option<usize>,
    batch_size: usize,
) -> Result<TaskEval> {
    let td = TaskDocs::load(hub, name, limit)?;
    evaluate_docs(model, tok, &td, batch_size, ScoredDocs::default(), &mut |_| ())
}

/// A task with its documents, read (and checked) before any model work.
pub struct TaskDocs {
    pub task: Task,
    pub docs: Vec<Doc>,
}

impl TaskDocs {
    /// The first `limit` documents of task `name` (all when `None`); errors name the file.
    pub fn load(hub: &Hub, name: &str, limit: Option<usize>) -> Result<TaskDocs> {
        let task = task(name)?;
        let path = hub.repo(task.hub_id, RepoKind::Dataset).get(task.file)?;
        let mut docs = load_docs(&task, &path).with_context(|| format!("task {name}: {}", path.display()))?;
        ensure!(!docs.is_empty(), "task {name}: {} holds no documents", path.display());
        if let Some(l) = limit {
            docs.truncate(l);
        }
        Ok(TaskDocs { task, docs })
    }
}

/// Documents scored between two calls of `evaluate_docs`'s `keep`: the unit an attempt stopped
/// inside a task resumes from. On a 70B model HellaSwag alone can outlast a job's time limit, and
/// a task that must restart whole would never finish there. Slices are always cut (resumed or
/// not) so a run's requests are packed the same way whatever stopped it; so many documents leave
/// packing and shared prefixes nearly all they find in a whole task.
pub const SLICE_DOCS: usize = 1000;

/// A task's first `docs` documents, scored: each request's log-likelihood in order, the tokens
/// computed and the seconds it took, earlier attempts included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoredDocs {
    pub docs: usize,
    pub loglikelihoods: Vec<LogLik>,
    pub tokens: TokenCounts,
    pub seconds: f64,
}

/// Scores every document's choices with the model and aggregates lm-eval's metrics. Scoring
/// starts after the documents `earlier` holds (an earlier attempt's, or none) and goes in slices
/// of [`SLICE_DOCS`]; `keep` gets the scored documents after each slice but the last.
pub fn evaluate_docs(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    td: &TaskDocs,
    batch_size: usize,
    earlier: ScoredDocs,
    keep: &mut dyn FnMut(&ScoredDocs),
) -> Result<TaskEval> {
    let (t, docs, name) = (&td.task, &td.docs, td.task.name);
    let requests: Vec<Vec<(String, String)>> = docs.iter().map(|d| d.requests()).collect();
    let total: usize = requests.iter().map(Vec::len).sum();
    let requests_before = |n: usize| requests[..n].iter().map(Vec::len).sum::<usize>();
    // Parts are only taken for the same weights, repro and run, so these always agree; a file
    // edited by hand starts the task over rather than scoring the wrong documents.
    let fits = earlier.docs <= docs.len() && earlier.loglikelihoods.len() == requests_before(earlier.docs);
    let mut scored = if fits { earlier } else { ScoredDocs::default() };
    let bar = crate::progress::bar(total as u64, name);
    bar.set_position(scored.loglikelihoods.len() as u64);
    bar.reset_eta();
    let max_length = model.info().max_position_embeddings as usize;
    let (start, seconds_before) = (Instant::now(), scored.seconds);
    while scored.docs < docs.len() {
        let end = (scored.docs + SLICE_DOCS).min(docs.len());
        let slice = requests[scored.docs..end].concat();
        let (lls, tokens) = loglikelihoods(model, tok, &slice, max_length, batch_size, &bar)?;
        scored.loglikelihoods.extend(lls);
        scored.tokens.add(tokens);
        scored.docs = end;
        scored.seconds = seconds_before + start.elapsed().as_secs_f64();
        if end < docs.len() {
            keep(&scored);
        }
    }
    bar.finish_and_clear();
    let lls = &scored.loglikelihoods;
    let non_finite = lls.iter().filter(|l| !l.logprob.is_finite()).count();
    ensure!(
        non_finite == 0,
        "{name}: {non_finite} of {} log-likelihoods are not finite: {NON_FINITE_HINT}",
        lls.len()
    );
    let mut scores = Vec::with_capacity(docs.len());
    let mut samples = Vec::with_capacity(docs.len());
    let mut next = 0;
    for (i, d) in docs.iter().enumerate() {
        let k = requests[i].len();
        let ll: Vec<f64> = lls[next..next + k].iter().map(|l| l.logprob).collect();
        next += k;
        let score = t.score(d, &ll)?;
        samples.push(Sample {
            task: name.to_string(),
            doc: i,
            prediction: argmax(ll.iter().copied()),
            loglikelihoods: ll,
            gold: d.gold,
            acc: score.acc,
            acc_norm: score.acc_norm,
        });
        scores.push(score);
    }
    Ok(TaskEval {
        task: name.to_string(),
        result: aggregate(&scores)?,
        samples,
        tokens: scored.tokens,
        seconds: scored.seconds,
    })
}
