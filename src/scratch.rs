//! Temporary directories that may be as large as a model (streamed blocks, calibration buffers
//! spilled to disk): removed when their run ends, by the interrupt handler on Ctrl-C, SIGTERM or
//! SIGHUP, and, after a SIGKILL or a crash, by the next run that makes one of the same kind.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// This process's scratch directories, for the interrupt handler.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    /// A new directory `{prefix}{pid}-XXXX` in `parent`, after removing the directories of that
    /// kind whose process is gone. `what` names the contents for the error message.
    pub fn new(parent: &Path, prefix: &str, what: &str) -> Result<Self> {
        remove_orphans(parent, prefix);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}-", std::process::id()))
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a directory for {what} in {}", parent.display()))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.path().to_path_buf());
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| d != self.0.path());
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP: remove the scratch directories of this process, then exit with
/// 130 at once. Records and saves need nothing: they are only ever replaced whole.
pub fn remove_on_interrupt() -> Result<()> {
    ctrlc::set_handler(|| {
        for dir in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
        eprintln!("\ninterrupted");
        // _exit, not exit: exit runs libtorch's static destructors (oneDNN's primitive cache
        // among them) under the main thread's feet, which crashed runs interrupted mid-GEMM.
        // SAFETY: _exit ends the process at once; nothing here relies on atexit handlers.
        unsafe { libc::_exit(130) }
    })
    .context("cannot install the interrupt handler")
}

/// A run killed by SIGKILL (or a crash) leaves its scratch directories behind; those in `parent`
/// whose process (the pid in the name) is gone are removed.
fn remove_orphans(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Bytes free for this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
