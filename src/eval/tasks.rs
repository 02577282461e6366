//! The seven zero-shot tasks of the Wanda paper, defined as EleutherAI lm-evaluation-harness
//! 0.4.x defines them (`lm_eval/tasks/*` YAMLs and utils): which parquet file holds the
//! documents, how each document becomes loglikelihood requests, and how the answers are scored.
//!
//! Prompts must be byte-exact, since a single changed character changes every loglikelihood.
//! The tests prove it: they rebuild lm-eval's `[doc_to_text, doc_to_target, doc_to_choice]`
//! triple for every document and compare the sha256 with the one lm-eval 0.4.13 itself produced
//! (listed in `shared/fixtures/datasets/ZERO_SHOT_SOURCES.md`).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// The seven tasks of the Wanda paper's zero-shot table, in the paper's order.
pub const ALL_TASKS: [&str; 7] = [
    "boolq",
    "rte",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
];

/// lm-eval's default `target_delimiter`; none of the seven YAMLs overrides it.
const TARGET_DELIMITER: &str = " ";

/// How a dataset row becomes a [`Doc`]; one variant per distinct lm-eval task definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BoolQ,
    Rte,
    HellaSwag,
    Winogrande,
    Arc,
    OpenBookQa,
}

/// One lm-eval task: where its documents live and which metrics lm-eval reports for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// lm-eval's task name.
    pub name: &'static str,
    /// Hugging Face hub dataset id (`dataset_path` in the YAML).
    pub hub_id: &'static str,
    /// Hub config (`dataset_name`); `None` for hellaswag's default config.
    pub config: Option<&'static str>,
    /// The split lm-eval evaluates on.
    pub split: &'static str,
    /// The parquet file, relative to the hub repo's folder (the hub's parquet layout).
    pub file: &'static str,
    /// Whether the YAML's `metric_list` has `acc_norm` besides `acc`.
    pub reports_acc_norm: bool,
    format: Format,
}

/// lm-eval's task definitions, in [`ALL_TASKS`] order. The split is the YAML's `test_split` when
/// it has one, else `validation_split`.
const TASKS: [Task; 7] = [
    Task {
        name: "boolq",
        hub_id: "aps/super_glue",
        config: Some("boolq"),
        split: "validation",
        file: "boolq/validation-00000-of-00001.parquet",
        reports_acc_norm: false,
        format: Format::BoolQ,
    },
    Task {
        name: "rte",
        hub_id: "nyu-mll/glue",
        config: Some("rte"),
        split: "validation",
        file: "rte/validation-00000-of-00001.parquet",
        reports_acc_norm: false,
        format: Format::Rte,
    },
    Task {
        name: "hellaswag",
        hub_id: "Rowan/hellaswag",
        config: None,
        split: "validation",
        file: "data/validation-00000-of-00001.parquet",
        reports_acc_norm: true,
        format: Format::HellaSwag,
    },
    Task {
        name: "winogrande",
        hub_id: "allenai/winogrande",
        config: Some("winogrande_xl"),
        split: "validation",
        file: "winogrande_xl/validation-00000-of-00001.parquet",
        reports_acc_norm: false,
        format: Format::Winogrande,
    },
    Task {
        name: "arc_easy",
        hub_id: "allenai/ai2_arc",
        config: Some("ARC-Easy"),
        split: "test",
        file: "ARC-Easy/test-00000-of-00001.parquet",
        reports_acc_norm: true,
        format: Format::Arc,
    },
    Task {
        name: "arc_challenge",
        hub_id: "allenai/ai2_arc",
        config: Some("ARC-Challenge"),
        split: "test",
        file: "ARC-Challenge/test-00000-of-00001.parquet",
        reports_acc_norm: true,
        format: Format::Arc,
    },
    Task {
        name: "openbookqa",
        hub_id: "allenai/openbookqa",
        config: Some("main"),
        split: "test",
        file: "main/test-00000-of-00001.parquet",
        reports_acc_norm: true,
        format: Format::OpenBookQa,
    },
];

