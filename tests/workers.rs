//! Many `repro run` workers on one output directory: per-run claims, takeover of a dead
//! worker's claim, `--force` next to a live worker, and `repro status`.

mod common;

use common::{fixture_model, repro};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A small sweep on llama-tiny-random: dense, magnitude at five sparsities, Wanda at two.
fn config(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("out");
    let text = format!(
        "name: workers
output: {}
models: [{}]
methods: [dense, magnitude, wanda]
sparsities: [0.1, 0.2, 0.3, 0.4, 0.5]
exclude: [{{method: wanda, sparsity: 0.1}}, {{method: wanda, sparsity: 0.2}}, {{method: wanda, sparsity: 0.3}}]
calibration: {{dataset: c4:c4-format-sample, nsamples: [8], seeds: [0]}}
seqlen: 64
evaluation: {{ppl: [wikitext2], max_windows: 2}}
",
        out.display(),
        fixture_model("llama-tiny-random")
    );
    let path = dir.join("workers.yaml");
    std::fs::write(&path, text).unwrap();
    (path, out)
}

/// The claim file of a live worker (this test process, on this host) on run `id`.
fn live_claim(id: &str, token: &str) -> String {
    serde_json::json!({
        "id": id, "label": "held by the test", "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
        "pid": std::process::id(), "slurm_job_id": null, "slurm_array_job_id": null, "slurm_array_task_id": null,
        "started_at": 1.7e9, "token": token,
    })
    .to_string()
}

const RUNS: usize = 8;

fn spawn(config: &Path, extra: &[&str]) -> Child {
    repro()
        .arg("run")
        .arg(config)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stdout and stderr of a finished worker, which must have succeeded.
fn finish(child: Child) -> String {
    common::success_text(&child.wait_with_output().unwrap())
}

/// The run ids a worker reports as executed (`done   <id> (<s>) <label>`).
fn executed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("done   "))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map_or(vec![], |d| {
        d.map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    })
}

fn status_json(out: &Path) -> serde_json::Value {
    let o = repro().arg("status").arg(out).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `repro status --json`'s entry for run `id`.
fn run_status(out: &Path, id: &str) -> serde_json::Value {
    let status = status_json(out);
    status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {status}"))
        .clone()
}

#[test]
fn two_workers_on_one_directory_run_every_run_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out) = config(tmp.path());
    let (a, b) = (spawn(&cfg, &[]), spawn(&cfg, &[]));
    let (a, b) = (finish(a), finish(b));
    let (ran_a, ran_b) = (executed(&a), executed(&b));
    assert!(
        ran_a.is_disjoint(&ran_b),
        "a run was executed twice:\n--- a\n{a}\n--- b\n{b}"
    );
    assert_eq!(ran_a.len() + ran_b.len(), RUNS, "--- a\n{a}\n--- b\n{b}");
    let records: BTreeSet<String> = files(&out.join("runs"), "json")
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(records, ran_a.union(&ran_b).cloned().collect());
    assert!(
        files(&out.join("claims"), "json").is_empty(),
        "claims are released when their runs finish"
    );
    // Whichever finished last wrote the whole report.
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv"))
            .unwrap()
            .lines()
            .count(),
        RUNS + 1
    );
    assert!(
        std::fs::read_dir(&out)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".report-")),
        "no staging directory left"
    );

    let status = status_json(&out);
    assert_eq!(
        (
            status["done"].as_u64(),
            status["pending"].as_u64(),
            status["running"].as_u64()
        ),
        (Some(RUNS as u64), Some(0), Some(0)),
        "{status}"
    );
}

