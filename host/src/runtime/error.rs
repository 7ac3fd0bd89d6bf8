//! Typed errors for uploading and invoking a function.

use std::time::Duration;

/// Why an upload was refused. Each message names what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not a wasm binary at all.
    #[error(
        "not a WebAssembly file (it does not start with the \\0asm magic bytes); upload the .wasm a plugin build produces, e.g. target/wasm32-wasip2/release/NAME.wasm"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build the plugin with `cargo build --target wasm32-wasip2 --release` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The binary is malformed or cut short.
    #[error(
        "the component is malformed or truncated: {0}; rebuild the plugin and upload the complete file"
    )]
    Malformed(String),
    /// A valid component, but for another world.
    #[error(
        "this component is not a keyhole custom function: {0}; build it against the keyhole:function/custom-function world (the keyhole-sdk does this)"
    )]
    WrongWorld(String),
    /// Too large to accept.
    #[error("the component is {size} bytes, over the {limit}-byte upload limit")]
    TooLarge {
        /// Size of the upload.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Compilation failed for another reason.
    #[error("compiling the component failed: {0}")]
    Compile(String),
}

/// Why an invocation did not produce output. The host stays up in every case.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// No function by that name.
    #[error("no function named {0:?}; `keyhole functions list` shows what is uploaded")]
    NotFound(String),
    /// Input is not JSON.
    #[error("input is not valid JSON: {0}")]
    InvalidInput(String),
    /// Input over the cap.
    #[error("input is {size} bytes, over this function's {limit}-byte input limit")]
    InputTooLarge {
        /// Input size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Wall-clock limit reached.
    #[error("the function ran past its {}ms time limit and was stopped", .limit.as_millis())]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// Memory cap reached.
    #[error("the function tried to use more than its {limit}-byte memory limit and was stopped")]
    OutOfMemory {
        /// The limit.
        limit: u64,
    },
    /// Wasm stack exhausted.
    #[error("the function overflowed its stack (runaway recursion?) and was stopped")]
    StackOverflow,
    /// The guest panicked.
    #[error("the function panicked: {0}")]
    Panic(String),
    /// Any other trap.
    #[error("the function trapped: {0}")]
    Trap(String),
    /// The function returned `Err`.
    #[error("the function returned an error: {0}")]
    Guest(String),
    /// Output over the cap.
    #[error("the function's output is {size} bytes, over its {limit}-byte output limit")]
    OutputTooLarge {
        /// Output size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Output is not JSON.
    #[error("the function returned invalid JSON: {0}")]
    InvalidOutput(String),
    /// All instance slots busy and the wait queue is full.
    #[error("the host is at capacity; retry shortly")]
    AtCapacity,
    /// Another process held the database's lock too long; retrying later may work.
    #[error("{0}")]
    Busy(String),
    /// A host-side fault (storage, compilation cache, ...).
    #[error("host error: {0}")]
    Host(String),
}

impl InvokeError {
    /// A stable kebab-case name, stored as the invocation's outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not-found",
            Self::InvalidInput(_) => "invalid-input",
            Self::InputTooLarge { .. } => "input-too-large",
            Self::Timeout { .. } => "timeout",
            Self::OutOfMemory { .. } => "out-of-memory",
            Self::StackOverflow => "stack-overflow",
            Self::Panic(_) => "panic",
            Self::Trap(_) => "trap",
            Self::Guest(_) => "guest-error",
            Self::OutputTooLarge { .. } => "output-too-large",
            Self::InvalidOutput(_) => "invalid-output",
            Self::AtCapacity => "at-capacity",
            Self::Busy(_) => "busy",
            Self::Host(_) => "host-error",
        }
    }
}