/// Looks up a task by its lm-eval name.
pub fn task(name: &str) -> Result<Task> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .cloned()
        .ok_or_else(|| anyhow!("unknown task {name:?}; valid tasks: {}", ALL_TASKS.join(", ")))
}

impl Task {
    /// The parquet file under a local mirror of the hub laid out as `<root>/<hub id>/<file>`.
    pub fn parquet_path(&self, datasets_root: &Path) -> PathBuf {
        datasets_root.join(self.hub_id).join(self.file)
    }

    /// Scores one document from the loglikelihoods of its [`Doc::requests`], in request order.
    pub fn score(&self, doc: &Doc, loglikelihoods: &[f64]) -> Result<DocScore> {
        let choices = doc.choices();
        ensure!(
            loglikelihoods.len() == choices.len(),
            "task {}: {} loglikelihoods for a document with {} choices",
            self.name,
            loglikelihoods.len(),
            choices.len()
        );
        ensure!(
            doc.gold < choices.len(),
            "task {}: gold index {} out of range for {} choices",
            self.name,
            doc.gold,
            choices.len()
        );
        let hit = |pred: usize| if pred == doc.gold { 1.0 } else { 0.0 };
        let acc = hit(argmax(loglikelihoods.iter().copied()));
        // lm-eval divides by `len(choice)`: Python characters (code points) of the choice string
        // from doc_to_choice, without the target delimiter, not UTF-8 bytes (that is `acc_bytes`).
        let acc_norm = self.reports_acc_norm.then(|| {
            hit(argmax(
                loglikelihoods
                    .iter()
                    .zip(&choices)
                    .map(|(ll, c)| ll / c.chars().count() as f64),
            ))
        });
        Ok(DocScore { acc, acc_norm })
    }
}

