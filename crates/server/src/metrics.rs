//! `/metrics`: the server's counters, gauges and histograms in the Prometheus text format
//! (version 0.0.4), written by hand: a few lock-free counters and fixed-bucket histograms,
//! label sets in sorted maps, and one renderer.
//!
//! Three feeds: the HTTP middleware [`track`] (latency and count per route, and the create
//! and exec histograms by outcome), the engine's audit stream (`impl AuditObserver`:
//! refusals by reason, OOM kills, how long audit appends take), and the store, read at
//! scrape time (environments and access requests by state, active grants). Interactive
//! sessions report themselves through [`Metrics::session_opened`].
//!
//! Who may scrape: `GET /metrics` on the API listener needs a token whose principal may
//! `metrics.read` (auditors and admins; the scrape is audited like any call); an operator who
//! wants a plain Prometheus target passes `--metrics-listen ADDR` and gets the same page,
//! unauthenticated, on a listener of its own (keep it on a private address).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use airlock_core::action::StateCounts;
use airlock_core::admission::AdmissionSnapshot;
use airlock_core::model::AuditEvent;
use airlock_core::ports::AuditObserver;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latency buckets (seconds): a 4 ms exec to a 30 s create that waited its turn.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Audit append buckets (seconds): a WAL append is tens of microseconds; a synced one, ms.
const AUDIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// What a response ended in, set by the one error mapping (`error.rs`) for the middleware:
/// the core's outcome word (`not_found`, `rate_limited`, …). Absent on success.
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

