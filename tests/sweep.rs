//! Sweep configs (errors, grid expansion), stable run ids, and resuming a killed sweep.

mod common;

use common::{fixture_model, fixtures, hf_cache_snapshot, output_text, repro, success_text, CACHE_COMMIT};
use repro::config::SweepConfig;
use repro::hub::Hub;
use repro::sweep::plan;
use repro::sweep::store::Store;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BASE: &str = "name: t
output: OUT
models: [MODEL]
methods: [dense, magnitude, wanda, sparsegpt]
sparsities: [0.5]
patterns: [unstructured, \"2:4\"]
calibration: {dataset: c4:c4-format-sample, nsamples: [8], seeds: [0]}
seqlen: 64
evaluation: {ppl: [wikitext2], max_windows: 4}
";

/// The stdout then stderr of `repro COMMAND CONFIG --dry-run EXTRA...`, which must succeed.
fn dry_run(command: &str, config: &Path, extra: &[&str]) -> String {
    success_text(
        &repro()
            .args([command, config.to_str().unwrap(), "--dry-run"])
            .args(extra)
            .output()
            .unwrap(),
    )
}

fn parse(text: &str) -> anyhow::Result<SweepConfig> {
    SweepConfig::parse(text, Path::new("configs/t.yaml"))
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).expect_err("config should be rejected"))
}

