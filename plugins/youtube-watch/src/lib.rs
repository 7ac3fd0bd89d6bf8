//! Watches a YouTube video and posts each new top-level comment to a webhook connection,
//! remembering in its state (`seen/<video_id>`, the last [`MAX_SEEN`] ids) what it has seen.
//!
//! Input `{"video_id", "notify": "<connection>", "connection"?: "youtube", "baseline"?:
//! "remember" | "notify-all", "format"?: "generic" | "slack", "max"?: 100,
//! "notify_max"?: 20}`; output `{"video_id", "notified", "new" (unseen comments found),
//! "pending" (left for the next runs by `notify_max`), "baseline", "failed"?}`.
//! `generic` posts `{"text", "video_id", "comment": {...}}`, `slack` posts `{"text"}`.
//!
//! - **Baseline.** The first run for a video (no state yet) with `remember`, the default,
//!   notifies nothing and remembers every current comment, so switching the watcher on
//!   does not flood the channel; `notify-all` posts them all instead.
//! - **Fetch first.** The newest `max` comments (at most 500) are all read before anything
//!   is posted: an upstream error fails the run with nothing notified, and the host
//!   discards a failed run's state writes, so the state stays as it was.
//! - **Then notify, oldest first,** marking each comment seen once its POST got a 2xx,
//!   at most `notify_max` a run: the rest stay unseen and go out with the next runs. A
//!   run's state is saved only if it ends well, so a run that posted too much to finish
//!   in its time limit would post it all again next time; the cap keeps a run short.
//! - **A failed POST stops the run but still answers `Ok`**, with `failed` set: an `Err`
//!   would discard the marks of the comments already posted, and they would be posted
//!   again. The failed comment and the rest stay unseen and are retried next run. (Should
//!   the invocation itself die after a POST, a timeout say, that comment is posted again:
//!   delivery is at least once, never silently lost.)
//!
//! More than `max` new comments between two runs loses the oldest of them.

use std::collections::HashSet;

use keyhole_sdk::{Connection, Error, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use youtube_api::Comment;

/// Seen ids kept per video: ~60 KB of JSON, far under the host's 256 KiB per value, and
/// four times the most comments one run can fetch.
const MAX_SEEN: usize = 2000;
/// Comments looked at per run when the input names no `max`: one page.
const DEFAULT_MAX: usize = 100;
/// Notifications per run when the input names no `notify_max`: at a slow webhook's
/// ~200 ms a POST, 4 s, well inside the default 10 s time limit.
const DEFAULT_NOTIFY_MAX: usize = 20;

#[derive(Deserialize)]
struct Input {
    video_id: String,
    notify: String,
    connection: Option<String>,
    #[serde(default)]
    baseline: Baseline,
    #[serde(default)]
    format: Format,
    max: Option<usize>,
    notify_max: Option<usize>,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Baseline {
    #[default]
    Remember,
    NotifyAll,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum Format {
    #[default]
    Generic,
    Slack,
}

#[derive(Serialize)]
struct Output {
    video_id: String,
    notified: usize,
    new: usize,
    pending: usize,
    baseline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
}

#[keyhole_sdk::function]
fn run(input: Input) -> Result<Output, Error> {
    let video = input.video_id.trim();
    let youtube = Connection::new(input.connection.as_deref().unwrap_or("youtube"));
    let max = input.max.unwrap_or(DEFAULT_MAX);
    let notify_max = input.notify_max.unwrap_or(DEFAULT_NOTIFY_MAX);
    if notify_max == 0 {
        return Err(Error::msg(
            "notify_max must be at least 1 (it is how many comments one run posts)",
        ));
    }
    let mut comments = youtube_api::comment_threads(&youtube, video, max)?;
    comments.reverse(); // oldest first
    let key = format!("seen/{video}");
    let stored: Option<Vec<String>> = kv::get_json(&key)?;
    let baseline = stored.is_none();
    let mut seen = stored.unwrap_or_default();
    let known: HashSet<&str> = seen.iter().map(String::as_str).collect();
    let fresh: Vec<&Comment> = comments
        .iter()
        .filter(|c| !known.contains(c.id.as_str()))
        .collect();
    let (new, mut notified, mut failed) = (fresh.len(), 0, None);
    let mut pending = 0;
    if baseline && input.baseline == Baseline::Remember {
        seen.extend(fresh.iter().map(|c| c.id.clone()));
    } else {
        let hook = Connection::new(&input.notify);
        pending = fresh.len().saturating_sub(notify_max);
        for comment in fresh.into_iter().take(notify_max) {
            if let Err(e) = notify(&hook, &input.format, video, comment) {
                keyhole_sdk::warn!("notifying {} failed, stopping: {e}", input.notify);
                failed = Some(format!("{}: {e}", input.notify));
                break;
            }
            seen.push(comment.id.clone());
            notified += 1;
        }
    }
    let excess = seen.len().saturating_sub(MAX_SEEN);
    seen.drain(..excess);
    kv::set_json(&key, &seen)?;
    Ok(Output {
        video_id: video.to_owned(),
        notified,
        new,
        pending,
        baseline,
        failed,
    })
}

/// POSTs one comment to the webhook (its base URL); any non-2xx answer is an error.
fn notify(hook: &Connection, format: &Format, video: &str, c: &Comment) -> Result<(), Error> {
    let line = |text: &str, author: &str| {
        format!("New comment on https://youtu.be/{video} by {author}: {text}")
    };
    let body: Value = match format {
        Format::Generic => json!({
            "text": line(&c.text, &c.author),
            "video_id": video,
            "comment": c,
        }),
        Format::Slack => json!({ "text": line(&slack_escape(&c.text), &slack_escape(&c.author)) }),
    };
    hook.post("").json_body(&body).send()?.error_for_status()?;
    Ok(())
}

/// Slack reads `&`, `<` and `>` as markup; its docs ask for exactly these three escapes.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
