//! A run's memory plan, printed before the work starts (and alone by `--plan`): the weights in
//! flight, the two calibration activation buffers and one block's statistics, against a budget
//! (`--max-memory`, by default a fraction of the memory available). When the buffers would not
//! fit beside the rest, they live in scratch files (`--scratch`, else `$TMPDIR`) and are read
//! and written one batch at a time, which gives the very same numbers.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Kind;

use crate::model::shape::ModelShape;
use crate::sweep::estimate::CalibrationMemory;

/// Share of the memory available at the start that a run plans to use when `--max-memory` is
/// not given: the rest is headroom for the runtime, the page cache and other processes.
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.8;

/// Where the budget and the scratch files come from (`--max-memory`, `--scratch`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryOptions {
    pub max_memory: Option<u64>,
    pub scratch: Option<PathBuf>,
}

/// A memory plan as `--plan --json` prints it and run records keep it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanNumbers {
    pub dtype: String,
    pub streamed: bool,
    pub budget_bytes: u64,
    pub weights_in_flight_bytes: u64,
    pub embeddings_and_head_bytes: u64,
    pub block_bytes: u64,
    pub calibration_buffer_bytes: u64,
    pub buffers_on_disk: bool,
    pub scratch: Option<PathBuf>,
    pub scratch_bytes: u64,
    pub working_bytes: u64,
    pub statistics_bytes: u64,
    pub planned_peak_bytes: u64,
}

/// `8G`, `8GiB`, `512M`, `1.5T`, `300000000`: binary units (G = GiB), as `free -h` shows memory.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| format!("--max-memory {text}: not a positive size (e.g. 8G, 512M, 1.5T)"))?;
    let scale = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        other => bail!("--max-memory {text}: unknown unit `{other}` (use K, M, G or T)"),
    };
    Ok((value * scale as f64) as u64)
}

/// `1.23 GiB`, or `45.6 MiB` below a GiB.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// What is in memory at once while pruning, in the run's dtype.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub kind: Kind,
    pub streamed: bool,
    pub n_blocks: u64,
    /// Embeddings, positions, final norm and head.
    pub outer_bytes: u64,
    pub block_bytes: u64,
    pub calibration: CalibrationMemory,
    pub budget: u64,
    /// How the budget was set, for the printout.
    pub budget_source: String,
    /// The scratch directory when the buffers go to disk.
    pub spill_to: Option<PathBuf>,
}

impl MemoryPlan {
    /// Plans a run of a model of `shape` in `kind` on `device`; `calibration` is what pruning
    /// holds besides the weights (zero when not pruning). The budget is host memory: on a GPU the
    /// buffers stay on the device (`pipeline` checks that they fit there).
    pub fn new(
        shape: &ModelShape,
        kind: Kind,
        device: tch::Device,
        streamed: bool,
        calibration: CalibrationMemory,
        options: &MemoryOptions,
    ) -> MemoryPlan {
        let elt = kind.elt_size_in_bytes() as u64;
        let (budget, budget_source) = match options.max_memory {
            Some(b) => (b, "--max-memory".to_string()),
            None => {
                let available = crate::resources::mem_available_bytes().unwrap_or(u64::MAX / 2);
                (
                    (available as f64 * DEFAULT_BUDGET_FRACTION) as u64,
                    format!(
                        "{:.0}% of the {} available; --max-memory to change",
                        DEFAULT_BUDGET_FRACTION * 100.0,
                        size(available)
                    ),
                )
            }
        };
        let mut plan = MemoryPlan {
            kind,
            streamed,
            n_blocks: shape.n_layers,
            outer_bytes: shape.outer_params * elt,
            block_bytes: shape.block_params * elt,
            calibration,
            budget,
            budget_source,
            spill_to: None,
        };
        if device == tch::Device::Cpu && plan.peak_with_buffers_in_memory() > budget && calibration.buffer > 0.0 {
            plan.spill_to = Some(options.scratch.clone().unwrap_or_else(std::env::temp_dir));
        }
        plan
    }

    /// Weights in memory at once: all of them, or (streamed) a block being pruned and the next
    /// one read, or embeddings and head while they are used, whichever is more.
    pub fn weights_in_flight(&self) -> u64 {
        match self.streamed {
            true => self.outer_bytes.max(2 * self.block_bytes),
            false => self.outer_bytes + self.n_blocks * self.block_bytes,
        }
    }

    fn buffers_bytes(&self) -> u64 {
        2 * self.calibration.buffer as u64
    }

