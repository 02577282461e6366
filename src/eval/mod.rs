//! Evaluations of a (pruned) model: perplexity and lm-eval style zero-shot tasks.

pub mod compare;
pub mod loglik;
pub mod packing;
pub mod ppl;
pub mod tasks;
pub mod zeroshot;

/// Why a loss or log-likelihood can be NaN or infinite, and what to try: a NaN is not a measurement.
pub const NON_FINITE_HINT: &str =
    "the model's outputs overflow or are NaN (in f16, try --dtype f32 or bf16; otherwise check the checkpoint's weights)";
