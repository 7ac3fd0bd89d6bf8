//! The keyhole host as a library: storage, runtime and connections wired together.
//! The CLI, the tests and (later) the HTTP server all drive this type.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{DB_FILE, Limits};
use crate::connections::{ConnectionError, Connections, Gateway};
use crate::runtime::{InvokeError, LoadSource, Runtime, RuntimeConfig, UploadError, content_hash};
use crate::secrets::{MasterKey, SealError, Sealer};
use crate::services::validate_name;
use crate::storage::{
    FunctionDeletion, FunctionRow, FunctionSummary, InvocationRow, NewFunction, OutboundCall,
    Recorder, Storage, StorageError, now_ms,
};

const KEY_CHECK: &str = "key_check";
const KEY_CHECK_CONTEXT: &str = "keyhole:key-check";

/// Errors from host operations other than invoking.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Upload refused.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Master key problem.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Connection or service problem.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// No such function.
    #[error("no function named {0:?}; `keyhole functions list` shows what is uploaded")]
    UnknownFunction(String),
    /// Something else depends on it.
    #[error("{0}")]
    InUse(String),
    /// Startup failure.
    #[error("{0}")]
    Startup(String),
}

/// One finished invocation.
#[derive(Debug, Serialize)]
pub struct Invocation {
    /// Invocation record id.
    pub id: i64,
    /// Function name.
    pub function: String,
    /// Version run.
    pub version: i64,
    /// Output JSON text, or the error.
    #[serde(skip)]
    pub result: Result<String, InvokeError>,
    /// Guest log lines.
    pub logs: Vec<String>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Outbound calls.
    pub outbound: Vec<OutboundCall>,
    /// Wall time in microseconds.
    pub duration_us: u64,
}

/// A function with all its versions and grants.
#[derive(Debug, Serialize)]
pub struct FunctionDetail {
    /// Name.
    pub name: String,
    /// Versions, newest first.
    pub versions: Vec<FunctionRow>,
    /// Connections granted.
    pub grants: Vec<String>,
}

/// Options for an upload.
#[derive(Debug, Default, Clone)]
pub struct UploadOptions {
    /// Limits for the new version (`None`: keep the previous version's, else defaults).
    pub limits: Option<Limits>,
    /// Connections to grant.
    pub grants: Vec<String>,
    /// Drop the grants of earlier versions first.
    pub reset_grants: bool,
}

/// What an upload stored.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    /// The version the function now runs.
    #[serde(flatten)]
    pub row: FunctionRow,
    /// False when the component and limits were the latest version's already: nothing
    /// new was stored and the version stays (the upload's grant changes still apply).
    pub new_version: bool,
}

/// The host.
pub struct Keyhole {
    home: PathBuf,
    storage: Arc<Storage>,
    recorder: Recorder,
    runtime: Arc<Runtime>,
    connections: Connections,
}

