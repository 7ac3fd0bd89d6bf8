//! `FakeYouTube`: a loopback stand-in for the YouTube Data API v3 `commentThreads.list`
//! (`GET /youtube/v3/commentThreads`) that authenticates, paginates and fails the way
//! Google documents, so a plugin can be tested end to end through keyhole.
//!
//! Error bodies use Google's JSON format: `{"error": {"code", "message", "errors":
//! [{"message", "domain", "reason", ...}], "status"}}`. Which status and reason answer
//! what follows Google's "Standard error responses" (global domain) page, the YouTube
//! "Errors" page and the `commentThreads.list` reference; each case notes its source.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fake_api::strip_scheme;
use crate::server::{RecordedRequest, RequestLog, TestServer, decode_pairs, record};

/// `commentThreads.list`, what the fake is for.
pub const COMMENT_THREADS_PATH: &str = "/youtube/v3/commentThreads";
/// `i18nRegions.list`, the one-unit request the `youtube-api-key` preset verifies with.
pub const I18N_REGIONS_PATH: &str = "/youtube/v3/i18nRegions";
/// `maxResults` when the request names none (the `commentThreads.list` default).
pub const DEFAULT_MAX_RESULTS: usize = 20;
/// Largest `maxResults` Google accepts for `commentThreads.list`.
pub const MAX_MAX_RESULTS: usize = 100;
/// `publishedAt` of the first comment added; each later one is a minute newer.
const FIRST_PUBLISHED_UNIX: i64 = 1_795_860_000; // 2026-11-28T10:00:00Z

/// One top-level comment (a thread without replies loaded).
#[derive(Clone, Debug)]
struct StoredComment {
    id: String,
    author: String,
    text: String,
    likes: u64,
    replies: u64,
    published_unix: i64,
}

#[derive(Default)]
struct Video {
    channel_id: String,
    comments_disabled: bool,
    /// Oldest first; served newest first for `order=time`.
    comments: Vec<StoredComment>,
}

#[derive(Default)]
struct Model {
    api_keys: Vec<String>,
    bearer_tokens: Vec<String>,
    videos: HashMap<String, Video>,
    quota_exceeded: bool,
    hide_text_original: bool,
    /// Requests to let through before failing (`fail_after`).
    fail_skip: usize,
    /// Requests to fail after that, and with which status.
    fail_count: usize,
    fail_status: u16,
    next_seq: u64,
}

struct YtState {
    model: Mutex<Model>,
    log: Arc<RequestLog>,
}

/// A fake YouTube Data API on `127.0.0.1`; it stops when dropped.
///
/// It accepts no credentials until [`add_api_key`](Self::add_api_key) or
/// [`add_bearer_token`](Self::add_bearer_token) names some. Only
/// `GET /youtube/v3/commentThreads` and, for verifying a connection,
/// `GET /youtube/v3/i18nRegions` exist (other paths answer 404, other methods 405).
pub struct FakeYouTube {
    server: TestServer,
    state: Arc<YtState>,
}

impl FakeYouTube {
    /// Starts the fake on a thread of its own (no runtime needed).
    pub fn start() -> Self {
        let log = Arc::new(RequestLog::default());
        let state = Arc::new(YtState {
            model: Mutex::new(Model::default()),
            log: log.clone(),
        });
        let router = Router::new()
            .route(COMMENT_THREADS_PATH, get(comment_threads))
            .route(I18N_REGIONS_PATH, get(i18n_regions))
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(log, record));
        Self {
            server: TestServer::spawn(router),
            state,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the fake's root, above `/youtube/v3`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `base_url() + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.state.model.lock().unwrap()
    }

    /// Accepts `key=<key>` in the query.
    pub fn add_api_key(&self, key: impl Into<String>) {
        self.model().api_keys.push(key.into());
    }

    /// Accepts `Authorization: Bearer <token>`.
    pub fn add_bearer_token(&self, token: impl Into<String>) {
        self.model().bearer_tokens.push(token.into());
    }

