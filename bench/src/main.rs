//! `tokenizer-auth-bench`: the load generator of tokenizer-auth.
//!
//! - `seed` writes sessions straight into a data folder and their base
//!   tokens into a tokens file;
//! - `run` measures a baseline server (in this process) and then the
//!   target, with the same client settings, and prints progress once a
//!   second on stderr, a summary, and one JSON line on stdout (the last
//!   line);
//! - `report` turns the JSON lines of the scenarios into the table of
//!   `docs/BENCHMARKS.md`, with each goal met or not;
//! - `echo` and `oneshot` run a baseline server alone (for profiling).
//!
//! The scenarios and their commands are in `scripts/bench.sh` and
//! `docs/BENCHMARKS.md`.

mod baseline;
mod load;
mod report;
mod seed;
mod stats;
mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use crate::baseline::Baseline;
use crate::load::{Mode, Plan, Progress, StormPlan, Tally, Timeline};
use crate::stats::{Latency, ReplyKind, grouped, round, show_us};
use crate::tokens::Tokens;

/// Load generator and benchmark tools for tokenizer-auth.
#[derive(Parser, Debug)]
#[command(name = "tokenizer-auth-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write sessions straight into a data folder (no logins), and their
    /// base tokens into a tokens file for `run`.
    Seed(SeedArgs),
    /// Measure a baseline and then a server, with the same client settings.
    Run(Box<RunArgs>),
    /// Print the scenarios' results (JSON lines of `run`) as a table with
    /// the benchmark goals.
    Report {
        /// Files holding `run` output; the JSON lines in them are read.
        files: Vec<PathBuf>,
    },
    /// Run the line echo baseline alone until killed.
    Echo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7170")]
        listen: SocketAddr,
    },
    /// Run the one-request-per-connection baseline alone until killed.
    Oneshot {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7171")]
        listen: SocketAddr,
    },
}

