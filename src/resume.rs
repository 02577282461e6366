//! The evaluation parts a run has finished (each perplexity corpus, each zero-shot task, and the
//! finished slices of a task under way), kept in a file as each one ends, so that a run stopped
//! part way (a SLURM time limit, preemption, a failure in a later task) loads and prunes again
//! and evaluates only what is missing. On a 7B model a task can take as long as the pruning
//! itself; losing five finished tasks to a time limit in the sixth would be most of the run.
//!
//! A part is reused only when the weights it was measured on are, bit for bit, the weights of
//! the new attempt: a sha256 over every block's linear layers after pruning. Pruning is
//! deterministic (the golden tests hold it to the official code's masks), but a rerun on another
//! GPU may round differently, and a number from other weights must never enter a record.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::eval::packing::TokenCounts;
use crate::eval::tasks::TaskResult;
use crate::eval::zeroshot::{Sample, ScoredDocs};
use crate::model::CausalLm;
use crate::run_result::PplDetails;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PplPart {
    pub ppl: f64,
    pub details: PplDetails,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskPart {
    pub result: TaskResult,
    pub tokens: TokenCounts,
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// The repro that measured the parts: a record holds one version's numbers only.
    repro_version: String,
    /// sha256 of the weights the parts were measured on (see [`weights_digest`]).
    weights: String,
    ppl: BTreeMap<String, PplPart>,
    zero_shot: BTreeMap<String, TaskPart>,
    /// Tasks stopped part way: the documents of their finished slices.
    #[serde(default)]
    zero_shot_started: BTreeMap<String, ScoredDocs>,
}

/// A run's finished parts: read from `path` when an earlier attempt left them, and written there
/// (atomically) as each new one ends. Without a path (`repro prune`/`eval`) nothing is kept.
pub struct Parts {
    path: Option<PathBuf>,
    stored: Stored,
    /// Names of the parts that came from the file, in the order they were taken, and the
    /// seconds they took then.
    resumed: Vec<String>,
    resumed_seconds: f64,
    /// Why parts could not be kept (the first failure): the run goes on without the safety copy.
    unkept: Option<String>,
}

impl Parts {
    pub fn not_kept() -> Parts {
        Parts {
            path: None,
            stored: Stored::default(),
            resumed: Vec::new(),
            resumed_seconds: 0.0,
            unkept: None,
        }
    }

    /// The parts at `path` measured on weights `digest`. Parts of other weights, or a file that
    /// does not read, are set aside (the file is rewritten by the first new part); the returned
    /// warning says why.
    pub fn open(path: PathBuf, digest: String) -> (Parts, Option<String>) {
        let read = || -> Result<Option<Stored>> {
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path).context("cannot be read")?;
            let stored = serde_json::from_str(&text).context("not a run's finished parts")?;
            Ok(Some(stored))
        };
        let fresh = Stored {
            repro_version: env!("CARGO_PKG_VERSION").to_string(),
            weights: digest,
            ..Stored::default()
        };
        let earlier = "an earlier attempt's finished parts were measured";
        let (stored, why) = match read() {
            Ok(None) => (fresh, None),
            Ok(Some(s)) if s.repro_version != fresh.repro_version => {
                let why = format!(
                    "{earlier} by repro {}, this is {}",
                    s.repro_version, fresh.repro_version
                );
                (fresh, Some(why))
            }
            Ok(Some(s)) if s.weights != fresh.weights => (
                fresh,
                Some(format!(
                    "{earlier} on other weights (pruning came out differently this time)"
                )),
            ),
            Ok(Some(s)) => (s, None),
            Err(e) => (fresh, Some(format!("{e:#}"))),
        };
        let warning = why.map(|why| format!("{}: {why}; everything is evaluated again", path.display()));
        let parts = Parts {
            path: Some(path),
            stored,
            resumed: Vec::new(),
            resumed_seconds: 0.0,
            unkept: None,
        };
        (parts, warning)
    }

    /// Corpus `label`'s perplexity: an earlier attempt's, or `evaluate`'s, kept at once; the flag
    /// says whether it is an earlier attempt's.
    pub fn ppl(&mut self, label: &str, evaluate: impl FnOnce() -> Result<PplPart>) -> Result<(PplPart, bool)> {
        self.part(label, |s| &mut s.ppl, |p| p.seconds, |_| evaluate())
    }

    /// Task `name`'s outcome, as [`Parts::ppl`]. A task an earlier attempt stopped inside goes on
    /// from the documents it scored: `evaluate` gets them, and a callback that keeps each new
    /// slice at once.
    pub fn task(
        &mut self,
        name: &str,
        evaluate: impl FnOnce(ScoredDocs, &mut dyn FnMut(&ScoredDocs)) -> Result<TaskPart>,
    ) -> Result<(TaskPart, bool)> {
        self.part(
            name,
            |s| &mut s.zero_shot,
            |p| p.seconds,
            |parts| {
                let earlier = parts.stored.zero_shot_started.get(name).cloned().unwrap_or_default();
                if earlier.docs > 0 {
                    parts.resumed.push(format!("{name} (first {} documents)", earlier.docs));
                    parts.resumed_seconds += earlier.seconds;
                }
                let part = evaluate(earlier, &mut |scored| {
                    parts.keep(|s| s.zero_shot_started.insert(name.to_string(), scored.clone()));
                })?;
                parts.stored.zero_shot_started.remove(name);
                Ok(part)
            },
        )
    }

    /// Part `name` of the kind `kept` picks: taken when an earlier attempt kept it, else
    /// evaluated and, with a file, written there before anything else runs.
    fn part<P: Clone + Serialize>(
        &mut self,
        name: &str,
        kept: fn(&mut Stored) -> &mut BTreeMap<String, P>,
        seconds: fn(&P) -> f64,
        evaluate: impl FnOnce(&mut Parts) -> Result<P>,
    ) -> Result<(P, bool)> {
        if let Some(part) = kept(&mut self.stored).get(name).cloned() {
            self.resumed.push(name.to_string());
            self.resumed_seconds += seconds(&part);
            return Ok((part, true));
        }
        let part = evaluate(self)?;
        self.keep(|s| kept(s).insert(name.to_string(), part.clone()));
        Ok((part, false))
    }

    /// With a file, applies `change` to what is kept and writes it there; without one, does
    /// nothing (nothing is held for a file that is never written). A file that cannot be
    /// written (a full disk, a quota) costs only the safety copy, never the part: the run goes
    /// on, and [`Parts::unkept`] says why.
    fn keep<T>(&mut self, change: impl FnOnce(&mut Stored) -> T) {
        let Some(path) = &self.path else { return };
        change(&mut self.stored);
        let written = serde_json::to_vec(&self.stored)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| crate::sweep::store::write_atomic(path, &bytes));
        if let (Err(e), None) = (written, &self.unkept) {
            let why = format!(
                "{}: cannot keep the finished parts ({}); the run goes on, but a stopped attempt would evaluate them again",
                path.display(),
                crate::error_chain(&e)
            );
            eprintln!("warning: {why}");
            self.unkept = Some(why);
        }
    }

    /// Why the finished parts could not be kept, if they could not.
    pub fn unkept(&self) -> Option<&str> {
        self.unkept.as_deref()
    }

    /// The parts taken from an earlier attempt.
    pub fn resumed(&self) -> &[String] {
        &self.resumed
    }

    /// What the parts taken from an earlier attempt took there.
    pub fn resumed_seconds(&self) -> f64 {
        self.resumed_seconds
    }
}

