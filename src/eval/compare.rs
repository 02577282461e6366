//! `repro compare A B`: two runs' per-document zero-shot outcomes (the JSON lines `--samples`
//! writes, or a sweep's `samples/<id>.jsonl`) side by side, task by task. At 50% sparsity pruning
//! methods often differ by less than a point of accuracy, inside each run's standard error; but
//! both runs answered the same documents, and the documents only one of them gets right say far
//! more. McNemar's exact test on those tells a real difference from chance.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use super::zeroshot::Sample;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// A samples file (`repro eval/prune --samples`), or with --run-dir a run of that sweep: its
    /// label pattern (`*` for anything, as `repro run --only`) or id prefix.
    pub a: String,
    /// Another run's samples file on the same documents (or run, with --run-dir).
    pub b: String,
    /// A sweep's output directory whose runs wrote samples (`evaluation.samples: true`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One task's paired outcomes (`acc`, the paper's metric).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// A task name, or `all` for every document of every task.
    pub task: String,
    pub docs: usize,
    /// Accuracy of A and of B, in %.
    pub acc_a: f64,
    pub acc_b: f64,
    /// Documents where both runs predict the same choice, in %.
    pub same_prediction: f64,
    /// Documents only A answers correctly, and only B.
    pub only_a: usize,
    pub only_b: usize,
    /// Two-sided exact McNemar test on `only_a` and `only_b`.
    pub p_value: f64,
}

/// Two-sided exact McNemar test: under "A and B are equally good", each document that only one
/// of them gets right is equally likely to be either's, so `only_a` ~ Binomial(only_a + only_b, 1/2).
/// The p-value is twice the smaller tail, at most 1; summed in logs, as 2^-n underflows past 1074.
pub fn mcnemar_exact(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    let k = only_a.min(only_b);
    let mut log_pmf = -(n as f64) * std::f64::consts::LN_2; // P(X = 0)
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        terms.push(log_pmf);
        log_pmf += ((n - i) as f64 / (i + 1) as f64).ln();
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Reads a samples file.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let samples = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{}:{}: not a per-document outcome as `--samples` writes it",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect::<Result<Vec<Sample>>>()?;
    ensure!(!samples.is_empty(), "{}: holds no documents", path.display());
    Ok(samples)
}

/// Pairs A's and B's outcomes document by document, per task in A's order, then over all of them.
/// Both must hold the same tasks' same documents with the same answers (the same data and limit).
pub fn compare(a: &[Sample], b: &[Sample]) -> Result<Vec<Paired>> {
    let mut tasks: Vec<&str> = Vec::new();
    for s in a {
        if !tasks.contains(&s.task.as_str()) {
            tasks.push(&s.task);
        }
    }
    let of = |samples: &'_ [Sample], task: &str| -> Vec<Sample> {
        let mut docs: Vec<Sample> = samples.iter().filter(|s| s.task == task).cloned().collect();
        docs.sort_by_key(|s| s.doc);
        docs
    };
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for task in &tasks {
        let (x, y) = (of(a, task), of(b, task));
        let (xd, yd): (Vec<usize>, Vec<usize>) = (x.iter().map(|s| s.doc).collect(), y.iter().map(|s| s.doc).collect());
        if xd != yd {
            bail!(
                "{task}: A holds {} documents and B {} (or other ones): compare runs of the same tasks with the same `limit`",
                xd.len(),
                yd.len()
            );
        }
        if let Some((s, _)) = x.iter().zip(&y).find(|(s, t)| s.gold != t.gold) {
            bail!(
                "{task} document {}: A's answer is choice {} and B's {}: the runs read different data",
                s.doc,
                s.gold,
                y.iter().find(|t| t.doc == s.doc).map_or(0, |t| t.gold)
            );
        }
        let pairs: Vec<(&Sample, &Sample)> = x.iter().zip(&y).collect();
        rows.push(paired(task, &pairs));
        all.extend(x.into_iter().zip(y));
    }
    let extra: Vec<&str> = b
        .iter()
        .map(|s| s.task.as_str())
        .filter(|t| !tasks.contains(t))
        .collect();
    if let Some(task) = extra.first() {
        bail!("{task}: only B holds this task; compare runs of the same tasks");
    }
    if tasks.len() > 1 {
        let pairs: Vec<(&Sample, &Sample)> = all.iter().map(|(s, t)| (s, t)).collect();
        rows.push(paired("all", &pairs));
    }
    Ok(rows)
}

fn paired(task: &str, pairs: &[(&Sample, &Sample)]) -> Paired {
    let n = pairs.len();
    let pct = |count: usize| 100.0 * count as f64 / n.max(1) as f64;
    let right = |s: &Sample| s.acc > 0.5;
    let count = |f: &dyn Fn(&Sample, &Sample) -> bool| pairs.iter().filter(|(a, b)| f(a, b)).count();
    let (only_a, only_b) = (
        count(&|a, b| right(a) && !right(b)),
        count(&|a, b| !right(a) && right(b)),
    );
    Paired {
        task: task.to_string(),
        docs: n,
        acc_a: pct(count(&|a, _| right(a))),
        acc_b: pct(count(&|_, b| right(b))),
        same_prediction: pct(count(&|a, b| a.prediction == b.prediction)),
        only_a,
        only_b,
        p_value: mcnemar_exact(only_a, only_b),
    }
}

