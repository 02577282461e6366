//! SparseGPT (Frantar & Alistarh, 2023) as the official code runs it: dead inputs zeroed,
//! damping 1% of the mean Hessian diagonal, the upper Cholesky factor of H⁻¹, columns processed
//! in blocks of 128 with an OBS update of the not-yet-pruned weights, masks chosen lazily per block.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::mask::{threshold_mask, Group, Pattern};
use super::metric::{hessian, Metric};
use super::stats::{InputNorms, LayerStats, Needs};

pub const BLOCKSIZE: i64 = 128;
pub const PERCDAMP: f64 = 0.01;

/// How the mask is chosen while the weights are being updated.
pub enum MaskRule<'a> {
    /// A mask fixed before the update (the paper's Table 8 "sequential" ablation).
    Fixed(&'a Tensor),
    /// A metric's mask per (rows × 128) block, or per M columns for N:M, on the weights as updated
    /// so far. The metric sees those columns of the input norms and of the factor's diagonal:
    /// with [`SparseGptMetric`] this is SparseGPT's own saliency w²/[H⁻¹]²_jj.
    PerBlock {
        metric: &'a dyn Metric,
        norms: Option<&'a InputNorms>,
    },
}
/// The pruned and updated weight (same shape and dtype as `weight`).
pub fn prune(weight: &Tensor, hessian: Tensor, sparsity: f64, pattern: Pattern, rule: MaskRule) -> Result<Tensor> {
    let mut w = weight.to_dtype(Kind::Float, false, true); // a copy even when already f32
    let (rows, cols) = w.size2()?;
    let dead = dead_inputs(&hessian);
    let _ = w.masked_fill_(&dead.unsqueeze(0), 0.0);
    let hinv = inverse_hessian_upper(hessian, &dead)?;
    let diag = hinv.diagonal(0, 0, 1);
    // The rule's score of a slice of the current weights starting at column `col`.
    let score = |metric: &dyn Metric, norms: Option<&InputNorms>, wb: &Tensor, col: i64| {
        let width = wb.size()[1];
        let norms = norms.map(|n| n.columns(col, width));
        let d = diag.narrow(0, col, width);
        let stats = LayerStats {
            norms: norms.as_ref(),
            hessian: None,
            hinv_diag: Some(&d),
        };
        metric.score(wb, &stats)
    };
    let (n, m) = match pattern {
        Pattern::Unstructured => (0, 0),
        Pattern::NM { n, m } => {
            if cols % m != 0 {
                bail!("{cols} input columns are not a multiple of M = {m}");
            }
            (n, m)
        }
    };
    for i1 in (0..cols).step_by(BLOCKSIZE as usize) {
        let count = BLOCKSIZE.min(cols - i1);
        let i2 = i1 + count;
        let w1 = w.narrow(1, i1, count).copy();
        let q1 = w1.zeros_like();
        let err1 = w1.zeros_like();
        let hinv1 = hinv.narrow(0, i1, count).narrow(1, i1, count);
        let d1 = hinv1.diagonal(0, 0, 1);
        let mut mask1 = match (&rule, pattern) {
            (MaskRule::Fixed(mask), _) => mask.narrow(1, i1, count).copy(),
            (_, Pattern::NM { .. }) => Tensor::zeros([rows, count], (Kind::Bool, w.device())),
            (MaskRule::PerBlock { metric, norms }, Pattern::Unstructured) => {
                threshold_mask(&score(*metric, *norms, &w1, i1)?, sparsity)
            }
        };
        // The block's pivots in one transfer: reading them one by one would stop a GPU once per column.
        let pivots = Vec::<f64>::try_from(d1.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
        for i in 0..count {
            let col = w1.select(1, i).copy();
            let d = pivots[i as usize];
            if let (MaskRule::PerBlock { metric, norms }, true) = (&rule, n != 0 && i % m == 0) {
                let tmp = score(*metric, *norms, &w1.narrow(1, i, m), i1 + i)?;
                let (_, idx) = tmp.topk(n, 1, false, true);
                mask1 = mask1.scatter_value(1, &(idx + i), 1).to_kind(Kind::Bool);
            }
            let q = col.masked_fill(&mask1.select(1, i), 0.0);
            q1.select(1, i).copy_(&q);
            let e = (&col - &q) / d;
            // W1[:, i:] -= e ⊗ Hinv1[i, i:]: the outer product rounded first, then subtracted, as
            // the reference's matmul does (a fused rank-1 update rounds once and drifts from it).
            let mut rest = w1.narrow(1, i, count - i);
            rest -= e
                .unsqueeze(1)
                .matmul(&hinv1.get(i).narrow(0, i, count - i).unsqueeze(0));
            err1.select(1, i).copy_(&e);
        }
        w.narrow(1, i1, count).copy_(&q1);
        if i2 < cols {
            let mut tail = w.narrow(1, i2, cols - i2);
            tail -= err1.matmul(&hinv.narrow(0, i1, count).narrow(1, i2, cols - i2));
        }
    }
    Ok(w.to_kind(weight.kind()))
}

/// Inputs no calibration token ever activated (zero Hessian diagonal).
fn dead_inputs(h: &Tensor) -> Tensor {
    h.diagonal(0, 0, 1).eq(0.0)
}

/// The upper Cholesky factor of the damped H⁻¹, the official way: dead inputs get a unit
/// diagonal, then 1% of the mean diagonal is added to every diagonal entry.
fn inverse_hessian_upper(h: Tensor, dead: &Tensor) -> Result<Tensor> {
    let _ = h.diagonal(0, 0, 1).masked_fill_(dead, 1.0);
    // In f32 as the reference computes it: 0.01 times the mean of a contiguous copy of the diagonal
    // (a strided sum may add in another order), rounded in f32.
    let damp = h.diagonal(0, 0, 1).contiguous().mean(Kind::Float) * PERCDAMP;
    let _ = h.diagonal(0, 0, 1).g_add_(&damp);
    // libtorch's message runs on with its C++ stack; its first line says what failed.
    let first_line = |e: tch::TchError| e.to_string().lines().next().unwrap_or_default().to_string();
    let hint =
        "degenerate calibration activations (a few samples of one repeated text?); use more or other calibration data";
    let l = h
        .f_linalg_cholesky(false)
        .map_err(|e| anyhow::anyhow!("Cholesky of the damped Hessian failed ({}): {hint}", first_line(e)))?;
    l.cholesky_inverse(false)
        .f_linalg_cholesky(true)
        .map_err(|e| anyhow::anyhow!("Cholesky of the inverse Hessian failed ({}): {hint}", first_line(e)))
}

/// The diagonal of [`inverse_hessian_upper`] of a finished Hessian (left as it is): the `d` of
/// SparseGPT's saliency w²/d².
pub fn inverse_hessian_diagonal(h: &Tensor) -> Result<Tensor> {
    let h = h.copy();
    let dead = dead_inputs(&h);
    Ok(inverse_hessian_upper(h, &dead)?.diagonal(0, 0, 1))
}

/// SparseGPT's saliency w²/[H⁻¹]²_jj used as a plain metric, with no weight update (the paper's
/// Table 7 row). Its diagonal is that of the same factor `prune` uses, so on the first 128
/// columns of a layer its (input, 128) mask equals SparseGPT's own.
pub struct SparseGptMetric;

impl Metric for SparseGptMetric {
    fn name(&self) -> &str {
        "sparsegpt_metric"
    }
    fn needs(&self) -> Needs {
        Needs::HESSIAN
    }
    fn default_group(&self) -> Group {
        Group::InputBlocks
    }
    fn score(&self, w: &Tensor, stats: &LayerStats) -> Result<Tensor> {
        let w = w.to_kind(Kind::Float);
        let (w, d) = match stats.hinv_diag {
            // Inside SparseGPT's update, where the weights of dead inputs are zero already.
            Some(d) => (w, d.shallow_clone()),
            None => {
                let h = hessian(stats, self.name())?;
                (
                    w.masked_fill(&dead_inputs(h).unsqueeze(0), 0.0),
                    inverse_hessian_diagonal(h)?,
                )
            }
        };
        Ok(w.pow_tensor_scalar(2) / d.reshape([1, -1]).pow_tensor_scalar(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::mask::unstructured;
    use crate::prune::stats::Hessian;
    use tch::Device;

    /// Before any update has reached them, SparseGPT chooses the first block's mask with exactly
    /// this saliency in the (input, 128) group; later blocks differ because of the updates.
    #[test]
    fn metric_matches_sparsegpt_on_its_first_block() {
        tch::manual_seed(0);
        let w = Tensor::randn([64, 256], (Kind::Float, Device::Cpu));
        let mut h = Hessian::new(256, Device::Cpu);
        h.add_batch(&Tensor::randn([4, 96, 256], (Kind::Float, Device::Cpu)));
        let h = h.finish();
        let rule = MaskRule::PerBlock {
            metric: &SparseGptMetric,
            norms: None,
        };
        let pruned = prune(&w, h.copy(), 0.5, Pattern::Unstructured, rule).unwrap();
        let stats = LayerStats {
            hessian: Some(&h),
            ..LayerStats::default()
        };
        let mask = unstructured(
            &SparseGptMetric.score(&w, &stats).unwrap(),
            0.5,
            SparseGptMetric.default_group(),
        );
        let first = |t: &Tensor| t.narrow(1, 0, BLOCKSIZE);
        assert!(first(&pruned).eq(0.0).equal(&first(&mask)));
        let second = |t: &Tensor| t.narrow(1, BLOCKSIZE, BLOCKSIZE);
        assert!(!second(&pruned).eq(0.0).equal(&second(&mask)));
    }
}
