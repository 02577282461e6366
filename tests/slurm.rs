//! `repro slurm` against a real single-node SLURM cluster on localhost, started by
//! scripts/slurm_cluster.sh (which needs root and Debian's slurmctld, slurmd, slurm-client and
//! munge: `scripts/slurm_cluster.sh install`). No mock: a missing package fails these tests.

mod common;

use common::repro;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A cluster of its own for one test: configuration, state and logs in a temporary directory.
struct Cluster {
    state: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm_cluster.sh")
}

impl Cluster {
    fn start() -> Cluster {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(script()).arg("start").arg(state.path()).output().unwrap();
        assert!(
            out.status.success(),
            "could not start the test SLURM cluster (is `scripts/slurm_cluster.sh install` done?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { state }
    }

    fn conf(&self) -> PathBuf {
        self.state.path().join("slurm.conf")
    }

    /// A SLURM client command against this cluster.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    fn repro(&self) -> Command {
        let mut c = repro();
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// Job ids SLURM still holds in a pending or running state.
    fn active(&self) -> Vec<String> {
        let out = self.cmd("squeue").args(["-h", "-o", "%i %T"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains("COMPLETED") && !l.contains("CANCELLED") && !l.contains("FAILED"))
            .map(|l| l.to_string())
            .collect()
    }

    fn wait_idle(&self, limit: Duration) {
        let start = Instant::now();
        while !self.active().is_empty() {
            assert!(
                start.elapsed() < limit,
                "jobs still running after {limit:?}: {:?}\n{}",
                self.active(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("log/slurmctld.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.state.path()).status();
    }
}

fn ok(out: Output) -> String {
    common::success_text(&out)
}

/// Records by id.
fn records(out: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(out.join("runs"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .map(|p| {
                    (
                        p.file_stem().unwrap().to_string_lossy().into_owned(),
                        common::golden(&p),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every file of every submission's logs/ directory, concatenated.
fn logs(out: &Path) -> String {
    let mut all = String::new();
    for sub in std::fs::read_dir(out.join("slurm")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path().join("logs")).unwrap() {
            let f = f.unwrap().path();
            all.push_str(&format!(
                "==> {}\n{}\n",
                f.display(),
                std::fs::read_to_string(&f).unwrap()
            ));
        }
    }
    all
}

/// The quickstart sweep, cut to what runs in seconds: llama-tiny dense, magnitude and Wanda at
/// 50%, perplexity and zero-shot accuracy.
fn quick_config(dir: &Path) -> PathBuf {
    let quickstart =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yaml")).unwrap();
    let text = quickstart
        .split("\nreport:")
        .next()
        .unwrap()
        .replace("[dense, magnitude, wanda, sparsegpt]", "[dense, magnitude, wanda]")
        .replace("sparsities: [0.3, 0.5]", "sparsities: [0.5]")
        .replace("patterns: [unstructured, \"2:4\"]", "patterns: [unstructured]")
        .replace("exclude:\n  - {method: sparsegpt, sparsity: 0.3}\n", "")
        .replace("nsamples: [16]", "nsamples: [8]")
        .replace("max_windows: 8", "max_windows: 2")
        .replace("tasks: [arc_easy, winogrande]", "tasks: [arc_easy]")
        .replace("limit: 10", "limit: 4");
    let path = dir.join("quick.yaml");
    std::fs::write(&path, format!("{text}\nreport:\n  - {{name: ppl, title: t, kind: table, metric: \"ppl:wikitext2\", rows: [{{label: dense, where: {{method: dense}}}}], columns: [{{label: m, where: {{}}}}]}}\n")).unwrap();
    path
}

/// Submits `config`'s missing runs; returns `repro slurm`'s output.
fn submit(cluster: &Cluster, config: &Path, out: &Path, extra: &[&str]) -> String {
    ok(cluster
        .repro()
        .arg("slurm")
        .arg(config)
        .arg("--output")
        .arg(out)
        .args(["--submit", "--cpus-per-task", "1", "--time", "0:20:00"])
        .args(extra)
        .output()
        .unwrap())
}

#[test]
fn a_job_array_gives_the_same_numbers_as_a_local_run() {
    let cluster = Cluster::start();
    // The shared directory must not be under /tmp for real clusters; one node shares it anyway.
    let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let config = quick_config(tmp.path());
    let local = tmp.path().join("local");
    // One thread, as the tasks (--cpus-per-task 1): GEMM results may depend on the thread count.
    ok(repro()
        .env("OMP_NUM_THREADS", "1")
        .arg("run")
        .arg(&config)
        .arg("--output")
        .arg(&local)
        .output()
        .unwrap());

    let shared = tmp.path().join("shared");
    let dry = ok(cluster
        .repro()
        .arg("slurm")
        .arg(&config)
        .arg("--output")
        .arg(&shared)
        .args(["--dry-run", "--max-parallel", "2"])
        .output()
        .unwrap());
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_repro")).unwrap();
    assert!(
        dry.contains("#SBATCH --array=0-2%2")
            && dry.contains(&format!("exec '{}'", exe.display()))
            && dry.contains("--task-index \"$SLURM_ARRAY_TASK_ID\""),
        "{dry}"
    );
    assert!(!shared.join("slurm").exists(), "a dry run writes nothing");

    let submitted = submit(&cluster, &config, &shared, &["--max-parallel", "2"]);
    assert!(
        submitted.contains("3 to submit")
            && submitted.contains("submitted array job")
            && submitted.contains("submitted report job"),
        "{submitted}"
    );
    cluster.wait_idle(Duration::from_secs(600));

    let (want, got) = (records(&local), records(&shared));
    assert_eq!(got.len(), 3, "{}", logs(&shared));
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (id, r) in &got {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(
            r["result"]["zero_shot"].is_object() && r["result"]["ppl"]["wikitext2"].is_f64(),
            "{r}"
        );
        assert_eq!(
            r["result"]["ppl"], want[id]["result"]["ppl"],
            "{id}: perplexities differ"
        );
        assert_eq!(
            r["result"]["zero_shot"], want[id]["result"]["zero_shot"],
            "{id}: accuracies differ"
        );
    }
    // The dependent report job rendered the report.
    let log = logs(&shared);
    assert!(log.contains("report: 3 of 3 planned runs have records (3 ok)"), "{log}");
    assert!(shared.join("report/ppl.md").is_file() && shared.join("results.csv").is_file());

    // Nothing is missing, so nothing is resubmitted.
    let again = submit(&cluster, &config, &shared, &[]);
    assert!(
        again.contains("0 to submit") && again.contains("nothing to submit"),
        "{again}"
    );
}

#[test]
fn a_cancelled_task_is_taken_over_by_the_resubmission() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    // Four Wanda runs long enough (many windows) to cancel one mid-run.
    let config = quick_config(tmp.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[dense, magnitude, wanda]", "[wanda]")
        .replace("sparsities: [0.5]", "sparsities: [0.2, 0.3, 0.4, 0.5]")
        .replace("max_windows: 2", "max_windows: 20");
    std::fs::write(&config, text).unwrap();
    let shared = tmp.path().join("shared");
    let submitted = submit(&cluster, &config, &shared, &["--max-parallel", "1"]);
    assert!(submitted.contains("4 to submit"), "{submitted}");
    let array = submitted
        .lines()
        .find_map(|l| l.strip_prefix("submitted array job "))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();

    // Cancel the task that works on the second run, once it holds its claim.
    let start = Instant::now();
    let (victim, claim) = loop {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "task 1 never claimed a run\n{}",
            logs(&shared)
        );
        let claims: Vec<PathBuf> =
            std::fs::read_dir(shared.join("claims")).map_or(vec![], |d| d.map(|e| e.unwrap().path()).collect());
        let held = claims
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .find_map(|p| {
                let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
                (info["slurm_array_task_id"] == "1").then(|| (info, p.clone()))
            });
        if let Some(found) = held {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(victim["slurm_array_job_id"], array.as_str());
    ok(cluster.cmd("scancel").arg(format!("{array}_1")).output().unwrap());
    cluster.wait_idle(Duration::from_secs(600));

    let id = claim.file_stem().unwrap().to_string_lossy().into_owned();
    let before = records(&shared);
    assert_eq!(before.len(), 3, "the other tasks ran\n{}", logs(&shared));
    assert!(
        !before.contains_key(&id) && claim.exists(),
        "the cancelled task left its claim and no record"
    );
    let status = ok(cluster.repro().arg("status").arg(&shared).output().unwrap());
    assert!(
        status.contains("3 done, 0 running, 0 failed, 1 pending") && status.contains("stale claim"),
        "{status}"
    );

    let resubmitted = submit(&cluster, &config, &shared, &[]);
    assert!(
        resubmitted.contains("3 done, 0 running, 0 failed, 1 to submit"),
        "{resubmitted}"
    );
    cluster.wait_idle(Duration::from_secs(600));
    let after = records(&shared);
    assert_eq!(after.len(), 4, "{}", logs(&shared));
    for (rid, r) in &before {
        assert_eq!(&after[rid], r, "{rid} was redone");
    }
    let log = logs(&shared);
    assert!(
        log.contains(&format!("taking over {}", claim.display())) && log.contains(&format!("done   {id}")),
        "{log}"
    );
    assert!(!claim.exists());
}

/// Errors: no sbatch on PATH, a rejected submission (sbatch's message shown), another sweep's
/// directory, an output under /tmp.
#[test]
fn submission_errors_are_clear_and_lose_nothing() {
    let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let config = quick_config(tmp.path());
    let out = tmp.path().join("out");
    let e = common::output_text(
        &repro()
            .env("PATH", "/nonexistent")
            .arg("slurm")
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .arg("--submit")
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("`sbatch` is not on PATH") && !out.join("slurm").exists(),
        "{e}"
    );

    let cluster = Cluster::start();
    let o = cluster
        .repro()
        .arg("slurm")
        .arg(&config)
        .arg("--output")
        .arg(&out)
        .args(["--submit", "--partition", "no-such-partition"])
        .output()
        .unwrap();
    let e = common::output_text(&o);
    assert!(
        !o.status.success()
            && e.contains("sbatch rejected")
            && e.contains("invalid partition")
            && e.contains("nothing was submitted"),
        "{e}"
    );
    // The scripts stay for a look; no record, claim or report was touched.
    assert!(std::fs::read_dir(out.join("slurm")).unwrap().count() == 1);
    assert!(!out.join("runs").exists() && !out.join("claims").exists());

    // An output directory that holds another sweep's records is refused before anything is written.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("sweep.json"),
        r#"{"name": "table2", "config": "configs/table2.yaml", "runs": [], "artefacts": []}"#,
    )
    .unwrap();
    let o = cluster
        .repro()
        .arg("slurm")
        .arg(&config)
        .arg("--output")
        .arg(&other)
        .arg("--submit")
        .output()
        .unwrap();
    let e = common::output_text(&o);
    assert!(
        !o.status.success() && e.contains("holds the records of sweep `table2`") && !other.join("slurm").exists(),
        "{e}"
    );

    // An output outside /tmp is not warned about. It must not depend on where the checkout is
    // (CI may clone under /tmp); --dry-run writes nothing there.
    let outside_tmp = PathBuf::from(format!("/srv/repro-slurm-test-{}/x", std::process::id()));
    let e = common::output_text(
        &cluster
            .repro()
            .arg("slurm")
            .arg(&config)
            .arg("--output")
            .arg(&outside_tmp)
            .arg("--dry-run")
            .output()
            .unwrap(),
    );
    assert!(!e.contains("temporary directory") && !outside_tmp.exists(), "{e}");
    let e = common::output_text(
        &cluster
            .repro()
            .arg("slurm")
            .arg(&config)
            .args(["--output", "/tmp/repro-slurm-test-out", "--dry-run"])
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("warning: /tmp/repro-slurm-test-out is in a temporary directory") && e.contains("cannot share it"),
        "{e}"
    );
}

/// Runs that failed with an error are not resubmitted unless --retry-failed (no cluster needed:
/// the failed record comes from a local run, and the plan is a dry run).
#[test]
fn failed_runs_are_resubmitted_only_when_asked() {
    let tmp = tempfile::tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    // 3:7 passes the config check, but llama-tiny's widths are not multiples of 7: that run fails.
    let config = quick_config(tmp.path());
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[dense, magnitude, wanda]", "[dense, magnitude]")
        .replace("patterns: [unstructured]", "patterns: [\"3:7\"]");
    std::fs::write(&config, yaml).unwrap();
    let out = tmp.path().join("out");
    let o = repro()
        .arg("run")
        .arg(&config)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && common::output_text(&o).contains("1 run(s) failed"),
        "{}",
        common::output_text(&o)
    );

    let plan = |extra: &[&str]| {
        ok(repro()
            .arg("slurm")
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .arg("--dry-run")
            .args(extra)
            .output()
            .unwrap())
    };
    let again = plan(&[]);
    assert!(
        again.contains("1 done, 0 running, 1 failed, 0 to submit")
            && again.contains("--retry-failed")
            && again.contains("nothing to submit"),
        "{again}"
    );
    let retry = plan(&["--retry-failed"]);
    assert!(
        retry.contains("1 to submit") && retry.contains("task 0: ") && retry.contains("magnitude 3:7"),
        "{retry}"
    );
}
