//! The little HTTP/1.1 server under the model API mocks: 127.0.0.1 with an
//! OS-chosen port, keep-alive, `content-length` bodies, every request kept.
//! Proxy requests (CONNECT and absolute URIs) are refused with 403 and
//! kept, so pointing `HTTPS_PROXY` at a mock catches any attempt to reach
//! another host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// One request a mock received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent (`/v1/messages?beta=true`, or `host:443` for CONNECT).
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl RecordedRequest {
    /// The path without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }

    fn is_proxied(&self) -> bool {
        self.method == "CONNECT"
            || self.target.starts_with("http://")
            || self.target.starts_with("https://")
    }
}

/// What answers a request: the whole HTTP response, as [`http_response`] writes it.
pub(crate) type Route = dyn Fn(&RecordedRequest) -> String + Send + Sync;

/// A running server. Stops when dropped.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Starts serving on a thread of its own named `name`, so it serves
    /// sync and async tests alike.
    pub(crate) fn start(name: &str, route: Arc<Route>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let log = Arc::clone(&requests);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("mock runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                    tokio::select! {
                        () = accept_loop(listener, log, route) => {}
                        _ = stopped => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn mock thread");
        Self {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("request log").clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    route: Arc<Route>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (requests, route) = (Arc::clone(&requests), Arc::clone(&route));
        tokio::spawn(async move {
            let _ = serve_connection(stream, &requests, route.as_ref()).await;
        });
    }
}

/// Reads one request; `None` once the client has closed the connection.
async fn read_request(
    stream: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<RecordedRequest>> {
    let mut request_line = String::new();
    if stream.read_line(&mut request_line).await? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut raw = vec![0; length];
    stream.read_exact(&mut raw).await?;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Ok(Some(RecordedRequest {
        method,
        target,
        headers,
        body,
    }))
}

/// Serves requests on one keep-alive connection until the client closes it.
async fn serve_connection(
    stream: TcpStream,
    requests: &Mutex<Vec<RecordedRequest>>,
    route: &Route,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await? {
        requests.lock().expect("request log").push(request.clone());
        if request.is_proxied() {
            let refusal = r#"{"error":"mock proxy refuses"}"#;
            let response = http_response(403, "application/json", refusal, true);
            stream.get_mut().write_all(response.as_bytes()).await?;
            return Ok(());
        }
        let response = route(&request);
        stream.get_mut().write_all(response.as_bytes()).await?;
        stream.get_mut().flush().await?;
    }
    Ok(())
}

/// A whole HTTP response with `body`.
pub(crate) fn http_response(status: u16, content_type: &str, body: &str, close: bool) -> String {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        529 => "Overloaded",
        _ => "Error",
    };
    let connection = if close { "close" } else { "keep-alive" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nrequest-id: req_mock\r\nretry-after: 0\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    )
}
