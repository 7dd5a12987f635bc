//! The operator's documents hold up: every `tokenizer-auth` command they
//! show parses, the systemd unit passes `systemd-analyze verify`, the
//! example configuration loads, and the container recipe's configuration
//! serves. (The backup and restore of docs/OPERATIONS.md run in
//! `backup.rs`; the migration of docs/MIGRATION.md in `migration.rs`.)

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Parser;
use clap::error::ErrorKind;
use support::*;
use tokenizer_auth::Cli;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The argument lists of the binary's runs in a shell line: each stage of
/// a pipeline or list that runs `tokenizer-auth` (by any path, as a user of
/// the service, in its container) or `cargo run ... --`, up to a
/// redirection or a comment; variable assignments before it skipped.
fn commands_of(line: &str) -> Vec<Vec<String>> {
    let words = shell_words(line.trim().trim_start_matches('#').trim().trim_start_matches("ExecStart="));
    let words: Vec<String> = words.into_iter().take_while(|w| !w.starts_with('#')).collect();
    let mut found = Vec::new();
    for stage in words.split(|w| ["|", "&&", "||", ";"].contains(&w.as_str())) {
        let mut stage: Vec<&str> = stage.iter().map(String::as_str).collect();
        if let Some(end) = stage.iter().position(|w| w.starts_with('>') || w.starts_with('<') || *w == "\\") {
            stage.truncate(end);
        }
        let mut rest = &stage[..];
        while rest.first().is_some_and(|w| w.contains('=') && !w.starts_with('-')) {
            rest = &rest[1..];
        }
        for prefix in [&["sudo", "-u", "tokenizer-auth"][..], &["docker", "exec", "-i", "tokenizer-auth"]] {
            if rest.starts_with(prefix) {
                rest = &rest[prefix.len()..];
            }
        }
        let args = match rest {
            [program, args @ ..] if *program == "tokenizer-auth" || program.ends_with("/tokenizer-auth") => args,
            ["cargo", "run", ..] => {
                let dash = rest.iter().position(|w| *w == "--").unwrap_or(rest.len());
                let other = rest[..dash]
                    .windows(2)
                    .any(|pair| ["--bin", "-p", "--package"].contains(&pair[0]) && pair[1] != "tokenizer-auth");
                if other || dash == rest.len() {
                    continue;
                }
                &rest[dash + 1..]
            }
            _ => continue,
        };
        found.push(args.iter().map(|w| (*w).to_owned()).collect());
    }
    found
}

/// Words as a shell splits them, near enough for the docs: quotes,
/// `$(...)` and `<placeholders>` keep their spaces (as written).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quote, mut depth) = (None, 0);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\'' | '"', None) if depth == 0 => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('$', None) if chars.peek() == Some(&'(') => {
                depth += 1;
                word.push(c);
            }
            ('<', None) if chars.peek().is_some_and(|c| c.is_alphabetic()) => {
                depth += 1;
                word.push(c);
            }
            (')' | '>', None) if depth > 0 => {
                depth -= 1;
                word.push(c);
            }
            (c, None) if c.is_whitespace() && depth == 0 => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (c, _) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn every_command_in_the_docs_parses() {
    let mut sources: Vec<String> =
        ["README.md", "deploy/tokenizer-auth.service", "deploy/Containerfile"].into_iter().map(str::to_owned).collect();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            sources.push(format!("docs/{name}"));
        }
    }
    let mut checked = 0;
    for source in &sources {
        let text = read(source);
        let markdown = source.ends_with(".md");
        // (in a fenced block, whether it is shell)
        let (mut fenced, mut in_shell) = (false, !markdown);
        for line in text.lines() {
            if markdown && line.starts_with("```") {
                fenced = !fenced;
                in_shell = fenced && matches!(line.trim(), "```" | "```sh" | "```bash" | "```console");
                continue;
            }
            // In the deploy files: the commands their comments indent, and
            // what systemd runs.
            let shown = in_shell
                && if markdown {
                    !line.trim_start().starts_with('#')
                } else {
                    line.starts_with("#   ") || line.starts_with("ExecStart=")
                };
            if !shown {
                continue;
            }
            for args in commands_of(line.trim_start_matches("$ ")) {
                let argv = std::iter::once("tokenizer-auth".to_owned()).chain(args);
                match Cli::try_parse_from(argv) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {}
                    Err(e) => panic!("{source}: `{}` does not parse:\n{e}", line.trim()),
                }
                checked += 1;
            }
        }
    }
    // The documents show over thirty commands: finding fewer means this test
    // stopped reading them.
    assert!(checked >= 30, "only {checked} commands found in {sources:?}");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/tokenizer-auth.service");
    for setting in [
        "User=tokenizer-auth",
        "StateDirectory=tokenizer-auth",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(setting), "the unit has no {setting:?}");
    }
    // The unit as installed, with the binary where it names it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer-auth.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tokenizer-auth", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it when missing)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_example_configuration_loads() {
    let out = Command::new(BIN)
        .args(["--config", root().join("deploy/config.toml").to_str().unwrap(), "config", "show"])
        // Set apart, as deploy/tokenizer-auth.service has it.
        .env("TOKENIZER_AUTH_SMTP_PASSWORD", "from secrets.env")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    for line in [
        "listen = \"0.0.0.0:7160\"",
        "tls_key = \"/etc/ssl/private/auth.example.com.key\"",
        "admin_listen = \"127.0.0.1:7161\"",
    ] {
        assert!(shown.lines().any(|l| l == line), "no {line} in\n{shown}");
    }
    assert!(!shown.contains("from secrets.env"), "config show never shows the SMTP password");

    // Without the service's secrets, the admin commands run all the same
    // (they send no mail); only what would mail refuses.
    let data = tempfile::tempdir().unwrap();
    let without = |args: &[&str]| {
        Command::new(BIN)
            .args(["--config", root().join("deploy/config.toml").to_str().unwrap()])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("TOKENIZER_AUTH_SMTP_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let listed = without(&["user", "list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let shown = without(&["config", "show"]);
    assert_eq!(shown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&shown.stderr).contains("smtp_username is set but smtp_password is not"));
}

