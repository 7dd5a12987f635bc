//! `backup FILE` and the restore of docs/OPERATIONS.md ("Backup and
//! restore"), through the real binary: a backup taken while a server runs
//! and takes logins is a private archive of consistent files, and a server
//! started on what `tar -xf` makes of it knows the sessions it held.

#[macro_use]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::*;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn a_backup_taken_under_load_restores_the_sessions(runtime: &str) {
    // The passcode bounds off: the load logs in again and again.
    let env = [("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_EMAIL", "0"), ("TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_IP", "0")];
    let server = Arc::new(Server::start(runtime, &env));
    let first = server.login();

    // A client logs in over and over meanwhile (passcodes stored and
    // consumed, counters reserved, sessions written), keeping its tokens.
    let busy = Arc::new(AtomicBool::new(true));
    let tokens = Arc::new(Mutex::new(vec![first]));
    let load = {
        let (busy, tokens, server) = (Arc::clone(&busy), Arc::clone(&tokens), Arc::clone(&server));
        std::thread::spawn(move || {
            while busy.load(Ordering::Relaxed) {
                let token = server.login();
                tokens.lock().unwrap().push(token);
            }
        })
    };
    let work = tempfile::tempdir().unwrap();
    let mut taken = 0;
    let mut archive = work.path().join("none");
    let mut issued_before = 0;
    // Backups until one was taken while at least three logins happened.
    while taken < 20 && tokens.lock().unwrap().len() < 4 {
        archive = work.path().join(format!("tokenizer-auth-{taken}.tar"));
        issued_before = tokens.lock().unwrap().len();
        let out = run_on(&server.dir, &["backup", archive.to_str().unwrap()], "");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8(out.stdout).unwrap();
        assert!(said.starts_with("backed up op_creds.db, op_passcodes.db, server.key into "), "{said}");
        taken += 1;
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    busy.store(false, Ordering::Relaxed);
    load.join().unwrap();
    let archive_arg = archive.to_str().unwrap();
    let tokens = tokens.lock().unwrap().clone();
    assert!(tokens.len() >= 4, "logins happened while backups were taken");
    #[cfg(unix)]
    assert_eq!(mode(&archive), 0o600);
    // Nothing is left beside them, and one is never replaced.
    let beside = std::fs::read_dir(work.path()).unwrap().count();
    assert_eq!(beside, taken);
    let again = run_on(&server.dir, &["backup", archive_arg], "");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    // The restore, as docs/OPERATIONS.md has it: a private folder, tar.
    let restored = tempfile::tempdir().unwrap();
    let status = Command::new("install").args(["-d", "-m", "0700"]).arg(restored.path()).status().unwrap();
    assert!(status.success());
    let status =
        Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(restored.path()).status().expect("tar is installed");
    assert!(status.success());
    #[cfg(unix)]
    for name in ["op_creds.db", "op_passcodes.db", "server.key"] {
        assert_eq!(mode(&restored.path().join(name)), 0o600, "{name}");
    }
    let key = |dir: &Path| std::fs::read(dir.join("server.key")).unwrap();
    assert_eq!(key(restored.path()), key(&server.dir));
    let Ok(server) = Arc::try_unwrap(server) else { panic!("the load thread ended") };
    assert!(server.stop().success());

    let users = run_on(restored.path(), &["user", "list"], "");
    assert!(String::from_utf8_lossy(&users.stdout).starts_with(EMAIL));
    let server = Server::start_on(restored, runtime, &[], &[]);
    // Every session issued before the backup began is in it.
    let mut c = server.connect();
    for token in &tokens[..issued_before] {
        assert_eq!(c.ask(&token_line(token)), "authorized");
    }
    assert!(server.login().len() == 64, "logins work on the restored files");
    assert!(server.stop().success());
}

#[test]
fn a_failed_backup_leaves_nothing() {
    let empty = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("b.tar");
    let out = run_on(&empty.path().join("none"), &["backup", archive.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("op_creds.db"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "no archive, whole or partial");
}

both_runtimes!(a_backup_taken_under_load_restores_the_sessions);
