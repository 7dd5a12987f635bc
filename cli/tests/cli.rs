//! The command line through the real binary: configuration layers and their
//! errors, `config show`, `serve`'s exit codes, and `client` against a
//! scripted TCP server (exact bytes) and against the real runtimes.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokenizer_auth_engine::LOGIN_PREFIX;

const BIN: &str = env!("CARGO_BIN_EXE_tokenizer-auth");
const MAC: &str = "aa:bb:cc:dd:ee:ff";
const EMAIL: &str = "ada@example.com";
const PHONE: &str = "555-0100";
const PASSWORD: &str = "correct horse";

/// The binary with no `TOKENIZER_AUTH_*` variable inherited from the
/// environment the tests run in.
fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOKENIZER_AUTH_") {
            command.env_remove(name);
        }
    }
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn run<S: AsRef<OsStr> + Debug>(args: &[S], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = command(args).envs(env.iter().copied()).spawn().unwrap();
    // A command that fails early may not read its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn stdout_of<S: AsRef<OsStr> + Debug>(args: &[S], env: &[(&str, &str)], stdin: &str) -> String {
    let out = run(args, env, stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and expects exit `code` with a one-line reason that says `says`;
/// returns stderr.
fn fails<S: AsRef<OsStr> + Debug>(args: &[S], env: &[(&str, &str)], stdin: &str, code: i32, says: &str) -> String {
    let out = run(args, env, stdin);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    // clap words its own usage errors; every other reason is one line.
    let reason =
        if stderr.starts_with("error: ") { stderr.as_str() } else { stderr.lines().last().unwrap_or_default() };
    assert!(
        stderr.starts_with("error: ") || reason.starts_with("tokenizer-auth: "),
        "{args:?}: no one-line reason in {stderr:?}"
    );
    assert!(reason.contains(says), "{args:?}: {reason:?} does not say {says:?}");
    stderr
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("tokenizer-auth.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The value `config show` prints for `key`.
fn shown(show: &str, key: &str) -> String {
    let prefix = format!("{key} = ");
    show.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key} in {show}")).to_owned()
}

#[test]
fn configuration_layers_file_then_environment_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        r#"
        # Each key here is overridden by a later layer, or not.
        data_dir = "from-file"
        listen = "127.0.0.1:1001"
        token_ttl = "1m"
        passcode_ttl = "5m"
        session_max_age = 0
        smtp_host = "smtp.example.com"
        smtp_username = "auth"
        smtp_password = "file-secret"
        "#,
    );
    let show = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--config", &config, "config", "show"];
        args.extend_from_slice(flags);
        stdout_of(&args, env, "")
    };

    let file_only = show(&[], &[]);
    assert_eq!(shown(&file_only, "data_dir"), "\"from-file\"");
    assert_eq!(shown(&file_only, "listen"), "\"127.0.0.1:1001\"");
    assert_eq!(shown(&file_only, "token_ttl"), "\"1m\"");
    assert_eq!(shown(&file_only, "session_max_age"), "\"0s\"");
    assert_eq!(shown(&file_only, "idle_timeout"), "\"1m\"", "a default");
    assert!(file_only.contains("\n# smtp_port is not set"), "{file_only}");

    let env = [
        ("TOKENIZER_AUTH_TOKEN_TTL", "2s"),
        ("TOKENIZER_AUTH_LISTEN", "127.0.0.1:1002"),
        ("TOKENIZER_AUTH_DATA_DIR", "from-env"),
        ("TOKENIZER_AUTH_SMTP_PASSWORD", "env-secret"),
    ];
    let with_env = show(&env, &[]);
    assert_eq!(shown(&with_env, "token_ttl"), "\"2s\"");
    assert_eq!(shown(&with_env, "listen"), "\"127.0.0.1:1002\"");
    assert_eq!(shown(&with_env, "data_dir"), "\"from-env\"");
    assert_eq!(shown(&with_env, "passcode_ttl"), "\"5m\"", "the file still counts");

    let with_flags = show(&env, &["--listen", "127.0.0.1:1003", "--data-dir", "from-flag", "--runtime", "std"]);
    assert_eq!(shown(&with_flags, "listen"), "\"127.0.0.1:1003\"");
    assert_eq!(shown(&with_flags, "data_dir"), "\"from-flag\"");
    assert_eq!(shown(&with_flags, "runtime"), "\"std\"");
    assert_eq!(shown(&with_flags, "token_ttl"), "\"2s\"", "the environment still counts");

    for text in [&file_only, &with_env, &with_flags] {
        assert!(!text.contains("secret"), "the SMTP password is never shown: {text}");
        assert!(text.contains("# smtp_password is set (not shown)"), "{text}");
    }
}

