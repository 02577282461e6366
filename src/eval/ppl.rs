//! Perplexity as the Wanda / SparseGPT code computes it: the token stream is cut into
//! non-overlapping windows of `seqlen` (the tail is dropped), each window's loss is the mean
//! cross-entropy of its shifted logits, and ppl = exp(Σ loss_i·seqlen / (n·seqlen)).

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

use super::NON_FINITE_HINT;
use crate::model::{forward_rows, CausalLm, Rows};

#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub n_tokens: usize,
    pub seqlen: usize,
    /// Windows evaluated (all of them unless capped with `max_windows`).
    pub windows: usize,
    pub window_losses: Vec<f64>,
}

/// Mean next-token cross-entropy of each row of `ids` (B, L) given its logits, in f32 like
/// transformers' loss.
pub fn window_losses(logits: &Tensor, ids: &Tensor) -> Vec<f64> {
    let l = ids.size()[1];
    let logp = logits
        .narrow(1, 0, l - 1)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let target = ids.narrow(1, 1, l - 1).to_device(logp.device()).unsqueeze(-1);
    let nll = -logp.gather(-1, &target, false).squeeze_dim(-1);
    let per_window = nll
        .mean_dim(1, false, Kind::Float)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    Vec::<f64>::try_from(&per_window).expect("1-D double tensor")
}

/// Perplexity of `ids` in windows of `seqlen`, `batch_size` windows per forward pass.
pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[i64],
    seqlen: usize,
    batch_size: usize,
    max_windows: Option<usize>,
    label: &str,
) -> Result<Perplexity> {
    if seqlen < 2 {
        bail!("--seqlen must be at least 2 (got {seqlen})");
    }
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let total = ids.len() / seqlen;
    let n = max_windows.map_or(total, |m| m.min(total));
    if n == 0 {
        bail!(
            "{label}: {} tokens do not fill one window of seqlen {seqlen}; use a smaller --seqlen",
            ids.len()
        );
    }
    let windows = Tensor::from_slice(&ids[..n * seqlen]).view([n as i64, seqlen as i64]);
    let batches: Vec<Rows> = (0..n)
        .step_by(batch_size)
        .map(|start| Rows {
            ids: windows.narrow(0, start as i64, batch_size.min(n - start) as i64),
            packing: None,
            keep: None,
        })
        .collect();
    let pb = crate::progress::bar(n as u64, label);
    let mut losses = Vec::with_capacity(n);
    // The head one window at a time: a batch's logits (B · seqlen · vocab floats) would take
    // B times the memory, 4 GiB for 8 LLaMA-2 windows of 4096 tokens.
    forward_rows(model, &batches, |i, hidden| {
        let ids = &batches[i].ids;
        for w in 0..ids.size()[0] {
            let logits = model.head(&hidden.narrow(0, w, 1))?;
            losses.extend(window_losses(&logits, &ids.narrow(0, w, 1)));
        }
        pb.inc(ids.size()[0] as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    let non_finite = losses.iter().filter(|l| !l.is_finite()).count();
    if non_finite > 0 {
        bail!("{label}: {non_finite} of {n} windows have a non-finite loss: {NON_FINITE_HINT}");
    }
    let nll: f64 = losses.iter().map(|l| l * seqlen as f64).sum();
    Ok(Perplexity {
        ppl: (nll / (n * seqlen) as f64).exp(),
        n_tokens: ids.len(),
        seqlen,
        windows: n,
        window_losses: losses,
    })
}
