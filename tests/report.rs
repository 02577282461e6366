//! `repro report` on hand-made records (no model): parquet/CSV rows, Markdown/LaTeX tables with
//! the paper's numbers and differences, and PNG/SVG charts that decode and are not blank.

use polars::prelude::*;
use repro::config::{RunSpec, SweepConfig};
use repro::report::{report, Artefact};
use repro::sweep::store::{write_atomic, Environment, Record, Status, Store, RECORD_SCHEMA};
use repro::sweep::{PlanEntry, SweepFile};
use serde_json::json;
use std::path::Path;

const CONFIG: &str = "name: r
output: unused
models: [m]
methods: [dense, magnitude, wanda]
sparsities: [0.3, 0.5]
calibration: {dataset: c4, nsamples: [8], seeds: [0, 1]}
evaluation: {ppl: [wikitext2], tasks: [boolq]}
";

const ARTEFACTS: &str = "
- name: tab
  title: Perplexity
  source: arXiv v2, Table 3
  kind: table
  metric: ppl:wikitext2
  row_header: [Method, Sparsity]
  rows:
    - {label: [Dense, 0%], where: {method: dense}, paper: [5.68]}
    - {label: [Wanda, 50%], where: {method: wanda, sparsity: 0.5}, paper: [7.26], paper_std: [0.01]}
    - {label: [Magnitude, 50%], where: {method: magnitude, sparsity: 0.5}}
  columns:
    - {label: m, where: {model: m}}
- name: line
  title: Perplexity vs sparsity
  kind: line
  metric: ppl:wikitext2
  log_y: true
  x: {field: sparsity, values: [0.0, 0.3, 0.5], label: sparsity}
  series:
    - {label: Magnitude, where: {method: magnitude}}
    - {label: Wanda, where: {method: wanda}, paper: [5.68, null, 7.26]}
- name: loose
  title: A row that takes two sparsities
  kind: table
  metric: ppl:wikitext2
  rows:
    - {label: Magnitude, where: {method: magnitude}}
    - {label: Wanda 50%, where: {method: wanda, sparsity: 0.5}}
  columns:
    - {label: m, where: {model: m}}
- name: bars
  title: Zero-shot
  kind: bars
  metric: zero_shot_mean
  columns:
    - {label: 30%, where: {sparsity: 0.3}}
    - {label: 50%, where: {sparsity: 0.5}}
  series:
    - {label: Magnitude, where: {method: magnitude}}
    - {label: Wanda, where: {method: wanda}}
";

fn record(id: String, label: String, method_label: String, settings: RunSpec, result: serde_json::Value) -> Record {
    Record {
        schema: RECORD_SCHEMA,
        id,
        label,
        method_label,
        status: Status::Ok,
        error: None,
        settings,
        model_identity: json!({"sha256": "x"}),
        data_identity: Default::default(),
        environment: Environment::current(),
        started_at: 0.0,
        finished_at: 1.0,
        result: serde_json::from_value(result).unwrap(),
    }
}

/// One record per planned run, with ppl = 5 + 10·sparsity (+ 0.1·seed) and acc = 0.6 − sparsity.
fn fixture(dir: &Path) -> usize {
    let cfg = SweepConfig::parse(CONFIG, Path::new("r.yaml")).unwrap();
    let artefacts: Vec<Artefact> = serde_yaml::from_str(ARTEFACTS).unwrap();
    let store = Store::open(dir);
    let mut plan = Vec::new();
    for (i, run) in cfg.expand().unwrap().into_iter().enumerate() {
        let s = run.spec.prune.as_ref().map_or(0.0, |p| p.sparsity);
        let seed = run.spec.prune.as_ref().map_or(0, |p| p.seed) as f64;
        let id = format!("{i:016x}");
        let result = json!({
            "ppl": {"wikitext2": 5.0 + 10.0 * s + 0.1 * seed},
            "ppl_details": {"wikitext2": {"windows": 4}},
            "zero_shot": {"boolq": {"n": 10, "acc": 0.6 - s}},
            "zero_shot_mean_acc": 0.6 - s,
            "seqlen": 64, "device": "cpu", "dtype": "f32", "total_seconds": 1.5, "peak_rss_bytes": 1000
        });
        store
            .put(&record(
                id.clone(),
                run.label.clone(),
                run.method_label,
                run.spec,
                result,
            ))
            .unwrap();
        plan.push(PlanEntry { id, label: run.label });
    }
    let n = plan.len();
    let sweep = SweepFile {
        name: "r".into(),
        config: "r.yaml".into(),
        runs: plan,
        artefacts,
        unresolved: Vec::new(),
    };
    write_atomic(&dir.join("sweep.json"), &serde_json::to_vec(&sweep).unwrap()).unwrap();
    n
}

