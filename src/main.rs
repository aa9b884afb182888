//! The `pylon` binary: parse the command line once, then hand over to the library.

fn main() -> std::process::ExitCode {
    pylon::cli::main()
}
