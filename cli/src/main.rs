//! `tokenizer-auth`: the one binary. See `tokenizer-auth --help` and
//! `docs/CONFIGURATION.md` ("Commands") for the command line, which scripts
//! rely on.
//!
//! Exit codes: 0 success, 2 usage or configuration error, 1 anything else,
//! with a one-line reason on stderr.

use std::process::ExitCode;

use clap::Parser;
use tokenizer_auth::{Cli, Failure, logging};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let outcome = cli.configuration().and_then(|config| {
        logging::init(config.log_format(), config.log_level());
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        cli.run(&config)
    });
    match outcome {
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