#[test]
fn report_writes_frames_tables_and_charts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = fixture(dir);
    assert_eq!(
        n,
        1 + 2 + 2 * 2,
        "dense, magnitude x 2 sparsities, wanda x 2 sparsities x 2 seeds"
    );
    let files = report(dir).unwrap();
    assert_eq!(files.len(), 2 + 2 * 4);

    let df = ParquetReader::new(std::fs::File::open(dir.join("results.parquet")).unwrap())
        .finish()
        .unwrap();
    assert_eq!(df.height(), n);
    for c in [
        "id",
        "model",
        "method",
        "pattern",
        "sparsity",
        "nsamples",
        "seed",
        "seqlen",
        "ppl_wikitext2",
        "acc_boolq",
        "total_seconds",
        "libtorch_version",
    ] {
        assert!(df.column(c).is_ok(), "column {c} missing: {:?}", df.get_column_names());
    }
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), n + 1);

    let md = std::fs::read_to_string(dir.join("report/tab.md")).unwrap();
    assert!(md.contains("| Method | Sparsity | m |"), "{md}");
    assert!(md.contains("| Dense | 0% | 5.00 (paper 5.68, -0.68) |"), "{md}");
    // Two seeds: mean ± std beside the paper's mean ± std.
    assert!(
        md.contains("| Wanda | 50% | 10.05 ± 0.07 (paper 7.26 ± 0.01, +2.79) |"),
        "{md}"
    );
    assert!(md.contains("| Magnitude | 50% | 10.00 |"), "{md}");
    assert!(md.contains("arXiv v2, Table 3"), "{md}");
    let tex = std::fs::read_to_string(dir.join("report/tab.tex")).unwrap();
    assert!(
        tex.contains("\\begin{tabular}{llc}") && tex.contains("Dense & 0\\% & 5.00 {\\scriptsize (5.68, -0.68)}"),
        "{tex}"
    );

    for chart in ["line", "bars"] {
        let png = dir.join(format!("report/{chart}.png"));
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (960, 600), "{chart}");
        let px = info.line_size / info.width as usize;
        let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
        let non_white = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
        assert!(non_white > pixels.len() / 100, "{chart}: only {non_white} drawn pixels");
        let distinct: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
        assert!(
            distinct.len() > 8,
            "{chart}: {} colours (text antialiasing and series colours expected)",
            distinct.len()
        );
        let svg = std::fs::read_to_string(dir.join(format!("report/{chart}.svg"))).unwrap();
        assert!(svg.contains("Wanda") && svg.contains("Magnitude"), "{chart}: legend");
    }
    let svg = std::fs::read_to_string(dir.join("report/line.svg")).unwrap();
    assert!(
        svg.contains("Wanda (paper)") && svg.contains("sparsity") && svg.contains("wikitext2 perplexity"),
        "line chart labels"
    );
}

