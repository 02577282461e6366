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
