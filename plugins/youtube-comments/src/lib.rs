//! Lists a YouTube video's newest top-level comments through a named connection,
//! following `nextPageToken` until it has `max` of them; the connection supplies
//! the credentials (an API key or an OAuth token), never this function.

use keyhole_sdk::{Connection, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most comments one run returns: five full pages, well inside the host's request budget.
const MAX_COMMENTS: usize = 500;
/// YouTube's largest `maxResults` for `commentThreads.list`.
const PAGE_SIZE: usize = 100;

#[derive(Deserialize)]
struct Input {
    video_id: String,
    #[serde(default = "default_max")]
    max: usize,
    #[serde(default = "default_connection")]
    connection: String,
}

fn default_max() -> usize {
    20
}

fn default_connection() -> String {
    "youtube".to_owned()
}

#[derive(Serialize)]
struct Output {
    video_id: String,
    comments: Vec<Comment>,
    count: usize,
}

#[derive(Serialize)]
struct Comment {
    id: String,
    author: String,
    text: String,
    published_at: String,
    like_count: u64,
    reply_count: u64,
}

#[keyhole_sdk::function]
fn run(input: Input) -> Result<Output, Error> {
    let video = input.video_id.trim();
    if video.is_empty() {
        return Err(Error::msg("youtube: video_id must not be empty"));
    }
    let max = input.max.min(MAX_COMMENTS);
    let youtube = Connection::new(&input.connection);
    let mut comments = Vec::new();
    let mut page_token: Option<String> = None;
    while comments.len() < max {
        let page_size = (max - comments.len()).min(PAGE_SIZE);
        let mut request = youtube
            .get("/youtube/v3/commentThreads")
            .query("part", "snippet")
            .query("videoId", video)
            .query("order", "time")
            .query("textFormat", "plainText")
            .query("maxResults", page_size.to_string());
        if let Some(token) = &page_token {
            request = request.query("pageToken", token);
        }
        let response = request
            .send()
            .map_err(|e| Error::msg(format!("youtube: {e}")))?;
        if !response.is_success() {
            return Err(api_error(response.status(), &response.text(), video));
        }
        let page: Value = response.json()?;
        let items = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        comments.extend(items.iter().map(|thread| {
            let top = &thread["snippet"]["topLevelComment"];
            let s = &top["snippet"];
            // Google only guarantees `textOriginal` to the comment's author.
            let text = s["textOriginal"].as_str().or(s["textDisplay"].as_str());
            Comment {
                id: string(&top["id"]),
                author: string(&s["authorDisplayName"]),
                text: text.unwrap_or_default().to_owned(),
                published_at: string(&s["publishedAt"]),
                like_count: s["likeCount"].as_u64().unwrap_or(0),
                reply_count: thread["snippet"]["totalReplyCount"].as_u64().unwrap_or(0),
            }
        }));
        // An empty page with a token would otherwise spin until the request budget ends.
        match page["nextPageToken"].as_str() {
            Some(token) if !items.is_empty() => page_token = Some(token.to_owned()),
            _ => break,
        }
    }
    comments.truncate(max);
    Ok(Output {
        video_id: video.to_owned(),
        count: comments.len(),
        comments,
    })
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Turns a non-2xx answer in Google's error format into a message naming the reason.
fn api_error(status: u16, body: &str, video: &str) -> Error {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let reason = parsed["error"]["errors"][0]["reason"]
        .as_str()
        .unwrap_or("");
    let message = match parsed["error"]["message"].as_str() {
        Some(m) => m.to_owned(),
        None => body.chars().take(200).collect(),
    };
    Error::msg(match reason {
        "commentsDisabled" => {
            format!("youtube: comments are disabled for video {video} ({reason})")
        }
        "videoNotFound" => format!("youtube: video {video} not found ({reason})"),
        "quotaExceeded" | "dailyLimitExceeded" => {
            format!("youtube: daily quota exceeded ({reason})")
        }
        "" if status == 401 => format!("youtube: not authorized (401): {message}"),
        _ if status == 401 => format!("youtube: not authorized (401 {reason}): {message}"),
        "" if message.trim().is_empty() => format!("youtube: HTTP {status}"),
        "" => format!("youtube: HTTP {status}: {message}"),
        _ => format!("youtube: HTTP {status} ({reason}): {message}"),
    })
}
