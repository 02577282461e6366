//! Bad input through the real binary: a clear error naming the file and field, exit code 1, no panic.

mod common;
use common::*;
use std::path::Path;

/// A copy of llama-tiny-random whose config.json is `edit`ed and whose tensors are filtered by `keep`.
fn broken_model(dir: &Path, edit: impl Fn(&mut serde_json::Value), keep: impl Fn(&str) -> bool) {
    let src = fixtures().join("models/llama-tiny-random");
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let tensors = tch::Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    let kept: Vec<_> = tensors.into_iter().filter(|(n, _)| keep(n)).collect();
    tch::Tensor::write_safetensors(&kept, dir.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn missing_and_malformed_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let e = run_err(&["eval", "--model", dir.to_str().unwrap()]);
    assert!(
        e.contains("config.json not found") && e.contains(dir.to_str().unwrap()),
        "{e}"
    );
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = run_err(&["eval", "--model", dir.to_str().unwrap()]);
    assert!(e.contains("config.json") && e.contains("malformed JSON"), "{e}");
}

#[test]
fn missing_field_and_unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    broken_model(
        &a,
        |c| {
            c.as_object_mut().unwrap().remove("hidden_size");
        },
        |_| true,
    );
    let e = run_err(&["eval", "--model", a.to_str().unwrap()]);
    assert!(
        e.contains("config.json") && e.contains("missing field `hidden_size`"),
        "{e}"
    );
    let b = tmp.path().join("b");
    broken_model(
        &b,
        |c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]),
        |_| true,
    );
    let e = run_err(&["eval", "--model", b.to_str().unwrap()]);
    assert!(
        e.contains("`architectures` = \"GPT2LMHeadModel\" is not supported"),
        "{e}"
    );
    let c = tmp.path().join("c");
    broken_model(&c, |c| c["rope_scaling"] = serde_json::json!({"factor": 4.0}), |_| true);
    let e = run_err(&["eval", "--model", c.to_str().unwrap()]);
    assert!(
        e.contains("config.json") && e.contains("`rope_scaling` names no `rope_type`"),
        "{e}"
    );
}

#[test]
fn missing_tensor_and_shape_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    broken_model(&a, |_| {}, |n| n != "model.layers.1.mlp.up_proj.weight");
    let e = run_err(&["eval", "--model", a.to_str().unwrap()]);
    assert!(
        e.contains("model.safetensors") && e.contains("missing weight tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
    let b = tmp.path().join("b");
    broken_model(&b, |c| c["intermediate_size"] = serde_json::json!(100), |_| true);
    let e = run_err(&["eval", "--model", b.to_str().unwrap()]);
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[172, 64]") && e.contains("[100, 64]"),
        "{e}"
    );
    // A checkpoint cut short (an interrupted download) names the file and the tensor it cannot read.
    let c = tmp.path().join("c");
    broken_model(&c, |_| {}, |_| true);
    let bytes = std::fs::read(c.join("model.safetensors")).unwrap();
    std::fs::write(c.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    let e = run_err(&["eval", "--model", c.to_str().unwrap()]);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file") && e.contains("do not fit"),
        "{e}"
    );
    std::fs::write(c.join("model.safetensors"), &bytes[..4]).unwrap();
    let e = run_err(&["eval", "--model", c.to_str().unwrap()]);
    assert!(e.contains("model.safetensors") && e.contains("header length"), "{e}");
}

