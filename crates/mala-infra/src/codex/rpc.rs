//! JSON-RPC as `codex app-server` speaks it on stdio: one JSON object per
//! line, no `"jsonrpc"` field. Three kinds of message come in, told apart by
//! their fields: a response (`id` and `result` or `error`, to a request of
//! ours), a notification (`method`, no `id`) and a request of the server's
//! (`method` and `id`, in an id space of its own) that waits for our answer.
//!
//! One reader task owns the input and one writer task the output, so a slow
//! answer to one server request never holds up another, nor our requests.
//! A line that is none of the three is handed on as it is, never fatal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::session_record::SessionRecord;

/// The longest line the server may write: a turn's whole diff fits.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Why a request of ours got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RpcError {
    /// The server answered with an error.
    #[error("codex app-server refused `{method}`: {message} (code {code})")]
    Refused {
        method: String,
        code: i64,
        message: String,
    },
    /// The connection ended before the answer (the process exited).
    #[error("codex app-server closed the connection before answering `{method}`")]
    Closed { method: String },
}

/// What the server sent that is not an answer to us.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    Notification {
        method: String,
        params: Value,
    },
    /// Answer it with [`RpcClient::respond`] under the same `id`.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A line that is none of the above (kept for the session's record).
    Unknown(Value),
    /// A line that is not JSON, or too long; the connection goes on.
    Unreadable(String),
}

type Pending = Arc<Mutex<HashMap<u64, (String, oneshot::Sender<Result<Value, RpcError>>)>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers the server's requests, from any task; an answer after the
/// connection ended goes nowhere.
#[derive(Debug, Clone)]
pub(crate) struct Responder(mpsc::UnboundedSender<Value>);

impl Responder {
    pub(crate) fn respond(&self, id: Value, result: Value) {
        let _ = self.0.send(object([("id", id), ("result", result)]));
    }
}

