//! `repro kernels`: the paper's Table 5 on this machine's libtorch. Dense f16 linear layers at
//! LLaMA-65B shapes against the same weights pruned 2:4 and run through libtorch's
//! semi-structured sparse GEMM (cuSPARSELt's `_cslt_sparse_mm`, what PyTorch's
//! `to_sparse_semi_structured` uses), timed per call after a warm-up.

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::device::{device_name, libtorch_version, parse_device};
use crate::model::CausalLm;
use crate::prune::mask;

/// LLaMA-65B's linear layers as (out, in): q/k/v/o_proj, up/gate_proj, down_proj.
const LLAMA_65B: [(i64, i64); 3] = [(8192, 8192), (22016, 8192), (8192, 22016)];
/// Small shapes for a CPU smoke run of the same code.
const SMALL: [(i64, i64); 2] = [(256, 256), (688, 256)];
const TOKENS: [i64; 4] = [1, 16, 128, 2048];
/// cuSPARSELt wants the dense operand's token dimension in multiples of this (PyTorch pads the
/// same way); the dense GEMM runs on the true token count.
const SPARSE_TOKEN_MULTIPLE: i64 = 64;

#[derive(Serialize)]
pub struct KernelRow {
    pub out: i64,
    pub r#in: i64,
    pub tokens: i64,
    pub dense_ms: f64,
    pub sparse_ms: Option<f64>,
    pub speedup: Option<f64>,
    /// Largest |sparse - dense| over the output, against the largest |dense|: both multiply the
    /// same pruned weights, so this must be float rounding only.
    pub max_rel_diff: Option<f64>,
}

