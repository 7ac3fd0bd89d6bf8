//! Process-wide Prometheus metrics (`prometheus-client`), served by `keyhole serve` at
//! `/metrics` in the OpenMetrics text format.
//!
//! The metrics are one process-wide set (like the outbound HTTP client) so that hooks
//! deep in the host — an invocation finishing in `app.rs`, a token refresh in
//! `oauth/refresh.rs` — need no handle threaded through. Every label value is bounded:
//! function and connection names come from the database (a function name only after the
//! function was found, so unknown names from HTTP requests never create series), and a
//! connection name a guest made up is folded into `(denied)`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `keyhole_invocations_total` | counter | `function`, `outcome` (`ok` or an error kind) |
//! | `keyhole_invocation_duration_seconds` | histogram | `function` |
//! | `keyhole_invocations_in_flight` | gauge | `function` (`sum()` for the total) |
//! | `keyhole_outbound_requests_total` | counter | `connection`, `status` (code or error kind) |
//! | `keyhole_token_refreshes_total` | counter | `outcome` (`ok`, `invalid_grant`, `transient`) |
//! | `keyhole_http_rejections_total` | counter | `reason` (`unauthorized`, `forbidden`, `rate_limited`, `at_capacity`, `body_memory`) |
//! | `keyhole_invocation_records_held_back` | gauge | none: records that could not be stored at once because another process held the database's lock, waiting for a retry |
//! | `keyhole_invocation_records_lost_total` | counter | `reason` (`backlog_full`, `storage_error`, `locked_at_exit`) |

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::storage::InvocationRow;

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds: 50 µs to 60 s, covering a trivial guest to a slow API call.
const DURATION_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Every `reason` of `keyhole_http_rejections_total`.
const REJECTION_REASONS: [&str; 5] = [
    "unauthorized",
    "forbidden",
    "rate_limited",
    "at_capacity",
    "body_memory",
];

/// Every `reason` of `keyhole_invocation_records_lost_total`.
const RECORD_LOSS_REASONS: [&str; 3] = ["backlog_full", "storage_error", "locked_at_exit"];

/// Label value for an outbound call to a connection the function may not use: the name
/// is guest-chosen, so it must not become a series of its own.
const DENIED_CONNECTION: &str = "(denied)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionOutcome {
    function: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboundLabels {
    connection: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type HistogramFamily = Family<FunctionLabel, Histogram, fn() -> Histogram>;

/// The metric set.
pub struct Metrics {
    registry: Registry,
    invocations: Family<FunctionOutcome, Counter>,
    duration: HistogramFamily,
    in_flight: Family<FunctionLabel, Gauge>,
    outbound: Family<OutboundLabels, Counter>,
    refreshes: Family<OutcomeLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    held_back: Gauge,
    records_lost: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("keyhole");
        let invocations = Family::<FunctionOutcome, Counter>::default();
        registry.register(
            "invocations",
            "Finished invocations by function and outcome",
            invocations.clone(),
        );
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register(
            "invocation_duration_seconds",
            "Wall time of an invocation (instantiate and run)",
            duration.clone(),
        );
        let in_flight = Family::<FunctionLabel, Gauge>::default();
        registry.register(
            "invocations_in_flight",
            "Invocations running now",
            in_flight.clone(),
        );
        let outbound = Family::<OutboundLabels, Counter>::default();
        registry.register(
            "outbound_requests",
            "Outbound calls through a connection by response status or error kind",
            outbound.clone(),
        );
        let refreshes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "token_refreshes",
            "OAuth access-token refreshes by outcome",
            refreshes.clone(),
        );
        let rejections = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_rejections",
            "HTTP API requests refused before reaching a handler",
            rejections.clone(),
        );
        let held_back = Gauge::default();
        registry.register(
            "invocation_records_held_back",
            "Invocation records kept in memory while another process holds the database lock",
            held_back.clone(),
        );
        let records_lost = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "invocation_records_lost",
            "Invocation records that could not be stored, by reason",
            records_lost.clone(),
        );
        // Known label values start at 0, so rates and alerts work before the first event.
        for outcome in ["ok", "invalid_grant", "transient"] {
            let _ = refreshes.get_or_create(&OutcomeLabel { outcome });
        }
        for reason in REJECTION_REASONS {
            let _ = rejections.get_or_create(&ReasonLabel { reason });
        }
        for reason in RECORD_LOSS_REASONS {
            let _ = records_lost.get_or_create(&ReasonLabel { reason });
        }
        Self {
            registry,
            invocations,
            duration,
            in_flight,
            outbound,
            refreshes,
            rejections,
            held_back,
            records_lost,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metric set.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Count a finished invocation: outcome, latency and each outbound call.
pub fn record_invocation(record: &InvocationRow) {
    let m = global();
    m.invocations
        .get_or_create(&FunctionOutcome {
            function: record.function.clone(),
            outcome: record.outcome.clone(),
        })
        .inc();
    m.duration
        .get_or_create(&FunctionLabel {
            function: record.function.clone(),
        })
        .observe(record.duration_us.max(0) as f64 / 1e6);
    for call in &record.outbound {
        let denied = call.error.as_deref() == Some("access-denied");
        let status = match (call.status, &call.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(kind)) => kind.clone(),
            (None, None) => "none".to_string(),
        };
        m.outbound
            .get_or_create(&OutboundLabels {
                connection: if denied {
                    DENIED_CONNECTION.to_string()
                } else {
                    call.connection.clone()
                },
                status,
            })
            .inc();
    }
}