#[test]
fn admin_commands_take_the_data_folder_from_the_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("configured");
    let config = write_config(tmp.path(), &format!("data_dir = {:?}\n", data.to_str().unwrap()));
    let added = stdout_of(&["--config", &config, "user", "add", EMAIL, "--password-stdin"], &[], "pw-long-enough\n");
    assert_eq!(added, format!("added {EMAIL}\n"));
    assert!(data.join("op_creds.db").exists());
    // The variable naming the file works like --config.
    let listed = stdout_of(&["user", "list"], &[("TOKENIZER_AUTH_CONFIG", &config)], "");
    assert!(listed.starts_with(EMAIL), "{listed}");
}

#[test]
fn bad_durations_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for garbage in ["5", "5 minutes", "1.5h", "-3m", "3M", "1h30m", "soon", "99999999999d"] {
        let config = write_config(tmp.path(), &format!("passcode_ttl = {garbage:?}\n"));
        fails(&["--config", &config, "config", "show"], &[], "", 2, "invalid passcode_ttl in ");
        fails(
            &["--data-dir", dir, "config", "show"],
            &[("TOKENIZER_AUTH_TOKEN_TTL", garbage)],
            "",
            2,
            "invalid token_ttl (environment variable TOKENIZER_AUTH_TOKEN_TTL)",
        );
    }
    // serve refuses before it starts anything.
    let stderr = fails(
        &["--data-dir", dir, "serve", "--listen", "127.0.0.1:0"],
        &[("TOKENIZER_AUTH_IDLE_TIMEOUT", "60")],
        "",
        2,
        "invalid idle_timeout (environment variable TOKENIZER_AUTH_IDLE_TIMEOUT): \"60\" has no unit",
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    fails(&["serve", "--listen", "localhost"], &[], "", 2, "invalid listen (flag --listen)");
    fails(&["serve", "--runtime", "tokio"], &[], "", 2, "invalid value 'tokio'");
}

#[test]
fn unknown_keys_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "token_ttl = \"1h\"\ntoken_tll = \"2h\"\n");
    for command in [&["config", "show"][..], &["serve"], &["user", "list"]] {
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(command);
        fails(&args, &[], "", 2, "unknown key `token_tll` in ");
    }
    fails(&["--config", &config, "serve"], &[], "", 2, "(did you mean `token_ttl`?)");
    let config = write_config(tmp.path(), "[smtp]\nhost = \"smtp.example.com\"\n");
    fails(&["--config", &config, "serve"], &[], "", 2, "unknown key `smtp`");
    let config = write_config(tmp.path(), "token_ttl = \"1h\n");
    fails(&["--config", &config, "serve"], &[], "", 2, "invalid TOML at line 1");
    let missing = tmp.path().join("missing.toml");
    fails(&["--config", missing.to_str().unwrap(), "serve"], &[], "", 2, "cannot read the configuration file");

    // An unknown variable is only a warning (the environment is shared).
    let out = run(&["config", "show"], &[("TOKENIZER_AUTH_TOKEN_TLL", "2s")], "");
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("ignoring the environment variable TOKENIZER_AUTH_TOKEN_TLL"), "{stderr}");
}

