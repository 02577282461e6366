//! What a run will cost before it runs: the work of each phase (calibration passes, pruning,
//! perplexity, zero-shot) counted from the model's shape and the run's settings, turned into
//! seconds with the device's measured rates, and the memory it needs on the device.
//!
//! Work comes in four kinds, each with its own rate from the probe: matrix products (FLOPs),
//! elementwise passes (bytes moved), tiny operations (one dispatch or launch each) and sorts
//! (elements x log2 length). Forward passes follow the pipeline exactly: block 0's inputs are
//! captured, every block runs once unpruned up to its last linear layer's input (statistics) and,
//! but the last, once pruned; perplexity runs every window through every block and the head.

use serde::Serialize;
use std::ops::{Add, Mul};

use super::probe::Throughput;
use super::tokens::{calibration_name, Counted, EvalTokens};
use crate::config::RunSpec;
use crate::model::shape::{LinearShape, ModelShape};
use crate::model::Streaming;
use crate::prune::mask::{Group, Pattern};
use crate::prune::registry::Update;
use crate::prune::sparsegpt::BLOCKSIZE;
use crate::prune::Method;

/// Work of one phase, in the four units the probe measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
    pub ops: f64,
    pub sort: f64,
}

impl Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        Work {
            flops: self.flops + o.flops,
            bytes: self.bytes + o.bytes,
            ops: self.ops + o.ops,
            sort: self.sort + o.sort,
        }
    }
}

impl Mul<f64> for Work {
    type Output = Work;
    fn mul(self, k: f64) -> Work {
        Work {
            flops: self.flops * k,
            bytes: self.bytes * k,
            ops: self.ops * k,
            sort: self.sort * k,
        }
    }
}

impl Work {
    pub fn seconds(&self, rate: &Throughput) -> f64 {
        self.flops / rate.matmul_flops
            + self.bytes / rate.bandwidth
            + self.ops * rate.op_latency
            + self.sort / rate.sort_rate
    }
}

/// The phases a run's time is split into, as its record times them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Phases<T> {
    /// Calibration forward passes and statistics (`calibration_forward_seconds`).
    pub calibration: T,
    /// Scores, masks and weight updates (`prune_seconds`).
    pub pruning: T,
    /// `eval_seconds`.
    pub perplexity: T,
    /// `zero_shot_seconds`.
    pub zero_shot: T,
}

impl<T: Copy> Phases<T> {
    /// Phase by phase `f(self, other)`.
    pub fn zip<U: Copy, V>(self, other: Phases<U>, f: impl Fn(T, U) -> V) -> Phases<V> {
        Phases {
            calibration: f(self.calibration, other.calibration),
            pruning: f(self.pruning, other.pruning),
            perplexity: f(self.perplexity, other.perplexity),
            zero_shot: f(self.zero_shot, other.zero_shot),
        }
    }
}

impl Phases<f64> {
    pub fn total(&self) -> f64 {
        self.calibration + self.pruning + self.perplexity + self.zero_shot
    }
}

/// Whether a run fits in the selected device's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Fit {
    Fits,
    /// Fits because the model is streamed block by block (`--stream auto` chose it, or `on`).
    Streams,
    /// Fits only when streamed, which the run's `stream` setting does not allow.
    NeedsStreaming,
    CannotFit,
    /// The device's memory is not known here.
    Unknown,
}

/// What a run will cost.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub work: Phases<Work>,
    /// Seconds per phase; `None` without rates for the device.
    pub seconds: Option<Phases<f64>>,
    /// Weights, calibration buffers, statistics and the largest activation, on the run's device.
    pub device_bytes: u64,
    /// Peak host memory: the runtime's own plus, on CPU, the device bytes.
    pub host_bytes: u64,
    pub streams: bool,
    pub fit: Fit,
    /// Evaluations whose tokens could not be counted (their work is left out), with the reason.
    pub uncounted: Vec<String>,
}

impl Estimate {
    pub fn flops(&self) -> f64 {
        let w = &self.work;
        w.calibration.flops + w.pruning.flops + w.perplexity.flops + w.zero_shot.flops
    }
}

/// Where a run will execute: its rates (in the run's dtype, and in f32, which SparseGPT's solver
/// and the Hessians use), its memory, and the runtime's own host memory.
pub struct Target {
    pub rates: Option<Throughput>,
    pub f32_rates: Option<Throughput>,
    /// Device memory on a GPU; memory available now on CPU.
    pub memory_bytes: Option<u64>,
    /// Resident memory of this process with libtorch loaded and initialised.
    pub runtime_bytes: u64,
}

