//! Special tokens as transformers adds them, and the C4 validation protocol of the SparseGPT code.

mod common;
use common::*;
use repro::hub::Hub;
use repro::tokenizer::Tokenizer;

/// A GPT-2 style tokenizer.json has no post-processor adding BOS; OPT's tokenizer_config asks for
/// `</s>` as BOS (`add_bos_token`), which transformers prepends. Simulated on the fixture tokenizer.
#[test]
fn bos_is_prepended_when_the_post_processor_does_not_add_it() {
    let src = fixtures().join("models/llama-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    tj["post_processor"] = serde_json::Value::Null;
    std::fs::write(tmp.path().join("tokenizer.json"), tj.to_string()).unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": "</s>"}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_files(
        &tmp.path().join("tokenizer.json"),
        Some(&tmp.path().join("tokenizer_config.json")),
        "opt",
        Some(2),
    )
    .unwrap();
    let ids = tok.encode("The quick brown fox").unwrap();
    assert_eq!(ids[0], 2, "{ids:?}");
    assert_ne!(ids[1], 2);
    // LLaMA's own post-processor adds <s>; nothing is added twice.
    let llama = Tokenizer::from_files(
        &src.join("tokenizer.json"),
        Some(&src.join("tokenizer_config.json")),
        "llama",
        Some(1),
    )
    .unwrap();
    let ids = llama.encode("The quick brown fox").unwrap();
    assert_eq!(&ids[..2], &[1, 375]);
}

/// SparseGPT's C4 perplexity text: the first 1100 validation documents joined by ' ', cut to
/// 256·seqlen tokens. Token counts from the Python `tokenizers` package on the same shard.
#[test]
fn c4_validation_protocol() {
    let hub = Hub::new(Some(fixtures()));
    let m = repro::model::load(
        &hub,
        "llama-tiny",
        tch::Device::Cpu,
        tch::Kind::Float,
        repro::model::Streaming::Off,
    )
    .unwrap();
    let corpus = repro::data::PplCorpus::parse("c4:c4-format-sample");
    let ids = corpus.token_ids(&hub, 512, &|t| m.tokenizer.encode(t)).unwrap();
    assert_eq!(ids.len(), 256 * 512);
    assert_eq!(&ids[..8], &[1, 595, 762, 306, 389, 363, 3418, 304]);
    let short = corpus.token_ids(&hub, 128, &|t| m.tokenizer.encode(t)).unwrap();
    assert_eq!(short.len(), 256 * 128);
    assert_eq!(&short[short.len() - 3..], &[2053, 1310, 265]);
}

/// Two files with one name keep separate results (labelled by their paths), and a corpus or
/// task named twice is evaluated once, so the zero-shot mean is not skewed.
#[test]
fn same_named_corpora_stay_apart_and_repeats_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (dir, text) in [
        ("a", "The quick brown fox jumps over the lazy dog. "),
        ("b", "It was the best of times, it was the worst of times. "),
    ] {
        std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        let path = tmp.path().join(dir).join("test.txt");
        std::fs::write(&path, text.repeat(40)).unwrap();
        specs.push(path.to_str().unwrap().to_string());
    }
    let ppl = format!("{},{},{}", specs[0], specs[1], specs[0]);
    let out = repro()
        .args([
            "eval",
            "--model",
            &fixture_model("llama-tiny-random"),
            "--seqlen",
            "32",
            "--max-windows",
            "2",
            "--json",
        ])
        .args(["--ppl", &ppl, "--tasks", "rte,rte", "--limit", "4"])
        .output()
        .unwrap();
    let r = json_of(&out);
    let ppl = r["ppl"].as_object().unwrap();
    assert_eq!(ppl.keys().cloned().collect::<Vec<_>>(), {
        let mut s = specs.clone();
        s.sort();
        s
    });
    assert_ne!(ppl[&specs[0]], ppl[&specs[1]]);
    assert_eq!(r["zero_shot"].as_object().unwrap().len(), 1);
    assert_eq!(r["zero_shot_mean_acc"], r["zero_shot"]["rte"]["acc"]);
}

/// A dataset repo in the Hugging Face cache is found by its bare id (its `refs/main` snapshot),
/// like a mirror or local directory, and reads the same text.
#[test]
fn a_cached_dataset_repo_is_found_by_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = hf_cache_snapshot(tmp.path(), "datasets--some-org--books");
    std::fs::copy(
        fixtures().join("datasets/books-heldout/test-00000-of-00001.parquet"),
        snapshot.join("test-00000-of-00001.parquet"),
    )
    .unwrap();
    let ppl = |corpus: &str| {
        let out = repro()
            .env("HF_HUB_CACHE", tmp.path())
            .args([
                "eval",
                "--model",
                &fixture_model("llama-tiny-random"),
                "--seqlen",
                "32",
                "--max-windows",
                "2",
                "--json",
                "--ppl",
                corpus,
            ])
            .output()
            .unwrap();
        json_of(&out)["ppl"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_f64()
            .unwrap()
    };
    assert_eq!(ppl("some-org/books"), ppl("books-heldout"));
}

/// The mirror's copy of a repo may be partial (the fixtures' WikiText holds the test split only):
/// a file it lacks comes from the Hugging Face cache, here WikiText-2 train for calibration.
#[test]
fn a_partial_mirror_falls_back_to_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let train = hf_cache_snapshot(tmp.path(), "datasets--Salesforce--wikitext")
        .join("wikitext-2-raw-v1/train-00000-of-00001.parquet");
    std::fs::create_dir_all(train.parent().unwrap()).unwrap();
    std::fs::copy(
        fixtures().join("datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"),
        &train,
    )
    .unwrap();
    let out = repro()
        .env("HF_HUB_CACHE", tmp.path())
        .args([
            "prune",
            "--model",
            &fixture_model("llama-tiny-random"),
            "--method",
            "wanda",
            "--calib",
            "wikitext2",
        ])
        .args(["--nsamples", "2", "--seqlen", "32", "--json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&out)["calibration"]["file"], train.to_str().unwrap());
}