/// The samples file `arg` names: a path, or with `run_dir` the one run of that sweep whose label
/// matches the pattern or whose id starts with it.
fn samples_file(arg: &str, run_dir: Option<&Path>) -> Result<(PathBuf, String)> {
    let Some(dir) = run_dir else {
        return Ok((PathBuf::from(arg), arg.to_string()));
    };
    let sweep = crate::sweep::SweepFile::load(dir)?;
    let matches: Vec<_> = sweep
        .runs
        .iter()
        .filter(|r| crate::sweep::glob(arg, &r.label) || r.id.starts_with(arg))
        .collect();
    match matches.as_slice() {
        [run] => {
            let path = dir.join("samples").join(format!("{}.jsonl", run.id));
            ensure!(
                path.is_file(),
                "run {} ({}) has no samples file {}: set `evaluation.samples: true` and rerun it with --force",
                run.id,
                run.label,
                path.display()
            );
            Ok((path, format!("{} ({})", run.label, run.id)))
        }
        [] => bail!(
            "`{arg}` matches none of the {} runs of {}",
            sweep.runs.len(),
            dir.display()
        ),
        many => bail!(
            "`{arg}` matches {} runs of {} ({}); give a pattern that picks one",
            many.len(),
            dir.display(),
            many.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join("; ")
        ),
    }
}

/// `repro compare`.
pub fn main(args: &CompareArgs) -> Result<()> {
    let (a, a_name) = samples_file(&args.a, args.run_dir.as_deref())?;
    let (b, b_name) = samples_file(&args.b, args.run_dir.as_deref())?;
    let rows = compare(&read_samples(&a)?, &read_samples(&b)?)
        .with_context(|| format!("A = {}, B = {}", a.display(), b.display()))?;
    if args.json {
        println!("{}", serde_json::json!({"a": a_name, "b": b_name, "tasks": rows}));
        return Ok(());
    }
    println!("A: {a_name}\nB: {b_name}\n");
    println!("| task | docs | acc A (%) | acc B (%) | same prediction (%) | only A right | only B right | McNemar p |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {:.3} |",
            r.task, r.docs, r.acc_a, r.acc_b, r.same_prediction, r.only_a, r.only_b, r.p_value
        );
    }
    println!("\nMcNemar p: the chance of a split of the one-sided documents at least this uneven if A and B were equally good (two-sided, exact).");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the exact sum with big integers (Python's `math.comb`, as scipy's `binomtest`).
    #[test]
    fn mcnemar_matches_the_exact_binomial_tail() {
        for (b, c, p) in [
            (0, 0, 1.0),
            (10, 2, 0.03857421875),
            (12, 9, 0.6636238098144531),
            (5, 5, 1.0),
            (0, 7, 0.015625),
            (300, 240, 0.011050481081930009),
            (1000, 1100, 0.030720707864242296),
        ] {
            let got = mcnemar_exact(b, c);
            assert!(
                (got - p).abs() <= 1e-12 * p.max(1e-300) + 1e-15,
                "{b} {c}: {got} vs {p}"
            );
            assert_eq!(got, mcnemar_exact(c, b));
        }
    }

    fn sample(task: &str, doc: usize, prediction: usize, gold: usize) -> Sample {
        Sample {
            task: task.into(),
            doc,
            loglikelihoods: vec![-1.0; 4],
            prediction,
            gold,
            acc: (prediction == gold) as u8 as f64,
            acc_norm: None,
        }
    }

    #[test]
    fn outcomes_pair_by_document_and_mismatches_are_refused() {
        // rte: A right on 0, 1, 2; B right on 2, 3. hellaswag listed in another order in B.
        let a = vec![
            sample("rte", 0, 1, 1),
            sample("rte", 1, 0, 0),
            sample("rte", 2, 1, 1),
            sample("rte", 3, 1, 0),
            sample("hellaswag", 0, 2, 2),
            sample("hellaswag", 1, 3, 0),
        ];
        let b = vec![
            sample("hellaswag", 1, 3, 0),
            sample("rte", 0, 0, 1),
            sample("rte", 1, 1, 0),
            sample("rte", 2, 1, 1),
            sample("rte", 3, 0, 0),
            sample("hellaswag", 0, 1, 2),
        ];
        let rows = compare(&a, &b).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(names, ["rte", "hellaswag", "all"]);
        let rte = &rows[0];
        assert_eq!((rte.docs, rte.only_a, rte.only_b), (4, 2, 1));
        assert_eq!((rte.acc_a, rte.acc_b, rte.same_prediction), (75.0, 50.0, 25.0));
        assert_eq!(rte.p_value, 1.0);
        let all = &rows[2];
        assert_eq!((all.docs, all.only_a, all.only_b), (6, 3, 1));
        assert_eq!(all.same_prediction, 100.0 * 2.0 / 6.0);

        let short = &b[..5];
        let e = compare(&a, short).unwrap_err().to_string();
        assert!(
            e.contains("hellaswag: A holds 2 documents and B 1") && e.contains("same `limit`"),
            "{e}"
        );
        let mut other = b.clone();
        other[3].gold = 0;
        let e = compare(&a, &other).unwrap_err().to_string();
        assert!(e.contains("rte document 2") && e.contains("different data"), "{e}");
        let mut extra = b.clone();
        extra.push(sample("boolq", 0, 1, 1));
        let e = compare(&a, &extra).unwrap_err().to_string();
        assert!(e.contains("boolq: only B holds this task"), "{e}");
    }
}