/// Tiny operations per block forward (norms, rotary, activation, residuals, attention, linears).
const OPS_PER_BLOCK: f64 = 30.0;
/// Tiny operations per SparseGPT column (select, mask, error, rank-1 update, copies, one sync).
const OPS_PER_COLUMN: f64 = 10.0;

/// Elements touched per token by a block's elementwise operations, read and written once each.
fn block_elementwise(shape: &ModelShape) -> f64 {
    (12 * shape.hidden + 4 * shape.intermediate + 4 * shape.attention_width) as f64 * 2.0
}

/// Forward of `tokens` tokens in sequences of `len` through one block, in `batches` passes,
/// stopping before the products of `skip_last` (the statistics pass).
fn block_forward(shape: &ModelShape, tokens: f64, len: f64, batches: f64, elt: f64, skip_last: bool) -> Work {
    let last = shape.linears().last().map_or(0, |l| l.rows * l.cols);
    let macs = (shape.linear_params() - if skip_last { last } else { 0 }) as f64;
    Work {
        flops: 2.0 * tokens * (macs + len * shape.attention_width as f64),
        bytes: tokens * block_elementwise(shape) * elt + batches * shape.block_params as f64 * elt,
        ops: batches * OPS_PER_BLOCK,
        sort: 0.0,
    }
}

/// The head on `tokens` positions, and the f32 log-softmax of their logits.
fn head(shape: &ModelShape, tokens: f64, batches: f64, elt: f64) -> Work {
    Work {
        flops: 2.0 * tokens * shape.head_macs as f64,
        bytes: tokens * shape.vocab as f64 * (elt + 3.0 * 4.0) + batches * shape.head_macs as f64 * elt,
        ops: batches * 10.0,
        sort: 0.0,
    }
}

/// The calibration passes of a method that calibrates: capture, per block a statistics pass (with
/// the Hessians' GEMMs or the input norms) and, but for the last block, a pass of the pruned block.
fn calibration(shape: &ModelShape, method: &Method, nsamples: f64, len: f64, batch: f64, elt: f64) -> (Work, Work) {
    let tokens = nsamples * len;
    let batches = (nsamples / batch.max(1.0)).ceil();
    let (hessian, norms) = needs_statistics(method);
    let stats: f64 = shape
        .inputs
        .iter()
        .map(|g| g[0].cols as f64)
        .map(|c| if hessian { 2.0 * tokens * c * c } else { 0.0 })
        .sum();
    let norm_bytes: f64 = shape
        .inputs
        .iter()
        .map(|g| {
            if norms {
                tokens * g[0].cols as f64 * 4.0 * 3.0
            } else {
                0.0
            }
        })
        .sum();
    let per_block = block_forward(shape, tokens, len, batches, elt, true)
        + Work {
            flops: 0.0,
            bytes: norm_bytes,
            ops: batches * shape.inputs.len() as f64 * 3.0,
            sort: 0.0,
        };
    let layers = shape.n_layers as f64;
    let dense = per_block * layers + block_forward(shape, tokens, len, batches, elt, false) * (layers - 1.0);
    // The Hessians' GEMMs run in f32 whatever the run's dtype.
    (
        dense,
        Work {
            flops: stats * layers,
            ..Default::default()
        },
    )
}

/// Whether a method collects Hessians and input norms.
/// Memory of pruning one block on the calibration pipeline, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct CalibrationMemory {
    /// One of the two activation buffers (every sample's hidden states).
    pub buffer: f64,
    /// One batch of samples' activations inside a block.
    pub working: f64,
    /// One block's statistics (Hessians) and the pruning's temporaries (scores, sorts, masks).
    pub statistics: f64,
}