#[test]
fn serve_exits_1_with_a_reason_and_logs_json_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    for runtime in ["mio", "std"] {
        let mut child = command(&["--data-dir", tmp.path().to_str().unwrap(), "serve", "--runtime", runtime])
            .args([
                "--listen",
                &port,
                "--legacy-passcode-listen",
                "127.0.0.1:0",
                "--legacy-login-listen",
                "127.0.0.1:0",
            ])
            .env("TOKENIZER_AUTH_LOG_FORMAT", "json")
            .spawn()
            .unwrap();
        let status = wait_at_most(&mut child, Duration::from_secs(30));
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(status, Some(1), "{stderr}");
        let first = stderr.lines().next().unwrap();
        assert!(first.starts_with('{') && first.contains("\"message\":\"starting\""), "{stderr}");
        assert!(stderr.lines().rev().skip(1).all(|l| l.starts_with('{')), "every log line is JSON: {stderr}");
        let reason = stderr.lines().last().unwrap();
        assert!(reason.starts_with(&format!("tokenizer-auth: cannot listen on {port}")), "{stderr}");
    }
}

fn wait_at_most(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("still running after {limit:?}");
}

/// A scripted server: takes one connection, and for each `(line, reply)`
/// reads one line, keeps its exact bytes, and answers `reply`. Returns the
/// lines it read.
fn scripted(replies: &[&str]) -> (String, JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let replies: Vec<String> = replies.iter().map(|r| (*r).to_owned()).collect();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut seen = Vec::new();
        for reply in replies {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            seen.push(line);
            writer.write_all(format!("{reply}\n").as_bytes()).unwrap();
        }
        // Anything more would be a request too many.
        let mut rest = Vec::new();
        reader.read_until(b'\n', &mut rest).unwrap();
        if !rest.is_empty() {
            seen.push(rest);
        }
        seen
    });
    (addr, handle)
}

fn lines(seen: Vec<Vec<u8>>) -> Vec<String> {
    seen.into_iter().map(|l| String::from_utf8(l).unwrap()).collect()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn client_speaks_the_native_protocol_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let token_a = "0123456789abcdef".repeat(4);
    let token_b = "fedcba9876543210".repeat(4);
    let token_file = tmp.path().join("client-token");

    // Passcode request: the password from standard input, never argv.
    let (addr, server) = scripted(&["Passcode is sent"]);
    let args = ["--data-dir", dir, "client", "--addr", &addr, "passcode", "--mac", MAC, "--email", EMAIL];
    let out = stdout_of(&[&args[..], &["--phone", PHONE, "--password-stdin"]].concat(), &[], "correct horse\n");
    assert_eq!(out, "Passcode is sent\n");
    assert_eq!(lines(server.join().unwrap()), [format!("require_passcode|{MAC}|{PASSWORD}|{PHONE}|{EMAIL}\n")]);

    // Login: the token goes to <data_dir>/client-token, private, with the
    // MAC it is bound to, and is not printed.
    let (addr, server) = scripted(&[&format!("{LOGIN_PREFIX}{token_a}")]);
    let out = stdout_of(
        &["--data-dir", dir, "client", "--addr", &addr, "login", "--mac", MAC, "--email", EMAIL]
            .into_iter()
            .chain(["--phone", PHONE, "--passcode", "K7QX2M", "--password-stdin"])
            .collect::<Vec<_>>(),
        &[],
        "correct horse\n",
    );
    assert_eq!(out, "logged in\n");
    assert_eq!(lines(server.join().unwrap()), [format!("{MAC}|{EMAIL}|{PHONE}|{PASSWORD}|K7QX2M\n")]);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), format!("{token_a} {MAC}\n"));
    #[cfg(unix)]
    assert_eq!(mode(&token_file), 0o600);

    // Request, with the MAC stored with the token: renew once, store the
    // new token, retry once on the same connection with it.
    let (addr, server) = scripted(&[&format!("renew|{token_b}"), "authorized"]);
    let out = run(&["--data-dir", dir, "client", "--addr", &addr, "request", "status", "a|b", "--c"], &[], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "authorized\n");
    assert!(stderr.contains("renewed"), "{stderr}");
    assert!(!stderr.contains(&token_b) && !stderr.contains(&token_a), "no token in the output: {stderr}");
    assert_eq!(
        lines(server.join().unwrap()),
        [format!("{token_a}|{MAC}|status|a|b|--c\n"), format!("{token_b}|{MAC}|status|a|b|--c\n")]
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), format!("{token_b} {MAC}\n"));
    #[cfg(unix)]
    assert_eq!(mode(&token_file), 0o600);

    // A token file of an older client holds no MAC: --mac is needed.
    std::fs::write(&token_file, format!("{token_a}\n")).unwrap();
    let out = run(&["--data-dir", dir, "client", "--addr", "127.0.0.1:9", "request", "ping"], &[], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --mac"));

    // Pipelined: the copies answered `renew|` (all with the one successor)
    // are retried with it, once, and every reply is printed in order.
    let renew = format!("renew|{token_b}");
    let (addr, server) = scripted(&[&renew, "authorized", &renew, "authorized", "authorized"]);
    let args = ["--data-dir", dir, "client", "--addr", &addr, "request", "--mac", MAC, "--repeat", "3", "ping"];
    let out = run(&args, &[], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "authorized\n".repeat(3));
    let (a, b) = (format!("{token_a}|{MAC}|ping\n"), format!("{token_b}|{MAC}|ping\n"));
    assert_eq!(lines(server.join().unwrap()), [a.clone(), a.clone(), a, b.clone(), b]);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), format!("{token_b} {MAC}\n"));

    // No DATA: just TOKEN|MAC|REQUEST.
    let (addr, server) = scripted(&["authorized"]);
    let custom = tmp.path().join("elsewhere").join("token");
    std::fs::create_dir_all(custom.parent().unwrap()).unwrap();
    std::fs::write(&custom, format!("{token_a}\n")).unwrap();
    let custom = custom.to_str().unwrap();
    let args = ["client", "--addr", &addr, "request", "--mac", MAC, "--token-file", custom, "ping"];
    assert_eq!(stdout_of(&args, &[], ""), "authorized\n");
    assert_eq!(lines(server.join().unwrap()), [format!("{token_a}|{MAC}|ping\n")]);
}

