//! A minimal HTTP/1.1 client over TCP (airlock) or a unix socket (podman's REST API).
//!
//! One [`Client`] holds at most one keep-alive connection and sends one request at a time,
//! like one user of the API. It understands exactly what the two servers send: bodies with
//! `Content-Length`, `Transfer-Encoding: chunked`, or none (read to end of stream, as after
//! podman hijacks a connection to stream an exec's output). Every request has a deadline, so
//! a stuck server ends the benchmark instead of hanging it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// How long one request may take before the benchmark gives up on it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// A status and a body; headers are read but not kept.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Fails unless the status is `expected`, quoting the body.
    pub fn expect(self, expected: u16, what: &str) -> Result<Self> {
        if self.status != expected {
            bail!(
                "{what}: HTTP {} (wanted {expected}): {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            );
        }
        Ok(self)
    }
}

/// One user of an HTTP API: a keep-alive connection, opened on demand.
pub struct Client {
    endpoint: Endpoint,
    /// Sent with every request (e.g. `Authorization`).
    headers: Vec<(String, String)>,
    connection: Option<BufReader<Box<dyn Stream>>>,
}

impl Client {
    pub fn new(endpoint: Endpoint, headers: Vec<(String, String)>) -> Self {
        Self {
            endpoint,
            headers,
            connection: None,
        }
    }

    async fn connect(&self) -> Result<BufReader<Box<dyn Stream>>> {
        let stream: Box<dyn Stream> = match &self.endpoint {
            Endpoint::Tcp(address) => {
                let stream = TcpStream::connect(address)
                    .await
                    .with_context(|| format!("connecting to {address}"))?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Endpoint::Unix(path) => Box::new(
                UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?,
            ),
        };
        Ok(BufReader::new(stream))
    }

    /// Sends a request with an optional JSON body and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Response> {
        let body = json.map(|value| value.to_string().into_bytes());
        self.send(method, path, body.as_deref(), "application/json")
            .await
    }

    /// Sends a request with a raw body of the given content type.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: &str,
    ) -> Result<Response> {
        match tokio::time::timeout(
            REQUEST_DEADLINE,
            self.exchange(method, path, body, content_type),
        )
        .await
        {
            Ok(result) => result.with_context(|| format!("{method} {path}")),
            Err(_) => {
                self.connection = None;
                bail!("{method} {path}: no answer within {REQUEST_DEADLINE:?}")
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: &str,
    ) -> Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        } else if method != "GET" && method != "DELETE" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body.unwrap_or_default());

        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        connection.get_mut().write_all(&message).await?;
        let (response, reusable) = read_response(&mut connection, method).await?;
        if reusable {
            self.connection = Some(connection);
        }
        Ok(response)
    }
}

/// Reads one response; the flag says whether the connection can carry another request.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    method: &str,
) -> Result<(Response, bool)> {
    let status_line = read_line(reader).await?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        let line = read_line(reader).await?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close |= value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        // No body.
    } else if chunked {
        loop {
            let size_line = read_line(reader).await?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                while !read_line(reader).await?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            read_line(reader).await?;
        }
    } else if let Some(length) = content_length {
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else {
        reader.read_to_end(&mut body).await?;
        close = true;
    }
    Ok((Response { status, body }, !close))
}

/// One CRLF-terminated line, without the terminator; EOF before it is an error.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        bail!("the server closed the connection");
    }
    while line.ends_with(['\r', '\n']) {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &str, method: &str) -> (Response, bool) {
        let mut reader = BufReader::new(raw.as_bytes());
        read_response(&mut reader, method).await.unwrap()
    }

    #[tokio::test]
    async fn reads_the_three_body_framings() {
        let (response, reusable) =
            parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "GET").await;
        assert_eq!(
            (response.status, &response.body[..], reusable),
            (200, &b"{}"[..], true)
        );

        let (response, reusable) = parse(
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            "POST",
        )
        .await;
        assert_eq!(
            (response.status, &response.body[..], reusable),
            (201, &b"abcde"[..], true)
        );

        let (response, reusable) = parse(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nstream",
            "POST",
        )
        .await;
        assert_eq!((&response.body[..], reusable), (&b"stream"[..], false));

        let (response, reusable) = parse("HTTP/1.1 204 No Content\r\n\r\n", "DELETE").await;
        assert_eq!(
            (response.status, response.body.len(), reusable),
            (204, 0, true)
        );
    }
}
