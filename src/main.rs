fn main() -> std::process::ExitCode {
    solstice::cli::main()
}