#[test]
fn config_errors_name_file_line_column_and_allowed_values() {
    let e = err(&BASE.replace("methods:", "methdos:"));
    assert!(
        e.contains("configs/t.yaml:4:1")
            && e.contains("unknown field `methdos`")
            && e.contains("expected one of")
            && e.contains("`methods`"),
        "{e}"
    );
    let e = err(&BASE.replace("\"2:4\"", "\"5:4\""));
    assert!(
        e.contains("configs/t.yaml:6:") && e.contains("5:4") && e.contains("0 < N < M"),
        "{e}"
    );
    let e = err(&BASE.replace("sparsities: [0.5]", "sparsities: [1.5]"));
    assert!(
        e.contains("configs/t.yaml:5:") && e.contains("sparsity 1.5 must be in [0, 1)"),
        "{e}"
    );
    let e = err(&BASE.replace("wanda,", "wandaa,"));
    assert!(
        e.contains("configs/t.yaml:4:") && e.contains("unknown method `wandaa`") && e.contains("dense"),
        "{e}"
    );
    let e = err(&BASE.replace("max_windows: 4", "max_windows: 4, tasks: [boolqq]"));
    assert!(e.contains("configs/t.yaml:9:") && e.contains("boolqq"), "{e}");
    let e = err(&BASE.replace("seeds: [0]", "seeds: [0], nsample: [3]"));
    assert!(e.contains("unknown field `nsample`") && e.contains("`nsamples`"), "{e}");
    let e = err(&format!("{BASE}device: gpu\n"));
    assert!(e.contains("unknown device `gpu`") && e.contains("cuda:N"), "{e}");
    let e = err(&BASE.replace(
        "[dense, magnitude, wanda, sparsegpt]",
        "[{name: wanda, use_variant: true}]",
    ));
    assert!(e.contains("unstructured sparsity only"), "{e}");
    let e = err(&BASE.replace("{ppl: [wikitext2], max_windows: 4}", "{max_windows: 4}"));
    assert!(e.contains("`evaluation` names nothing to measure"), "{e}");
    let e = err(&BASE.replace("max_windows: 4}", "max_windows: 4, model_limits: {MODLE: 20}}"));
    assert!(
        e.contains("configs/t.yaml") && e.contains("`evaluation.model_limits`") && e.contains("`MODLE`"),
        "{e}"
    );
    // Values that would silently drop runs or fail every one of them.
    let e = err(&BASE.replace("sparsities: [0.5]", "sparsities: []"));
    assert!(
        e.contains("configs/t.yaml") && e.contains("`sparsities` is empty"),
        "{e}"
    );
    let e = err(&BASE.replace("seqlen: 64", "seqlen: 0"));
    assert!(e.contains("`seqlen` must be at least 2"), "{e}");
    let e = err(&BASE.replace("max_windows: 4}", "max_windows: 0}"));
    assert!(e.contains("`evaluation.max_windows` must be at least 1"), "{e}");
    let e = err(&BASE.replace("max_windows: 4}", "max_windows: 4, limit: 0}"));
    assert!(e.contains("`evaluation.limit` must be at least 1"), "{e}");
    let e = err(&BASE.replace("max_windows: 4}", "max_windows: 4, samples: true}"));
    assert!(
        e.contains("`evaluation.samples`") && e.contains("`tasks` names none"),
        "{e}"
    );
    let e = err(&format!("{BASE}include: [{{methods: [wanda], sparsities: []}}]\n"));
    assert!(e.contains("`include[0].sparsities` is empty"), "{e}");
    let e = err(&format!("{BASE}include: [{{methods: [wanda], nsamples: [0]}}]\n"));
    assert!(e.contains("`nsamples` contains 0"), "{e}");
    let e = err(&BASE.replace("ppl: [wikitext2]", "ppl: [wikitext2, boolq]"));
    assert!(
        e.contains("`evaluation.ppl` names `boolq`") && e.contains("go under `tasks`"),
        "{e}"
    );
    let e = err(&format!("{BASE}exclude: [{{method: wanda}}, {{method: wandaa}}]\n"));
    assert!(
        e.contains("configs/t.yaml") && e.contains("`exclude[1]` matches no run of the grid"),
        "{e}"
    );
    // An artefact missing a part its kind needs is refused with the config, not after the runs.
    let chart = "report:\n  - {name: c, title: t, kind: line, metric: \"ppl:wikitext2\", series: [{label: w, where: {method: wanda}}]}\n";
    let e = parse(&format!("{BASE}{chart}"))
        .unwrap()
        .artefacts(Path::new("configs/t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("configs/t.yaml") && e.contains("report `c`: a line chart needs `x`"),
        "{e}"
    );
    let table = |name: &str| {
        format!("  - {{name: \"{name}\", title: t, kind: table, metric: \"ppl:wikitext2\", rows: [{{label: r}}], columns: [{{label: c}}]}}\n")
    };
    let e = parse(&format!("{BASE}report:\n{}", table("../../elsewhere")))
        .unwrap()
        .artefacts(Path::new("configs/t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("becomes the file name in report/"), "{e}");
    let e = parse(&format!("{BASE}report:\n{}{}", table("t"), table("t")))
        .unwrap()
        .artefacts(Path::new("configs/t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("two report entries are named `t`"), "{e}");
    let long_paper = table("t").replace("rows: [{label: r}]", "rows: [{label: r, paper: [1.0, 2.0]}]");
    let e = parse(&format!("{BASE}report:\n{long_paper}"))
        .unwrap()
        .artefacts(Path::new("configs/t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`r` lists 2 paper values for 1 places"), "{e}");
    // A cell no run can fill (a corpus or task the sweep does not evaluate) is refused up front,
    // not found empty when the sweep has finished; a table column's own metric counts, and a
    // chart shows the artefact's.
    let artefacts_of = |report: String| {
        parse(&format!("{BASE}report:\n{report}"))
            .unwrap()
            .artefacts(Path::new("configs/t.yaml"))
            .map(|a| a.len())
            .map_err(|e| e.to_string())
    };
    let e = artefacts_of(table("p").replace("ppl:wikitext2", "ppl:c4")).unwrap_err();
    assert!(
        e.contains(
            "configs/t.yaml: report `p` shows `ppl:c4`, but `evaluation.ppl` measures wikitext2 only; add `c4` to it"
        ),
        "{e}"
    );
    let per_task = table("z").replace("columns: [{label: c}]", "columns: [{label: c, metric: \"acc:rte\"}]");
    let e = artefacts_of(per_task.clone()).unwrap_err();
    assert!(
        e.contains("report `z` shows `acc:rte`, but `evaluation.tasks` is empty; add `rte` to it"),
        "{e}"
    );
    let e = artefacts_of(
        chart
            .trim_start_matches("report:\n")
            .replace("\"ppl:wikitext2\"", "zero_shot_mean")
            .replace("series:", "x: {field: sparsity, values: [0.5], label: s}, series:"),
    )
    .unwrap_err();
    assert!(
        e.contains("shows `zero_shot_mean`, but `evaluation.tasks` is empty"),
        "{e}"
    );
    let with_tasks = |report: String| {
        parse(&format!(
            "{}report:\n{report}",
            BASE.replace("max_windows: 4}", "max_windows: 4, tasks: [rte, boolq]}")
        ))
        .unwrap()
        .artefacts(Path::new("configs/t.yaml"))
        .map(|a| a.len())
        .map_err(|e| e.to_string())
    };
    assert_eq!(with_tasks(per_task.clone()), Ok(1));
    // The artefact's own metric is not shown when every column has its own.
    assert_eq!(with_tasks(per_task.replace("ppl:wikitext2", "ppl:c4")), Ok(1));
    let e = with_tasks(per_task.replace("acc:rte", "acc:hellaswag")).unwrap_err();
    assert!(
        e.contains("`evaluation.tasks` runs rte, boolq only; add `hellaswag` to it, or show acc:rte"),
        "{e}"
    );
}

#[test]
fn model_limits_override_the_zero_shot_limit_per_model() {
    let text = BASE.replace("models: [MODEL]", "models: [MODEL, BIG]").replace(
        "max_windows: 4}",
        "max_windows: 4, limit: 100, model_limits: {BIG: 20}}",
    );
    let runs = parse(&text).unwrap().expand().unwrap();
    let limit = |m: &str| {
        runs.iter()
            .filter(|r| r.spec.model.model == m)
            .map(|r| r.spec.eval.limit)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(limit("MODEL"), [Some(100)].into());
    assert_eq!(limit("BIG"), [Some(20)].into());
}

#[test]
fn grid_expands_to_the_cross_product_with_shared_baselines() {
    let cfg = parse(
        &BASE
            .replace("seeds: [0]", "seeds: [0, 1]")
            .replace("sparsities: [0.5]", "sparsities: [0.3, 0.5]"),
    )
    .unwrap();
    let runs = cfg.expand().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    // dense once; magnitude (data-free) once per pattern/sparsity whatever the seeds; wanda and
    // sparsegpt for 2 sparsities + 2:4 (sparsity fixed at 0.5) x 2 seeds.
    assert_eq!(runs.len(), 1 + 3 + 2 * 3 * 2, "{labels:#?}");
    assert_eq!(labels.iter().filter(|l| l.contains("dense")).count(), 1);
    assert!(labels.contains(&"MODEL magnitude 2:4 0.5"));
    assert!(labels.contains(&"MODEL wanda unstructured 0.3 n8 seed1"));

    let with = BASE.to_string()
        + "exclude:\n  - {method: sparsegpt, pattern: \"2:4\"}\ninclude:\n  - {methods: [wanda], nsamples: [16, 32]}\n";
    let runs = parse(&with).unwrap().expand().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert!(!labels.iter().any(|l| l.contains("sparsegpt 2:4")), "{labels:#?}");
    assert!(
        labels.contains(&"MODEL wanda 2:4 0.5 n32 seed0") && labels.contains(&"MODEL wanda unstructured 0.5 n16 seed0"),
        "{labels:#?}"
    );
    assert_eq!(runs.len(), 7 - 1 + 4);
}

/// Run ids of existing methods were fixed before metric options and expressions existed; the
/// ids below were computed from the earlier settings layout (Python: sha256 of the sorted,
/// compact JSON of settings, model and data identities) and must not move.
#[test]
fn run_ids_of_existing_methods_are_pinned() {
    let text = "name: t\noutput: o\nmodels: [llama-tiny]\nmethods: [wanda, ria, {name: ria, params: {a: 0.5}}, {name: ria, params: {a: 0.25}}]\nevaluation: {ppl: [wikitext2]}\n";
    let runs = parse(text).unwrap().expand().unwrap();
    let model = serde_json::json!({"id": "llama-tiny", "sha256": "00"});
    let data = std::collections::BTreeMap::from([(
        "wikitext2".to_string(),
        serde_json::json!({"id": "wikitext", "revision": "abc"}),
    )]);
    let ids: Vec<String> = runs
        .iter()
        .map(|r| repro::sweep::identity::run_id(&r.spec, &model, &data))
        .collect();
    // RIA's explicit default `a` is the same run as the implicit one, so it is planned once.
    assert_eq!(runs.len(), 3, "{:?}", runs.iter().map(|r| &r.label).collect::<Vec<_>>());
    assert_eq!(ids[0], "3b38e2859eef3444", "wanda");
    assert_eq!(ids[1], "a2ce51a4ce71c14d", "ria");
    assert_ne!(ids[2], ids[1], "ria a=0.25");
}

#[test]
fn expression_metrics_sweep_their_parameters() {
    let methods = "[{name: act_pow, metric: \"abs(W) * X^a\", params: {a: [0.5, 1.0]}}, {name: ria, params: {a: [0.25, 0.5]}}, {name: mag, metric: \"abs(W)\", group: per-layer}]";
    let cfg = parse(
        &BASE
            .replace("[dense, magnitude, wanda, sparsegpt]", methods)
            .replace("[unstructured, \"2:4\"]", "[unstructured]"),
    )
    .unwrap();
    let runs = cfg.expand().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "MODEL act_pow a=0.5 unstructured 0.5 n8 seed0",
            "MODEL act_pow a=1 unstructured 0.5 n8 seed0",
            "MODEL ria a=0.25 unstructured 0.5 n8 seed0",
            "MODEL ria a=0.5 unstructured 0.5 n8 seed0",
            "MODEL mag (per-layer) unstructured 0.5",
        ]
    );
    let p = runs[1].spec.prune.as_ref().unwrap();
    assert_eq!(
        (p.options.metric.as_deref(), p.options.params.get("a")),
        (Some("abs(W) * X^a"), Some(&1.0))
    );
    // A data-free expression is normalised like magnitude: no calibration settings.
    assert_eq!(runs[4].spec.prune.as_ref().unwrap().nsamples, 0);
    // `where:` selects on parameters, a built-in's default included.
    let pick = |yaml: &str| {
        let s: repro::config::Selector = serde_yaml::from_str(yaml).unwrap();
        runs.iter()
            .filter(|r| s.matches(&r.spec, &r.method_label))
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(pick("{params: {a: 0.5}}"), [labels[0], labels[3]]);
    assert_eq!(pick("{method: ria, params: {a: 0.5}}"), [labels[3]]);
    assert_eq!(pick("{method: act_pow}").len(), 2);

    for (methods, msg) in [
        (
            "[{name: wanda, metric: \"abs(W)\"}]",
            "`wanda` is a built-in method; give the expression a name of its own",
        ),
        ("[{name: m, metric: \"abs(W * ^ X)\"}]", "column 9"),
        (
            "[{name: m, metric: \"abs(W) * X^b\", params: {a: 1}}]",
            "unknown name `b`",
        ),
        (
            "[{name: m, metric: \"abs(W) * X^a\", params: {a: []}}]",
            "`params.a` is an empty list",
        ),
        (
            "[{name: sparsegpt, params: {a: 1}}]",
            "method `sparsegpt` has no option",
        ),
        ("[{name: ria, params: {b: 1}}]", "method `ria` has no option `b`"),
    ] {
        let e = err(&BASE.replace("[dense, magnitude, wanda, sparsegpt]", methods));
        assert!(e.contains("configs/t.yaml:4:") && e.contains(msg), "{methods}: {e}");
    }
    let e = err(&BASE.replace(
        "[dense, magnitude, wanda, sparsegpt]",
        "[{name: m, metric: \"abs(W)\"}, {name: m, metric: \"abs(W) * X\"}]",
    ));
    assert!(
        e.contains("configs/t.yaml: `methods` name `m` twice for different metrics"),
        "{e}"
    );
}

#[test]
fn allocations_sweep_and_select() {
    let text = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[wanda, {name: wanda, allocation: {owl: {lambda: 0.1}}, label: wanda+owl}, {name: magnitude, allocation: [0.4, 0.6]}]")
        .replace("sparsities: [0.5]", "sparsities: [0.5, 0.7]\nallocations: [uniform, owl]");
    let runs = parse(&text).unwrap().expand().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "MODEL wanda unstructured 0.5 n8 seed0",
            "MODEL wanda unstructured 0.7 n8 seed0",
            "MODEL wanda owl unstructured 0.5 n8 seed0",
            "MODEL wanda owl unstructured 0.7 n8 seed0",
            "MODEL wanda 2:4 0.5 n8 seed0",
            "MODEL wanda+owl unstructured 0.5 n8 seed0",
            "MODEL wanda+owl unstructured 0.7 n8 seed0",
            // A per-block list fixes the sparsity at its mean.
            "MODEL magnitude per-block unstructured 0.5",
        ],
        "N:M runs uniform only"
    );
    let pick = |yaml: &str| {
        let s: repro::config::Selector = serde_yaml::from_str(yaml).unwrap();
        runs.iter().filter(|r| s.matches(&r.spec, &r.method_label)).count()
    };
    assert_eq!(pick("{allocation: owl}"), 2);
    assert_eq!(pick("{allocation: {owl: {lambda: 0.1}}}"), 2);
    assert_eq!(pick("{allocation: uniform}"), 3);
    assert_eq!(pick("{method: wanda+owl, sparsity: 0.7}"), 1);
    let e = err(&BASE.replace(
        "[dense, magnitude, wanda, sparsegpt]",
        "[{name: wanda, allocation: [0.5, 1.5]}]",
    ));
    assert!(
        e.contains("configs/t.yaml:4:") && e.contains("per-block sparsity 1.5 must be in [0, 1)"),
        "{e}"
    );
    let e = err(&format!("{BASE}allocations: [owl, sideways]\n"));
    assert!(
        e.contains("configs/t.yaml") && e.contains("allocation `sideways`"),
        "{e}"
    );
}

/// A sweep over a private copy of llama-tiny-random, so its files can be changed.
struct Sandbox {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    out: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        for e in std::fs::read_dir(fixture_model("llama-tiny-random")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
        }
        let out = tmp.path().join("out");
        Sandbox { _tmp: tmp, model, out }
    }

    /// `text` with MODEL and OUT filled in.
    fn fill(&self, text: &str) -> String {
        text.replace("MODEL", self.model.to_str().unwrap())
            .replace("OUT", self.out.to_str().unwrap())
    }

    fn config(&self, text: &str) -> SweepConfig {
        parse(&self.fill(text)).unwrap()
    }

    /// Writes the filled-in `text` as a config file beside the output directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.out.parent().unwrap().join(name);
        std::fs::write(&path, self.fill(text)).unwrap();
        path
    }

    /// label -> id
    fn ids(&self, text: &str) -> Vec<(String, String)> {
        let cfg = self.config(text);
        let store = Store::open(&cfg.output);
        let hub = Hub::new(Some(fixtures()));
        plan(&cfg, &hub, &store, false, true)
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.run.label.replace(self.model.to_str().unwrap(), "M"),
                    p.id().to_string(),
                )
            })
            .collect()
    }
}