/// What pruning a block with `method` holds besides the weights (buffers and working set only
/// when the run `calibrates`).
pub fn calibration_memory(
    shape: &ModelShape,
    method: &Method,
    calibrates: bool,
    nsamples: usize,
    len: usize,
    batch: usize,
    elt: f64,
) -> CalibrationMemory {
    let mut memory = CalibrationMemory::default();
    let len = len as f64;
    let largest = shape.linears().map(|l| l.rows * l.cols).max().unwrap_or(0) as f64;
    if calibrates {
        memory.buffer = nsamples as f64 * len * shape.hidden as f64 * elt;
        let batch = batch.min(nsamples) as u64;
        memory.working = batch as f64 * len * (3 * shape.intermediate + 4 * shape.hidden) as f64 * elt
            + crate::model::eager_attention_bytes(batch * shape.heads, len as u64, elt as u64) as f64;
        let (hessian, _) = needs_statistics(method);
        let widest = shape.linears().map(|l| l.cols).max().unwrap_or(0) as f64;
        if hessian {
            let held: f64 = shape.inputs.iter().map(|g| (g[0].cols * g[0].cols) as f64 * 4.0).sum();
            memory.statistics = held + 3.0 * widest * widest * 4.0 + 3.0 * largest * 4.0;
        }
    }
    if method.update == Update::Zero {
        // The largest layer's scores, sorted values, their int64 indices and the mask.
        memory.statistics += largest * (4.0 + 4.0 + 8.0 + 1.0);
    }
    memory
}

fn needs_statistics(method: &Method) -> (bool, bool) {
    let needs = method.needs();
    (needs.hessian, needs.norms)
}

/// Sort work of choosing a mask in `group` on one layer.
fn mask_sort(l: &LinearShape, group: Group) -> f64 {
    let n = (l.rows * l.cols) as f64;
    let len = match group {
        Group::PerOutput => l.cols as f64,
        Group::PerInput => l.rows as f64,
        Group::PerLayer => n,
        Group::InputBlocks => 128.0 * l.rows as f64,
        Group::OutputBlocks => 128.0 * l.cols as f64,
    };
    n * len.max(2.0).log2()
}

/// The upper Cholesky factor of the damped inverse Hessian (factor, invert, factor again).
fn inverse_hessian(cols: f64) -> Work {
    Work {
        flops: 4.0 / 3.0 * cols.powi(3),
        bytes: 6.0 * cols * cols * 4.0,
        ops: 12.0,
        sort: 0.0,
    }
}

/// Scores, masks and updates of one layer. Returns (work in the run's dtype, work in f32).
fn prune_layer(l: &LinearShape, method: &Method, pattern: Pattern, elt: f64) -> (Work, Work) {
    let (rows, cols) = (l.rows as f64, l.cols as f64);
    let n = rows * cols;
    match method.update {
        Update::Zero => {
            let mut w = Work {
                flops: 0.0,
                bytes: n * elt * 6.0,
                ops: 12.0,
                sort: 0.0,
            };
            w.sort = match pattern {
                Pattern::NM { m, .. } => n * (m as f64).log2(),
                Pattern::Unstructured => mask_sort(l, method.group),
            };
            if method.variant {
                // The alpha bisection: a cumulative sum and about ten masks over the sorted scores.
                w.bytes += n * 4.0 * 2.0 * 12.0;
                w.ops += 12.0 * 6.0;
            }
            let f32_work = if method.metric.needs().hessian {
                inverse_hessian(cols)
            } else {
                Work::default()
            };
            (w, f32_work)
        }
        Update::ObsFixedMask | Update::ObsPerBlock => {
            let blocks = (cols / BLOCKSIZE as f64).ceil();
            let mut w = inverse_hessian(cols)
                + Work {
                    // The lazy update of the columns right of each block.
                    flops: rows * cols * cols,
                    // In-block rank-1 updates of (rows x remaining) and the copies around them.
                    bytes: rows * cols * BLOCKSIZE as f64 * 4.0 + n * 4.0 * 8.0,
                    ops: cols * OPS_PER_COLUMN + blocks * 12.0,
                    sort: 0.0,
                };
            match pattern {
                Pattern::NM { n: _, m } => w.ops += cols / m as f64 * 4.0,
                Pattern::Unstructured => w.sort += blocks * rows * BLOCKSIZE as f64 * (rows * BLOCKSIZE as f64).log2(),
            }
            if method.update == Update::ObsFixedMask {
                w.sort += mask_sort(l, Group::PerOutput);
            }
            (Work::default(), w)
        }
    }
}

/// Perplexity: every window through every block and the head.
fn perplexity(
    shape: &ModelShape,
    corpus_tokens: u64,
    len: f64,
    max_windows: Option<usize>,
    batch: f64,
    elt: f64,
) -> Work {
    let windows = ((corpus_tokens as f64 / len).floor()).min(max_windows.map_or(f64::INFINITY, |m| m as f64));
    let batches = (windows / batch).ceil();
    let tokens = windows * len;
    block_forward(shape, tokens, len, batches, elt, false) * shape.n_layers as f64 + head(shape, tokens, batches, elt)
}

