//! `keyhole:function@0.1.0` served by the 0.2.0 implementation: same shapes, distinct
//! generated types, so each call converts and delegates.

use crate::runtime::bindings::v0_1::keyhole::function0_1_0::{http as old_http, log as old_log};
use crate::runtime::bindings::{http, log};
use crate::runtime::state::InvocationState;

impl old_http::Host for InvocationState {
    async fn send(
        &mut self,
        connection: String,
        r: old_http::Request,
    ) -> wasmtime::Result<Result<old_http::Response, old_http::Error>> {
        let request = http::Request {
            method: r.method,
            target: r.target,
            query: r.query,
            headers: r.headers,
            body: r.body,
            timeout_ms: r.timeout_ms,
        };
        let result = http::Host::send(self, connection, request).await?;
        Ok(result
            .map(|r| old_http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(|e| match e {
                http::Error::AccessDenied => old_http::Error::AccessDenied,
                http::Error::NotConnected => old_http::Error::NotConnected,
                http::Error::ForbiddenDestination(s) => old_http::Error::ForbiddenDestination(s),
                http::Error::InvalidRequest(s) => old_http::Error::InvalidRequest(s),
                http::Error::Timeout => old_http::Error::Timeout,
                http::Error::TooLarge => old_http::Error::TooLarge,
                http::Error::TooManyRequests => old_http::Error::TooManyRequests,
                http::Error::UpstreamUnreachable(s) => old_http::Error::UpstreamUnreachable(s),
            }))
    }
}

impl old_log::Host for InvocationState {
    async fn log(&mut self, level: old_log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            old_log::Level::Trace => log::Level::Trace,
            old_log::Level::Debug => log::Level::Debug,
            old_log::Level::Info => log::Level::Info,
            old_log::Level::Warn => log::Level::Warn,
            old_log::Level::Error => log::Level::Error,
        };
        log::Host::log(self, level, message).await
    }
}