#[derive(Args, Debug)]
struct SeedArgs {
    /// The server's data folder (created if missing; sessions are added).
    #[arg(long)]
    data_dir: PathBuf,
    /// How many sessions.
    #[arg(long, default_value_t = 100_000)]
    sessions: u64,
    /// Where the base tokens go (one `TOKEN|MAC` per line).
    #[arg(long)]
    tokens: PathBuf,
    /// Seed of the base tokens.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The client address the sessions are bound to (the benchmark's
    /// connections come from it).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Sessions per committed write batch.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Store them already expired but renewable (for the renewal scenario).
    #[arg(long)]
    expired: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum ModeArg {
    /// Pipelined token checks on random sessions.
    Native,
    /// Pipelined token requests on expired sessions: each is a rotation.
    Renew,
    /// One rejected login per connection on a legacy port.
    Legacy,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum BaselineArg {
    /// echo for native and renew, oneshot for legacy.
    Auto,
    /// The line echo server.
    Echo,
    /// The one-request-per-connection server.
    Oneshot,
    /// No baseline.
    None,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The server: its native listener, or for legacy mode its legacy login
    /// listener.
    #[arg(long)]
    addr: SocketAddr,
    /// What the connections send.
    #[arg(long, value_enum, default_value_t = ModeArg::Native)]
    mode: ModeArg,
    /// Concurrent connections (N).
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Requests in flight per connection (D; native and renew).
    #[arg(short = 'd', long, default_value_t = 16)]
    depth: usize,
    /// The measured window, e.g. 10s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// The tokens file written by `seed` (native and renew).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Use only the first this many sessions of the tokens file.
    #[arg(long)]
    sessions: Option<usize>,
    /// The baseline measured first with the same settings.
    #[arg(long, value_enum, default_value_t = BaselineArg::Auto)]
    baseline: BaselineArg,
    /// Login storm: logins per second that need a password verification,
    /// sent alongside on their own connections (0 = none).
    #[arg(long, default_value_t = 0.0)]
    logins_per_sec: f64,
    /// The native listener the storm's logins go to [default: --addr].
    #[arg(long)]
    login_addr: Option<SocketAddr>,
    /// The server's process id: its CPU time over the window and its
    /// resident memory at the end are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The database's process id (PostgreSQL's postmaster): the CPU time
    /// over the window of it and every process it started is reported.
    #[arg(long)]
    db_pid: Option<u32>,
    /// A name for this run in the output (the scenario).
    #[arg(long, default_value = "run")]
    label: String,
    /// KEY=VALUE to carry into the JSON line's `notes` (repeatable).
    #[arg(long = "note", value_parser = parse_note)]
    notes: Vec<(String, String)>,
    /// Client event-loop threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The request field of token requests.
    #[arg(long, default_value = "get")]
    verb: String,
    /// The legacy request, sent as is with no terminator [default: a login
    /// with an unknown email and a wrong password].
    #[arg(long)]
    legacy_request: Option<String>,
    /// Seeds the random choice of sessions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Speak TLS to the server (native and renew), trusting the
    /// certificates in this PEM file; the server's certificate must name
    /// `localhost`. The baseline stays plaintext.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

/// Parses `250ms`, `10s`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?}: expected a whole number and a unit (ms, s, m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(format!("{text:?}: unknown unit; use ms, s or m")),
    }
}

fn parse_note(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Seed(args) => seed(&args),
        Command::Run(args) => run(&args),
        Command::Report { files } => report::print(&files),
        Command::Echo { listen } => serve_alone(baseline::Kind::Echo, listen),
        Command::Oneshot { listen } => serve_alone(baseline::Kind::Oneshot, listen),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenizer-auth-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn seed(args: &SeedArgs) -> Result<(), String> {
    let plan = seed::SeedPlan {
        data_dir: args.data_dir.clone(),
        tokens: args.tokens.clone(),
        sessions: args.sessions,
        seed: args.seed,
        ip: args.ip,
        batch: args.batch.max(1),
        expired: args.expired,
    };
    let took = seed::seed(&plan)?;
    println!(
        "seeded {} {}sessions into {} in {:.1} s ({}/s); tokens in {}",
        grouped(args.sessions as f64),
        if args.expired { "expired " } else { "" },
        args.data_dir.display(),
        took.as_secs_f64(),
        grouped(args.sessions as f64 / took.as_secs_f64().max(1e-9)),
        args.tokens.display()
    );
    Ok(())
}

fn serve_alone(kind: baseline::Kind, listen: SocketAddr) -> Result<(), String> {
    let server = Baseline::start(kind, listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("{} baseline listening on {}", kind.name(), server.addr);
    loop {
        std::thread::park();
    }
}

/// Where a measured server's CPU time is read.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// Another process.
    Process(u32),
    /// The baseline's thread in this process.
    Baseline,
    /// Not read.
    Nothing,
}

impl Probe {
    fn cpu(self) -> Option<f64> {
        match self {
            Probe::Process(pid) => stats::process_cpu(pid),
            Probe::Baseline => Some(stats::threads_cpu(baseline::THREAD_PREFIX)),
            Probe::Nothing => None,
        }
    }
}

/// One measured server.
struct Measured {
    tally: Tally,
    seconds: f64,
    /// Server CPU seconds over the window.
    server_cpu: Option<f64>,
    /// This process's CPU seconds over the window, less the baseline's.
    client_cpu: Option<f64>,
    /// The database's CPU seconds over the window (`--db-pid`).
    db_cpu: Option<f64>,
}

impl Measured {
    fn throughput(&self) -> f64 {
        self.tally.kinds.total() as f64 / self.seconds
    }

    fn latency(&self) -> Latency {
        Latency::of(&self.tally.hist)
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "throughput": round(self.throughput()),
            "requests": self.tally.kinds.total(),
            "seconds": round(self.seconds),
            "latency_us": self.latency().json(),
            "replies": self.tally.kinds.json(),
            "errors": self.tally.errors,
        });
        if let Some(cpu) = self.server_cpu {
            v["server_cpu_s"] = json!(round(cpu));
            v["server_cores"] = json!(round(cpu / self.seconds));
            let requests = self.tally.kinds.total().max(1) as f64;
            v["server_cpu_us_per_request"] = json!(round(cpu * 1e6 / requests));
        }
        if let Some(cpu) = self.db_cpu {
            v["db_cpu_s"] = json!(round(cpu));
            v["db_cores"] = json!(round(cpu / self.seconds));
            let requests = self.tally.kinds.total().max(1) as f64;
            v["db_cpu_us_per_request"] = json!(round(cpu * 1e6 / requests));
        }
        if let Some(cpu) = self.client_cpu {
            v["client_cpu_s"] = json!(round(cpu));
            v["client_cores"] = json!(round(cpu / self.seconds));
        }
        if let Some(storm) = &self.tally.storm {
            let lat = Latency::of(&storm.hist);
            v["storm"] = json!({
                "sent": storm.sent,
                "answered": storm.kinds.total(),
                "unanswered": storm.unanswered(),
                "failed": storm.failed,
                "replies": storm.kinds.json(),
                "latency_us": lat.json(),
                "all_within_5s": storm.unanswered() == 0 && lat.max <= 5_000_000.0,
            });
        }
        v
    }
}

