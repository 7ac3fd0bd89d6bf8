//! Host implementations of the WIT interfaces, one file per interface, plus the adapter
//! that serves components built against the frozen 0.1.0 package.

mod http;
pub(crate) mod kv;
mod legacy;
mod log;
