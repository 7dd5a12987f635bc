//! `tokenizer-auth`: the one binary. See `tokenizer-auth --help` and SPEC
//! section 7 for the command line, which scripts rely on.

use std::process::ExitCode;

use clap::Parser;
use tokenizer_auth_runtime_mio::cli::{Cli, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(reason)) => {
            eprintln!("tokenizer-auth: {reason}");
            ExitCode::from(2)
        }
        Err(Failure::Other(reason)) => {
            eprintln!("tokenizer-auth: {reason}");
            ExitCode::from(1)
        }
    }
}
