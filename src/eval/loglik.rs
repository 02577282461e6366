//! Log-likelihood of continuations given contexts, tokenized and scored as lm-evaluation-harness
//! 0.4's Hugging Face backend does: trailing spaces of the context move to the continuation;
//! context+continuation is encoded as a whole (with the tokenizer's BOS) and split at the context's
//! token count; inputs are left-truncated to the model's length; the continuation's log-probs
//! are summed and `is_greedy` says whether every continuation token was the argmax. Unlike
//! lm-eval, each shared context is computed once and requests share rows (see `packing`).

use anyhow::Result;
use tch::{Kind, Tensor};

use super::packing::{pack, Request, TokenCounts};
use super::tasks::py_isspace;
use crate::model::{forward_rows, CausalLm, Rows};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogLik {
    pub logprob: f64,
    pub is_greedy: bool,
}

/// Token ids of (context, continuation) as lm-eval's `_encode_pair` builds them.
pub fn encode_pair(tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<i64>, Vec<i64>)> {
    let trimmed = context.trim_end_matches(py_isspace); // Python's rstrip()
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    // lm-eval 0.4.13's HF backend encodes with the tokenizer's default special tokens, so LLaMA
    // contexts start with BOS.
    let whole = tok.encode(&format!("{trimmed}{continuation}"))?;
    let ctx_len = tok.encode(trimmed)?.len().min(whole.len());
    Ok((whole[..ctx_len].to_vec(), whole[ctx_len..].to_vec()))
}

/// Scores every (context, continuation) pair in packed rows of `batch_size` · `max_length` tokens
/// per forward pass. Results do not depend on the batch size beyond float rounding. Also returns
/// the tokens computed.
pub fn loglikelihoods(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    requests: &[(String, String)],
    max_length: usize,
    batch_size: usize,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<LogLik>, TokenCounts)> {
    let encoded = requests
        .iter()
        .map(|(ctx, cont)| {
            let (c, k) = encode_pair(tok, ctx, cont)?;
            Ok(model_request(&c, &k, max_length))
        })
        .collect::<Result<Vec<_>>>()?;
    score(model, &encoded, batch_size.max(1) * max_length, HEAD_CHUNK, progress)
}

/// The row lm-eval's HF backend feeds the model for context `c` and continuation `k`: both
/// joined, without the last token, left-truncated to `max_length`.
fn model_request(c: &[i64], k: &[i64], max_length: usize) -> Request {
    let whole: Vec<i64> = c.iter().chain(k).copied().collect();
    let keep = whole.len().min(max_length + 1);
    let input = whole[whole.len() - keep..whole.len() - 1].to_vec();
    // A continuation longer than the model's window keeps only what fits, as lm-eval does.
    let target = k[k.len() - k.len().min(input.len())..].to_vec();
    Request { input, target }
}

/// Whether each row's `target` is its argmax (the first maximum, as lm-eval's argmax picks it).
/// Only rows where the target reaches the maximum need the argmax, which costs 13x the maximum.
fn is_argmax(logp: &Tensor, target: &Tensor, target_logp: &Tensor) -> Tensor {
    let reaches_max = target_logp.eq_tensor(&logp.amax([1], false));
    let rows = reaches_max.nonzero().squeeze_dim(1);
    let first_is_target = logp
        .index_select(0, &rows)
        .argmax(1, false)
        .eq_tensor(&target.index_select(0, &rows));
    reaches_max.index_put(&[Some(rows)], &first_is_target, false)
}

/// Positions whose logits are computed at once. The head's product is the widest of the model
/// (positions x vocabulary); in chunks its output and the log-softmax passes over it stay in
/// cache: 30% less head time than in one piece at HellaSwag's ~1400 scored positions per pass
/// (llama-tiny, one thread, MKL on the Xeon: the same bits, each position's logits being a product
/// of its own), and a pass never holds more than a chunk's logits, 64 MiB at a 32000-token vocabulary.
pub const HEAD_CHUNK: i64 = 512;

