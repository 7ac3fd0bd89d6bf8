//! Host implementations of the WIT interfaces, one file per interface.

mod http;
mod log;
