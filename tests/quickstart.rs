//! The README's main job, end to end: `repro run configs/quickstart.yaml` on the fixtures
//! (llama-tiny, 9 runs), then a rerun that finds everything cached.

mod common;

use common::repro;
use std::path::Path;

#[test]
fn quickstart_sweep_runs_end_to_end_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("quickstart");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yaml");
    let run = || {
        let o = repro()
            .arg("run")
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        common::success_text(&o)
    };
    let first = run();
    assert!(first.contains("9 runs, 0 cached, 9 to run"), "{first}");

    let records: Vec<serde_json::Value> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 9);
    for r in &records {
        let samples = out.join(format!("samples/{}.jsonl", r["id"].as_str().unwrap()));
        let lines = std::fs::read_to_string(&samples).unwrap_or_else(|e| panic!("{}: {e}", samples.display()));
        assert_eq!(lines.lines().count(), 20, "10 documents of arc_easy and of winogrande");
    }
    let ppl = |method: &str, pattern: &str, sparsity: f64| {
        let r = records
            .iter()
            .find(|r| {
                let p = &r["settings"]["prune"];
                match method {
                    "dense" => p.is_null(),
                    _ => {
                        p["method"] == method
                            && p["pattern"] == pattern
                            && (p["sparsity"].as_f64().unwrap() - sparsity).abs() < 1e-9
                    }
                }
            })
            .unwrap_or_else(|| panic!("no record for {method} {pattern} {sparsity}"));
        assert_eq!(r["status"], "ok", "{r}");
        r["result"]["ppl"]["books-heldout"].as_f64().unwrap()
    };
    let dense = ppl("dense", "", 0.0);
    for (method, pattern, sparsity) in [
        ("magnitude", "unstructured", 0.5),
        ("wanda", "unstructured", 0.5),
        ("sparsegpt", "unstructured", 0.5),
        ("wanda", "2:4", 0.5),
    ] {
        let pruned = ppl(method, pattern, sparsity);
        assert!(
            pruned.is_finite() && pruned > dense,
            "{method} {pattern}: {pruned} vs dense {dense}"
        );
    }
    // Pruning more hurts more.
    assert!(ppl("wanda", "unstructured", 0.5) > ppl("wanda", "unstructured", 0.3));

    for file in [
        "results.parquet",
        "results.csv",
        "report/quickstart_ppl.md",
        "report/quickstart_ppl.tex",
        "report/quickstart_ppl_in_domain.md",
        "report/quickstart_ppl_vs_sparsity.png",
        "report/quickstart_ppl_vs_sparsity.svg",
        "report/quickstart_zero_shot.png",
        "report/quickstart_zero_shot.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let table = std::fs::read_to_string(out.join("report/quickstart_ppl_in_domain.md")).unwrap();
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
            .count(),
        7,
        "{table}"
    );
    assert!(!table.contains('–'), "every cell has a value:\n{table}");

    // Per-task zero-shot table: the mean column is the mean of the task columns.
    let tasks = std::fs::read_to_string(out.join("report/quickstart_zero_shot_tasks.md")).unwrap();
    for line in tasks
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Method"))
    {
        let v: Vec<f64> = line
            .trim_matches('|')
            .split('|')
            .skip(2)
            .map(|c| c.trim().parse().unwrap_or_else(|_| panic!("{line}")))
            .collect();
        assert_eq!(v.len(), 3, "{line}");
        assert!((v[2] - (v[0] + v[1]) / 2.0).abs() <= 0.01, "{line}");
    }

    let second = run();
    assert!(second.contains("9 runs, 9 cached, 0 to run"), "{second}");
}