    /// Forgets every accepted key and token (e.g. to simulate a revoked key).
    pub fn clear_credentials(&self) {
        let mut m = self.model();
        m.api_keys.clear();
        m.bearer_tokens.clear();
    }

    /// Adds a video with no comments (nothing changes if it exists).
    pub fn add_video(&self, video_id: &str) {
        let mut m = self.model();
        ensure_video(&mut m, video_id);
    }

    /// Adds a top-level comment to `video_id` (creating the video if needed) as its newest,
    /// and returns the comment id (which is also the thread id, as on YouTube).
    pub fn add_comment(
        &self,
        video_id: &str,
        author: &str,
        text: &str,
        likes: u64,
        replies: u64,
    ) -> String {
        let mut m = self.model();
        let seq = m.next_seq;
        m.next_seq += 1;
        let id = format!("Ugz{}4AaABAg", &digest(&format!("comment/{seq}"))[..19]);
        let comment = StoredComment {
            id: id.clone(),
            author: author.to_owned(),
            text: text.to_owned(),
            likes,
            replies,
            published_unix: FIRST_PUBLISHED_UNIX + 60 * seq as i64,
        };
        ensure_video(&mut m, video_id).comments.push(comment);
        id
    }

    /// Adds `n` comments by `user-1`… with text `comment 1`… (likes `i % 7`, replies
    /// `i % 3`), oldest first; returns their ids in the order added (the last is newest).
    pub fn add_comments(&self, video_id: &str, n: usize) -> Vec<String> {
        (1..=n)
            .map(|i| {
                let (author, text) = (format!("user-{i}"), format!("comment {i}"));
                self.add_comment(video_id, &author, &text, (i % 7) as u64, (i % 3) as u64)
            })
            .collect()
    }

    /// Turns comments off for `video_id` (creating it if needed): `commentThreads.list`
    /// then answers 403 `commentsDisabled`.
    pub fn set_comments_disabled(&self, video_id: &str) {
        ensure_video(&mut self.model(), video_id).comments_disabled = true;
    }

    /// While on, every authenticated request answers 403 `quotaExceeded`.
    pub fn set_quota_exceeded(&self, exceeded: bool) {
        self.model().quota_exceeded = exceeded;
    }

    /// Leaves `textOriginal` out of every comment, as Google does when the caller is not
    /// the comment's author and cannot see it; `textDisplay` is still sent.
    pub fn set_hide_text_original(&self, hide: bool) {
        self.model().hide_text_original = hide;
    }

    /// Fails the next `n` requests with `status` (500/503 `backendError`, 429
    /// `rateLimitExceeded`, other codes a generic reason), before checking anything else.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail_after(0, n, status);
    }

    /// Lets `ok` requests through, then fails the following `n` with `status`; e.g.
    /// `fail_after(1, 1, 503)` fails the second page of a paginated read.
    pub fn fail_after(&self, ok: usize, n: usize, status: u16) {
        let mut m = self.model();
        m.fail_skip = ok;
        m.fail_count = n;
        m.fail_status = status;
    }

    /// How many comments `video_id` has (0 for an unknown video).
    pub fn comment_count(&self, video_id: &str) -> usize {
        self.model()
            .videos
            .get(video_id)
            .map_or(0, |v| v.comments.len())
    }

    /// Every request received so far, in arrival order (authenticated or not).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.snapshot()
    }

    /// How many requests reached `commentThreads` (failed ones included).
    pub fn hits(&self) -> usize {
        self.state.log.hits(COMMENT_THREADS_PATH)
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.state.log.clear();
    }

    /// Stops the server and waits for in-flight requests (dropping it also stops it).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn ensure_video<'a>(m: &'a mut Model, video_id: &str) -> &'a mut Video {
    m.videos
        .entry(video_id.to_owned())
        .or_insert_with(|| Video {
            channel_id: channel_id(&format!("video/{video_id}")),
            ..Video::default()
        })
}

