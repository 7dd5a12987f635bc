//! Online copies of the two files (docs/OPERATIONS.md, "Backup and
//! restore"): each file copied with `VACUUM INTO` from one read
//! transaction, so the copy is that file as one committed instant saw it,
//! while servers go on reading and writing. The copy is checked with
//! `PRAGMA integrity_check` before it is handed back.
//!
//! The files are opened as they are: nothing is created or migrated, so a
//! backup of the old server's files, taken before the first start, is
//! those files as the old server left them.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, CREDS_FILE, PASSCODES_FILE, StoreError};

/// Copies `op_creds.db` and `op_passcodes.db` of `data_dir` into `into`
/// (a private folder, which must not hold them yet), and returns the
/// copies' paths.
pub fn snapshot(data_dir: &Path, into: &Path) -> Result<Vec<PathBuf>, StoreError> {
    [CREDS_FILE, PASSCODES_FILE]
        .into_iter()
        .map(|name| {
            let from = data_dir.join(name);
            let to = into.join(name);
            copy(&from, &to)?;
            Ok(to)
        })
        .collect()
}

fn copy(from: &Path, to: &Path) -> Result<(), StoreError> {
    let open = |path: &Path, flags| {
        Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open { path: path.to_owned(), source })
    };
    // Read-write without create: a missing file is an error, not a new
    // one, and a WAL file's shared memory can be set up if no server runs.
    let source = open(from, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(BUSY_TIMEOUT)?;
    let target = to
        .to_str()
        .ok_or_else(|| StoreError::Backup { path: to.to_owned(), why: "the path is not UTF-8".to_owned() })?;
    source.execute("VACUUM INTO ?1", [target])?;
    let copy = open(to, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let verdict: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Backup { path: to.to_owned(), why: format!("integrity check: {verdict}") });
    }
    Ok(())
}