/// What an earlier attempt kept at `path` (nothing when there is no readable file there); named
/// in JSON as `repro status --json` shows it.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Kept {
    /// The finished parts, by name.
    #[serde(rename = "finished_parts", skip_serializing_if = "Vec::is_empty")]
    pub finished: Vec<String>,
    /// Tasks stopped part way, with how many of their documents are scored.
    #[serde(rename = "started_tasks", skip_serializing_if = "BTreeMap::is_empty")]
    pub started: BTreeMap<String, usize>,
}

impl Kept {
    pub fn read(path: &std::path::Path) -> Kept {
        let stored: Option<Stored> = std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        stored.map_or(Kept::default(), |s| Kept {
            finished: s.ppl.into_keys().chain(s.zero_shot.into_keys()).collect(),
            started: s
                .zero_shot_started
                .into_iter()
                .map(|(name, d)| (name, d.docs))
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.finished.is_empty() && self.started.is_empty()
    }

    /// "wikitext2, rte finished; hellaswag's first 3000 documents scored".
    pub fn describe(&self) -> String {
        let finished = (!self.finished.is_empty()).then(|| format!("{} finished", self.finished.join(", ")));
        let started = self
            .started
            .iter()
            .map(|(name, docs)| format!("{name}'s first {docs} documents scored"));
        finished.into_iter().chain(started).collect::<Vec<_>>().join("; ")
    }
}

/// sha256 over every block's linear layers (name, shape, dtype and bytes), in order: all that
/// pruning changes. The rest of the model is the checkpoint's, which the run id identifies.
pub fn weights_digest(model: &dyn CausalLm) -> Result<String> {
    let mut h = Sha256::new();
    let stack = model.stack();
    for i in 0..stack.n_blocks() {
        let block = stack.block(i)?;
        for (name, linear) in block.linears() {
            let w = &linear.weight;
            h.update(format!("{i}.{name} {:?} {:?};", w.size(), w.kind()).as_bytes());
            crate::checkpoint::with_bytes(w, |bytes| {
                h.update(bytes);
                Ok(())
            })?;
        }
    }
    Ok(crate::sweep::identity::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load_fixture, Streaming};

    fn part(seconds: f64) -> PplPart {
        PplPart {
            ppl: 12.345678901234567,
            details: PplDetails::default(),
            seconds,
        }
    }

    /// Parts come back exactly (f64 through JSON) for the same weights and repro, and not for others.
    #[test]
    fn parts_are_taken_only_for_the_weights_they_were_measured_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial/abc.json");
        let kept = || -> Result<PplPart> { panic!("an earlier attempt's part was evaluated again") };
        let (mut parts, warning) = Parts::open(path.clone(), "w1".into());
        assert!(warning.is_none());
        assert!(!parts.ppl("wikitext2", || Ok(part(1.5))).unwrap().1);

        let (mut again, warning) = Parts::open(path.clone(), "w1".into());
        assert!(warning.is_none());
        let (taken, earlier) = again.ppl("wikitext2", kept).unwrap();
        assert!(earlier && taken.ppl == 12.345678901234567);
        let e = again.task("rte", |_, _| anyhow::bail!("rte evaluated")).unwrap_err();
        assert_eq!(e.to_string(), "rte evaluated");
        assert_eq!(again.resumed(), ["wikitext2"]);
        assert_eq!(again.resumed_seconds(), 1.5);

        let (mut other, warning) = Parts::open(path.clone(), "w2".into());
        assert!(warning.unwrap().contains("other weights"));
        assert!(other.resumed().is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!other.ppl("wikitext2", || Ok(part(2.0))).unwrap().1);
        std::fs::write(&path, text).unwrap(); // back to the w1 file

        let text = std::fs::read_to_string(&path).unwrap();
        let version = format!("\"repro_version\":\"{}\"", env!("CARGO_PKG_VERSION"));
        std::fs::write(&path, text.replace(&version, "\"repro_version\":\"0.0.1\"")).unwrap();
        let (older, warning) = Parts::open(path.clone(), "w1".into());
        let warning = warning.unwrap();
        assert!(
            warning.starts_with(&path.display().to_string()) && warning.contains("by repro 0.0.1"),
            "{warning}"
        );
        assert!(older.stored.ppl.is_empty());

        std::fs::write(&path, "{truncated").unwrap();
        let (_, warning) = Parts::open(path, "w1".into());
        assert!(warning.unwrap().contains("not a run's finished parts"));
    }

    /// A task stopped part way keeps its scored slices: the next attempt's evaluation starts
    /// from them and the run lists them as resumed; the finished task then replaces them.
    #[test]
    fn a_stopped_task_goes_on_from_its_kept_slices() {
        use crate::eval::loglik::LogLik;
        use crate::eval::tasks::TaskResult;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial/abc.json");
        let scored = |docs| ScoredDocs {
            docs,
            loglikelihoods: vec![
                LogLik {
                    logprob: -1.2345678901234567,
                    is_greedy: true
                };
                2 * docs
            ],
            tokens: TokenCounts {
                computed: 7 * docs,
                ..TokenCounts::default()
            },
            seconds: 3.0,
        };
        let (mut first, _) = Parts::open(path.clone(), "w1".into());
        let e = first
            .task("winogrande", |earlier, keep| {
                assert_eq!(earlier, ScoredDocs::default());
                keep(&scored(1000));
                anyhow::bail!("time limit")
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "time limit");
        let kept = Kept::read(&path);
        assert!(kept.finished.is_empty(), "a started task is not a finished part");
        assert_eq!(kept.started, BTreeMap::from([("winogrande".to_string(), 1000)]));
        assert_eq!(kept.describe(), "winogrande's first 1000 documents scored");

        let done = TaskPart {
            result: TaskResult {
                n: 1267,
                acc: 0.5,
                acc_stderr: None,
                acc_norm: None,
                acc_norm_stderr: None,
            },
            tokens: TokenCounts::default(),
            samples: Vec::new(),
            seconds: 4.5,
        };
        let (mut second, _) = Parts::open(path.clone(), "w1".into());
        let (_, earlier) = second
            .task("winogrande", |earlier, _| {
                assert_eq!(earlier, scored(1000), "exactly what was kept");
                Ok(done.clone())
            })
            .unwrap();
        assert!(!earlier);
        assert_eq!(second.resumed(), ["winogrande (first 1000 documents)"]);
        assert_eq!(second.resumed_seconds(), 3.0);
        let stored: Stored = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(stored.zero_shot_started.is_empty());
        assert_eq!(
            Kept::read(&path),
            Kept {
                finished: vec!["winogrande".into()],
                started: BTreeMap::new()
            }
        );

        let (mut third, _) = Parts::open(path, "w1".into());
        let (part, earlier) = third.task("winogrande", |_, _| panic!("evaluated again")).unwrap();
        assert!(earlier && part.seconds == 4.5);
    }

    /// A parts file that cannot be written loses the safety copy only: every part is still
    /// returned, and one warning says why.
    #[test]
    fn a_file_that_cannot_be_written_costs_only_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("partial");
        std::fs::write(&blocker, "a file where the directory should be").unwrap();
        let path = blocker.join("abc.json");
        let (mut parts, warning) = Parts::open(path.clone(), "w1".into());
        assert!(warning.is_none());
        let (p, earlier) = parts.ppl("wikitext2", || Ok(part(1.5))).unwrap();
        assert!(!earlier && p.ppl == 12.345678901234567);
        let why = parts.unkept().unwrap().to_string();
        assert!(
            why.starts_with(&path.display().to_string()) && why.contains("cannot keep"),
            "{why}"
        );
        assert!(!parts.ppl("c4", || Ok(part(2.0))).unwrap().1);
        assert_eq!(parts.unkept(), Some(why.as_str()), "the first failure is the one kept");
        assert!(Parts::not_kept().unkept().is_none());
    }

    /// The digest sees one changed weight, and does not depend on where the blocks live.
    #[test]
    fn the_digest_changes_with_any_weight_and_not_with_streaming() {
        let _g = tch::no_grad_guard();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/models/llama-tiny-random");
        let mut model = load_fixture(&dir, Streaming::Off);
        let before = weights_digest(model.as_ref()).unwrap();
        assert_eq!(
            before,
            weights_digest(load_fixture(&dir, Streaming::On).as_ref()).unwrap()
        );
        let mut block = model.stack_mut().take_block(1).unwrap();
        let _ = block.linears_mut()[2].1.weight.get(0).get(0).fill_(0.0);
        model.stack_mut().put_back(1, block).unwrap();
        assert_ne!(before, weights_digest(model.as_ref()).unwrap());
    }
}