/// The `ENV` of the container recipe, as (name, value).
fn container_env(recipe: &str) -> Vec<(String, String)> {
    let joined = recipe.replace("\\\n", " ");
    let line = joined.lines().find(|l| l.starts_with("ENV ")).expect("an ENV line");
    line["ENV ".len()..]
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_container_recipe_serves_tls_with_its_configuration() {
    let recipe = read("deploy/Containerfile");
    assert!(recipe.contains("ENTRYPOINT [\"/usr/local/bin/tokenizer-auth\"]") && recipe.contains("CMD [\"serve\"]"));
    let env = container_env(&recipe);
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(value("TOKENIZER_AUTH_LISTEN"), Some("0.0.0.0:7160"));
    assert_eq!(value("TOKENIZER_AUTH_TLS_CERT"), Some("/run/tls/cert.pem"));
    assert_eq!(value("TOKENIZER_AUTH_TLS_KEY"), Some("/run/tls/key.pem"));
    assert_eq!(value("TOKENIZER_AUTH_DATA_DIR"), Some("/var/lib/tokenizer-auth"));

    // The mounts: a data folder, and a certificate and key.
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(tls.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(tls.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let data = tmp.path().join("data");

    // Without the certificate mounted where the recipe names it, nothing
    // binds: exit 2, naming the file.
    let mut without = Command::new(BIN);
    without.arg("serve").envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    without.env("TOKENIZER_AUTH_DATA_DIR", &data);
    let out = without.stdin(Stdio::null()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("/run/tls/cert.pem"), "{said}");

    // With it, the recipe's configuration serves, on loopback here (tests
    // listen on 127.0.0.1 only; in the container it is every address).
    let mut with = Command::new(BIN);
    with.arg("serve").envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    with.env("TOKENIZER_AUTH_DATA_DIR", &data)
        .env("TOKENIZER_AUTH_TLS_CERT", tls.join("cert.pem"))
        .env("TOKENIZER_AUTH_TLS_KEY", tls.join("key.pem"))
        .env("TOKENIZER_AUTH_LISTEN", "127.0.0.1:0")
        .env("TOKENIZER_AUTH_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"]);
    let mut child = with.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let listening = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            break None;
        }
        if line.contains("\"listening\"") {
            break Some(line);
        }
        lines.push(line);
    };
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let listening = listening.unwrap_or_else(|| panic!("the server did not start: {lines:?}"));
    assert!(listening.starts_with('{'), "the recipe's JSON log format");
    assert!(lines.iter().any(|l| l.contains("\"tls\":true")), "TLS on: {lines:?}");
}
