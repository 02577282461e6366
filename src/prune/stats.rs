//! Statistics of a linear layer's inputs over the calibration set, accumulated sample by sample
//! exactly as the official code's forward hooks do, so float results agree.

use tch::{Kind, Tensor};

/// The calibration statistics a method reads; none means no calibration forward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Wanda's per-input squared norms.
    pub norms: bool,
    /// SparseGPT's (in x in) Hessian, collected only when asked for.
    pub hessian: bool,
}

impl Needs {
    pub const NONE: Needs = Needs {
        norms: false,
        hessian: false,
    };
    pub const NORMS: Needs = Needs {
        norms: true,
        hessian: false,
    };
    pub const HESSIAN: Needs = Needs {
        norms: false,
        hessian: true,
    };

    pub fn any(self) -> bool {
        self.norms || self.hessian
    }
}

/// What a metric may read about one linear layer's calibration inputs.
#[derive(Clone, Copy, Default)]
pub struct LayerStats<'a> {
    pub norms: Option<&'a InputNorms>,
    /// H = 2/n Σ x xᵀ, finished.
    pub hessian: Option<&'a Tensor>,
    /// The diagonal of the upper Cholesky factor of the damped H⁻¹, when SparseGPT's update has
    /// computed it already: a mask re-chosen during the update reads the factor being used.
    pub hinv_diag: Option<&'a Tensor>,
}

/// Wanda's `scaler_row`: the running mean over samples of each input channel's squared L2 norm.
pub struct InputNorms {
    pub scaler_row: Tensor,
    pub nsamples: i64,
    /// The official ablation code (`AblateGPT.add_batch`) adds the norms of inputs already scaled
    /// by √(2/n) for the Hessian, weighting sample n by 2/n; its Table 8 masks depend on that.
    hessian_scaled: bool,
}

impl InputNorms {
    pub fn new(columns: i64, device: tch::Device) -> Self {
        InputNorms {
            scaler_row: Tensor::zeros([columns], (Kind::Float, device)),
            nsamples: 0,
            hessian_scaled: false,
        }
    }

    /// Statistics accumulated the way the weight-update ablation accumulates them.
    pub fn for_ablation(columns: i64, device: tch::Device) -> Self {
        InputNorms {
            hessian_scaled: true,
            ..Self::new(columns, device)
        }
    }

    /// The same statistics restricted to input columns `start..start+len`.
    pub fn columns(&self, start: i64, len: i64) -> InputNorms {
        InputNorms {
            scaler_row: self.scaler_row.narrow(0, start, len),
            ..*self
        }
    }

    /// `x` is (B, L, C): B samples, each updating the mean the way one hook call does.
    pub fn add_batch(&mut self, x: &Tensor) {
        let xf = x.to_kind(Kind::Float);
        for s in 0..x.size()[0] {
            self.scaler_row *= self.nsamples as f64 / (self.nsamples + 1) as f64;
            self.nsamples += 1;
            let xs = if self.hessian_scaled {
                xf.get(s) * (2.0 / self.nsamples as f64).sqrt()
            } else {
                xf.get(s)
            };
            self.scaler_row += xs.norm_scalaropt_dim(2, [0], false).pow_tensor_scalar(2) / self.nsamples as f64;
        }
    }
}

/// SparseGPT's Hessian H = 2/n Σ x xᵀ over all calibration tokens, in f32, accumulated sample by
/// sample exactly as the official hook does (rescale the running H, add the √(2/n)-scaled
/// sample's product). One GEMM per batch is the same sum rounded otherwise, and on some CPUs
/// (an AMD EPYC here) that rounding flipped near-tied 2:4 choices against the reference.
pub struct Hessian {
    h: Tensor,
    nsamples: i64,
}

impl Hessian {
    pub fn new(columns: i64, device: tch::Device) -> Self {
        Hessian {
            h: Tensor::zeros([columns, columns], (Kind::Float, device)),
            nsamples: 0,
        }
    }

    /// `x` is (B, L, C): B calibration samples, each one hook call.
    pub fn add_batch(&mut self, x: &Tensor) {
        let xf = x.to_kind(Kind::Float);
        for s in 0..x.size()[0] {
            self.h *= self.nsamples as f64 / (self.nsamples + 1) as f64;
            self.nsamples += 1;
            let inp = xf.get(s).tr() * (2.0 / self.nsamples as f64).sqrt();
            self.h += inp.matmul(&inp.tr());
        }
    }

    pub fn finish(self) -> Tensor {
        self.h
    }
}
