//! Layer-wise sparsity allocation: the same ratio for every block (the paper's), OWL's
//! outlier-weighted ratios (Yin et al., "Outlier Weighed Layerwise Sparsity", ICML 2024), or one
//! ratio per block given by hand. Every linear layer of a block gets its block's ratio.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use tch::{Kind, Tensor};

use super::mask::Pattern;

/// The OWL paper's LLaMA settings.
pub const OWL_M: f64 = 5.0;
pub const OWL_LAMBDA: f64 = 0.08;
/// What the official code gives a block whose OWL sparsity comes out at or below zero.
const OWL_FLOOR: f64 = 0.01;

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "AllocationText", into = "AllocationText")]
pub enum Allocation {
    #[default]
    Uniform,
    /// Blocks with more outliers (Wanda scores above `m` times their mean) keep more weights,
    /// within ±`lambda` of the target density.
    Owl { m: f64, lambda: f64 },
    /// One sparsity per block.
    Blocks(Vec<f64>),
}

/// How allocations are written in configs and records: `uniform`, `owl`, `{owl: {m, lambda}}`
/// or a list of per-block sparsities.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum AllocationText {
    Name(String),
    Owl { owl: OwlSettings },
    List(Vec<f64>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwlSettings {
    #[serde(default = "default_m")]
    m: f64,
    #[serde(default = "default_lambda")]
    lambda: f64,
}

fn default_m() -> f64 {
    OWL_M
}
fn default_lambda() -> f64 {
    OWL_LAMBDA
}

impl TryFrom<AllocationText> for Allocation {
    type Error = anyhow::Error;
    fn try_from(t: AllocationText) -> Result<Self> {
        let a = match t {
            AllocationText::Name(n) if n == "uniform" => Allocation::Uniform,
            AllocationText::Name(n) if n == "owl" => Allocation::Owl {
                m: OWL_M,
                lambda: OWL_LAMBDA,
            },
            AllocationText::Name(n) => bail!(
                "allocation `{n}`: use uniform, owl, {{owl: {{m: 5, lambda: 0.08}}}} or a list of per-block sparsities"
            ),
            AllocationText::Owl { owl } => Allocation::Owl {
                m: owl.m,
                lambda: owl.lambda,
            },
            AllocationText::List(l) => Allocation::Blocks(l),
        };
        a.check_values()?;
        Ok(a)
    }
}

impl From<Allocation> for AllocationText {
    fn from(a: Allocation) -> Self {
        match a {
            Allocation::Uniform => AllocationText::Name("uniform".into()),
            Allocation::Owl { m, lambda } => AllocationText::Owl {
                owl: OwlSettings { m, lambda },
            },
            Allocation::Blocks(l) => AllocationText::List(l),
        }
    }
}

impl fmt::Display for Allocation {
    /// The label part: `owl`, `owl(m=7,lambda=0.1)`, `per-block`; empty for uniform.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Uniform => Ok(()),
            Allocation::Owl { m, lambda } if *m == OWL_M && *lambda == OWL_LAMBDA => write!(f, "owl"),
            Allocation::Owl { m, lambda } => write!(f, "owl(m={m},lambda={lambda})"),
            Allocation::Blocks(_) => write!(f, "per-block"),
        }
    }
}

impl Allocation {
    /// `--allocation uniform|owl|r1,r2,...` with `--owl-m` and `--owl-lambda`.
    pub fn parse(s: &str, m: Option<f64>, lambda: Option<f64>) -> Result<Allocation> {
        let a = match s.trim() {
            "uniform" => Allocation::Uniform,
            "owl" => Allocation::Owl {
                m: m.unwrap_or(OWL_M),
                lambda: lambda.unwrap_or(OWL_LAMBDA),
            },
            list => {
                let ratios = list
                    .split(',')
                    .map(|r| r.trim().parse::<f64>())
                    .collect::<Result<Vec<_>, _>>();
                match ratios {
                    Ok(r) => Allocation::Blocks(r),
                    Err(_) => bail!("--allocation `{s}`: use uniform, owl, or a comma-separated list of per-block sparsities (0.6,0.7,...)"),
                }
            }
        };
        if !matches!(a, Allocation::Owl { .. }) && (m.is_some() || lambda.is_some()) {
            bail!("--owl-m and --owl-lambda apply to --allocation owl only");
        }
        a.check_values()?;
        Ok(a)
    }