#[test]
fn a_killed_workers_claim_is_taken_over_by_the_next_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out) = config(tmp.path());
    let mut child = spawn(&cfg, &[]);
    let start = Instant::now();
    // Kill it while it holds a claim on a run past the first.
    let record_of = |claim: &Path| out.join("runs").join(claim.file_name().unwrap());
    let claimed = loop {
        assert!(start.elapsed() < Duration::from_secs(120), "no claim appeared");
        if !files(&out.join("runs"), "json").is_empty() {
            if let Some(c) = files(&out.join("claims"), "json")
                .into_iter()
                .find(|c| !record_of(c).exists())
            {
                break c;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let id = claimed.file_stem().unwrap().to_string_lossy().into_owned();
    assert!(
        claimed.exists() && !record_of(&claimed).exists(),
        "a SIGKILLed worker leaves its claim and no record"
    );
    let before = files(&out.join("runs"), "json").len();
    assert!(before < RUNS);

    let run = run_status(&out, &id);
    assert!(
        run["stale_claim"].as_str().is_some_and(|c| c.contains("is gone")),
        "{run}"
    );

    let text = finish(spawn(&cfg, &[]));
    assert!(
        text.contains(&format!("taking over {}", claimed.display())) && text.contains("is gone"),
        "{text}"
    );
    let ran = executed(&text);
    assert!(ran.contains(&id), "{text}");
    assert_eq!(ran.len(), RUNS - before, "exactly the missing runs are redone:\n{text}");
    assert_eq!(files(&out.join("runs"), "json").len(), RUNS);
    assert!(files(&out.join("claims"), "json").is_empty());
}

#[test]
fn force_does_not_redo_a_run_a_live_worker_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out) = config(tmp.path());
    finish(spawn(&cfg, &["--only", "*dense"]));
    let id = files(&out.join("runs"), "json")[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let record = std::fs::read_to_string(out.join("runs").join(format!("{id}.json"))).unwrap();
    // A live worker (this test process, on this host) holds the dense run.
    let claim = live_claim(&id, "held-by-the-test");
    std::fs::write(out.join("claims").join(format!("{id}.json")), &claim).unwrap();

    let plan = repro()
        .arg("run")
        .arg(&cfg)
        .args(["--dry-run", "--only", "*dense", "--force"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains(&format!("running    {id}"))
            && plan.contains(&format!(
                "held by another worker: {} pid {}",
                std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
                std::process::id()
            )),
        "{plan}"
    );

    let text = finish(spawn(&cfg, &["--force", "--only", "*dense"]));
    assert!(
        text.contains(&format!("held   {id}")) && text.contains("another worker runs it") && executed(&text).is_empty(),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("runs").join(format!("{id}.json"))).unwrap(),
        record,
        "the held run was not redone"
    );

    let run = run_status(&out, &id);
    assert_eq!(run["state"], "running", "{run}");
    assert!(
        run["worker"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", std::process::id())),
        "{run}"
    );
}

/// A worker's thread pools follow its allocation (`SLURM_CPUS_PER_TASK`): a larger thread count
/// in the environment is lowered, a smaller one stands; its OpenMP threads wait passively unless
/// told otherwise. The process restarts itself once to apply that, keeping its pid (claims and
/// SLURM's signals name it).
#[test]
fn thread_pools_follow_the_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = config(tmp.path());
    let environ = |extra: &[(&str, &str)]| {
        let mut cmd = repro();
        for var in [
            "OMP_NUM_THREADS",
            "POLARS_MAX_THREADS",
            "RAYON_NUM_THREADS",
            "OMP_WAIT_POLICY",
            "GOMP_SPINCOUNT",
            "SLURM_CPUS_PER_TASK",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .envs(extra.iter().copied())
            .arg("run")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/environ", child.id());
        let start = Instant::now();
        let vars: Vec<String> = loop {
            let vars: Vec<String> = std::fs::read(&path)
                .map(|b| {
                    b.split(|&c| c == 0)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if vars.iter().any(|v| v.starts_with("REPRO_THREADS_CONFIGURED=")) {
                break vars;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the worker never restarted with its settings"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        vars
    };
    let has = |vars: &[String], want: &str| vars.iter().any(|v| v == want);
    let vars = environ(&[("SLURM_CPUS_PER_TASK", "1"), ("OMP_NUM_THREADS", "4")]);
    for want in [
        "OMP_NUM_THREADS=1",
        "POLARS_MAX_THREADS=1",
        "RAYON_NUM_THREADS=1",
        "OMP_WAIT_POLICY=PASSIVE",
    ] {
        assert!(has(&vars, want), "{want} missing from {vars:?}");
    }
    // Fewer threads than allowed stand.
    let vars = environ(&[("POLARS_MAX_THREADS", "1"), ("SLURM_CPUS_PER_TASK", "2")]);
    assert!(
        has(&vars, "POLARS_MAX_THREADS=1") && has(&vars, "OMP_WAIT_POLICY=PASSIVE"),
        "{vars:?}"
    );
}

/// A worker whose claim another worker took over (here: this test, as if the worker had gone
/// silent) finishes the computation but writes no record, and leaves the new owner's claim alone.
#[test]
fn a_worker_whose_claim_was_taken_over_drops_its_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out) = config(tmp.path());
    let child = spawn(&cfg, &["--only", "wanda*0.5"]);
    let start = Instant::now();
    let claim = loop {
        assert!(start.elapsed() < Duration::from_secs(120), "no claim appeared");
        if let Some(c) = files(&out.join("claims"), "json").pop() {
            break c;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let id = claim.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&claim).unwrap();
    let theirs = live_claim(&id, "the-new-owner");
    std::fs::write(&claim, &theirs).unwrap();

    let text = finish(child);
    assert!(
        text.contains(&format!("DROPPED {id}")) && text.contains("taken over") && executed(&text).is_empty(),
        "{text}"
    );
    assert!(
        !out.join("runs").join(format!("{id}.json")).exists(),
        "a dropped run writes no record"
    );
    assert_eq!(
        std::fs::read_to_string(&claim).unwrap(),
        theirs,
        "the new owner's claim is untouched"
    );
}
