//! repro: reproduce and extend Wanda (Sun et al., ICLR 2024) — magnitude, Wanda and SparseGPT
//! pruning of LLMs with libtorch, evaluated like the official code.

pub mod calib;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod hub;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod report;
pub mod resources;
pub mod resume;
pub mod run_result;
pub mod scratch;
pub mod sweep;
pub mod threads;
pub mod tokenizer;

/// An error's chain on one line, each cause once: libraries often repeat their source's message
/// in their own, which `{:#}` would print again after it.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
