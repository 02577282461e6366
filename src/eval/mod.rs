//! Evaluations of a (pruned) model: perplexity and lm-eval style zero-shot tasks.

pub mod loglik;
pub mod ppl;
pub mod tasks;
pub mod zeroshot;