#[test]
fn client_refusals_exit_1_with_the_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let passcode = |addr: &str| -> Vec<String> {
        ["--data-dir", dir, "client", "--addr", addr, "passcode", "--mac", MAC, "--email", EMAIL, "--password-stdin"]
            .map(str::to_owned)
            .to_vec()
    };
    for reply in ["False", "error|rate_limited", "error|mail_unavailable"] {
        let (addr, server) = scripted(&[reply]);
        let args = passcode(&addr);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = fails(&args, &[], &format!("{PASSWORD}\n"), 1, &format!("server replied {reply}"));
        assert!(!stderr.contains(PASSWORD), "{stderr}");
        server.join().unwrap();
    }

    let (addr, server) = scripted(&["False"]);
    let args = ["--data-dir", dir, "client", "--addr", &addr, "login", "--mac", MAC, "--email", EMAIL];
    let args = [&args[..], &["--passcode", "AAAAAA", "--password-stdin"]].concat();
    fails(&args, &[], "pw-long-enough\n", 1, "server replied False");
    server.join().unwrap();
    assert!(!tmp.path().join("client-token").exists());

    std::fs::write(tmp.path().join("client-token"), "ab".repeat(32)).unwrap();
    let (addr, server) = scripted(&["unauthorized"]);
    let args = ["--data-dir", dir, "client", "--addr", &addr, "request", "--mac", MAC, "get"];
    fails(&args, &[], "", 1, "server replied unauthorized");
    server.join().unwrap();

    // Usage errors exit 2 and send nothing.
    let base = ["--data-dir", dir, "client", "--addr", "127.0.0.1:9", "passcode", "--email", EMAIL];
    fails(&[&base[..], &["--mac", "nope", "--password-stdin"]].concat(), &[], "pw-long-enough\n", 2, "invalid MAC");
    fails(&[&base[..], &["--mac", MAC, "--password", "pw"]].concat(), &[], "", 2, "unexpected argument");
    fails(&[&base[..], &["--mac", MAC]].concat(), &[], "", 2, "--password-stdin");
    fails(&[&base[..], &["--mac", MAC, "--password-stdin"]].concat(), &[], "a|b\n", 2, "cannot hold |");
    fails(
        &[&base[..], &["--mac", MAC, "--phone", "1|2", "--password-stdin"]].concat(),
        &[],
        "pw-long-enough\n",
        2,
        "phone",
    );

    // No server, or no token: exit 1 with the reason.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let args = ["--data-dir", dir, "client", "--addr", &closed, "request", "--mac", MAC, "get"];
    fails(&args, &[], "", 1, &format!("cannot connect to {closed}"));
    std::fs::remove_file(tmp.path().join("client-token")).unwrap();
    fails(&args, &[], "", 1, "log in first");
}

