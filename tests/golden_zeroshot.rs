//! Zero-shot evaluation against lm-evaluation-harness 0.4.13 itself: per-document goldens from
//! scripts/reference_zeroshot.py, which runs lm-eval's own tasks and HF backend on llama-tiny
//! (float32, CPU, batch size 1) over the local fixture datasets (tests/goldens/zeroshot/README.md).
//!
//! For every task, the first documents must get the same prediction, every choice's
//! loglikelihood within `LL_ABS`, the same acc/acc_norm and stderrs within 1e-9.

mod common;
use common::*;
use repro::eval::loglik::loglikelihoods;
use repro::eval::tasks::{load_docs, task, ALL_TASKS};
use repro::eval::zeroshot::{evaluate_docs, evaluate_task, ScoredDocs, TaskDocs, TaskEval, SLICE_DOCS};
use repro::hub::{Hub, RepoKind};
use repro::model::{self, Loaded, Streaming};
use serde_json::Value;
use std::path::PathBuf;
use tch::{Device, Kind};

/// Documents per task compared here (the goldens hold 50; fewer keeps the test fast).
const LIMIT: usize = 50;
/// Per-choice loglikelihood tolerance. lm-eval sums float32 log-probs in float32, repro in
/// float64, and the batched matmuls round differently from batch size 1.
const LL_ABS: f64 = 1e-4;
const STDERR_ABS: f64 = 1e-9;

fn goldens() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/zeroshot")
}

fn hub() -> Hub {
    Hub::new(Some(fixtures()))
}

fn load_model(g: &Value) -> Loaded {
    // One intra-op thread: on the 2-core test machine, with the other test binary's threads
    // competing, libtorch's default of one thread per core is many times slower (measured 17x
    // for a 300-token forward under load). The results do not depend on it beyond rounding.
    tch::set_num_threads(1);
    let name = g["settings"]["model"].as_str().unwrap();
    assert_eq!(g["settings"]["dtype"], "float32");
    model::load(&hub(), &fixture_model(name), Device::Cpu, Kind::Float, Streaming::Off).unwrap()
}

