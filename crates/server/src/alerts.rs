//! Alerts: anomalies found in the audit stream, delivered to the operator's webhooks.
//!
//! [`Detector`] is pure: it is fed audit events and their times and says which alerts they
//! raise — a burst of failed authentications from one source address, an OOM kill, one
//! principal refused for limits (rate, quota, capacity, queue) again and again, a repair by
//! the reconciler (orphans removed), and production access granted, expired, lapsed or
//! revoked. Bursts are counted in fixed windows that start at a key's first event; each
//! window raises at most one alert.
//!
//! [`Alerts`] is the engine's observer: it runs the detector under a short lock and offers
//! each alert to every webhook's bounded queue with `try_send`; a full queue drops the alert
//! and counts it (`airlock_alerts_dropped_total`). Nothing on the request path waits for a
//! webhook. One task per webhook delivers its queue in order: a JSON `POST`, retried with
//! exponential backoff on network errors, timeouts, 408, 429 and 5xx, a bounded number of
//! times, each attempt with its own timeout; a slow or dead webhook delays only itself.
//!
//! Each delivery carries `Idempotency-Key` and `X-Airlock-Delivery` (the alert id, the same
//! on every attempt) and, with a secret, `X-Airlock-Signature: sha256=<hex>`: the HMAC-SHA256
//! of `<X-Airlock-Timestamp>.<body>` under the secret, so a receiver can check the sender and
//! refuse replays.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::model::AuditEvent;
use airlock_core::ports::AuditObserver;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Keys a detector follows at once (sources, principals); beyond, new keys are not followed
/// until old windows end, so a spray of addresses cannot grow memory without bound.
const MAX_KEYS: usize = 10_000;

/// What the operator configured; `Default` is the documented defaults with no webhook.
#[derive(Clone)]
pub struct AlertConfig {
    /// Where alerts are POSTed. Not `Debug`: a URL may hold a token.
    pub webhooks: Vec<String>,
    /// Signs each delivery (HMAC-SHA256) when set.
    pub secret: Option<WebhookSecret>,
    pub thresholds: Thresholds,
    /// Alerts waiting per webhook; beyond, new ones are dropped and counted.
    pub queue: usize,
    /// Attempts per alert and webhook, the first included.
    pub attempts: u32,
    /// How long one attempt may take, connecting included.
    pub attempt_timeout: Duration,
    /// The wait before the first retry; doubled after each (at most a minute).
    pub first_backoff: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            secret: None,
            thresholds: Thresholds::default(),
            queue: 1024,
            attempts: 5,
            attempt_timeout: Duration::from_secs(5),
            first_backoff: Duration::from_millis(500),
        }
    }
}

/// The key of webhook signatures. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The secret from its file: the contents without a trailing newline; never empty.
    pub fn from_file_contents(contents: &[u8]) -> Option<Self> {
        let trimmed = contents
            .strip_suffix(b"\n")
            .map_or(contents, |rest| rest.strip_suffix(b"\r").unwrap_or(rest));
        (!trimmed.is_empty()).then(|| Self(trimmed.to_vec()))
    }

    /// `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut text = String::with_capacity(7 + 64);
        text.push_str("sha256=");
        for byte in digest {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }
}

/// When a repetition becomes an alert.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// The length of a counting window.
    pub window: Duration,
    /// Failed authentications from one source address within a window.
    pub auth_failures: u32,
    /// Refusals for limits of one principal within a window.
    pub limit_refusals: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            auth_failures: 10,
            limit_refusals: 20,
        }
    }
}