/// A real server started through the binary, killed when dropped.
struct Server {
    child: Child,
    native: SocketAddr,
}

impl Server {
    /// Starts `serve --runtime <runtime>` on free ports.
    fn start(runtime: &str, dir: &Path, env: &[(&str, &str)]) -> Server {
        let dir = dir.to_str().unwrap();
        let child = command(&["--data-dir", dir, "serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
            .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        // Killed on drop from here on, whatever fails below.
        let mut server = Server { child, native: SocketAddr::from(([0, 0, 0, 0], 0)) };
        let mut stderr = BufReader::new(server.child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "the server exited before listening: {seen}");
            seen.push_str(&line);
            if let Some(at) = line.find(" native=") {
                server.native = line[at + 8..].split_whitespace().next().unwrap().parse().unwrap();
                thread::spawn(move || for _ in stderr.lines() {});
                return server;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The passcode in the newest message of the outbox.
fn newest_passcode(outbox: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    let text = std::fs::read_to_string(files.last().expect("a message in the outbox")).unwrap();
    tokenizer_auth_engine::mail::find_passcode(&text).expect("a passcode in the message").to_owned()
}

/// The README's walkthrough, command by command, against a real runtime.
fn walkthrough(runtime: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    // A lifetime with room for a slow machine between the login and the
    // first request; the wait for its end counts from the login's reply.
    let env = [("TOKENIZER_AUTH_TOKEN_TTL", "3s"), ("TOKENIZER_AUTH_RENEW_GRACE", "2s")];
    let server = Server::start(runtime, tmp.path(), &env);
    let addr = server.native.to_string();
    let client = |args: &[&str]| -> Vec<String> {
        ["--data-dir", dir, "client", "--addr", &addr].iter().chain(args).map(|a| (*a).to_owned()).collect()
    };
    let who = ["--mac", MAC, "--email", EMAIL, "--phone", PHONE, "--password-stdin"];

    stdout_of(
        &["--data-dir", dir, "user", "add", EMAIL, "--phone", PHONE, "--password-stdin"],
        &[],
        "pw-long-enough\n",
    );
    fails(&client(&[&["passcode"][..], &who].concat()), &[], "wrong\n", 1, "server replied False");
    assert_eq!(stdout_of(&client(&[&["passcode"][..], &who].concat()), &[], "pw-long-enough\n"), "Passcode is sent\n");
    let passcode = newest_passcode(&tmp.path().join("outbox"));
    let login = client(&[&["login", "--passcode", &passcode][..], &who].concat());
    assert_eq!(stdout_of(&login, &[], "pw-long-enough\n"), "logged in\n");
    let logged_in = Instant::now();
    let token = std::fs::read_to_string(tmp.path().join("client-token")).unwrap();
    let request = client(&["request", "--mac", MAC, "status"]);
    assert_eq!(stdout_of(&request, &[], ""), "authorized\n");

    // The token was stored before the reply left: it has expired by then.
    // Three copies pipelined: one renewal for all, one retry each.
    thread::sleep((logged_in + Duration::from_millis(3500)).saturating_duration_since(Instant::now()));
    let out = run(&client(&["request", "--mac", MAC, "--repeat", "3", "status"]), &[], "");
    let renewed = Instant::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "authorized\n".repeat(3));
    assert_eq!(stderr.matches("renewed").count(), 1, "{stderr}");
    let new_token = std::fs::read_to_string(tmp.path().join("client-token")).unwrap();
    assert_ne!(new_token, token);
    assert_eq!(stdout_of(&request, &[], ""), "authorized\n");

    // After the grace, the old token is reuse: the session is revoked.
    std::fs::write(tmp.path().join("old-token"), &token).unwrap();
    let old = tmp.path().join("old-token");
    let stale = client(&["request", "--mac", MAC, "--token-file", old.to_str().unwrap(), "status"]);
    thread::sleep((renewed + Duration::from_millis(2500)).saturating_duration_since(Instant::now()));
    fails(&stale, &[], "", 1, "server replied unauthorized");
    fails(&request, &[], "", 1, "server replied unauthorized");
    drop(server);
}

#[test]
fn walkthrough_on_mio() {
    walkthrough("mio");
}

#[test]
fn walkthrough_on_std() {
    walkthrough("std");
}

#[test]
fn client_reports_a_server_that_hangs_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        drop(stream);
        line
    });
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("client-token"), "ab".repeat(32)).unwrap();
    let args = ["--data-dir", tmp.path().to_str().unwrap(), "client", "--addr", &addr, "request", "--mac", MAC, "x"];
    fails(&args, &[], "", 1, "closed the connection without a reply");
    assert!(server.join().unwrap().ends_with("|x\n"));
}