fn id_of<'a>(ids: &'a [(String, String)], label: &str) -> &'a str {
    &ids.iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no run {label} in {ids:?}"))
        .1
}

#[test]
fn run_ids_change_when_and_only_when_inputs_change() {
    let sb = Sandbox::new();
    let a = sb.ids(BASE);
    assert_eq!(a.len(), 7);
    assert!(a.iter().all(|(_, id)| id.len() == 16 && id != "unresolved"), "{a:?}");
    // Same settings in another order, another output directory, touched files: same ids.
    assert_eq!(a, sb.ids(BASE));
    let reordered = sb.ids(&BASE.replace(
        "[dense, magnitude, wanda, sparsegpt]",
        "[sparsegpt, wanda, magnitude, dense]",
    ));
    for (label, id) in &a {
        assert_eq!(id_of(&reordered, label), id, "{label}");
    }
    let moved = sb.ids(&BASE.replace("output: OUT", "output: OUT/elsewhere"));
    assert_eq!(a, moved);
    // Streaming blocks from disk does not change results, so it is not part of the identity.
    assert_eq!(a, sb.ids(&format!("{BASE}stream: on\n")));
    // Nor does naming the default dtype, in any spelling; another dtype does change it.
    assert_eq!(a, sb.ids(&format!("{BASE}dtype: f32\n")));
    assert_eq!(a, sb.ids(&format!("{BASE}dtype: float32\n")));
    assert!(sb
        .ids(&format!("{BASE}dtype: bf16\n"))
        .iter()
        .zip(&a)
        .all(|(x, y)| x.1 != y.1));
    let weights = sb.model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&weights, &bytes).unwrap();
    assert_eq!(a, sb.ids(BASE), "rewriting identical content keeps the ids");
    // The explicit default group is the same run as the implicit one.
    // (A group does not apply to N:M patterns, so this grid is unstructured only.)
    let unstructured = BASE.replace("[unstructured, \"2:4\"]", "[unstructured]");
    let explicit = sb.ids(&unstructured.replace("wanda,", "{name: wanda, group: per-output},"));
    assert_eq!(
        id_of(&explicit, "M wanda (per-output) unstructured 0.5 n8 seed0"),
        id_of(&a, "M wanda unstructured 0.5 n8 seed0")
    );

    // A new seed changes calibrated runs only.
    let seeded = sb.ids(&BASE.replace("seeds: [0]", "seeds: [1]"));
    assert_eq!(
        id_of(&seeded, "M magnitude unstructured 0.5"),
        id_of(&a, "M magnitude unstructured 0.5")
    );
    assert_eq!(id_of(&seeded, "M dense"), id_of(&a, "M dense"));
    assert_ne!(
        id_of(&seeded, "M wanda unstructured 0.5 n8 seed1"),
        id_of(&a, "M wanda unstructured 0.5 n8 seed0")
    );
    // An evaluation setting changes every run.
    let windows = sb.ids(&BASE.replace("max_windows: 4", "max_windows: 5"));
    assert!(windows.iter().zip(&a).all(|(x, y)| x.1 != y.1));
    // Changed model content changes every run.
    let cfg = sb.model.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n")).unwrap();
    let changed = sb.ids(BASE);
    assert!(changed.iter().zip(&a).all(|(x, y)| x.1 != y.1), "{changed:?}");
}

