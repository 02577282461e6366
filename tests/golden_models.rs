//! Forward passes and WikiText-2 perplexity against goldens computed with transformers (float32).

mod common;
use common::*;
use repro::hub::Hub;
use repro::model::{self, CausalLm, Streaming};
use tch::{Device, Kind, Tensor};

fn load(name: &str) -> model::Loaded {
    model::load(
        &Hub::default(),
        &fixture_model(name),
        Device::Cpu,
        Kind::Float,
        Streaming::Off,
    )
    .unwrap()
}

fn logits_of(m: &dyn CausalLm, ids: &[i64]) -> Tensor {
    let _g = tch::no_grad_guard();
    m.forward(&Tensor::from_slice(ids).unsqueeze(0)).unwrap().squeeze_dim(0)
}

fn row(t: &Tensor, pos: i64, n: i64) -> Vec<f64> {
    Vec::<f64>::try_from(t.get(pos).narrow(0, 0, n).to_kind(Kind::Double)).unwrap()
}

/// Tokenizer ids and logits (first/last position, mean, std) of the shared fixtures' goldens.
fn check_fixture_forward(name: &str) {
    let m = load(name);
    let g = golden(&fixtures().join("models").join(name).join("golden.json"));
    let ids = m.tokenizer.encode(g["text"].as_str().unwrap()).unwrap();
    let want_ids: Vec<i64> = g["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids, want_ids, "{name}: token ids");
    let logits = logits_of(m.model.as_ref(), &ids);
    let last = ids.len() as i64 - 1;
    assert_close(
        &format!("{name} last logits"),
        &row(&logits, last, 16),
        &floats(&g["last_logits_first16"]),
        1e-4,
        1e-5,
    );
    assert_close(
        &format!("{name} first logits"),
        &row(&logits, 0, 16),
        &floats(&g["first_logits_first16"]),
        1e-4,
        1e-5,
    );
    let argmax = logits.get(last).argmax(0, false).int64_value(&[]);
    assert_eq!(argmax, g["last_logits_argmax"].as_i64().unwrap(), "{name}: argmax");
    let all = logits.to_kind(Kind::Double);
    assert_close(
        &format!("{name} mean"),
        &[all.mean(Kind::Double).double_value(&[])],
        &[g["logits_mean"].as_f64().unwrap()],
        1e-4,
        1e-6,
    );
    assert_close(
        &format!("{name} std"),
        &[all.std(true).double_value(&[])],
        &[g["logits_std"].as_f64().unwrap()],
        1e-4,
        0.0,
    );
}

#[test]
fn llama_tiny_logits_match_transformers() {
    check_fixture_forward("llama-tiny");
}

#[test]
fn llama_tiny_random_tied_logits_match_transformers() {
    check_fixture_forward("llama-tiny-random");
}

#[test]
fn opt_tiny_logits_match_transformers() {
    check_fixture_forward("opt-tiny");
}

fn wikitext_ids(m: &model::Loaded, seqlen: usize) -> Vec<i64> {
    let hub = Hub::new(Some(fixtures()));
    repro::data::PplCorpus::parse("wikitext2")
        .token_ids(&hub, seqlen, &|t| m.tokenizer.encode(t))
        .unwrap()
}

/// The fixtures' first-8-windows perplexities (random models) and window losses.
fn check_partial_ppl(name: &str) {
    let m = load(name);
    let g = golden(&fixtures().join("models").join(name).join("golden.json"))["wikitext2_test"].clone();
    let seqlen = g["seqlen"].as_u64().unwrap() as usize;
    let ids = wikitext_ids(&m, seqlen);
    assert_eq!(ids.len() as u64, g["n_tokens"].as_u64().unwrap());
    let _g = tch::no_grad_guard();
    let r = repro::eval::ppl::perplexity(m.model.as_ref(), &ids, seqlen, 4, Some(8), name).unwrap();
    assert_close(
        &format!("{name} window losses"),
        &r.window_losses,
        &floats(&g["window_losses"]),
        1e-5,
        1e-5,
    );
    assert_close(
        &format!("{name} ppl"),
        &[r.ppl],
        &[g["ppl"].as_f64().unwrap()],
        1e-4,
        0.0,
    );
}

#[test]
fn llama_tiny_random_wikitext2_windows_match() {
    check_partial_ppl("llama-tiny-random");
}

#[test]
fn opt_tiny_wikitext2_windows_match() {
    check_partial_ppl("opt-tiny");
}

/// The headline golden: llama-tiny's full WikiText-2 test perplexity, every window.
#[test]
fn llama_tiny_full_wikitext2_ppl_matches() {
    let m = load("llama-tiny");
    let g = golden(&fixtures().join("models/llama-tiny/golden.json"))["wikitext2_test"].clone();
    let ids = wikitext_ids(&m, 512);
    assert_eq!(ids.len(), 478_777);
    let _g = tch::no_grad_guard();
    let r = repro::eval::ppl::perplexity(m.model.as_ref(), &ids, 512, 8, None, "llama-tiny").unwrap();
    assert_eq!(r.windows, 935);
    assert_close(
        "llama-tiny window losses",
        &r.window_losses,
        &floats(&g["window_losses"]),
        1e-4,
        1e-5,
    );
    assert_close("llama-tiny ppl", &[r.ppl], &[g["ppl"].as_f64().unwrap()], 1e-4, 0.0);
}

#[test]
fn batch_size_does_not_change_ppl() {
    let m = load("llama-tiny-random");
    let ids = wikitext_ids(&m, 128);
    let _g = tch::no_grad_guard();
    let one = repro::eval::ppl::perplexity(m.model.as_ref(), &ids, 128, 1, Some(12), "bs1").unwrap();
    let five = repro::eval::ppl::perplexity(m.model.as_ref(), &ids, 128, 5, Some(12), "bs5").unwrap();
    assert_eq!(one.windows, 12);
    assert_close("bs5 vs bs1", &five.window_losses, &one.window_losses, 1e-6, 1e-6);
}

/// The real LLaMA-2 tokenizer: WikiText-2 test token count from the fixture README (with BOS).
#[test]
fn llama2_tokenizer_wikitext2_token_count() {
    let dir = fixtures().join("tokenizers/llama-2");
    let tok = repro::tokenizer::Tokenizer::from_files(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
        "llama",
        Some(1),
    )
    .unwrap();
    let ids = repro::data::PplCorpus::parse("wikitext2")
        .token_ids(&Hub::new(Some(fixtures())), 4096, &|t| tok.encode(t))
        .unwrap();
    assert_eq!(ids.len(), 341_469);
    assert_eq!(ids.len() / 4096, 83);
    assert_eq!(
        tok.encode("The quick brown fox jumps over the lazy dog.").unwrap(),
        vec![1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889]
    );
}

/// Architecture features the shared fixtures lack (GQA + llama3 rope scaling, tied LLaMA,
/// Mistral's sliding window, OPT project_in/out and post-LN), against transformers (eager, f32).
#[test]
fn architecture_goldens_match_transformers() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for name in [
        "llama-gqa-llama3rope",
        "llama-tied",
        "mistral-tiny",
        "opt-proj",
        "opt-postln",
    ] {
        let dir = root.join(name);
        let (m, _, _) = model::load_model(
            &Hub::default(),
            dir.to_str().unwrap(),
            Device::Cpu,
            Kind::Float,
            Streaming::Off,
        )
        .unwrap();
        let g = golden(&dir.join("golden.json"));
        let ids: Vec<Vec<i64>> = g["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
            .collect();
        let batch = Tensor::from_slice(&ids.concat()).view([ids.len() as i64, -1]);
        let _g = tch::no_grad_guard();
        let logits = m.forward(&batch).unwrap();
        for (k, pos) in g["positions"].as_array().unwrap().iter().enumerate() {
            let got = Vec::<f64>::try_from(logits.get(0).get(pos.as_i64().unwrap()).to_kind(Kind::Double)).unwrap();
            assert_close(
                &format!("{name} logits at {pos}"),
                &got,
                &floats(&g["logits_seq0"][k]),
                1e-4,
                1e-4,
            );
        }
        let all = logits.to_kind(Kind::Double);
        assert_close(
            &format!("{name} std"),
            &[all.std(true).double_value(&[])],
            &[g["logits_std"].as_f64().unwrap()],
            1e-4,
            0.0,
        );
        let losses = repro::eval::ppl::window_losses(&logits, &batch);
        assert_close(
            &format!("{name} window losses"),
            &losses,
            &floats(&g["window_losses"]),
            1e-5,
            1e-5,
        );
    }
}