/// Every metric of one server. Cheap to update from any thread; rendered on scrape.
pub struct Metrics {
    requests: Family<(String, String, u16), Counter>,
    request_seconds: Family<(String, String), Histogram>,
    create_seconds: Family<&'static str, Histogram>,
    exec_seconds: Family<&'static str, Histogram>,
    refusals: Family<String, Counter>,
    oom_kills: Counter,
    audit_append_seconds: Histogram,
    sessions_open: AtomicI64,
    alerts: Family<&'static str, Counter>,
    alerts_dropped: Counter,
    webhook_deliveries: Family<&'static str, Counter>,
    webhook_attempts: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            requests: Family::default(),
            request_seconds: Family::default(),
            create_seconds: Family::default(),
            exec_seconds: Family::default(),
            refusals: Family::default(),
            oom_kills: Counter::default(),
            audit_append_seconds: Histogram::new(AUDIT_BUCKETS),
            sessions_open: AtomicI64::new(0),
            alerts: Family::default(),
            alerts_dropped: Counter::default(),
            webhook_deliveries: Family::default(),
            webhook_attempts: Counter::default(),
        })
    }

    /// Counts an interactive session (a shell or streamed exec) as open until the returned
    /// guard is dropped: `airlock_sessions_open`. Hold the guard for the session's whole
    /// life, e.g. `let _open = state.metrics.session_opened();` at the top of the WebSocket
    /// task.
    pub fn session_opened(self: &Arc<Self>) -> OpenSession {
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
        OpenSession {
            metrics: self.clone(),
        }
    }

    /// One request answered: its route (the matched pattern, never the raw path), method,
    /// status, outcome and how long it took.
    fn record_request(
        &self,
        method: &str,
        route: &str,
        status: u16,
        outcome: &'static str,
        took: Duration,
    ) {
        self.requests
            .get((method.to_owned(), route.to_owned(), status))
            .inc();
        self.request_seconds
            .get((method.to_owned(), route.to_owned()))
            .observe(took);
        if method == "POST" {
            match route {
                "/v1/environments" => self.create_seconds.get(outcome).observe(took),
                "/v1/environments/{id}/exec" => self.exec_seconds.get(outcome).observe(took),
                _ => {}
            }
        }
    }

    pub(crate) fn alert_raised(&self, kind: &'static str) {
        self.alerts.get(kind).inc();
    }

    /// An alert the delivery queue had no room for.
    pub(crate) fn alert_dropped(&self) {
        self.alerts_dropped.inc();
    }

    pub(crate) fn webhook_attempted(&self) {
        self.webhook_attempts.inc();
    }

    /// An alert delivered to one webhook, or given up on after the last attempt.
    pub(crate) fn webhook_finished(&self, delivered: bool) {
        let result = if delivered { "delivered" } else { "failed" };
        self.webhook_deliveries.get(result).inc();
    }

    /// The whole page: everything counted in-process, with the store's counts and the
    /// admission queue as they are now.
    pub fn render(&self, counts: &StateCounts, admission: &AdmissionSnapshot) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let page = &mut out;

        header(
            page,
            "airlock_environments",
            "gauge",
            "Environments by state (the store, at scrape time).",
        );
        for (state, count) in &counts.environments {
            sample(
                page,
                "airlock_environments",
                &[("state", state.as_str())],
                *count as f64,
            );
        }
        header(
            page,
            "airlock_access_requests",
            "gauge",
            "Production access requests by state (the store, at scrape time).",
        );
        for (state, count) in &counts.access_requests {
            sample(
                page,
                "airlock_access_requests",
                &[("state", state.as_str())],
                *count as f64,
            );
        }
        let active = counts
            .access_requests
            .iter()
            .find(|(state, _)| *state == airlock_core::access::AccessState::Approved)
            .map_or(0, |(_, count)| *count);
        header(
            page,
            "airlock_grants_active",
            "gauge",
            "Production access grants in force (approved, not yet expired or revoked).",
        );
        sample(page, "airlock_grants_active", &[], active as f64);

        header(
            page,
            "airlock_sessions_open",
            "gauge",
            "Interactive sessions open now.",
        );
        sample(
            page,
            "airlock_sessions_open",
            &[],
            self.sessions_open.load(Ordering::Relaxed) as f64,
        );

        header(
            page,
            "airlock_creates_running",
            "gauge",
            "Creates holding an admission permit now.",
        );
        sample(
            page,
            "airlock_creates_running",
            &[],
            admission.running as f64,
        );
        header(
            page,
            "airlock_creates_waiting",
            "gauge",
            "Creates waiting for a turn, by priority class.",
        );
        for (class, waiting) in ["access", "incident", "interactive", "batch"]
            .iter()
            .zip(admission.waiting)
        {
            sample(
                page,
                "airlock_creates_waiting",
                &[("class", class)],
                waiting as f64,
            );
        }

        header(
            page,
            "airlock_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route pattern and status.",
        );
        for ((method, route, status), counter) in self.requests.snapshot() {
            sample(
                page,
                "airlock_http_requests_total",
                &[
                    ("method", &method),
                    ("route", &route),
                    ("status", &status.to_string()),
                ],
                counter.get() as f64,
            );
        }
        header(
            page,
            "airlock_http_request_duration_seconds",
            "histogram",
            "HTTP request latency, by method and route pattern.",
        );
        for ((method, route), histogram) in self.request_seconds.snapshot() {
            histogram.render(
                page,
                "airlock_http_request_duration_seconds",
                &[("method", &method), ("route", &route)],
            );
        }
        header(
            page,
            "airlock_environment_create_duration_seconds",
            "histogram",
            "POST /v1/environments latency (queue wait included), by outcome.",
        );
        for (outcome, histogram) in self.create_seconds.snapshot() {
            histogram.render(
                page,
                "airlock_environment_create_duration_seconds",
                &[("outcome", outcome)],
            );
        }
        header(
            page,
            "airlock_exec_duration_seconds",
            "histogram",
            "Buffered exec latency, by outcome; its _count is the number of execs.",
        );
        for (outcome, histogram) in self.exec_seconds.snapshot() {
            histogram.render(
                page,
                "airlock_exec_duration_seconds",
                &[("outcome", outcome)],
            );
        }

        header(
            page,
            "airlock_refusals_total",
            "counter",
            "Audited calls that did not succeed, by reason (the audit outcome).",
        );
        for (reason, counter) in self.refusals.snapshot() {
            sample(
                page,
                "airlock_refusals_total",
                &[("reason", &reason)],
                counter.get() as f64,
            );
        }
        header(
            page,
            "airlock_oom_kills_total",
            "counter",
            "Processes killed for memory inside environments, as seen by execs.",
        );
        sample(
            page,
            "airlock_oom_kills_total",
            &[],
            self.oom_kills.get() as f64,
        );
        header(
            page,
            "airlock_audit_append_duration_seconds",
            "histogram",
            "How long writing one audit event took.",
        );
        self.audit_append_seconds
            .render(page, "airlock_audit_append_duration_seconds", &[]);

        header(
            page,
            "airlock_alerts_total",
            "counter",
            "Alerts raised, by kind.",
        );
        for (kind, counter) in self.alerts.snapshot() {
            sample(
                page,
                "airlock_alerts_total",
                &[("kind", kind)],
                counter.get() as f64,
            );
        }
        header(
            page,
            "airlock_alerts_dropped_total",
            "counter",
            "Alerts dropped because a webhook's delivery queue was full.",
        );
        sample(
            page,
            "airlock_alerts_dropped_total",
            &[],
            self.alerts_dropped.get() as f64,
        );
        header(
            page,
            "airlock_webhook_deliveries_total",
            "counter",
            "Alerts delivered to a webhook, or given up on after the last attempt.",
        );
        for (result, counter) in self.webhook_deliveries.snapshot() {
            sample(
                page,
                "airlock_webhook_deliveries_total",
                &[("result", result)],
                counter.get() as f64,
            );
        }
        header(
            page,
            "airlock_webhook_attempts_total",
            "counter",
            "HTTP attempts to deliver alerts to webhooks, retries included.",
        );
        sample(
            page,
            "airlock_webhook_attempts_total",
            &[],
            self.webhook_attempts.get() as f64,
        );
        out
    }
}

