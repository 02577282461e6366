//! Per-run claims, so that any number of `repro run` workers (one machine or many sharing the
//! output directory over NFS or Lustre) take disjoint runs of one sweep.
//!
//! A worker owns run `<id>` while `RUN_DIR/claims/<id>.json` holds its token. The file appears
//! whole and exclusively: written in a temporary file, then hard-linked into place (link(2) fails
//! when the name exists, atomically on local filesystems and on NFS, the classic lock-file way;
//! `O_CREAT|O_EXCL` with a later write would leave an empty claim if the worker died in between),
//! so two workers never both own a run. Its content names the worker (host, pid, SLURM ids, start time); its mtime is the
//! heartbeat, which a background thread refreshes through the worker's own open handle, so a
//! worker whose claim was taken over only ever touches its own, already unlinked, file.
//!
//! A claim is stale, and is taken over, when its process is gone (same host, pid not alive), its
//! SLURM job is no longer running (`squeue`), or its heartbeat is older than [`SILENT_AFTER`].
//! Takeovers are serialised by a second `O_EXCL` file, `<id>.takeover`, so two workers that find
//! the same stale claim do not both remove it (the second would remove the first's new claim).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often a working worker refreshes its claim's heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// A claim whose heartbeat is older than this is stale whatever else is known: fifteen missed
/// heartbeats, well above NFS attribute caching (60 s by default) and ordinary clock skew.
pub const SILENT_AFTER: Duration = Duration::from_secs(300);
/// A claim file that cannot be parsed (its writer died between creating and writing it) is
/// stale after this long; younger, it is being written.
const UNREADABLE_AFTER: Duration = Duration::from_secs(60);

/// What a claim file says about its worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimInfo {
    pub id: String,
    pub label: String,
    pub host: String,
    pub pid: u32,
    /// `SLURM_JOB_ID`: the job (for an array task, that task's own job id) `squeue` is asked about.
    pub slurm_job_id: Option<String>,
    pub slurm_array_job_id: Option<String>,
    pub slurm_array_task_id: Option<String>,
    /// Unix seconds.
    pub started_at: f64,
    /// Unique per claim: tells a worker whether the file is still its own.
    pub token: String,
}

impl ClaimInfo {
    /// `host pid 123` plus the SLURM job (`job 77_3`) when there is one.
    pub fn worker(&self) -> String {
        let job = match (&self.slurm_array_job_id, &self.slurm_array_task_id, &self.slurm_job_id) {
            (Some(a), Some(t), _) => format!(", job {a}_{t}"),
            (_, _, Some(j)) => format!(", job {j}"),
            _ => String::new(),
        };
        format!("{} pid {}{job}", self.host, self.pid)
    }
}

/// A claim as found on disk: its content (None when unreadable) and its heartbeat.
pub struct Found {
    pub info: Option<ClaimInfo>,
    pub heartbeat: SystemTime,
}

impl Found {
    fn read(path: &Path) -> std::io::Result<Found> {
        let heartbeat = std::fs::metadata(path)?.modified()?;
        let info = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        Ok(Found { info, heartbeat })
    }

    pub fn heartbeat_age(&self) -> Duration {
        SystemTime::now().duration_since(self.heartbeat).unwrap_or_default()
    }

    /// Why this claim's worker is gone, or None while it may still be working.
    pub fn stale(&self) -> Option<String> {
        let (host, job) = (hostname(), std::env::var("SLURM_JOB_ID").ok());
        let me = Judge {
            host: &host,
            pid: std::process::id(),
            job: job.as_deref(),
        };
        judge(
            self.info.as_ref(),
            self.heartbeat_age(),
            &me,
            process_alive,
            slurm_job_running,
        )
    }
}

/// Creates `path` holding `bytes`, failing with `AlreadyExists` when it exists: the content is
/// written and synced in a temporary file first, then hard-linked into place (link(2) is atomic
/// and exclusive, on NFS too), so a worker killed at any moment never leaves an empty claim that
/// would look held. Returns the claim's open file, for its heartbeat.
fn create_written(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    std::fs::hard_link(tmp.path(), path)?;
    // Dropping the temporary name leaves the claim's own link to the same file.
    Ok(tmp.into_file())
}

/// Who is judging a claim: this process, and its SLURM job if any.
struct Judge<'a> {
    host: &'a str,
    pid: u32,
    job: Option<&'a str>,
}