/// The SMTP test server of the workspace (aiosmtpd; `.ci/run` installs it),
/// requiring AUTH; stopped when dropped (its stdin closes).
struct Relay {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Relay {
    fn start(user: &str, password: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/smtp_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("0")
            .arg(dir.path())
            .args(["--auth", &format!("{user}:{password}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // aiosmtpd warns about AUTH without TLS, which is the point here.
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the SMTP test server");
        let mut relay = Relay { child, port: 0, dir };
        let mut line = String::new();
        BufReader::new(relay.child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        relay.port = line.trim().parse().unwrap_or_else(|_| {
            panic!("no port from the SMTP test server (is aiosmtpd installed? see .ci/run): {line:?}")
        });
        relay
    }

    fn passcode(&self) -> String {
        newest_passcode(self.dir.path())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn passcodes_go_through_the_configured_relay() {
    const RELAY_PASSWORD: &str = "relay-s3cret-pw";
    let relay = Relay::start("auth@example.com", RELAY_PASSWORD);
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            "smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_security = \"plain\"\nsmtp_username = \
             \"auth@example.com\"\nsmtp_from = \"Sign-in <auth@example.com>\"\nsmtp_timeout = \"5s\"\n",
            relay.port
        ),
    );
    let dir = tmp.path().to_str().unwrap();
    stdout_of(&["--data-dir", dir, "user", "add", EMAIL, "--password-stdin"], &[], "pw-long-enough\n");

    for runtime in ["mio", "std"] {
        let env = [("TOKENIZER_AUTH_CONFIG", config.as_str()), ("TOKENIZER_AUTH_SMTP_PASSWORD", RELAY_PASSWORD)];
        let server = {
            let child = command(&["--data-dir", dir, "serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
                .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
                .envs(env)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut server = Server { child, native: SocketAddr::from(([0, 0, 0, 0], 0)) };
            let mut stderr = BufReader::new(server.child.stderr.take().unwrap());
            let mut log = String::new();
            while !log.contains(" native=") {
                assert!(stderr.read_line(&mut log).unwrap() > 0, "the server exited: {log}");
            }
            let at = log.find(" native=").unwrap();
            server.native = log[at + 8..].split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                log.contains(&format!("mail=relay 127.0.0.1:{} (plain, as auth@example.com)", relay.port)),
                "{log}"
            );
            assert!(log.contains("unencrypted"), "a warning about plain SMTP with a password: {log}");
            assert!(!log.contains(RELAY_PASSWORD), "{log}");
            let handle = thread::spawn(move || {
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
                rest
            });
            (server, handle)
        };
        let (server, log) = server;
        let addr = server.native.to_string();
        let who = ["--mac", MAC, "--email", EMAIL, "--password-stdin"];
        let passcode = [&["--data-dir", dir, "client", "--addr", &addr, "passcode"][..], &who].concat();
        assert_eq!(stdout_of(&passcode, &[], "pw-long-enough\n"), "Passcode is sent\n");
        let code = relay.passcode();
        let login = [&["--data-dir", dir, "client", "--addr", &addr, "login", "--passcode", &code][..], &who].concat();
        assert_eq!(stdout_of(&login, &[], "pw-long-enough\n"), "logged in\n");
        drop(server);
        let log = log.join().unwrap();
        assert!(!log.contains(RELAY_PASSWORD) && !log.contains(&code), "{log}");
    }
}
