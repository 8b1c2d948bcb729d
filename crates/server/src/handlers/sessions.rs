//! Reaching inside environments: sessions over WebSocket (a terminal, a streamed command, a
//! port forward), files in and out, HTTP through a proxy path; and session records with
//! their recordings. Each is one core action, authorized and audited before anything runs.

use airlock_api as api;
use airlock_core::action::{Conn, Contents, ListSessions, NewSession};
use airlock_core::ids::SessionId;
use airlock_core::session::{SessionKind, TerminalSize};
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;

use super::{Result, environment_id, perform, refuse, unexpected};
use crate::AppState;
use crate::convert;
use crate::extract::Caller;

/// Requests that are not WebSocket upgrades are refused on the session routes.
async fn upgrade(
    state: &AppState,
    caller: &Caller,
    action: &str,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade> {
    match upgrade {
        Ok(upgrade) => Ok(upgrade),
        Err(_) => Err(refuse(
            state,
            caller,
            action,
            Invalid::new("connection", "this route takes a WebSocket upgrade"),
        )
        .await),
    }
}

/// What the query of a streamed command says.
fn stream_request(query: Option<&str>) -> std::result::Result<StreamQuery, Invalid> {
    let mut parsed = StreamQuery::default();
    let (mut cols, mut rows) = (None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = |field: &'static str| {
            value
                .parse::<u16>()
                .map_err(|_| Invalid::new(field, "must be a number from 1 to 1000"))
        };
        match &*key {
            "command" => parsed.argv.push(value.into_owned()),
            "tty" => {
                parsed.tty = match &*value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Invalid::new("tty", "must be true or false")),
                }
            }
            "cols" => cols = Some(number("cols")?),
            "rows" => rows = Some(number("rows")?),
            "cwd" => parsed.cwd = Some(value.into_owned()),
            "env" => {
                let (name, value) = value
                    .split_once('=')
                    .ok_or_else(|| Invalid::new("env", "must be NAME=VALUE"))?;
                parsed.env.insert(name.to_owned(), value.to_owned());
            }
            other => {
                return Err(Invalid::new(
                    "query",
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    parsed.size = match (cols, rows) {
        (None, None) => None,
        (cols, rows) => Some(TerminalSize::new(
            cols.unwrap_or(TerminalSize::DEFAULT.cols),
            rows.unwrap_or(TerminalSize::DEFAULT.rows),
        )?),
    };
    if !parsed.tty && parsed.argv.is_empty() {
        return Err(Invalid::new(
            "command",
            "name a program (or ask for a tty for a shell)",
        ));
    }
    Ok(parsed)
}

#[derive(Debug, Default)]
struct StreamQuery {
    argv: Vec<String>,
    tty: bool,
    size: Option<TerminalSize>,
    cwd: Option<String>,
    env: std::collections::BTreeMap<String, String>,
}

/// Runs a command, or with `tty=true` a terminal (a login shell when no `command` is given),
/// and streams it over a WebSocket: binary frames `0`+stdin from the client, `1`+stdout and
/// `2`+stderr from the server; JSON text frames for resize, signals, end of input and the
/// exit code (`SessionMessage`). Terminal sessions are recorded (asciicast v2).
#[utoipa::path(get, path = "/v1/environments/{id}/exec/stream", tag = "sessions",
    params(("id" = String, Path, description = "Environment id"),
        ("command" = Option<Vec<String>>, Query, description = "The program and its arguments, one parameter each"),
        ("tty" = Option<bool>, Query, description = "Run on a terminal (recorded)"),
        ("cols" = Option<u16>, Query), ("rows" = Option<u16>, Query),
        ("cwd" = Option<String>, Query), ("env" = Option<Vec<String>>, Query, description = "NAME=VALUE")),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, body = api::Problem), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn exec_stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    socket: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let id = environment_id(&state, &caller, "session.start", &id).await?;
    let socket = upgrade(&state, &caller, "session.start", socket).await?;
    let request = match stream_request(query.as_deref()) {
        Ok(request) => request,
        Err(invalid) => return Err(refuse(&state, &caller, "session.start", invalid).await),
    };
    let terminal = request
        .tty
        .then(|| request.size.unwrap_or(TerminalSize::DEFAULT));
    let kind = if request.tty {
        SessionKind::Terminal
    } else {
        SessionKind::Exec
    };
    let new = NewSession {
        environment: id,
        kind,
        argv: request.argv,
        env: request.env,
        cwd: request.cwd,
        size: terminal,
        port: None,
    };
    start(state, caller, socket, Action::StartSession(new), terminal).await
}

/// Forwards one TCP connection to `port` on the environment's loopback over a WebSocket:
/// binary frames carry the bytes each way.
#[utoipa::path(get, path = "/v1/environments/{id}/ports/{port}/forward", tag = "sessions",
    params(("id" = String, Path, description = "Environment id"), ("port" = u16, Path)),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 404, body = api::Problem), (status = 409, body = api::Problem, description = "Not running, or nothing listens on the port")),
    security(("bearer" = [])))]