impl AuditObserver for Metrics {
    fn observe(&self, event: &AuditEvent, append_took: Duration) {
        self.audit_append_seconds.observe(append_took);
        if event.outcome != "ok" {
            self.refusals.get(event.outcome.clone()).inc();
        }
        if event.action == "environment.oom_kill" {
            self.oom_kills.inc();
        }
    }
}

/// An open interactive session, counted in `airlock_sessions_open` until dropped.
pub struct OpenSession {
    metrics: Arc<Metrics>,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.metrics.sessions_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The middleware: times each request and counts it under its route pattern
/// (`/v1/environments/{id}`, or `unmatched`, so raw paths never become label values).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status();
    let outcome = match response.extensions().get::<Outcome>() {
        Some(Outcome(word)) => word,
        None if status.is_success() || status.is_redirection() => "ok",
        None => "error",
    };
    metrics.record_request(method.as_str(), &route, status.as_u16(), outcome, took);
    response
}

/// The page as an HTTP response.
pub fn page(text: String) -> Response {
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

// ---------------------------------------------------------------------------------------------
// The pieces.

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Fixed buckets; each observation lands in the first bucket it fits (cumulated on render).
/// The sum is kept in nanoseconds, exact and lock-free.
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(index) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, page: &mut String, name: &str, labels: &[(&str, &str)]) {
        // Read the count first: concurrent observations may make a bucket run ahead of it
        // for a moment, never behind (+Inf is the count).
        let count = self.count.load(Ordering::Relaxed);
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (bound, hits) in self.bounds.iter().zip(&self.buckets) {
            cumulative += hits.load(Ordering::Relaxed);
            let le = format_value(*bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(page, &bucket, &with_le, cumulative.min(count) as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        sample(page, &bucket, &with_le, count as f64);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        sample(page, &format!("{name}_sum"), labels, sum);
        sample(page, &format!("{name}_count"), labels, count as f64);
    }
}

/// Something made per label set on first use.
trait Fresh {
    fn fresh() -> Self;
}

impl Fresh for Counter {
    fn fresh() -> Self {
        Counter::default()
    }
}

/// Histograms made per label set time requests.
impl Fresh for Histogram {
    fn fresh() -> Self {
        Histogram::new(REQUEST_BUCKETS)
    }
}

/// At most this many label sets per metric: a bug or a hostile input cannot grow the page
/// (or memory) without bound. Past it, new label sets are not counted.
const MAX_LABEL_SETS: usize = 2048;

/// One metric's series by label set, in label order (the page is stable).
struct Family<Key, Value> {
    series: RwLock<BTreeMap<Key, Arc<Value>>>,
    overflow: Arc<Value>,
}

impl<Key: Ord + Clone, Value: Fresh> Default for Family<Key, Value> {
    fn default() -> Self {
        Self {
            series: RwLock::new(BTreeMap::new()),
            overflow: Arc::new(Value::fresh()),
        }
    }
}

impl<Key: Ord + Clone, Value: Fresh> Family<Key, Value> {
    fn get(&self, key: Key) -> Arc<Value> {
        if let Some(value) = self.series.read().expect("metrics lock").get(&key) {
            return value.clone();
        }
        let mut series = self.series.write().expect("metrics lock");
        if series.len() >= MAX_LABEL_SETS && !series.contains_key(&key) {
            return self.overflow.clone();
        }
        series
            .entry(key)
            .or_insert_with(|| Arc::new(Value::fresh()))
            .clone()
    }

    fn snapshot(&self) -> Vec<(Key, Arc<Value>)> {
        self.series
            .read()
            .expect("metrics lock")
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

fn header(page: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(page, "# HELP {name} {help}");
    let _ = writeln!(page, "# TYPE {name} {kind}");
}

fn sample(page: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    page.push_str(name);
    if !labels.is_empty() {
        page.push('{');
        for (index, (label, text)) in labels.iter().enumerate() {
            if index > 0 {
                page.push(',');
            }
            page.push_str(label);
            page.push_str("=\"");
            escape_label_value(page, text);
            page.push('"');
        }
        page.push('}');
    }
    page.push(' ');
    page.push_str(&format_value(value));
    page.push('\n');
}

/// `\`, `"` and newlines escaped, as the text format requires.
fn escape_label_value(page: &mut String, text: &str) {
    for character in text.chars() {
        match character {
            '\\' => page.push_str("\\\\"),
            '"' => page.push_str("\\\""),
            '\n' => page.push_str("\\n"),
            other => page.push(other),
        }
    }
}

fn format_value(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Rust prints the shortest text that reads back as the same f64: `0.005`, `3`.
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::access::AccessState;
    use airlock_core::model::EnvState;

    fn event(action: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            time: chrono::Utc::now(),
            request_id: String::new(),
            actor: "usr_1".into(),
            action: action.into(),
            target: None,
            outcome: outcome.into(),
            source: None,
            detail: None,
        }
    }

    fn counts() -> StateCounts {
        StateCounts {
            environments: EnvState::ALL.iter().map(|state| (*state, 2)).collect(),
            access_requests: AccessState::ALL.iter().map(|state| (*state, 1)).collect(),
        }
    }

    fn render(metrics: &Metrics) -> String {
        metrics.render(
            &counts(),
            &AdmissionSnapshot {
                running: 1,
                waiting: [0, 0, 2, 3],
                mean_hold: None,
            },
        )
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::new();
        metrics.observe(&event("x", "ok"), Duration::from_micros(80));
        metrics.observe(&event("x", "ok"), Duration::from_millis(3));
        let page = render(&metrics);
        for line in [
            "airlock_audit_append_duration_seconds_bucket{le=\"0.00005\"} 0",
            "airlock_audit_append_duration_seconds_bucket{le=\"0.0001\"} 1",
            "airlock_audit_append_duration_seconds_bucket{le=\"0.0025\"} 1",
            "airlock_audit_append_duration_seconds_bucket{le=\"0.005\"} 2",
            "airlock_audit_append_duration_seconds_bucket{le=\"+Inf\"} 2",
            "airlock_audit_append_duration_seconds_sum 0.00308",
            "airlock_audit_append_duration_seconds_count 2",
        ] {
            assert!(
                page.lines().any(|got| got == line),
                "{line} missing:\n{page}"
            );
        }
    }

    #[test]
    fn audit_events_count_refusals_by_reason_and_oom_kills() {
        let metrics = Metrics::new();
        metrics.observe(&event("environment.list", "rate_limited"), Duration::ZERO);
        metrics.observe(&event("environment.list", "rate_limited"), Duration::ZERO);
        metrics.observe(&event("GET /v1/nope", "not_found"), Duration::ZERO);
        metrics.observe(&event("environment.oom_kill", "ok"), Duration::ZERO);
        metrics.observe(&event("environment.list", "ok"), Duration::ZERO);
        let page = render(&metrics);
        for line in [
            "airlock_refusals_total{reason=\"not_found\"} 1",
            "airlock_refusals_total{reason=\"rate_limited\"} 2",
            "airlock_oom_kills_total 1",
            "airlock_environments{state=\"running\"} 2",
            "airlock_grants_active 1",
        ] {
            assert!(
                page.lines().any(|got| got == line),
                "{line} missing:\n{page}"
            );
        }
        assert!(!page.contains("reason=\"ok\""));
    }

    #[test]
    fn requests_are_counted_by_route_pattern_and_creates_and_execs_by_outcome() {
        let metrics = Metrics::new();
        let took = Duration::from_millis(4);
        metrics.record_request("POST", "/v1/environments", 201, "ok", took);
        metrics.record_request("POST", "/v1/environments", 429, "rate_limited", took);
        metrics.record_request("POST", "/v1/environments/{id}/exec", 200, "ok", took);
        metrics.record_request("GET", "/v1/environments/{id}/exec", 405, "invalid", took);
        let page = render(&metrics);
        for line in [
            "airlock_http_requests_total{method=\"POST\",route=\"/v1/environments\",status=\"201\"} 1",
            "airlock_http_requests_total{method=\"POST\",route=\"/v1/environments\",status=\"429\"} 1",
            "airlock_environment_create_duration_seconds_count{outcome=\"ok\"} 1",
            "airlock_environment_create_duration_seconds_count{outcome=\"rate_limited\"} 1",
            "airlock_exec_duration_seconds_count{outcome=\"ok\"} 1",
            "airlock_exec_duration_seconds_bucket{outcome=\"ok\",le=\"0.005\"} 1",
        ] {
            assert!(
                page.lines().any(|got| got == line),
                "{line} missing:\n{page}"
            );
        }
        // A GET on the exec route is not an exec.
        assert!(!page.contains("airlock_exec_duration_seconds_count{outcome=\"invalid\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut page = String::new();
        sample(&mut page, "m", &[("l", "a\"b\\c\nd")], 1.0);
        assert_eq!(page, "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn sessions_count_while_their_guard_lives() {
        let metrics = Metrics::new();
        let first = metrics.session_opened();
        let second = metrics.session_opened();
        assert!(render(&metrics).contains("\nairlock_sessions_open 2\n"));
        drop(first);
        drop(second);
        assert!(render(&metrics).contains("\nairlock_sessions_open 0\n"));
    }

    #[test]
    fn a_family_stops_growing_at_its_bound() {
        let family: Family<String, Counter> = Family::default();
        for index in 0..MAX_LABEL_SETS + 10 {
            family.get(index.to_string()).inc();
        }
        assert_eq!(family.snapshot().len(), MAX_LABEL_SETS);
        assert_eq!(family.overflow.get(), 10);
    }
}
