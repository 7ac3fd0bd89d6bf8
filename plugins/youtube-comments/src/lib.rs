//! Lists a YouTube video's newest top-level comments through a named connection,
//! following `nextPageToken` until it has `max` of them (at most 500); the connection
//! supplies the credentials (an API key or an OAuth token), never this function.
//! The fetching and Google's error mapping live in the shared `youtube-api` crate.

use keyhole_sdk::{Connection, Error};
use serde::{Deserialize, Serialize};
use youtube_api::Comment;

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

#[keyhole_sdk::function]
fn run(input: Input) -> Result<Output, Error> {
    let video = input.video_id.trim();
    let youtube = Connection::new(&input.connection);
    let comments = youtube_api::comment_threads(&youtube, video, input.max)?;
    Ok(Output {
        video_id: video.to_owned(),
        count: comments.len(),
        comments,
    })
}
