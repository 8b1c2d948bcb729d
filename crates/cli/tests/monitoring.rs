//! Monitoring through a real socket: `/metrics` scraped, parsed as the Prometheus text format
//! and seen to move with real calls (only for principals that may read it, or on the
//! operator's own listener); alerts POSTed to webhooks, signed, retried, and never in the
//! way of the API; JSON logs where every line of a request carries its request id.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Api, Server, can_run_sandboxes};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// The exposition format, parsed.

/// One sample: its labels and value.
type Series = BTreeMap<BTreeMap<String, String>, f64>;

/// A scraped page: each family's type, and each sample name's series.
#[derive(Debug, Default)]
struct Page {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Series>,
}

impl Page {
    /// Parses the text format strictly: `# HELP`/`# TYPE` before a family's samples, known
    /// types, label syntax with escapes, numeric values, no series twice, and every sample
    /// belonging to a declared family (histograms through `_bucket`, `_sum`, `_count`).
    fn parse(text: &str) -> Page {
        let mut page = Page::default();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (keyword, name) = (words.next().unwrap(), words.next().unwrap());
                assert!(valid_name(name), "bad metric name in {line:?}");
                match keyword {
                    "HELP" => assert!(words.next().is_some_and(|help| !help.is_empty())),
                    "TYPE" => {
                        let kind = words.next().unwrap();
                        assert!(
                            ["counter", "gauge", "histogram"].contains(&kind),
                            "{line:?}"
                        );
                        let earlier = page.types.insert(name.to_owned(), kind.to_owned());
                        assert!(earlier.is_none(), "{name} declared twice");
                    }
                    other => panic!("unknown comment {other:?}"),
                }
                continue;
            }
            let (name, labels, value) = parse_sample(line);
            let family = page.family_of(&name);
            assert!(
                family.is_some(),
                "{name} is not in a declared family: {line:?}"
            );
            if page.types[family.unwrap()] == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} lacks the _total suffix"
                );
            }
            let earlier = page
                .samples
                .entry(name.clone())
                .or_default()
                .insert(labels, value);
            assert!(earlier.is_none(), "a series of {name} appears twice");
        }
        page.check_histograms();
        page
    }

    fn family_of(&self, sample: &str) -> Option<&str> {
        if let Some((name, _)) = self.types.get_key_value(sample) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            (self.types.get(base)? == "histogram").then_some(())?;
            self.types
                .get_key_value(base)
                .map(|(name, _)| name.as_str())
        })
    }

    /// Buckets cumulative, ending in `+Inf` equal to `_count`, with a `_sum`.
    fn check_histograms(&self) {
        for (name, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let buckets = self.samples.get(&format!("{name}_bucket"));
            let counts = self.samples.get(&format!("{name}_count"));
            let Some(counts) = counts else {
                assert!(buckets.is_none(), "{name} has buckets but no _count");
                continue;
            };
            for (labels, count) in counts {
                let mut steps: Vec<(f64, f64)> = buckets
                    .expect("buckets")
                    .iter()
                    .filter(|(bucket_labels, _)| {
                        let mut rest = (*bucket_labels).clone();
                        rest.remove("le").is_some() && &rest == labels
                    })
                    .map(|(bucket_labels, value)| {
                        let le = &bucket_labels["le"];
                        let bound = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        };
                        (bound, *value)
                    })
                    .collect();
                steps.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
                assert!(steps.len() > 1, "{name}{labels:?} has no buckets");
                assert!(
                    steps.windows(2).all(|pair| pair[0].1 <= pair[1].1),
                    "{name}{labels:?} is not cumulative: {steps:?}"
                );
                let last = steps.last().unwrap();
                assert_eq!(last.0, f64::INFINITY, "{name}{labels:?} lacks +Inf");
                assert_eq!(last.1, *count, "{name}{labels:?}: +Inf is not _count");
                assert!(
                    self.samples[&format!("{name}_sum")].contains_key(labels),
                    "{name}{labels:?} lacks _sum"
                );
            }
        }
    }

    /// The value of the series of `name` with exactly these labels, 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(label, value)| (label.to_string(), value.to_string()))
            .collect();
        self.samples
            .get(name)
            .and_then(|series| series.get(&wanted))
            .copied()
            .unwrap_or(0.0)
    }

    /// The label names of every series of `name`.
    fn label_names(&self, name: &str) -> BTreeSet<Vec<String>> {
        self.samples
            .get(name)
            .map(|series| {
                series
                    .keys()
                    .map(|labels| labels.keys().cloned().collect())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn valid_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",…} number`.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad name in {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut characters = inner.char_indices().peekable();
        let end = loop {
            let (start, first) = characters.next().expect("unterminated labels");
            if first == '}' {
                break start;
            }
            let mut label = String::from(first);
            for (_, c) in characters.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            assert!(valid_name(&label), "bad label name {label:?} in {line:?}");
            assert_eq!(characters.next().map(|(_, c)| c), Some('"'), "{line:?}");
            let mut value = String::new();
            loop {
                match characters.next().expect("unterminated label value").1 {
                    '\\' => match characters.next().unwrap().1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        other => panic!("bad escape \\{other} in {line:?}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(label.clone(), value).is_none(),
                "label {label} twice in {line:?}"
            );
            match characters.peek() {
                Some((_, ',')) => {
                    characters.next();
                }
                Some((_, '}')) => {}
                other => panic!("unexpected {other:?} in {line:?}"),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    (name.to_owned(), labels, value)
}

async fn scrape(api: &Api) -> Page {
    let answer = api.call(Method::GET, "/metrics", None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Page::parse(answer.body.as_str().expect("a text page"))
}

#[test]
fn the_test_parser_reads_escapes_and_refuses_strays() {
    let page = Page::parse(
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 2\n\
         # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n",
    );
    assert_eq!(page.value("a_total", &[("x", "q\"\\\n"), ("y", "")]), 2.0);
    assert_eq!(page.value("h_count", &[]), 2.0);
    let stray = std::panic::catch_unwind(|| Page::parse("b 1\n"));
    assert!(stray.is_err());
    let broken = std::panic::catch_unwind(|| {
        Page::parse(
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        )
    });
    assert!(broken.is_err());
}

// ---------------------------------------------------------------------------------------------
// Metrics.

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_for_auditors_and_move_with_real_calls() {
    if !can_run_sandboxes("metrics_are_for_auditors_and_move_with_real_calls") {
        return;
    }
    let server = Server::start_with(&[
        "--rate-limit",
        "5/s:5",
        "--role-rate-limit",
        "admin=1000/s",
        "--role-rate-limit",
        "auditor=1000/s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let admin = server.admin();
    let (auditor, _) = server
        .user_with("prometheus", &["auditor"], &[], &["read"])
        .await;
    let developer = server.user("dev").await;

    // Who may scrape: nobody without a token, not a developer; an auditor and an admin may.
    let (status, _) = server.anonymous().get("/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = developer.get("/metrics").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let before = scrape(&auditor).await;
    scrape(&admin).await;

    // Every family is declared with its type and label names.
    for (name, kind) in [
        ("airlock_environments", "gauge"),
        ("airlock_access_requests", "gauge"),
        ("airlock_grants_active", "gauge"),
        ("airlock_sessions_open", "gauge"),
        ("airlock_creates_running", "gauge"),
        ("airlock_creates_waiting", "gauge"),
        ("airlock_http_requests_total", "counter"),
        ("airlock_http_request_duration_seconds", "histogram"),
        ("airlock_environment_create_duration_seconds", "histogram"),
        ("airlock_exec_duration_seconds", "histogram"),
        ("airlock_refusals_total", "counter"),
        ("airlock_oom_kills_total", "counter"),
        ("airlock_audit_append_duration_seconds", "histogram"),
        ("airlock_alerts_total", "counter"),
        ("airlock_alerts_dropped_total", "counter"),
        ("airlock_webhook_deliveries_total", "counter"),
        ("airlock_webhook_attempts_total", "counter"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    let names = |labels: &[&str]| -> BTreeSet<Vec<String>> {
        [labels.iter().map(|label| label.to_string()).collect()].into()
    };
    assert_eq!(
        before.label_names("airlock_environments"),
        names(&["state"])
    );
    assert_eq!(
        before.label_names("airlock_http_requests_total"),
        names(&["method", "route", "status"])
    );
    assert_eq!(
        before.label_names("airlock_http_request_duration_seconds_bucket"),
        names(&["le", "method", "route"])
    );
    assert_eq!(
        before.value("airlock_environments", &[("state", "running")]),
        0.0
    );
    assert_eq!(before.value("airlock_grants_active", &[]), 0.0);
    assert_eq!(before.value("airlock_sessions_open", &[]), 0.0);

    // Real calls: a create, an exec, a refusal, a burst over the rate, an unknown route.
    let id = admin.create(json!({ "name": "probe" })).await;
    let output = admin.sh(&id, "echo hi").await;
    assert_eq!(output["stdout"], "hi\n");
    let (status, _) = developer.get(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .client("alk_not_a_real_token")
        .get("/v1/environments")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut limited = 0;
    for _ in 0..12 {
        let (status, _) = developer.get("/v1/environments").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited > 0, "the burst was never limited");
    let (status, _) = admin.get("/v1/no-such-route-x7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let after = scrape(&auditor).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        moved(
            "airlock_environment_create_duration_seconds_count",
            &[("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        moved("airlock_exec_duration_seconds_count", &[("outcome", "ok")]),
        1.0
    );
    assert!(
        moved("airlock_exec_duration_seconds_sum", &[("outcome", "ok")]) > 0.0,
        "an exec takes time"
    );
    assert_eq!(
        moved(
            "airlock_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/environments/{id}/exec"),
                ("status", "200")
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "airlock_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/v1/environments"),
                ("status", "429")
            ]
        ),
        limited as f64
    );
    assert_eq!(
        moved("airlock_refusals_total", &[("reason", "rate_limited")]),
        limited as f64
    );
    assert!(moved("airlock_refusals_total", &[("reason", "not_found")]) >= 2.0);
    assert_eq!(
        moved("airlock_refusals_total", &[("reason", "unauthenticated")]),
        1.0
    );
    assert!(moved("airlock_audit_append_duration_seconds_count", &[]) >= 15.0);
    assert_eq!(
        after.value("airlock_environments", &[("state", "running")]),
        1.0
    );
    // A raw path never becomes a label value: an unknown route is `unmatched`.
    let routes: BTreeSet<&String> = after.samples["airlock_http_requests_total"]
        .keys()
        .map(|labels| &labels["route"])
        .collect();
    assert!(routes.contains(&"unmatched".to_owned()), "{routes:?}");
    assert!(
        routes
            .iter()
            .all(|route| !route.contains("x7") && !route.contains("env_")),
        "{routes:?}"
    );

    // The operator's listener serves the same page without a credential, and nothing else.
    let plain = reqwest::Client::new();
    let metrics_url = server.metrics_url.clone().expect("the metrics listener");
    let response = plain.get(&metrics_url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = Page::parse(&response.text().await.unwrap());
    assert_eq!(
        page.value("airlock_environments", &[("state", "running")]),
        1.0
    );
    let other = metrics_url.replace("/metrics", "/v1/environments");
    let response = plain.get(&other).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

/// One request a test webhook received.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON alert")
    }
}

/// A webhook on loopback: answers each request with the next status of `script` (200 once
/// it is used up), or never answers when `script` is `None`; keeps what it received.
struct Hook {
    url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
}

impl Hook {
    async fn start(script: Option<Vec<u16>>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/airlock", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.map(|statuses| statuses.into_iter())));
        let kept = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    // One request per connection is enough for this client's deliveries;
                    // keep reading requests until it closes.
                    while let Some(delivery) = read_request(&mut stream).await {
                        kept.lock().unwrap().push(delivery);
                        let status = {
                            let mut script = script.lock().unwrap();
                            script
                                .as_mut()
                                .map(|statuses| statuses.next().unwrap_or(200))
                        };
                        let Some(status) = status else {
                            // Never answer; hold the connection open.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        };
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { url, received }
    }

    fn received(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until `done` holds for what was received.
    async fn wait_for(&self, limit: Duration, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                started.elapsed() < limit,
                "the webhook did not get what was expected within {limit:?}: {:?}",
                received.iter().map(Delivery::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads one HTTP/1.1 request with a `content-length` body; `None` at the end of the stream.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Delivery> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    assert!(
        request_line.starts_with("POST /hooks/airlock "),
        "{request_line}"
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Some(Delivery { headers, body })
}

const WEBHOOK_SECRET: &[u8] = b"correct horse battery staple";

/// Checks `X-Airlock-Signature` as a receiver would: HMAC-SHA256 of `timestamp.body`.
fn assert_signed(delivery: &Delivery) {
    let timestamp = &delivery.headers["x-airlock-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&delivery.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        delivery.headers["x-airlock-signature"],
        format!("sha256={expected}")
    );
    let sent: i64 = timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_webhooks_signed_and_a_failing_one_gets_them_on_a_retry() {
    if !can_run_sandboxes("alerts_reach_webhooks_signed_and_a_failing_one_gets_them_on_a_retry") {
        return;
    }
    let steady = Hook::start(Some(Vec::new())).await;
    let flaky = Hook::start(Some(vec![500, 500])).await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_path = secret_dir.path().join("webhook-secret");
    std::fs::write(&secret_path, [WEBHOOK_SECRET, b"\n"].concat()).unwrap();
    std::fs::set_permissions(
        &secret_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = Server::start_with(&[
        "--webhook",
        &steady.url,
        "--webhook",
        &flaky.url,
        "--webhook-secret-file",
        secret_path.to_str().unwrap(),
        "--alert-auth-failures",
        "3",
    ]);

    // A burst of failed authentications from one address: one alert, however many more.
    let stranger = server.client("alk_guessing");
    for _ in 0..5 {
        let (status, _) = stranger.get("/v1/environments").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Production access granted.
    let admin = server.admin();
    let (status, profile) = admin
        .post(
            "/v1/access-profiles",
            json!({
                "name": "prod",
                "max_duration_seconds": 600,
                "approvals_required": 1,
                "approvers": ["role:approver"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let (developer, developer_id) = server
        .user_with("dev", &["developer"], &[], &["read", "access:request"])
        .await;
    let (approver, _) = server
        .user_with("omar", &["approver"], &[], &["read", "access:approve"])
        .await;
    let (status, request) = developer
        .post(
            "/v1/access-requests",
            json!({ "profile": "prod", "reason": "INC-9", "duration_seconds": 300 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    let grant = request["id"].as_str().unwrap().to_owned();
    let (status, _) = approver
        .post(&format!("/v1/access-requests/{grant}/approve"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let received = steady
        .wait_for(Duration::from_secs(20), |received| received.len() >= 2)
        .await;
    let alerts: Vec<Value> = received.iter().map(Delivery::json).collect();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let burst = &alerts[0];
    assert_eq!(burst["kind"], "auth_failure_burst", "{burst}");
    assert_eq!(burst["source"], "127.0.0.1");
    assert_eq!(burst["count"], 3);
    assert_eq!(burst["window_seconds"], 60);
    let granted = &alerts[1];
    assert_eq!(granted["kind"], "access_granted", "{granted}");
    assert_eq!(granted["target"], grant.as_str());
    assert!(
        granted["detail"].as_str().unwrap().contains(&developer_id),
        "{granted}"
    );
    for delivery in &received {
        assert_signed(delivery);
        let id = delivery.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(delivery.headers["idempotency-key"], id);
        assert_eq!(delivery.headers["x-airlock-delivery"], id);
        assert_eq!(delivery.headers["content-type"], "application/json");
    }

    // The flaky webhook answered 500 twice: the first alert arrived on the third attempt,
    // with the same delivery id each time; the second alert at once.
    let attempts = flaky
        .wait_for(Duration::from_secs(30), |received| received.len() >= 4)
        .await;
    let ids: Vec<String> = attempts
        .iter()
        .map(|delivery| delivery.headers["x-airlock-delivery"].clone())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert_eq!(ids[0], burst["id"].as_str().unwrap());
    let numbers: Vec<&str> = attempts
        .iter()
        .map(|delivery| delivery.headers["x-airlock-attempt"].as_str())
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "1"]);
    attempts.iter().for_each(assert_signed);

    // And the metrics say so.
    let page = scrape(&admin).await;
    assert_eq!(
        page.value("airlock_alerts_total", &[("kind", "auth_failure_burst")]),
        1.0
    );
    assert_eq!(
        page.value("airlock_alerts_total", &[("kind", "access_granted")]),
        1.0
    );
    assert_eq!(
        page.value(
            "airlock_webhook_deliveries_total",
            &[("result", "delivered")]
        ),
        4.0
    );
    assert_eq!(page.value("airlock_webhook_attempts_total", &[]), 6.0);
    assert_eq!(page.value("airlock_alerts_dropped_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_does_not_slow_the_api() {
    if !can_run_sandboxes("a_webhook_that_never_answers_does_not_slow_the_api") {
        return;
    }
    let silent = Hook::start(None).await;
    let server = Server::start_with(&[
        "--webhook",
        &silent.url,
        "--webhook-timeout",
        "60",
        "--alert-auth-failures",
        "1",
        "--alert-window",
        "1",
        "--role-rate-limit",
        "admin=100000/s",
    ]);
    let admin = server.admin();
    let stranger = server.client("alk_guessing");

    // Alerts raised over and over (one a second from this address), each delivery hanging
    // for a minute; the API answers as fast as ever.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for api in [&stranger, &admin] {
            let call = Instant::now();
            let (status, _) = api.get("/v1/whoami").await;
            slowest = slowest.max(call.elapsed());
            calls += 1;
            assert!(
                matches!(status, StatusCode::OK | StatusCode::UNAUTHORIZED),
                "{status}"
            );
        }
    }
    silent
        .wait_for(Duration::from_secs(5), |received| !received.is_empty())
        .await;
    assert!(
        slowest < Duration::from_secs(2),
        "the slowest of {calls} calls took {slowest:?}"
    );
    let page = scrape(&admin).await;
    assert!(page.value("airlock_alerts_total", &[("kind", "auth_failure_burst")]) >= 2.0);
    assert_eq!(
        page.value(
            "airlock_webhook_deliveries_total",
            &[("result", "delivered")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_and_an_orphan_removed_at_start_reach_the_webhook() {
    if !can_run_sandboxes("an_oom_kill_and_an_orphan_removed_at_start_reach_the_webhook") {
        return;
    }
    let hook = Hook::start(Some(Vec::new())).await;
    let mut server = Server::start_with(&["--webhook", &hook.url]);
    let admin = server.admin();
    let small = admin
        .create(json!({ "name": "small", "resources": { "memory_mib": 64 } }))
        .await;
    let (status, result) = admin
        .post(
            &format!("/v1/environments/{small}/exec"),
            json!({ "command": ["python3", "-c", "b = bytearray(200 * 1024 * 1024)"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["oom_killed"], true, "{result}");
    let received = hook
        .wait_for(Duration::from_secs(20), |received| !received.is_empty())
        .await;
    let alert = received[0].json();
    assert_eq!(alert["kind"], "oom_kill", "{alert}");
    assert_eq!(alert["target"], small.as_str());
    let page = scrape(&admin).await;
    assert_eq!(page.value("airlock_oom_kills_total", &[]), 1.0);
    assert_eq!(
        page.value("airlock_alerts_total", &[("kind", "oom_kill")]),
        1.0
    );

    // A crash leaves a sandbox directory no record claims; the next start removes it and
    // says so.
    server.kill();
    let orphan = airlock_core::ids::EnvironmentId::generate().to_string();
    std::fs::create_dir_all(
        server
            .data_dir
            .join("runtime/sandboxes")
            .join(&orphan)
            .join("upper/0"),
    )
    .unwrap();
    server.restart();
    let received = hook
        .wait_for(Duration::from_secs(20), |received| received.len() >= 2)
        .await;
    let alert = received[1].json();
    assert_eq!(alert["kind"], "orphan_removed", "{alert}");
    assert_eq!(alert["target"], orphan.as_str());
    assert!(
        alert["detail"].as_str().unwrap().contains("no record"),
        "{alert}"
    );
    assert!(!server.sandbox_dirs().contains(&orphan));
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    if !can_run_sandboxes("json_logs_carry_the_request_id_on_every_line_of_a_request") {
        return;
    }
    let server = Server::start_logged(
        &[],
        &[
            ("AIRLOCK_LOG_FORMAT", "json"),
            // airlock's own debug lines, and libcontainer's, which run on blocking threads.
            (
                "AIRLOCK_LOG",
                "info,airlock_server=debug,airlock_core=debug,airlock_runtime=debug,libcontainer=debug,libcgroups=debug",
            ),
        ],
    );
    let logs = server.logs.clone().unwrap();
    let admin = server.admin();
    // Lines from here on are logged inside requests (nothing runs in the background of an
    // idle server with nothing due).
    let first = logs.lock().unwrap().len();
    let mut request_ids = Vec::new();
    let mut keep = |answer: common::Answer| {
        request_ids.push(answer.headers["x-request-id"].to_str().unwrap().to_owned());
        answer
    };
    let created = keep(
        admin
            .call(Method::POST, "/v1/environments", Some(json!({})), &[])
            .await,
    );
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    keep(
        admin
            .call(
                Method::POST,
                &format!("/v1/environments/{id}/exec"),
                Some(json!({ "command": ["true"] })),
                &[],
            )
            .await,
    );
    keep(
        server
            .anonymous()
            .call(Method::GET, "/v1/environments", None, &[])
            .await,
    );
    let deleted = keep(
        admin
            .call(Method::DELETE, &format!("/v1/environments/{id}"), None, &[])
            .await,
    );
    assert!(deleted.status.is_success(), "{}", deleted.body);
    // The last request's lines are written before its answer leaves; give the pipe a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines: Vec<String> = logs.lock().unwrap()[first..].to_vec();
    assert!(!lines.is_empty(), "nothing was logged");
    let mut seen = BTreeSet::new();
    for line in &lines {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(record["timestamp"].is_string(), "{line}");
        assert!(record["level"].is_string(), "{line}");
        // The request's span is the outermost; libraries may open spans inside it.
        let request_id = record["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find_map(|span| span["request_id"].as_str()))
            .unwrap_or_else(|| panic!("a line without a request id: {line}"));
        assert!(
            request_ids.iter().any(|id| id == request_id),
            "unknown request id {request_id}: {line}"
        );
        seen.insert(request_id.to_owned());
    }
    // Every request logged at least its answer.
    assert_eq!(seen.len(), request_ids.len(), "{lines:#?}");
}
