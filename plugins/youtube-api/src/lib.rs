//! YouTube Data API v3 `commentThreads.list` for keyhole plugins: a video's newest
//! top-level comments through a named connection, following `nextPageToken`, with
//! Google's error bodies turned into messages that name the reason. The connection
//! supplies the credentials (an API key or an OAuth token), never the plugin.
//!
//! The SDK's own errors (the host refusing the request, a timeout, an unreachable
//! upstream, a body that is not JSON) come back unchanged, so a caller can still tell
//! them apart with [`Error::kind`]; only the failures this crate finds itself (an empty
//! video id, Google's error answers) are [`Error::Message`]s, each starting `youtube: `.

use keyhole_sdk::{Connection, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most comments one call returns: five full pages, well inside the host's request budget.
pub const MAX_COMMENTS: usize = 500;
/// YouTube's largest `maxResults` for `commentThreads.list`.
pub const PAGE_SIZE: usize = 100;
/// Where `commentThreads.list` lives, relative to the API root (the connection's base URL).
pub const COMMENT_THREADS_PATH: &str = "/youtube/v3/commentThreads";

/// One top-level comment, as the plugins report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// The comment id (also its thread's id).
    pub id: String,
    /// `authorDisplayName`.
    pub author: String,
    /// Plain text: `textOriginal`, else `textDisplay`.
    pub text: String,
    /// RFC 3339 `publishedAt`.
    pub published_at: String,
    /// `likeCount`.
    pub like_count: u64,
    /// The thread's `totalReplyCount`.
    pub reply_count: u64,
}

/// The newest `max` top-level comments on `video`, newest first (`order=time`), fetched
/// a page at a time through `youtube`. `max` is capped at [`MAX_COMMENTS`]; 0 sends
/// nothing. Any failure, on any page, fails the call: an SDK error as the SDK gave it
/// (`not-connected`, `timeout`, `upstream-unreachable`, ...), a non-2xx answer as a
/// message naming Google's reason.
pub fn comment_threads(
    youtube: &Connection,
    video: &str,
    max: usize,
) -> Result<Vec<Comment>, Error> {
    if video.is_empty() {
        return Err(Error::msg("youtube: video_id must not be empty"));
    }
    let max = max.min(MAX_COMMENTS);
    let mut comments = Vec::new();
    let mut page_token: Option<String> = None;
    while comments.len() < max {
        let page_size = (max - comments.len()).min(PAGE_SIZE);
        let mut request = youtube
            .get(COMMENT_THREADS_PATH)
            .query("part", "snippet")
            .query("videoId", video)
            .query("order", "time")
            .query("textFormat", "plainText")
            .query("maxResults", page_size.to_string());
        if let Some(token) = &page_token {
            request = request.query("pageToken", token);
        }
        let response = request.send()?;
        if !response.is_success() {
            return Err(api_error(response.status(), &response.text(), video));
        }
        let page: Value = response.json()?;
        let items = page["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        comments.extend(items.iter().map(comment));
        // An empty page with a token would otherwise spin until the request budget ends.
        match page["nextPageToken"].as_str() {
            Some(token) if !items.is_empty() => page_token = Some(token.to_owned()),
            _ => break,
        }
    }
    comments.truncate(max);
    Ok(comments)
}

/// One `commentThread` resource as a [`Comment`]; missing fields become empty or 0.
fn comment(thread: &Value) -> Comment {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thread_fields_fall_back_to_text_display() {
        let thread = json!({"snippet": {"totalReplyCount": 2, "topLevelComment": {
            "id": "c1",
            "snippet": {"authorDisplayName": "Ann", "textDisplay": "hi", "likeCount": 3,
                        "publishedAt": "2026-11-28T10:00:00Z"}}}});
        let c = comment(&thread);
        assert_eq!(
            (c.id.as_str(), c.author.as_str(), c.text.as_str()),
            ("c1", "Ann", "hi")
        );
        assert_eq!((c.like_count, c.reply_count), (3, 2));
        assert_eq!(comment(&json!({})).id, "");
    }

    #[test]
    fn google_errors_name_their_reason() {
        let body = |reason: &str| {
            json!({"error": {"message": "m", "errors": [{"reason": reason}]}}).to_string()
        };
        let shown = |status, body: &str| api_error(status, body, "v").to_string();
        assert_eq!(
            shown(403, &body("commentsDisabled")),
            "youtube: comments are disabled for video v (commentsDisabled)"
        );
        assert_eq!(
            shown(503, &body("backendError")),
            "youtube: HTTP 503 (backendError): m"
        );
        assert_eq!(shown(401, "nope"), "youtube: not authorized (401): nope");
        assert_eq!(shown(502, ""), "youtube: HTTP 502");
    }
}