/// Zero-shot as the scorer packs it: each document's units (shared contexts once, then the
/// continuations) in passes of `batch` · max_positions tokens with a little padding, every token
/// attending over a row about as long as its unit; the head only on the scored tokens.
/// Returns the work and the widest pass in tokens.
fn zero_shot(shape: &ModelShape, units: &[[u32; 2]], requests: usize, batch: usize, elt: f64) -> (Work, f64) {
    const PADDING: f64 = 1.02;
    let unit_tokens: f64 = units.iter().map(|u| u[0] as f64).sum();
    let row_len = units.iter().map(|u| (u[0] as f64).powi(2)).sum::<f64>() / unit_tokens.max(1.0);
    let scored: f64 = units.iter().map(|u| u[1] as f64).sum();
    let tokens = unit_tokens * PADDING;
    let per_pass = (batch.max(1) as f64 * shape.max_positions as f64).max(row_len);
    let batches = (tokens / per_pass).ceil();
    let mut work = block_forward(shape, tokens, row_len, batches, elt, false) * shape.n_layers as f64
        + head(shape, scored, batches, elt);
    work.ops += requests as f64 * 8.0;
    (work, per_pass.min(tokens))
}

/// The documents a run scores: the first `limit`, less the first `scored` (a resumed run's).
fn docs_to_score<T>(docs: &[T], limit: Option<usize>, scored: usize) -> &[T] {
    let end = docs.len().min(limit.unwrap_or(usize::MAX));
    &docs[scored.min(end)..end]
}

