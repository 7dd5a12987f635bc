//! Where the token lives between calls: anything that implements
//! [`TokenStore`]. Two are given: [`MemoryTokenStore`], and
//! [`FileTokenStore`], a file that `tokenizer-auth client` and the Python
//! package read and write too.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokenizer_auth_engine::{BaseToken, Secret};

use crate::DeviceMac;

/// A base token, and the MAC address it is bound to (`None`: not known, as
/// in a file written by an older client).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredToken {
    /// The token (its `Debug` is redacted).
    pub token: BaseToken,
    /// The device's MAC address, as given at login.
    pub mac: Option<DeviceMac>,
}

/// Keeps the device's token. [`save`](TokenStore::save) replaces what
/// [`load`](TokenStore::load) returns. A store may be shared between
/// clients (and threads): a token one of them renews is the one the others
/// load next.
pub trait TokenStore: Send + Sync {
    /// The stored token, or `None` if there is none yet.
    fn load(&self) -> io::Result<Option<StoredToken>>;

    /// Replaces the stored token.
    fn save(&self, stored: &StoredToken) -> io::Result<()>;
}

impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn load(&self) -> io::Result<Option<StoredToken>> {
        (**self).load()
    }

    fn save(&self, stored: &StoredToken) -> io::Result<()> {
        (**self).save(stored)
    }
}

/// A token kept in this process only (the default).
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    stored: Mutex<Option<StoredToken>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> MemoryTokenStore {
        MemoryTokenStore::default()
    }

    /// A store that holds `stored` already.
    pub fn with(stored: StoredToken) -> MemoryTokenStore {
        MemoryTokenStore { stored: Mutex::new(Some(stored)) }
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> io::Result<Option<StoredToken>> {
        Ok(self.stored.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn save(&self, stored: &StoredToken) -> io::Result<()> {
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored.clone());
        Ok(())
    }
}

/// A token file, shared with `tokenizer-auth client --token-file` and the
/// Python package's `FileTokenStore`: one line,
///
/// ```text
/// <64 lowercase hex digits> <MAC as given at login>\n
/// ```
///
/// (the token alone in a file written by an older client). Each save
/// writes a new file beside the old one with mode 0600 (in a folder created
/// with mode 0700), under a name of its own, syncs it and renames it over
/// the old one: a reader sees the old token or the new one, never a part,
/// however many clients and processes save at once.
#[derive(Clone, Debug)]
pub struct FileTokenStore {
    path: PathBuf,
}

/// A token file is one short line; more than this is not one.
const MAX_FILE: u64 = 4096;

impl FileTokenStore {
    /// The store in the file at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> FileTokenStore {
        FileTokenStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn invalid(&self, what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("the token file {} {what}", self.path.display()))
    }

    fn parse(&self, text: &str) -> io::Result<StoredToken> {
        let mut fields = text.split_ascii_whitespace();
        let token = fields
            .next()
            .and_then(|t| BaseToken::parse(t.as_bytes()))
            .ok_or_else(|| self.invalid("does not hold a token"))?;
        // What follows the MAC is ignored, as the other clients do.
        let mac = match fields.next() {
            None => None,
            Some(mac) => Some(DeviceMac::parse(mac).map_err(|_| self.invalid("holds no valid MAC"))?),
        };
        Ok(StoredToken { token, mac })
    }
}

