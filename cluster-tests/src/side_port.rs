//! A minimal HTTPS client for a node's side port (`/metrics`, `/healthz`, `/readyz`): one
//! HTTP/1.1 GET over TLS verified against the controller's CA, bounded in time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one GET may take, connect to last byte.
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted.
const RESPONSE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// A response: status code and body.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: String,
}

/// `GET path` on `addr` (`host:port`), verifying the server against `ca_pem`.
pub async fn get(addr: &str, ca_pem: &str, path: &str) -> Result<Response> {
    get_as(addr, ca_pem, path, None).await
}

/// `GET path` as [`get`], with `Authorization: Bearer <token>` when a token is given.
pub async fn get_as(addr: &str, ca_pem: &str, path: &str, token: Option<&str>) -> Result<Response> {
    tokio::time::timeout(GET_TIMEOUT, get_unbounded(addr, ca_pem, path, token))
        .await
        .with_context(|| format!("GET https://{addr}{path} took more than {GET_TIMEOUT:?}"))?
}

async fn get_unbounded(
    addr: &str,
    ca_pem: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Response> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("CA certificate PEM")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = addr.rsplit_once(':').map(|(h, _)| h).context("host:port")?;
    let name = ServerName::try_from(host.to_owned()).context("server name")?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let authorization =
        token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let read = (&mut tls)
        .take(RESPONSE_BYTES_MAX + 1)
        .read_to_end(&mut raw)
        .await;
    // A server that closes without close_notify still sent the whole response.
    if let Err(e) = read {
        ensure!(
            e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty(),
            "reading the response: {e}"
        );
    }
    ensure!(
        raw.len() as u64 <= RESPONSE_BYTES_MAX,
        "response over {RESPONSE_BYTES_MAX} bytes"
    );
    parse(&raw)
}

/// Splits a raw HTTP/1.1 response into status and body.
pub(crate) fn parse(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = std::str::from_utf8(&data[..end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok\n"));
        let chunked = parse(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (503, "not ready"));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err());
    }

    #[test]
    fn finds_unlabelled_samples() {
        let text = "# TYPE starling_raft_term gauge\nstarling_raft_term 3\n\
                    starling_raft_term_other 9\nx{a=\"b\"} 1\n";
        assert_eq!(metric(text, "starling_raft_term"), Some(3.0));
        assert_eq!(metric(text, "x"), None);
        assert_eq!(metric(text, "missing"), None);
    }
}