    pub fn is_uniform(&self) -> bool {
        *self == Allocation::Uniform
    }

    /// OWL ranks blocks by the Wanda metric, so it calibrates even for data-free metrics.
    pub fn needs_calibration(&self) -> bool {
        matches!(self, Allocation::Owl { .. })
    }

    fn check_values(&self) -> Result<()> {
        match self {
            Allocation::Uniform => Ok(()),
            Allocation::Owl { m, lambda } => {
                ensure!(
                    *m > 0.0 && m.is_finite(),
                    "OWL's M (--owl-m, `owl.m`) must be positive (the paper uses 5), got {m}"
                );
                ensure!(
                    (0.0..0.5).contains(lambda),
                    "OWL's lambda (--owl-lambda, `owl.lambda`) must be in [0, 0.5) (the paper uses 0.08), got {lambda}"
                );
                Ok(())
            }
            Allocation::Blocks(l) => {
                ensure!(!l.is_empty(), "a per-block allocation needs one sparsity per block");
                if let Some(r) = l.iter().find(|r| !(0.0..1.0).contains(*r)) {
                    bail!("per-block sparsity {r} must be in [0, 1)");
                }
                Ok(())
            }
        }
    }

    /// Refuses what cannot be allocated: N:M fixes every layer's sparsity at N/M.
    pub fn check_pattern(&self, pattern: Pattern) -> Result<()> {
        if let (false, Pattern::NM { .. }) = (self.is_uniform(), pattern) {
            bail!("allocation {self} with pattern {pattern}: N:M prunes exactly N of every M weights in every layer, so it cannot give blocks different sparsities; use unstructured sparsity or --allocation uniform");
        }
        Ok(())
    }

    /// The overall sparsity a per-block list amounts to (blocks of a model have equal sizes).
    pub fn list_target(&self) -> Option<f64> {
        match self {
            Allocation::Blocks(l) => Some(numpy_mean(l)),
            _ => None,
        }
    }
}

