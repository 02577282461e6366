//! Thread pools sized to the CPUs this process was given, so that a task on a shared node (a
//! SLURM job, a container with a CPU quota, `taskset`) does not oversubscribe its cores.

use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;

/// CPUs this process may use: the smallest of `SLURM_CPUS_PER_TASK`, the CPU affinity mask and
/// a cgroup CPU quota (the last two as `std::thread::available_parallelism` reads them).
pub fn allowed() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slurm = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
    slurm.map_or(available, |n| n.min(available))
}

/// Marks that this process already runs with the OpenMP settings below (see [`configure`]).
const CONFIGURED: &str = "REPRO_THREADS_CONFIGURED";

/// Sizes every pool to [`allowed`] CPUs, unless the user set that pool's own variable: libtorch
/// and OpenMP (`OMP_NUM_THREADS`), polars (`POLARS_MAX_THREADS`), tokenizers (rayon,
/// `RAYON_NUM_THREADS`). Must run first in `main`, before any thread starts.
///
/// OpenMP's threads also get `OMP_WAIT_POLICY=PASSIVE`: by default libgomp's idle workers spin
/// for up to 300,000 iterations between parallel regions, which on cores shared with another
/// process steals them from the very thread they wait for (measured: scripts/bench_contention.sh).
/// libgomp reads these variables once, when it is loaded, which is before `main`; so the first
/// time through, the process re-executes itself with them set.
pub fn configure() -> Result<()> {
    let n = allowed().to_string();
    let unset = |var: &str| std::env::var_os(var).is_none();
    for var in ["OMP_NUM_THREADS", "POLARS_MAX_THREADS", "RAYON_NUM_THREADS"] {
        if unset(var) {
            std::env::set_var(var, &n);
        }
    }
    if unset(CONFIGURED) {
        if unset("OMP_WAIT_POLICY") && unset("GOMP_SPINCOUNT") {
            std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
        }
        std::env::set_var(CONFIGURED, "1");
        let exe = std::env::current_exe().context("cannot find the repro binary to restart it with its thread settings")?;
        let err = std::process::Command::new(&exe).args(std::env::args_os().skip(1)).exec();
        return Err(err).with_context(|| format!("cannot restart {} with its thread settings", exe.display()));
    }
    if let Ok(threads) = std::env::var("OMP_NUM_THREADS").unwrap_or_default().parse::<i32>() {
        tch::set_num_threads(threads);
    }
    Ok(())
}
