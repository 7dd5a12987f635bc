//! Secrets at rest (docs/SECURITY.md): after a full flow through the real
//! binary, on both runtimes, every file in the data folder that holds a
//! secret is private, and a copy of the database files without the server
//! key reveals no live passcode.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use support::*;
use tokenizer_auth_engine::{ServerKey, StoredPasscode};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Another device, whose passcode is requested and left unused: live.
const OTHER_MAC: &str = "11:22:33:44:55:66";

fn run_client(server: &Server, args: &[&str], stdin: &str) -> String {
    let addr = server.native.to_string();
    let out = run_on(&server.dir, &[&["client", "--addr", &addr][..], args].concat(), stdin);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every unkeyed SHA-256 digest of `code` that could be made with `salt`
/// (as bytes or as its hex text, before or after the code) or without one.
fn unkeyed_digests(code: &str, salt_hex: &str) -> Vec<[u8; 32]> {
    let salt: Vec<u8> =
        (0..salt_hex.len()).step_by(2).map(|i| u8::from_str_radix(&salt_hex[i..i + 2], 16).unwrap()).collect();
    let mut out = Vec::new();
    for code in [code.to_owned(), code.to_ascii_lowercase()] {
        for salt in [&salt[..], salt_hex.as_bytes(), b""] {
            out.push(Sha256::new().chain_update(salt).chain_update(code.as_bytes()).finalize().into());
            out.push(Sha256::new().chain_update(code.as_bytes()).chain_update(salt).finalize().into());
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn full_flow(runtime: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let capture = tmp.path().join("session.cap");
    let mut server = Server::start_with(runtime, &[], &["--capture", capture.to_str().unwrap()]);

    // A passcode for another device, never used: live in the file.
    let mut c = server.connect();
    assert_eq!(c.ask(&format!("require_passcode|{OTHER_MAC}|{PASSWORD}|{PHONE}|{EMAIL}")), "Passcode is sent");
    let live = server.outbox_passcode();

    // The whole flow with the client command: its token file is in the
    // data folder.
    let who = ["--mac", MAC, "--email", EMAIL, "--phone", PHONE, "--password-stdin"];
    let password = format!("{PASSWORD}\n");
    assert_eq!(run_client(&server, &[&["passcode"][..], &who].concat(), &password), "Passcode is sent\n");
    let code = server.outbox_passcode();
    assert_eq!(run_client(&server, &[&["login", "--passcode", &code][..], &who].concat(), &password), "logged in\n");
    assert_eq!(run_client(&server, &["request", "--mac", MAC, "status"], ""), "authorized\n");

    // A copy of the database files (main file and WAL) without the key.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    let mut copied = Vec::new();
    for name in ["op_passcodes.db", "op_passcodes.db-wal", "op_creds.db", "op_creds.db-wal"] {
        if let Ok(bytes) = std::fs::read(server.dir.join(name)) {
            std::fs::write(copy.join(name), &bytes).unwrap();
            copied.push(bytes);
        }
    }
    let row: String = rusqlite::Connection::open(copy.join("op_passcodes.db"))
        .unwrap()
        .query_row("SELECT passcode FROM passcode_table WHERE mac = ?1", [OTHER_MAC], |r| r.get(0))
        .unwrap();
    let fields: Vec<&str> = row.split('$').collect();
    assert_eq!(fields.len(), 3, "{row}");
    assert_eq!(fields[0], "hmac-sha256", "{runtime}: {row}");
    for digest in unkeyed_digests(&live, fields[1]) {
        assert_ne!(hex(&digest), fields[2], "{runtime}: an unkeyed digest of the live passcode is stored");
        for file in &copied {
            assert!(!contains(file, &digest) && !contains(file, hex(&digest).as_bytes()), "{runtime}: unkeyed digest");
        }
    }
    for file in &copied {
        assert!(!contains(file, live.as_bytes()), "{runtime}: the live passcode in plain text");
    }
    // With the key, and only with it, the row is the live passcode.
    let key = ServerKey::from_bytes(std::fs::read(server.dir.join("server.key")).unwrap().try_into().unwrap());
    let stored = StoredPasscode::from_column(&row);
    assert!(stored.matches(&key, &live), "{runtime}: the row is not the live passcode");
    assert!(!stored.matches(&ServerKey::default(), &live));
    for file in &copied {
        assert!(!contains(file, key.expose()), "{runtime}: the key is in the database files");
    }

    // While it runs, the WAL and shared-memory files exist: private too.
    #[cfg(unix)]
    for name in ["op_creds.db", "op_passcodes.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let file = server.dir.join(format!("{name}{suffix}"));
            assert_eq!(mode(&file), 0o600, "{runtime}: {} while serving", file.display());
        }
    }

    // Stopped, but its folder kept until the end of the test.
    signal(&server.child, "TERM");
    assert!(server.child.wait().unwrap().success());
    let dir = server.dir.clone();
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700, "{runtime}: data folder");
        assert_eq!(mode(&dir.join("outbox")), 0o700, "{runtime}: outbox");
        let mut files = vec![capture.clone(), dir.join("server.key"), dir.join("client-token")];
        for name in ["op_creds.db", "op_passcodes.db"] {
            for suffix in ["", "-wal", "-shm"] {
                files.push(dir.join(format!("{name}{suffix}")));
            }
        }
        for entry in std::fs::read_dir(dir.join("outbox")).unwrap() {
            files.push(entry.unwrap().path());
        }
        for file in files {
            // SQLite removes the WAL and shared-memory files at a clean
            // close; those that are left must be private.
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{runtime}: {}", file.display());
            } else {
                assert!(file.to_string_lossy().ends_with("-wal") || file.to_string_lossy().ends_with("-shm"));
            }
        }
    }
}

