//! The gateway's outbound HTTP client: hyper's pooled client over rustls, HTTP/1.1 only.
//!
//! The gateway sends each request exactly as it built it and reads the answer itself, so
//! it uses hyper's client directly rather than reqwest's, which on every request also
//! copies the headers (credentials included) for redirects it would not follow, parses
//! the URL twice more for that redirect layer, and wraps the answer. It is set up as
//! reqwest's builder set it up for the gateway: no redirects (hyper follows none), no
//! proxy (it reads no proxy variables), 10 s to open a connection (DNS, TCP and TLS),
//! TCP keepalive (15 s, 3 probes) and a 30 s `TCP_USER_TIMEOUT` so a pooled connection a
//! middlebox dropped fails fast, TLS with the Mozilla roots (`webpki-roots`) offering
//! ALPN `http/1.1`, TCP_NODELAY, an idle connection closed after 90 s, and the same
//! `User-Agent` and `Accept` defaults.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};

use crate::util::error_chain;

/// The body type the gateway sends: the whole request body, already in memory.
pub type OutboundBody = http_body_util::Full<hyper::body::Bytes>;

/// One pooled client, shared by every invocation (connections are kept per origin).
pub type Client = Pooled<Connector, OutboundBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long opening a connection (DNS, TCP and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive: first probe after this much silence, then one every this long.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Unacknowledged data older than this closes the connection (Linux).
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// `User-Agent` unless the guest set one.
const AGENT: &str = concat!("keyhole/", env!("CARGO_PKG_VERSION"));

/// The shared outbound client. HTTPS is verified against the Mozilla root set; plain HTTP
/// is allowed (a connection's origins decide where a call may go, not this client).
pub fn build_client() -> Client {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(KEEPALIVE));
    tcp.set_keepalive_interval(Some(KEEPALIVE));
    tcp.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    tcp.set_tcp_user_timeout(Some(USER_TIMEOUT));
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports rustls' default protocol versions")
    .with_webpki_roots()
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pooled::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(Connector(HttpsConnector::from((tcp, tls))))
}

/// The TLS connector under one deadline for DNS, TCP and the handshake together. (The
/// pool may finish opening a connection after the call that asked for it got another,
/// outside any request's timeout: this bounds that too.)
#[derive(Clone)]
pub struct Connector(HttpsConnector<HttpConnector>);

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the connection did not open within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                )
                .into()),
            }
        })
    }
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
    error_chain(e).any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// `e` and every error under it, joined with `: `.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
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
            describe(&timed_out),
            "client error (Connect): connect timed out"
        );
        let refused = Outer(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!is_timeout(&refused));
    }

    /// An `https` call goes over TLS (SNI set, ALPN `http/1.1` offered) and checks the
    /// server's certificate: a server on 127.0.0.1 with a self-signed certificate for
    /// `localhost` gets a ClientHello, then the client refuses the certificate and sends
    /// nothing more.
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                    .await
                    .expect("a TLS ClientHello, not plain HTTP");
            let hello = start.client_hello();
            let sni = hello.server_name().map(str::to_string);
            let alpn: Vec<Vec<u8>> = hello
                .alpn()
                .into_iter()
                .flatten()
                .map(<[u8]>::to_vec)
                .collect();
            // The handshake's outcome on the server's side: the client's alert.
            let handshake = start.into_stream(Arc::new(config)).await.map(drop);
            (sni, alpn, handshake)
        });

        let client = build_client();
        let request = hyper::Request::get(format!("https://localhost:{port}/"))
            .body(OutboundBody::default())
            .unwrap();
        let err = client
            .request(request)
            .await
            .expect_err("a self-signed certificate must be refused");
        let message = describe(&err);
        assert!(
            message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
            "{message}"
        );
        let (sni, alpn, handshake) = server.await.unwrap();
        assert_eq!(sni.as_deref(), Some("localhost"), "SNI");
        assert_eq!(alpn, [b"http/1.1".to_vec()], "ALPN");
        assert!(
            handshake.is_err(),
            "the server saw a completed handshake: the client accepted the certificate"
        );
    }
}
