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

/// SIGTERM in the middle of zero-shot scoring (resident model, oneDNN GEMMs running) ends the
/// process with 130 too, not with a crash in libtorch's static destructors.
#[test]
fn an_interrupted_evaluation_exits_with_130() {
    let mut child = repro()
        .args(["eval", "--model", &fixture_model("llama-tiny"), "--tasks", "hellaswag"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The whole validation split scores for minutes; loading and tokenizing take seconds.
    std::thread::sleep(std::time::Duration::from_secs(8));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the evaluation ended before the signal"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

/// Writes a random LLaMA-shaped checkpoint of `layers` blocks (hidden 1024, MLP 2816, the
/// LLaMA-2 tokenizer's 32000 tokens) into `dir`: blocks of 51 MB, embeddings and head of 262 MB.
fn random_llama(dir: &Path, layers: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let (h, inter, vocab) = (1024i64, 2816i64, 32000i64);
    tch::manual_seed(0);
    let normal = |rows: i64, cols: i64| Tensor::randn([rows, cols], (tch::Kind::Float, tch::Device::Cpu)) * 0.02;
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("model.embed_tokens.weight".into(), normal(vocab, h)),
        ("lm_head.weight".into(), normal(vocab, h)),
        (
            "model.norm.weight".into(),
            Tensor::ones([h], (tch::Kind::Float, tch::Device::Cpu)),
        ),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}.");
        for (name, rows, cols) in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, h),
            ("self_attn.v_proj", h, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            tensors.push((format!("{p}{name}.weight"), normal(rows, cols)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((
                format!("{p}{norm}.weight"),
                Tensor::ones([h], (tch::Kind::Float, tch::Device::Cpu)),
            ));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": vocab, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tokenizer = fixtures().join("tokenizers/llama-2");
    for f in [
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if tokenizer.join(f).exists() {
            std::fs::copy(tokenizer.join(f), dir.join(f)).unwrap();
        }
    }
}

/// A streamed model's peak memory does not grow with its depth: pruning (Wanda), evaluating and
/// saving a 6-block model peaks within half a block of a 2-block one (holding the blocks would
/// add 200 MB), and within the budget the memory plan states: embeddings and head, two blocks,
/// the calibration buffers and one block's statistics, plus 256 MiB for the runtime.
#[test]
fn streamed_peak_memory_does_not_grow_with_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let peak = |layers: usize| {
        let model = tmp.path().join(format!("llama-{layers}"));
        random_llama(&model, layers);
        let out = json_of(
            &repro()
                .args(["prune", "--model", model.to_str().unwrap(), "--method", "wanda"])
                .args(["--calib", "c4:c4-format-sample", "--nsamples", "4", "--seqlen", "128"])
                .args(["--eval", "wikitext2", "--max-windows", "1", "--stream", "on", "--json"])
                .args(["--save", tmp.path().join(format!("pruned-{layers}")).to_str().unwrap()])
                .output()
                .unwrap(),
        );
        std::fs::remove_dir_all(&model).unwrap();
        let plan = &out["memory_plan"];
        let field = |k: &str| plan[k].as_u64().unwrap_or_else(|| panic!("memory_plan.{k}: {plan}"));
        let bound = field("embeddings_and_head_bytes")
            + 2 * field("block_bytes")
            + 2 * field("calibration_buffer_bytes")
            + field("statistics_bytes")
            + (256 << 20);
        (out["peak_rss_bytes"].as_u64().unwrap(), bound, field("block_bytes"))
    };
    let (shallow, bound, block) = peak(2);
    let (deep, _, _) = peak(6);
    let mib = |b: u64| b >> 20;
    assert!(
        deep <= shallow + block / 2,
        "peak RSS grows with depth: {} MiB with 2 blocks, {} MiB with 6 (a block is {} MiB)",
        mib(shallow),
        mib(deep),
        mib(block)
    );
    for (layers, peak) in [(2, shallow), (6, deep)] {
        assert!(
            peak <= bound,
            "{layers} blocks: peak RSS {} MiB above the budget of {} MiB",
            mib(peak),
            mib(bound)
        );
    }
}

fn prune_spilled(model: &str, save: &Path, extra: &[&str]) -> serde_json::Value {
    json_of(
        &repro()
            .args(["prune", "--model", &fixture_model(model), "--method", "sparsegpt"])
            .args(["--calib", "c4:c4-format-sample", "--nsamples", "8", "--seqlen", "128"])
            .args(["--calib-batch-size", "3", "--eval", "wikitext2", "--max-windows", "3"])
            .args(["--stream", "on", "--json", "--save", save.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap(),
    )
}

/// Calibration buffers that do not fit the memory budget live in scratch files and give the
/// very same model and perplexity; the scratch directory is gone afterwards, and an orphan left
/// there by a killed run is removed.
#[test]
fn spilled_calibration_buffers_give_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let orphan = scratch.join("repro-calib-999999999-abc");
    std::fs::create_dir(&orphan).unwrap();
    for model in ["llama-tiny", "opt-tiny"] {
        let in_memory = prune_spilled(model, &tmp.path().join(format!("{model}-memory")), &[]);
        let spilled = prune_spilled(
            model,
            &tmp.path().join(format!("{model}-spilled")),
            &["--max-memory", "1M", "--scratch", scratch.to_str().unwrap()],
        );
        assert_eq!(in_memory["memory_plan"]["buffers_on_disk"], false);
        assert_eq!(spilled["memory_plan"]["buffers_on_disk"], true);
        let buffer = spilled["memory_plan"]["calibration_buffer_bytes"].as_u64().unwrap();
        assert!(buffer > 0);
        assert_eq!(spilled["memory_plan"]["scratch_bytes"].as_u64().unwrap(), 2 * buffer);
        for key in ["ppl", "layers"] {
            assert_eq!(
                spilled[key], in_memory[key],
                "{model}: `{key}` differs when buffers spill"
            );
        }
        let want = checkpoint_tensors(&tmp.path().join(format!("{model}-memory")));
        for (name, t) in checkpoint_tensors(&tmp.path().join(format!("{model}-spilled"))) {
            assert!(t.equal(&want[&name]), "{model}: {name} differs when buffers spill");
        }
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
    }
}

/// `--plan` prints the memory plan from config.json alone and runs nothing; a scratch directory
/// that does not exist is refused before any work.
#[test]
fn plan_prints_without_running_and_scratch_is_checked() {
    let model = fixture_model("llama-tiny");
    let out = repro()
        .args(["prune", "--model", &model, "--method", "wanda", "--nsamples", "128"])
        .args(["--plan", "--json", "--max-memory", "1M", "--stream", "on"])
        .output()
        .unwrap();
    let plan = json_of(&out);
    assert_eq!(plan["streamed"], true);
    assert_eq!(plan["buffers_on_disk"], true);
    // 128 samples x 512 positions x 256 wide x f32, twice.
    assert_eq!(plan["calibration_buffer_bytes"], 128 * 512 * 256 * 4);
    assert_eq!(plan["scratch_bytes"], 2 * 128 * 512 * 256 * 4);
    let text = repro()
        .args(["prune", "--model", &model, "--method", "wanda", "--plan"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("memory plan (f32)") && text.contains("calibration buffers"),
        "{text}"
    );

    let err = run_err(&[
        "prune",
        "--model",
        &model,
        "--method",
        "wanda",
        "--calib",
        "c4:c4-format-sample",
        "--nsamples",
        "4",
        "--seqlen",
        "64",
        "--max-memory",
        "1M",
        "--scratch",
        "/nonexistent/scratch",
    ]);
    assert!(
        err.contains("--scratch /nonexistent/scratch: no such directory"),
        "{err}"
    );
}