/// Our end of the connection.
#[derive(Debug)]
pub(crate) struct RpcClient {
    outbox: mpsc::UnboundedSender<Value>,
    pending: Pending,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl RpcClient {
    /// Starts the reader and the writer; what the server sends that is not
    /// an answer comes out of the receiver, which ends with the connection.
    #[cfg(test)]
    pub(crate) fn start(
        input: impl AsyncRead + Unpin + Send + 'static,
        output: impl AsyncWrite + Unpin + Send + 'static,
    ) -> (Self, mpsc::UnboundedReceiver<Inbound>) {
        Self::start_recorded(input, output, None)
    }

    /// The same, every line in both directions also kept in `record`.
    pub(crate) fn start_recorded(
        input: impl AsyncRead + Unpin + Send + 'static,
        output: impl AsyncWrite + Unpin + Send + 'static,
        record: Option<Arc<SessionRecord>>,
    ) -> (Self, mpsc::UnboundedReceiver<Inbound>) {
        let (outbox, queued) = mpsc::unbounded_channel();
        let (inbound, inbox) = mpsc::unbounded_channel();
        let pending = Pending::default();
        let reader = tokio::spawn(read_loop(
            input,
            Arc::clone(&pending),
            inbound,
            record.clone(),
        ));
        let writer = tokio::spawn(write_loop(output, queued, record));
        let client = Self {
            outbox,
            pending,
            next_id: AtomicU64::new(1),
            reader,
            writer,
        };
        (client, inbox)
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(id, (method.to_owned(), answer));
        let closed = || RpcError::Closed {
            method: method.to_owned(),
        };
        if self
            .outbox
            .send(object([
                ("id", id.into()),
                ("method", method.into()),
                ("params", params),
            ]))
            .is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(closed());
        }
        answered.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Sends a notification (no answer comes).
    pub(crate) fn notify(&self, method: &str, params: Value) {
        let _ = self
            .outbox
            .send(object([("method", method.into()), ("params", params)]));
    }

    /// Answers the server's request `id`.
    pub(crate) fn respond(&self, id: Value, result: Value) {
        let _ = self.outbox.send(object([("id", id), ("result", result)]));
    }

    /// A handle that answers the server's requests from another task.
    pub(crate) fn responder(&self) -> Responder {
        Responder(self.outbox.clone())
    }

    /// Refuses the server's request `id` (a method mala does not serve).
    pub(crate) fn respond_error(&self, id: Value, code: i64, message: &str) {
        let error = json!({"code": code, "message": message});
        let _ = self.outbox.send(object([("id", id), ("error", error)]));
    }
}

/// A message from its fields, the values moved in.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

async fn write_loop(
    mut output: impl AsyncWrite + Unpin,
    mut queued: mpsc::UnboundedReceiver<Value>,
    record: Option<Arc<SessionRecord>>,
) {
    while let Some(message) = queued.recv().await {
        let mut line = message.to_string().into_bytes();
        if let Some(record) = &record {
            record.write_raw("out", &line);
        }
        line.push(b'\n');
        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    input: impl AsyncRead + Unpin,
    pending: Pending,
    inbound: mpsc::UnboundedSender<Inbound>,
    record: Option<Arc<SessionRecord>>,
) {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_bounded_line(&mut input, &mut line).await {
            Ok(0) | Err(LineError::Io) => break,
            Ok(_) => {}
            Err(LineError::TooLong) => {
                let _ = inbound.send(Inbound::Unreadable(format!(
                    "a line longer than {} MB",
                    MAX_LINE / 1024 / 1024
                )));
                continue;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let message = match serde_json::from_str::<Value>(text) {
            Ok(message) => {
                if let Some(record) = &record {
                    record.write_raw("in", text.as_bytes());
                }
                message
            }
            Err(error) => {
                let _ = inbound.send(Inbound::Unreadable(format!("{error}: {text}")));
                continue;
            }
        };
        if let Some(message) = classify(message, &pending) {
            let _ = inbound.send(message);
        }
    }
    // Nobody answers now: every request still waiting learns it.
    for (_, (method, answer)) in lock(&pending).drain() {
        let _ = answer.send(Err(RpcError::Closed { method }));
    }
}

/// Answers a waiting request, or says what the message is.
fn classify(mut message: Value, pending: &Pending) -> Option<Inbound> {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let params = message.get_mut("params").map_or(Value::Null, Value::take);
    match (method, message.get("id").cloned()) {
        (Some(method), Some(id)) => Some(Inbound::Request { id, method, params }),
        (Some(method), None) => Some(Inbound::Notification { method, params }),
        (None, Some(id)) => {
            let waiting = id.as_u64().and_then(|id| lock(pending).remove(&id));
            let Some((method, answer)) = waiting else {
                return Some(Inbound::Unknown(message));
            };
            let result = match message.get_mut("error") {
                Some(error) => Err(RpcError::Refused {
                    method,
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                }),
                None => Ok(message.get_mut("result").map_or(Value::Null, Value::take)),
            };
            let _ = answer.send(result);
            None
        }
        (None, None) => Some(Inbound::Unknown(message)),
    }
}

enum LineError {
    Io,
    TooLong,
}

/// Reads up to and including `\n`; a longer line than [`MAX_LINE`] is read
/// to its end and refused.
async fn read_bounded_line(
    input: &mut (impl AsyncBufReadExt + Unpin),
    line: &mut Vec<u8>,
) -> Result<usize, LineError> {
    let mut read = 0;
    let mut too_long = false;
    loop {
        let buffer = input.fill_buf().await.map_err(|_| LineError::Io)?;
        if buffer.is_empty() {
            break;
        }
        let (chunk, done) = match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => (&buffer[..=end], true),
            None => (buffer, false),
        };
        let taken = chunk.len();
        if !too_long && line.len() + taken <= MAX_LINE {
            line.extend_from_slice(chunk);
        } else {
            too_long = true;
            line.clear();
        }
        input.consume(taken);
        read += taken;
        if done {
            break;
        }
    }
    if too_long {
        return Err(LineError::TooLong);
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    /// A client and the server's end of its two pipes.
    fn connected() -> (
        RpcClient,
        mpsc::UnboundedReceiver<Inbound>,
        BufReader<DuplexStream>,
        DuplexStream,
    ) {
        let (client_out, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, client_in) = tokio::io::duplex(1 << 16);
        let (client, inbox) = RpcClient::start(client_in, client_out);
        (client, inbox, BufReader::new(server_in), server_out)
    }

    async fn next_line(input: &mut BufReader<DuplexStream>) -> Value {
        let mut line = String::new();
        input.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    async fn say(output: &mut DuplexStream, message: Value) {
        output
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn answers_find_their_requests_whatever_comes_between() {
        let (client, mut inbox, mut input, mut output) = connected();
        let client = Arc::new(client);
        let first = tokio::spawn({
            let client = Arc::clone(&client);
            async move {
                client
                    .request("thread/start", json!({"cwd": "/repo"}))
                    .await
            }
        });
        let asked = next_line(&mut input).await;
        assert_eq!(asked["method"], "thread/start");
        assert_eq!(asked["params"]["cwd"], "/repo");
        assert!(asked.get("jsonrpc").is_none(), "codex's framing has none");
        let second = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.request("turn/start", json!({})).await }
        });
        let asked_second = next_line(&mut input).await;
        // The server's own request uses id 0, as ours never do; then the
        // answers come in the other order.
        say(
            &mut output,
            json!({"id": 0, "method": "item/commandExecution/requestApproval", "params": {"command": "ls"}}),
        )
        .await;
        say(
            &mut output,
            json!({"method": "turn/started", "params": {"turn": {"id": "t1"}}}),
        )
        .await;
        say(
            &mut output,
            json!({"id": asked_second["id"], "result": {"turn": {"id": "t1"}}}),
        )
        .await;
        say(
            &mut output,
            json!({"id": asked["id"], "result": {"thread": {"id": "th1"}}}),
        )
        .await;
        assert_eq!(second.await.unwrap().unwrap()["turn"]["id"], "t1");
        assert_eq!(first.await.unwrap().unwrap()["thread"]["id"], "th1");
        assert_eq!(
            inbox.recv().await.unwrap(),
            Inbound::Request {
                id: json!(0),
                method: "item/commandExecution/requestApproval".into(),
                params: json!({"command": "ls"}),
            }
        );
        assert!(matches!(
            inbox.recv().await.unwrap(),
            Inbound::Notification { method, .. } if method == "turn/started"
        ));
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_and_our_answers_carry_the_servers_id() {
        let (client, _inbox, mut input, mut output) = connected();
        let client = Arc::new(client);
        let asked = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.request("thread/start", json!({})).await }
        });
        let line = next_line(&mut input).await;
        say(
            &mut output,
            json!({"id": line["id"], "error": {"code": -32600, "message": "requires experimentalApi capability"}}),
        )
        .await;
        assert_eq!(
            asked.await.unwrap(),
            Err(RpcError::Refused {
                method: "thread/start".into(),
                code: -32600,
                message: "requires experimentalApi capability".into(),
            })
        );
        client.respond(json!(7), json!({"decision": "decline"}));
        client.notify("initialized", json!({}));
        client.respond_error(json!("x"), -32601, "not served");
        assert_eq!(
            next_line(&mut input).await,
            json!({"id": 7, "result": {"decision": "decline"}})
        );
        assert_eq!(next_line(&mut input).await["method"], "initialized");
        assert_eq!(next_line(&mut input).await["error"]["code"], -32601);
    }

    #[tokio::test]
    async fn odd_lines_are_handed_on_and_an_ended_connection_fails_what_waits() {
        let (client, mut inbox, mut input, mut output) = connected();
        output
            .write_all(b"not json\n\n{\"id\": 99, \"result\": 1}\n")
            .await
            .unwrap();
        assert!(matches!(
            inbox.recv().await.unwrap(),
            Inbound::Unreadable(_)
        ));
        // An answer to nothing we asked is kept, not fatal.
        assert_eq!(
            inbox.recv().await.unwrap(),
            Inbound::Unknown(json!({"id": 99, "result": 1}))
        );
        let client = Arc::new(client);
        let waiting = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.request("turn/start", json!({})).await }
        });
        next_line(&mut input).await;
        drop(output);
        assert_eq!(
            waiting.await.unwrap(),
            Err(RpcError::Closed {
                method: "turn/start".into()
            })
        );
        assert_eq!(
            inbox.recv().await,
            None,
            "the inbox ends with the connection"
        );
    }
}
