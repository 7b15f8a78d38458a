fn main() -> std::process::ExitCode {
    curate_cli::main()
}