/// The staleness rules, with the process and SLURM probes passed in so they can be tested.
fn judge(
    info: Option<&ClaimInfo>,
    heartbeat_age: Duration,
    me: &Judge,
    alive: impl Fn(u32) -> bool,
    job_running: impl Fn(&str) -> Option<bool>,
) -> Option<String> {
    let Some(info) = info else {
        return (heartbeat_age > UNREADABLE_AFTER)
            .then(|| format!("unreadable claim, untouched for {:.0} s", heartbeat_age.as_secs_f64()));
    };
    if info.host == me.host && !alive(info.pid) {
        return Some(format!("process {} on {} is gone", info.pid, info.host));
    }
    if let Some(job) = &info.slurm_job_id {
        // A requeued (preempted) job runs again under its old id, in a new process.
        if me.job == Some(job.as_str()) && (info.host != me.host || info.pid != me.pid) {
            return Some(format!("SLURM job {job} was requeued and runs again here"));
        }
        if job_running(job) == Some(false) {
            return Some(format!("SLURM job {job} is no longer running"));
        }
    }
    (heartbeat_age > SILENT_AFTER).then(|| {
        format!(
            "no heartbeat for {:.0} s (limit {} s)",
            heartbeat_age.as_secs_f64(),
            SILENT_AFTER.as_secs()
        )
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether SLURM still runs `job`, per `squeue`; None where squeue is missing or fails oddly.
/// A job that ended stays listed for a while (MinJobAge) in a final state, which counts as ended.
fn slurm_job_running(job: &str) -> Option<bool> {
    let out = std::process::Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T"])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return String::from_utf8_lossy(&out.stderr)
            .contains("Invalid job id")
            .then_some(false);
    }
    const ACTIVE: [&str; 9] = [
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETING",
        "CONFIGURING",
        "REQUEUED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    ];
    Some(stdout.lines().any(|state| ACTIVE.contains(&state.trim())))
}

/// The live worker holding run `id` in `run_dir`, if any.
pub fn holder(run_dir: &Path, id: &str) -> Option<ClaimInfo> {
    let found = Found::read(&run_dir.join("claims").join(format!("{id}.json"))).ok()?;
    found.stale().is_none().then_some(found.info).flatten()
}

/// Every claim under `run_dir`, by run id (for `repro status`).
pub fn all(run_dir: &Path) -> Vec<(String, Found)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("claims")) else {
        return vec![];
    };
    let mut found: Vec<(String, Found)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let id = path.file_name()?.to_str()?.strip_suffix(".json")?.to_string();
            Some((id, Found::read(&path).ok()?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The claim this worker holds now.
struct Held {
    file: File,
    path: PathBuf,
    token: String,
}

impl Held {
    fn still_ours(&self) -> bool {
        Found::read(&self.path)
            .ok()
            .and_then(|f| f.info)
            .is_some_and(|i| i.token == self.token)
    }
}

/// The outcome of trying to claim a run.
pub enum Attempt {
    Claimed,
    /// A live worker holds it.
    HeldBy(ClaimInfo),
}

/// This worker's side of the claims: one claim at a time, kept alive by a heartbeat thread.
pub struct Claims {
    dir: PathBuf,
    held: Arc<Mutex<Option<Held>>>,
    lost: Arc<AtomicBool>,
}

impl Claims {
    /// Creates `RUN_DIR/claims` and starts the heartbeat.
    pub fn open(run_dir: &Path) -> Result<Claims> {
        let dir = run_dir.join("claims");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let held: Arc<Mutex<Option<Held>>> = Arc::default();
        let lost: Arc<AtomicBool> = Arc::default();
        let (beat_held, beat_lost) = (held.clone(), lost.clone());
        std::thread::Builder::new()
            .name("claim-heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(HEARTBEAT_EVERY);
                let guard = beat_held.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = guard.as_ref() {
                    if h.still_ours() {
                        let _ = h.file.set_modified(SystemTime::now());
                    } else {
                        beat_lost.store(true, Ordering::SeqCst);
                    }
                }
            })
            .context("cannot start the claim heartbeat thread")?;
        Ok(Claims { dir, held, lost })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Claims run `id`, taking over a stale claim (and saying so on stderr).
    pub fn claim(&self, id: &str, label: &str) -> Result<Attempt> {
        let path = self.path(id);
        for _ in 0..5 {
            let info = me(id, label);
            match create_written(&path, &serde_json::to_vec_pretty(&info)?) {
                Ok(file) => {
                    self.lost.store(false, Ordering::SeqCst);
                    *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(Held {
                        file,
                        path,
                        token: info.token,
                    });
                    return Ok(Attempt::Claimed);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
            let found = match Found::read(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // released meanwhile
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            match found.stale() {
                None => return Ok(Attempt::HeldBy(found.info.unwrap_or_else(|| unknown(id, label)))),
                Some(why) => self.take_over(&path, &found, &why)?,
            }
        }
        anyhow::bail!(
            "{}: could not claim the run after several attempts (other workers keep racing for it)",
            path.display()
        )
    }

    /// Removes the stale claim at `path` if it is still the one judged stale.
    fn take_over(&self, path: &Path, judged: &Found, why: &str) -> Result<()> {
        let guard = path.with_extension("takeover");
        match OpenOptions::new().write(true).create_new(true).open(&guard) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Another worker is taking it over; a guard left by a worker that died doing so is removed.
                if Found::read(&guard).is_ok_and(|g| g.heartbeat_age() > UNREADABLE_AFTER) {
                    let _ = std::fs::remove_file(&guard);
                }
                std::thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", guard.display())),
        }
        let same = Found::read(path)
            .ok()
            .is_some_and(|now| now.info.as_ref().map(|i| &i.token) == judged.info.as_ref().map(|i| &i.token));
        if same {
            let whose = judged.info.as_ref().map_or("an unknown worker".into(), |i| i.worker());
            eprintln!("taking over {} from {whose}: {why}", path.display());
            std::fs::remove_file(path)
                .or_else(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        std::fs::remove_file(&guard).with_context(|| format!("cannot remove {}", guard.display()))
    }

    /// Whether the claim held now is still this worker's (it was not taken over).
    pub fn still_ours(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
            && self
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(Held::still_ours)
    }

    /// Gives up the claim held now; a claim taken over by another worker is left to it.
    pub fn release(&self) -> Result<()> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = held.filter(Held::still_ours) {
            std::fs::remove_file(&h.path).with_context(|| format!("cannot remove {}", h.path.display()))?;
        }
        Ok(())
    }
}

/// This worker's claim on run `id`, with a fresh token.
fn me(id: &str, label: &str) -> ClaimInfo {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let started_at = super::now();
    let host = hostname();
    let pid = std::process::id();
    ClaimInfo {
        id: id.into(),
        label: label.into(),
        token: format!("{host}-{pid}-{started_at}-{:x}", rand_u64()),
        host,
        pid,
        slurm_job_id: var("SLURM_JOB_ID"),
        slurm_array_job_id: var("SLURM_ARRAY_JOB_ID"),
        slurm_array_task_id: var("SLURM_ARRAY_TASK_ID"),
        started_at,
    }
}

/// A claim whose file is being written (not yet readable).
fn unknown(id: &str, label: &str) -> ClaimInfo {
    ClaimInfo {
        host: "another worker".into(),
        pid: 0,
        slurm_job_id: None,
        slurm_array_job_id: None,
        slurm_array_task_id: None,
        started_at: super::now(),
        token: String::new(),
        ..me(id, label)
    }
}

/// Enough entropy to tell two claims of one pid apart (the std hasher is randomly keyed).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, job: Option<&str>) -> ClaimInfo {
        ClaimInfo {
            host: host.into(),
            pid: 42,
            slurm_job_id: job.map(Into::into),
            ..me("abc", "label")
        }
    }

    #[test]
    fn stale_claims_are_told_apart_from_live_ones() {
        let fresh = Duration::from_secs(5);
        let h = Judge {
            host: "h",
            pid: 1,
            job: None,
        };
        let never = |_: &str| -> Option<bool> { panic!("squeue asked without a job") };
        // Same host: the pid decides.
        assert!(judge(Some(&info("h", None)), fresh, &h, |_| true, never).is_none());
        assert!(judge(Some(&info("h", None)), fresh, &h, |_| false, never)
            .unwrap()
            .contains("process 42 on h is gone"));
        // Another host's pid says nothing; its SLURM job does.
        assert!(judge(Some(&info("other", None)), fresh, &h, |_| false, never).is_none());
        assert!(judge(Some(&info("other", Some("7"))), fresh, &h, |_| false, |_| Some(true)).is_none());
        assert!(
            judge(Some(&info("other", Some("7"))), fresh, &h, |_| false, |_| Some(false))
                .unwrap()
                .contains("SLURM job 7 is no longer running")
        );
        // This process runs in the job the claim names, so that job was requeued.
        let requeued = Judge {
            host: "h",
            pid: 1,
            job: Some("7"),
        };
        assert!(judge(
            Some(&info("other", Some("7"))),
            fresh,
            &requeued,
            |_| true,
            |_| Some(true)
        )
        .unwrap()
        .contains("requeued"));
        // squeue unavailable: the heartbeat decides.
        assert!(judge(Some(&info("other", Some("7"))), fresh, &h, |_| true, |_| None).is_none());
        let silent = SILENT_AFTER + Duration::from_secs(1);
        assert!(judge(Some(&info("other", None)), silent, &h, |_| true, never)
            .unwrap()
            .contains("no heartbeat for 301 s"));
        // A claim being written is left alone for a while.
        assert!(judge(None, fresh, &h, |_| true, never).is_none());
        assert!(judge(None, UNREADABLE_AFTER * 2, &h, |_| true, never).is_some());
    }

    #[test]
    fn one_claim_per_run_and_takeover_of_a_dead_worker() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Claims::open(tmp.path()).unwrap();
        let b = Claims::open(tmp.path()).unwrap();
        assert!(matches!(a.claim("r1", "l").unwrap(), Attempt::Claimed));
        // This process is alive, so the claim holds against a second worker.
        assert!(matches!(b.claim("r1", "l").unwrap(), Attempt::HeldBy(i) if i.pid == std::process::id()));
        // A claim of a dead process on this host is taken over, and its owner finds out.
        let path = tmp.path().join("claims/r1.json");
        let mut dead = serde_json::from_str::<ClaimInfo>(&std::fs::read_to_string(&path).unwrap()).unwrap();
        dead.pid = 999_999_999;
        dead.token = "from a worker that died".into();
        std::fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(!a.still_ours());
        assert!(matches!(b.claim("r1", "l").unwrap(), Attempt::Claimed));
        assert!(b.still_ours());
        a.release().unwrap();
        assert!(path.is_file(), "releasing a lost claim leaves the new owner's in place");
        b.release().unwrap();
        assert!(!path.exists());
    }
}
