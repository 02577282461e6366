//! Streamed models (`--stream on`): blocks read from disk one at a time, pruned blocks written out
//! as the shards of a Hugging Face checkpoint. They must give exactly what a resident model gives.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// Every tensor of a saved checkpoint, single file or sharded.
fn checkpoint_tensors(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            out.extend(Tensor::read_safetensors(&path).unwrap());
        }
    }
    out
}

fn prune(model: &str, method: &str, pattern: &str, stream: &str, save: &Path) -> serde_json::Value {
    json_of(
        &repro()
            .args([
                "prune",
                "--model",
                &fixture_model(model),
                "--method",
                method,
                "--pattern",
                pattern,
            ])
            .args([
                "--calib",
                "c4:c4-format-sample",
                "--nsamples",
                "8",
                "--seqlen",
                "128",
                "--calib-batch-size",
                "3",
            ])
            .args([
                "--eval",
                "wikitext2,boolq",
                "--max-windows",
                "5",
                "--limit",
                "6",
                "--batch-size",
                "2",
            ])
            .args(["--stream", stream, "--json", "--save", save.to_str().unwrap()])
            .output()
            .unwrap(),
    )
}

/// Pruning, saving and evaluating block by block gives the very same weights, perplexity and
/// zero-shot scores as doing it in memory, for LLaMA and OPT (biases, `model.decoder.` names).
#[test]
fn streamed_pruning_equals_resident() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, method, pattern) in [
        ("llama-tiny", "wanda", "unstructured"),
        ("opt-tiny", "sparsegpt", "2:4"),
    ] {
        let resident_dir = tmp.path().join(format!("{model}-resident"));
        let streamed_dir = tmp.path().join(format!("{model}-streamed"));
        let resident = prune(model, method, pattern, "off", &resident_dir);
        let streamed = prune(model, method, pattern, "on", &streamed_dir);
        assert_eq!(resident["streamed"], false);
        assert_eq!(streamed["streamed"], true);
        for key in ["ppl", "zero_shot", "layers", "sparsity_actual"] {
            assert_eq!(
                streamed[key], resident[key],
                "{model}: `{key}` differs between streamed and resident"
            );
        }

        // Resident saves one file, streamed one shard per block plus one for the rest, with an index.
        assert!(resident_dir.join("model.safetensors").is_file());
        let index = golden(&streamed_dir.join("model.safetensors.index.json"));
        let n_blocks = resident["layers"].as_array().unwrap().len() / if model == "opt-tiny" { 6 } else { 7 };
        let last = format!("model-{:05}-of-{:05}.safetensors", n_blocks + 1, n_blocks + 1);
        let first = if model == "opt-tiny" {
            "model.decoder.layers.0.fc1.weight"
        } else {
            "model.layers.0.mlp.up_proj.weight"
        };
        assert_eq!(
            index["weight_map"][first],
            format!("model-00001-of-{:05}.safetensors", n_blocks + 1)
        );
        assert!(index["weight_map"].as_object().unwrap().values().any(|f| *f == last));
        let want = checkpoint_tensors(&resident_dir);
        let got = checkpoint_tensors(&streamed_dir);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{model}: tensor names"
        );
        let total: i64 = got.values().map(|t| t.numel() as i64 * 4).sum();
        assert_eq!(index["metadata"]["total_size"].as_i64().unwrap(), total);
        for (name, t) in &got {
            assert!(
                t.equal(&want[name]),
                "{model}: {name} differs between streamed and resident saves"
            );
        }

        // The sharded checkpoint loads like any other (resident and streamed) and scores the same.
        for stream in ["off", "on"] {
            let again = json_of(
                &repro()
                    .args([
                        "eval",
                        "--model",
                        streamed_dir.to_str().unwrap(),
                        "--ppl",
                        "wikitext2",
                        "--seqlen",
                        "128",
                    ])
                    .args(["--max-windows", "5", "--batch-size", "2", "--stream", stream, "--json"])
                    .output()
                    .unwrap(),
            );
            assert_eq!(
                again["ppl"], resident["ppl"],
                "{model}: reloaded with --stream {stream}"
            );
        }
    }
}

