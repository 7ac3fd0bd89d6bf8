//! The master key and the AEAD (XChaCha20-Poly1305) that seals credentials at rest.
//!
//! A sealed blob is `version (1 byte) || nonce (24 bytes) || ciphertext+tag`. The
//! associated data binds a blob to the row it belongs to (e.g. `connection:github`),
//! so a blob copied into another row fails to open instead of leaking credentials
//! into the wrong connection.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// Environment variable holding the master key (64 hex chars or base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "KEYHOLE_MASTER_KEY";
/// File name of the generated master key inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Errors from loading the master key or sealing/opening a blob.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key in the environment variable is not 32 bytes of hex or base64.
    #[error(
        "{MASTER_KEY_ENV} is not a valid key: expected 64 hex characters or base64 of 32 bytes (generate one with `openssl rand -hex 32`)"
    )]
    BadEnvKey,
    /// The key file exists but does not hold a valid key.
    #[error(
        "master key file {path} is not a valid key: expected 64 hex characters; restore the original file or set {MASTER_KEY_ENV}"
    )]
    BadKeyFile {
        /// Path of the key file.
        path: PathBuf,
    },
    /// No key is available but the database already holds sealed data.
    #[error(
        "no master key found: this data directory holds sealed credentials, so a new key cannot be made; set {MASTER_KEY_ENV} or restore {path}"
    )]
    MissingKey {
        /// Where the key file was expected.
        path: PathBuf,
    },
    /// The key does not open this database's data.
    #[error(
        "the master key does not match the one this data directory was sealed with (nothing was changed); {MASTER_KEY_ENV}, when set, is used instead of {MASTER_KEY_FILE}: unset it or set it to the original key, else restore the original {MASTER_KEY_FILE}"
    )]
    WrongKey,
    /// A sealed blob failed authentication: tampered, truncated or bound to another row.
    #[error(
        "sealed data for {context} failed to open: it was altered or belongs to another record (nothing was changed)"
    )]
    Corrupt {
        /// The associated data naming the record.
        context: String,
    },
    /// Reading or writing the key file failed.
    #[error(
        "cannot access master key file {path}: {source}; check the data directory's permissions (it must be yours), or use another with --home"
    )]
    Io {
        /// Path of the key file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the master key came from (shown by `keyhole status`-style output, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `KEYHOLE_MASTER_KEY` environment variable.
    Env,
    /// An existing key file.
    File(PathBuf),
    /// A key file created just now.
    Created(PathBuf),
}

/// The 32-byte master key. Never printed; wiped on drop.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Load the key from `KEYHOLE_MASTER_KEY`, else from `dir/master.key`. When neither
    /// exists and `may_create` is true, create the file (mode 0600) with a fresh key.
    pub fn load(dir: &Path, may_create: bool) -> Result<Self, SealError> {
        if let Ok(text) = std::env::var(MASTER_KEY_ENV) {
            let bytes = parse_key(text.trim()).ok_or(SealError::BadEnvKey)?;
            return Ok(Self {
                bytes,
                source: KeySource::Env,
            });
        }
        let path = dir.join(MASTER_KEY_FILE);
        sweep_stray_temporaries(dir);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = parse_key(text.trim())
                    .ok_or_else(|| SealError::BadKeyFile { path: path.clone() })?;
                Ok(Self {
                    bytes,
                    source: KeySource::File(path),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !may_create {
                    return Err(SealError::MissingKey { path });
                }
                let mut bytes = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(bytes.as_mut());
                match create_key_file(dir, &path, &bytes) {
                    Ok(()) => Ok(Self {
                        bytes,
                        source: KeySource::Created(path),
                    }),
                    // Another process made the key first: use its key.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        match Self::load(dir, false) {
                            // Not a key file after all (say, a dangling symlink).
                            Err(SealError::MissingKey { path }) => {
                                Err(SealError::Io { path, source: e })
                            }
                            loaded => loaded,
                        }
                    }
                    Err(source) => Err(SealError::Io { path, source }),
                }
            }
            Err(source) => Err(SealError::Io { path, source }),
        }
    }

    /// A key from raw bytes (tests and benchmarks).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
            source: KeySource::Env,
        }
    }

    /// Where this key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }
}

fn parse_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let raw = Zeroizing::new(if text.len() == 64 {
        hex::decode(text).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    });
    let arr: [u8; 32] = raw.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}

/// Create the key file at `path`, whole or not at all: the key is written and synced
/// under a temporary name, then linked to `path`, which fails with `AlreadyExists` if
/// another process got there first. So no reader ever sees an empty or half-written key,
/// and a crash leaves at most a stray temporary file (`.master.key.*.tmp`, mode 0600,
/// removed by a later start once a minute old), never a broken key file. On a file system without hard links the key is written in
/// place, as `create_new` still keeps two processes from both writing one.
fn create_key_file(dir: &Path, path: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let temporary = dir.join(format!(
        ".{MASTER_KEY_FILE}.{}.{}.tmp",
        std::process::id(),
        hex::encode(suffix)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&temporary)
        .and_then(|mut file| write_key(&mut file, key));
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(e);
    }
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            // Make the new name itself durable. The key is in place either way, so a
            // directory that cannot be opened or synced is no reason to fail.
            #[cfg(unix)]
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        // No hard links here (vfat, some network file systems): write in place.
        Err(_) => write_in_place(path, &options, key),
    }
}

