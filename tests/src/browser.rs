//! Headless Chromium driven over the DevTools protocol, for tests of the
//! web console in a real browser: a minimal WebSocket client (RFC 6455,
//! text frames, client masking) and the few CDP calls a test needs
//! (navigate, evaluate, screenshot). Chromium is Debian's `chromium`
//! package (`scripts/install-deps.sh` installs it); a missing browser
//! fails the test, it is never skipped.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long Chromium gets to write its DevTools port.
const START_TIMEOUT_MS: u64 = 20_000;
/// How long one DevTools call may take.
const CALL_TIMEOUT_MS: u64 = 15_000;
/// Largest WebSocket message accepted (screenshots are the large ones).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Window size of the page, in CSS pixels.
const WINDOW_SIZE: &str = "1280,900";

/// The Chromium binary: `SLUICE_CHROMIUM` or the first of the usual names
/// found on `PATH`.
pub fn chromium_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SLUICE_CHROMIUM") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "SLUICE_CHROMIUM names {}, which is not a file",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for directory in std::env::split_paths(&path) {
            let candidate = directory.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "chromium is missing: install Debian's `chromium` package (scripts/install-deps.sh does), \
         or point SLUICE_CHROMIUM at a Chromium binary"
    )
}

/// A running headless Chromium with one page attached; killed on drop.
pub struct Browser {
    child: Child,
    socket: WebSocket,
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium with its profile in `profile_dir` and opens a page.
    pub async fn start(profile_dir: &Path) -> Result<Self> {
        let binary = chromium_binary()?;
        let log = std::fs::File::create(profile_dir.join("chromium.log"))?;
        let child = Command::new(&binary)
            .args([
                "--headless=new",
                "--remote-debugging-port=0",
                "--no-sandbox",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .args([
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
            ])
            .args(["--disable-extensions", "--disable-background-networking"])
            .arg(format!("--window-size={WINDOW_SIZE}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut child = KillOnDrop(Some(child));
        let (port, path) = devtools_address(profile_dir, child.0.as_mut()).await?;
        let socket = WebSocket::connect(port, &path).await?;
        let mut browser = Browser {
            child: child.0.take().context("child")?,
            socket,
            session: String::new(),
            next_id: 0,
        };
        let target = browser
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        Ok(browser)
    }

    /// Sends one DevTools command (to the page unless `browser_level`) and
    /// waits for its answer; events in between are dropped.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket.send_text(&message.to_string()).await?;
        let wait = async {
            loop {
                let text = self.socket.read_message().await?;
                let answer: Value = serde_json::from_str(&text)?;
                if answer["id"].as_u64() == Some(id) {
                    if let Some(error) = answer.get("error") {
                        bail!("{method}: {error}");
                    }
                    return Ok(answer["result"].clone());
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), wait)
            .await
            .map_err(|_| anyhow!("{method}: no answer within {CALL_TIMEOUT_MS} ms"))?
    }

    async fn page_call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Loads `url` in the page (does not wait for it to render).
    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        let answer = self
            .page_call("Page.navigate", json!({ "url": url }))
            .await?;
        if let Some(error) = answer.get("errorText") {
            bail!("navigate to {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates `expression` in the page (promises awaited) and answers
    /// its value; an exception is an error.
    pub async fn evaluate(&mut self, expression: &str) -> Result<Value> {
        let answer = self
            .page_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is `true`, for at most `timeout`;
    /// the error shows `describe` (another expression) at the end.
    pub async fn wait_for(
        &mut self,
        expression: &str,
        describe: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.evaluate(expression).await? == json!(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let seen = self.evaluate(describe).await.unwrap_or_default();
                bail!("`{expression}` not true within {timeout:?}; page shows: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the page as it is now.
    pub async fn screenshot(&mut self) -> Result<Vec<u8>> {
        let answer = self
            .page_call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = answer["data"].as_str().context("screenshot data")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The port and browser path Chromium writes to `DevToolsActivePort` once
/// it listens (asked for port 0).
async fn devtools_address(profile_dir: &Path, child: Option<&mut Child>) -> Result<(u16, String)> {
    let file = profile_dir.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    let child = child.context("chromium child")?;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Ok((port.trim().parse()?, path.trim().to_string()));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "chromium exited ({status}) before listening; see {}",
                profile_dir.join("chromium.log").display()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "chromium did not write {} within {START_TIMEOUT_MS} ms",
                file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client side of a WebSocket: text messages out (masked), text
/// messages in (fragments joined, pings answered).
struct WebSocket {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl WebSocket {
    async fn connect(port: u16, path: &str) -> Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > 16 * 1024 {
                bail!("DevTools handshake answer too long");
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("DevTools closed the connection during the handshake");
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("DevTools refused the WebSocket: {head}");
        }
        buffer.drain(..end);
        Ok(Self { stream, buffer })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            length @ 0..=125 => frame.push(0x80 | length as u8),
            length @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ mask[index % 4]),
        );
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    async fn fill(&mut self, wanted: usize) -> Result<()> {
        while self.buffer.len() < wanted {
            let mut chunk = vec![0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("DevTools closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok(())
    }

    /// The next whole text message.
    async fn read_message(&mut self) -> Result<String> {
        let mut message = Vec::new();
        loop {
            self.fill(2).await?;
            let (first, second) = (self.buffer[0], self.buffer[1]);
            let (fin, opcode, masked) = (first & 0x80 != 0, first & 0x0f, second & 0x80 != 0);
            let (length, mut header) = match second & 0x7f {
                126 => {
                    self.fill(4).await?;
                    (
                        u64::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                        4,
                    )
                }
                127 => {
                    self.fill(10).await?;
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&self.buffer[2..10]);
                    (u64::from_be_bytes(bytes), 10)
                }
                short => (u64::from(short), 2),
            };
            let length = usize::try_from(length)
                .ok()
                .filter(|length| message.len() + length <= MAX_MESSAGE_BYTES)
                .ok_or_else(|| anyhow!("DevTools message over {MAX_MESSAGE_BYTES} bytes"))?;
            let mask = if masked { Some(header) } else { None };
            if masked {
                header += 4;
            }
            self.fill(header + length).await?;
            let mut payload: Vec<u8> = self.buffer[header..header + length].to_vec();
            if let Some(at) = mask {
                let key = [
                    self.buffer[at],
                    self.buffer[at + 1],
                    self.buffer[at + 2],
                    self.buffer[at + 3],
                ];
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(index, byte)| *byte ^= key[index % 4]);
            }
            self.buffer.drain(..header + length);
            match opcode {
                0x0..=0x2 => message.extend_from_slice(&payload),
                0x8 => bail!("DevTools closed the WebSocket"),
                0x9 => self.send_frame(0xA, &payload).await?,
                _ => {}
            }
            if fin && opcode <= 0x2 {
                return Ok(String::from_utf8(message)?);
            }
        }
    }
}
