//! `backup FILE` and the restore of docs/OPERATIONS.md ("Backup and
//! restore"), through the real binary: a backup taken while a server runs
//! and takes logins is a private archive of consistent files, and a server
//! started on what `tar -xf` makes of it knows the sessions it held.

#[macro_use]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn a_backup_taken_under_load_restores_the_sessions(runtime: &str) {
    let server = Server::start(runtime, &[]);
    let token = server.login();

    // Clients keep asking for passcodes and checking tokens meanwhile.
    let busy = Arc::new(AtomicBool::new(true));
    let load = {
        let busy = Arc::clone(&busy);
        let addr = server.native;
        let token = token.clone();
        std::thread::spawn(move || {
            let mut c = Client::new(std::net::TcpStream::connect(addr).unwrap());
            let mut n = 0;
            while busy.load(Ordering::Relaxed) {
                assert_eq!(c.ask(&token_line(&token)), "authorized");
                n += 1;
            }
            n
        })
    };
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("tokenizer-auth.tar");
    let archive_arg = archive.to_str().unwrap();
    let out = run_on(&server.dir, &["backup", archive_arg], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.starts_with("backed up op_creds.db, op_passcodes.db, server.key into "), "{said}");
    busy.store(false, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    #[cfg(unix)]
    assert_eq!(mode(&archive), 0o600);
    // Nothing is left beside it, and it is never replaced.
    let beside: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, ["tokenizer-auth.tar"]);
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
    assert!(server.stop().success());

    let users = run_on(restored.path(), &["user", "list"], "");
    assert!(String::from_utf8_lossy(&users.stdout).starts_with(EMAIL));
    let server = Server::start_on(restored, runtime, &[], &[]);
    assert_eq!(server.connect().ask(&token_line(&token)), "authorized");
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
