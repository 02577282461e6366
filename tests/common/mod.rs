//! Shared helpers for the integration tests: fixture paths and golden files.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

pub fn fixture_model(name: &str) -> String {
    fixtures().join("models").join(name).to_string_lossy().into_owned()
}

/// The commit [`hf_cache_snapshot`] names in `refs/main`.
pub const CACHE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A repo laid out as the Hugging Face cache holds it (`cache/<folder>/refs/main` naming
/// `snapshots/<commit>`); returns the snapshot directory, created and empty.
pub fn hf_cache_snapshot(cache: &std::path::Path, folder: &str) -> PathBuf {
    let repo = cache.join(folder);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), CACHE_COMMIT).unwrap();
    let snapshot = repo.join("snapshots").join(CACHE_COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    snapshot
}

pub fn golden(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Where `got` is not within rel * |want| + abs of `want` (a length, or the first element; NaN
/// is never close), as a message naming what differs; `None` when all of it is.
pub fn not_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{what}: length {}, want {}", got.len(), want.len()));
    }
    let far = |(g, w): (&f64, &f64)| {
        let diff = (g - w).abs();
        diff.is_nan() || diff > rel * w.abs() + abs
    };
    (got.iter().zip(want).position(far)).map(|i| format!("{what}[{i}]: got {}, want {}", got[i], want[i]))
}

/// |a - b| <= rel * |b| + abs, elementwise, with a message naming what differs.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    if let Some(miss) = not_close(what, got, want, rel, abs) {
        panic!("{miss}");
    }
}

/// The user cache (device probe, token counts) of every `repro` the tests start, not the user's own.
pub fn user_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("user-cache")
}

pub fn repro() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_repro"));
    c.env("REPRO_HUB_MIRROR", fixtures())
        .env("HF_HUB_OFFLINE", "1")
        .env("XDG_CACHE_HOME", user_cache());
    c
}

/// A finished command's stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stdout then stderr of a command that must have succeeded.
pub fn success_text(out: &std::process::Output) -> String {
    let text = output_text(out);
    assert!(out.status.success(), "{text}");
    text
}

/// The JSON object a successful `--json` run prints as its last stdout line.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap()
}

/// Runs `repro args`, which must fail cleanly (exit code 1, no panic); returns its stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = repro().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure for {args:?}, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    stderr
}
