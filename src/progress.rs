//! One look for every long-running loop: a bar on stderr with rate and ETA (hidden when stderr
//! is not a terminal, so logs and `--json` consumers stay clean). All bars share one
//! `MultiProgress`, so a sweep's overall bar and the current run's stage bar stack cleanly.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::OnceLock;

pub fn bar(len: u64, what: &str) -> ProgressBar {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    let pb = MULTI.get_or_init(MultiProgress::new).add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