/// A save refuses a directory holding the other layout's weights from an earlier save (a
/// single file beside shards, or an index beside a single file: loaders would mix them up),
/// says what to do, and does so before any work, leaving the directory as it was.
#[test]
fn save_refuses_weights_of_the_other_layout() {
    let model = fixture_model("llama-tiny-random");
    for (stale, stream) in [("model.safetensors", "on"), ("model.safetensors.index.json", "off")] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(stale), b"old").unwrap();
        std::fs::write(tmp.path().join("config.json"), b"{}").unwrap();
        let dir = tmp.path().to_str().unwrap();
        let err = run_err(&[
            "prune",
            "--model",
            &model,
            "--method",
            "magnitude",
            "--stream",
            stream,
            "--save",
            dir,
        ]);
        assert!(
            err.contains(stale) && err.contains("remove it or save elsewhere"),
            "{err}"
        );
        assert!(!err.contains("sparsity"), "refused only after pruning: {err}");
        assert_eq!(std::fs::read(tmp.path().join("config.json")).unwrap(), b"{}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "{stream}: files were written"
        );
    }
}

/// Saving into the model's own directory is refused before anything is loaded or written.
#[test]
fn saving_over_the_source_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(&fixture_model("llama-tiny-random")).to_path_buf();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let before = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    for stream in ["off", "on"] {
        let dir = tmp.path().to_str().unwrap();
        let err = run_err(&[
            "prune",
            "--model",
            dir,
            "--method",
            "magnitude",
            "--stream",
            stream,
            "--save",
            dir,
        ]);
        assert!(
            err.contains("directory of the model") && err.contains("choose another directory"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(tmp.path().join("model.safetensors")).unwrap(), before);
}

/// A streamed save over an earlier save removes that save's repro.json, index and shards before
/// writing its own, so a run killed half way never leaves what looks like a complete checkpoint
/// mixing two models: loading the directory fails instead.
#[test]
fn an_interrupted_streamed_save_never_looks_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("saved");
    let d = dir.to_str().unwrap();
    let model = fixture_model("llama-tiny");
    let out = repro()
        .args([
            "prune",
            "--model",
            &model,
            "--method",
            "magnitude",
            "--stream",
            "on",
            "--seqlen",
            "64",
            "--save",
            d,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("repro.json").is_file() && dir.join("model.safetensors.index.json").is_file());

    let mut child = repro()
        .args([
            "prune", "--model", &model, "--method", "wanda", "--stream", "on", "--save", d,
        ])
        .args(["--calib", "c4:c4-format-sample", "--nsamples", "32", "--seqlen", "256"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while dir.join("repro.json").exists() {
        assert!(start.elapsed().as_secs() < 60, "the earlier save was never invalidated");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-run
    child.wait().unwrap();
    assert!(!dir.join("repro.json").exists() && !dir.join("model.safetensors.index.json").exists());
    let e = run_err(&["eval", "--model", d, "--seqlen", "64", "--max-windows", "1"]);
    assert!(e.contains("model.safetensors"), "{e}");
}

/// Temporary blocks of a run killed by a signal are removed by the next streamed run, while
/// those of a live process are left alone.
#[test]
fn orphaned_temporary_blocks_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let orphan = tmp.path().join("repro-blocks-999999999-abc"); // above Linux's largest pid
    let live = tmp.path().join(format!("repro-blocks-{}-abc", std::process::id()));
    for d in [&orphan, &live] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("model-00001-of-00005.safetensors"), b"old").unwrap();
    }
    let out = repro()
        .env("TMPDIR", tmp.path())
        .args([
            "prune",
            "--model",
            &fixture_model("llama-tiny-random"),
            "--method",
            "magnitude",
            "--stream",
            "on",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!orphan.exists() && live.exists());
}

/// Ctrl-C (SIGINT) or SIGTERM during a streamed run removes its temporary blocks at once and
/// exits with 130, instead of leaving up to a whole model's size in TMPDIR until the next run.
#[test]
fn an_interrupted_streamed_run_removes_its_temporary_blocks() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = repro()
            .env("TMPDIR", tmp.path())
            .args([
                "prune",
                "--model",
                &fixture_model("llama-tiny"),
                "--method",
                "wanda",
                "--stream",
                "on",
            ])
            .args(["--calib", "c4:c4-format-sample", "--nsamples", "32", "--seqlen", "256"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let prefix = format!("repro-blocks-{}-", child.id());
        let blocks = || {
            std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
        };
        let start = std::time::Instant::now();
        let dir = loop {
            if let Some(d) = blocks().filter(|d| std::fs::read_dir(d).unwrap().next().is_some()) {
                break d;
            }
            assert!(
                start.elapsed().as_secs() < 60 && child.try_wait().unwrap().is_none(),
                "no block was written"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "signal {signal}");
        assert!(!dir.exists(), "signal {signal}: {} left behind", dir.display());
    }
}