/// Marks one invocation of a function as running until dropped.
#[derive(Debug)]
#[must_use = "the invocation counts as in flight only while the guard lives"]
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Count an invocation of `function` as in flight until the guard drops.
pub fn in_flight(function: &str) -> InFlight {
    let gauge = global().in_flight.get_or_create_owned(&FunctionLabel {
        function: function.to_string(),
    });
    gauge.inc();
    InFlight { gauge }
}

/// Outcome of an OAuth token refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// New tokens obtained.
    Ok,
    /// The provider rejected the refresh token; the connection needs re-authorization.
    InvalidGrant,
    /// The provider was unreachable or answered an error worth retrying.
    Transient,
}

/// Count a token refresh.
pub fn token_refresh(outcome: RefreshOutcome) {
    let outcome = match outcome {
        RefreshOutcome::Ok => "ok",
        RefreshOutcome::InvalidGrant => "invalid_grant",
        RefreshOutcome::Transient => "transient",
    };
    global()
        .refreshes
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// Count an HTTP API request refused by authentication or a limit. `reason` is one of
/// `unauthorized`, `forbidden`, `rate_limited`, `at_capacity`, `body_memory`.
pub fn http_rejection(reason: &'static str) {
    global()
        .rejections
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// Invocation records held back by another process's lock: `delta` more (or fewer).
pub fn records_held_back(delta: i64) {
    global().held_back.inc_by(delta);
}

/// Count `n` invocation records lost; `reason` is one of `backlog_full`,
/// `storage_error`, `locked_at_exit`.
pub fn records_lost(reason: &'static str, n: usize) {
    if n > 0 {
        global()
            .records_lost
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n as u64);
    }
}

/// Every metric in the OpenMetrics text format (ends with `# EOF`).
pub fn render() -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &global().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OutboundCall;

    fn call(connection: &str, status: Option<u16>, error: Option<&str>) -> OutboundCall {
        OutboundCall {
            connection: connection.into(),
            method: "GET".into(),
            origin: "http://127.0.0.1:1".into(),
            path: "/".into(),
            status,
            error: error.map(str::to_string),
            latency_ms: 1,
            bytes: 0,
        }
    }

    #[test]
    fn renders_invocations_outbound_and_in_flight() {
        let record = InvocationRow {
            id: 1,
            function: "metrics-unit".into(),
            version: 1,
            started_at: 0,
            duration_us: 1500,
            outcome: "ok".into(),
            error: None,
            output_bytes: 2,
            logs: vec![],
            stdout: String::new(),
            stderr: String::new(),
            outbound: vec![
                call("metrics-conn", Some(200), None),
                call("made-up-name", None, Some("access-denied")),
            ],
        };
        record_invocation(&record);
        let guard = in_flight("metrics-unit");
        token_refresh(RefreshOutcome::InvalidGrant);
        let text = render();
        assert!(
            text.contains(r#"keyhole_invocations_total{function="metrics-unit",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"keyhole_outbound_requests_total{connection="metrics-conn",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"connection="(denied)",status="access-denied""#),
            "{text}"
        );
        assert!(!text.contains("made-up-name"), "{text}");
        assert!(
            text.contains(r#"keyhole_invocations_in_flight{function="metrics-unit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"keyhole_token_refreshes_total{outcome="invalid_grant"}"#),
            "{text}"
        );
        assert!(
            text.contains("keyhole_invocation_duration_seconds_bucket"),
            "{text}"
        );
        drop(guard);
        assert!(render().contains(r#"keyhole_invocations_in_flight{function="metrics-unit"} 0"#));
    }
}