#[test]
fn after_a_full_flow_on_mio_the_files_are_private_and_hold_no_live_passcode() {
    full_flow("mio");
}

#[test]
fn after_a_full_flow_on_std_the_files_are_private_and_hold_no_live_passcode() {
    full_flow("std");
}

#[cfg(unix)]
#[test]
fn a_data_folder_left_open_is_tightened_with_one_log_line() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let run = |args: &[&str], stdin: &str| {
        let out = run_on(&dir, args, stdin);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let log = run(&["user", "add", EMAIL, "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(!log.contains("tightened"), "a new folder is private from the start: {log}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("op_creds.db")), 0o600);
    assert_eq!(mode(&dir.join("op_passcodes.db")), 0o600);

    // As the old server (or a careless copy) left it.
    std::fs::create_dir(dir.join("outbox")).unwrap();
    std::fs::write(dir.join("outbox/old.eml"), b"Your passcode is: ABC123").unwrap();
    for (path, open) in
        [("", 0o755), ("op_creds.db", 0o644), ("op_passcodes.db", 0o666), ("outbox", 0o755), ("outbox/old.eml", 0o644)]
    {
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(open)).unwrap();
    }
    let log = run(&["user", "list"], "");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("tightened")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    for name in
        ["op_creds.db (644 to 600)", "op_passcodes.db (666 to 600)", "outbox (755 to 700)", "old.eml (644 to 600)"]
    {
        assert!(lines[0].contains(name), "{name} in {}", lines[0]);
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("outbox")), 0o700);
    for name in ["op_creds.db", "op_passcodes.db", "outbox/old.eml"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    assert!(!run(&["user", "list"], "").contains("tightened"), "once tightened, nothing to say");
}

#[test]
fn passcodes_stored_before_the_key_are_keyed_when_the_server_starts() {
    use tokenizer_auth_effects::store::SqliteStore;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The old server's plaintext, and an unkeyed digest of an earlier
    // version (SHA-256 of salt and code).
    let conn = rusqlite::Connection::open(dir.join("op_passcodes.db")).unwrap();
    let salt = [0x42u8; 16];
    let unkeyed = Sha256::new().chain_update(salt).chain_update(b"ZX81AB").finalize();
    conn.execute_batch(&format!(
        "CREATE TABLE passcode_table (mac TEXT, ip TEXT, phone TEXT, email TEXT, passcode TEXT, expiry TEXT);
         INSERT INTO passcode_table VALUES ('{MAC}', '127.0.0.1', '', 'old@example.com', 'Q7ZK2M', '2999-01-01 00:00:00');
         INSERT INTO passcode_table VALUES ('{OTHER_MAC}', '127.0.0.1', '', 'old@example.com', 'sha256${}${}', '2999-01-01 00:00:00');",
        hex(&salt),
        hex(&unkeyed)
    ))
    .unwrap();
    drop(conn);

    let key = ServerKey::from_bytes([0x3c; 32]);
    let mut store = SqliteStore::open(dir).unwrap();
    assert_eq!(store.key_passcodes(&key).unwrap(), 2);
    assert_eq!(store.key_passcodes(&key).unwrap(), 0, "keyed once");
    drop(store);

    let conn = rusqlite::Connection::open(dir.join("op_passcodes.db")).unwrap();
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT mac, passcode FROM passcode_table ORDER BY mac")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (mac, row) in rows {
        let code = if mac == MAC { "Q7ZK2M" } else { "ZX81AB" };
        assert!(row.starts_with("hmac-sha256$"), "{row}");
        let stored = StoredPasscode::from_column(&row);
        assert!(stored.matches(&key, code), "{mac}: the code still logs in");
        assert!(!stored.matches(&ServerKey::default(), code), "{mac}: only with the key");
    }
    for name in ["op_passcodes.db", "op_passcodes.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            assert!(!contains(&bytes, b"Q7ZK2M") && !contains(&bytes, hex(&unkeyed).as_bytes()), "{name}");
        }
    }
}

#[test]
fn the_log_names_the_key_by_its_fingerprint_only() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let hex_key = "c0ffee00".repeat(8);
    let key = ServerKey::from_hex(&hex_key).unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"])
        .env("TOKENIZER_AUTH_SERVER_KEY", &hex_key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("listening") {
        assert!(stderr.read_line(&mut log).unwrap() > 0, "the server exited: {log}");
    }
    signal(&child, "TERM");
    let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
    assert!(child.wait().unwrap().success(), "{log}");
    assert!(log.contains(&format!("fingerprint={}", key.fingerprint())) && log.contains("from=server_key"), "{log}");
    assert!(!log.contains("c0ffee00") && !log.to_ascii_lowercase().contains("c0ffee00"), "{log}");
    assert!(!tmp.path().join("server.key").exists(), "a given key is not written to the disk");
}