pub async fn port_forward(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, port)): Path<(String, String)>,
    socket: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let id = environment_id(&state, &caller, "session.start", &id).await?;
    let socket = upgrade(&state, &caller, "session.start", socket).await?;
    let port = parse_port(&state, &caller, "session.start", &port).await?;
    let new = NewSession {
        environment: id,
        kind: SessionKind::PortForward,
        argv: Vec::new(),
        env: Default::default(),
        cwd: None,
        size: None,
        port: Some(port),
    };
    start(state, caller, socket, Action::StartSession(new), None).await
}

async fn parse_port(state: &AppState, caller: &Caller, action: &str, text: &str) -> Result<u16> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(refuse(
            state,
            caller,
            action,
            Invalid::new("port", "must be 1 to 65535"),
        )
        .await),
    }
}

/// Opens the session (authorized and audited like any action), then upgrades.
async fn start(
    state: AppState,
    caller: Caller,
    socket: WebSocketUpgrade,
    action: Action,
    terminal: Option<TerminalSize>,
) -> Result<Response> {
    // A seat first: past the limits nothing is started (and the refusal is audited).
    let seat = match state.sessions.seat(&caller.principal.user.id) {
        Ok(seat) => seat,
        Err(error) => {
            state
                .engine
                .record_refusal(
                    &caller.origin,
                    Some(&caller.principal),
                    "session.start",
                    &error,
                )
                .await;
            return Err(error.into());
        }
    };
    let reply = perform(&state, &caller, action).await?;
    let Reply::Session(live) = reply else {
        return Err(unexpected(reply));
    };
    let (engine, sessions, metrics, origin, principal) = (
        state.engine.clone(),
        state.sessions.clone(),
        state.metrics.clone(),
        caller.origin.clone(),
        caller.principal.clone(),
    );
    // If the upgrade fails, the session ends at once (its command is killed).
    let abandoned = std::sync::Arc::new(std::sync::Mutex::new(None));
    let on_failure = abandoned.clone();
    let (failed_engine, failed_origin) = (state.engine.clone(), caller.origin.clone());
    *abandoned.lock().expect("lock") = Some(live);
    let failed = move |_error| {
        if let Some(live) = on_failure.lock().expect("lock").take() {
            tokio::spawn(crate::sessions::abandon(failed_engine, failed_origin, live));
        }
    };
    Ok(socket
        .max_message_size(1 << 20)
        .on_failed_upgrade(failed)
        .on_upgrade(move |socket| async move {
            let Some(live) = abandoned.lock().expect("lock").take() else {
                return;
            };
            let _open = metrics.session_opened();
            let _seat = seat;
            crate::sessions::run(sessions, engine, origin, principal, live, terminal, socket).await;
        }))
}

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    path: String,
    /// Octal permission bits of a file written in (default 644).
    mode: Option<String>,
}

