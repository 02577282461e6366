//! Mask selection: which weights to zero given a score matrix (out, in), for each comparison
//! group of the paper. `true` in a mask means "prune". Ties and rounding follow the official
//! code: `int(n·ratio)` truncation, stable sorts, `<=` thresholds, `topk(largest=False)` for N:M.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Sparsity pattern: a fraction of weights anywhere, or N of every M consecutive inputs of a row.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pattern {
    Unstructured,
    NM { n: i64, m: i64 },
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern> {
        if s == "unstructured" {
            return Ok(Pattern::Unstructured);
        }
        let parsed = s
            .split_once(':')
            .and_then(|(n, m)| Some((n.parse::<i64>().ok()?, m.parse::<i64>().ok()?)));
        match parsed {
            Some((n, m)) if n > 0 && n < m => Ok(Pattern::NM { n, m }),
            Some((n, m)) => bail!("pattern `{s}`: N:M needs 0 < N < M (got N = {n}, M = {m}); e.g. 2:4 or 4:8"),
            None => bail!("pattern `{s}` is not `unstructured` or N:M (e.g. 2:4, 4:8)"),
        }
    }

    /// The fraction of weights this pattern removes at a requested sparsity.
    pub fn check_sparsity(&self, sparsity: f64) -> Result<()> {
        match self {
            Pattern::Unstructured if (0.0..1.0).contains(&sparsity) => Ok(()),
            Pattern::Unstructured => {
                bail!("sparsity {sparsity} (--sparsity, or `sparsities` in a sweep) must be in [0, 1)")
            }
            Pattern::NM { .. } if (sparsity - self.default_sparsity()).abs() < 1e-9 => Ok(()),
            Pattern::NM { n, m } => bail!(
                "pattern {n}:{m} prunes exactly {n}/{m} of the weights, but sparsity {sparsity} was requested; \
                 leave --sparsity out (it follows the pattern) or give {}",
                self.default_sparsity()
            ),
        }
    }

    /// What a run prunes when no sparsity is given: N/M for N:M, the paper's 50% otherwise.
    pub fn default_sparsity(&self) -> f64 {
        match self {
            Pattern::Unstructured => 0.5,
            Pattern::NM { n, m } => *n as f64 / *m as f64,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured => write!(f, "unstructured"),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl TryFrom<String> for Pattern {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Pattern::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.to_string()
    }
}

/// Which weights compete with each other for survival (Table 7 of the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Each row of W (each output): Wanda's choice.
    PerOutput,
    /// Each column of W (each input).
    PerInput,
    /// The whole matrix: magnitude pruning's choice.
    PerLayer,
    /// Blocks of 128 consecutive inputs (rows x 128 columns): SparseGPT's choice.
    #[serde(rename = "per-input-128")]
    InputBlocks,
    /// Blocks of 128 consecutive outputs (128 rows x all columns).
    #[serde(rename = "per-output-128")]
    OutputBlocks,
}

/// Width of the paper's (input, 128) and (output, 128) comparison groups.
pub const GROUP_BLOCK: i64 = 128;

impl Group {
    pub fn parse(s: &str) -> Result<Group> {
        match s {
            "per-output" | "output" | "row" => Ok(Group::PerOutput),
            "per-input" | "input" | "column" => Ok(Group::PerInput),
            "per-layer" | "layer" => Ok(Group::PerLayer),
            "per-input-128" | "input-128" => Ok(Group::InputBlocks),
            "per-output-128" | "output-128" => Ok(Group::OutputBlocks),
            _ => bail!("comparison group `{s}`: use per-output, per-input, per-layer, per-input-128 or per-output-128"),
        }
    }

