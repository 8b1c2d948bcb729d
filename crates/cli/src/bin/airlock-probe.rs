//! `airlock-probe`: the isolation suite's hostile probe as a program (see `airlock_probe`).

fn main() -> std::process::ExitCode {
    airlock_probe::main()
}
