//! `RawApi`: a loopback upstream that answers with bytes a test wrote out by hand, for
//! framings and encodings an HTTP server library would not send (a second
//! `Content-Encoding` line, `Transfer-Encoding: gzip, chunked`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The head of one request a [`RawApi`] received.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The method as sent, e.g. `GET`.
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// Header lines in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl RawRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

type Answer = dyn Fn(&RawRequest) -> Vec<u8> + Send + Sync;

/// An upstream on `127.0.0.1` that writes, byte for byte, what its answer function
/// returns for each request, one request per connection (it closes the connection after
/// the answer, so an answer framed by the close works too). It stops when dropped.
pub struct RawApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawApi {
    /// Serves `answer`'s bytes to every request.
    pub fn start(answer: impl Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a raw API");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let (stopped, log) = (stop.clone(), requests.clone());
        std::thread::Builder::new()
            .name(format!("raw-api-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (answer, log) = (answer.clone(), log.clone());
                    std::thread::spawn(move || serve_one(stream, &*answer, &log));
                }
            })
            .expect("spawn a raw API thread");
        Self {
            addr,
            stop,
            requests,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url() + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Read one request's head (and the body its `Content-Length` announces), log it, write
/// the answer and close.
fn serve_one(mut stream: TcpStream, answer: &Answer, log: &Mutex<Vec<RawRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if data.len() > 64 << 10 {
            return;
        }
    };
    let Some(request) = parse_head(&data[..head_end]) else {
        return;
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    log.lock().unwrap().push(request.clone());
    let _ = stream.write_all(&answer(&request));
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn parse_head(head: &[u8]) -> Option<RawRequest> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let method = start.next()?.to_owned();
    let target = start.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawRequest {
        method,
        target,
        headers,
    })
}

/// An HTTP/1.1 answer: `status` (e.g. `200 OK`), the header lines exactly as given (the
/// framing too: nothing is added but `Connection: close`), then `body` as it is.
pub fn answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `body` in chunked framing: two chunks (one, if it is a single byte) and the last.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (a, b) = body.split_at(body.len() / 2);
    for chunk in [a, b].into_iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `body` gzip-compressed.
pub fn gzipped(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}
