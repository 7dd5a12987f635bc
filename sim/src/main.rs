//! `sim`: runs seeds of the whole-system simulation (docs/SIMULATION.md).
//!
//! ```text
//! sim [--seed S | --seeds N [--from S]] [--requests M] [--capture FILE]
//! ```
//!
//! Each seed's fault profile is printed before it runs; a seed that breaks
//! a rule prints the rule, the first event that broke it, and the command
//! that replays it. The last line is JSON: seeds, simulated requests,
//! faults injected by kind, violations, and simulated requests per second
//! of wall time. The exit status is 1 when any seed broke a rule.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tokenizer_auth_sim::{FAULTS, Profile, simulate};

/// A seeded simulation of tokenizer-auth under faults.
#[derive(Parser)]
#[command(name = "sim", version)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "from"])]
    seed: Option<u64>,
    /// Run this many seeds, one after another.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// The first of the seeds (the rest follow it).
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Request lines each seed sends under faults, before the faults stop
    /// and every client must finish.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Write the capture of the run's last engine life (the one in which a
    /// rule broke, if one did) here, for `tokenizer-auth replay` (with
    /// --seed).
    #[arg(long, requires = "seed")]
    capture: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (0..args.seeds).map(|n| args.from.wrapping_add(n)).collect(),
    };
    let started = Instant::now();
    let (mut requests, mut violations) = (0u64, 0u64);
    let mut faults: BTreeMap<&str, u64> = FAULTS.iter().map(|f| (*f, 0)).collect();
    for &seed in &seeds {
        let profile = Profile::from_seed(seed);
        println!("seed {seed}: {profile}");
        let report = simulate(seed, args.requests, args.capture.is_some());
        requests += report.requests;
        for (kind, n) in &report.faults {
            *faults.entry(kind).or_default() += n;
        }
        println!(
            "seed {seed}: {} requests, {} logins, {} renewals, {} revocations, {:.0} simulated s, digest {:016x}",
            report.requests,
            report.logins,
            report.renewals,
            report.revocations,
            report.simulated_seconds,
            report.digest
        );
        if let Some(violation) = &report.violation {
            violations += 1;
            println!("seed {seed}: VIOLATION {violation}");
            println!(
                "seed {seed}: replay with: cargo run --release --bin sim -- --seed {seed} --requests {}",
                args.requests
            );
        }
        if let (Some(path), Some(capture)) = (&args.capture, &report.capture) {
            match std::fs::write(path, capture) {
                Ok(()) => {
                    let key: String = profile.config.server_key.expose().iter().map(|b| format!("{b:02x}")).collect();
                    println!("seed {seed}: capture of the last engine life written to {}", path.display());
                    println!(
                        "seed {seed}: replay with: TOKENIZER_AUTH_SERVER_KEY={key} tokenizer-auth replay {}",
                        path.display()
                    );
                }
                Err(e) => eprintln!("seed {seed}: cannot write {}: {e}", path.display()),
            }
        }
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let summary = serde_json::json!({
        "seeds": seeds.len(),
        "requests": requests,
        "faults": faults,
        "violations": violations,
        "requests_per_sec": (requests as f64 / wall).round(),
    });
    println!("{summary}");
    if violations == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
