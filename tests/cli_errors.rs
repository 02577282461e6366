//! Bad input through the real binary: a clear error naming the file and field, exit code 1, no panic.

mod common;
use common::*;
use std::path::Path;

/// A copy of llama-tiny-random whose config.json is `edit`ed and whose tensors are filtered by `keep`.
fn broken_model(dir: &Path, edit: impl Fn(&mut serde_json::Value), keep: impl Fn(&str) -> bool) {
    let src = fixtures().join("models/llama-tiny-random");
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
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
    assert!(e.contains("config.json not found") && e.contains(dir.to_str().unwrap()), "{e}");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = run_err(&["eval", "--model", dir.to_str().unwrap()]);
    assert!(e.contains("config.json") && e.contains("malformed JSON"), "{e}");
}

#[test]
fn missing_field_and_unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    broken_model(&a, |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    }, |_| true);
    let e = run_err(&["eval", "--model", a.to_str().unwrap()]);
    assert!(e.contains("config.json") && e.contains("missing field `hidden_size`"), "{e}");
    let b = tmp.path().join("b");
    broken_model(&b, |c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]), |_| true);
    let e = run_err(&["eval", "--model", b.to_str().unwrap()]);
    assert!(e.contains("`architectures` = \"GPT2LMHeadModel\" is not supported"), "{e}");
}

#[test]
fn missing_tensor_and_shape_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    broken_model(&a, |_| {}, |n| n != "model.layers.1.mlp.up_proj.weight");
    let e = run_err(&["eval", "--model", a.to_str().unwrap()]);
    assert!(e.contains("model.safetensors") && e.contains("missing weight tensor `model.layers.1.mlp.up_proj.weight`"), "{e}");
    let b = tmp.path().join("b");
    broken_model(&b, |c| c["intermediate_size"] = serde_json::json!(100), |_| true);
    let e = run_err(&["eval", "--model", b.to_str().unwrap()]);
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[172, 64]") && e.contains("[100, 64]"), "{e}");
    // A checkpoint cut short (an interrupted download) names the file and the tensor it cannot read.
    let c = tmp.path().join("c");
    broken_model(&c, |_| {}, |_| true);
    let bytes = std::fs::read(c.join("model.safetensors")).unwrap();
    std::fs::write(c.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    let e = run_err(&["eval", "--model", c.to_str().unwrap()]);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file") && e.contains("do not fit"), "{e}");
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
    assert!(e.contains("nobody/no-such-model") && e.contains("config.json") && e.contains("HF_HUB_OFFLINE"), "{e}");
}