/// Reads a regular file out of a running environment, its path resolved inside the
/// environment's root as it sees it (symbolic links included, never leading out).
#[utoipa::path(get, path = "/v1/environments/{id}/files", tag = "sessions",
    params(("id" = String, Path, description = "Environment id"), ("path" = String, Query, description = "Absolute path inside")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 400, body = api::Problem), (status = 404, body = api::Problem, description = "No such environment or file")),
    security(("bearer" = [])))]
pub async fn copy_out(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
) -> Result<Response> {
    let id = environment_id(&state, &caller, "environment.copy_out", &id).await?;
    let reply = perform(
        &state,
        &caller,
        Action::CopyOut {
            environment: id,
            path: query.path,
        },
    )
    .await?;
    let Reply::File { size, contents } = reply else {
        return Err(unexpected(reply));
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(contents.0));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        body,
    )
        .into_response())
}

/// Writes the request body to a file of a running environment (its directory must exist);
/// the file appears whole or not at all. At most the server's copy limit.
#[utoipa::path(put, path = "/v1/environments/{id}/files", tag = "sessions",
    params(("id" = String, Path, description = "Environment id"), ("path" = String, Query, description = "Absolute path inside"),
        ("mode" = Option<String>, Query, description = "Octal permissions, default 644")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = api::CopiedFile), (status = 400, body = api::Problem), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn copy_in(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
    body: Body,
) -> Result<Response> {
    let id = environment_id(&state, &caller, "environment.copy_in", &id).await?;
    let mode = match query
        .mode
        .as_deref()
        .map(|mode| u32::from_str_radix(mode, 8))
    {
        None => 0o644,
        Some(Ok(mode)) => mode,
        Some(Err(_)) => {
            return Err(refuse(
                &state,
                &caller,
                "environment.copy_in",
                Invalid::new("mode", "must be octal permission bits, e.g. 644"),
            )
            .await);
        }
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let reply = perform(
        &state,
        &caller,
        Action::CopyIn {
            environment: id,
            path: query.path.clone(),
            mode,
            contents: Contents(Box::pin(reader)),
        },
    )
    .await?;
    let Reply::Copied(size) = reply else {
        return Err(unexpected(reply));
    };
    Ok((
        StatusCode::CREATED,
        Json(api::CopiedFile {
            path: query.path,
            size,
        }),
    )
        .into_response())
}

/// Headers that belong to one hop and are not passed on (RFC 9110 §7.6.1), and the
/// caller's credentials, which the environment must never see.
const NOT_FORWARDED: [&str; 10] = [
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Passes one HTTP request to `port` inside the environment (as `localhost:<port>`) and its
/// answer back. The caller's `Authorization` header is not passed on.
#[utoipa::path(get, path = "/v1/environments/{id}/proxy/{port}/{path}", tag = "sessions",
    params(("id" = String, Path, description = "Environment id"), ("port" = u16, Path), ("path" = String, Path, description = "The path inside")),
    responses((status = 200, description = "Whatever the server inside answers"),
        (status = 404, body = api::Problem), (status = 409, body = api::Problem, description = "Not running, or nothing listens on the port"),
        (status = 502, body = api::Problem, description = "The server inside broke the exchange")),
    security(("bearer" = [])))]