/// numpy's `argmax`: the first maximum wins ties, and a NaN counts as the maximum.
pub(crate) fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in values.enumerate() {
        if v.is_nan() {
            return i;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// The loglikelihood requests of one document.
///
/// Multiple-choice tasks have one shared context and one continuation per choice
/// (`" " + choice`). Winogrande uses lm-eval's partial scoring: one context per option and one
/// shared continuation, which is what lm-eval's `multiple_input` means; so a doc with more than
/// one context is read as partial scoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub contexts: Vec<String>,
    pub continuations: Vec<String>,
    /// Index of the correct choice.
    pub gold: usize,
}

impl Doc {
    fn multiple_choice(context: String, choices: &[String], gold: usize) -> Doc {
        Doc {
            contexts: vec![context],
            continuations: choices.iter().map(|c| format!("{TARGET_DELIMITER}{c}")).collect(),
            gold,
        }
    }

    fn is_partial(&self) -> bool {
        self.contexts.len() > 1
    }

    /// `(context, continuation)` pairs in choice order.
    pub fn requests(&self) -> Vec<(String, String)> {
        if self.is_partial() {
            let Some(cont) = self.continuations.first() else {
                return Vec::new();
            };
            self.contexts.iter().map(|ctx| (ctx.clone(), cont.clone())).collect()
        } else {
            let Some(ctx) = self.contexts.first() else {
                return Vec::new();
            };
            self.continuations
                .iter()
                .map(|cont| (ctx.clone(), cont.clone()))
                .collect()
        }
    }

    /// lm-eval's `doc_to_choice`: the choice strings (the contexts under partial scoring).
    pub fn choices(&self) -> Vec<&str> {
        if self.is_partial() {
            self.contexts.iter().map(String::as_str).collect()
        } else {
            self.continuations.iter().map(|c| strip_delimiter(c)).collect()
        }
    }

    /// `json.dumps([doc_to_text(doc), doc_to_target(doc), doc_to_choice(doc)], ensure_ascii=False)`
    /// as lm-eval 0.4.13 returns them, to check prompts byte for byte against lm-eval.
    /// Under partial scoring lm-eval's doc_to_text is the gold index and doc_to_target the
    /// shared continuation.
    pub fn lm_eval_json(&self) -> String {
        let choices = self
            .choices()
            .iter()
            .map(|c| py_json_str(c))
            .collect::<Vec<_>>()
            .join(", ");
        let first = |v: &[String]| v.first().map_or(String::new(), |s| py_json_str(s));
        if self.is_partial() {
            let target = self.continuations.first().map_or("", |c| strip_delimiter(c));
            format!("[{}, {}, [{choices}]]", self.gold, py_json_str(target))
        } else {
            format!("[{}, {}, [{choices}]]", first(&self.contexts), self.gold)
        }
    }
}

fn strip_delimiter(continuation: &str) -> &str {
    continuation.strip_prefix(TARGET_DELIMITER).unwrap_or(continuation)
}

/// A JSON string literal as Python's `json.dumps(s, ensure_ascii=False)` writes it.
fn py_json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < '\u{20}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Loads the task's documents from its parquet file, in dataset order.
pub fn load_docs(task: &Task, parquet_path: &Path) -> Result<Vec<Doc>> {
    let t = Table::open(parquet_path)?;
    let mc = |contexts: Vec<String>, choices: Vec<Vec<String>>, golds: Vec<usize>| {
        contexts
            .into_iter()
            .zip(choices)
            .zip(golds)
            .map(|((ctx, ch), gold)| Doc::multiple_choice(ctx, &ch, gold))
            .collect::<Vec<_>>()
    };
    let docs = match task.format {
        Format::BoolQ => {
            let contexts = t.strings("passage")?.into_iter().zip(t.strings("question")?);
            let contexts = contexts.map(|(p, q)| format!("{p}\nQuestion: {q}?\nAnswer:"));
            t.labelled(contexts.collect(), ["no", "yes"])?
        }
        Format::Rte => {
            let contexts = t.strings("sentence1")?.into_iter().zip(t.strings("sentence2")?);
            let contexts = contexts.map(|(s1, s2)| format!("{s1}\nQuestion: {s2} True or False?\nAnswer:"));
            t.labelled(contexts.collect(), ["True", "False"])?
        }
        Format::HellaSwag => {
            let contexts = t
                .strings("activity_label")?
                .iter()
                .zip(t.strings("ctx_a")?)
                .zip(t.strings("ctx_b")?)
                .map(|((label, a), b)| hellaswag_preprocess(&format!("{label}: {a} {}", py_capitalize(&b))))
                .collect();
            let choices = t
                .string_lists(t.column("endings")?.list(), "endings")?
                .into_iter()
                .map(|endings| endings.iter().map(|e| hellaswag_preprocess(e)).collect())
                .collect::<Vec<Vec<String>>>();
            // lm-eval renders "{{label}}" and literal_evals the digit string.
            let golds = t
                .strings("label")?
                .iter()
                .enumerate()
                .map(|(row, l)| {
                    let n = l
                        .parse::<i64>()
                        .ok()
                        .filter(|_| l.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| t.bad("label", row, format!("{l:?} is not an index")))?;
                    t.index(n, choices[row].len(), "label", row)
                })
                .collect::<Result<Vec<_>>>()?;
            mc(contexts, choices, golds)
        }
        Format::Winogrande => {
            let sentences = t.strings("sentence")?;
            let options = t.strings("option1")?.into_iter().zip(t.strings("option2")?);
            let answers = t.strings("answer")?;
            sentences
                .iter()
                .zip(options)
                .zip(answers)
                .enumerate()
                .map(|(row, ((sentence, (o1, o2)), answer))| {
                    let blank = sentence
                        .find('_')
                        .ok_or_else(|| t.bad("sentence", row, "no \"_\" blank".into()))?;
                    let (prefix, rest) = (&sentence[..blank], &sentence[blank + 1..]);
                    let gold = match answer.as_str() {
                        "1" => 0,
                        "2" => 1,
                        _ => return Err(t.bad("answer", row, format!("{answer:?} is not 1 or 2"))),
                    };
                    Ok(Doc {
                        contexts: vec![format!("{prefix}{o1}"), format!("{prefix}{o2}")],
                        continuations: vec![format!("{TARGET_DELIMITER}{}", py_strip(rest))],
                        gold,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
        Format::Arc | Format::OpenBookQa => {
            let contexts: Vec<String> = if task.format == Format::Arc {
                t.strings("question")?
                    .iter()
                    .map(|q| format!("Question: {q}\nAnswer:"))
                    .collect()
            } else {
                t.strings("question_stem")?
            };
            let choices = t.column("choices")?;
            let field = |name: &str| -> Result<Vec<Vec<String>>> {
                let what = format!("choices.{name}");
                let s = choices
                    .struct_()
                    .and_then(|s| s.field_by_name(name))
                    .map_err(|e| t.bad_column(&what, e.into()))?;
                t.string_lists(s.list(), &what)
            };
            let (texts, labels) = (field("text")?, field("label")?);
            // arc: `choices.label.index(answerKey)`; openbookqa strips the key's left whitespace.
            let golds = t
                .strings("answerKey")?
                .iter()
                .enumerate()
                .map(|(row, key)| {
                    let key = if task.format == Format::Arc {
                        key.as_str()
                    } else {
                        py_lstrip(key)
                    };
                    labels[row]
                        .iter()
                        .position(|l| l == key)
                        .ok_or_else(|| t.bad("answerKey", row, format!("{key:?} not in choices.label")))
                })
                .collect::<Result<Vec<_>>>()?;
            mc(contexts, texts, golds)
        }
    };
    Ok(docs)
}

/// lm-eval's hellaswag `preprocess`: strip, `" [title]"` -> `". "`, drop `\[.*?\]` (WikiHow
/// artifacts), then one pass of `"  "` -> `" "`.
fn hellaswag_preprocess(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        // Regex `.` does not match "\n", so a bracket only closes before the next newline.
        match after.find([']', '\n']) {
            Some(end) if after.as_bytes()[end] == b']' => rest = &after[end + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.isspace`: Rust's White_Space plus the separators U+001C..U+001F.
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(py_isspace)
}

/// Python's `str.capitalize` (first character upper, the rest lower). Python title-cases the
/// first character, which differs from upper-casing only for digraphs and ligatures such as
/// "ǆ" or "ß"; no hellaswag `ctx_b` starts with one (the sha256 test would show it).
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// A parquet file read whole, with errors that name the file, column and row.
struct Table {
    df: DataFrame,
    path: PathBuf,
}

impl Table {
    fn open(path: &Path) -> Result<Table> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let df = ParquetReader::new(file)
            .finish()
            .map_err(|e| anyhow!("reading parquet {}: {e}", path.display()))?;
        Ok(Table {
            df,
            path: path.to_path_buf(),
        })
    }

    fn bad_column(&self, column: &str, err: anyhow::Error) -> anyhow::Error {
        err.context(format!("{}: column {column:?}", self.path.display()))
    }

    fn bad(&self, column: &str, row: usize, msg: String) -> anyhow::Error {
        anyhow!("{}: column {column:?}, row {row}: {msg}", self.path.display())
    }

    fn column(&self, name: &str) -> Result<&Column> {
        self.df.column(name).map_err(|e| self.bad_column(name, e.into()))
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        let ca = self.column(name)?.str().map_err(|e| self.bad_column(name, e.into()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.map(str::to_owned).ok_or_else(|| self.bad(name, row, "null".into())))
            .collect()
    }

    fn ints(&self, name: &str) -> Result<Vec<i64>> {
        let col = self.column(name)?;
        ensure!(
            col.dtype().is_integer(),
            "{}: column {name:?} has type {}, expected an integer",
            self.path.display(),
            col.dtype()
        );
        let col = col
            .cast(&DataType::Int64)
            .map_err(|e| self.bad_column(name, e.into()))?;
        let ca = col.i64().map_err(|e| self.bad_column(name, e.into()))?;
        ca.iter()
            .enumerate()
            .map(|(row, v)| v.ok_or_else(|| self.bad(name, row, "null".into())))
            .collect()
    }

    /// A `list<string>` column (or struct field), one `Vec` per row.
    fn string_lists(&self, lists: PolarsResult<&ListChunked>, name: &str) -> Result<Vec<Vec<String>>> {
        let lists = lists.map_err(|e| self.bad_column(name, e.into()))?;
        lists
            .series_iter()
            .enumerate()
            .map(|(row, list)| {
                let list = list.ok_or_else(|| self.bad(name, row, "null".into()))?;
                let items = list.str().map_err(|e| self.bad_column(name, e.into()))?;
                items
                    .iter()
                    .map(|v| {
                        v.map(str::to_owned)
                            .ok_or_else(|| self.bad(name, row, "null list item".into()))
                    })
                    .collect()
            })
            .collect()
    }

    /// Multiple-choice docs with fixed choices and the integer `label` column as gold index.
    fn labelled<const N: usize>(&self, contexts: Vec<String>, choices: [&str; N]) -> Result<Vec<Doc>> {
        let choices = choices.map(String::from);
        self.ints("label")?
            .into_iter()
            .zip(contexts)
            .enumerate()
            .map(|(row, (label, ctx))| {
                let gold = self.index(label, N, "label", row)?;
                Ok(Doc::multiple_choice(ctx, &choices, gold))
            })
            .collect()
    }

    /// Checks a label against the number of choices, as lm-eval indexes choices with it.
    fn index(&self, label: i64, n_choices: usize, name: &str, row: usize) -> Result<usize> {
        usize::try_from(label)
            .ok()
            .filter(|&i| i < n_choices)
            .ok_or_else(|| self.bad(name, row, format!("label {label} outside 0..{n_choices}")))
    }
}

/// Per-document metrics: 1.0 for a correct answer, 0.0 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DocScore {
    pub acc: f64,
    /// `None` for tasks whose YAML does not report acc_norm.
    pub acc_norm: Option<f64>,
}

/// Task-level metrics, as lm-eval's results table shows them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub n: usize,
    pub acc: f64,
    /// `None` where lm-eval prints "N/A" (fewer than two documents).
    pub acc_stderr: Option<f64>,
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
}

/// Means and their standard errors over documents, using lm-eval's `mean` aggregation and
/// `mean_stderr` (sample standard deviation with ddof=1, divided by sqrt(n)).
pub fn aggregate(scores: &[DocScore]) -> Result<TaskResult> {
    ensure!(!scores.is_empty(), "no document scores to aggregate");
    let acc: Vec<f64> = scores.iter().map(|s| s.acc).collect();
    let acc_norm: Option<Vec<f64>> = scores.iter().map(|s| s.acc_norm).collect();
    ensure!(
        acc_norm.is_some() || scores.iter().all(|s| s.acc_norm.is_none()),
        "acc_norm is missing on some documents but not others"
    );
    let (acc, acc_stderr) = mean_and_stderr(&acc);
    let (acc_norm, acc_norm_stderr) = match acc_norm {
        Some(v) => {
            let (m, se) = mean_and_stderr(&v);
            (Some(m), se)
        }
        None => (None, None),
    };
    Ok(TaskResult {
        n: scores.len(),
        acc,
        acc_stderr,
        acc_norm,
        acc_norm_stderr,
    })
}

fn mean_and_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let stderr = (xs.len() > 1).then(|| {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var.sqrt() / n.sqrt()
    });
    (mean, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn mc_doc(choices: &[&str], gold: usize) -> Doc {
        let choices: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
        Doc::multiple_choice("Q".into(), &choices, gold)
    }

    fn task_named(name: &str) -> Task {
        task(name).expect("known task")
    }

    #[test]
    fn task_lookup() {
        assert_eq!(TASKS.map(|t| t.name), ALL_TASKS);
        assert_eq!(
            task_named("hellaswag").parquet_path(Path::new("d")),
            Path::new("d/Rowan/hellaswag/data/validation-00000-of-00001.parquet")
        );
        let err = task("piqa").expect_err("unknown").to_string();
        assert!(err.contains("piqa") && err.contains("openbookqa"), "{err}");
        let acc_norm: Vec<_> = ALL_TASKS
            .into_iter()
            .filter(|n| task_named(n).reports_acc_norm)
            .collect();
        assert_eq!(acc_norm, ["hellaswag", "arc_easy", "arc_challenge", "openbookqa"]);
    }

    #[test]
    fn score_ties_pick_the_first_choice() {
        let doc = mc_doc(&["a", "b", "c"], 1);
        let s = task_named("boolq").score(&doc, &[-1.0, -1.0, -3.0]).expect("score");
        assert_eq!(
            s,
            DocScore {
                acc: 0.0,
                acc_norm: None
            }
        );
        let doc = mc_doc(&["a", "b", "c"], 0);
        let s = task_named("arc_easy").score(&doc, &[-1.0, -1.0, -3.0]).expect("score");
        assert_eq!(
            s,
            DocScore {
                acc: 1.0,
                acc_norm: Some(1.0)
            }
        );
    }

    #[test]
    fn acc_norm_divides_by_characters_of_the_choice() {
        // "abc": 3 characters; "éé": 2 characters, 4 UTF-8 bytes. Raw argmax is 1, but per
        // character -3.3/3 = -1.1 beats -2.3/2 = -1.15. Dividing by bytes (-0.575) or by the
        // continuation with its leading space (-3.3/4 vs -2.3/3) would pick 1 instead.
        let doc = mc_doc(&["abc", "éé"], 1);
        let s = task_named("hellaswag").score(&doc, &[-3.3, -2.3]).expect("score");
        assert_eq!(
            s,
            DocScore {
                acc: 1.0,
                acc_norm: Some(0.0)
            }
        );
    }

    #[test]
    fn score_rejects_bad_input() {
        let t = task_named("arc_easy");
        assert!(t.score(&mc_doc(&["a", "b"], 0), &[-1.0]).is_err());
        assert!(t.score(&mc_doc(&["a", "b"], 2), &[-1.0, -2.0]).is_err());
    }

    #[test]
    fn nan_wins_like_numpy() {
        assert_eq!(argmax([-1.0, f64::NAN, 0.0].into_iter()), 1);
        assert_eq!(argmax([-2.0, -1.0, -1.0].into_iter()), 1);
    }

    #[test]
    fn aggregate_matches_lm_eval_mean_stderr() {
        let s = |acc, acc_norm| DocScore {
            acc,
            acc_norm: Some(acc_norm),
        };
        let r = aggregate(&[s(1.0, 1.0), s(0.0, 1.0), s(1.0, 0.0), s(1.0, 1.0)]).expect("agg");
        assert_eq!(r.n, 4);
        assert_eq!(r.acc, 0.75);
        // sample std of [1,0,1,1] = sqrt(0.75/3) = 0.5; stderr = 0.5 / 2.
        let se = r.acc_stderr.expect("stderr");
        assert!((se - 0.25).abs() < 1e-15, "{se}");
        assert_eq!(r.acc_norm, Some(0.75));
        let one = aggregate(&[DocScore {
            acc: 1.0,
            acc_norm: None,
        }])
        .expect("agg");
        assert_eq!((one.acc, one.acc_stderr, one.acc_norm), (1.0, None, None));
        assert!(aggregate(&[]).is_err());
        assert!(aggregate(&[
            s(1.0, 1.0),
            DocScore {
                acc: 1.0,
                acc_norm: None
            }
        ])
        .is_err());
    }

    #[test]
    fn requests_and_json_for_both_kinds() {
        let doc = mc_doc(&["yes \"x\"", "ü\n"], 1);
        assert_eq!(
            doc.requests(),
            [("Q".into(), " yes \"x\"".into()), ("Q".into(), " ü\n".into())]
        );
        assert_eq!(doc.lm_eval_json(), r#"["Q", 1, ["yes \"x\"", "ü\n"]]"#);
        let partial = Doc {
            contexts: vec!["A cat".into(), "A dog".into()],
            continuations: vec![" barked.\u{1}".into()],
            gold: 1,
        };
        assert_eq!(
            partial.requests(),
            [
                ("A cat".into(), " barked.\u{1}".into()),
                ("A dog".into(), " barked.\u{1}".into())
            ]
        );
        assert_eq!(partial.lm_eval_json(), r#"[1, "barked.\u0001", ["A cat", "A dog"]]"#);
    }

    #[test]
    fn hellaswag_preprocess_like_python() {
        // Expected values printed by Python running lm-eval's `preprocess`.
        assert_eq!(
            hellaswag_preprocess(" Home: [header] How to x [title] Do it.  [step] a[b\nc] "),
            "Home: How to x. Do it.  a[b\nc]"
        );
        assert_eq!(
            hellaswag_preprocess("\u{1c}Do it. [step] a[b\nc] [x] [y\n] z]\u{1f} "),
            "Do it. a[b\nc] [y\n] z]"
        );
        assert_eq!(py_capitalize("tHE Dog"), "The dog");
    }

    fn datasets_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/datasets")
    }

    /// sha256 over `json.dumps([doc_to_text, doc_to_target, doc_to_choice]) + "\n"` of every
    /// document, as lm-eval 0.4.13 produced them (ZERO_SHOT_SOURCES.md).
    fn check_sha(name: &str, expected_docs: usize, expected_sha: &str) {
        let t = task_named(name);
        let docs = load_docs(&t, &t.parquet_path(&datasets_root())).expect("load docs");
        assert_eq!(docs.len(), expected_docs);
        let mut h = Sha256::new();
        for d in &docs {
            h.update(d.lm_eval_json().as_bytes());
            h.update(b"\n");
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected_sha, "{name}: prompts differ from lm-eval's");
    }

    #[test]
    fn boolq_matches_lm_eval() {
        check_sha(
            "boolq",
            3270,
            "105a68fe7fc237b12ae73c9241799f19b8c3326c34e0a5fc454c20d8b3400891",
        );
    }

    #[test]
    fn rte_matches_lm_eval() {
        check_sha(
            "rte",
            277,
            "5a613bd6530dd7721f17b4f367b81c82f78bb6d515cd4d564ad907272820626a",
        );
    }

    #[test]
    fn hellaswag_matches_lm_eval() {
        check_sha(
            "hellaswag",
            10042,
            "598c2827e9713c530c429d4538a92db30873d5adde0cf79865e931de5aa569c3",
        );
    }

    #[test]
    fn winogrande_matches_lm_eval() {
        check_sha(
            "winogrande",
            1267,
            "7d2b1f5d7ec42e92b190cd7f411c838874b872b17be2497cfeb30b95996e6c28",
        );
    }

    #[test]
    fn arc_easy_matches_lm_eval() {
        check_sha(
            "arc_easy",
            2376,
            "2b3b15dfa7de73a5e1189fe8adf69b4c010683913d530fa231494c796b3aca15",
        );
    }

    #[test]
    fn arc_challenge_matches_lm_eval() {
        check_sha(
            "arc_challenge",
            1172,
            "e5deb900d582965977487d8e9c93786006197dd9e9df638fdbf7002efd33728a",
        );
    }

    #[test]
    fn openbookqa_matches_lm_eval() {
        check_sha(
            "openbookqa",
            500,
            "483b645e1c4d7a4ac00b451e63220d2282581dc626453b7cc6dbef88c3c846cf",
        );
    }

    #[test]
    fn missing_column_names_file_and_column() {
        let t = task_named("boolq");
        let wrong = task_named("rte").parquet_path(&datasets_root());
        let err = format!("{:#}", load_docs(&t, &wrong).expect_err("rte file has no passage"));
        assert!(err.contains("passage") && err.contains("rte/validation"), "{err}");
    }
}
