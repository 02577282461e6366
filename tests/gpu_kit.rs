//! The GPU kit (scripts/gpu_kit.sh, run by scripts/test.sh before the tests): its size limit, the
//! `--torch-from` build it is made from, and its CPU smoke run, which goes through the same
//! gpu_check.sh a GPU node runs, against the torch 2.11 the kit was built for.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const KIT_TORCH: &str = "2.11.0";
const MAX_KIT_BYTES: u64 = 56 * 1024 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kit() -> PathBuf {
    let kit = root().join("target/gpu-kit");
    assert!(
        kit.join("gpu_check.sh").is_file(),
        "{} is missing: run scripts/gpu_kit.sh (scripts/test.sh does)",
        kit.display()
    );
    kit
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// A command with none of the variables that would point it at a libtorch or a mirror: the kit
/// and the `--torch-from` binary must find their own.
fn bare(program: &Path) -> Command {
    let mut c = Command::new(program);
    for var in [
        "LD_LIBRARY_PATH",
        "REPRO_HUB_MIRROR",
        "VIRTUAL_ENV",
        "LIBTORCH",
        "LIBTORCH_USE_PYTORCH",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn kit_fits_its_size_limit_and_holds_what_a_node_needs() {
    let kit = kit();
    let bytes = dir_bytes(&kit);
    assert!(bytes <= MAX_KIT_BYTES, "the kit is {bytes} bytes, over 56 MiB");
    for file in [
        "bin/repro.xz",
        "gpu_check.py",
        "make_random_llama.py",
        "fixtures/models/llama-tiny/model.safetensors",
        "fixtures/models/opt-tiny/model.safetensors",
        "fixtures/tokenizers/llama-2/tokenizer.json",
        "fixtures/datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet",
        "fixtures/datasets/c4-format-sample/en/c4-train.00000-of-01024.json.gz",
        "fixtures/datasets/Rowan/hellaswag/data/validation-00000-of-00001.parquet",
        "fixtures/datasets/aps/super_glue/boolq/validation-00000-of-00001.parquet",
    ] {
        assert!(kit.join(file).is_file(), "kit lacks {file}");
    }
    let no_libtorch = walk(&kit)
        .into_iter()
        .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with("libtorch"));
    assert!(no_libtorch, "the kit must use the node's libtorch, not carry one");
    let expected = common::golden(&kit.join("expected.json"));
    assert_eq!(expected["torch"], KIT_TORCH);
    let cases = expected["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 8, "2 models x 4 method/pattern cases");
    for (name, case) in cases {
        let ppl = case["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{name}: ppl {ppl}");
        let masks = case["masks"].as_object().unwrap();
        // llama-tiny: 4 blocks x 7 layers; opt-tiny: 2 blocks x 6 layers (fixture READMEs).
        assert!(masks.len() == 28 || masks.len() == 12, "{name}: {} masks", masks.len());
    }
    // Zero-shot: 30 documents of each of the seven tasks per model, every choice scored.
    for model in ["llama-tiny", "opt-tiny"] {
        let docs = expected["zero_shot"][model].as_array().unwrap();
        assert_eq!(docs.len(), 7 * 30, "{model}");
        assert!(docs.iter().all(|d| d["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_f64().unwrap() < 0.0)));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

#[test]
fn torch_from_build_runs_on_that_torch_without_ld_library_path() {
    let binary = root().join(format!("target/torch-{KIT_TORCH}/release/repro"));
    assert!(
        binary.is_file(),
        "{} is missing: scripts/gpu_kit.sh builds it with scripts/setup.sh --torch-from",
        binary.display()
    );
    let out = bare(&binary)
        .args(["kernels", "--device", "cpu", "--small", "--json"])
        .output()
        .unwrap();
    let report = common::json_of(&out);
    let version = report["libtorch_version"].as_str().unwrap();
    assert!(
        version.starts_with(KIT_TORCH),
        "the binary must run on the libtorch it was built against, not {version}"
    );
    assert!(report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["dense_ms"].as_f64().unwrap() > 0.0));
}

#[test]
fn cpu_smoke_runs_the_node_check_end_to_end() {
    let kit = kit();
    let out_dir = tempfile::tempdir().unwrap();
    let out = bare(&kit.join("gpu_check.sh"))
        .arg("--cpu-smoke")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gpu_check.sh --cpu-smoke failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("torch {KIT_TORCH}")), "{stdout}");
    let summary = common::golden(&out_dir.path().join("summary.json"));
    assert_eq!(summary["pass"], true);
    let fidelity = summary["fidelity"].as_array().unwrap();
    // 8 f32 cases against the kit's expected CPU results, f16 + bf16 + streamed per model, and
    // SparseGPT pruned a second time.
    assert_eq!(fidelity.len(), 15, "{fidelity:?}");
    let again = fidelity
        .iter()
        .find(|c| c["case"].as_str().unwrap().ends_with("(again)"))
        .unwrap();
    assert_eq!(again["identical_weights"], true, "{again}");
    for case in fidelity {
        assert_eq!(case["ok"], true, "{case}");
    }
    let masked: Vec<_> = fidelity
        .iter()
        .filter(|c| c.get("masks_differing_layers").is_some())
        .collect();
    assert_eq!(masked.len(), 8);
    assert!(
        masked.iter().all(|c| c["masks_differing_layers"] == 0),
        "the same CPU must give the same masks"
    );
    let scale = summary["scale"].as_array().unwrap();
    let timed: Vec<&str> = scale
        .iter()
        .filter(|r| r.get("prune_seconds").is_some())
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(timed, ["wanda", "sparsegpt"]);
    let hellaswag = scale.iter().find(|r| r["case"] == "zero-shot hellaswag").unwrap();
    assert_eq!(hellaswag["ok"], true, "{hellaswag}");
    assert!(hellaswag["tokens_computed"].as_u64().unwrap() < hellaswag["tokens_lm_eval_rows"].as_u64().unwrap());
    // On the CPU: f32 against the kit's expected loglikelihoods, and streamed against resident.
    let zero_shot = summary["zero_shot"].as_array().unwrap();
    assert_eq!(zero_shot.len(), 4, "{zero_shot:?}");
    for case in zero_shot {
        assert_eq!(case["ok"], true, "{case}");
        assert!(case["ll_max_diff"].as_f64().unwrap() <= 1e-5, "the same CPU: {case}");
    }
    assert!(!summary["kernels"]["rows"].as_array().unwrap().is_empty());
    let md = std::fs::read_to_string(out_dir.path().join("summary.md")).unwrap();
    assert!(md.contains("verdict: **PASS**"), "{md}");
}