/// Base64url SHA-256 of `input`: the shape of Google's etags and ids.
fn digest(input: &str) -> String {
    B64URL.encode(Sha256::digest(input.as_bytes()))
}

fn channel_id(seed: &str) -> String {
    format!("UC{}", &digest(seed)[..22])
}

fn etag(value: &Value) -> String {
    digest(&value.to_string())[..27].to_owned()
}

/// A body in Google's error format. `domain`, `reason`, `status` as Google sends them.
fn google_error(code: u16, status: &str, domain: &str, reason: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "errors": [{ "message": message, "domain": domain, "reason": reason }],
            "status": status,
        }
    });
    let code = StatusCode::from_u16(code).expect("valid status code");
    (code, Json(body)).into_response()
}

fn bad_parameter(reason: &str, domain: &str, message: &str) -> Response {
    google_error(400, "INVALID_ARGUMENT", domain, reason, message)
}

/// Checks the key and the bearer token, each if present. What Google answers:
/// - no credentials at all: 403 `forbidden` / `PERMISSION_DENIED` ("Method doesn't allow
///   unregistered callers"), the current answer of YouTube Data API v3;
/// - a `key` that is not valid: 400 `keyInvalid` / `INVALID_ARGUMENT` ("API key not valid.
///   Please pass a valid API key."; the global-domain doc names the reason `keyInvalid`);
/// - a bearer token that is not valid: 401 `authError` / `UNAUTHENTICATED` with
///   `WWW-Authenticate: Bearer realm="https://accounts.google.com/", error="invalid_token"`.
fn authenticate(m: &Model, headers: &HeaderMap, pairs: &[(String, String)]) -> Option<Response> {
    let keys: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.as_str())
        .collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if keys.is_empty() && authorization.is_none() {
        return Some(google_error(
            403,
            "PERMISSION_DENIED",
            "global",
            "forbidden",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        ));
    }
    if !keys.is_empty() && !keys.iter().all(|k| m.api_keys.iter().any(|a| a == k)) {
        return Some(google_error(
            400,
            "INVALID_ARGUMENT",
            "global",
            "keyInvalid",
            "API key not valid. Please pass a valid API key.",
        ));
    }
    if let Some(value) = authorization {
        let valid =
            strip_scheme(value, "Bearer").is_some_and(|t| m.bearer_tokens.iter().any(|b| b == t));
        if !valid {
            let mut response = google_error(
                401,
                "UNAUTHENTICATED",
                "global",
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, \
                 login cookie or other valid authentication credential.",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            );
            return Some(response);
        }
    }
    None
}

/// YouTube "Errors" page, core API errors: quotaExceeded (403), domain youtube.quota.
fn quota_exceeded() -> Response {
    google_error(
        403,
        "PERMISSION_DENIED",
        "youtube.quota",
        "quotaExceeded",
        "The request cannot be completed because you have exceeded your \
         <a href=\"/youtube/v3/getting-started#quota\">quota</a>.",
    )
}

/// An injected transient failure, shaped like Google's for that status.
fn transient(status: u16) -> Response {
    let (grpc, reason, message) = match status {
        429 => (
            "RESOURCE_EXHAUSTED",
            "rateLimitExceeded",
            "Rate limit exceeded.",
        ),
        500 => ("INTERNAL", "backendError", "Backend Error"),
        503 => (
            "UNAVAILABLE",
            "backendError",
            "The service is currently unavailable.",
        ),
        _ => ("UNKNOWN", "injectedFailure", "Injected failure."),
    };
    google_error(status, grpc, "global", reason, message)
}

/// A page token: base64url of `offset:<n>`, so the same position always gets the same token.
fn page_token(offset: usize) -> String {
    B64URL.encode(format!("offset:{offset}"))
}

