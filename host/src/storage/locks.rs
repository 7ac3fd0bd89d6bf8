//! Turn-taking over a data directory: [`Storage::turn`] waits for an in-process async
//! mutex per name, then an OS file lock in `<data dir>/locks/`, so every keyhole process on
//! the directory (`serve`, `run`, the CLI) takes the same turns.
//!
//! Used for OAuth refresh (two processes must never present the same rotating refresh
//! token) and for function state (two runs of a function must not both read a value and
//! write back their own update, losing the other's).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::Storage;

/// Per-name async mutexes of one process (one per name for the process's life).
#[derive(Debug, Default)]
pub(super) struct LocalLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A turn on a name: held until dropped.
#[derive(Debug)]
pub struct Turn {
    _local: tokio::sync::OwnedMutexGuard<()>,
    /// `None` (logged) if the lock file could not be used: the in-process turn still holds.
    _file: Option<std::fs::File>,
}

impl Storage {
    /// Wait for the turn on `name` (a file name: letters, digits, `-`), within this
    /// process and then across the processes on this data directory.
    pub async fn turn(&self, name: &str) -> Turn {
        let local = self
            .locks
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        let local = local.lock_owned().await;
        Turn {
            _local: local,
            _file: exclusive_file(&self.path, name).await,
        }
    }
}

/// An exclusive OS lock on `<data dir>/locks/<name>.lock`, released when the returned file
/// drops. `None` (logged) if the lock file cannot be used. Uncontended, it is taken right
/// here (a few syscalls); only a wait for another process moves to a blocking thread.
async fn exclusive_file(database: &Path, name: &str) -> Option<std::fs::File> {
    let dir = database.parent()?.join("locks");
    let path = dir.join(format!("{name}.lock"));
    let opened = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    });
    let locked = match opened {
        Err(e) => Err(e),
        Ok(file) => match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
            Err(std::fs::TryLockError::WouldBlock) => {
                match tokio::task::spawn_blocking(move || file.lock().map(|()| file)).await {
                    Ok(locked) => locked,
                    Err(e) => Err(std::io::Error::other(e)),
                }
            }
        },
    };
    match locked {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(lock = name, error = %e, "cannot take a cross-process lock; other processes on this data directory are not kept out");
            None
        }
    }
}