    /// The name `--group` and run records use (`per-output`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Unstructured mask at `ratio` within `group`.
pub fn unstructured(score: &Tensor, ratio: f64, group: Group) -> Tensor {
    let (rows, cols) = score.size2().expect("score is 2-D");
    match group {
        Group::PerLayer => threshold_mask(score, ratio),
        Group::PerOutput => lowest_per_row(score, (cols as f64 * ratio) as i64),
        Group::PerInput => lowest_per_row(&score.transpose(0, 1), (rows as f64 * ratio) as i64).transpose(0, 1),
        Group::InputBlocks => by_blocks(score, 1, ratio),
        Group::OutputBlocks => by_blocks(score, 0, ratio),
    }
}

/// The official whole-group rule (magnitude per layer, SparseGPT per block): sort the scores,
/// take the value at index int(numel·ratio) and prune everything `<=` it.
pub fn threshold_mask(score: &Tensor, ratio: f64) -> Tensor {
    let k = (score.numel() as f64 * ratio) as i64;
    let (sorted, _) = score.flatten(0, -1).sort(0, false);
    score.le_tensor(&sorted.get(k))
}

/// [`threshold_mask`] within each block of [`GROUP_BLOCK`] consecutive indices along `dim`
/// (the last block may be narrower).
fn by_blocks(score: &Tensor, dim: i64, ratio: f64) -> Tensor {
    let len = score.size()[dim as usize];
    let blocks: Vec<Tensor> = (0..len)
        .step_by(GROUP_BLOCK as usize)
        .map(|start| threshold_mask(&score.narrow(dim, start, GROUP_BLOCK.min(len - start)), ratio))
        .collect();
    Tensor::cat(&blocks, dim)
}

/// In every row, the `k` lowest scores (stable sort, so equal scores go by position).
fn lowest_per_row(score: &Tensor, k: i64) -> Tensor {
    let mask = score.zeros_like().to_kind(Kind::Bool);
    if k == 0 {
        return mask;
    }
    let (_, idx) = score.sort_stable(true, -1, false);
    mask.scatter_value(1, &idx.narrow(1, 0, k), 1).to_kind(Kind::Bool)
}

/// N:M mask: in each row, within every block of `m` consecutive columns, the `n` lowest scores.
pub fn n_m(score: &Tensor, n: i64, m: i64) -> Result<Tensor> {
    let (rows, cols) = score.size2().expect("score is 2-D");
    if cols % m != 0 {
        bail!("{cols} input columns are not a multiple of M = {m}");
    }
    let groups = score.to_kind(Kind::Float).view([rows, cols / m, m]);
    let (_, idx) = groups.topk(n, -1, false, true);
    let mask = groups.zeros_like().scatter_value(-1, &idx, 1).to_kind(Kind::Bool);
    Ok(mask.view([rows, cols]))
}

/// How close the variant's alpha search brings a layer's sparsity to the target before it stops.
pub const VARIANT_TOLERANCE: f64 = 0.001;

/// The Wanda variant: per row, prune the smallest scores whose cumulative sum stays within
/// alpha of the row total, with alpha bisected until the layer's sparsity is within 0.001 of
/// the target (the official `return_given_alpha` loop, same bracket and stopping rule). The
/// official code compares the sparsity as a float32 tensor, so the stopping test is done in f32.
pub fn variant(score: &Tensor, ratio: f64) -> (Tensor, f64) {
    let tolerance = VARIANT_TOLERANCE as f32;
    let ratio32 = ratio as f32;
    let (sorted, _) = score.sort_stable(true, -1, false);
    let cumsum = sorted.cumsum(1, sorted.kind());
    let total = score.sum_dim_intlist(1, false, score.kind());
    let given_alpha = |alpha: f64| {
        let within = cumsum.le_tensor(&(&total * alpha).reshape([-1, 1]));
        let idx = (within.sum_dim_intlist(1, true, Kind::Int64) - 1).clamp_min(0);
        let thresh = sorted.gather(1, &idx, false);
        let mask = score.le_tensor(&thresh);
        let pruned = mask.sum(Kind::Int64).int64_value(&[]);
        (mask, pruned as f32 / score.numel() as f32)
    };
    let (mut alpha, mut lo, mut hi) = (0.4, 0.0, 0.8);
    let (mut mask, mut sparsity) = given_alpha(alpha);
    while (sparsity - ratio32).abs() > tolerance && hi - lo >= 0.001 {
        if sparsity > ratio32 {
            hi = alpha;
            alpha = (alpha + lo) / 2.0;
        } else {
            lo = alpha;
            alpha = (alpha + hi) / 2.0;
        }
        (mask, sparsity) = given_alpha(alpha);
    }
    (mask, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 4]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 4])
    }

    fn kept(w: &Tensor, mask: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(w.masked_fill(mask, 0.0).flatten(0, -1)).unwrap()
    }

    /// Figure 1 of the paper: magnitude per layer vs Wanda per output on a toy layer.
    /// The figure keeps both |2| weights; the official code's rule (prune everything `<=` the
    /// value at index int(12·0.5) = 6 of the sorted |W|, which is 2) prunes them too, and the
    /// official code is what repro reproduces.
    #[test]
    fn paper_figure_1() {
        let w = t(&[[4., 0., 1., -1.], [3., -2., -1., -3.], [-3., 1., 0., 2.]]);
        let norms = Tensor::from_slice(&[1f32, 2., 8., 3.]);
        let mag = unstructured(&w.abs(), 0.5, Group::PerLayer);
        assert_eq!(kept(&w, &mag), vec![4., 0., 0., 0., 3., 0., 0., -3., -3., 0., 0., 0.]);
        let score = w.abs() * norms.unsqueeze(0);
        assert_eq!(
            Vec::<f32>::try_from(score.flatten(0, -1)).unwrap(),
            vec![4., 0., 8., 3., 3., 4., 8., 9., 3., 2., 0., 6.]
        );
        let wanda = unstructured(&score, 0.5, Group::PerOutput);
        assert_eq!(
            kept(&w, &wanda),
            vec![4., 0., 1., 0., 0., 0., -1., -3., -3., 0., 0., 2.]
        );
    }

    #[test]
    fn stable_ties_prune_earlier_columns_first() {
        let s = t(&[[1., 1., 1., 1.]]);
        let m = unstructured(&s, 0.5, Group::PerOutput);
        assert_eq!(
            Vec::<bool>::try_from(m.flatten(0, -1)).unwrap(),
            vec![true, true, false, false]
        );
    }

    #[test]
    fn per_input_group_prunes_within_columns() {
        let s = t(&[[1., 5., 3., 0.], [2., 4., 1., 9.]]);
        let m = unstructured(&s, 0.5, Group::PerInput);
        assert_eq!(
            Vec::<bool>::try_from(m.flatten(0, -1)).unwrap(),
            vec![true, false, false, true, false, true, true, false]
        );
    }

    #[test]
    fn block_groups_threshold_each_block_of_128() {
        // Three input blocks (128, 128 and 4 columns) with ever larger scores. A per-layer
        // threshold prunes all of the first block; per block, each loses half (plus the `<=` tie).
        let small = Tensor::arange(2 * 128, (Kind::Float, tch::Device::Cpu)).view([2, 128]);
        let score = Tensor::cat(&[&small, &(&small + 1000.0), &(&small.narrow(1, 0, 4) + 5000.0)], 1);
        let pruned = |m: &Tensor, start, len| m.narrow(1, start, len).sum(Kind::Int64).int64_value(&[]);
        let m = unstructured(&score, 0.5, Group::InputBlocks);
        assert_eq!(
            (pruned(&m, 0, 128), pruned(&m, 128, 128), pruned(&m, 256, 4)),
            (129, 129, 5)
        );
        assert_eq!(pruned(&unstructured(&score, 0.5, Group::PerLayer), 0, 128), 256);
        let out = unstructured(&score.transpose(0, 1), 0.5, Group::OutputBlocks);
        assert!(out.equal(&m.transpose(0, 1)));
    }

    #[test]
    fn n_m_prunes_n_of_every_m() {
        let s = Tensor::randn([16, 32], (Kind::Float, tch::Device::Cpu));
        let m = n_m(&s, 2, 4).unwrap();
        let per_group = m.view([16, 8, 4]).sum_dim_intlist(-1, false, Kind::Int64);
        assert!(per_group.eq(2).all().int64_value(&[]) == 1);
        let kept_min = s.masked_fill(&m, f64::NEG_INFINITY).view([16, 8, 4]).amax(-1, false);
        let pruned_max = s
            .masked_fill(&m.logical_not(), f64::NEG_INFINITY)
            .view([16, 8, 4])
            .amax(-1, false);
        assert!(kept_min.ge_tensor(&pruned_max).all().int64_value(&[]) == 1);
        assert!(n_m(&s.narrow(1, 0, 30), 2, 4).is_err());
    }

    #[test]
    fn variant_hits_target_sparsity() {
        tch::manual_seed(0);
        let s = Tensor::rand([64, 256], (Kind::Float, tch::Device::Cpu));
        let (mask, _alpha) = variant(&s, 0.5);
        let sp = mask.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((sp - 0.5).abs() <= 0.001 + 1.0 / 256.0, "{sp}");
    }

    #[test]
    fn patterns_parse_and_refuse() {
        assert_eq!(Pattern::parse("2:4").unwrap(), Pattern::NM { n: 2, m: 4 });
        assert!(Pattern::parse("5:4").unwrap_err().to_string().contains("0 < N < M"));
        assert!(Pattern::parse("dense").is_err());
        assert!(Pattern::NM { n: 2, m: 4 }.check_sparsity(0.6).is_err());
        assert!(Pattern::Unstructured.check_sparsity(1.0).is_err());
        assert!(Group::parse("rows").is_err());
    }
}