fn parse_page_token(token: &str) -> Option<usize> {
    let raw = B64URL.decode(token).ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// HTML-escapes `text` and turns newlines into `<br>`, as `textFormat=html` does.
fn to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (proleptic Gregorian, UTC).
fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn thread_json(
    video_id: &str,
    channel: &str,
    c: &StoredComment,
    html: bool,
    hide_original: bool,
) -> Value {
    let published = rfc3339(c.published_unix);
    let author_channel = channel_id(&format!("author/{}", c.author));
    let mut snippet = json!({
        "channelId": channel,
        "videoId": video_id,
        "textDisplay": if html { to_html(&c.text) } else { c.text.clone() },
        "textOriginal": c.text,
        "authorDisplayName": c.author,
        "authorProfileImageUrl": format!("https://yt3.ggpht.example/{author_channel}=s48"),
        "authorChannelUrl": format!("http://www.youtube.com/channel/{author_channel}"),
        "authorChannelId": { "value": author_channel },
        "canRate": true,
        "viewerRating": "none",
        "likeCount": c.likes,
        "publishedAt": published,
        "updatedAt": published,
    });
    if hide_original {
        snippet
            .as_object_mut()
            .expect("object")
            .remove("textOriginal");
    }
    let mut comment = json!({ "kind": "youtube#comment", "id": c.id, "snippet": snippet });
    comment["etag"] = json!(etag(&comment));
    let mut thread = json!({
        "kind": "youtube#commentThread",
        "id": c.id,
        "snippet": {
            "channelId": channel,
            "videoId": video_id,
            "topLevelComment": comment,
            "canReply": true,
            "totalReplyCount": c.replies,
            "isPublic": true,
        },
    });
    thread["etag"] = json!(etag(&thread));
    thread
}

async fn comment_threads(
    State(state): State<Arc<YtState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let pairs = decode_pairs(uri.query().unwrap_or("").as_bytes());
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut m = state.model.lock().unwrap();

    if m.fail_skip > 0 {
        m.fail_skip -= 1;
    } else if m.fail_count > 0 {
        m.fail_count -= 1;
        return transient(m.fail_status);
    }
    if let Some(denied) = authenticate(&m, &headers, &pairs) {
        return denied;
    }
    if m.quota_exceeded {
        return quota_exceeded();
    }

    // Common request errors: missingRequiredParameter (400).
    let Some(part) = param("part").filter(|p| !p.trim().is_empty()) else {
        return bad_parameter(
            "missingRequiredParameter",
            "youtube.parameter",
            "No value specified for required parameter: part",
        );
    };
    let parts: Vec<&str> = part.split(',').map(str::trim).collect();
    if let Some(unknown) = parts
        .iter()
        .find(|p| !matches!(**p, "id" | "snippet" | "replies"))
    {
        return bad_parameter("unknownPart", "youtube.part", &format!("'{unknown}'"));
    }
    let Some(video_id) = param("videoId") else {
        return bad_parameter(
            "missingRequiredParameter",
            "youtube.parameter",
            "No filter selected. Expected one of: allThreadsRelatedToChannelId, id, videoId",
        );
    };
    // Global-domain errors: invalidValue (400) for a value outside the documented range.
    let max_results = match param("maxResults") {
        None => DEFAULT_MAX_RESULTS,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_MAX_RESULTS).contains(&n) => n,
            _ => {
                return bad_parameter(
                    "invalidValue",
                    "global",
                    &format!("Invalid value '{raw}'. Values must be within the range: [1, 100]"),
                );
            }
        },
    };
    let order = param("order").unwrap_or("time");
    if !matches!(order, "time" | "relevance") {
        return bad_parameter(
            "invalidValue",
            "global",
            &format!("Invalid value '{order}'"),
        );
    }
    let html = match param("textFormat").unwrap_or("html") {
        "html" => true,
        "plainText" => false,
        other => {
            return bad_parameter(
                "invalidValue",
                "global",
                &format!("Invalid value '{other}'"),
            );
        }
    };
    let offset = match param("pageToken") {
        None | Some("") => 0,
        Some(token) => match parse_page_token(token) {
            Some(offset) => offset,
            // Common request errors: invalidPageToken (400).
            None => {
                return bad_parameter(
                    "invalidPageToken",
                    "youtube.parameter",
                    "The request specifies an invalid page token.",
                );
            }
        },
    };

    // commentThreads.list errors: videoNotFound (404), commentsDisabled (403).
    let hide_original = m.hide_text_original;
    let Some(video) = m.videos.get_mut(video_id) else {
        return google_error(
            404,
            "NOT_FOUND",
            "youtube.commentThread",
            "videoNotFound",
            "The video identified by the <code><a href=\"/youtube/v3/docs/commentThreads/list#videoId\">\
             videoId</a></code> parameter could not be found.",
        );
    };
    if video.comments_disabled {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "youtube.commentThread",
            "commentsDisabled",
            "The video identified by the <code><a href=\"/youtube/v3/docs/commentThreads/list#videoId\">\
             videoId</a></code> parameter has disabled comments.",
        );
    }

    let mut ordered: Vec<&StoredComment> = video.comments.iter().rev().collect();
    if order == "relevance" {
        // Stable: ties keep newest first.
        ordered.sort_by_key(|c| std::cmp::Reverse(c.likes));
    }
    let total = ordered.len();
    let start = offset.min(total);
    let end = (start + max_results).min(total);
    let items: Vec<Value> = ordered[start..end]
        .iter()
        .map(|c| {
            let mut thread = thread_json(video_id, &video.channel_id, c, html, hide_original);
            if !parts.contains(&"snippet") {
                thread.as_object_mut().expect("object").remove("snippet");
            }
            thread
        })
        .collect();
    let mut body = json!({
        "kind": "youtube#commentThreadListResponse",
        "pageInfo": { "totalResults": total, "resultsPerPage": max_results },
        "items": items,
    });
    if end < total {
        body["nextPageToken"] = json!(page_token(end));
    }
    body["etag"] = json!(etag(&body));
    Json(body).into_response()
}

