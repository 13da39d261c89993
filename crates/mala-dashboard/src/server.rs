//! The HTTP server: the page, the API it reads, the event stream and the
//! two controls. Every answer needs the run's token.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use mala_core::{IssueId, StopAnswer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::{Access, Denied, secret};
use crate::hub::{Hub, Reloaded};
use crate::page::Page;
use crate::transcript::{MOST_ENTRIES, read_page};
use crate::view::RunSnapshot;

/// What the page's two buttons do, given by the process that runs the run.
pub trait Controls: Send + Sync {
    /// Stop taking new issues; running agents finish (the first Ctrl-C).
    /// Returns what the user is told.
    fn drain(&self) -> String;
    /// Stop one issue's session; the issue is skipped, its claim kept.
    /// The reply comes once its worker has ended (`None`: the run ended
    /// without answering).
    fn stop_issue(&self, issue: &IssueId) -> StopReply;
}

/// How a stop came out, once it is known.
pub type StopReply = Pin<Box<dyn Future<Output = Option<StopAnswer>> + Send>>;

/// How long a stop's request waits for the worker to end: its session's
/// grace to end the turn and release its locks, and its finalizing.
const STOP_WAITS: Duration = Duration::from_secs(30);

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Listening beyond loopback was asked for (`--serve-public`).
    pub public: bool,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(
        "{addr} is not a loopback address; the dashboard listens beyond this machine only with --serve-public"
    )]
    NotLoopback { addr: SocketAddr },
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound server, not yet serving: its address and token are known.
#[derive(Debug)]
pub struct Dashboard {
    listener: TcpListener,
    access: Access,
}

struct App {
    hub: Arc<Hub>,
    access: Access,
    page: Page,
    controls: Option<Arc<dyn Controls>>,
}

