//! `report`: the scenarios' JSON lines as the tables of
//! `docs/BENCHMARKS.md`, with each goal checked.
//!
//! Runs are found by their label: `a`, `b`, `c`, `d`, `e`, `f-a`, `f-e`
//! (what `scripts/bench.sh` gives them). A missing run leaves its rows out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::stats::{grouped, show_us};

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_f64()
}

/// Reads the runs (the last one of each label wins).
fn load(files: &[PathBuf]) -> Result<BTreeMap<String, Value>, String> {
    let mut runs = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            if v.get("tool").and_then(Value::as_str) != Some("tokenizer-auth-bench") {
                continue;
            }
            if let Some(label) = v.get("label").and_then(Value::as_str) {
                runs.insert(label.to_owned(), v);
            }
        }
    }
    Ok(runs)
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

/// The figure a scenario is judged by: renewals per second for `d`,
/// requests per second otherwise.
fn figure(run: &Value) -> f64 {
    num(run, &["result", "renewals_per_sec"]).or_else(|| num(run, &["result", "throughput"])).unwrap_or(0.0)
}

/// Prints the tables.
pub(crate) fn print(files: &[PathBuf]) -> Result<(), String> {
    let runs = load(files)?;
    if runs.is_empty() {
        return Err("no runs found (JSON lines of `tokenizer-auth-bench run`)".to_owned());
    }
    println!("| run | what | server | baseline | ratio | p50 | p90 | p99 | p99.9 | max | server CPU per request |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, run) in &runs {
        let lat = |q: &str| num(run, &["result", "latency_us", q]).map_or("–".to_owned(), show_us);
        let what = format!(
            "{}, {} sessions, N={} D={}",
            run["mode"].as_str().unwrap_or("?"),
            grouped(num(run, &["sessions"]).unwrap_or(0.0)),
            run["connections"],
            run["depth"]
        );
        let unit = if num(run, &["result", "renewals_per_sec"]).is_some() { " renewals" } else { "" };
        let baseline = match (run["baseline"]["kind"].as_str(), num(run, &["baseline", "throughput"])) {
            (Some(kind), Some(t)) => format!("{kind} {}/s", grouped(t)),
            _ => "–".to_owned(),
        };
        println!(
            "| {label} | {what} | {}{unit}/s | {baseline} | {} | {} | {} | {} | {} | {} | {} |",
            grouped(figure(run)),
            num(run, &["ratio"]).map_or("–".to_owned(), |r| format!("{r:.3}")),
            lat("p50"),
            lat("p90"),
            lat("p99"),
            lat("p999"),
            lat("max"),
            num(run, &["result", "server_cpu_us_per_request"]).map_or("–".to_owned(), |c| format!("{c:.1} µs")),
        );
    }
    println!();
    println!("| goal | measured | |");
    println!("|---|---|---|");
    let a = runs.get("a");
    let ratio = |run: &Value| num(run, &["ratio"]).unwrap_or(0.0);
    if let Some(a) = a {
        println!("| a: ≥ 0.5 × echo | {:.3} × echo | {} |", ratio(a), met(ratio(a) >= 0.5));
    }
    if let Some(b) = runs.get("b") {
        if let Some(a) = a {
            // Judged on the two servers' throughputs, measured back to back
            // with the same client; the ratio of their echo ratios is shown
            // too (it carries the echo runs' own noise).
            let raw = figure(b) / figure(a).max(1e-9);
            let normalized = ratio(b) / ratio(a).max(1e-9);
            println!(
                "| b: ≥ 0.9 × a | {raw:.2} × a (as ratios to each run's echo: {normalized:.2}) | {} |",
                met(raw >= 0.9)
            );
        }
        if let Some(ready) = b["notes"]["ready_ms"].as_str().and_then(|r| r.parse::<f64>().ok()) {
            println!(
                "| b: ready within 2 s of start | {ready:.0} ms to the `listening` line | {} |",
                met(ready <= 2000.0)
            );
        }
        if let Some(per) = num(b, &["server", "anon_bytes_per_session"]) {
            let (rss, anon, file) = (
                num(b, &["server", "rss_kib"]).unwrap_or(0.0),
                num(b, &["server", "anon_kib"]).unwrap_or(0.0),
                num(b, &["server", "file_kib"]).unwrap_or(0.0),
            );
            let delta = a.and_then(|a| {
                let anon_a = num(a, &["server", "anon_kib"])?;
                let added = num(b, &["sessions"])? - num(a, &["sessions"])?;
                (added > 0.0).then(|| (anon - anon_a) * 1024.0 / added)
            });
            let delta = delta.map_or(String::new(), |d| format!("; {d:.1} bytes per session added over a"));
            let disk = b["notes"]["creds_db_bytes"]
                .as_str()
                .and_then(|d| d.parse::<f64>().ok())
                .zip(num(b, &["sessions"]))
                .map_or(String::new(), |(bytes, n)| {
                    format!("; `op_creds.db` {:.0} MB = {:.0} bytes per session", bytes / 1e6, bytes / n)
                });
            println!(
                "| b: resident memory per session reported | its own memory (RssAnon) {} KiB = {per:.1} bytes per session{delta}; VmRSS {} KiB with {} KiB of mapped file pages (the OS page cache){disk} | **reported** |",
                grouped(anon),
                grouped(rss),
                grouped(file)
            );
        }
    }
    if let Some(c) = runs.get("c") {
        let p99 = num(c, &["result", "latency_us", "p99"]).unwrap_or(f64::MAX);
        println!("| c: token-check p99 ≤ 2 ms | {} | {} |", show_us(p99), met(p99 <= 2000.0));
        if let Some(a) = a {
            let r = figure(c) / figure(a).max(1e-9);
            let normalized = ratio(c) / ratio(a).max(1e-9);
            println!(
                "| c: ≥ 0.6 × a | {r:.2} × a (as ratios to each run's echo: {normalized:.2}) | {} |",
                met(r >= 0.6)
            );
        }
        let storm = &c["result"]["storm"];
        let sent = num(storm, &["sent"]).unwrap_or(0.0);
        let unanswered = num(storm, &["unanswered"]).unwrap_or(sent);
        let max = num(storm, &["latency_us", "max"]).unwrap_or(f64::MAX);
        println!(
            "| c: every login answered within 5 s | {} sent, {} unanswered, slowest {} ({}) | {} |",
            grouped(sent),
            grouped(unanswered),
            show_us(max),
            replies_text(&storm["replies"]),
            met(unanswered == 0.0 && max <= 5_000_000.0 && sent > 0.0)
        );
    }
    if let Some(d) = runs.get("d") {
        let r = figure(d);
        println!("| d: ≥ 10,000 renewals/s | {}/s | {} |", grouped(r), met(r >= 10_000.0));
    }
    if let Some(e) = runs.get("e") {
        println!("| e: ≥ 0.8 × oneshot | {:.4} × oneshot | {} |", ratio(e), met(ratio(e) >= 0.8));
    }
    for (std_label, mio_label) in [("f-a", "a"), ("f-e", "e")] {
        if let Some(f) = runs.get(std_label) {
            let versus = runs
                .get(mio_label)
                .map(|m| format!("; {:.2} × mio's {mio_label}", figure(f) / figure(m).max(1e-9)))
                .unwrap_or_default();
            println!(
                "| {std_label}: std runtime on {mio_label} (for comparison) | {:.4} × baseline{versus} | **reported** |",
                ratio(f)
            );
        }
    }
    Ok(())
}

fn replies_text(replies: &Value) -> String {
    match replies.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k} {}", grouped(v.as_f64().unwrap_or(0.0))))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "no replies".to_owned(),
    }
}