fn write_config(sb: &Sandbox, name: &str, out: &Path, extra: &str) -> PathBuf {
    let report = "report:\n  - name: ppl\n    title: t\n    kind: table\n    metric: ppl:wikitext2\n    rows:\n      - {label: dense, where: {method: dense}}\n      - {label: wanda, where: {method: wanda, pattern: unstructured}}\n      - {label: magnitude 2:4, where: {method: magnitude, pattern: \"2:4\"}}\n    columns:\n      - {label: m, where: {}}\n";
    sb.write(
        name,
        &format!("{BASE}{extra}{report}").replace("OUT", out.to_str().unwrap()),
    )
}

fn records(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out.join("runs")).map_or(vec![], |d| {
        d.map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect()
    })
}

#[test]
fn a_killed_sweep_resumes_without_rerunning_finished_runs() {
    let sb = Sandbox::new();
    let killed_out = sb.out.join("killed");
    let cfg = write_config(&sb, "k.yaml", &killed_out, "");
    let mut child = repro()
        .args(["run", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while records(&killed_out).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "no record appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    // (A second worker on the same directory would share the runs: tests/workers.rs.)
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done: Vec<(PathBuf, String)> = records(&killed_out)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    assert!(
        !done.is_empty() && done.len() < 7,
        "kill -9 should land mid-sweep ({} records)",
        done.len()
    );

    let out = repro().args(["run", cfg.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{} cached", done.len())), "{stdout}");
    for (path, text) in &done {
        assert_eq!(
            &std::fs::read_to_string(path).unwrap(),
            text,
            "{} was rewritten",
            path.display()
        );
    }
    assert_eq!(records(&killed_out).len(), 7);

    // A clean sweep with every model streamed block by block gives the same table.
    let clean_out = sb.out.join("clean");
    let clean = write_config(&sb, "c.yaml", &clean_out, "stream: on\n");
    let out = repro().args(["run", clean.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let streamed = |d: &Path| {
        records(d)
            .iter()
            .map(|p| common::golden(p)["result"]["streamed"].clone())
            .collect::<Vec<_>>()
    };
    assert!(
        streamed(&clean_out).iter().all(|s| *s == true),
        "{:?}",
        streamed(&clean_out)
    );
    assert!(streamed(&killed_out).iter().all(|s| *s == false));
    let table = |d: &Path| std::fs::read_to_string(d.join("report/ppl.md")).unwrap();
    assert_eq!(table(&killed_out), table(&clean_out));
    assert!(
        !table(&clean_out).contains('–'),
        "every cell has a value:\n{}",
        table(&clean_out)
    );

    // A dry run now finds everything cached and runs nothing.
    let out = repro()
        .args(["run", clean.to_str().unwrap(), "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("7 runs, 7 cached, 0 to run"), "{stdout}");
}

/// The parts file a sweep writing to `out` keeps for its run, once its content satisfies `ready`
/// (polled; files are written whole, never seen half way).
fn wait_for_parts(out: &Path, ready: impl Fn(&serde_json::Value) -> bool) -> PathBuf {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(out.join("partial")).ok().and_then(|d| {
            d.map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "json"))
        });
        let stored = found
            .as_ref()
            .and_then(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok());
        if let (Some(path), Some(stored)) = (found, stored) {
            if ready(&stored) {
                return path;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no such parts file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs sweep `config` (writing to `out`) and kills it (SIGKILL, as a time limit's last word) as
/// soon as its parts file satisfies `ready`, before the run's record; returns the file's path.
fn kill_when_kept(config: &Path, out: &Path, ready: impl Fn(&serde_json::Value) -> bool) -> PathBuf {
    let mut child = repro()
        .args(["run", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = wait_for_parts(out, ready);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(records(out).is_empty(), "kill -9 should land before the record");
    partial
}

/// Runs `grid` uninterrupted into a clean output and checks its one record and samples equal
/// `resumed`'s (the record of the same run, resumed in the sandbox's output); returns its record.
fn same_as_uninterrupted(sb: &Sandbox, grid: &str, resumed: &serde_json::Value) -> serde_json::Value {
    let clean_out = sb.out.parent().unwrap().join("clean");
    let clean = sb.write(
        "c.yaml",
        &grid.replace("output: OUT", &format!("output: {}", clean_out.display())),
    );
    success_text(&repro().args(["run", clean.to_str().unwrap()]).output().unwrap());
    let uninterrupted = common::golden(&records(&clean_out)[0]);
    let id = resumed["id"].as_str().unwrap();
    assert_eq!(uninterrupted["id"], id);
    assert_eq!(measured(resumed), measured(&uninterrupted));
    let samples = |out: &Path| std::fs::read_to_string(out.join(format!("samples/{id}.jsonl"))).unwrap();
    assert_eq!(samples(&sb.out), samples(&clean_out));
    uninterrupted
}

/// The GFLOP a dry run's plan of one run to run estimates.
fn compute(plan: &str) -> f64 {
    let total = plan.lines().find(|l| l.contains("total: 1 run(s) to run")).unwrap();
    let before = total.split(" GFLOP compute").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// What a record measured, for comparing a resumed run with an uninterrupted one.
fn measured(record: &serde_json::Value) -> [serde_json::Value; 6] {
    let r = &record["result"];
    [
        "sparsity_actual",
        "ppl",
        "ppl_details",
        "zero_shot",
        "zero_shot_tokens",
        "zero_shot_mean_acc",
    ]
    .map(|k| r[k].clone())
}

/// A run killed part way through its evaluation keeps the parts it finished (`partial/<id>.json`);
/// running the sweep again prunes again, checks the weights are the same, and evaluates only what
/// is missing. Its record and samples equal an uninterrupted run's; parts measured on other
/// weights are never taken.
#[test]
fn a_run_killed_mid_evaluation_resumes_its_finished_parts() {
    let sb = Sandbox::new();
    let grid = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[wanda]")
        .replace("[unstructured, \"2:4\"]", "[unstructured]")
        .replace(
            "max_windows: 4}",
            "max_windows: 4, tasks: [rte, arc_easy, hellaswag], limit: 150, samples: true}",
        );
    let killed = sb.write("k.yaml", &grid);
    let partial = kill_when_kept(&killed, &sb.out, |_| true);
    let kept = std::fs::read(&partial).unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&kept).unwrap();
    let finished: Vec<String> = ["ppl", "zero_shot"]
        .iter()
        .flat_map(|k| stored[k].as_object().unwrap().keys().cloned())
        .collect();
    assert!((1..4).contains(&finished.len()), "{finished:?}");
    assert_eq!(finished[0], "wikitext2", "perplexity runs first");
    let plan = dry_run("run", &killed, &["--verbose"]);
    assert!(
        plan.contains(&format!(
            "resumes: {} finished by an earlier attempt (not in the time shown)",
            finished.join(", ")
        )),
        "{plan}"
    );
    // What is left costs the pruning again and the missing parts only: less than the whole run.
    let aside = partial.with_extension("aside");
    std::fs::rename(&partial, &aside).unwrap();
    let whole = dry_run("run", &killed, &["--verbose"]);
    std::fs::rename(&aside, &partial).unwrap();
    assert!(!whole.contains("resumes:"), "{whole}");
    assert!(compute(&plan) < compute(&whole), "{plan}\n{whole}");
    let status = repro().arg("status").arg(&sb.out).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("pending") && status.contains(&format!("({} finished)", finished.join(", "))),
        "{status}"
    );

    let run = |cfg: &Path| success_text(&repro().args(["run", cfg.to_str().unwrap()]).output().unwrap());
    let text = run(&killed);
    assert!(text.contains("resumed"), "{text}");
    assert!(!partial.exists(), "the record holds the parts now");
    let resumed = common::golden(&records(&sb.out)[0]);

    let uninterrupted = same_as_uninterrupted(&sb, &grid, &resumed);
    let mut taken: Vec<String> = serde_json::from_value(resumed["result"]["resumed"].clone()).unwrap();
    taken.sort();
    let mut finished = finished;
    finished.sort();
    assert_eq!(taken, finished);
    let earlier: f64 = ["ppl", "zero_shot"]
        .iter()
        .flat_map(|k| stored[k].as_object().unwrap().values())
        .map(|part| part["seconds"].as_f64().unwrap())
        .sum();
    let resumed_seconds = resumed["result"]["resumed_seconds"].as_f64().unwrap();
    assert!((resumed_seconds - earlier).abs() < 1e-9, "{resumed_seconds} {earlier}");
    assert!(uninterrupted["result"].get("resumed").is_none());

    // Parts of other weights: set aside with a warning, everything evaluated again.
    let forged = String::from_utf8(kept)
        .unwrap()
        .replacen(stored["weights"].as_str().unwrap(), &"0".repeat(64), 1);
    std::fs::write(&partial, forged).unwrap();
    std::fs::remove_file(&records(&sb.out)[0]).unwrap();
    run(&killed);
    let redone = common::golden(&records(&sb.out)[0]);
    assert!(redone["result"].get("resumed").is_none());
    assert!(
        redone["result"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("measured on other weights"),
        "{redone}"
    );
    assert_eq!(measured(&redone), measured(&uninterrupted));
    // `repro status` shows the warning under its run, so it is not lost among the logs.
    let status = success_text(&repro().arg("status").arg(&sb.out).output().unwrap());
    assert!(
        status.contains("1 done, 0 running, 0 failed, 0 pending; 1 with warnings"),
        "{status}"
    );
    let warning_line = status.lines().find(|l| l.contains("warning:")).unwrap_or_default();
    assert!(warning_line.contains("measured on other weights"), "{status}");
}

/// A run killed inside a task keeps the task's finished slices of 1000 documents: `repro status`
/// and the dry run say so, the next attempt scores only the documents after them, and its record
/// and samples equal an uninterrupted run's. winogrande whole: 1267 documents, one kept slice.
#[test]
fn a_run_killed_inside_a_task_goes_on_from_its_kept_slices() {
    let sb = Sandbox::new();
    let grid = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[magnitude]")
        .replace("[unstructured, \"2:4\"]", "[unstructured]")
        .replace("max_windows: 4}", "max_windows: 4, tasks: [winogrande], samples: true}");
    let killed = sb.write("k.yaml", &grid);
    let partial = kill_when_kept(&killed, &sb.out, |stored| {
        stored["zero_shot_started"]["winogrande"]["docs"] == 1000
    });
    let kept = "wikitext2 finished; winogrande's first 1000 documents scored";
    let status = success_text(&repro().arg("status").arg(&sb.out).output().unwrap());
    assert!(
        status.contains("pending") && status.contains(&format!("({kept})")),
        "{status}"
    );
    let json = repro().args(["status", "--json"]).arg(&sb.out).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["finished_parts"], serde_json::json!(["wikitext2"]), "{json}");
    assert_eq!(run["started_tasks"], serde_json::json!({"winogrande": 1000}), "{json}");
    let plan = dry_run("run", &killed, &["--verbose"]);
    assert!(
        plan.contains(&format!(
            "resumes: {kept} by an earlier attempt (not in the time shown)"
        )),
        "{plan}"
    );
    // The scored documents leave the estimate: less than with the finished corpus alone.
    let text = std::fs::read_to_string(&partial).unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&text).unwrap();
    stored["zero_shot_started"] = serde_json::json!({});
    std::fs::write(&partial, stored.to_string()).unwrap();
    let corpus_only = dry_run("run", &killed, &["--verbose"]);
    std::fs::write(&partial, text).unwrap();
    assert!(compute(&plan) < compute(&corpus_only), "{plan}\n{corpus_only}");

    let run = |cfg: &Path| success_text(&repro().args(["run", cfg.to_str().unwrap()]).output().unwrap());
    let text = run(&killed);
    assert!(
        text.contains("(resumed wikitext2, winogrande (first 1000 documents) from an earlier attempt)"),
        "{text}"
    );
    let resumed = common::golden(&records(&sb.out)[0]);
    let taken = &resumed["result"]["resumed"];
    assert_eq!(
        taken,
        &serde_json::json!(["wikitext2", "winogrande (first 1000 documents)"])
    );
    same_as_uninterrupted(&sb, &grid, &resumed);
}

/// `evaluation.samples` writes each run's per-document zero-shot outcomes beside its record, the
/// same outcomes its record aggregates, and leaves run ids as they were.
#[test]
fn sweep_samples_sit_beside_their_records_and_keep_run_ids() {
    let sb = Sandbox::new();
    let grid = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[dense, magnitude]")
        .replace("[unstructured, \"2:4\"]", "[unstructured]")
        .replace("max_windows: 4}", "max_windows: 4, tasks: [rte, arc_easy], limit: 5}");
    let with_samples = grid.replace("limit: 5}", "limit: 5, samples: true}");
    assert_eq!(sb.ids(&grid), sb.ids(&with_samples));
    let cfg = sb.write("s.yaml", &with_samples);
    let out = repro().args(["run", cfg.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = records(&sb.out);
    assert_eq!(done.len(), 2);
    for record in done {
        let r = common::golden(&record);
        let id = r["id"].as_str().unwrap();
        let text = std::fs::read_to_string(sb.out.join(format!("samples/{id}.jsonl"))).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 10, "{id}: 5 documents of each task");
        for (task, lines) in ["rte", "arc_easy"].iter().zip(lines.chunks(5)) {
            assert!(lines.iter().all(|l| l["task"] == *task));
            let acc = lines.iter().map(|l| l["acc"].as_f64().unwrap()).sum::<f64>() / 5.0;
            assert_eq!(
                acc,
                r["result"]["zero_shot"][task]["acc"].as_f64().unwrap(),
                "{id} {task}"
            );
        }
    }
    // `repro compare` picks a sweep's runs by label and pairs their samples.
    let compare = |a: &str, b: &str| {
        repro()
            .args(["compare", "--json", "--run-dir", sb.out.to_str().unwrap(), a, b])
            .output()
            .unwrap()
    };
    let paired = common::json_of(&compare("dense", "magnitude"));
    assert!(paired["a"].as_str().unwrap().contains("model dense ("), "{paired}");
    let docs: Vec<_> = paired["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["task"].clone(), t["docs"].clone()))
        .collect();
    assert_eq!(
        docs,
        [
            ("rte".into(), 5.into()),
            ("arc_easy".into(), 5.into()),
            ("all".into(), 10.into())
        ]
    );
    let out = compare("*", "dense");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("`*` matches 2 runs"), "{e}");
}

#[test]
fn dry_run_only_and_fail_fast() {
    let sb = Sandbox::new();
    // 3:7 passes the config check (0 < N < M) but the layers' widths (64, 172) are not multiples
    // of 7, so those runs fail when they prune.
    let text = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[magnitude, dense]")
        .replace("[unstructured, \"2:4\"]", "[\"3:7\", \"2:4\"]");
    let cfg = sb.write("f.yaml", &text);
    let run = |extra: &[&str]| {
        let out = repro().arg("run").arg(&cfg).args(extra).output().unwrap();
        (out.status.success(), output_text(&out))
    };

    let (ok, text) = run(&["--dry-run"]);
    assert!(ok && text.contains("3 runs, 0 cached, 3 to run"), "{text}");
    assert!(!sb.out.exists(), "a dry run writes nothing");

    let (ok, text) = run(&["--only", "*dense"]);
    assert!(ok && text.contains("1 runs, 0 cached, 1 to run"), "{text}");
    assert_eq!(records(&sb.out).len(), 1);

    let (ok, text) = run(&["--fail-fast"]);
    assert!(
        !ok && text.contains("--fail-fast") && text.contains("multiple of M = 7"),
        "{text}"
    );
    assert_eq!(
        records(&sb.out).len(),
        2,
        "the failure is recorded, the 2:4 run after it never starts"
    );
    assert!(
        text.contains("report: 2 of 3 planned runs have records (1 ok)"),
        "the report is still written: {text}"
    );

    let (ok, text) = run(&[]);
    assert!(!ok && text.contains("1 run(s) failed"), "{text}");
    let all: Vec<serde_json::Value> = records(&sb.out)
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(all.len(), 3, "the sweep went on past the failing run");
    let failed: Vec<_> = all.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("multiple of M = 7")
            && failed[0]["label"].as_str().unwrap().contains("3:7")
    );
    assert!(
        sb.out.join("results.csv").is_file(),
        "the report is written despite the failure"
    );

    // `--only` reruns a subset; the report still holds every finished run.
    let (ok, text) = run(&["--only", "*dense", "--force"]);
    assert!(
        ok && text.contains("1 runs, 0 cached, 1 to run") && text.contains("3 of 3 planned runs"),
        "{text}"
    );
    let csv = std::fs::read_to_string(sb.out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let (ok, text) = run(&["--only", "no-such-run"]);
    assert!(
        !ok && text.contains("--only `no-such-run` matches none of the 3 runs"),
        "{text}"
    );

    // A dry run estimates a forced rerun with the rates its plan's finished runs measured, and writes nothing.
    let hashes = sb.out.join(".fingerprints.json");
    let before = std::fs::metadata(&hashes).unwrap().modified().unwrap();
    let (ok, text) = run(&["--dry-run", "--only", "dense", "--force"]);
    assert!(
        ok && text.contains("scaled phase by phase to the 2 finished run(s) of this plan"),
        "{text}"
    );
    let todo: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("todo")).collect();
    assert!(
        todo.len() == 1 && todo[0].ends_with("dense") && !todo[0].contains(" ? "),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&hashes).unwrap().modified().unwrap(),
        before,
        "a dry run rewrote the hash cache"
    );
}

/// A dry run names each problem once, with its cause in plain words and the fix, and counts the
/// runs it blocks under it (`--verbose` lists them); the runnable runs are listed with an
/// estimate, and the wall time is spread over `--workers`.
#[test]
fn dry_run_names_each_problem_once() {
    let sb = Sandbox::new();
    let text = BASE.replace(
        "models: [MODEL]",
        "models: [MODEL, no-such-org/no-such-model, other-org/missing]",
    );
    let cfg = sb.write("p.yaml", &text);
    let empty_cache = sb.out.parent().unwrap().join("empty-cache");
    let run = |extra: &[&str]| {
        let out = repro()
            .arg("run")
            .arg(&cfg)
            .arg("--dry-run")
            .args(extra)
            .env("HF_HUB_CACHE", &empty_cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&[]);
    assert!(text.contains("21 runs, 0 cached, 21 to run"), "{text}");
    assert!(text.contains("1 problem(s), 14 run(s) cannot run as planned"), "{text}");
    let line = "14 run(s) - models `no-such-org/no-such-model` (7), `other-org/missing` (7): offline and not cached\n      fix: download it where there is network";
    assert!(text.contains(line), "{text}");
    for model in ["no-such-org/no-such-model", "other-org/missing"] {
        assert!(
            !text.contains(&format!("{model} dense")),
            "a problem's runs are counted, not listed: {text}"
        );
    }
    assert_eq!(text.matches("HF_HUB_OFFLINE").count(), 1, "the problem once: {text}");
    let todo: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("todo")).collect();
    assert_eq!(todo.len(), 7, "{text}");
    assert!(
        todo.iter().all(|l| l.contains(" s ") && l.contains("MiB")),
        "every runnable run has a time and memory: {text}"
    );
    assert!(
        text.contains("wall time on 1 worker(s)") && text.contains("fits"),
        "{text}"
    );
    let verbose = run(&["--verbose", "--workers", "3"]);
    assert!(
        verbose.contains("no-such-org/no-such-model dense") && verbose.contains("wall time on 3 worker(s)"),
        "{verbose}"
    );
    assert!(
        verbose.contains("calibration") && verbose.contains("zero-shot"),
        "each run's phases: {verbose}"
    );
    assert!(!sb.out.exists(), "a dry run writes nothing");
}

/// A window longer than the model's positions fails every run of the model as it loads; the dry
/// run names it as the model's problem with the fix, and `repro slurm` submits none of its runs
/// rather than let each fail after its wait in the queue.
#[test]
fn a_window_longer_than_the_model_is_a_problem_before_anything_runs() {
    let sb = Sandbox::new();
    let cfg = sb.write("w.yaml", &BASE.replace("seqlen: 64", "seqlen: 200"));
    let plan = dry_run("run", &cfg, &[]);
    assert!(plan.contains("1 problem(s), 7 run(s) cannot run as planned"), "{plan}");
    assert!(
        plan.contains(
            "seqlen 200 is longer than its max_position_embeddings (128 in config.json)\n      fix: set `seqlen:` to at most 128"
        ),
        "{plan}"
    );
    assert!(!plan.lines().any(|l| l.trim_start().starts_with("todo")), "{plan}");
    let text = dry_run("slurm", &cfg, &[]);
    assert!(
        text.contains("warning: 7 run(s) of `") && text.contains("are not submitted: seqlen 200 is longer"),
        "{text}"
    );
    assert!(
        text.contains("0 to submit") && text.contains("nothing to submit"),
        "{text}"
    );
    // The window the model has is fine.
    let fits = sb.write("f.yaml", &BASE.replace("seqlen: 64", "seqlen: 128"));
    let plan = dry_run("run", &fits, &[]);
    assert!(!plan.contains("problem(s)"), "{plan}");
    assert_eq!(
        plan.lines().filter(|l| l.trim_start().starts_with("todo")).count(),
        7,
        "{plan}"
    );
    assert!(!sb.out.exists(), "nothing ran");
}

/// Report rows and columns that no run of the sweep fills are named before anything runs (dry
/// run, run and slurm), not found as empty cells when the sweep has finished.
#[test]
fn report_slots_no_run_fills_are_named_up_front() {
    let sb = Sandbox::new();
    let report = "report:\n  - {name: r, title: t, kind: table, metric: \"ppl:wikitext2\", rows: [{label: Wanda, where: {method: wanda}}, {label: Wandaa, where: {method: wandaa}}], columns: [{label: tiny, where: {model: MODEL}}, {label: big, where: {model: org/big}}]}\n";
    let cfg = sb.write("r.yaml", &format!("{BASE}{report}"));
    let warning = "warning: report `r`: `Wandaa`, `big` match(es) no run of this sweep and will stay empty";
    for command in ["run", "slurm"] {
        let text = dry_run(command, &cfg, &[]);
        assert!(text.contains(warning), "{command}: {text}");
    }
    let fine = sb.write(
        "f.yaml",
        &format!(
            "{BASE}{}",
            report.replace("wandaa", "sparsegpt").replace("org/big", "MODEL")
        ),
    );
    let text = dry_run("run", &fine, &[]);
    assert!(!text.contains("warning: report"), "{text}");
}

/// Records are only trusted when they are what they claim, and a forced rerun that fails does
/// not throw away a successful record.
#[test]
fn records_are_checked_and_never_replaced_by_failures() {
    let sb = Sandbox::new();
    let text = BASE
        .replace("[dense, magnitude, wanda, sparsegpt]", "[dense, magnitude]")
        .replace("[unstructured, \"2:4\"]", "[unstructured]");
    let cfg = sb.write("r.yaml", &format!("{text}stream: on\n"));
    let run = |tmpdir: &str, extra: &[&str]| {
        let out = repro()
            .env("TMPDIR", tmpdir)
            .arg("run")
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    let tmp = std::env::temp_dir();
    let (ok, text) = run(tmp.to_str().unwrap(), &[]);
    assert!(ok, "{text}");
    let before: Vec<String> = records(&sb.out)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();

    // With no temporary directory the streamed pruned run fails; its good record stays.
    let (ok, text) = run("/nonexistent", &["--force"]);
    assert!(!ok && text.contains("its earlier successful record is kept"), "{text}");
    let after: Vec<String> = records(&sb.out)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let statuses = |rs: &[String]| {
        rs.iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["status"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses(&after), statuses(&before));
    assert!(statuses(&after).iter().all(|s| s == "ok"));

    // A record of the previous layout (schema 1) is read as it is.
    let path = &records(&sb.out)[0];
    std::fs::write(
        path,
        std::fs::read_to_string(path)
            .unwrap()
            .replacen("\"schema\": 2", "\"schema\": 1", 1),
    )
    .unwrap();
    let (ok, text) = run(tmp.to_str().unwrap(), &[]);
    assert!(ok && text.contains("2 runs, 2 cached, 0 to run"), "{text}");
    // A record whose id or schema is not what its file name claims is redone, with a warning.
    std::fs::write(
        path,
        std::fs::read_to_string(path)
            .unwrap()
            .replacen("\"schema\": 1", "\"schema\": 99", 1),
    )
    .unwrap();
    let (ok, text) = run(tmp.to_str().unwrap(), &[]);
    assert!(
        ok && text.contains("2 runs, 1 cached, 1 to run") && text.contains("not schema 1 or 2"),
        "{text}"
    );

    // Another sweep pointed at this output would hide these records from its report: refused.
    let other = sb.write(
        "o.yaml",
        &BASE
            .replace("name: t", "name: other")
            .replace("[dense, magnitude, wanda, sparsegpt]", "[dense]"),
    );
    let out = repro().arg("run").arg(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("holds the records of sweep `t`"),
        "{stderr}"
    );
}

/// Every shipped config loads, renders only artefacts that exist, and builds the paper's grid
/// (Table 2: 7 models x (dense + 3 methods x 3 patterns) = 70; Table 7: 3 metrics x 5 groups).
#[test]
fn paper_configs_expand_to_the_papers_grids() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let expected = [
        ("quickstart", 9),
        ("table2", 70),
        ("table4", 8),
        ("table7", 15),
        ("figure2", 16),
        ("table8", 21),
        ("table9_10_12", 42),
        ("table17", 136),
        ("table18_19", 49),
        ("metrics", 29),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = SweepConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let name = path.file_stem().unwrap().to_str().unwrap();
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no expected size for {name}"))
            .1;
        assert_eq!(cfg.expand().unwrap().len(), want, "{name}");
        assert!(!cfg.artefacts(&path).unwrap().is_empty(), "{name} renders nothing");
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}

/// Table 7's grid on a tiny model: every metric x comparison group runs and fills its cell, and
/// the (input, 1) column is the same for all three metrics, as the paper observes (within one
/// input channel the norm and the inverse-Hessian diagonal are constants, so the ranking is |W|'s).
#[test]
fn table7_renders_every_metric_and_group() {
    let sb = Sandbox::new();
    let groups = [
        "per-layer",
        "per-input",
        "per-input-128",
        "per-output",
        "per-output-128",
    ];
    let methods: Vec<String> = ["magnitude", "sparsegpt_metric", "wanda"]
        .iter()
        .flat_map(|m| groups.iter().map(move |g| format!("{{name: {m}, group: {g}}}")))
        .collect();
    let text = BASE
        .replace(
            "[dense, magnitude, wanda, sparsegpt]",
            &format!("[{}]", methods.join(", ")),
        )
        .replace("[unstructured, \"2:4\"]", "[unstructured]")
        + "report: [table7]\n";
    let cfg = sb.write("t7.yaml", &text);
    let out = repro().arg("run").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = std::fs::read_to_string(sb.out.join("report/table7.md")).unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Pruning metric"))
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows.iter().all(|r| r.matches("(paper ").count() == 5) && !table.contains('–'),
        "every cell filled:\n{table}"
    );
    // The numbers themselves, from the records (a random model's perplexities print as 4e3).
    let ppl = |method: &str, group: &str| {
        let r = records(&sb.out)
            .iter()
            .map(|p| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap())
            .find(|r| r["settings"]["prune"]["method"] == method && r["settings"]["prune"]["group"] == group)
            .unwrap_or_else(|| panic!("no run {method} {group}"));
        r["result"]["ppl"]["wikitext2"].as_f64().unwrap()
    };
    let per_input = ppl("magnitude", "per-input");
    assert_eq!(ppl("wanda", "per-input"), per_input);
    assert_eq!(ppl("sparsegpt_metric", "per-input"), per_input);
    for g in ["per-layer", "per-input-128", "per-output", "per-output-128"] {
        assert_ne!(ppl("wanda", g), ppl("sparsegpt_metric", g), "{g}");
        assert_ne!(ppl("wanda", g), ppl("magnitude", g), "{g}");
    }
}

/// A hub model that is neither local nor cached cannot be identified offline: its runs are
/// listed as unresolved with the reason, and the other models' runs still go ahead.
#[test]
fn unidentifiable_hub_models_do_not_stop_the_others() {
    let sb = Sandbox::new();
    let text = BASE
        .replace("models: [MODEL]", "models: [MODEL, no-such-org/no-such-model]")
        .replace("[dense, magnitude, wanda, sparsegpt]", "[dense]");
    let cfg = sb.write("u.yaml", &text);
    let out = repro()
        .arg("run")
        .arg(&cfg)
        .env("HF_HUB_CACHE", sb.out.parent().unwrap().join("empty-cache"))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("unresolved")
            && text.contains("no-such-org/no-such-model")
            && text.contains("HF_HUB_OFFLINE is set"),
        "{text}"
    );
    assert!(text.contains("1 run(s) failed"), "{text}");
    assert_eq!(records(&sb.out).len(), 1, "the local model's dense run is recorded");
    // The report counts the unidentified run as planned and says why it has no record.
    assert!(text.contains("report: 1 of 2 planned runs have records"), "{text}");
    assert!(
        text.contains("planned run `no-such-org/no-such-model dense` could not be identified"),
        "{text}"
    );
}

/// A model in the Hugging Face cache under `$HF_HUB_CACHE` is both loaded from there and
/// identified by the commit its `refs/main` names: loading and run identity read one cache.
#[test]
fn hf_hub_cache_serves_loading_and_identity() {
    let sb = Sandbox::new();
    let cache = sb.out.parent().unwrap().join("hub-cache");
    let snapshot = hf_cache_snapshot(&cache, "models--some-org--tiny");
    for e in std::fs::read_dir(&sb.model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, snapshot.join(p.file_name().unwrap())).unwrap();
    }
    let text = BASE
        .replace("models: [MODEL]", "models: [some-org/tiny]")
        .replace("[dense, magnitude, wanda, sparsegpt]", "[dense]");
    let cfg = sb.write("c.yaml", &text);
    let out = repro()
        .arg("run")
        .arg(&cfg)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HOME", sb.out.parent().unwrap().join("hf-home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&records(&sb.out)[0]).unwrap()).unwrap();
    assert_eq!(
        record["model_identity"],
        serde_json::json!({"id": "some-org/tiny", "revision": CACHE_COMMIT})
    );
    assert!(record["result"]["ppl"]["wikitext2"].as_f64().unwrap().is_finite());
}