/// Cost of one run on `target`, with its model's `shape` and its evaluations' token counts.
pub fn for_run(spec: &RunSpec, shape: &ModelShape, tokens: &EvalTokens, target: &Target) -> Estimate {
    let kind = crate::device::parse_dtype(spec.model.dtype.as_deref(), device_kind(&spec.model.device))
        .unwrap_or(tch::Kind::Float);
    let elt = kind.elt_size_in_bytes() as f64;
    let len = spec.model.seqlen.unwrap_or(shape.max_positions as usize).max(2) as f64;
    let method = spec.prune.as_ref().and_then(|p| p.method().ok().map(|m| (p, m)));
    let mut work = Phases::<Work>::default();
    let mut f32_work = Phases::<Work>::default();
    let mut calib_bytes = 0.0;
    let mut stats_bytes = 0.0;
    if let Some((p, m)) = method.as_ref().filter(|(p, _)| p.sparsity > 0.0) {
        if m.needs_calibration() {
            let (dense, hessians) = calibration(shape, m, p.nsamples as f64, len, p.calib_batch_size as f64, elt);
            work.calibration = dense;
            f32_work.calibration = hessians;
        }
        let memory = calibration_memory(
            shape,
            m,
            m.needs_calibration(),
            p.nsamples,
            len as usize,
            p.calib_batch_size,
            elt,
        );
        calib_bytes = 2.0 * memory.buffer + memory.working;
        stats_bytes = memory.statistics;
        for l in shape.linears() {
            let (w, f) = prune_layer(l, m, p.pattern, elt);
            work.pruning = work.pruning + w * shape.n_layers as f64;
            f32_work.pruning = f32_work.pruning + f * shape.n_layers as f64;
        }
    }
    let batch = spec.eval.batch_size.max(1) as f64;
    let mut uncounted = Vec::new();
    let mut encode_seconds = 0.0;
    let mut widest_eval = 0.0f64;
    // Positions whose logits one pass holds at once: perplexity runs the head a window at a time,
    // zero-shot a chunk of scored positions at a time.
    let mut widest_logits = 0.0f64;
    let mut tokenize_bytes = 0.0f64;
    // Reading the calibration file (a run reads it whole to draw its samples).
    let calibration_read = match spec
        .prune
        .as_ref()
        .filter(|_| calib_bytes > 0.0)
        .and_then(|p| tokens.counted.get(&calibration_name(&p.calib)))
    {
        Some(Counted::Calibration { read_bytes }) => *read_bytes,
        _ => 0,
    };
    let mut seen: Vec<&String> = Vec::new();
    for name in &spec.eval.names {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        match tokens.counted.get(name) {
            Some(Counted::Corpus {
                tokens: t,
                encode_bytes,
            }) => {
                tokenize_bytes = tokenize_bytes.max(*encode_bytes as f64);
                let t = if name.starts_with("c4") {
                    (*t).min(256 * len as u64)
                } else {
                    *t
                };
                work.perplexity = work.perplexity + perplexity(shape, t, len, spec.eval.max_windows, batch, elt);
                widest_eval = widest_eval.max(batch * len);
                widest_logits = widest_logits.max(len);
            }
            Some(Counted::Task {
                requests,
                units,
                encode_seconds: per_request,
            }) => {
                let scored = spec.eval.scored.get(name).copied().unwrap_or(0);
                let n = docs_to_score(requests, spec.eval.limit, scored)
                    .iter()
                    .map(Vec::len)
                    .sum();
                let units = docs_to_score(units, spec.eval.limit, scored);
                let (w, widest) = zero_shot(shape, units, n, spec.eval.batch_size, elt);
                work.zero_shot = work.zero_shot + w;
                // Each request is encoded twice (context alone, then context + continuation).
                encode_seconds += 2.0 * per_request * n as f64;
                widest_eval = widest_eval.max(widest);
                widest_logits = widest_logits.max(widest.min(crate::eval::loglik::HEAD_CHUNK as f64));
            }
            Some(Counted::Calibration { .. }) => {}
            None => uncounted.push(format!(
                "{name}: {}",
                tokens.missing.get(name).map_or("not counted", String::as_str)
            )),
        }
    }
    let seconds = match (&target.rates, target.f32_rates.as_ref().or(target.rates.as_ref())) {
        (Some(r), Some(r32)) => Some(Phases {
            calibration: work.calibration.seconds(r) + f32_work.calibration.seconds(r32),
            pruning: work.pruning.seconds(r) + f32_work.pruning.seconds(r32),
            perplexity: work.perplexity.seconds(r),
            zero_shot: work.zero_shot.seconds(r) + encode_seconds,
        }),
        _ => None,
    };
    for (w, f) in [
        (&mut work.calibration, f32_work.calibration),
        (&mut work.pruning, f32_work.pruning),
    ] {
        *w = *w + f;
    }
    // Memory: the weights (or, streamed, two blocks or the embeddings and head, which are read
    // only while used, as `crate::memory::MemoryPlan` counts them), the calibration buffers and
    // one block's statistics, or the evaluation's logits and their f32 log-softmax.
    let weights = shape.params() as f64 * elt;
    let streamed_weights = shape.outer_params.max(2 * shape.block_params) as f64 * elt;
    let eval_bytes = widest_logits * shape.vocab as f64 * (elt + 8.0)
        + widest_eval * (3 * shape.intermediate + 4 * shape.hidden) as f64 * elt;
    // Loading holds the weights read so far plus the tensor being read.
    let largest_tensor = shape
        .linears()
        .map(|l| l.rows * l.cols)
        .max()
        .unwrap_or(0)
        .max(shape.vocab * shape.hidden) as f64
        * elt;
    let working = (calib_bytes + stats_bytes).max(eval_bytes).max(largest_tensor);
    let device = device_kind(&spec.model.device);
    let streams = match spec.model.streaming {
        Streaming::Auto => spec.model.streaming.decide(weights as u64, device),
        s => s == Streaming::On,
    };
    let resident = (weights + working) as u64;
    let streamed = (streamed_weights + working) as u64;
    let device_bytes = if streams { streamed } else { resident };
    let fit = match target.memory_bytes {
        None => Fit::Unknown,
        Some(limit) if device_bytes <= limit => {
            if streams {
                Fit::Streams
            } else {
                Fit::Fits
            }
        }
        Some(limit) if !streams && streamed <= limit => Fit::NeedsStreaming,
        Some(_) => Fit::CannotFit,
    };
    // Reading and tokenizing data happen on the host with the weights loaded, each freed before
    // the next step; on a GPU the host holds one tensor on its way besides.
    let transient = tokenize_bytes.max(calibration_read as f64);
    let host_bytes = target.runtime_bytes
        + match device {
            tch::Device::Cpu => device_bytes - working as u64 + working.max(transient) as u64,
            _ => largest_tensor.max(transient) as u64,
        };
    Estimate {
        work,
        seconds,
        device_bytes,
        host_bytes,
        streams,
        fit,
        uncounted,
    }
}

/// The device a spec names, without touching CUDA (a dry run may plan for a GPU it does not have).
fn device_kind(device: &str) -> tch::Device {
    match device {
        "cpu" => tch::Device::Cpu,
        d => tch::Device::Cuda(d.strip_prefix("cuda:").and_then(|n| n.parse().ok()).unwrap_or(0)),
    }
}