pub async fn proxy(
    State(state): State<AppState>,
    caller: Caller,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
) -> Result<Response> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    let id = environment_id(&state, &caller, "environment.proxy", &param("id")).await?;
    let port = parse_port(&state, &caller, "environment.proxy", &param("port")).await?;
    // The path inside as it came, still percent-encoded (the router's copy is decoded): what
    // follows `/v1/environments/{id}/proxy/{port}/`.
    let inside = request
        .uri()
        .path()
        .splitn(7, '/')
        .nth(6)
        .unwrap_or_default()
        .to_owned();
    let reply = perform(
        &state,
        &caller,
        Action::Proxy {
            environment: id.clone(),
            port,
            request: format!("{} /{inside}", request.method()),
        },
    )
    .await?;
    let Reply::Connection(Conn(connection)) = reply else {
        return Err(unexpected(reply));
    };
    let (parts, body) = request.into_parts();
    let mut path = format!("/{inside}");
    if let Some(query) = parts.uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut inner = axum::http::Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .body(body)
        .map_err(|error| airlock_core::Error::internal("building the proxied request", error))?;
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(&name.as_str()) && name != header::HOST {
            inner.headers_mut().append(name, value.clone());
        }
    }
    let host = HeaderValue::from_str(&format!("localhost:{port}")).expect("a valid header");
    inner.headers_mut().insert(header::HOST, host);
    let prefix = format!("/v1/environments/{id}/proxy/{port}");
    if let Ok(prefix) = HeaderValue::from_str(&prefix) {
        inner.headers_mut().insert("x-forwarded-prefix", prefix);
    }
    let bad_gateway = |error: &dyn std::fmt::Display| crate::error::ApiError::Rejected {
        status: StatusCode::BAD_GATEWAY,
        slug: "bad-gateway",
        detail: format!("the server inside the environment broke the exchange: {error}"),
    };
    let io = hyper_util::rt::TokioIo::new(connection);
    let (mut sender, exchange) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| bad_gateway(&error))?;
    tokio::spawn(async move {
        let _ = exchange.await;
    });
    let response = sender
        .send_request(inner)
        .await
        .map_err(|error| bad_gateway(&error))?;
    let (mut parts, body) = response.into_parts();
    for name in NOT_FORWARDED {
        parts.headers.remove(name);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[derive(Debug, Deserialize)]
pub struct SessionsQuery {
    environment: Option<String>,
    /// Everyone's sessions (auditors, admins).
    #[serde(default)]
    all: bool,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// Sessions, oldest first: the caller's own, or with `all=true` everyone's (auditors, admins).
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    params(("environment" = Option<String>, Query), ("all" = Option<bool>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = api::SessionList), (status = 400, body = api::Problem), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<api::SessionList>> {
    let environment = match &query.environment {
        Some(text) => Some(environment_id(&state, &caller, "session.list", text).await?),
        None => None,
    };
    let after = match query.cursor.as_deref().map(SessionId::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(invalid)) => return Err(refuse(&state, &caller, "session.list", invalid).await),
    };
    let reply = perform(
        &state,
        &caller,
        Action::ListSessions(ListSessions {
            environment,
            all: query.all,
            after,
            limit: query.limit,
        }),
    )
    .await?;
    let Reply::Sessions { items, next } = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::SessionList {
        items: items.into_iter().map(convert::session).collect(),
        next_cursor: next.map(String::from),
    }))
}

async fn session_id(
    state: &AppState,
    caller: &Caller,
    action: &str,
    text: &str,
) -> Result<SessionId> {
    match SessionId::parse(text) {
        Ok(id) => Ok(id),
        Err(_) => Err(refuse(
            state,
            caller,
            action,
            Invalid::new("id", format!("{text:?} is not a session id")),
        )
        .await),
    }
}

/// One session: the caller's own, or any (auditors, admins).
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = api::Session), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Session>> {
    let id = session_id(&state, &caller, "session.get", &id).await?;
    let reply = perform(&state, &caller, Action::GetSession(id)).await?;
    let Reply::SessionRecord(session) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(convert::session(session)))
}

/// A terminal session's recording, asciicast v2 (playable with `asciinema play`); while the
/// session is open, what was recorded so far.
#[utoipa::path(get, path = "/v1/sessions/{id}/recording", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, description = "asciicast v2", content_type = "application/x-asciicast"),
        (status = 404, body = api::Problem, description = "No such session, or it has no recording")),
    security(("bearer" = [])))]
pub async fn get_recording(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = session_id(&state, &caller, "session.recording", &id).await?;
    let reply = perform(&state, &caller, Action::GetRecording(id)).await?;
    let Reply::SessionRecord(session) = reply else {
        return Err(unexpected(reply));
    };
    let missing =
        || -> crate::error::ApiError { airlock_core::Error::not_found("recording").into() };
    if !session.recorded {
        return Err(missing());
    }
    let file = tokio::fs::File::open(state.sessions.recording_path(&session.id))
        .await
        .map_err(|_| missing())?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-asciicast"),
        )],
        body,
    )
        .into_response())
}
