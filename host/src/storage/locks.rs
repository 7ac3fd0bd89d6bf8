//! Turn-taking locks over a data directory: one in-process async mutex per name, then an
//! OS file lock in `<data dir>/locks/` so every keyhole process on the directory (`serve`,
//! `run`, the CLI) takes the same turns.
//!
//! Used for OAuth refresh (two processes must never present the same rotating refresh
//! token) and for function state (two runs of a function must not both read a value and
//! write back their own update, losing the other's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Per-name async mutexes of one process.
#[derive(Debug, Default)]
pub struct LocalLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LocalLocks {
    /// The mutex for `name` (created on first use; one per name for the process's life).
    pub fn get(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }
}

/// The directory holding the lock files of the data directory that holds `database`.
pub fn dir_for(database: &Path) -> Option<PathBuf> {
    Some(database.parent()?.join("locks"))
}

/// An exclusive OS lock on `<dir>/<file>`, released when the returned file drops. `None`
/// (logged) if the lock file cannot be used: callers still hold their in-process lock.
pub async fn exclusive_file(dir: Option<PathBuf>, file: String) -> Option<std::fs::File> {
    let dir = dir?;
    let path = dir.join(&file);
    let locked = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await;
    match locked {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            tracing::warn!(lock = file, error = %e, "cannot take a cross-process lock; other processes on this data directory are not kept out");
            None
        }
        Err(e) => {
            tracing::warn!(lock = file, error = %e, "cross-process lock task failed");
            None
        }
    }
}

/// A function's turn on its state: held from the run's first state access until its
/// writes are committed or discarded.
#[derive(Debug)]
pub struct StateTurn {
    _local: tokio::sync::OwnedMutexGuard<()>,
    _file: Option<std::fs::File>,
}

impl super::Storage {
    /// Wait for `function`'s turn on its state (see [`StateTurn`]).
    pub async fn state_turn(&self, function: &str) -> StateTurn {
        let local = self.state_locks.get(function).lock_owned().await;
        let file = exclusive_file(dir_for(&self.path), format!("state-{function}.lock")).await;
        StateTurn {
            _local: local,
            _file: file,
        }
    }
}
