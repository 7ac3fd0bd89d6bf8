//! `keyhole:function/http`: converts between the WIT types and the connection gateway,
//! which does every check and the credential injection.

use crate::connections::{OutboundRequest, SendError};
use crate::runtime::bindings::http::{Error, Host, Request, Response};
use crate::runtime::state::InvocationState;

impl Host for InvocationState {
    async fn send(
        &mut self,
        connection: String,
        request: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let Some(gateway) = self.http.gateway.clone() else {
            // No connection store at all: the true answer for a function with no grants.
            return Ok(Err(Error::AccessDenied));
        };
        let request = OutboundRequest {
            method: request.method,
            target: request.target,
            query: request.query,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        let result = gateway.send(&mut self.http, &connection, request).await;
        Ok(result
            .map(|r| Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(|e| match e {
                SendError::AccessDenied => Error::AccessDenied,
                SendError::NotConnected => Error::NotConnected,
                SendError::ForbiddenDestination(why) => Error::ForbiddenDestination(why),
                SendError::InvalidRequest(why) => Error::InvalidRequest(why),
                SendError::Timeout => Error::Timeout,
                SendError::TooLarge => Error::TooLarge,
                SendError::TooManyRequests => Error::TooManyRequests,
                SendError::UpstreamUnreachable(why) => Error::UpstreamUnreachable(why),
            }))
    }
}
