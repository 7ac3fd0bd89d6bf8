//! The interleaving client of `bench/http.sh`: two kinds of request sent one after the
//! other, alternating request by request, so both see the same phase of the machine.
//!
//! `oha` measures one case at a time, and the script alternates cases in rounds of
//! seconds. On a VM whose speed drifts from one few-second stretch to the next, the
//! difference of two such rounds carries the drift as well as the difference of the
//! cases. Here the cases alternate within one run (A B, B A, A B, …, the order flipped
//! each pair so neither always goes first), each request waits for the previous answer
//! (concurrency 1, one keep-alive connection), and the latencies of the two are kept
//! apart. The p50s of the two and their difference are the same statistic as the
//! script's, measured without the drift between rounds.
//!
//! `bench-pairs SECONDS TOKEN URL_A BODY_A EXPECT_A URL_B BODY_B EXPECT_B` sends
//! `POST URL` with the JSON body (and `Authorization: Bearer TOKEN` unless TOKEN is
//! `-`), for SECONDS after 500 warm-up pairs, and checks that every answer is a 2xx
//! whose body contains EXPECT (a request that does not, or takes over 5 s, is counted,
//! not timed). It prints one line: `p50_a p50_b p99_a p99_b pairs failures` (pairs whose
//! two requests both succeeded), latencies in µs.

use std::time::{Duration, Instant};

/// Pairs sent before timing starts (their failures count too).
const WARM_UP_PAIRS: u64 = 500;

struct Case {
    url: String,
    body: String,
    expect: String,
}

/// Sends one request and reads the whole answer; the time covers both, as `oha`'s does.
async fn send(client: &reqwest::Client, token: Option<&str>, case: &Case) -> Option<Duration> {
    let mut request = client
        .post(&case.url)
        .header("content-type", "application/json")
        .body(case.body.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let start = Instant::now();
    let response = request.send().await.ok()?;
    let ok = response.status().is_success();
    let body = response.bytes().await.ok()?;
    let took = start.elapsed();
    let expected = std::str::from_utf8(&body).is_ok_and(|b| b.contains(&case.expect));
    (ok && expected).then_some(took)
}

/// Sends one pair, A then B for even `n` and B then A for odd, so neither always goes
/// first; each slot holds its case's time, or `None` for a failed request.
async fn pair(
    client: &reqwest::Client,
    token: Option<&str>,
    cases: &[Case; 2],
    n: u64,
) -> [Option<Duration>; 2] {
    let mut took = [None, None];
    let order = if n.is_multiple_of(2) { [0, 1] } else { [1, 0] };
    for i in order {
        took[i] = send(client, token, &cases[i]).await;
    }
    took
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        seconds,
        token,
        url_a,
        body_a,
        expect_a,
        url_b,
        body_b,
        expect_b,
    ] = &args[..]
    else {
        eprintln!(
            "usage: bench-pairs SECONDS TOKEN URL_A BODY_A EXPECT_A URL_B BODY_B EXPECT_B\n\
             (TOKEN `-` sends no Authorization header; EXPECT is text every answer's body must contain)"
        );
        std::process::exit(2);
    };
    let seconds = match seconds.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => s,
        _ => {
            eprintln!("error: SECONDS must be a positive number of seconds, got {seconds:?}");
            std::process::exit(2);
        }
    };
    let token = (token != "-").then_some(token.as_str());
    let cases = [
        Case {
            url: url_a.clone(),
            body: body_a.clone(),
            expect: expect_a.clone(),
        },
        Case {
            url: url_b.clone(),
            body: body_b.clone(),
            expect: expect_b.clone(),
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut times, pairs, failures) = rt.block_on(async {
        // No proxy (as oha), and a stalled server counts as a failure instead of a hang.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let (mut pairs, mut failures) = (0u64, 0u64);
        for n in 0..WARM_UP_PAIRS {
            failures += pair(&client, token, &cases, n)
                .await
                .iter()
                .filter(|t| t.is_none())
                .count() as u64;
        }
        let mut n = WARM_UP_PAIRS;
        let deadline = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        while start.elapsed() < deadline {
            let took = pair(&client, token, &cases, n).await;
            if took.iter().all(Option::is_some) {
                pairs += 1;
            }
            for (i, took) in took.into_iter().enumerate() {
                match took {
                    Some(took) => times[i].push(took),
                    None => failures += 1,
                }
            }
            n += 1;
        }
        (times, pairs, failures)
    });
    for t in &mut times {
        t.sort_unstable();
    }
    println!(
        "{:.0} {:.0} {:.0} {:.0} {pairs} {failures}",
        percentile(&times[0], 0.5),
        percentile(&times[1], 0.5),
        percentile(&times[0], 0.99),
        percentile(&times[1], 0.99),
    );
}