#[test]
fn cells_mixing_more_than_seeds_are_marked_and_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    fixture(tmp.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_repro"))
        .arg("report")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let md = std::fs::read_to_string(tmp.path().join("report/loose.md")).unwrap();
    // Magnitude at 0.3 and 0.5 (ppl 8 and 10): marked, with the differing setting named below.
    assert!(md.contains("| Magnitude | 9.00 ± 1.41* |"), "{md}");
    assert!(
        md.contains("\\* averages runs that differ in sparsity, not only in the seed."),
        "{md}"
    );
    // Two seeds of one setting: a seed spread, not marked.
    assert!(md.contains("| Wanda 50% | 10.05 ± 0.07 |"), "{md}");
    let tex = std::fs::read_to_string(tmp.path().join("report/loose.tex")).unwrap();
    assert!(
        tex.contains("9.00 $\\pm$ 1.41*") && tex.contains("\\footnotesize * averages runs"),
        "{tex}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("report `loose`: one cell averages runs"), "{stderr}");
    assert!(stderr.contains("Magnitude / m (differ in sparsity)"), "{stderr}");
    // The well-specified artefacts draw no such warning.
    for name in ["`tab`", "`line`", "`bars`"] {
        assert!(!stderr.contains(&format!("report {name}: ")), "{stderr}");
    }
}

/// Every shipped sweep, with a stand-in record per planned run: each report slot finds its runs
/// and no cell mixes settings (Table 9's Wanda row once averaged per-output and per-layer Wanda).
#[test]
fn paper_configs_take_one_setting_per_cell() {
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let cfg = SweepConfig::load(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path());
        let mut plan = Vec::new();
        for (i, run) in cfg.expand().unwrap().into_iter().enumerate() {
            let names = &run.spec.eval.names;
            let result = json!({
                "ppl": names.iter().map(|n| (n.clone(), json!(10.0))).collect::<serde_json::Map<_, _>>(),
                "zero_shot": names.iter().map(|n| (n.clone(), json!({"n": 10, "acc": 0.5}))).collect::<serde_json::Map<_, _>>(),
                "zero_shot_mean_acc": 0.5, "prune_seconds": 1.0, "total_seconds": 2.0
            });
            let id = format!("{i:016x}");
            store
                .put(&record(
                    id.clone(),
                    run.label.clone(),
                    run.method_label,
                    run.spec,
                    result,
                ))
                .unwrap();
            plan.push(PlanEntry { id, label: run.label });
        }
        let sweep = SweepFile {
            name: cfg.name.clone(),
            config: path.display().to_string(),
            runs: plan,
            artefacts: cfg.artefacts(&path).unwrap(),
            unresolved: Vec::new(),
        };
        write_atomic(&tmp.path().join("sweep.json"), &serde_json::to_vec(&sweep).unwrap()).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_repro"))
            .arg("report")
            .arg(tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("warning"),
            "{}: {stderr}",
            path.display()
        );
    }
}

#[test]
fn report_refuses_a_directory_without_a_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let e = format!("{:#}", report(tmp.path()).unwrap_err());
    assert!(e.contains("no sweep.json"), "{e}");
}

/// Metric options and expression parameters get a column each (a built-in's default where left
/// out), and so do the expression and the allocation.
#[test]
fn options_expressions_and_allocations_are_columns() {
    let cfg = SweepConfig::parse(
        "name: t\noutput: o\nmodels: [m]\nmethods: [ria, {name: ria, params: {a: 0.25}}, {name: act, metric: \"abs(W) * X^b\", params: {b: 2}}, {name: wanda, allocation: owl}]\nevaluation: {ppl: [wikitext2]}\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let records: Vec<Record> = cfg
        .expand()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            record(
                format!("{i:016x}"),
                r.label,
                r.method_label,
                r.spec,
                json!({"ppl": {"wikitext2": 10.0}}),
            )
        })
        .collect();
    let df = repro::report::frame::frame(&records).unwrap();
    let floats = |c: &str| {
        let col = df.column(c).unwrap().f64().unwrap().clone();
        (0..df.height()).map(|i| col.get(i)).collect::<Vec<_>>()
    };
    let texts = |c: &str| {
        let col = df.column(c).unwrap().str().unwrap().clone();
        (0..df.height())
            .map(|i| col.get(i).map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(floats("param_a"), [Some(0.5), Some(0.25), None, None]);
    assert_eq!(floats("param_b"), [None, None, Some(2.0), None]);
    assert_eq!(texts("metric"), [None, None, Some("abs(W) * X^b".into()), None]);
    assert_eq!(
        texts("allocation"),
        ["uniform", "uniform", "uniform", "owl"].map(|s| Some(s.to_string()))
    );
    assert_eq!(floats("owl_lambda"), [None, None, None, Some(0.08)]);
}
