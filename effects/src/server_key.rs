//! The server key file, `<data_dir>/server.key`: 32 random bytes, mode
//! 0600, created on the first start (docs/SECURITY.md, "Secrets at rest").
//! The key keys the passcode digests; the engine gets it in its `Config`.
//!
//! It is created whole or not at all: the bytes are written and synced to
//! a private temporary file, which is then linked to its name, an operation
//! that fails if the name exists. So two servers starting at once on one
//! folder end up with one key, and a crash never leaves half a key. A key
//! file of any other size is an error, never replaced: replacing it would
//! void every live passcode without a word.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tokenizer_auth_engine::ServerKey;

use crate::private;

/// The key file's name in the data folder.
pub const KEY_FILE: &str = "server.key";

/// Why there is no key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The data folder could not be created.
    #[error("cannot create the data folder {}: {source}", dir.display())]
    DataDir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file could not be created.
    #[error("cannot create the server key {}: {source}", path.display())]
    Create {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file could not be read, or holds no key.
    #[error("cannot read the server key {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The key file of the data folder `dir`.
pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// Reads the data folder's key, creating the folder (0700) and the key
/// (0600) if they are missing.
pub fn load_or_create(dir: &Path) -> Result<ServerKey, KeyError> {
    let path = key_path(dir);
    match read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other.map_err(|source| KeyError::Read { path, source }),
    }
    private::create_dir(dir).map_err(|source| KeyError::DataDir { dir: dir.to_owned(), source })?;
    create(dir, &path).map_err(|source| KeyError::Create { path: path.clone(), source })?;
    read(&path).map_err(|source| KeyError::Read { path, source })
}

/// Reads the data folder's key; never creates one (for `replay`, which
/// needs the key a capture was recorded with).
pub fn load(dir: &Path) -> Result<ServerKey, KeyError> {
    let path = key_path(dir);
    read(&path).map_err(|source| KeyError::Read { path, source })
}

fn read(path: &Path) -> io::Result<ServerKey> {
    let mut bytes = Vec::with_capacity(ServerKey::LEN + 1);
    fs::File::open(path)?.take(ServerKey::LEN as u64 + 1).read_to_end(&mut bytes)?;
    let key: [u8; ServerKey::LEN] = bytes.as_slice().try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it must hold exactly {} bytes (it was not replaced: that would void live passcodes)",
                ServerKey::LEN
            ),
        )
    })?;
    wipe(&mut bytes);
    Ok(ServerKey::from_bytes(key))
}

fn wipe(bytes: &mut [u8]) {
    bytes.iter_mut().for_each(|b| *b = 0);
}

/// Draws a key and links it into place, unless another process did first.
fn create(dir: &Path, path: &Path) -> io::Result<()> {
    let mut key = [0u8; ServerKey::LEN];
    getrandom::fill(&mut key).map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
    let temp = dir.join(format!(".{KEY_FILE}.{}.tmp", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    let written = private::create_new_file(&temp).and_then(|mut file| {
        file.write_all(&key)?;
        file.sync_all()
    });
    wipe(&mut key);
    let linked = written.and_then(|()| match fs::hard_link(&temp, path) {
        // Another process created it first: its key is the key.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        other => other.map(|()| true),
    });
    let _ = fs::remove_file(&temp);
    if linked? {
        #[cfg(unix)]
        fs::File::open(dir)?.sync_all()?;
        tracing::info!(path = %path.display(), "created the server key");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        assert!(load(&dir).is_err(), "no key yet");
        let key = load_or_create(&dir).unwrap();
        assert_eq!(load_or_create(&dir).unwrap(), key);
        assert_eq!(load(&dir).unwrap(), key);
        assert_eq!(fs::read(key_path(&dir)).unwrap(), key.expose());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(key_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }

        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), key, "keys are random");
    }

    #[test]
    fn a_damaged_key_file_is_an_error_and_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(key_path(tmp.path()), b"short").unwrap();
        let error = load_or_create(tmp.path()).unwrap_err().to_string();
        assert!(error.contains("exactly 32 bytes"), "{error}");
        assert_eq!(fs::read(key_path(tmp.path())).unwrap(), b"short");
    }
}
