use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before anything starts a thread (the interrupt handler does).
    repro::threads::configure();
    repro::resources::return_freed_memory_promptly();
    // Rust ignores SIGPIPE, so `repro status DIR | head` would panic on its next line; a closed
    // pipe ends the program quietly instead, as for any Unix tool. Sockets are unaffected (std
    // sends with MSG_NOSIGNAL), and records are written atomically, so nothing half-written stays.
    // SAFETY: no other thread exists yet to race the handler change.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = repro::cli::Cli::parse();
    match repro::scratch::remove_on_interrupt().and_then(|()| repro::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", repro::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