impl Dashboard {
    /// Listens on `options.addr` (port 0: any free port).
    pub async fn bind(options: ServeOptions) -> Result<Self, DashboardError> {
        let addr = options.addr;
        if !options.public && !addr.ip().is_loopback() {
            return Err(DashboardError::NotLoopback { addr });
        }
        // A loopback address keeps the loopback Host check, public or not.
        let public = options.public && !addr.ip().is_loopback();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind { addr, source })?;
        Ok(Self {
            listener,
            access: Access {
                token: secret(),
                csrf: secret(),
                addr,
                public,
            },
        })
    }

    /// Whether it answers beyond loopback (`--serve-public` on an address
    /// that is not loopback).
    pub fn is_public(&self) -> bool {
        self.access.public
    }

    /// The address to open, with the token.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.access.addr, self.access.token)
    }

    /// Serves `hub` until the process ends. A recorded run is read again
    /// every second while it may change, off the runtime's threads: a
    /// reload reads files, and a long catch-up must not hold up the pages.
    pub fn serve(
        self,
        hub: Arc<Hub>,
        controls: Option<Arc<dyn Controls>>,
    ) -> tokio::task::JoinHandle<()> {
        if !hub.is_live() {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                loop {
                    let reloading = Arc::clone(&hub);
                    let reloaded = tokio::task::spawn_blocking(move || reloading.reload()).await;
                    if !matches!(reloaded, Ok(Reloaded::Going)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        let app = Arc::new(App {
            hub,
            access: self.access,
            page: Page::build(),
            controls,
        });
        let router = routes(app);
        tokio::spawn(async move {
            if let Err(error) = axum::serve(self.listener, router).await {
                tracing::warn!(%error, "the dashboard stopped serving");
            }
        })
    }
}

fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/run", get(run))
        .route("/api/issues/{id}", get(issue))
        .route("/api/issues/{id}/transcript", get(transcript))
        .route("/api/events", get(events))
        .route("/api/drain", post(drain))
        .route("/api/issues/{id}/stop", post(stop))
        .fallback(|| async { answer(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(secure))
        .with_state(app)
}

/// Nothing is cached, sniffed, framed or told where it was linked from.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    response
}

fn answer(status: StatusCode, message: &str) -> Response {
    let ok = status.is_success();
    (status, Json(json!({"ok": ok, "message": message}))).into_response()
}

fn denied(why: Denied) -> Response {
    let status = match why {
        Denied::Token => StatusCode::UNAUTHORIZED,
        Denied::Forgery | Denied::Host => StatusCode::FORBIDDEN,
    };
    let mut response = answer(status, why.message());
    if why == Denied::Token {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// `GET /api/run`: the run, and what the page needs to act on it.
#[derive(Serialize)]
struct RunBody<'a> {
    #[serde(flatten)]
    snapshot: RunSnapshot<'a>,
    /// The run may still change.
    live: bool,
    /// The buttons work here.
    controls: bool,
    csrf: &'a str,
    last_event_id: u64,
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Read as text, so a request without the token is refused as such
/// whatever else it holds.
#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
    offset: Option<String>,
    limit: Option<String>,
}

async fn index(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(why) = app.access.read(&headers, query.token.as_deref()) {
        return denied(why);
    }
    let policy = HeaderValue::from_str(&app.page.policy)
        .unwrap_or(HeaderValue::from_static("default-src 'none'"));
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (axum::http::header::CONTENT_SECURITY_POLICY, policy),
        ],
        app.page.html.clone(),
    )
        .into_response()
}

async fn run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(why) = app.access.read(&headers, query.token.as_deref()) {
        return denied(why);
    }
    let (body, last_event_id) = app.hub.read(|view, last_event_id| {
        let body = serde_json::to_vec(&RunBody {
            snapshot: view.snapshot(Utc::now()),
            live: !view.is_finished(),
            controls: app.controls.is_some() && !view.is_finished(),
            csrf: &app.access.csrf,
            last_event_id,
        });
        (body, last_event_id)
    });
    app.hub.served(last_event_id);
    match body {
        Ok(body) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        Err(error) => answer(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn issue(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(why) = app.access.read(&headers, query.token.as_deref()) {
        return denied(why);
    }
    let id = IssueId::new(id);
    let body = app.hub.read(|view, _| {
        view.issue(&id)
            .and_then(|detail| serde_json::to_value(detail).ok())
    });
    match body {
        Some(body) => Json(body).into_response(),
        None => answer(
            StatusCode::NOT_FOUND,
            &format!("{id} is not an issue of this run"),
        ),
    }
}

async fn transcript(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    if let Err(why) = app.access.read(&headers, query.token.as_deref()) {
        return denied(why);
    }
    let id = IssueId::new(id);
    // The path is the run's own record of the issue, never the request's.
    let Some(path) = app.hub.read(|view, _| view.record_of(&id)) else {
        return answer(
            StatusCode::NOT_FOUND,
            &format!("{id} has no session record in this run"),
        );
    };
    let number = |text: Option<&str>, default: u64| text.map_or(Ok(default), str::parse::<u64>);
    let (Ok(offset), Ok(limit)) = (
        number(query.offset.as_deref(), 0),
        number(query.limit.as_deref(), 200),
    ) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "offset and limit are whole numbers",
        );
    };
    let limit = usize::try_from(limit)
        .unwrap_or(MOST_ENTRIES)
        .min(MOST_ENTRIES);
    let read = tokio::task::spawn_blocking(move || read_page(&path, offset, limit)).await;
    match read {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => answer(
            StatusCode::NOT_FOUND,
            &format!("{id}'s session record is not written yet"),
        ),
        Ok(Err(error)) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not read {id}'s session record: {error}"),
        ),
        Err(error) => answer(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(why) = app.access.read(&headers, query.token.as_deref()) {
        return denied(why);
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (replay, live) = app.hub.subscribe(last);
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (
                axum::http::header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        axum::body::Body::from_stream(crate::sse::stream(replay, live)),
    )
        .into_response()
}

async fn drain(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(why) = app.access.control(&headers) {
        return denied(why);
    }
    match controlling(&app) {
        Ok(controls) => answer(StatusCode::ACCEPTED, &controls.drain()),
        Err(refusal) => answer(StatusCode::CONFLICT, refusal),
    }
}

async fn stop(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(why) = app.access.control(&headers) {
        return denied(why);
    }
    let controls = match controlling(&app) {
        Ok(controls) => controls,
        Err(refusal) => return answer(StatusCode::CONFLICT, refusal),
    };
    let id = IssueId::new(id);
    // The view answers at once for an issue long over; the run has the
    // last word on the rest.
    if !app.hub.read(|view, _| view.in_flight(&id)) {
        return answer(
            StatusCode::NOT_FOUND,
            &format!("{id} is not being worked on"),
        );
    }
    let reply = tokio::time::timeout(STOP_WAITS, controls.stop_issue(&id)).await;
    let (status, message) = match reply {
        Ok(Some(StopAnswer::Stopped)) => (
            StatusCode::OK,
            format!(
                "stopped {id}: its session ended and it is skipped, its claim kept for the next run"
            ),
        ),
        Ok(Some(StopAnswer::TooLate { outcome })) => (
            StatusCode::CONFLICT,
            format!("{id} was already finishing when the stop came: it ended {outcome}"),
        ),
        Ok(Some(StopAnswer::Deferred)) => (
            StatusCode::CONFLICT,
            format!("{id} had already given way in a deadlock: it runs again in this run"),
        ),
        Ok(Some(StopAnswer::NotWorking)) => (
            StatusCode::NOT_FOUND,
            format!("{id} is not being worked on"),
        ),
        Ok(None) => (
            StatusCode::CONFLICT,
            format!("the run ended before {id}'s worker answered"),
        ),
        Err(_) => (
            StatusCode::ACCEPTED,
            format!(
                "asked the run to stop {id}; its worker has not ended after {} s (its row shows how it ends)",
                STOP_WAITS.as_secs()
            ),
        ),
    };
    answer(status, &message)
}

/// The run's controls, or why there are none here.
fn controlling(app: &App) -> Result<Arc<dyn Controls>, &'static str> {
    let finished = app.hub.read(|view, _| view.is_finished());
    match &app.controls {
        Some(controls) if !finished => Ok(Arc::clone(controls)),
        Some(_) => Err("the run is over"),
        None => Err(
            "this dashboard only shows the run; its controls are on `mala run --serve`'s own page",
        ),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
