//! Which library multiplies a dense linear layer on the CPU.
//!
//! Calibration and pruning keep libtorch's own `linear` (MKL's sgemm on x86), the arithmetic the
//! official code ran, so masks stay bit-identical to its goldens. Scoring (perplexity and
//! zero-shot) needs log-likelihoods to float rounding only, and there f32 layers multiply through
//! oneDNN, which libtorch also ships: MKL runs a generic AVX2 kernel on AMD CPUs while oneDNN uses
//! AVX-512 wherever the CPU has it. Measured on an AMD EPYC at llama-tiny's shapes, one thread:
//! 1.5-2.6x per GEMM, 25% of zero-shot time (scripts/bench_zeroshot.sh).

use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    static ONEDNN: Cell<bool> = const { Cell::new(false) };
}

/// `x Wᵀ + b`, through oneDNN inside a [`scoring`] scope for f32 on the CPU.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let onednn = ONEDNN.get() && x.device() == Device::Cpu && x.kind() == Kind::Float && weight.kind() == Kind::Float;
    if onednn {
        onednn_linear(x, weight, bias)
    } else {
        x.linear(weight, bias)
    }
}

fn onednn_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut shape = x.size();
    let inputs = *shape.last().expect("a linear layer's input has a feature dimension");
    *shape.last_mut().expect("checked above") = weight.size()[0];
    x.reshape([-1, inputs])
        .contiguous()
        .to_mkldnn()
        .mkldnn_linear(&weight.to_mkldnn(), bias.map(Tensor::to_mkldnn))
        .to_dense(None, false)
        .view(shape.as_slice())
}

/// While alive, this thread's f32 CPU linear layers multiply through oneDNN (where libtorch was
/// built with it and the CPU is not Intel's).
pub struct Scoring {
    previous: bool,
}

pub fn scoring() -> Scoring {
    Scoring {
        previous: ONEDNN.replace(onednn_scores()),
    }
}

/// Whether a scoring scope multiplies through oneDNN on this machine.
fn onednn_scores() -> bool {
    tch::utils::has_mkldnn() && !intel_cpu()
}

/// Whether CPUID's vendor string is Intel's, the only vendor MKL gives its fastest kernels to.
#[cfg(target_arch = "x86_64")]
fn intel_cpu() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    [id.ebx, id.edx, id.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .eq(*b"GenuineIntel")
}

#[cfg(not(target_arch = "x86_64"))]
fn intel_cpu() -> bool {
    false
}

impl Drop for Scoring {
    fn drop(&mut self) {
        ONEDNN.set(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oneDNN's product is libtorch's to float rounding, for 2-D and 3-D inputs, with and without
    /// bias; a scoring scope uses it exactly where the CPU is not Intel's, and outside one the
    /// product is libtorch's own.
    #[test]
    fn onednn_linear_equals_libtorch_linear() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(0);
        let (x, w, b) = (
            Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu)),
            Tensor::randn([48, 64], (Kind::Float, Device::Cpu)),
            Tensor::randn([48], (Kind::Float, Device::Cpu)),
        );
        for (x, bias) in [(x.shallow_clone(), None), (x.get(0), Some(&b))] {
            let want = x.linear(&w, bias);
            assert!(
                linear(&x, &w, bias).equal(&want),
                "outside a scoring scope: libtorch's linear"
            );
            let scoped = {
                let _s = scoring();
                linear(&x, &w, bias)
            };
            let expected = if onednn_scores() {
                onednn_linear(&x, &w, bias)
            } else {
                want.shallow_clone()
            };
            assert!(
                scoped.equal(&expected),
                "a scoring scope multiplies through oneDNN exactly where libtorch has it and the CPU is not Intel's"
            );
            if tch::utils::has_mkldnn() {
                let got = onednn_linear(&x, &w, bias);
                assert_eq!(got.size(), want.size());
                let diff = (&got - &want).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "oneDNN differs by {diff}");
            }
        }
        assert!(!ONEDNN.get(), "the scope ends with its guard");
    }
}