/// Runs the load of `plan` against a server, printing progress once a
/// second on stderr.
fn measure(label: &str, what: &str, plan: &Plan, probe: Probe, db: Option<u32>) -> Result<Measured, String> {
    let progress = Arc::new(Progress::default());
    let timeline = Timeline::new(plan);
    let worker = {
        let (plan, progress) = (plan.clone(), Arc::clone(&progress));
        std::thread::Builder::new()
            .name("load".to_owned())
            .spawn(move || load::run(&plan, timeline, &progress))
            .map_err(|e| format!("cannot start the load: {e}"))?
    };
    type Sample = (Option<f64>, Option<f64>, Option<f64>);
    let mut at_warm: Option<Sample> = None;
    let mut at_end: Option<Sample> = None;
    let baseline_cpu = || matches!(probe, Probe::Baseline).then(|| stats::threads_cpu(baseline::THREAD_PREFIX));
    let sample = || {
        let client = stats::own_cpu().map(|own| own - baseline_cpu().unwrap_or(0.0));
        (probe.cpu(), client, db.and_then(stats::tree_cpu))
    };
    let mut tick = timeline.start + Duration::from_secs(1);
    let (mut last_replies, mut last_logins) = (0u64, 0u64);
    while !worker.is_finished() {
        let now = Instant::now();
        if at_warm.is_none() && now >= timeline.warm {
            at_warm = Some(sample());
        }
        if at_end.is_none() && now >= timeline.end {
            at_end = Some(sample());
        }
        if now >= tick {
            let replies = progress.replies.load(std::sync::atomic::Ordering::Relaxed);
            let logins = progress.logins.load(std::sync::atomic::Ordering::Relaxed);
            let errors = progress.errors.load(std::sync::atomic::Ordering::Relaxed);
            let phase = if now < timeline.warm {
                " (warm-up)"
            } else if now >= timeline.end && plan.storm.is_some() {
                " (waiting for the storm's last logins)"
            } else if now >= timeline.end {
                " (done)"
            } else {
                ""
            };
            let mut line = format!(
                "[{label} {what}] {:>4.0} s  {:>10}/s{}",
                (now - timeline.start).as_secs_f64(),
                grouped((replies - last_replies) as f64),
                phase
            );
            if plan.storm.is_some() {
                line.push_str(&format!("  logins answered {}/s", grouped((logins - last_logins) as f64)));
            }
            if errors > 0 {
                line.push_str(&format!("  connection errors {errors}"));
            }
            eprintln!("{line}");
            (last_replies, last_logins) = (replies, logins);
            tick += Duration::from_secs(1);
        }
        let next = [Some(tick), at_warm.is_none().then_some(timeline.warm), at_end.is_none().then_some(timeline.end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tick);
        std::thread::sleep(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
    }
    let tally = worker.join().map_err(|_| "the load thread panicked".to_owned())??;
    let end = at_end.unwrap_or_else(sample);
    let warm = at_warm.unwrap_or(end);
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(Measured {
        tally,
        seconds: plan.duration.as_secs_f64().max(1e-9),
        server_cpu: delta(warm.0, end.0),
        client_cpu: delta(warm.1, end.1),
        db_cpu: delta(warm.2, end.2),
    })
}

fn print_row(name: &str, m: &Measured, throughput_of: &dyn Fn(&Measured) -> f64) {
    let l = m.latency();
    println!(
        "{name:<24} {:>12}/s {:>10} {:>10} {:>10} {:>10} {:>10}",
        grouped(throughput_of(m)),
        show_us(l.p50),
        show_us(l.p90),
        show_us(l.p99),
        show_us(l.p999),
        show_us(l.max)
    );
}

fn run(args: &RunArgs) -> Result<(), String> {
    let mode = match args.mode {
        ModeArg::Native => Mode::Native,
        ModeArg::Renew => Mode::Renew,
        ModeArg::Legacy => Mode::Legacy,
    };
    let tokens = match (&args.tokens, mode) {
        (Some(path), Mode::Native | Mode::Renew) => Tokens::load(path, args.sessions)?,
        (None, Mode::Native | Mode::Renew) => return Err(format!("{} mode needs --tokens", mode.name())),
        _ => Tokens::default(),
    };
    if args.connections == 0 {
        return Err("--connections must be at least 1".to_owned());
    }
    let legacy_request = args
        .legacy_request
        .clone()
        .unwrap_or_else(|| "02:00:00:00:00:01|nobody@bench.example|5550100|wrong horse|AAAAAA".to_owned());
    let storm_plan = |addr| (args.logins_per_sec > 0.0).then_some(StormPlan { addr, per_sec: args.logins_per_sec });
    let plan = Plan {
        addr: args.addr,
        mode,
        connections: args.connections,
        depth: if mode == Mode::Legacy { 1 } else { args.depth.max(1) },
        warmup: args.warmup,
        duration: args.duration,
        threads: args.threads.max(1),
        tokens: Arc::new(tokens),
        verb: args.verb.clone(),
        legacy_request: legacy_request.into_bytes(),
        storm: storm_plan(args.login_addr.unwrap_or(args.addr)),
        seed: args.seed,
        tls: args
            .tls_ca
            .as_deref()
            .map(|ca| tokenizer_auth_effects::tls::client_config(Some(ca), false))
            .transpose()?,
    };
    let baseline_kind = match (args.baseline, mode) {
        (BaselineArg::None, _) => None,
        (BaselineArg::Echo, _) | (BaselineArg::Auto, Mode::Native | Mode::Renew) => Some(baseline::Kind::Echo),
        (BaselineArg::Oneshot, _) | (BaselineArg::Auto, Mode::Legacy) => Some(baseline::Kind::Oneshot),
    };

    let baseline = match baseline_kind {
        Some(kind) => {
            let server = Baseline::start(kind, "127.0.0.1:0".parse().map_err(|_| "bad address")?)
                .map_err(|e| format!("cannot start the {} baseline: {e}", kind.name()))?;
            let mut baseline_plan = plan.clone();
            baseline_plan.addr = server.addr;
            baseline_plan.storm = storm_plan(server.addr);
            baseline_plan.tls = None;
            let measured = measure(&args.label, kind.name(), &baseline_plan, Probe::Baseline, None);
            server.stop();
            Some((kind, measured?))
        }
        None => None,
    };
    let probe = args.server_pid.map_or(Probe::Nothing, Probe::Process);
    let target = measure(&args.label, "server", &plan, probe, args.db_pid)?;
    let memory = args.server_pid.and_then(stats::memory_kib);

    // Renew mode counts rotations; every other mode counts replies.
    let renewals = |m: &Measured| m.tally.kinds.get(ReplyKind::Renew) as f64 / m.seconds;
    let throughput_of: &dyn Fn(&Measured) -> f64 =
        if mode == Mode::Renew { &|m: &Measured| renewals(m) } else { &|m: &Measured| m.throughput() };

    println!();
    println!(
        "== {}: {} mode, {} connections, depth {}, {} s measured after {} s warm-up, {} sessions",
        args.label,
        mode.name(),
        args.connections,
        plan.depth,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        grouped(plan.tokens.len() as f64)
    );
    println!("{:<24} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10}", "", "throughput", "p50", "p90", "p99", "p99.9", "max");
    if let Some((kind, b)) = &baseline {
        print_row(&format!("baseline {}", kind.name()), b, &|m: &Measured| m.throughput());
    }
    print_row(&format!("server {}", args.addr), &target, throughput_of);
    let ratio = baseline.as_ref().map(|(_, b)| target.throughput() / b.throughput().max(1e-9));
    if let Some(ratio) = ratio {
        println!("ratio to baseline: {ratio:.3}");
    }
    println!("replies: {}", target.tally.kinds.text());
    if target.tally.errors > 0 {
        println!("connection errors: {}", target.tally.errors);
    }
    if let Some(cpu) = target.server_cpu {
        println!(
            "server CPU: {:.2} cores, {:.1} µs per request",
            cpu / target.seconds,
            cpu * 1e6 / target.tally.kinds.total().max(1) as f64
        );
    }
    if let Some(cpu) = target.db_cpu {
        println!(
            "database CPU: {:.2} cores, {:.1} µs per request",
            cpu / target.seconds,
            cpu * 1e6 / target.tally.kinds.total().max(1) as f64
        );
    }
    if let Some(cpu) = target.client_cpu {
        println!("client CPU: {:.2} cores", cpu / target.seconds);
    }
    if let Some(m) = memory {
        let per = if plan.tokens.is_empty() {
            String::new()
        } else {
            format!(", {:.0} bytes of its own per session", m.anon as f64 * 1024.0 / plan.tokens.len() as f64)
        };
        println!(
            "server memory: VmRSS {} KiB (peak {} KiB): its own (RssAnon) {} KiB{per}, mapped files {} KiB",
            grouped(m.rss as f64),
            grouped(m.hwm as f64),
            grouped(m.anon as f64),
            grouped(m.file as f64)
        );
    }
    if let Some(storm) = &target.tally.storm {
        let l = Latency::of(&storm.hist);
        println!(
            "login storm: {} sent, {} answered ({}), {} unanswered; latency p50 {} p99 {} max {}",
            storm.sent,
            storm.kinds.total(),
            storm.kinds.text(),
            storm.unanswered(),
            show_us(l.p50),
            show_us(l.p99),
            show_us(l.max)
        );
    }

    let mut out = json!({
        "tool": "tokenizer-auth-bench",
        "label": args.label,
        "mode": mode.name(),
        "addr": args.addr.to_string(),
        "connections": args.connections,
        "depth": plan.depth,
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "threads": plan.threads,
        "sessions": plan.tokens.len(),
        "logins_per_sec": args.logins_per_sec,
        "result": target.json(),
    });
    if mode == Mode::Renew {
        out["result"]["renewals_per_sec"] = json!(round(renewals(&target)));
    }
    if let Some((kind, b)) = &baseline {
        let mut v = b.json();
        v["kind"] = json!(kind.name());
        out["baseline"] = v;
    }
    if let Some(ratio) = ratio {
        out["ratio"] = json!(round(ratio));
    }
    if let Some(pid) = args.server_pid {
        let mut server = json!({ "pid": pid });
        if let Some(m) = memory {
            server["rss_kib"] = json!(m.rss);
            server["hwm_kib"] = json!(m.hwm);
            server["anon_kib"] = json!(m.anon);
            server["file_kib"] = json!(m.file);
            if !plan.tokens.is_empty() {
                let per = |kib: u64| json!(round(kib as f64 * 1024.0 / plan.tokens.len() as f64));
                server["rss_bytes_per_session"] = per(m.rss);
                server["anon_bytes_per_session"] = per(m.anon);
            }
        }
        out["server"] = server;
    }
    let notes: Map<String, Value> = args.notes.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
    out["notes"] = Value::Object(notes);
    println!("{out}");
    Ok(())
}
