//! Thread pools sized to the CPUs this process was given, so that a task on a shared node (a
//! SLURM job, a container with a CPU quota, `taskset`) does not oversubscribe its cores.

use std::os::unix::process::CommandExt;

/// CPUs this process may use: the smallest of `SLURM_CPUS_PER_TASK`, the CPU affinity mask and
/// a cgroup CPU quota (the last two as `std::thread::available_parallelism` reads them).
pub fn allowed() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slurm = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    slurm.map_or(available, |n| n.min(available))
}

/// Marks that this process already runs with the settings below (see [`configure`]), and lists
/// the variables it set, which must not leak into jobs it submits.
const CONFIGURED: &str = "REPRO_THREADS_CONFIGURED";

/// Sizes every pool to [`allowed`] CPUs: libtorch and OpenMP (`OMP_NUM_THREADS`, and no more
/// than libtorch's default of one per physical core), polars
/// (`POLARS_MAX_THREADS`), tokenizers (rayon, `RAYON_NUM_THREADS`). A smaller value the user set
/// stands; a larger one (often exported from a login node into a job) is lowered. Must run first
/// in `main`, before any thread starts.
///
/// OpenMP's threads also get `OMP_WAIT_POLICY=PASSIVE` unless `OMP_WAIT_POLICY` or
/// `GOMP_SPINCOUNT` is set: by default libgomp's idle workers spin for up to 300,000 iterations
/// between parallel regions, which on cores shared with another process steals them from the
/// very thread they wait for (measured: scripts/bench_contention.sh). libgomp reads that variable
/// once, when it is loaded, which is before `main`; so the first time through, the process
/// re-executes itself (same pid) with it set.
pub fn configure() {
    let unset = |var: &str| std::env::var_os(var).is_none();
    if unset(CONFIGURED) {
        let n = allowed();
        // libtorch's own default is one thread per physical core (not per hyperthread): kept when smaller.
        let torch = match unset("OMP_NUM_THREADS") {
            true => usize::try_from(tch::get_num_threads()).unwrap_or(n).clamp(1, n),
            false => n,
        };
        let mut set = Vec::new();
        for (var, limit) in [
            ("OMP_NUM_THREADS", torch),
            ("POLARS_MAX_THREADS", n),
            ("RAYON_NUM_THREADS", n),
        ] {
            let given = std::env::var(var)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&g| g > 0);
            if given.is_none_or(|g| g > limit) {
                std::env::set_var(var, limit.to_string());
                set.push(var);
            }
        }
        if unset("OMP_WAIT_POLICY") && unset("GOMP_SPINCOUNT") {
            std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
            set.push("OMP_WAIT_POLICY");
        }
        std::env::set_var(CONFIGURED, set.join(","));
        if set.contains(&"OMP_WAIT_POLICY") {
            let err = restart();
            eprintln!("warning: {err:#}; OpenMP threads spin while they wait, which is slow on shared cores");
        }
    }
    if let Ok(threads) = std::env::var("OMP_NUM_THREADS").unwrap_or_default().parse::<i32>() {
        tch::set_num_threads(threads);
    }
}

/// Replaces this process with a fresh run of its own binary and arguments; returns only on failure.
fn restart() -> anyhow::Error {
    match std::env::current_exe() {
        Ok(exe) => {
            let err = std::process::Command::new(&exe)
                .args(std::env::args_os().skip(1))
                .exec();
            anyhow::Error::new(err).context(format!("cannot restart {} with its thread settings", exe.display()))
        }
        Err(e) => anyhow::Error::new(e).context("cannot find the repro binary to restart it with its thread settings"),
    }
}

/// `cmd` without the variables [`configure`] set for this process: a job submitted from here
/// runs elsewhere, with its own allocation, and sizes its pools itself.
pub fn without_own_settings(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for var in std::env::var(CONFIGURED)
        .unwrap_or_default()
        .split(',')
        .filter(|v| !v.is_empty())
    {
        cmd.env_remove(var);
    }
    cmd.env_remove(CONFIGURED)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slurm_allocation_caps_the_cpus() {
        let available = std::thread::available_parallelism().unwrap().get();
        std::env::set_var("SLURM_CPUS_PER_TASK", "1");
        assert_eq!(super::allowed(), 1);
        // More than the affinity mask and quota allow is capped by them.
        std::env::set_var("SLURM_CPUS_PER_TASK", "100000");
        assert_eq!(super::allowed(), available);
        std::env::remove_var("SLURM_CPUS_PER_TASK");
        assert_eq!(super::allowed(), available);
    }
}