impl std::fmt::Debug for Keyhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyhole")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Keyhole {
    /// Open the host on data directory `home` (created if needed).
    pub fn open(home: &Path, config: RuntimeConfig) -> Result<Self, HostError> {
        // Owner-only when keyhole creates it (an existing directory keeps its mode).
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(home).map_err(|e| {
            HostError::Startup(format!(
                "cannot create data directory {}: {e}",
                home.display()
            ))
        })?;
        let storage = Arc::new(Storage::open(&home.join(DB_FILE))?);
        let check = storage.meta_get(KEY_CHECK)?;
        let key = MasterKey::load(home, check.is_none())?;
        let sealer = Sealer::new(&key);
        match check {
            Some(blob) => {
                sealer
                    .open(&blob, KEY_CHECK_CONTEXT)
                    .map_err(|_| SealError::WrongKey)?;
            }
            None => storage.meta_set(KEY_CHECK, &sealer.seal(b"keyhole", KEY_CHECK_CONTEXT))?,
        }
        let runtime =
            Arc::new(Runtime::new(config).map_err(|e| {
                HostError::Startup(format!("cannot start the wasm runtime: {e:#}"))
            })?);
        let gateway = Arc::new(Gateway::new(storage.clone(), Arc::new(sealer)));
        Ok(Self {
            home: home.to_path_buf(),
            recorder: Recorder::new(storage.clone()),
            storage,
            runtime,
            connections: Connections::new(gateway),
        })
    }

    /// The data directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Store the invocation records held back by another process's lock (a last attempt,
    /// blocking; see `Recorder::store_held_back`): for a process about to exit, which may
    /// not drop this host.
    pub fn store_held_back_records(&self) {
        self.recorder.store_held_back();
    }

    /// Give back the invocation record ids this process took and did not use, if no
    /// other process took any since (see `Recorder::return_unused_ids`): for a server
    /// about to exit, after its records are stored.
    pub fn return_unused_record_ids(&self) {
        self.recorder.return_unused_ids();
    }

    /// The storage layer.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The wasm runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Schedule administration.
    pub fn schedules(&self) -> crate::schedules::Schedules {
        crate::schedules::Schedules::new(self.storage.clone())
    }

    /// Connection and service administration.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Validate, compile and store `wasm` as a new version of `name`. The same component
    /// with the same limits as the latest version is that version again: uploading twice
    /// (a retried deploy) does not make versions that differ in nothing.
    pub async fn upload(
        &self,
        name: &str,
        wasm: Vec<u8>,
        options: UploadOptions,
    ) -> Result<Uploaded, HostError> {
        validate_name("function", name).map_err(|e| HostError::Invalid(e.to_string()))?;
        for g in &options.grants {
            if self.storage.get_connection(g)?.is_none() {
                return Err(ConnectionError::UnknownConnection(g.clone()).into());
            }
        }
        let previous = self.storage.latest_function(name)?;
        let limits = options
            .limits
            .or(previous.as_ref().map(|p| p.limits))
            .unwrap_or_default();
        limits.validate().map_err(HostError::Invalid)?;

        let hash = content_hash(&wasm);
        let engine = self.runtime.engine_hash();
        // The latest version again, already compiled for this engine: nothing to do. (Not
        // compiled for it, after an upgrade: compiled below, which also checks that this
        // host can run it, and still no new version.)
        if let Some(latest) = previous.filter(|p| p.content_hash == hash && p.limits == limits)
            && self.storage.has_artifact(&hash, engine)?
        {
            return self.unchanged(name, latest, &options);
        }
        let runtime = self.runtime.clone();
        let (wasm, compiled) = tokio::task::spawn_blocking(move || {
            let r = runtime.compile(&wasm);
            (wasm, r)
        })
        .await
        .map_err(|e| HostError::Startup(format!("compiler task failed: {e}")))?;
        let (artifact, prepared) = compiled?;

        self.storage.put_artifact(&hash, engine, &artifact)?;
        // The version and its grants in one transaction.
        let (row, new_version) = self.storage.insert_function_with_grants(
            &NewFunction {
                name,
                content_hash: &hash,
                wasm: &wasm,
                limits,
            },
            &grant_change(&options),
        )?;
        self.runtime.remember(&hash, prepared);
        if new_version {
            tracing::info!(function = name, version = row.version, content_hash = %hash, "function uploaded");
        } else {
            tracing::info!(function = name, version = row.version, content_hash = %row.content_hash, "function uploaded again, unchanged");
        }
        Ok(Uploaded { row, new_version })
    }

    /// An upload that stored nothing new: `latest` stays, the grant changes apply.
    fn unchanged(
        &self,
        name: &str,
        latest: FunctionRow,
        options: &UploadOptions,
    ) -> Result<Uploaded, HostError> {
        self.storage.change_grants(name, &grant_change(options))?;
        tracing::info!(function = name, version = latest.version, content_hash = %latest.content_hash, "function uploaded again, unchanged");
        Ok(Uploaded {
            row: latest,
            new_version: false,
        })
    }

    /// Every function with its latest version.
    pub fn list_functions(&self) -> Result<Vec<FunctionSummary>, HostError> {
        Ok(self.storage.list_functions()?)
    }

    /// One function's versions and grants.
    pub fn show_function(&self, name: &str) -> Result<FunctionDetail, HostError> {
        let versions = self.storage.function_versions(name)?;
        if versions.is_empty() {
            return Err(HostError::UnknownFunction(name.to_string()));
        }
        Ok(FunctionDetail {
            name: name.to_string(),
            versions,
            grants: self.storage.grants_of_function(name)?,
        })
    }

    /// Delete every version of a function, its grants and its state. A function that
    /// schedules run is kept (they would fail every time) unless `with_schedules`, which
    /// deletes those schedules too. Returns the number of versions deleted.
    pub fn delete_function(&self, name: &str, with_schedules: bool) -> Result<usize, HostError> {
        match self.storage.delete_function(name, with_schedules)? {
            FunctionDeletion::Deleted {
                versions,
                schedules,
            } => {
                for schedule in &schedules {
                    tracing::info!(
                        schedule,
                        function = name,
                        "schedule deleted with its function"
                    );
                }
                Ok(versions)
            }
            FunctionDeletion::InUse(schedules) => Err(HostError::InUse(format!(
                "function {name:?} is run by schedule{} {}; delete {} first (`keyhole schedules delete NAME`) or delete them with it (`--with-schedules`; over HTTP `?with_schedules=true`); nothing was deleted",
                if schedules.len() == 1 { "" } else { "s" },
                schedules.join(", "),
                if schedules.len() == 1 { "it" } else { "them" },
            ))),
            FunctionDeletion::Unknown => Err(HostError::UnknownFunction(name.to_string())),
        }
    }

    /// Recent invocations.
    pub fn logs(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InvocationRow>, HostError> {
        Ok(self.storage.recent_invocations(function, limit)?)
    }

    /// Run the latest version of `name` with `input` and record the invocation: the
    /// result comes once the record is committed (or held back, or lost; then its id is
    /// 0).
    pub async fn invoke(&self, name: &str, input: &str) -> Result<Invocation, InvokeError> {
        self.invoke_recording(name, input, RecordWhen::BeforeAnswer)
            .await
    }

    /// Like [`Keyhole::invoke`], but the result comes at once, with the id its record
    /// will have, and the record is committed in the background: the answer does not wait
    /// for the database. For `keyhole serve`, whose readers wait for it first
    /// ([`Keyhole::records_settled`]); a record that then cannot be stored is held back
    /// or lost as with `invoke`, and logged.
    pub async fn invoke_answer_first(
        &self,
        name: &str,
        input: &str,
    ) -> Result<Invocation, InvokeError> {
        self.invoke_recording(name, input, RecordWhen::AfterAnswer)
            .await
    }

    /// Wait until the records of the invocations answered so far by
    /// [`Keyhole::invoke_answer_first`] are committed, held back or lost, for at most
    /// half a second (a read does not wait out another process's lock): a read after
    /// this sees each one that could be stored in that time.
    pub async fn records_settled(&self) {
        self.recorder.settled().await;
    }

    /// Wait until the OAuth token refreshes under way have stored their answers (at most
    /// [`crate::oauth::REFRESH_SETTLE_LIMIT`], longer than a refresh can take). A refresh
    /// outlives the invocation that started it, so that a refresh token the provider has
    /// already rotated is never lost; a process calls this before it exits.
    pub async fn refreshes_settled(&self) {
        self.connections.gateway().oauth.refreshes_settled().await;
    }

    /// Take a block of invocation record ids ahead of the first invocation, for a
    /// server about to answer with [`Keyhole::invoke_answer_first`]. Best effort: if
    /// another process holds the database's lock, this waits it out like any write (up
    /// to the busy timeout), then logs a warning, and the first invocations take one.
    pub fn reserve_record_ids(&self) {
        if let Err(e) = self.recorder.reserve_ahead() {
            tracing::warn!(error = %e, "could not take invocation record ids ahead; the first invocations will");
        }
    }

    async fn invoke_recording(
        &self,
        name: &str,
        input: &str,
        when: RecordWhen,
    ) -> Result<Invocation, InvokeError> {
        let host = |e: &dyn std::fmt::Display| InvokeError::Host(e.to_string());
        let row = self
            .storage
            .latest_function(name)
            .map_err(|e| storage_fault(&e))?
            .ok_or_else(|| InvokeError::NotFound(name.to_string()))?;
        // Warm path: the pre-instantiated component is in memory, no blocking work needed.
        let cached = self.runtime.cached(&row.content_hash);
        let (prepared, source, new_artifact) = if let Some(p) = cached {
            (p, LoadSource::Memory, None)
        } else {
            let storage = self.storage.clone();
            let runtime = self.runtime.clone();
            let hash = row.content_hash.clone();
            tokio::task::spawn_blocking(move || {
                runtime.load(
                    &hash,
                    || {
                        storage
                            .artifact(&hash, runtime.engine_hash())
                            .ok()
                            .flatten()
                    },
                    || storage.function_wasm(&hash).ok().flatten(),
                )
            })
            .await
            .map_err(|e| host(&e))?
            .map_err(|e| host(&e))?
        };
        if let Some(artifact) = new_artifact
            && let Err(e) =
                self.storage
                    .put_artifact(&row.content_hash, self.runtime.engine_hash(), &artifact)
        {
            tracing::warn!(error = %e, "could not store the compiled artifact");
        }
        if source != LoadSource::Memory {
            tracing::debug!(function = name, ?source, "function loaded");
        }
        let started_at = now_ms();
        let gateway = Some(self.connections.gateway().clone());
        let mut outcome = self
            .runtime
            .invoke(&prepared, name, input, row.limits, gateway)
            .await;
        // State writes land only with a successful run; a failed one leaves state as it
        // was. A run whose writes cannot be stored did not succeed: its caller must not
        // act on an output whose state is not there (it would notify twice).
        if outcome.result.is_ok()
            && let Err(e) = self
                .storage
                .kv_commit(name, row.version, &outcome.kv_writes)
        {
            tracing::error!(function = name, error = %e, "could not commit the function's state");
            outcome.result = Err(if e.is_busy() {
                InvokeError::Busy(
                    "the function ran, but its state could not be saved: another process held the database's lock; its state is unchanged, so run it again".into(),
                )
            } else {
                InvokeError::Host(format!(
                    "the function ran, but its state could not be saved ({e}); its state is unchanged, so run it again"
                ))
            });
        }
        // The next run of this function may read its state now.
        drop(outcome.state_turn.take());
        let record = InvocationRow {
            id: 0,
            function: name.to_string(),
            version: row.version,
            started_at,
            duration_us: outcome.duration.as_micros() as i64,
            outcome: match &outcome.result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.kind().to_string(),
            },
            error: outcome.result.as_ref().err().map(|e| e.to_string()),
            output_bytes: outcome.result.as_ref().map(|o| o.len() as i64).unwrap_or(0),
            logs: outcome.logs.clone(),
            stdout: outcome.stdout.clone(),
            stderr: outcome.stderr.clone(),
            outbound: outcome.outbound.clone(),
        };
        crate::metrics::record_invocation(&record);
        let duration_us = record.duration_us;
        // 0 (no id to answer with) when the record has none: before the answer, it was
        // held back by another process's lock (the recorder stores it later and logs
        // that) or could not be stored; after it, the process had no id to give (see
        // `Recorder::record_after`).
        let id = match when {
            RecordWhen::AfterAnswer => self.recorder.record_after(record).unwrap_or(0),
            RecordWhen::BeforeAnswer => match self.recorder.record(record).await {
                Ok(id) => id.unwrap_or(0),
                Err(e) => {
                    tracing::error!(error = %e, "could not record the invocation");
                    0
                }
            },
        };
        match &outcome.result {
            Ok(_) => tracing::info!(
                function = name,
                version = row.version,
                duration_us,
                "invocation ok"
            ),
            Err(e) => tracing::info!(
                function = name,
                version = row.version,
                outcome = e.kind(),
                "invocation failed"
            ),
        }
        Ok(Invocation {
            id,
            function: name.to_string(),
            version: row.version,
            result: outcome.result,
            logs: outcome.logs,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            outbound: outcome.outbound,
            duration_us: outcome.duration.as_micros() as u64,
        })
    }
}

/// When an invocation's record is committed: before its result is answered, or after.
#[derive(Debug, Clone, Copy)]
enum RecordWhen {
    BeforeAnswer,
    AfterAnswer,
}

/// An invocation's storage failure: retryable when another process held the lock.
fn storage_fault(e: &crate::storage::StorageError) -> InvokeError {
    if e.is_busy() {
        InvokeError::Busy("another process held the database's lock too long; retry shortly".into())
    } else {
        InvokeError::Host(e.to_string())
    }
}

/// An upload's grant changes: reset first if asked, then the grants given.
fn grant_change(options: &UploadOptions) -> crate::storage::GrantChange {
    crate::storage::GrantChange {
        reset: options.reset_grants,
        add: options.grants.clone(),
    }
}
