//! Sessions (shells, streamed commands, port forwards), copies in and out, and proxied HTTP:
//! everything that reaches inside a running environment besides a buffered exec. Each needs
//! the `environment.exec` permission on it, is refused while its grant is not active, and
//! counts as activity.

use super::{Engine, Origin};
use crate::action::{Command, Conn, Contents, ListSessions, NewSession, Reply};
use crate::authz::Resource;
use crate::error::{Error, Invalid};
use crate::ids::SessionId;
use crate::model::Principal;
use crate::ports::{ProcessExit, ProcessSpec, RuntimeError, SessionQuery};
use crate::session::{LiveSession, Session, SessionIo, SessionKind, TerminalSize};

/// What a terminal session runs when no command is given: the image's bash, else its sh,
/// as a login shell.
const LOGIN_SHELL: [&str; 3] = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
];

/// How a session ended, as the server saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnd {
    /// Set when the command ended (not for port forwards, or when the client left first).
    pub exit: Option<ProcessExit>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The SHA-256 (hex) of the whole recording, for a terminal session: kept in the
    /// `session.end` event, so the hash chain vouches for the file.
    pub recording_sha256: Option<String>,
}

impl Engine {
    pub(super) async fn start_session(
        &self,
        principal: &Principal,
        request: NewSession,
    ) -> Result<Reply, Error> {
        let environment = self.load_running(principal, &request.environment).await?;
        let (argv, io) = match request.kind {
            SessionKind::PortForward => {
                let port = request
                    .port
                    .filter(|port| *port != 0)
                    .ok_or_else(|| Invalid::new("port", "must be 1 to 65535"))?;
                self.note_activity(&environment, false).await?;
                let connection = self
                    .runtime
                    .connect(&environment.id, port)
                    .await
                    .map_err(inside_error)?;
                (vec![port.to_string()], SessionIo::Connection(connection))
            }
            SessionKind::Terminal | SessionKind::Exec => {
                let terminal = request.kind == SessionKind::Terminal;
                let argv = match (terminal, request.argv.is_empty()) {
                    (true, true) => LOGIN_SHELL.map(str::to_owned).to_vec(),
                    _ => request.argv,
                };
                let checked = self.exec_spec(Command {
                    argv,
                    env: request.env,
                    cwd: request.cwd,
                    ..Command::default()
                })?;
                let mut env = checked.env;
                self.add_grant_env(&environment, &mut env).await?;
                self.note_activity(&environment, false).await?;
                let spec = ProcessSpec {
                    argv: checked.argv.clone(),
                    env,
                    cwd: checked.cwd,
                    tty: terminal.then(|| request.size.unwrap_or(TerminalSize::DEFAULT)),
                };
                let process = self.runtime.spawn(&environment.id, &spec).await?;
                (checked.argv, SessionIo::Process(process))
            }
        };
        let session = Session {
            id: SessionId::generate(),
            environment: environment.id.clone(),
            user: principal.user.id.clone(),
            kind: request.kind,
            argv,
            started_at: self.now(),
            ended_at: None,
            exit_code: None,
            bytes_in: 0,
            bytes_out: 0,
            recorded: request.kind == SessionKind::Terminal,
        };
        // On failure the streams are dropped here, which ends the command.
        self.store.insert_session(&session).await?;
        Ok(Reply::Session(LiveSession { session, io }))
    }

    /// Records how a session ended and audits it (`session.end`, by whoever opened it).
    pub async fn end_session(&self, origin: &Origin, session: &Session, end: SessionEnd) {
        let ended = Session {
            ended_at: Some(self.now()),
            exit_code: end.exit.map(|exit| exit.exit_code),
            bytes_in: end.bytes_in,
            bytes_out: end.bytes_out,
            ..session.clone()
        };
        if let Err(error) = self.store.end_session(&ended).await {
            tracing::error!(%error, session = %session.id, "failed to record the end of a session");
        }
        let mut detail = format!(
            "session {} ({}): {} B in, {} B out",
            session.id,
            session.kind.as_str(),
            end.bytes_in,
            end.bytes_out
        );
        if let Some(digest) = &end.recording_sha256 {
            detail.push_str(&format!(", recording sha256 {digest}"));
        }
        if let Some(exit) = end.exit {
            detail.push_str(&format!(", exit code {}", exit.exit_code));
            if exit.oom_killed {
                self.audit_oom_kill(
                    &session.environment,
                    format!("during session {}", session.id),
                )
                .await;
            }
        }
        self.audit(
            origin,
            session.user.as_str(),
            "session.end",
            Some(session.environment.to_string()),
            "ok",
            Some(detail),
        )
        .await;
    }