/// OWL's layerwise outlier distribution of one block: the percentage of the Wanda scores of all
/// its linear layers together that exceed `m` times their common mean (the official
/// `check_outlier_mean` over the concatenated, flattened scores).
pub fn outlier_ratio(scores: &[Tensor], m: f64) -> f64 {
    let all = Tensor::cat(
        &scores
            .iter()
            .map(|s| s.to_kind(Kind::Float).to_device(tch::Device::Cpu).flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    let threshold = all.mean(None::<Kind>) * m;
    let count = all.gt_tensor(&threshold).sum(Kind::Int64).int64_value(&[]);
    count as f64 / all.numel() as f64 * 100.0
}

/// Per-block sparsities from outlier ratios, as the official code computes them in float64:
/// ratios scaled to [0, 2·lambda], shifted so that their mean is the target density, then
/// sparsity = 1 - density, with sparsities at or below zero raised to 0.01.
pub fn owl_sparsities(ratios: &[f64], lambda: f64, target: f64) -> Result<Vec<f64>> {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max <= min {
        bail!(
            "OWL: every block has the same outlier ratio ({min:.6}%), so there is nothing to allocate by (the official code divides by zero here); \
             use --allocation uniform, or another --owl-m"
        );
    }
    let scale = 1.0 / (max - min) * lambda * 2.0;
    let scaled: Vec<f64> = ratios.iter().map(|r| (r - min) * scale).collect();
    let mean = numpy_mean(&scaled);
    let sparsities: Vec<f64> = scaled
        .iter()
        .map(|s| 1.0 - (s - mean + (1.0 - target)))
        .map(|s| if s <= 0.0 { OWL_FLOOR } else { s })
        .collect();
    if let Some((i, s)) = sparsities.iter().enumerate().find(|(_, s)| **s >= 1.0) {
        bail!("OWL gives block {i} sparsity {s:.4}, which would remove every weight; lower the target sparsity or --owl-lambda");
    }
    Ok(sparsities)
}

/// numpy's float64 `mean`: its pairwise summation (8 accumulators up to 128 elements), then / n,
/// so that the OWL ratios agree with the official code to the last bit.
fn numpy_mean(x: &[f64]) -> f64 {
    fn pairwise(x: &[f64]) -> f64 {
        let n = x.len();
        if n < 8 {
            // numpy starts this loop from -0.0 (the additive identity), which only matters for
            // an all-negative-zero input.
            return x.iter().fold(-0.0, |acc, v| acc + v);
        }
        if n <= 128 {
            let mut r: [f64; 8] = x[..8].try_into().expect("at least 8 elements");
            let whole = n - n % 8;
            for chunk in x[8..whole].chunks_exact(8) {
                for (acc, v) in r.iter_mut().zip(chunk) {
                    *acc += v;
                }
            }
            let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for v in &x[whole..] {
                res += v;
            }
            return res;
        }
        let half = n / 2;
        let half = half - half % 8;
        pairwise(&x[..half]) + pairwise(&x[half..])
    }
    pairwise(x) / x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owl_centres_the_range_on_the_mean_and_clamps_like_the_official_code() {
        let s = owl_sparsities(&[1.0, 2.0, 4.0], 0.1, 0.7).unwrap();
        // Scaled to [0, 0.2]: 0, 1/15, 0.2; mean 4/45; density = scaled - 4/45 + 0.3 (centred on
        // the mean: the midpoint would give 0.8, 0.733, 0.6).
        let want = [0.7 + 4.0 / 45.0, 0.7 + 4.0 / 45.0 - 1.0 / 15.0, 0.7 + 4.0 / 45.0 - 0.2];
        for (got, want) in s.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert!(
            (s.iter().sum::<f64>() / 3.0 - 0.7).abs() < 1e-12,
            "the mean is the target"
        );
        assert_eq!(owl_sparsities(&[1.0, 2.0], 0.3, 0.1).unwrap()[1], OWL_FLOOR);
        let e = owl_sparsities(&[3.0, 3.0, 3.0], 0.08, 0.7).unwrap_err().to_string();
        assert!(
            e.contains("same outlier ratio") && e.contains("--allocation uniform"),
            "{e}"
        );
        assert_eq!(
            owl_sparsities(&[1.0, 5.0], 0.0, 0.7).unwrap(),
            vec![1.0 - (1.0 - 0.7), 1.0 - (1.0 - 0.7)]
        );
    }

    #[test]
    fn numpy_mean_sums_pairwise() {
        let x: Vec<f64> = (0..300).map(|i| 0.1 * i as f64 + 1e-17 * i as f64).collect();
        let naive = x.iter().sum::<f64>() / 300.0;
        assert!((numpy_mean(&x) - naive).abs() < 1e-9);
        assert_eq!(numpy_mean(&[0.1, 0.2, 0.3]), (0.1 + 0.2 + 0.3) / 3.0);
    }

    #[test]
    fn allocations_parse_from_flags_and_yaml() {
        assert_eq!(
            Allocation::parse("owl", None, Some(0.1)).unwrap(),
            Allocation::Owl { m: 5.0, lambda: 0.1 }
        );
        assert_eq!(
            Allocation::parse("0.6, 0.8", None, None).unwrap(),
            Allocation::Blocks(vec![0.6, 0.8])
        );
        assert!(Allocation::parse("uniform", Some(3.0), None)
            .unwrap_err()
            .to_string()
            .contains("--allocation owl only"));
        assert!(Allocation::parse("0.6,1.2", None, None)
            .unwrap_err()
            .to_string()
            .contains("must be in [0, 1)"));
        assert!(Allocation::parse("owls", None, None)
            .unwrap_err()
            .to_string()
            .contains("comma-separated list"));
        let yaml = |s: &str| serde_yaml::from_str::<Allocation>(s);
        assert_eq!(yaml("owl").unwrap(), Allocation::Owl { m: 5.0, lambda: 0.08 });
        assert_eq!(yaml("{owl: {m: 7}}").unwrap(), Allocation::Owl { m: 7.0, lambda: 0.08 });
        assert_eq!(yaml("[0.5, 0.7]").unwrap(), Allocation::Blocks(vec![0.5, 0.7]));
        assert!(yaml("{owl: {lamda: 0.1}}").is_err());
        let e = Allocation::Owl { m: 5.0, lambda: 0.08 }
            .check_pattern(Pattern::NM { n: 2, m: 4 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("N:M prunes exactly N of every M"), "{e}");
        // Records keep the same spelling.
        let a = Allocation::Owl { m: 7.0, lambda: 0.1 };
        assert_eq!(
            serde_json::from_value::<Allocation>(serde_json::to_value(&a).unwrap()).unwrap(),
            a
        );
    }
}