    fn peak_with_buffers_in_memory(&self) -> u64 {
        self.weights_in_flight()
            + self.buffers_bytes()
            + self.calibration.working as u64
            + self.calibration.statistics as u64
    }

    /// The planned peak: weights in flight, buffers unless on disk, a batch's activations and
    /// one block's statistics.
    pub fn peak(&self) -> u64 {
        match self.spill_to {
            Some(_) => self.peak_with_buffers_in_memory() - self.buffers_bytes(),
            None => self.peak_with_buffers_in_memory(),
        }
    }

    /// Scratch bytes on disk: the two buffers when they spill.
    pub fn scratch_bytes(&self) -> u64 {
        self.spill_to.as_ref().map_or(0, |_| self.buffers_bytes())
    }

    /// Refuses, before any block is pruned, a scratch directory without room for the buffers.
    pub fn check_scratch(&self) -> Result<()> {
        let Some(dir) = &self.spill_to else { return Ok(()) };
        ensure!(
            dir.is_dir(),
            "{}: no such directory, where calibration buffers would spill (--scratch, else $TMPDIR)",
            dir.display()
        );
        if let Some(free) = crate::scratch::free_bytes(dir) {
            ensure!(
                free >= self.scratch_bytes(),
                "calibration buffers do not fit in the memory budget ({}, {}) and spill to {}: they need 2 x {} \
                 there, {} is free; use a smaller --nsamples or --seqlen, --scratch on a disk with room, or a \
                 larger --max-memory",
                size(self.budget),
                self.budget_source,
                dir.display(),
                size(self.calibration.buffer as u64),
                size(free)
            );
        }
        Ok(())
    }

    /// The plan's numbers, for `--plan --json` and run records.
    pub fn numbers(&self) -> PlanNumbers {
        PlanNumbers {
            dtype: crate::device::dtype_name(self.kind).to_string(),
            streamed: self.streamed,
            budget_bytes: self.budget,
            weights_in_flight_bytes: self.weights_in_flight(),
            embeddings_and_head_bytes: self.outer_bytes,
            block_bytes: self.block_bytes,
            calibration_buffer_bytes: self.calibration.buffer as u64,
            buffers_on_disk: self.spill_to.is_some(),
            scratch: self.spill_to.clone(),
            scratch_bytes: self.scratch_bytes(),
            working_bytes: self.calibration.working as u64,
            statistics_bytes: self.calibration.statistics as u64,
            planned_peak_bytes: self.peak(),
        }
    }

    /// The plan as printed before a run.
    pub fn lines(&self) -> Vec<String> {
        let dtype = crate::device::dtype_name(self.kind);
        let weights = match self.streamed {
            true => format!(
                "{} streamed (embeddings and head {} while used, one block {}, at most two at once)",
                size(self.weights_in_flight()),
                size(self.outer_bytes),
                size(self.block_bytes)
            ),
            false => format!("{} resident ({} blocks)", size(self.weights_in_flight()), self.n_blocks),
        };
        let mut lines = vec![
            format!(
                "memory plan ({dtype}): budget {} ({})",
                size(self.budget),
                self.budget_source
            ),
            format!("  weights in flight      {weights}"),
        ];
        if self.calibration.buffer > 0.0 {
            let place = match &self.spill_to {
                Some(dir) => format!(
                    "on disk in {} ({} of scratch files)",
                    dir.display(),
                    size(self.scratch_bytes())
                ),
                None => "in memory".to_string(),
            };
            lines.push(format!(
                "  calibration buffers    2 x {} {place}",
                size(self.calibration.buffer as u64)
            ));
            lines.push(format!(
                "  a batch's activations  {}",
                size(self.calibration.working as u64)
            ));
        }
        if self.calibration.statistics > 0.0 {
            lines.push(format!(
                "  one block's statistics {}",
                size(self.calibration.statistics as u64)
            ));
        }
        lines.push(format!(
            "  planned peak           {} (plus the runtime's own)",
            size(self.peak())
        ));
        if self.peak() > self.budget {
            lines.push(format!(
                "  the plan exceeds the budget{}",
                if self.streamed {
                    ""
                } else {
                    ": --stream on holds one block at a time"
                }
            ));
        }
        lines
    }
}

/// A scratch directory for the calibration buffers, as `plan` says.
pub fn scratch_dir(dir: &Path) -> Result<crate::scratch::ScratchDir> {
    crate::scratch::ScratchDir::new(dir, "repro-calib-", "calibration buffers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5T").unwrap(), 3 << 39);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8X").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("G").is_err());
    }
}
