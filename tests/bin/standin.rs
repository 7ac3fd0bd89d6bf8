//! `keyhole-standin`: loopback stand-ins for the README demo, so the YouTube comment
//! watcher runs end to end without Google or a real webhook. It serves the suite's
//! `FakeYouTube` (one video with a few comments) and a `WebhookReceiver` on fixed
//! `127.0.0.1` ports, plus a small control surface, until it is killed:
//!
//! - `POST /control/comment?text=...[&author=...][&video=...]` on the YouTube port adds a
//!   comment (the newest) and answers `{"id", "video", "comments"}`;
//! - `GET /control/received` on the webhook port answers every POST received so far, as
//!   `[{"path", "status", "body"}]` (the body as JSON when it is JSON).
//!
//! Everything else is forwarded to the harness servers unchanged (they bind ephemeral
//! ports of their own; the fixed ports are thin fronts so the demo knows where to go).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use keyhole_tests::webhook_receiver::WebhookReceiver;
use keyhole_tests::youtube_api::FakeYouTube;
use serde_json::{Value, json};

const USAGE: &str = concat!(
    "usage: keyhole-standin --api-key KEY [--youtube-port PORT] [--webhook-port PORT] [--video ID]\n",
    "  --api-key KEY        the API key the YouTube stand-in accepts (query parameter `key`)\n",
    "  --youtube-port PORT  loopback port of the YouTube Data API stand-in (default 0: any free)\n",
    "  --webhook-port PORT  loopback port of the webhook receiver (default 0: any free)\n",
    "  --video ID           the video that starts with comments (default dQw4w9WgXcQ)",
);

/// The comments the demo video starts with, oldest first: (author, text, likes, replies).
const SEED_COMMENTS: [(&str, &str, u64, u64); 3] = [
    ("Ada", "First! This never gets old.", 12, 2),
    ("Grace", "Watching this in 2026, still a classic.", 7, 0),
    ("Linus", "The bass line at 0:43 is perfect.", 3, 1),
];

struct Options {
    api_key: String,
    youtube_port: u16,
    webhook_port: u16,
    video: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        api_key: String::new(),
        youtube_port: 0,
        webhook_port: 0,
        video: "dQw4w9WgXcQ".to_owned(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let port = |v: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("{flag}: not a port: {v}"))
        };
        match flag.as_str() {
            "--api-key" => options.api_key = value,
            "--youtube-port" => options.youtube_port = port(&value)?,
            "--webhook-port" => options.webhook_port = port(&value)?,
            "--video" => options.video = value,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.api_key.is_empty() {
        return Err("--api-key is required".to_owned());
    }
    Ok(options)
}

/// What the YouTube front needs: the fake itself (for `/control`) and where to forward.
struct YouTubeFront {
    fake: FakeYouTube,
    video: String,
    client: reqwest::Client,
}

struct WebhookFront {
    receiver: WebhookReceiver,
    client: reqwest::Client,
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("keyhole-standin: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Bind both fixed ports before serving anything: once either answers, both do.
    let bind = |port: u16| {
        TcpListener::bind(("127.0.0.1", port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))
    };
    let (youtube_listener, webhook_listener) =
        match bind(options.youtube_port).and_then(|y| Ok((y, bind(options.webhook_port)?))) {
            Ok(pair) => pair,
            Err(message) => {
                eprintln!("keyhole-standin: {message}");
                return ExitCode::FAILURE;
            }
        };

    let fake = FakeYouTube::start();
    fake.add_api_key(options.api_key);
    for (author, text, likes, replies) in SEED_COMMENTS {
        fake.add_comment(&options.video, author, text, likes, replies);
    }
    // Forwarding never follows a redirect: the fronts pass answers through as they are.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let youtube = Arc::new(YouTubeFront {
        fake,
        video: options.video.clone(),
        client: client.clone(),
    });
    let webhook = Arc::new(WebhookFront {
        receiver: WebhookReceiver::start(),
        client,
    });

    let youtube_router = Router::new()
        .route("/control/comment", post(add_comment))
        .fallback(forward_youtube)
        .with_state(youtube);
    let webhook_router = Router::new()
        .route("/control/received", get(received))
        .fallback(forward_webhook)
        .with_state(webhook);
    let youtube_addr = local_addr(&youtube_listener);
    let webhook_addr = local_addr(&webhook_listener);
    let youtube_task = serve(youtube_listener, youtube_router);
    let webhook_task = serve(webhook_listener, webhook_router);

    println!("youtube  http://{youtube_addr}  (base URL for the youtube-api-key preset)");
    println!(
        "         video {}, {} comments",
        options.video,
        SEED_COMMENTS.len()
    );
    println!(
        "         add one: curl -X POST 'http://{youtube_addr}/control/comment?author=Ann&text=Hello'"
    );
    println!("webhook  http://{webhook_addr}/hook  (any path; the URL for the webhook preset)");
    println!("         received: curl http://{webhook_addr}/control/received");
    println!("ready");

    // Runs until killed; a server that stops on its own is an error worth exiting for.
    let result = tokio::select! {
        r = youtube_task => r,
        r = webhook_task => r,
    };
    eprintln!("keyhole-standin: a server stopped: {result:?}");
    ExitCode::FAILURE
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("bound listener has an address")
}

fn serve(listener: TcpListener, router: Router) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, router).await
    })
}

/// `POST /control/comment?text=...&author=...&video=...`: adds the video's newest comment.
async fn add_comment(
    State(front): State<Arc<YouTubeFront>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(text) = query.get("text").filter(|t| !t.is_empty()) else {
        let error = json!({"error": "give the comment as ?text=...(&author=...&video=...)"});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    let video = query.get("video").unwrap_or(&front.video);
    let author = query.get("author").map_or("viewer", String::as_str);
    let id = front.fake.add_comment(video, author, text, 0, 0);
    let comments = front.fake.comment_count(video);
    Json(json!({"id": id, "video": video, "comments": comments})).into_response()
}

/// `GET /control/received`: every POST the webhook receiver got, oldest first.
async fn received(State(front): State<Arc<WebhookFront>>) -> Json<Value> {
    let all = front.receiver.received();
    Json(Value::Array(
        all.iter()
            .map(|r| {
                let body = r.json.clone().unwrap_or_else(|| r.body_text().into());
                json!({"path": r.path, "status": r.status, "body": body})
            })
            .collect(),
    ))
}

async fn forward_youtube(
    State(front): State<Arc<YouTubeFront>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let base = front.fake.base_url();
    forward(&front.client, &base, method, &uri, headers, body).await
}

async fn forward_webhook(
    State(front): State<Arc<WebhookFront>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let base = front.receiver.base_url();
    forward(&front.client, &base, method, &uri, headers, body).await
}

/// Sends the request on to `base` (same method, path, query, headers and body) and
/// passes the answer back, minus the hop-by-hop headers the servers set again.
async fn forward(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    uri: &Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!("{base}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
    for name in [header::HOST, header::CONTENT_LENGTH, header::CONNECTION] {
        headers.remove(name);
    }
    let sent = client
        .request(method, &target)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            let message = format!("stand-in could not reach its server: {}", e.without_url());
            return (StatusCode::BAD_GATEWAY, message).into_response();
        }
    };
    let status = answer.status();
    let mut out_headers = answer.headers().clone();
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ] {
        out_headers.remove(name);
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, out_headers, bytes).into_response()
}
