//! The load generator against a real server (the threaded runtime, in this
//! process, on sessions the tool seeded itself): it must report a non-zero
//! throughput of authorized token checks and rejected legacy logins, and
//! end its output with one valid JSON line.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use serde_json::Value;
use tokenizer_auth_effects::password::Cost;
use tokenizer_auth_effects::settings::Settings;
use tokenizer_auth_runtime_std::server::{Bound, Stop, serve_with};

const BIN: &str = env!("CARGO_BIN_EXE_tokenizer-auth-bench");

fn bench(args: &[&str]) -> Value {
    let out = Command::new(BIN).args(args).output().expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {last:?}\n{stdout}"))
}

fn seed(dir: &Path, tokens: &Path) {
    let out = Command::new(BIN)
        .args(["seed", "--sessions", "2000", "--batch", "500", "--data-dir"])
        .arg(dir)
        .arg("--tokens")
        .arg(tokens)
        .output()
        .expect("seed runs");
    assert!(out.status.success(), "seed failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(tokens).unwrap();
    assert_eq!(text.lines().count(), 2000);
}

#[test]
fn reports_throughput_and_a_json_line_against_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let tokens = tmp.path().join("tokens");
    seed(&dir, &tokens);

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut settings = Settings::new(dir);
    settings.cost = Cost::TEST_ONLY;
    settings.listen = any;
    settings.legacy_passcode_listen = any;
    settings.legacy_login_listen = any;
    let stop = Stop::new();
    let (tx, rx) = mpsc::channel::<Bound>();
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || serve_with(settings, move |bound| tx.send(bound).unwrap(), stop))
    };
    let bound = rx.recv().expect("the server started");

    let native = bound.native.to_string();
    let tokens = tokens.to_str().unwrap();
    let common = ["--duration", "1s", "--warmup", "0", "-c", "4"];
    let mut args = vec!["run", "--label", "smoke", "--addr", &native, "--tokens", tokens, "-d", "4"];
    args.extend(common);
    let v = bench(&args);
    assert_eq!(v["tool"], "tokenizer-auth-bench");
    assert_eq!(v["label"], "smoke");
    assert_eq!(v["mode"], "native");
    assert!(v["result"]["throughput"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["result"]["replies"]["authorized"].as_u64().unwrap() > 0, "{v}");
    assert!(v["result"]["replies"].get("unauthorized").is_none(), "every seeded session is valid: {v}");
    assert!(v["result"]["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["baseline"]["kind"], "echo");
    assert!(v["baseline"]["throughput"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["ratio"].as_f64().unwrap() > 0.0, "{v}");

    let legacy = bound.legacy_login.to_string();
    let mut args = vec!["run", "--label", "smoke-legacy", "--mode", "legacy", "--addr", &legacy];
    args.extend(common);
    let v = bench(&args);
    assert_eq!(v["mode"], "legacy");
    assert!(v["result"]["throughput"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["result"]["replies"]["false"].as_u64().unwrap() > 0, "rejected logins are False: {v}");
    assert_eq!(v["baseline"]["kind"], "oneshot");

    stop.stop();
    server.join().unwrap().expect("the server stopped cleanly");
}
