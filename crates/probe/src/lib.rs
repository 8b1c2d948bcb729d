//! airlock-probe: a hostile program for the isolation suite. Run inside an environment as
//! root, it lists what a process there can see (namespaces, capabilities, seccomp of every
//! thread, mounts, devices, environment, sockets, interfaces, processes) and then attempts the
//! classic container escapes the way amicontained, deepce and CDK do: mounting cgroupfs for a
//! release_agent, writing core_pattern, loading kernel code, "shocker", new namespaces, raw
//! sockets, reaching the host's addresses, reading files it must not see.
//!
//! `airlock-probe [--connect HOST:PORT]... [--read PATH]...` prints one JSON [`Report`] and
//! exits 0 when every attempt was blocked, 1 otherwise, 2 on a usage error. Each attempt undoes
//! whatever worked, but it runs the real system calls: run it only inside a sandbox (or a
//! throwaway machine).

mod attempts;
mod network;
mod recon;
mod report;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

pub use recon::{NAMESPACES, local_addresses, namespace_inodes};
pub use report::{Attempt, Mount, Process, Recon, Report, ThreadStatus};

const USAGE: &str = "usage: airlock-probe [--connect HOST:PORT]... [--read PATH]...

Reports what this process can see and attempts the classic container escapes, as JSON on
stdout. Exits 0 if every attempt was blocked, 1 if any was not.

  --connect HOST:PORT   a TCP connection that must fail (refused, unreachable or timed out
                        after 2 s)
  --read PATH           a file that must not be readable";

/// What the operator asked for beyond the built-in attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub connect: Vec<String>,
    pub read: Vec<PathBuf>,
}

impl Options {
    pub fn parse(arguments: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut options = Options::default();
        let mut arguments = arguments.into_iter();
        while let Some(argument) = arguments.next() {
            let mut value = || {
                arguments
                    .next()
                    .ok_or_else(|| format!("{argument} needs a value"))
            };
            match argument.as_str() {
                "--connect" => options.connect.push(value()?),
                "--read" => options.read.push(PathBuf::from(value()?)),
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

/// Recon first, while the probe may run threads; then the attempts, single-threaded, since
/// some fork.
pub fn run(options: &Options) -> Report {
    let recon = recon::collect();
    let scratch = attempts::Scratch::new();
    let mut attempts = Vec::new();
    attempts.extend(attempts::mounts(&scratch));
    attempts.extend(attempts::kernel_knobs());
    attempts.extend(attempts::devices(&scratch));
    attempts.extend(attempts::processes());
    attempts.extend(attempts::namespaces(&scratch));
    attempts.extend(attempts::kernel(&scratch));
    attempts.extend(network::attempts());
    attempts.extend(
        options
            .connect
            .iter()
            .map(|target| network::connect(target)),
    );
    attempts.extend(
        options
            .read
            .iter()
            .map(|path| attempts::read_file(&format!("read {}", path.display()), path)),
    );
    Report { recon, attempts }
}

/// The `airlock-probe` binary.
pub fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) if problem.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            eprintln!("airlock-probe: {problem}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = run(&options);
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("the report serializes")
    );
    if report.all_blocked() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Options, String> {
        Options::parse(arguments.iter().map(|argument| argument.to_string()))
    }

    #[test]
    fn arguments_repeat_and_keep_their_order() {
        let options = parse(&["--connect", "a:1", "--read", "/x", "--connect", "b:2"]).unwrap();
        assert_eq!(options.connect, ["a:1", "b:2"]);
        assert_eq!(options.read, [PathBuf::from("/x")]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--connect"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("unknown"));
        assert_eq!(parse(&["--help"]).unwrap_err(), "");
    }
}