#[derive(Serialize)]
pub struct KernelReport {
    pub device: String,
    pub dtype: &'static str,
    pub libtorch_version: String,
    /// `cusparselt`, or why no sparse kernel could run here.
    pub sparse_backend: String,
    pub rows: Vec<KernelRow>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median milliseconds per call of `f`, after warm-up calls, over at least `min_reps` calls and
/// about a quarter of a second.
fn time_ms(device: Device, min_reps: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    for _ in 0..3 {
        let _ = f();
    }
    sync(device);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_reps || (start.elapsed().as_secs_f64() < 0.25 && samples.len() < 1000) {
        let t = Instant::now();
        let _ = f();
        sync(device);
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// `x Wᵀ + b` through cuSPARSELt with W compressed by `_cslt_compress`: the tokens, padded to
/// the kernel's multiple, are the dense operand and the result comes back transposed.
pub fn sparse_linear(compressed: &Tensor, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut shape = x.size();
    let inputs = shape.pop().expect("x has an input dimension");
    let flat = x.reshape([-1, inputs]);
    let n = flat.size()[0];
    let xt = padded_tokens(&flat).tr();
    let y = Tensor::internal_cslt_sparse_mm::<Tensor>(compressed, &xt, None, None, None::<Kind>, true, 0, 1, -1)
        .narrow(0, 0, n);
    let y = match bias {
        Some(b) => y + b,
        None => y,
    };
    let outputs = y.size()[1];
    shape.push(outputs);
    y.reshape(shape)
}

/// libtorch's error reduced to its first sentence (the rest lists every dispatch key).
fn unavailable(error: &str) -> String {
    let first = error
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("Internal torch error: ");
    format!("unavailable: {}", first.split(". ").next().unwrap_or(first))
}

/// (tokens, inputs) padded with zero rows to the kernel's token multiple.
fn padded_tokens(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let padded = (n + SPARSE_TOKEN_MULTIPLE - 1) / SPARSE_TOKEN_MULTIPLE * SPARSE_TOKEN_MULTIPLE;
    x.constant_pad_nd([0, 0, 0, padded - n])
}

/// Compresses every linear layer of a resident, 2:4-pruned model on a GPU for cuSPARSELt, so its
/// forward passes run on the sparse kernels (`--sparse-kernels`). Refuses, naming the layer, a
/// layer that is not 2:4 (a group of four inputs with fewer than two zeros); returns how many
/// layers were compressed.
pub fn use_sparse_kernels(model: &mut dyn CausalLm) -> Result<usize> {
    let device = model.device();
    ensure!(
        matches!(device, Device::Cuda(_)),
        "--sparse-kernels needs a CUDA device (cuSPARSELt); this run is on {}",
        device_name(device)
    );
    ensure!(
        matches!(model.kind(), Kind::Half | Kind::BFloat16),
        "--sparse-kernels needs f16 or bf16 weights (cuSPARSELt); use --dtype f16"
    );
    ensure!(
        !model.stack().is_streamed(),
        "--sparse-kernels needs the model resident on the GPU; use --stream off"
    );
    let prefix = model.info().block_prefix;
    let mut count = 0;
    for b in 0..model.stack().n_blocks() {
        let mut block = model.stack_mut().take_block(b)?;
        for (name, linear) in block.linears_mut() {
            let (rows, cols) = linear.weight.size2()?;
            let zeros = linear
                .weight
                .eq(0.0)
                .view([rows, cols / 4, 4])
                .sum_dim_intlist(-1, false, Kind::Int64);
            ensure!(
                cols % 4 == 0 && zeros.min().int64_value(&[]) >= 2,
                "--sparse-kernels: layer {prefix}{b}.{name} is not 2:4 sparse; prune with --pattern 2:4 first"
            );
            linear.sparse = Some(
                linear
                    .weight
                    .f_internal_cslt_compress()
                    .with_context(|| format!("compressing {prefix}{b}.{name} for cuSPARSELt"))?,
            );
            count += 1;
        }
        model.stack_mut().put_back(b, block)?;
    }
    Ok(count)
}

/// (ms per call, max relative difference from the dense product) of `x · prunedᵀ` through
/// cuSPARSELt with the compressed weights `c`.
fn sparse_timing(device: Device, c: &Tensor, x: &Tensor, pruned: &Tensor) -> Result<(f64, f64)> {
    // A first call through the fallible binding: an unsupported GPU or libtorch is an error here.
    let _ = Tensor::f_internal_cslt_sparse_mm::<Tensor>(
        c,
        &padded_tokens(x).tr(),
        None,
        None,
        None::<Kind>,
        true,
        0,
        1,
        -1,
    )?;
    let sparse = sparse_linear(c, x, None).to_kind(Kind::Float);
    let dense = x.linear::<Tensor>(pruned, None).to_kind(Kind::Float);
    let diff = (sparse - &dense).abs().max().double_value(&[]) / dense.abs().max().double_value(&[]).max(1e-30);
    Ok((time_ms(device, 5, || sparse_linear(c, x, None)), diff))
}

pub fn run(device: &str, small: bool) -> Result<KernelReport> {
    let device = parse_device(device)?;
    // Half precision where the sparse kernels exist; CPU GEMMs in f16 are slow emulation.
    let kind = if device == Device::Cpu { Kind::Float } else { Kind::Half };
    let shapes: &[(i64, i64)] = if small { &SMALL } else { &LLAMA_65B };
    let tokens: &[i64] = if small { &TOKENS[..2] } else { &TOKENS };
    tch::manual_seed(0);
    let mut backend = "cusparselt".to_string();
    let mut rows = Vec::new();
    for &(out, inp) in shapes {
        let w = Tensor::randn([out, inp], (kind, device)) * 0.02;
        let pruned = w.masked_fill(&mask::n_m(&w.abs(), 2, 4)?, 0.0);
        let compressed = match pruned.f_internal_cslt_compress() {
            Ok(c) => Some(c),
            Err(e) => {
                backend = unavailable(&e.to_string());
                None
            }
        };
        for &n in tokens {
            let x = Tensor::randn([n, inp], (kind, device));
            let dense_ms = time_ms(device, 5, || x.linear::<Tensor>(&pruned, None));
            let sparse = match &compressed {
                Some(c) => match sparse_timing(device, c, &x, &pruned) {
                    Ok(timing) => Some(timing),
                    Err(e) => {
                        backend = unavailable(&e.to_string());
                        None
                    }
                },
                None => None,
            };
            rows.push(KernelRow {
                out,
                r#in: inp,
                tokens: n,
                dense_ms,
                sparse_ms: sparse.map(|s| s.0),
                speedup: sparse.map(|s| dense_ms / s.0),
                max_rel_diff: sparse.map(|s| s.1),
            });
        }
    }
    Ok(KernelReport {
        device: device_name(device),
        dtype: crate::device::dtype_name(kind),
        libtorch_version: libtorch_version(),
        sparse_backend: backend,
        rows,
    })
}

/// The report as the Markdown table the README shows.
pub fn markdown(r: &KernelReport) -> String {
    let mut s = format!(
        "{} {} (libtorch {}), sparse backend: {}\n\n| weight (out x in) | tokens | dense ms | 2:4 ms | speedup |\n|---|---|---|---|---|\n",
        r.device, r.dtype, r.libtorch_version, r.sparse_backend
    );
    for row in &r.rows {
        let sparse = row.sparse_ms.map_or("-".into(), |v| format!("{v:.4}"));
        let speedup = row.speedup.map_or("-".into(), |v| format!("{v:.2}x"));
        s += &format!(
            "| {} x {} | {} | {:.4} | {sparse} | {speedup} |\n",
            row.out, row.r#in, row.tokens, row.dense_ms
        );
    }
    s
}

/// `repro kernels`: prints the table, or one JSON line with `--json`.
pub fn main(device: &str, small: bool, json: bool) -> Result<()> {
    let report = run(device, small).context("kernel benchmark")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_run_times_dense_layers_and_names_why_sparse_cannot_run() {
        let r = run("cpu", true).unwrap();
        assert_eq!(r.rows.len(), SMALL.len() * 2);
        assert!(r.rows.iter().all(|row| row.dense_ms > 0.0 && row.sparse_ms.is_none()));
        assert!(r.sparse_backend.starts_with("unavailable"), "{}", r.sparse_backend);
        assert!(markdown(&r).contains("| 688 x 256 | 16 |"));
    }
}
