//! The HTTP client of the CLI: resolves where the server is and which token to use, and turns
//! problem documents into readable errors; it follows listings page by page and encodes path
//! segments.

use std::path::PathBuf;

use airlock_api::Problem;
use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Connection;

/// A session's WebSocket.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// `~/.config/airlock/config.json` (or `$AIRLOCK_CONFIG`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    pub url: Option<String>,
    pub token: Option<String>,
}

pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("AIRLOCK_CONFIG") {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("airlock/config.json")
}

fn read_config() -> ConfigFile {
    std::fs::read(config_path())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(connection: &Connection) -> Result<Self> {
        let config = read_config();
        let base = connection
            .url
            .clone()
            .or(config.url)
            .unwrap_or_else(|| DEFAULT_URL.into())
            .trim_end_matches('/')
            .to_owned();
        let token = match connection.token.clone().or(config.token) {
            Some(token) => token,
            // On the server's own host, root can use the admin token the server wrote.
            None => std::fs::read_to_string(crate::default_data_dir().join("admin-token"))
                .map(|text| text.trim().to_owned())
                .map_err(|_| {
                    anyhow!("no token: set AIRLOCK_TOKEN, pass --token, or run `airlock login`")
                })?,
        };
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base, token })
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        headers: &[(&str, String)],
    ) -> Result<T> {
        let response = self.request(method, path, body, headers).await?;
        response.json().await.context("reading the server's answer")
    }

    /// Every page of the listing at `path` (which has a query string), following each page's
    /// `next_cursor`; `page` splits a page into its items and that cursor.
    pub async fn all_pages<P: DeserializeOwned, T>(
        &self,
        path: &str,
        page: impl Fn(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = path.to_owned();
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={}", path_segment(cursor)));
            }
            let (mut more, next) = page(self.send(Method::GET, &url, None::<&()>, &[]).await?);
            items.append(&mut more);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// For answers without a body (204).
    pub async fn send_empty(&self, method: Method, path: &str) -> Result<()> {
        self.request(method, path, None::<&()>, &[])
            .await
            .map(|_| ())
    }

    /// A request whose answer is streamed (a file, a recording); errors as for `send`.
    pub async fn fetch(&self, path: &str) -> Result<reqwest::Response> {
        self.request(Method::GET, path, None::<&()>, &[]).await
    }

    /// Sends `body` as raw bytes and reads the JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: reqwest::Body,
    ) -> Result<T> {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.answer(request)
            .await?
            .json()
            .await
            .context("reading the server's answer")
    }

    /// Opens a WebSocket to `path` (a session). A refusal before the upgrade is reported
    /// like any other request's.
    pub async fn websocket(&self, path: &str) -> Result<WebSocket> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}{path}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}{path}")
        } else {
            bail!(
                "the server URL {} is neither http:// nor https://",
                self.base
            );
        };
        let mut request = url
            .into_client_request()
            .context("building the WebSocket request")?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .context("the token is not a valid header")?,
        );
        // Nagle off: keystrokes and frames go out at once.
        match tokio_tungstenite::connect_async_with_config(request, None, true).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let problem = response
                    .body()
                    .as_deref()
                    .and_then(|body| serde_json::from_slice::<Problem>(body).ok());
                match problem {
                    Some(Problem {
                        title,
                        detail: Some(detail),
                        ..
                    }) => bail!("{title} ({}): {detail}", status.as_u16()),
                    Some(problem) => bail!("{} ({})", problem.title, status.as_u16()),
                    None => bail!("the server answered {status}"),
                }
            }
            Err(error) => {
                Err(error).with_context(|| format!("cannot reach airlock at {}", self.base))
            }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.answer(request).await
    }

    /// Sends a request; a refusal becomes an error naming the problem.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach airlock at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        match response.json::<Problem>().await {
            Ok(problem) => match problem.detail {
                Some(detail) => bail!("{} ({}): {detail}", problem.title, status.as_u16()),
                None => bail!("{} ({})", problem.title, status.as_u16()),
            },
            Err(_) if status == StatusCode::UNAUTHORIZED => bail!("the token was refused (401)"),
            Err(_) => bail!("the server answered {status}"),
        }
    }
}

/// Percent-encodes a path segment or query value, so a typo such as `a/b` reaches the server
/// as one (refused) name rather than another route.
pub fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("acr_01ABC-x.y~z"), "acr_01ABC-x.y~z");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