    /// Called while a session stays open: checks again that whoever opened it may still be
    /// inside (the credential not revoked or expired, the user still allowed
    /// `environment.exec` on a running environment, its grant still active) and marks the
    /// environment as in use, so that an idle timeout does not stop it under someone. An
    /// error ends the session.
    pub async fn keep_alive(&self, principal: &Principal, session: &Session) -> Result<(), Error> {
        if let crate::model::Credential::Token(id) = &principal.credential {
            let now = self.now();
            let valid = self.store.get_token(id).await?.is_some_and(|token| {
                token.revoked_at.is_none() && token.expires_at.is_none_or(|end| end > now)
            });
            if !valid {
                return Err(Error::Unauthenticated);
            }
        }
        let user = self
            .store
            .get_user(&principal.user.id)
            .await?
            .ok_or(Error::Unauthenticated)?;
        let current = Principal {
            user,
            ..principal.clone()
        };
        let environment = self.load_running(&current, &session.environment).await?;
        self.note_activity(&environment, false).await
    }

    /// Ends the records of sessions a dead server left open (at start), each with its
    /// `session.end` event; how many.
    pub async fn end_orphaned_sessions(&self) -> Result<usize, Error> {
        let ended = self.store.end_open_sessions(self.now()).await?;
        for session in &ended {
            self.audit(
                &Origin::default(),
                session.user.as_str(),
                "session.end",
                Some(session.environment.to_string()),
                "ok",
                Some(format!(
                    "session {} ({}): ended at start, the server relaying it had stopped",
                    session.id,
                    session.kind.as_str()
                )),
            )
            .await;
        }
        Ok(ended.len())
    }

    pub(super) async fn list_sessions(
        &self,
        principal: &Principal,
        query: ListSessions,
    ) -> Result<Reply, Error> {
        let action = if query.all {
            "audit.read"
        } else {
            "environment.list"
        };
        self.require(principal, action, &Resource::Server)?;
        let limit = self.limits.page_size(query.limit)?;
        let mut items = self
            .store
            .list_sessions(&SessionQuery {
                environment: query.environment,
                user: (!query.all).then(|| principal.user.id.clone()),
                after: query.after,
                limit: limit + 1,
            })
            .await?;
        let next = super::cut_page(&mut items, limit, |session| session.id.clone());
        Ok(Reply::Sessions { items, next })
    }

    /// A session its opener, an auditor or an admin may read; to anyone else it is missing.
    pub(super) async fn get_session(
        &self,
        principal: &Principal,
        id: &SessionId,
    ) -> Result<Reply, Error> {
        let session = self
            .store
            .get_session(id)
            .await?
            .ok_or(Error::not_found("session"))?;
        let own = session.user == principal.user.id
            && self.allows(principal, "environment.list", &Resource::Server);
        if !own && !self.allows(principal, "audit.read", &Resource::Server) {
            return Err(Error::not_found("session"));
        }
        Ok(Reply::SessionRecord(session))
    }

    pub(super) async fn copy_in(
        &self,
        principal: &Principal,
        environment: &crate::ids::EnvironmentId,
        path: String,
        mode: u32,
        contents: Contents,
    ) -> Result<Reply, Error> {
        if mode > 0o7777 {
            return Err(Invalid::new("mode", "must be at most 07777").into());
        }
        let environment = self.load_running(principal, environment).await?;
        self.note_activity(&environment, false).await?;
        let written = self
            .runtime
            .write_file(
                &environment.id,
                &path,
                mode,
                contents.0,
                self.limits.copy_limit,
            )
            .await
            .map_err(inside_error)?;
        Ok(Reply::Copied(written))
    }

    pub(super) async fn copy_out(
        &self,
        principal: &Principal,
        environment: &crate::ids::EnvironmentId,
        path: String,
    ) -> Result<Reply, Error> {
        let environment = self.load_running(principal, environment).await?;
        self.note_activity(&environment, false).await?;
        let (size, contents) = self
            .runtime
            .read_file(&environment.id, &path)
            .await
            .map_err(inside_error)?;
        if size > self.limits.copy_limit {
            return Err(Invalid::new(
                "path",
                format!(
                    "the file has {size} bytes, more than the limit of {}",
                    self.limits.copy_limit
                ),
            )
            .into());
        }
        Ok(Reply::File {
            size,
            contents: Contents(contents),
        })
    }

    pub(super) async fn proxy(
        &self,
        principal: &Principal,
        environment: &crate::ids::EnvironmentId,
        port: u16,
    ) -> Result<Reply, Error> {
        if port == 0 {
            return Err(Invalid::new("port", "must be 1 to 65535").into());
        }
        let environment = self.load_running(principal, environment).await?;
        self.note_activity(&environment, false).await?;
        let connection = self
            .runtime
            .connect(&environment.id, port)
            .await
            .map_err(inside_error)?;
        Ok(Reply::Connection(Conn(connection)))
    }
}

/// The runtime's word on a path or port inside, as the caller's error.
fn inside_error(error: RuntimeError) -> Error {
    match error {
        RuntimeError::Path(why) if why.ends_with("no such file or directory") => {
            Error::NotFound { kind: "file" }
        }
        RuntimeError::Path(why) => Invalid::new("path", why).into(),
        RuntimeError::TooLarge(limit) => Invalid::new(
            "contents",
            format!("larger than the limit of {limit} bytes"),
        )
        .into(),
        RuntimeError::PortClosed(port) => Error::Conflict(format!(
            "nothing accepts connections on port {port} in the environment"
        )),
        other => other.into(),
    }
}
