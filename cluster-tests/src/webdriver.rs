//! A small WebDriver client driving Debian's headless `chromium` through `chromedriver` (the W3C
//! protocol: JSON over HTTP/1.1 on loopback, one blocking request per call), for the tests of
//! pages the nodes serve. Only what those tests use: navigate, find, type, click, run a script,
//! take a screenshot.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// How long chromedriver may take to start answering.
const DRIVER_START: Duration = Duration::from_secs(60);
/// How long one WebDriver call may take (starting a browser on a loaded machine is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Set to `1` to skip browser tests where chromium is not installed (never in CI).
pub const SKIP_VAR: &str = "STARLING_SKIP_BROWSER";

/// The `chromium` and `chromedriver` executables.
#[derive(Clone, Debug)]
pub struct BrowserTools {
    /// The browser.
    pub chromium: PathBuf,
    /// Its WebDriver server.
    pub chromedriver: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Finds chromium and chromedriver on the PATH. Missing, it is an error naming the packages to
/// install, unless `STARLING_SKIP_BROWSER=1`: then `None`, after saying so on stderr.
pub fn browser_tools() -> Result<Option<BrowserTools>> {
    let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"));
    let chromedriver = on_path("chromedriver");
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Ok(Some(BrowserTools {
            chromium,
            chromedriver,
        })),
        _ if std::env::var(SKIP_VAR).as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED: chromium or chromedriver is not installed and {SKIP_VAR}=1 \
                 (apt-get install chromium chromium-driver to run this test)"
            );
            Ok(None)
        }
        _ => bail!(
            "this test drives a real browser: install Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver), or set {SKIP_VAR}=1 to skip it locally"
        ),
    }
}

/// A headless chromium session through a chromedriver process of its own. Dropping it ends
/// the session (which closes the browser) and stops chromedriver.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver (its log in `log_dir`) and a headless browser that accepts the
    /// nodes' certificates (signed by a test CA the browser does not know).
    pub fn launch(tools: &BrowserTools, log_dir: &Path) -> Result<Self> {
        let port = crate::local_cluster::free_ports(1)?[0];
        let log = log_dir.join("chromedriver.log");
        let driver = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(File::create(log_dir.join("chromedriver.out"))?)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", tools.chromedriver.display()))?;
        let profile = tempfile::Builder::new()
            .prefix("starling-chromium-")
            .tempdir()?;
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            match browser.call("GET", "/status", None) {
                Ok(status) if status["ready"] == json!(true) => break,
                outcome => {
                    if let Some(exit) = browser.driver.try_wait()? {
                        bail!("chromedriver exited with {exit} (see {})", log.display());
                    }
                    ensure!(
                        started.elapsed() < DRIVER_START,
                        "chromedriver not ready within {DRIVER_START:?}: {outcome:?}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let profile_dir = browser._profile.path().display().to_string();
        let created = browser.call(
            "POST",
            "/session",
            Some(&json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": {
                        "binary": tools.chromium.display().to_string(),
                        "args": [
                            "--headless=new",
                            // Tests run as root in CI, where chromium's sandbox cannot start.
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--window-size=1400,1000",
                            format!("--user-data-dir={profile_dir}"),
                        ],
                    },
                }},
            })),
        )?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id in chromedriver's answer")?
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver call; its `value`, or the error it reported.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .with_context(|| format!("connecting to chromedriver on port {}", self.port))?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let raw = read_response(&mut stream)
            .with_context(|| format!("WebDriver {method} {path}: reading the answer"))?;
        let response = crate::side_port::parse(&raw)?;
        let answer: Value = serde_json::from_str(&response.body)
            .with_context(|| format!("WebDriver {method} {path}: {}", response.body))?;
        ensure!(
            response.status == 200,
            "WebDriver {method} {path} answered {}: {} {}",
            response.status,
            answer["value"]["error"],
            answer["value"]["message"]
        );
        Ok(answer["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Navigates to `url` (returns once the document loaded).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&json!({ "url": url })),
        )?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; what it returns.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The first element matching CSS selector `css`.
    pub fn find(&self, css: &str) -> Result<String> {
        let found = self.call(
            "POST",
            &self.session_path("/element"),
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element reference for {css:?}: {found}"))
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.find(css)?;
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(&json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) -> Result<()> {
        let element = self.find(css)?;
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            Some(&json!({})),
        )?;
        Ok(())
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let encoded = self.call("GET", &self.session_path("/screenshot"), None)?;
        base64_decode(encoded.as_str().context("screenshot is not a string")?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` (chromedriver keeps the connection open
/// whatever the request asks, so the end of the body is not the end of the stream).
fn read_response(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .context("no content-length in the answer")?
                .trim()
                .parse()
                .context("bad content-length")?;
            if raw.len() >= end + 4 + length {
                raw.truncate(end + 4 + length);
                return Ok(raw);
            }
        }
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "the connection closed mid-answer");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Decodes standard base64 (padding optional, no whitespace).
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        ensure!(chunk.len() > 1, "truncated base64");
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = value(*c).with_context(|| format!("not base64: {:?}", char::from(*c)))?;
            n |= v << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        for (encoded, plain) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYg", "foob"),
        ] {
            assert_eq!(
                base64_decode(encoded).unwrap(),
                plain.as_bytes(),
                "{encoded}"
            );
        }
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("Zm9v!").is_err());
        assert!(base64_decode("Z").is_err());
    }
}
