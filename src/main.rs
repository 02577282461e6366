use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before anything starts a thread (the interrupt handler does).
    repro::threads::configure();
    repro::resources::return_freed_memory_promptly();
    let cli = repro::cli::Cli::parse();
    match repro::scratch::remove_on_interrupt().and_then(|()| repro::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", repro::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