/// Log-probabilities of `target` at hidden states (N, H), and whether each is the argmax.
fn score_positions(model: &dyn CausalLm, hidden: &Tensor, target: &Tensor) -> Result<(Vec<f64>, Vec<bool>)> {
    let logp = model.head(hidden)?.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let picked = logp.gather(1, &target.unsqueeze(1), false).squeeze_dim(1);
    let greedy = Vec::<bool>::try_from(is_argmax(&logp, target, &picked).to_device(tch::Device::Cpu))?;
    let picked = Vec::<f64>::try_from(picked.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
    Ok((picked, greedy))
}

/// Scores requests with each shared context computed once, in packed rows of about `batch_tokens`
/// tokens per forward pass (see [`super::packing`]), the head `head_chunk` positions at a time.
pub fn score(
    model: &dyn CausalLm,
    requests: &[Request],
    batch_tokens: usize,
    head_chunk: i64,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<LogLik>, TokenCounts)> {
    let (batches, counts) = pack(requests, batch_tokens);
    let mut out = vec![
        LogLik {
            logprob: 0.0,
            is_greedy: true
        };
        requests.len()
    ];
    let (rows, scored): (Vec<Rows>, Vec<_>) = batches.into_iter().map(|b| (b.rows, b.scored)).unzip();
    forward_rows(model, &rows, |i, hidden| {
        let scored = &scored[i];
        let target: Vec<i64> = scored
            .iter()
            .flat_map(|(r, _)| requests[*r].target.iter().copied())
            .collect();
        let target = Tensor::from_slice(&target).to_device(hidden.device());
        let (mut picked, mut greedy) = (Vec::with_capacity(target.numel()), Vec::with_capacity(target.numel()));
        let chunks = hidden.squeeze_dim(0).split(head_chunk, 0);
        for (hidden, target) in chunks.iter().zip(target.split(head_chunk, 0)) {
            let (p, g) = score_positions(model, hidden, &target)?;
            picked.extend(p);
            greedy.extend(g);
        }
        let mut at = 0;
        for (r, positions) in scored {
            let n = positions.len();
            out[*r] = LogLik {
                logprob: picked[at..at + n].iter().sum(),
                is_greedy: greedy[at..at + n].iter().all(|&g| g),
            };
            at += n;
        }
        progress.inc(scored.len() as u64);
        Ok(())
    })?;
    Ok((out, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{fixture_checkpoints, load_fixture, Streaming};

    /// Deterministic pseudo-random token ids in 3..vocab.
    fn tokens(seed: usize, len: usize, vocab: i64) -> Vec<i64> {
        (0..len)
            .map(|i| ((seed * 7919 + i * 104_729 + i * i * 31) as i64) % (vocab - 3) + 3)
            .collect()
    }

    /// Multiple choice (one context, continuations of 1 to 7 tokens), partial scoring (contexts
    /// differing in their last tokens, one continuation), contexts of different documents that
    /// begin alike and left-truncated rows, in packed rows,
    /// equal one plain causal forward pass per request: on every fixture architecture (rotary
    /// with GQA and llama3 scaling, tied, Mistral's sliding window over long contexts, OPT's
    /// learned positions with projections and post-LN), resident and streamed, with the head in
    /// one piece or in chunks of 3 positions.
    #[test]
    fn packed_scores_equal_one_row_per_request_on_every_architecture() {
        let _g = tch::no_grad_guard();
        for dir in fixture_checkpoints(&["llama-tiny-random", "opt-tiny"]) {
            let resident = load_fixture(&dir, Streaming::Off);
            let (vocab, max_length) = (
                resident.info().vocab_size,
                resident.info().max_position_embeddings as usize,
            );
            let mut requests = Vec::new();
            for (doc, ctx_len) in [3, 20, 45, max_length - 2, max_length + 9].into_iter().enumerate() {
                let ctx = tokens(doc, ctx_len, vocab);
                for (choice, cont_len) in [1, 3, 7].into_iter().enumerate() {
                    requests.push(model_request(
                        &ctx,
                        &tokens(100 + 10 * doc + choice, cont_len, vocab),
                        max_length,
                    ));
                }
                let cont = tokens(200 + doc, 4, vocab);
                for option in 0..2 {
                    let mut ctx = ctx.clone();
                    ctx.extend(tokens(300 + 10 * doc + option, 2 + option, vocab));
                    requests.push(model_request(&ctx, &cont, max_length));
                }
            }
            // A document whose context begins as document 1's does: the two share that beginning.
            let stem: Vec<i64> = tokens(1, 10, vocab).into_iter().chain(tokens(77, 12, vocab)).collect();
            for (choice, cont_len) in [1, 4].into_iter().enumerate() {
                requests.push(model_request(&stem, &tokens(400 + choice, cont_len, vocab), max_length));
            }
            let want: Vec<LogLik> = requests
                .iter()
                .map(|r| {
                    let ids = Tensor::from_slice(&r.input).unsqueeze(0);
                    let n = r.target.len() as i64;
                    let logp = resident.forward(&ids).unwrap().get(0).log_softmax(-1, Kind::Float);
                    let logp = logp.narrow(0, r.input.len() as i64 - n, n);
                    let target = Tensor::from_slice(&r.target);
                    LogLik {
                        logprob: logp
                            .gather(1, &target.unsqueeze(1), false)
                            .sum(Kind::Double)
                            .double_value(&[]),
                        is_greedy: logp.argmax(1, false).eq_tensor(&target).all().int64_value(&[]) == 1,
                    }
                })
                .collect();
            let bar = indicatif::ProgressBar::hidden();
            let streamed = load_fixture(&dir, Streaming::On);
            for (model, batch_tokens, head_chunk) in [
                (&resident, 2 * max_length, HEAD_CHUNK),
                (&resident, 2 * max_length, 3),
                (&streamed, max_length, HEAD_CHUNK),
            ] {
                let (got, counts) = score(model.as_ref(), &requests, batch_tokens, head_chunk, &bar).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g.logprob - w.logprob).abs() <= 1e-4 && g.is_greedy == w.is_greedy,
                        "{} request {i}: packed {g:?}, alone {w:?}",
                        dir.display()
                    );
                }
                assert!(counts.computed < counts.unshared, "{}: {counts:?}", dir.display());
            }
        }
    }

    /// The target is greedy only where it is the first maximum of its row, ties included.
    #[test]
    fn greedy_means_the_first_maximum_is_the_target() {
        let logp = Tensor::from_slice(&[0.0f32, 2.0, 2.0, 1.0]).repeat([4, 1]);
        let target = Tensor::from_slice(&[1i64, 2, 3, 0]);
        let target_logp = logp.gather(1, &target.unsqueeze(1), false).squeeze_dim(1);
        let greedy = Vec::<bool>::try_from(is_argmax(&logp, &target, &target_logp)).unwrap();
        assert_eq!(greedy, [true, false, false, false]);
        let reference = Vec::<bool>::try_from(logp.argmax(1, false).eq_tensor(&target)).unwrap();
        assert_eq!(greedy, reference);
    }

    /// lm-eval moves what Python's `rstrip()` removes, U+001C..U+001F included, to the continuation.
    #[test]
    fn trailing_whitespace_moves_to_the_continuation_as_python_strips_it() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/models/llama-tiny");
        let tok = Tokenizer::from_files(
            &dir.join("tokenizer.json"),
            Some(&dir.join("tokenizer_config.json")),
            "llama",
            Some(1),
        )
        .unwrap();
        let (ctx, cont) = encode_pair(&tok, "Question:\u{1f} ", "yes").unwrap();
        assert_eq!(ctx, tok.encode("Question:").unwrap());
        assert_eq!([ctx, cont].concat(), tok.encode("Question:\u{1f} yes").unwrap());
    }
}
