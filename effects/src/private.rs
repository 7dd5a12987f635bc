//! Files only the service account may read (docs/SECURITY.md, "Secrets at
//! rest"): folders 0700, files 0600, set at creation whatever the umask,
//! and an existing data folder that is too open tightened when it is opened.
//!
//! The data folder holds password hashes, sessions, passcode digests, the
//! server key, the outbox (mails that name passcodes) and the client's
//! token: anyone who can read it can attack every one of them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mode of private folders.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// The files of the data folder that hold secrets, by name (SQLite's WAL
/// and shared-memory files included: they hold recent pages).
const SECRET_FILES: &[&str] = &[
    "op_creds.db",
    "op_creds.db-wal",
    "op_creds.db-shm",
    "op_passcodes.db",
    "op_passcodes.db-wal",
    "op_passcodes.db-shm",
    "server.key",
    "client-token",
];

/// The outbox folder's name in the data folder.
const OUTBOX: &str = "outbox";

/// Creates `dir` and its missing parents with mode 0700 (exactly: the
/// umask cannot widen or narrow the folder it names). An existing folder
/// is left as it is; see [`tighten_data_dir`].
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Creates a new file with mode 0600 (exactly, whatever the umask); fails
/// if it exists.
pub fn create_new_file(path: &Path) -> io::Result<File> {
    let mut options = private_options();
    options.write(true).create_new(true);
    let file = options.open(path)?;
    tighten(&file)?;
    Ok(file)
}

/// Opens `path` for appending, creating it (and a missing folder) private.
/// An existing regular file is tightened to 0600; anything else (a pipe, a
/// device) is left as it is.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        create_dir(parent)?;
    }
    let mut options = private_options();
    options.append(true).create(true);
    let file = options.open(path)?;
    if file.metadata()?.is_file() {
        tighten(&file)?;
    }
    Ok(file)
}

/// Options that create a file with mode 0600.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Sets an open file's mode to 0600, whatever the umask did.
fn tighten(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Makes sure `path` exists as a file with mode 0600 before another
/// library creates it with its own default mode (SQLite's is 0644; its WAL
/// and shared-memory files then take the database file's mode). An
/// existing file is left as it is.
pub fn precreate_file(path: &Path) -> io::Result<()> {
    match create_new_file(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the data folder (0700), or tightens an existing one: the folder
/// to 0700, its outbox to 0700, and every file that holds a secret (the
/// two databases with their WAL and shared-memory files, the server key,
/// the client token, the outbox's messages) to 0600. What it tightened is
/// said in one log line. Only permission bits for the group and others are
/// removed; the owner's are set as above.
pub fn tighten_data_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return create_dir(dir);
    }
    let mut tightened: Vec<String> = Vec::new();
    let mut tighten = |path: &Path, mode: u32| -> io::Result<()> {
        if let Some(was) = too_open(path, mode)? {
            set_mode(path, mode)?;
            tightened.push(format!("{} ({was:o} to {mode:o})", path.display()));
        }
        Ok(())
    };
    tighten(dir, DIR_MODE)?;
    for name in SECRET_FILES {
        tighten(&dir.join(name), FILE_MODE)?;
    }
    let outbox = dir.join(OUTBOX);
    if outbox.is_dir() {
        tighten(&outbox, DIR_MODE)?;
        let mut messages: Vec<PathBuf> = fs::read_dir(&outbox)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        messages.sort();
        for message in messages {
            tighten(&message, FILE_MODE)?;
        }
    }
    if !tightened.is_empty() {
        tracing::warn!(
            data_dir = %dir.display(),
            tightened = %tightened.join(", "),
            "the data folder was readable by others: tightened its permissions"
        );
    }
    Ok(())
}

/// The mode of `path` if it is more open than `mode` (any bit outside it
/// set), `None` if it is not or does not exist.
#[cfg(unix)]
fn too_open(path: &Path, mode: u32) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Ok(None),
        Ok(meta) => {
            let current = meta.permissions().mode() & 0o777;
            Ok((current & !mode != 0).then_some(current))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn too_open(_: &Path, _: u32) -> io::Result<Option<u32>> {
    Ok(None)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_folders_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("data");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        create_new_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(create_new_file(&file).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        precreate_file(&file).unwrap();
        precreate_file(&dir.join("g")).unwrap();
        assert_eq!(mode(&dir.join("g")), 0o600);
    }

    #[test]
    fn an_open_data_folder_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir_all(dir.join("outbox")).unwrap();
        for name in ["op_creds.db", "op_creds.db-wal", "server.key", "outbox/m.eml", "unrelated.txt"] {
            fs::write(dir.join(name), b"x").unwrap();
            set_mode(&dir.join(name), 0o644).unwrap();
        }
        set_mode(&dir, 0o755).unwrap();
        set_mode(&dir.join("outbox"), 0o755).unwrap();
        tighten_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("outbox")), 0o700);
        for name in ["op_creds.db", "op_creds.db-wal", "server.key", "outbox/m.eml"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&dir.join("unrelated.txt")), 0o644, "only the files it knows");
        // A tighter mode is kept.
        set_mode(&dir.join("server.key"), 0o400).unwrap();
        tighten_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir.join("server.key")), 0o400);
    }
}
