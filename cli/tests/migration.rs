//! The move from the old Python server, step by step as docs/MIGRATION.md
//! gives it, through the real binary on both runtimes: the copy leaves the
//! old files as they were, the first start serves the old session, the
//! files change as the document says, and the copy is the way back.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rusqlite::Connection;
use support::*;
use tokenizer_auth_engine::{BaseToken, Mac, MasterToken};

/// The old server's tables, as it created them.
const OLD_TABLES: [&str; 2] = [
    "CREATE TABLE op_creds (mac text, password text, email text, phone text, token text, expiry text)",
    "CREATE TABLE passcode_table (mac text, ip text, phone text, email text, passcode text, expiry text)",
];

/// Writes the two files as the old server left them: a plaintext password,
/// a session of its own (expiring in 2099), an outstanding plaintext
/// passcode, in rollback-journal mode.
fn old_files(dir: &Path, token: &BaseToken) {
    let master = MasterToken::derive(token, Mac::parse(MAC).unwrap(), "127.0.0.1".parse().unwrap());
    let creds = Connection::open(dir.join("op_creds.db")).unwrap();
    creds.execute_batch(OLD_TABLES[0]).unwrap();
    creds
        .execute(
            "INSERT INTO op_creds VALUES (?1, ?2, ?3, ?4, ?5, '2099-01-01 00:00:00')",
            [MAC, PASSWORD, EMAIL, PHONE, &master.to_hex()],
        )
        .unwrap();
    let passcodes = Connection::open(dir.join("op_passcodes.db")).unwrap();
    passcodes.execute_batch(OLD_TABLES[1]).unwrap();
    passcodes
        .execute(
            "INSERT INTO passcode_table VALUES ('AA-BB-CC-DD-EE-01', '127.0.0.1', ?1, ?2, 'Q7ZK2M', '2099-01-01 00:03:00')",
            [PHONE, EMAIL],
        )
        .unwrap();
}

/// The two databases of a folder, with their bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    ["op_creds.db", "op_passcodes.db"]
        .into_iter()
        .map(|name| (name.to_owned(), std::fs::read(dir.join(name)).unwrap()))
        .collect()
}

/// Every row of both old tables, as text, and each file's journal mode.
fn rows(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (file, table) in [("op_creds.db", "op_creds"), ("op_passcodes.db", "passcode_table")] {
        let conn = Connection::open(dir.join(file)).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        out.push(format!("{file}: {mode}"));
        let mut select = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let found = select
            .query_map([], |r| (0..6).map(|i| r.get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>())
            .unwrap();
        out.extend(found.map(|row| format!("{table}: {:?}", row.unwrap())));
    }
    out
}

fn run(dir: &Path, args: &[&str]) -> String {
    let out = run_on(dir, args, "");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn shell(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}");
}

fn version(db: &Path) -> i64 {
    Connection::open(db).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

fn the_migration_steps_work_and_the_copy_is_the_way_back(runtime: &str) {
    let old = tempfile::tempdir().unwrap();
    let token = BaseToken::parse("0123456789abcdef".repeat(4).as_bytes()).unwrap();
    old_files(old.path(), &token);
    let before = contents(old.path());
    let old_rows = rows(old.path());

    // 2. Keep a copy: the old files are read as they are, and left so.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("old-auth-before-migration.tar");
    let said = run(old.path(), &["backup", archive.to_str().unwrap()]);
    assert!(said.starts_with("backed up op_creds.db, op_passcodes.db into"), "{said}");
    assert_eq!(contents(old.path()), before, "the backup changed the old files");

    // 3. Copy the two files into the new data folder.
    let new = tempfile::tempdir().unwrap();
    let new_dir = new.path().to_str().unwrap();
    shell("install", &["-d", "-m", "0700", new_dir]);
    let old_file = |name: &str| old.path().join(name).to_str().unwrap().to_owned();
    shell("install", &["-m", "0600", &old_file("op_creds.db"), &old_file("op_passcodes.db"), new_dir]);
    let listed = run(new.path(), &["user", "list"]);
    assert!(listed.contains("1 sessions  (plaintext password: run `user rehash`)"), "{listed}");

    // 4. The first start: the old session is served.
    let server = Server::start_on(new, runtime, &[], &[]);
    assert_eq!(server.connect().ask(&token_line(&token.to_string())), "authorized");
    let (status, new) = server.stop_keeping_dir();
    assert!(status.success());
    assert_eq!(run(new.path(), &["user", "rehash"]), "hashed 1 plaintext passwords\n");

    // What changed, as docs/MIGRATION.md says.
    let creds = Connection::open(new.path().join("op_creds.db")).unwrap();
    assert_eq!(version(&new.path().join("op_creds.db")), 3);
    assert_eq!(version(&new.path().join("op_passcodes.db")), 1);
    let mode: String = creds.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let sessions: i64 = creds.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)).unwrap();
    assert_eq!(sessions, 1, "the old session, copied into sessions");
    let password: String = creds.query_row("SELECT password FROM op_creds", [], |r| r.get(0)).unwrap();
    assert!(password.starts_with("$argon2id$"), "{password}");
    let passcodes = Connection::open(new.path().join("op_passcodes.db")).unwrap();
    let (mac, code): (String, String) =
        passcodes.query_row("SELECT mac, passcode FROM passcode_table", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(mac, "aa:bb:cc:dd:ee:01");
    assert!(code.starts_with("hmac-sha256$") && !code.contains("Q7ZK2M"), "{code}");
    assert!(new.path().join("server.key").exists());

    // 6. The way back: the copy, as the old server left it.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().to_str().unwrap();
    shell("tar", &["-xf", archive.to_str().unwrap(), "-C", back_dir, "op_creds.db", "op_passcodes.db"]);
    for name in ["op_creds.db", "op_passcodes.db"] {
        assert_eq!(version(&back.path().join(name)), 0, "{name} as the old server left it");
    }
    assert_eq!(rows(back.path()), old_rows, "every row as the old server left it, plaintext and all");
    // And the old folder itself was never touched.
    assert_eq!(contents(old.path()), before);
}

both_runtimes!(the_migration_steps_work_and_the_copy_is_the_way_back);