/// One alert, as POSTed (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// `alr_…`, unique; also the delivery's idempotency key.
    pub id: String,
    /// `auth_failure_burst`, `oom_kill`, `limits_hit_repeatedly`, `orphan_removed`,
    /// `reconciled`, `access_granted`, `access_expired`, `access_lapsed`, `access_revoked`.
    pub kind: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// When the event that raised it happened.
    pub time: DateTime<Utc>,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For bursts: how many events within the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Alert {
    fn from_event(kind: &'static str, severity: &'static str, event: &AuditEvent) -> Self {
        Self {
            id: format!("alr_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
            kind,
            severity,
            time: event.time,
            summary: String::new(),
            actor: Some(event.actor.clone()),
            source: event.source.clone(),
            target: event.target.clone(),
            request_id: (!event.request_id.is_empty()).then(|| event.request_id.clone()),
            count: None,
            window_seconds: None,
            detail: event.detail.clone(),
        }
    }

    fn summary(mut self, summary: String) -> Self {
        self.summary = summary;
        self
    }
}

/// Finds anomalies in the audit stream. Pure: time is the events' own, so tests drive it
/// with whatever times they like.
pub struct Detector {
    thresholds: Thresholds,
    auth_failures: Windows<String>,
    limit_refusals: Windows<String>,
    oom_kills: Windows<String>,
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Self {
        let window = chrono::Duration::from_std(thresholds.window)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        Self {
            auth_failures: Windows::new(window, thresholds.auth_failures.max(1)),
            limit_refusals: Windows::new(window, thresholds.limit_refusals.max(1)),
            // Every OOM kill is worth knowing; one alert per environment per window is enough.
            oom_kills: Windows::new(window, 1),
            thresholds,
        }
    }

    /// The alerts this event raises, usually none.
    pub fn observe(&mut self, event: &AuditEvent) -> Vec<Alert> {
        let window_seconds = self.thresholds.window.as_secs();
        let at = event.time;
        let mut alerts = Vec::new();
        match (event.action.as_str(), event.outcome.as_str()) {
            (_, "unauthenticated") => {
                let source = event.source.clone().unwrap_or_else(|| "unknown".into());
                if let Some(count) = self.auth_failures.hit(source.clone(), at) {
                    let mut alert = Alert::from_event("auth_failure_burst", "warning", event)
                        .summary(format!(
                            "{count} failed authentications from {source} within {window_seconds} s"
                        ));
                    alert.actor = None;
                    alert.count = Some(count);
                    alert.window_seconds = Some(window_seconds);
                    alerts.push(alert);
                }
            }
            (_, "rate_limited" | "quota_exceeded" | "overloaded") => {
                let who = if event.actor == "anonymous" {
                    event.source.clone().unwrap_or_else(|| "anonymous".into())
                } else {
                    event.actor.clone()
                };
                if let Some(count) = self.limit_refusals.hit(who.clone(), at) {
                    let mut alert = Alert::from_event("limits_hit_repeatedly", "warning", event)
                        .summary(format!(
                            "{who} was refused for limits {count} times within {window_seconds} s (last: {})",
                            event.outcome
                        ));
                    alert.count = Some(count);
                    alert.window_seconds = Some(window_seconds);
                    alerts.push(alert);
                }
            }
            ("environment.oom_kill", _) => {
                let environment = event.target.clone().unwrap_or_default();
                if self.oom_kills.hit(environment.clone(), at).is_some() {
                    alerts.push(
                        Alert::from_event("oom_kill", "warning", event)
                            .summary(format!("a process in {environment} was killed for memory")),
                    );
                }
            }
            ("environment.reconcile", outcome) => {
                let orphan = event
                    .detail
                    .as_deref()
                    .is_some_and(|detail| detail.starts_with("orphan"));
                let kind = if orphan {
                    "orphan_removed"
                } else {
                    "reconciled"
                };
                let severity = if outcome == "ok" {
                    "warning"
                } else {
                    "critical"
                };
                let environment = event.target.clone().unwrap_or_default();
                let summary = match (orphan, outcome) {
                    (true, "ok") => format!("an orphan sandbox {environment} was removed"),
                    (false, "ok") => format!("{environment} was repaired by the reconciler"),
                    _ => format!("reconciling {environment} failed; the next pass retries"),
                };
                alerts.push(Alert::from_event(kind, severity, event).summary(summary));
            }
            ("access.grant", "ok") => alerts.push(
                Alert::from_event("access_granted", "info", event)
                    .summary("production access granted".into()),
            ),
            ("access.expire", "ok") => alerts.push(
                Alert::from_event("access_expired", "info", event)
                    .summary("a production access grant expired".into()),
            ),
            ("access.lapse", "ok") => alerts.push(
                Alert::from_event("access_lapsed", "info", event)
                    .summary("a production access request lapsed undecided".into()),
            ),
            ("access.revoke", "ok") => alerts.push(
                Alert::from_event("access_revoked", "info", event)
                    .summary("production access revoked".into()),
            ),
            _ => {}
        }
        alerts
    }
}

/// Counts events per key in fixed windows that start at a key's first event; says when the
/// count reaches the threshold, once per window.
struct Windows<Key> {
    length: chrono::Duration,
    threshold: u32,
    open: HashMap<Key, Window>,
    /// When windows that ended were last dropped.
    pruned_at: Option<DateTime<Utc>>,
}

struct Window {
    started: DateTime<Utc>,
    count: u32,
    alerted: bool,
}

impl<Key: Eq + Hash> Windows<Key> {
    fn new(length: chrono::Duration, threshold: u32) -> Self {
        Self {
            length,
            threshold,
            open: HashMap::new(),
            pruned_at: None,
        }
    }

    /// Counts one event; `Some(count)` when it makes the window reach the threshold.
    fn hit(&mut self, key: Key, at: DateTime<Utc>) -> Option<u32> {
        self.prune(at);
        if self.open.len() >= MAX_KEYS && !self.open.contains_key(&key) {
            return None;
        }
        let window = self.open.entry(key).or_insert(Window {
            started: at,
            count: 0,
            alerted: false,
        });
        if at - window.started >= self.length {
            *window = Window {
                started: at,
                count: 0,
                alerted: false,
            };
        }
        window.count += 1;
        if window.count >= self.threshold && !window.alerted {
            window.alerted = true;
            return Some(window.count);
        }
        None
    }

    /// Drops ended windows, at most once per window length (and when full).
    fn prune(&mut self, at: DateTime<Utc>) {
        let due = self.pruned_at.is_none_or(|last| at - last >= self.length);
        if due || self.open.len() >= MAX_KEYS {
            let length = self.length;
            self.open.retain(|_, window| at - window.started < length);
            self.pruned_at = Some(at);
        }
    }
}

/// The engine's observer: detects, then queues for each webhook without waiting.
pub struct Alerts {
    detector: Mutex<Detector>,
    queues: Vec<mpsc::Sender<Arc<Alert>>>,
    metrics: Arc<Metrics>,
}

impl Alerts {
    /// The observer, and one delivery task per webhook, running on the current runtime.
    pub fn start(config: AlertConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .timeout(config.attempt_timeout)
            .connect_timeout(config.attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut queues = Vec::new();
        for url in &config.webhooks {
            let (sender, receiver) = mpsc::channel(config.queue.max(1));
            queues.push(sender);
            let webhook = Webhook {
                url: url.clone(),
                client: client.clone(),
                secret: config.secret.clone(),
                attempts: config.attempts.max(1),
                first_backoff: config.first_backoff,
                metrics: metrics.clone(),
            };
            tokio::spawn(webhook.deliver(receiver));
        }
        Ok(Arc::new(Self {
            detector: Mutex::new(Detector::new(config.thresholds)),
            queues,
            metrics,
        }))
    }
}

impl AuditObserver for Alerts {
    fn observe(&self, event: &AuditEvent, _append_took: Duration) {
        let alerts = self
            .detector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .observe(event);
        for alert in alerts {
            self.metrics.alert_raised(alert.kind);
            if alert.severity == "info" {
                tracing::info!(kind = alert.kind, id = %alert.id, summary = %alert.summary, "alert");
            } else {
                tracing::warn!(kind = alert.kind, id = %alert.id, summary = %alert.summary, "alert");
            }
            let alert = Arc::new(alert);
            for queue in &self.queues {
                if queue.try_send(alert.clone()).is_err() {
                    self.metrics.alert_dropped();
                }
            }
        }
    }
}

/// One webhook and how to deliver to it.
struct Webhook {
    url: String,
    client: reqwest::Client,
    secret: Option<WebhookSecret>,
    attempts: u32,
    first_backoff: Duration,
    metrics: Arc<Metrics>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try (network error, timeout, 408, 429, 5xx).
    Retry(String),
    /// Another try would fail the same way (any other status).
    GiveUp(String),
}

impl Webhook {
    async fn deliver(self, mut queue: mpsc::Receiver<Arc<Alert>>) {
        while let Some(alert) = queue.recv().await {
            let body = match serde_json::to_vec(&*alert) {
                Ok(body) => body,
                Err(error) => {
                    tracing::error!(%error, "encoding an alert");
                    continue;
                }
            };
            let mut backoff = self.first_backoff;
            let mut attempt = 1;
            loop {
                self.metrics.webhook_attempted();
                let why = match self.attempt(&alert.id, attempt, &body).await {
                    Attempt::Delivered => {
                        self.metrics.webhook_finished(true);
                        break;
                    }
                    Attempt::Retry(why) if attempt < self.attempts => {
                        tracing::debug!(alert = %alert.id, attempt, %why, "webhook attempt failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        attempt += 1;
                        continue;
                    }
                    Attempt::Retry(why) | Attempt::GiveUp(why) => why,
                };
                self.metrics.webhook_finished(false);
                // The URL is not logged: it may hold a token.
                tracing::warn!(alert = %alert.id, kind = alert.kind, attempts = attempt, %why, "alert not delivered to a webhook");
                break;
            }
        }
    }

    async fn attempt(&self, id: &str, attempt: u32, body: &[u8]) -> Attempt {
        let timestamp = Utc::now().timestamp();
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", id)
            .header("x-airlock-delivery", id)
            .header("x-airlock-attempt", attempt.to_string())
            .header("x-airlock-timestamp", timestamp.to_string())
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request.header("x-airlock-signature", secret.sign(timestamp, body));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => {
                let status = response.status();
                let why = format!("answered {status}");
                if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                    Attempt::Retry(why)
                } else {
                    Attempt::GiveUp(why)
                }
            }
            Err(error) if error.is_timeout() => Attempt::Retry("timed out".into()),
            // Without the URL, which the error's text would carry.
            Err(error) => Attempt::Retry(format!("{}", error.without_url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + seconds, 0).unwrap()
    }

    fn event(seconds: i64, action: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            time: at(seconds),
            request_id: format!("req{seconds}"),
            actor: "usr_a".into(),
            action: action.into(),
            target: None,
            outcome: outcome.into(),
            source: Some("192.0.2.1".into()),
            detail: None,
        }
    }

    fn from(source: &str, mut event: AuditEvent) -> AuditEvent {
        event.source = Some(source.into());
        event.actor = "anonymous".into();
        event
    }

    fn thresholds(auth_failures: u32, limit_refusals: u32) -> Thresholds {
        Thresholds {
            window: Duration::from_secs(60),
            auth_failures,
            limit_refusals,
        }
    }

    /// Feeds `events` and returns, for each, the kinds of alert it raised.
    fn check(detector: &mut Detector, events: &[AuditEvent], expected: &[&[&str]]) {
        let got: Vec<Vec<&str>> = events
            .iter()
            .map(|event| {
                detector
                    .observe(event)
                    .iter()
                    .map(|alert| alert.kind)
                    .collect()
            })
            .collect();
        let expected: Vec<Vec<&str>> = expected.iter().map(|kinds| kinds.to_vec()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_auth_failure_burst_from_one_source_alerts_once_per_window() {
        let mut detector = Detector::new(thresholds(3, 100));
        let fail = |seconds, source| {
            from(
                source,
                event(seconds, "GET /v1/environments", "unauthenticated"),
            )
        };
        check(
            &mut detector,
            &[
                fail(0, "198.51.100.7"),
                fail(1, "198.51.100.7"),
                // Another source's failures count on their own.
                fail(2, "203.0.113.9"),
                fail(3, "198.51.100.7"),
                fail(4, "198.51.100.7"),
                fail(59, "198.51.100.7"),
                // A new window: counted from zero again.
                fail(60, "198.51.100.7"),
                fail(61, "198.51.100.7"),
                fail(62, "198.51.100.7"),
            ],
            &[
                &[],
                &[],
                &[],
                &["auth_failure_burst"],
                &[],
                &[],
                &[],
                &[],
                &["auth_failure_burst"],
            ],
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_alert() {
        let mut detector = Detector::new(thresholds(3, 100));
        let events: Vec<_> = (0..10)
            .map(|index| {
                from(
                    "198.51.100.7",
                    event(index * 31, "GET /v1/whoami", "unauthenticated"),
                )
            })
            .collect();
        let none: &[&str] = &[];
        check(&mut detector, &events, &[none; 10]);
    }

    #[test]
    fn the_burst_alert_says_who_how_many_and_over_what() {
        let mut detector = Detector::new(thresholds(2, 100));
        let fail = |seconds| {
            from(
                "198.51.100.7",
                event(seconds, "GET /v1/whoami", "unauthenticated"),
            )
        };
        assert!(detector.observe(&fail(0)).is_empty());
        let alert = detector.observe(&fail(5)).pop().unwrap();
        assert_eq!(alert.source.as_deref(), Some("198.51.100.7"));
        assert_eq!(alert.count, Some(2));
        assert_eq!(alert.window_seconds, Some(60));
        assert_eq!(alert.actor, None);
        assert_eq!(alert.time, at(5));
        assert!(alert.id.starts_with("alr_"), "{}", alert.id);
    }

    #[test]
    fn one_principal_refused_for_limits_again_and_again_alerts() {
        let mut detector = Detector::new(thresholds(100, 3));
        let mut other = event(2, "environment.create", "quota_exceeded");
        other.actor = "usr_b".into();
        check(
            &mut detector,
            &[
                event(0, "environment.list", "rate_limited"),
                event(1, "environment.create", "overloaded"),
                other,
                // Not a limit: does not count.
                event(3, "environment.get", "not_found"),
                event(4, "environment.create", "quota_exceeded"),
                event(5, "environment.list", "rate_limited"),
            ],
            &[&[], &[], &[], &[], &["limits_hit_repeatedly"], &[]],
        );
    }

    #[test]
    fn oom_kills_alert_once_per_environment_per_window() {
        let mut detector = Detector::new(Thresholds::default());
        let oom = |seconds, environment: &str| {
            let mut event = event(seconds, "environment.oom_kill", "ok");
            event.target = Some(environment.into());
            event
        };
        check(
            &mut detector,
            &[
                oom(0, "env_a"),
                oom(1, "env_a"),
                oom(2, "env_b"),
                oom(61, "env_a"),
            ],
            &[&["oom_kill"], &[], &["oom_kill"], &["oom_kill"]],
        );
    }

    #[test]
    fn reconciler_repairs_and_access_changes_alert_each_time() {
        let mut detector = Detector::new(Thresholds::default());
        let mut orphan = event(0, "environment.reconcile", "ok");
        orphan.detail = Some("orphan sandbox removed (no record); removed cgroup".into());
        let mut repaired = event(1, "environment.reconcile", "ok");
        repaired.detail = Some("sandbox gone: marked failed".into());
        let mut failed = event(2, "environment.reconcile", "error");
        failed.detail = Some("orphan sandbox removed (no record); removing it failed".into());
        check(
            &mut detector,
            &[
                orphan,
                repaired,
                failed.clone(),
                event(3, "access.grant", "ok"),
                event(4, "access.expire", "ok"),
                event(5, "access.lapse", "ok"),
                event(6, "access.revoke", "ok"),
                // A refused revoke changes nothing.
                event(7, "access.revoke", "forbidden"),
                event(8, "environment.create", "ok"),
            ],
            &[
                &["orphan_removed"],
                &["reconciled"],
                &["orphan_removed"],
                &["access_granted"],
                &["access_expired"],
                &["access_lapsed"],
                &["access_revoked"],
                &[],
                &[],
            ],
        );
        assert_eq!(detector.observe(&failed)[0].severity, "critical");
    }

    #[test]
    fn a_spray_of_sources_cannot_grow_memory_without_bound() {
        let mut detector = Detector::new(thresholds(2, 100));
        for index in 0..(MAX_KEYS as u32 + 500) {
            let source = format!("2001:db8::{index:x}");
            detector.observe(&from(&source, event(0, "GET /", "unauthenticated")));
        }
        assert_eq!(detector.auth_failures.open.len(), MAX_KEYS);
        // Once the windows end, new sources are followed again.
        let late = from("198.51.100.7", event(61, "GET /", "unauthenticated"));
        detector.observe(&late);
        assert_eq!(detector.auth_failures.open.len(), 1);
    }

    fn render(metrics: &Metrics) -> String {
        let counts = airlock_core::action::StateCounts::default();
        let admission = airlock_core::admission::AdmissionSnapshot {
            running: 0,
            waiting: [0; 4],
            mean_hold: None,
        };
        metrics.render(&counts, &admission)
    }

    /// On a single-threaded runtime the delivery task cannot run while the observer does:
    /// the queue holds one alert, the rest are dropped and counted, and nothing waited.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::new();
        let config = AlertConfig {
            webhooks: vec!["http://127.0.0.1:9/".into()],
            queue: 1,
            attempts: 1,
            ..AlertConfig::default()
        };
        let alerts = Alerts::start(config, metrics.clone()).unwrap();
        for seconds in 0..5 {
            alerts.observe(&event(seconds, "access.grant", "ok"), Duration::ZERO);
        }
        let page = render(&metrics);
        assert!(
            page.contains("\nairlock_alerts_total{kind=\"access_granted\"} 5\n"),
            "{page}"
        );
        assert!(
            page.contains("\nairlock_alerts_dropped_total 4\n"),
            "{page}"
        );
    }

    /// What observing costs an audited call (run with `--ignored --nocapture`; a measurement,
    /// not a timed test).
    #[test]
    #[ignore]
    fn observer_overhead_per_event() {
        let metrics = Metrics::new();
        let alerts = Alerts {
            detector: Mutex::new(Detector::new(Thresholds::default())),
            queues: Vec::new(),
            metrics: metrics.clone(),
        };
        let events: Vec<AuditEvent> = (0..1000)
            .map(|index| {
                let outcome = ["ok", "not_found", "unauthenticated", "rate_limited"][index % 4];
                from(
                    &format!("198.51.100.{}", index % 250),
                    event(index as i64 / 100, "environment.get", outcome),
                )
            })
            .collect();
        let rounds = 200;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            for event in &events {
                metrics.observe(event, Duration::from_micros(40));
                alerts.observe(event, Duration::from_micros(40));
            }
        }
        let per_event = started.elapsed() / (rounds * events.len() as u32);
        println!("metrics + alerts observers: {per_event:?} per audit event");
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently (Python's hmac) over "0.what do ya want for nothing?".
        let secret = WebhookSecret::from_file_contents(b"Jefe\n").unwrap();
        assert_eq!(
            secret.sign(0, b"what do ya want for nothing?"),
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert!(WebhookSecret::from_file_contents(b"\n").is_none());
    }
}