fn opt(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Compares one task's evaluation with its golden; returns the largest loglikelihood difference
/// and a list of disagreements (empty when it passes).
fn compare(name: &str, g: &Value, got: &TaskEval) -> (f64, Vec<String>) {
    let mut errors = Vec::new();
    let docs = g["docs"].as_array().unwrap();
    assert!(docs.len() >= LIMIT, "{name}: golden has {} docs", docs.len());
    assert_eq!(got.samples.len(), LIMIT, "{name}: documents evaluated");
    let mut max_diff = 0.0f64;
    for (i, d) in docs.iter().take(LIMIT).enumerate() {
        assert_eq!(d["doc"].as_u64().unwrap() as usize, i);
        let want = floats(&d["loglikelihoods"]);
        let have = &got.samples[i].loglikelihoods;
        if have.len() != want.len() {
            errors.push(format!("{name} doc {i}: {} choices, want {}", have.len(), want.len()));
            continue;
        }
        for (c, (h, w)) in have.iter().zip(&want).enumerate() {
            let diff = (h - w).abs();
            max_diff = max_diff.max(diff);
            if diff.is_nan() || diff > LL_ABS {
                errors.push(format!(
                    "{name} doc {i} choice {c}: loglikelihood {h}, want {w} (diff {diff:.3e})"
                ));
            }
        }
        let pred = d["pred"].as_u64().unwrap() as usize;
        if got.samples[i].prediction != pred {
            errors.push(format!(
                "{name} doc {i}: predicted {}, lm-eval {pred} (lls {have:?} vs {want:?})",
                got.samples[i].prediction
            ));
        }
    }
    let m = &g["metrics"];
    let r = &got.result;
    if LIMIT == docs.len() {
        assert_eq!(m["n"].as_u64().unwrap() as usize, r.n);
        if r.acc != m["acc"].as_f64().unwrap() {
            errors.push(format!("{name}: acc {}, lm-eval {}", r.acc, m["acc"]));
        }
        if r.acc_norm != opt(&m["acc_norm"]) {
            errors.push(format!("{name}: acc_norm {:?}, lm-eval {}", r.acc_norm, m["acc_norm"]));
        }
        for (what, have, want) in [
            ("acc_stderr", r.acc_stderr, opt(&m["acc_stderr"])),
            ("acc_norm_stderr", r.acc_norm_stderr, opt(&m["acc_norm_stderr"])),
        ] {
            let ok = match (have, want) {
                (Some(h), Some(w)) => (h - w).abs() <= STDERR_ABS,
                (None, None) => true,
                _ => false,
            };
            if !ok {
                errors.push(format!("{name}: {what} {have:?}, lm-eval {want:?}"));
            }
        }
    }
    (max_diff, errors)
}

#[test]
fn seven_tasks_match_lm_eval_per_document() {
    let first = golden(&goldens().join("boolq.json"));
    let loaded = load_model(&first);
    let _g = tch::no_grad_guard();
    let mut all_errors = Vec::new();
    let mut overall = 0.0f64;
    for name in ALL_TASKS {
        let g = golden(&goldens().join(format!("{name}.json")));
        assert_eq!(g["settings"]["task"], name);
        let start = std::time::Instant::now();
        let got = evaluate_task(loaded.model.as_ref(), &loaded.tokenizer, &hub(), name, Some(LIMIT), 8).unwrap();
        let (max_diff, errors) = compare(name, &g, &got);
        let t = got.tokens;
        eprintln!(
            "{name}: {LIMIT} docs in {:.1} s, max |ll diff| {max_diff:.3e}, {} disagreements; acc {} acc_norm {:?}; \
             tokens per doc {:.1} (one row per request: {:.1}), padding {:.2}%",
            start.elapsed().as_secs_f64(),
            errors.len(),
            got.result.acc,
            got.result.acc_norm,
            t.computed as f64 / LIMIT as f64,
            t.unshared as f64 / LIMIT as f64,
            100.0 * t.padding_fraction()
        );
        overall = overall.max(max_diff);
        all_errors.extend(errors);
    }
    eprintln!("all tasks: max |ll diff| {overall:.3e}");
    let shown: Vec<&String> = all_errors.iter().take(40).collect();
    assert!(
        all_errors.is_empty(),
        "{} disagreements with lm-eval, first ones:\n{shown:#?}",
        all_errors.len()
    );
}

/// A task stopped after a slice goes on from the documents kept then: those documents'
/// log-likelihoods are taken as they were (a mark put on one comes through) and only the rest
/// is scored, to exactly an uninterrupted evaluation's numbers. winogrande: the smallest task
/// with more documents than a slice.
#[test]
fn a_task_resumed_after_a_slice_equals_the_uninterrupted_evaluation() {
    let loaded = load_model(&golden(&goldens().join("winogrande.json")));
    let _g = tch::no_grad_guard();
    let (model, tok) = (loaded.model.as_ref(), &loaded.tokenizer);
    let td = TaskDocs::load(&hub(), "winogrande", None).unwrap();
    assert!(
        td.docs.len() > SLICE_DOCS && td.docs.len() < 2 * SLICE_DOCS,
        "{}",
        td.docs.len()
    );
    let mut kept = Vec::new();
    let whole = evaluate_docs(model, tok, &td, 8, ScoredDocs::default(), &mut |s| kept.push(s.clone())).unwrap();
    assert_eq!(kept.len(), 1, "every slice but the last is kept");
    let first = kept.pop().unwrap();
    assert_eq!(first.docs, SLICE_DOCS);
    assert_eq!(first.loglikelihoods.len(), 2 * SLICE_DOCS, "two requests per document");

    let no_more = &mut |_: &ScoredDocs| panic!("the last slice is not kept");
    let resumed = evaluate_docs(model, tok, &td, 8, first.clone(), no_more).unwrap();
    assert_eq!(resumed.samples, whole.samples);
    assert_eq!(resumed.result, whole.result);
    assert_eq!(resumed.tokens, whole.tokens);
    assert!(resumed.seconds >= first.seconds);

    let mut marked = first.clone();
    marked.loglikelihoods[0].logprob -= 100.0;
    let taken = evaluate_docs(model, tok, &td, 8, marked, no_more).unwrap();
    let want = whole.samples[0].loglikelihoods[0] - 100.0;
    assert_eq!(
        taken.samples[0].loglikelihoods[0], want,
        "the kept documents are not scored again"
    );
    assert_eq!(taken.samples[1..], whole.samples[1..]);

    // Scored documents that do not fit the task (a file edited by hand) are not taken.
    let mut torn = first;
    torn.loglikelihoods.pop();
    let again = evaluate_docs(model, tok, &td, 8, torn, &mut |_| ()).unwrap();
    assert_eq!(again.samples, whole.samples);
}

/// Batch size 1 and 8 give the same loglikelihoods (they change only how many packed rows share a
/// forward pass), and the `is_greedy` flags equal lm-eval's. boolq: the longest and most varied
/// contexts, including left-truncated ones.
#[test]
fn batch_size_does_not_change_loglikelihoods() {
    let name = "boolq";
    let g = golden(&goldens().join(format!("{name}.json")));
    let loaded = load_model(&g);
    let _g = tch::no_grad_guard();
    let t = task(name).unwrap();
    let path = hub().repo(t.hub_id, RepoKind::Dataset).get(t.file).unwrap();
    let docs = load_docs(&t, &path).unwrap();
    let requests: Vec<(String, String)> = docs[..LIMIT].iter().flat_map(|d| d.requests()).collect();
    let max_length = loaded.model.info().max_position_embeddings as usize;
    let bar = indicatif::ProgressBar::hidden();
    let run = |bs| {
        loglikelihoods(
            loaded.model.as_ref(),
            &loaded.tokenizer,
            &requests,
            max_length,
            bs,
            &bar,
        )
        .unwrap()
        .0
    };
    let (one, eight) = (run(1), run(8));
    let mut max_diff = 0.0f64;
    for (i, (a, b)) in one.iter().zip(&eight).enumerate() {
        max_diff = max_diff.max((a.logprob - b.logprob).abs());
        assert!(
            (a.logprob - b.logprob).abs() <= 1e-5,
            "request {i}: bs1 {} vs bs8 {}",
            a.logprob,
            b.logprob
        );
        assert_eq!(a.is_greedy, b.is_greedy, "request {i}: is_greedy");
    }
    eprintln!(
        "{name}: bs1 vs bs8 max |ll diff| {max_diff:.3e} over {} requests",
        requests.len()
    );
    let want_greedy: Vec<bool> = g["docs"].as_array().unwrap()[..LIMIT]
        .iter()
        .flat_map(|d| d["is_greedy"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()))
        .collect();
    let got_greedy: Vec<bool> = one.iter().map(|l| l.is_greedy).collect();
    assert_eq!(got_greedy, want_greedy, "{name}: is_greedy per request vs lm-eval");
}

/// `repro eval --samples` writes one line per document, task after task, that agrees with
/// lm-eval's own per-document record (loglikelihoods, prediction, gold, acc) and with the task
/// accuracies the run reports; a missing directory on the way to the file is created.
#[test]
fn samples_file_holds_lm_evals_per_document_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("new-dir/samples.jsonl");
    let (tasks, limit) = (["winogrande", "arc_challenge"], 12);
    let out = repro()
        .env("OMP_NUM_THREADS", "1")
        .args([
            "eval",
            "--model",
            &fixture_model("llama-tiny"),
            "--json",
            "--batch-size",
            "4",
        ])
        .args(["--tasks", &tasks.join(","), "--limit", &limit.to_string()])
        .arg("--samples")
        .arg(&file)
        .output()
        .unwrap();
    let run = json_of(&out);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), tasks.len() * limit);
    for (name, lines) in tasks.iter().zip(lines.chunks(limit)) {
        let g = golden(&goldens().join(format!("{name}.json")));
        for (i, (have, want)) in lines.iter().zip(g["docs"].as_array().unwrap()).enumerate() {
            assert_eq!(have["task"], *name);
            assert_eq!(have["doc"], i);
            assert_close(
                &format!("{name} doc {i} loglikelihoods"),
                &floats(&have["loglikelihoods"]),
                &floats(&want["loglikelihoods"]),
                0.0,
                LL_ABS,
            );
            for (field, golden_field) in [("prediction", "pred"), ("gold", "gold"), ("acc", "acc")] {
                assert_eq!(
                    have[field].as_f64(),
                    want[golden_field].as_f64(),
                    "{name} doc {i}: {field}"
                );
            }
        }
        let mean_acc = lines.iter().map(|l| l["acc"].as_f64().unwrap()).sum::<f64>() / limit as f64;
        assert!((mean_acc - run["zero_shot"][name]["acc"].as_f64().unwrap()).abs() < 1e-12);
        // WinoGrande reports no acc_norm, so its lines carry none.
        let norms: Option<Vec<f64>> = lines.iter().map(|l| l["acc_norm"].as_f64()).collect();
        let mean_norm = norms.map(|n| n.iter().sum::<f64>() / limit as f64);
        let reported = run["zero_shot"][name]["acc_norm"].as_f64();
        assert_eq!(mean_norm.is_some(), reported.is_some(), "{name}: acc_norm");
        assert!(mean_norm.zip(reported).is_none_or(|(m, r)| (m - r).abs() < 1e-12));
    }
}
