//! The gateway's outbound HTTP client: hyper's pooled client over rustls, HTTP/1.1 only.
//!
//! The gateway sends each request exactly as it built it and reads the answer itself, so
//! it uses hyper's client directly rather than reqwest's, which on every request also
//! copies the headers (credentials included) for redirects it would not follow, parses
//! the URL twice more for that redirect layer, and wraps the answer. What reqwest's
//! builder set for the gateway, this sets the same way: no redirects (hyper follows
//! none), no proxy (it reads no proxy variables), a 10 s connect timeout, TLS with the
//! Mozilla roots (`webpki-roots`, as reqwest's `rustls-tls`), TCP_NODELAY, an idle
//! connection closed after 90 s, and the same `User-Agent` and `Accept` defaults.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};

/// The body type the gateway sends: the whole request body, already in memory.
pub type OutboundBody = http_body_util::Full<hyper::body::Bytes>;

/// One pooled client, shared by every invocation (connections are kept per origin).
pub type Client = Pooled<HttpsConnector<HttpConnector>, OutboundBody>;

/// How long a connection may take to open (TCP and TLS) before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// `User-Agent` unless the guest set one.
const AGENT: &str = concat!("keyhole/", env!("CARGO_PKG_VERSION"));

/// The shared outbound client. HTTPS is verified against the Mozilla root set; plain HTTP
/// is allowed (a connection's origins decide where a call may go, not this client).
pub fn build_client() -> Client {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("ring supports rustls' default protocol versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Pooled::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// The defaults a request gets for headers it does not carry.
pub(crate) fn add_default_headers(headers: &mut HeaderMap) {
    headers
        .entry(USER_AGENT)
        .or_insert(HeaderValue::from_static(AGENT));
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
}

/// Whether `e` (or an error under it) is an I/O timeout: a connection that did not open
/// within [`CONNECT_TIMEOUT`].
pub(crate) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// `e` and every error under it, joined with `: `.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        add_default_headers(&mut headers);
        assert_eq!(headers[ACCEPT], "application/json");
        assert_eq!(headers[USER_AGENT], AGENT);
    }

    #[test]
    fn a_connect_timeout_is_found_under_the_client_error() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Outer(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ));
        assert!(is_timeout(&timed_out));
        assert_eq!(
            chain(&timed_out),
            "client error (Connect): connect timed out"
        );
        let refused = Outer(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!is_timeout(&refused));
    }

    /// An `https` call goes over TLS and checks the server's certificate: a server on
    /// 127.0.0.1 with a self-signed certificate for `localhost` gets a TLS handshake
    /// from the client, which then refuses the certificate and sends nothing more.
    #[tokio::test]
    async fn https_is_tls_with_the_certificate_checked() {
        use std::sync::Arc;
        use tokio_rustls::rustls;

        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // The handshake's outcome on the server's side: the client's alert.
            acceptor.accept(tcp).await.map(drop)
        });

        let client = build_client();
        let request = hyper::Request::get(format!("https://localhost:{port}/"))
            .body(OutboundBody::default())
            .unwrap();
        let err = client
            .request(request)
            .await
            .expect_err("a self-signed certificate must be refused");
        let message = chain(&err);
        assert!(
            message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
            "{message}"
        );
        let handshake = server.await.unwrap();
        assert!(
            handshake.is_err(),
            "the server saw a completed handshake: the client accepted the certificate"
        );
    }
}
