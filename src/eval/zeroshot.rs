//! Zero-shot accuracy on lm-eval tasks: documents from the task's hub dataset, loglikelihood
//! requests scored by the model, metrics aggregated as lm-eval does.

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::loglik::loglikelihoods;
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
    evaluate_docs(model, tok, &TaskDocs::load(hub, name, limit)?, batch_size)
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

/// Scores every document's choices with the model and aggregates lm-eval's metrics.
pub fn evaluate_docs(model: &dyn CausalLm, tok: &Tokenizer, td: &TaskDocs, batch_size: usize) -> Result<TaskEval> {
    let (t, docs, name) = (&td.task, &td.docs, td.task.name);
    let requests: Vec<(String, String)> = docs.iter().flat_map(|d| d.requests()).collect();
    let bar = crate::progress::bar(requests.len() as u64, name);
    let max_length = model.info().max_position_embeddings as usize;
    let (lls, tokens) = loglikelihoods(model, tok, &requests, max_length, batch_size, &bar)?;
    bar.finish_and_clear();
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
        let k = d.requests().len();
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
        tokens,
    })
}
