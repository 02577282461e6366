//! Log-likelihood of continuations given contexts, tokenized and scored as lm-evaluation-harness
//! 0.4's Hugging Face backend does: trailing spaces of the context move to the continuation;
//! context+continuation is encoded as a whole (with the tokenizer's BOS) and split at the context's
//! token count; inputs are left-truncated to the model's length; the continuation's log-probs
//! are summed and `is_greedy` says whether every continuation token was the argmax.

use anyhow::Result;
use tch::{Kind, Tensor};

use super::tasks::py_isspace;
use crate::model::{forward_batches, CausalLm};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq)]
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

/// Scores every (context, continuation) pair. Requests are run longest first in batches of
/// `batch_size` with right padding, which causal attention never sees, so results do not depend
/// on the batch size beyond float rounding.
pub fn loglikelihoods(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    requests: &[(String, String)],
    max_length: usize,
    batch_size: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<LogLik>> {
    struct Item {
        index: usize,
        input: Vec<i64>,
        cont_len: usize,
        cont: Vec<i64>,
    }
    let mut items = Vec::with_capacity(requests.len());
    for (index, (ctx, cont)) in requests.iter().enumerate() {
        let (c, k) = encode_pair(tok, ctx, cont)?;
        let whole: Vec<i64> = c.iter().chain(&k).copied().collect();
        let keep = whole.len().min(max_length + 1);
        let input = whole[whole.len() - keep..whole.len() - 1].to_vec();
        items.push(Item {
            index,
            cont_len: k.len(),
            cont: k,
            input,
        });
    }
    items.sort_by(|a, b| b.input.len().cmp(&a.input.len()).then(a.index.cmp(&b.index)));
    let chunks: Vec<&[Item]> = items.chunks(batch_size.max(1)).collect();
    let batches: Vec<Tensor> = chunks
        .iter()
        .map(|chunk| {
            let width = chunk[0].input.len();
            let mut flat = Vec::with_capacity(chunk.len() * width);
            for it in chunk.iter() {
                flat.extend(&it.input);
                flat.extend(std::iter::repeat_n(0, width - it.input.len()));
            }
            Tensor::from_slice(&flat).view([chunk.len() as i64, width as i64])
        })
        .collect();
    let mut out = vec![
        LogLik {
            logprob: 0.0,
            is_greedy: true
        };
        requests.len()
    ];
    forward_batches(model, &batches, |i, logits| {
        let logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        for (row, it) in chunks[i].iter().enumerate() {
            let end = it.input.len() as i64;
            // A continuation longer than the model's window keeps only what fits, as lm-eval does.
            let n = (it.cont_len as i64).min(end);
            let lp = logp.get(row as i64).narrow(0, end - n, n);
            let target = Tensor::from_slice(&it.cont[it.cont_len - n as usize..]).to_device(lp.device());
            let picked = lp
                .gather(1, &target.unsqueeze(1), false)
                .sum(Kind::Double)
                .double_value(&[]);
            let greedy = lp.argmax(1, false).eq_tensor(&target).all().int64_value(&[]) == 1;
            out[it.index] = LogLik {
                logprob: picked,
                is_greedy: greedy,
            };
        }
        progress.inc(chunks[i].len() as u64);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
