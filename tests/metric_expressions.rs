//! Metric expressions: the formulas of the built-in metrics, written as expressions, prune the
//! fixture model to the very same masks; expression errors are reported before any model loads.

mod common;
use common::*;
use repro::calib::CalibSource;
use repro::hub::Hub;
use repro::model::{self, Streaming};
use repro::prune::allocation::Allocation;
use repro::prune::mask::{Group, Pattern};
use repro::prune::metric::Params;
use repro::prune::{prune_model, Method, MethodOptions};
use tch::{Device, Kind, Tensor};

/// The pruned weights of llama-tiny under method `name` with `options`, with 8 calibration
/// windows of 64 tokens.
fn pruned(name: &str, options: MethodOptions, pattern: Pattern) -> Vec<(String, Tensor)> {
    let hub = Hub::new(Some(fixtures()));
    let mut l = model::load(
        &hub,
        &fixture_model("llama-tiny"),
        Device::Cpu,
        Kind::Float,
        Streaming::Off,
    )
    .unwrap();
    let (_, w) = CalibSource::parse("c4:c4-format-sample")
        .windows(&hub, &l.tokenizer, 8, 64, 0)
        .unwrap();
    let calib = Tensor::from_slice(&w.concat()).view([8, 64]);
    let _g = tch::no_grad_guard();
    let method = Method::parse(name, &options, pattern).unwrap();
    prune_model(
        l.model.as_mut(),
        &method,
        pattern.default_sparsity(),
        pattern,
        &Allocation::Uniform,
        Some(&calib),
        4,
        None,
    )
    .unwrap();
    let mut weights = Vec::new();
    for b in 0..l.model.stack().n_blocks() {
        let block = l.model.stack().block(b).unwrap();
        weights.extend(
            block
                .linears()
                .into_iter()
                .map(|(name, lin)| (format!("{b}.{name}"), lin.weight.copy())),
        );
    }
    weights
}

#[test]
fn expressions_of_the_builtin_metrics_give_their_masks() {
    let cases = [
        ("magnitude", "abs(W)", Group::PerLayer),
        ("wanda", "abs(W) * X", Group::PerOutput),
        (
            "ria",
            "(abs(W)/rowsum(abs(W)) + abs(W)/colsum(abs(W))) * X^0.5",
            Group::PerOutput,
        ),
        ("sparsegpt_metric", "W^2 / Hinv^2", Group::InputBlocks),
    ];
    for pattern in [Pattern::Unstructured, Pattern::NM { n: 2, m: 4 }] {
        for (builtin, text, group) in cases {
            let group = (pattern == Pattern::Unstructured).then_some(group);
            let want = pruned(builtin, MethodOptions::default(), pattern);
            let expression = MethodOptions {
                metric: Some(text.to_string()),
                group,
                ..MethodOptions::default()
            };
            let got = pruned("mine", expression, pattern);
            assert_eq!(want.len(), 4 * 7);
            for ((name, a), (_, b)) in want.iter().zip(&got) {
                let zeros = a.eq(0.0).sum(Kind::Int64).int64_value(&[]);
                assert!(zeros > 0, "{builtin} {pattern}: {name} was not pruned");
                assert!(
                    a.eq(0.0).equal(&b.eq(0.0)),
                    "{builtin} {pattern} vs `{text}`: masks of {name} differ"
                );
            }
        }
    }
}

fn masks(name: &str, metric: Option<&str>, params: &Params) -> Vec<Tensor> {
    let options = MethodOptions {
        metric: metric.map(str::to_string),
        params: params.clone(),
        ..MethodOptions::default()
    };
    pruned(name, options, Pattern::Unstructured)
        .into_iter()
        .map(|(_, t)| t.eq(0.0))
        .collect()
}

#[test]
fn parameters_and_options_change_the_scores_they_name() {
    let (half, one) = (
        Params::from([("a".to_string(), 0.5)]),
        Params::from([("a".to_string(), 1.0)]),
    );
    let expr = Some("(abs(W)/rowsum(abs(W)) + abs(W)/colsum(abs(W))) * X^a");
    let expr_half = masks("ria_a", expr, &half);
    let expr_one = masks("ria_a", expr, &one);
    let ria_one = masks("ria", None, &one);
    assert!(
        expr_half.iter().zip(&expr_one).any(|(x, y)| !x.equal(y)),
        "a = 1 prunes differently from a = 0.5"
    );
    assert!(
        expr_one.iter().zip(&ria_one).all(|(x, y)| x.equal(y)),
        "RIA's option `a` is the expression's parameter"
    );
}

#[test]
fn expression_errors_come_before_loading_anything() {
    let cases: [(&[&str], &str); 7] = [
        (&["--metric", "abs(W * ^ X)"], "column 9"),
        (&["--metric", "abs(V) * X"], "unknown name `V`"),
        (&["--metric", "abs(W) * X^a"], "unknown name `a`"),
        (
            &["--metric", "abs(W) * X", "--param", "a=0.5"],
            "parameter `a` is declared but",
        ),
        (&["--metric", "X"], "a score needs one value per weight"),
        (
            &["--method", "wanda", "--param", "a=0.5"],
            "method `wanda` has no option `a`",
        ),
        (&["--method", "ria", "--param", "b=1"], "its options: a (default 0.5"),
    ];
    for (args, msg) in cases {
        // The model does not exist: the error must come from the expression, before loading.
        let stderr = run_err(&[&["prune", "--model", "no/such-model"], args].concat());
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }
}

/// A magnitude-like expression needs no calibration; a score that turns infinite names its layer.
#[test]
fn data_free_expressions_skip_calibration_and_bad_scores_name_the_layer() {
    let m = fixture_model("llama-tiny-random");
    let out = repro()
        .args([
            "prune",
            "--model",
            &m,
            "--metric",
            "abs(W)",
            "--group",
            "per-layer",
            "--calib",
            "no-such-file",
            "--json",
        ])
        .output()
        .unwrap();
    let r = json_of(&out);
    assert_eq!(r["method"], "abs(W)");
    assert_eq!(r["metric"], "abs(W)");
    assert!(r.get("calibration").is_none(), "{r}");
    let stderr = run_err(&["prune", "--model", &m, "--metric", "log(abs(W) - abs(W))"]);
    assert!(
        stderr.contains("pruning model.layers.0.self_attn.q_proj") && stderr.contains("non-finite scores"),
        "{stderr}"
    );
}