impl TokenStore for FileTokenStore {
    fn load(&self) -> io::Result<Option<StoredToken>> {
        let cannot =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot read the token file {}: {e}", self.path.display()));
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cannot(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(cannot)?;
        if bytes.len() as u64 > MAX_FILE {
            bytes.fill(0);
            return Err(self.invalid("is too long to be one"));
        }
        match String::from_utf8(bytes) {
            Ok(text) => self.parse(Secret::new(text).expose()).map(Some),
            Err(e) => {
                e.into_bytes().fill(0);
                Err(self.invalid("does not hold a token"))
            }
        }
    }

    fn save(&self, stored: &StoredToken) -> io::Result<()> {
        let cannot = |e: io::Error| {
            io::Error::new(e.kind(), format!("cannot write the token file {}: {e}", self.path.display()))
        };
        let line = Secret::new(match &stored.mac {
            Some(mac) => format!("{} {mac}\n", stored.token),
            None => format!("{}\n", stored.token),
        });
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        create_private_dir(dir).map_err(cannot)?;
        let (temp, mut file) = new_temp_file(dir, &self.path).map_err(cannot)?;
        let written = file
            .write_all(line.expose().as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(cannot(e));
        }
        // Makes the rename durable; where a folder cannot be opened for
        // that, the rename stands anyway.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Creates `dir` and its missing parents with mode 0700 (exactly, whatever
/// the umask). An existing folder is left as it is.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

/// A new file with mode 0600 beside `path`, under a name no other save
/// uses: `.<name>.<pid>.<random>.tmp`, created only if it does not exist.
fn new_temp_file(dir: &Path, path: &Path) -> io::Result<(PathBuf, File)> {
    let name = path.file_name().map_or_else(|| "token".into(), |n| n.to_string_lossy().into_owned());
    let mut tries = 0;
    loop {
        let temp = dir.join(format!(".{name}.{}.{:016x}.tmp", std::process::id(), unique()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&temp) {
            Ok(file) => {
                #[cfg(unix)]
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                return Ok((temp, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// A number no other call in this process returns, mixed with randomness
/// from the OS (std's hasher keys), so that other processes' names differ
/// too.
fn unique() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(pair: &str) -> BaseToken {
        BaseToken::parse(pair.repeat(32).as_bytes()).unwrap()
    }

    fn mac(text: &str) -> Option<DeviceMac> {
        Some(DeviceMac::parse(text).unwrap())
    }

    #[test]
    fn the_file_holds_the_token_and_the_mac_as_given_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new-folder").join("token");
        let store = FileTokenStore::new(&path);
        assert_eq!(store.load().unwrap(), None);

        let stored = StoredToken { token: token("ab"), mac: mac("AA-BB-CC-DD-EE-FF") };
        store.save(&stored).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{} AA-BB-CC-DD-EE-FF\n", "ab".repeat(32)));
        assert_eq!(store.load().unwrap(), Some(stored));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }

        let other = StoredToken { token: token("cd"), mac: None };
        store.save(&other).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", "cd".repeat(32)));
        assert_eq!(store.load().unwrap(), Some(other));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn files_of_other_writers_load_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let store = FileTokenStore::new(&path);
        // Either case, extra fields ignored, CRLF.
        fs::write(&path, format!("{} aabbccddeeff extra\r\n", "CD".repeat(32))).unwrap();
        assert_eq!(store.load().unwrap(), Some(StoredToken { token: token("cd"), mac: mac("aabbccddeeff") }));

        let cases: [(&[u8], &str); 5] = [
            (b"not a token", "does not hold a token"),
            (b"", "does not hold a token"),
            (b"\xff\xfe", "does not hold a token"),
            (b"abababababababababababababababababababababababababababababababab not-a-mac", "holds no valid MAC"),
            (&[b' '; 5000], "too long"),
        ];
        for (bytes, why) in cases {
            fs::write(&path, bytes).unwrap();
            let e = store.load().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn saves_at_once_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileTokenStore::new(dir.path().join("token")));
        let threads: Vec<_> = ["11", "22", "33", "44"]
            .into_iter()
            .map(|pair| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        store.save(&StoredToken { token: token(pair), mac: mac("aa:bb:cc:dd:ee:ff") }).unwrap();
                        assert!(store.load().unwrap().is_some());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_memory_store_keeps_the_last_save() {
        let store = MemoryTokenStore::new();
        assert_eq!(store.load().unwrap(), None);
        let stored = StoredToken { token: token("ef"), mac: None };
        store.save(&stored).unwrap();
        assert_eq!(store.load().unwrap(), Some(stored));
        assert!(!format!("{store:?}").contains("efef"), "no token in debug output");
    }
}
