fn main() -> std::process::ExitCode {
    curate::main()
}
