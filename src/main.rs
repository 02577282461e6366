use clap::Parser;

fn main() -> std::process::ExitCode {
    match repro::cli::run(repro::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