/// `i18nRegions.list`: two regions, behind the same credential and quota checks.
async fn i18n_regions(State(state): State<Arc<YtState>>, headers: HeaderMap, uri: Uri) -> Response {
    let pairs = decode_pairs(uri.query().unwrap_or("").as_bytes());
    let m = state.model.lock().unwrap();
    if let Some(denied) = authenticate(&m, &headers, &pairs) {
        return denied;
    }
    if m.quota_exceeded {
        return quota_exceeded();
    }
    if !pairs.iter().any(|(k, v)| k == "part" && v == "snippet") {
        return bad_parameter(
            "missingRequiredParameter",
            "youtube.parameter",
            "No value specified for required parameter: part",
        );
    }
    let items: Vec<Value> = [("US", "United States"), ("DE", "Germany")]
        .into_iter()
        .map(|(gl, name)| {
            let mut region = json!({
                "kind": "youtube#i18nRegion",
                "id": gl,
                "snippet": { "gl": gl, "name": name },
            });
            region["etag"] = json!(etag(&region));
            region
        })
        .collect();
    let mut body = json!({ "kind": "youtube#i18nRegionListResponse", "items": items });
    body["etag"] = json!(etag(&body));
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(FIRST_PUBLISHED_UNIX), "2026-11-28T10:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_page_token(&page_token(230)), Some(230));
        assert_eq!(page_token(100), page_token(100));
        assert_eq!(parse_page_token("not a token"), None);
    }

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            to_html("a<b>&\"c\"\nd"),
            "a&lt;b&gt;&amp;&quot;c&quot;<br>d"
        );
    }

    fn get(yt: &FakeYouTube, query: &str, bearer: Option<&str>) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut request =
                reqwest::Client::new().get(format!("{}?{query}", yt.url(COMMENT_THREADS_PATH)));
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap())
        })
    }

    fn reason(body: &Value) -> &str {
        body["error"]["errors"][0]["reason"].as_str().unwrap()
    }

    #[test]
    fn pages_newest_first_with_stable_tokens() {
        let yt = FakeYouTube::start();
        yt.add_api_key("k1");
        let ids = yt.add_comments("v1", 5);
        let (status, page1) = get(&yt, "part=snippet&videoId=v1&maxResults=2&key=k1", None);
        assert_eq!(status, 200, "{page1}");
        assert_eq!(page1["kind"], "youtube#commentThreadListResponse");
        assert_eq!(page1["pageInfo"]["totalResults"], 5);
        assert_eq!(page1["items"][0]["id"], ids[4].as_str());
        let top = &page1["items"][0]["snippet"]["topLevelComment"];
        assert_eq!(top["snippet"]["textOriginal"], "comment 5");
        assert_eq!(top["snippet"]["publishedAt"], "2026-11-28T10:04:00Z");
        let token = page1["nextPageToken"].as_str().unwrap().to_owned();
        let (_, again) = get(&yt, "part=snippet&videoId=v1&maxResults=2&key=k1", None);
        assert_eq!(again["nextPageToken"], token.as_str());
        let (_, last) = get(
            &yt,
            &format!("part=snippet&videoId=v1&maxResults=3&key=k1&pageToken={token}"),
            None,
        );
        assert_eq!(last["items"].as_array().unwrap().len(), 3);
        assert_eq!(last["items"][2]["id"], ids[0].as_str());
        assert!(last.get("nextPageToken").is_none());
        // Relevance here: most likes first (comment i has i % 7 likes), ties newest first.
        let (_, relevant) = get(&yt, "part=snippet&videoId=v1&order=relevance&key=k1", None);
        let order: Vec<_> = relevant["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                t["snippet"]["topLevelComment"]["snippet"]["likeCount"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(order, [5, 4, 3, 2, 1]);
        assert_eq!(yt.hits(), 4);
    }

    #[test]
    fn errors_follow_google() {
        let yt = FakeYouTube::start();
        yt.add_api_key("k1");
        yt.add_bearer_token("t1");
        yt.add_video("v1");
        yt.set_comments_disabled("off");
        let cases = [
            ("part=snippet&videoId=v1", None, 403, "forbidden"),
            ("part=snippet&videoId=v1&key=bad", None, 400, "keyInvalid"),
            ("part=snippet&videoId=v1", Some("bad"), 401, "authError"),
            ("videoId=v1&key=k1", None, 400, "missingRequiredParameter"),
            (
                "part=snippet&videoId=v1&maxResults=101",
                Some("t1"),
                400,
                "invalidValue",
            ),
            (
                "part=snippet&videoId=v1&maxResults=0&key=k1",
                None,
                400,
                "invalidValue",
            ),
            (
                "part=snippet&videoId=v1&pageToken=zz&key=k1",
                None,
                400,
                "invalidPageToken",
            ),
            (
                "part=snippet&videoId=nope&key=k1",
                None,
                404,
                "videoNotFound",
            ),
            (
                "part=snippet&videoId=off&key=k1",
                None,
                403,
                "commentsDisabled",
            ),
        ];
        for (query, bearer, status, why) in cases {
            let (got, body) = get(&yt, query, bearer);
            assert_eq!((got, reason(&body)), (status, why), "{query}: {body}");
            assert_eq!(body["error"]["code"], status);
        }
        yt.set_quota_exceeded(true);
        let (got, body) = get(&yt, "part=snippet&videoId=v1&key=k1", None);
        assert_eq!((got, reason(&body)), (403, "quotaExceeded"));
        yt.set_quota_exceeded(false);
        yt.fail_after(1, 1, 503);
        assert_eq!(get(&yt, "part=snippet&videoId=v1&key=k1", None).0, 200);
        let (got, body) = get(&yt, "part=snippet&videoId=v1&key=k1", None);
        assert_eq!((got, reason(&body)), (503, "backendError"));
        assert_eq!(get(&yt, "part=snippet&videoId=v1", Some("t1")).0, 200);
    }
}