/// How old a temporary key file must be before a start removes it as a crash's leftover:
/// far longer than writing one takes, so a process creating its key right now keeps its own.
const STRAY_TEMPORARY_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Remove the temporary key files (`.master.key.*.tmp`) a crash left behind: each is a
/// copy of a key (this directory's, or one that lost the race to be it) that nothing
/// reads. Best effort: what cannot be listed or removed stays.
fn sweep_stray_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{MASTER_KEY_FILE}.");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age >= STRAY_TEMPORARY_AGE);
        if old && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temporary key file left by an interrupted start");
        }
    }
}

/// Write the key file directly; `create_new` keeps a second process from writing it too.
/// A failed write removes the file this call created, rather than leave a broken key.
fn write_in_place(path: &Path, options: &fs::OpenOptions, key: &[u8; 32]) -> std::io::Result<()> {
    let written = write_key(&mut options.open(path)?, key);
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// The key as the file holds it (hex and a newline), synced to disk.
fn write_key(file: &mut fs::File, key: &[u8; 32]) -> std::io::Result<()> {
    file.write_all(Zeroizing::new(hex::encode(key)).as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Seals and opens blobs under the master key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// A sealer using `key`.
    pub fn new(key: &MasterKey) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.bytes.as_ref().into()),
        }
    }

    /// Seal `plaintext`, bound to `context` (e.g. `connection:github`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(BLOB_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Open a blob sealed with [`Sealer::seal`] under the same `context`.
    pub fn open(&self, blob: &[u8], context: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let corrupt = || SealError::Corrupt {
            context: context.to_string(),
        };
        if blob.len() < 1 + NONCE_LEN || blob[0] != BLOB_VERSION {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = blob[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let sealer = Sealer::new(&MasterKey::from_bytes([7; 32]));
        let blob = sealer.seal(b"top-secret-value", "connection:a");
        assert!(!blob.windows(16).any(|w| w == b"top-secret-value"));
        assert_eq!(
            &sealer.open(&blob, "connection:a").unwrap()[..],
            b"top-secret-value"
        );
        assert!(matches!(
            sealer.open(&blob, "connection:b"),
            Err(SealError::Corrupt { .. })
        ));
        let other = Sealer::new(&MasterKey::from_bytes([8; 32]));
        assert!(other.open(&blob, "connection:a").is_err());
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered, "connection:a").is_err());
        assert!(sealer.open(&blob[..10], "connection:a").is_err());
    }

    #[test]
    fn key_file_is_created_with_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MasterKey::load(dir.path(), false),
            Err(SealError::MissingKey { .. })
        ));
        let k1 = MasterKey::load(dir.path(), true).unwrap();
        assert!(matches!(k1.source(), KeySource::Created(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let k2 = MasterKey::load(dir.path(), true).unwrap();
        assert!(matches!(k2.source(), KeySource::File(_)));
        let blob = Sealer::new(&k1).seal(b"x", "c");
        assert_eq!(&Sealer::new(&k2).open(&blob, "c").unwrap()[..], b"x");
    }

    #[test]
    fn a_start_removes_old_temporary_key_files_only() {
        let dir = tempfile::tempdir().unwrap();
        MasterKey::load(dir.path(), true).unwrap();
        let file = |name: &str, age_s: u64| {
            let path = dir.path().join(name);
            let f = fs::File::create(&path).unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
            f.set_modified(at).unwrap();
            path
        };
        let stray = file(".master.key.4242.0011223344556677.tmp", 3600);
        let fresh = file(".master.key.4243.8899aabbccddeeff.tmp", 0);
        let other = file(".other.key.1.tmp", 3600);
        let similar = file(".master.key.bak", 3600);
        MasterKey::load(dir.path(), false).unwrap();
        assert!(!stray.exists(), "an hour-old temporary key file stayed");
        assert!(
            fresh.exists(),
            "a temporary key file being written now was removed"
        );
        assert!(
            other.exists() && similar.exists(),
            "another file was removed"
        );
        assert!(dir.path().join(MASTER_KEY_FILE).exists());
    }

    /// Two processes starting on a new data directory at once must end up with one key:
    /// a loser of the race reads the winner's whole key, never an empty or half-written
    /// file, and never fails because the file appeared under it.
    #[test]
    fn racing_first_starts_agree_on_one_key() {
        const RACERS: usize = 8;
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(RACERS);
            let keys: Vec<MasterKey> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..RACERS)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            MasterKey::load(dir.path(), true)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().expect("every racer gets a key"))
                    .collect()
            });
            let created = keys
                .iter()
                .filter(|k| matches!(k.source(), KeySource::Created(_)))
                .count();
            assert_eq!(created, 1, "exactly one racer creates the key file");
            let blob = Sealer::new(&keys[0]).seal(b"x", "c");
            for key in &keys {
                assert_eq!(&Sealer::new(key).open(&blob, "c").unwrap()[..], b"x");
            }
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [MASTER_KEY_FILE], "no temporary file is left behind");
        }
    }
}