#[test]
fn unknown_dtype_device_and_empty_dataset() {
    let m = fixture_model("llama-tiny-random");
    let e = run_err(&["eval", "--model", &m, "--dtype", "int3"]);
    assert!(e.contains("unknown dtype `int3`"), "{e}");
    let e = run_err(&["eval", "--model", &m, "--device", "tpu"]);
    assert!(e.contains("unknown device `tpu`"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = run_err(&["eval", "--model", &m, "--ppl", empty.to_str().unwrap()]);
    assert!(e.contains("empty.jsonl") && e.contains("no rows"), "{e}");
}

#[test]
fn offline_unknown_hub_id_names_where_it_looked() {
    let e = run_err(&["eval", "--model", "nobody/no-such-model"]);
    assert!(
        e.contains("nobody/no-such-model") && e.contains("config.json") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

/// Settings that cannot work are refused with the flag and the fix before a model is loaded
/// or pruned, rather than after hours of work or as a libtorch panic.
#[test]
fn impossible_settings_are_refused_up_front() {
    let m = fixture_model("llama-tiny-random");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let calib = ["--calib", "c4:c4-format-sample", "--seqlen", "64"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["eval", "--seqlen", "1000"],
            "seqlen 1000 (--seqlen, or a sweep's `seqlen:`) is longer than the model's max_position_embeddings (128 in config.json)",
        ),
        (
            vec!["eval", "--ppl", "arc_easy"],
            "`arc_easy` is a zero-shot task; pass it with --tasks",
        ),
        (
            vec!["eval", "--ppl", "/nowhere/held-out.txt"],
            "/nowhere/held-out.txt: no such file",
        ),
        (
            vec!["eval", "--ppl", "wikitxt2"],
            "`wikitxt2` is not a known corpus (wikitext2, c4)",
        ),
        (vec!["eval", "--max-windows", "0"], "--max-windows must be at least 1"),
        (
            vec!["eval", "--tasks", "rte", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (vec!["eval", "--batch-size", "0"], "--batch-size must be at least 1"),
        (
            [&["prune", "--method", "sparsegpt", "--nsamples", "0"][..], &calib].concat(),
            "--nsamples must be at least 1",
        ),
        (
            [&["prune", "--method", "wanda", "--calib-batch-size", "0"][..], &calib].concat(),
            "--calib-batch-size must be at least 1",
        ),
        (
            [
                &["prune", "--method", "wanda", "--nsamples", "100000000000"][..],
                &calib,
            ]
            .concat(),
            "use a smaller --nsamples or --seqlen",
        ),
        (
            vec!["prune", "--method", "wanda", "--calib", "/nowhere/calib.jsonl"],
            "--calib /nowhere/calib.jsonl: no such file",
        ),
        (
            vec!["prune", "--method", "magnitude", "--eval", "wikitext2,wikitxt2"],
            "`wikitxt2` is not a known corpus",
        ),
        (
            vec!["prune", "--method", "magnitude", "--pattern", "2:3"],
            "layer `self_attn.q_proj` has 64 inputs, not a multiple of M = 3",
        ),
        (
            vec!["prune", "--method", "magnitude", "--limit", "5"],
            "--limit applies to zero-shot tasks, and none is asked for",
        ),
        (
            vec!["eval", "--samples", "samples.jsonl"],
            "--samples applies to zero-shot tasks, and none is asked for",
        ),
        (
            vec!["eval", "--tasks", "rte", "--samples", "/proc/no-such-dir/samples.jsonl"],
            "--samples /proc/no-such-dir/samples.jsonl: cannot create the file",
        ),
        (
            vec!["prune", "--method", "magnitude", "--eval", "rte", "--max-windows", "5"],
            "--max-windows applies to perplexity corpora, and none is asked for",
        ),
        (
            vec!["eval", "--tasks", "rte", "--max-windows", "5"],
            "--max-windows applies to perplexity corpora",
        ),
        (
            vec!["prune", "--method", "magnitude", "--save", file.to_str().unwrap()],
            "exists and is not a directory",
        ),
    ];
    for (args, msg) in cases {
        let out = repro()
            .args([args[0], "--model", &m])
            .args(&args[1..])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(msg) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        assert!(
            stdout.is_empty(),
            "{args:?}: refused only after pruning or evaluating: {stdout}"
        );
    }
}

/// A tokenizer that can produce ids beyond the model's embedding table (a larger vocabulary, one
/// id out of range, or a BOS id from config.json) is refused at load time, not by a libtorch panic.
#[test]
fn tokenizer_ids_beyond_the_embedding_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let refused = |dir: &Path, what: &str| {
        let e = run_err(&[
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--seqlen",
            "16",
            "--max-windows",
            "1",
        ]);
        assert!(
            e.contains(what) && e.contains("config.json's `vocab_size` is 4096") && !e.contains("panicked"),
            "{e}"
        );
    };
    broken_model(&dir, |_| {}, |_| true);
    std::fs::copy(
        fixtures().join("tokenizers/llama-2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    refused(&dir, "produces token id 31999");

    broken_model(&dir, |_| {}, |_| true);
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"]["▁the"] = serde_json::json!(9999);
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    refused(&dir, "produces token id 9999 (▁the)");

    broken_model(&dir, |c| c["bos_token_id"] = serde_json::json!(99999), |_| true);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<nonexistent>", "add_bos_token": true}"#,
    )
    .unwrap();
    refused(&dir, "produces token id 99999 (the BOS token");
}

/// A config.json naming fewer blocks than the checkpoint holds runs (as transformers does) but says so.
#[test]
fn blocks_beyond_num_hidden_layers_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    broken_model(&dir, |c| c["num_hidden_layers"] = serde_json::json!(1), |_| true);
    let out = repro()
        .args([
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--seqlen",
            "32",
            "--max-windows",
            "1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("more blocks than config.json's `num_hidden_layers` = 1; only the first 1 are used"),
        "{stderr}"
    );
}

/// A zero-shot task whose data cannot be found fails before the model is pruned.
#[test]
fn missing_task_data_fails_before_pruning() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = tmp.path().join("mirror");
    std::fs::create_dir_all(mirror.join("models")).unwrap();
    std::fs::create_dir_all(mirror.join("datasets")).unwrap();
    std::os::unix::fs::symlink(
        fixtures().join("models/llama-tiny-random"),
        mirror.join("models/llama-tiny-random"),
    )
    .unwrap();
    let out = repro()
        .env("HF_HUB_CACHE", tmp.path().join("empty-cache"))
        .args([
            "--hub-mirror",
            mirror.to_str().unwrap(),
            "prune",
            "--model",
            "llama-tiny-random",
            "--method",
            "magnitude",
            "--eval",
            "boolq",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("task boolq") && stderr.contains("boolq/validation-00000-of-00001.parquet"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "pruned before failing: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Rewrites the named tensors of a copied model.
fn edit_weights(dir: &Path, edit: impl Fn(&str, &tch::Tensor) -> Option<tch::Tensor>) {
    let mut tensors = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    for (name, t) in tensors.iter_mut() {
        if let Some(new) = edit(name, t) {
            *t = new;
        }
    }
    tch::Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

/// An evaluation that fails after pruning (here logits beyond f16's range make every loss
/// non-finite, which magnitude pruning never sees) still leaves the pruned model saved, and the
/// error says so.
#[test]
fn a_failed_evaluation_keeps_the_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    broken_model(&dir, |_| {}, |_| true);
    edit_weights(&dir, |name, t| {
        ["model.norm.weight", "model.embed_tokens.weight"]
            .contains(&name)
            .then(|| t.full_like(60000.0))
    });
    let save = tmp.path().join("pruned");
    let e = run_err(&[
        "prune",
        "--model",
        dir.to_str().unwrap(),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--seqlen",
        "16",
        "--dtype",
        "f16",
        "--eval",
        "wikitext2",
        "--max-windows",
        "2",
        "--save",
        save.to_str().unwrap(),
    ]);
    assert!(
        e.contains(&format!("the model was saved to {}", save.display())) && e.contains("non-finite"),
        "{e}"
    );
    let saved = tch::Tensor::read_safetensors(save.join("model.safetensors")).unwrap();
    let (_, q) = saved
        .iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let zeros = q.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
    assert!(
        (q.numel() as i64 / 2..q.numel() as i64 / 2 + 8).contains(&zeros),
        "half of q_proj pruned (and f16 ties at the threshold): {zeros}"
    );
    assert!(save.join("repro.json").is_file());
}

/// Defects of config.json and the checkpoint are named (file, field or tensor) before any work:
/// a streamed run checks every block's tensors up front instead of failing at the broken block.
#[test]
fn broken_checkpoints_are_named_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let d = dir.to_str().unwrap().to_string();
    let save = tmp.path().join("saved");
    let refused = |extra: &[&str], what: &str| {
        let calib = if extra.contains(&"--calib") {
            &[][..]
        } else {
            &["--calib", "c4:c4-format-sample"][..]
        };
        let out = repro()
            .args([
                "prune",
                "--model",
                &d,
                "--method",
                "wanda",
                "--seqlen",
                "16",
                "--nsamples",
                "2",
            ])
            .args(calib)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(what) && !stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "{what}: work done before the error");
    };
    broken_model(&dir, |c| c["num_hidden_layers"] = serde_json::json!(0), |_| true);
    refused(&[], "field `num_hidden_layers` is 0");
    broken_model(&dir, |c| c["hidden_size"] = serde_json::json!("64"), |_| true);
    refused(&[], "field `hidden_size`: invalid type: string \"64\"");
    broken_model(&dir, |c| c["max_position_embeddings"] = serde_json::json!(0), |_| true);
    refused(
        &[],
        "`max_position_embeddings` = 0, but a window needs at least 2 positions",
    );

    broken_model(&dir, |_| {}, |n| n != "model.layers.1.mlp.up_proj.weight");
    refused(
        &["--stream", "on", "--save", save.to_str().unwrap()],
        "missing weight tensor `model.layers.1.mlp.up_proj.weight`",
    );
    assert!(
        !save.join("model-00001-of-00003.safetensors").exists(),
        "block 0 was pruned and written before the check"
    );

    // A header whose shape overflows any size, and an index that lists no tensors.
    let header = br#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    refused(
        &[],
        "tensor `x`: offsets (0, 0) do not fit shape [4294967296, 4294967296]",
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {}}"#).unwrap();
    refused(&[], "missing or empty object field `weight_map`");

    broken_model(&dir, |_| {}, |_| true);
    refused(
        &["--calib", tmp.path().to_str().unwrap()],
        "a directory; name one file in it",
    );
}

/// Weights that are NaN or infinite, or that only become infinite in f16, are refused when the
/// model is read, naming the tensor: they would otherwise turn every later mask into noise.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let d = dir.to_str().unwrap().to_string();
    broken_model(&dir, |_| {}, |_| true);
    edit_weights(&dir, |name, t| {
        (name == "model.layers.1.self_attn.q_proj.weight")
            .then(|| t.index_fill(0, &tch::Tensor::from_slice(&[3i64]), f64::NAN))
    });
    let e = run_err(&["prune", "--model", &d, "--method", "magnitude", "--seqlen", "16"]);
    assert!(
        e.contains(
            "tensor `model.layers.1.self_attn.q_proj.weight` holds NaN or infinite values; the checkpoint is damaged"
        ),
        "{e}"
    );

    broken_model(&dir, |_| {}, |_| true);
    edit_weights(&dir, |name, t| {
        (name == "model.layers.0.mlp.down_proj.weight").then(|| t * 1e6)
    });
    let e = run_err(&[
        "prune",
        "--model",
        &d,
        "--method",
        "wanda",
        "--seqlen",
        "16",
        "--dtype",
        "f16",
        "--calib",
        "c4:c4-format-sample",
    ]);
    assert!(e.contains("tensor `model.layers.0.mlp.down_proj.weight` holds values beyond the range of Half (f16 ends at ±65504); use --dtype bf16 or f32"), "{e}");
    // In f32 the same checkpoint is fine.
    let out = repro()
        .args(["prune", "--model", &d, "--method", "magnitude", "--seqlen", "16"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Output cut short by its reader (`repro ... | head`) ends the program quietly, as SIGPIPE ends
/// any Unix tool, rather than panicking on the next line with a backtrace.
#[test]
fn a_closed_output_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let model = fixtures().join("models/llama-tiny-random");
    let mut child = repro()
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--ppl",
            "wikitext2",
            "--max-windows",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}
