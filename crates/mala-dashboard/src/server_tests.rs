use super::*;
use crate::hub::Replay;
use serde_json::Value;
use std::io::Write as _;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use mala_core::{AgentId, Event, EventSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt as _;

#[derive(Default)]
struct FakeControls {
    calls: Mutex<Vec<String>>,
}

impl Controls for FakeControls {
    fn drain(&self) -> String {
        self.calls.lock().unwrap().push("drain".into());
        "draining".into()
    }
    fn stop_issue(&self, issue: &IssueId) -> bool {
        self.calls.lock().unwrap().push(format!("stop {issue}"));
        true
    }
}

const HOST: &str = "127.0.0.1:4000";

fn app(hub: &Arc<Hub>, controls: Option<Arc<FakeControls>>) -> Router {
    routes(Arc::new(App {
        hub: Arc::clone(hub),
        access: Access {
            token: "tok".into(),
            csrf: "csrf".into(),
            addr: HOST.parse().unwrap(),
            public: false,
        },
        page: Page::build(),
        controls: controls.map(|c| c as Arc<dyn Controls>),
    }))
}

fn claimed_hub(sessions: &std::path::Path) -> Arc<Hub> {
    let hub = Hub::live("run1", None);
    hub.emit(&Event::RunStarted {
        run_id: "run1".into(),
        repo: "/repo".into(),
        max_agents: Some(1),
        sessions: Some(sessions.to_path_buf()),
    });
    hub.emit(&Event::IssueClaimed {
        issue: IssueId::new("bd-1"),
        agent: AgentId::new("bd-1@run1"),
        title: "<img src=x onerror=alert(1)>".into(),
    });
    hub
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", HOST);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_endpoint_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(&claimed_hub(dir.path()), None);
    for uri in [
        "/",
        "/api/run",
        "/api/issues/bd-1",
        "/api/issues/bd-1/transcript",
        "/api/events",
    ] {
        let (status, body) = call(&router, "GET", uri, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(body["message"].as_str().unwrap().contains("token"), "{uri}");
        let (status, _) = call(&router, "GET", &format!("{uri}?token=nope"), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    // A malformed query is refused for its token first, then for itself.
    let odd = "/api/issues/bd-1/transcript?offset=abc";
    assert_eq!(
        call(&router, "GET", odd, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = call(&router, "GET", odd, &[("x-mala-token", "tok")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for uri in ["/api/drain", "/api/issues/bd-1/stop"] {
        let (status, _) = call(&router, "POST", uri, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test]
async fn the_run_is_served_as_json_with_tracker_text_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(&claimed_hub(dir.path()), None);
    let (status, body) = call(&router, "GET", "/api/run?token=tok", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["run_id"], "run1");
    assert_eq!(body["csrf"], "csrf");
    assert_eq!(body["controls"], false);
    assert_eq!(body["issues"][0]["state"], "claimed");
    // JSON carries the text; the page puts it in as text.
    assert_eq!(body["issues"][0]["title"], "<img src=x onerror=alert(1)>");
    let (status, body) = call(
        &router,
        "GET",
        "/api/issues/bd-1",
        &[("x-mala-token", "tok")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["history"][0]["kind"], "claimed");
    let (status, _) = call(&router, "GET", "/api/issues/bd-9?token=tok", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_page_is_served_with_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(&claimed_hub(dir.path()), None);
    let request = Request::get("/?token=tok")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
}

#[tokio::test]
async fn the_transcript_is_the_issues_own_record_paged() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(&claimed_hub(dir.path()), None);
    let (status, body) = call(&router, "GET", "/api/issues/bd-1/transcript?token=tok", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not written yet");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not written yet")
    );
    let mut record = std::fs::File::create(dir.path().join("bd-1@run1.jsonl")).unwrap();
    for n in 0..3 {
        let line =
            json!({"t": "2026-12-04T10:00:00Z", "dir": "stderr", "line": format!("line {n}")});
        writeln!(record, "{line}").unwrap();
    }
    let (status, body) = call(
        &router,
        "GET",
        "/api/issues/bd-1/transcript?token=tok&limit=2",
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["entries"].as_array().unwrap().len(), 2);
    assert_eq!(body["done"], false);
    let next = body["next_offset"].as_u64().unwrap();
    let uri = format!("/api/issues/bd-1/transcript?token=tok&offset={next}");
    let (_, body) = call(&router, "GET", &uri, &[]).await;
    assert_eq!(body["entries"][0]["text"], "line 2");
    assert_eq!(body["done"], true);
    // No path from the request reaches the file system.
    for uri in [
        "/api/issues/..%2F..%2Fetc%2Fpasswd/transcript?token=tok",
        "/api/issues/bd-1%2F..%2Fbd-1/transcript?token=tok",
    ] {
        let (status, _) = call(&router, "GET", uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn controls_need_the_csrf_token_and_reach_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let controls = Arc::new(FakeControls::default());
    let router = app(&claimed_hub(dir.path()), Some(Arc::clone(&controls)));
    let token = ("x-mala-token", "tok");
    let csrf = ("x-mala-csrf", "csrf");
    let (status, _) = call(&router, "POST", "/api/drain", &[token]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&router, "POST", "/api/drain?token=tok", &[csrf]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the query's token does not do for a control"
    );
    let (status, _) = call(&router, "GET", "/api/drain?token=tok", &[csrf]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(controls.calls.lock().unwrap().is_empty());

    let (status, body) = call(&router, "POST", "/api/drain", &[token, csrf]).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::ACCEPTED, Some("draining"))
    );
    let (status, _) = call(&router, "POST", "/api/issues/bd-2/stop", &[token, csrf]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not an issue in flight");
    let (status, body) = call(&router, "POST", "/api/issues/bd-1/stop", &[token, csrf]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(body["message"].as_str().unwrap().contains("claim kept"));
    assert_eq!(*controls.calls.lock().unwrap(), ["drain", "stop bd-1"]);
}

#[tokio::test]
async fn a_page_without_controls_is_told_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let router = app(&claimed_hub(dir.path()), None);
    let (status, body) = call(
        &router,
        "POST",
        "/api/drain",
        &[("x-mala-token", "tok"), ("x-mala-csrf", "csrf")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("mala run --serve")
    );
}

#[test]
fn a_page_that_reconnects_gets_what_it_missed_or_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let hub = claimed_hub(dir.path());
    let (replay, _live) = hub.subscribe(Some(1));
    let Replay::Events(missed) = replay else {
        panic!("both events are still kept")
    };
    assert_eq!(missed.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
    assert!(missed[0].json.contains("issue_claimed"));
    // A page from before what is kept must read the state again.
    let big = "x".repeat(300_000);
    for _ in 0..5 {
        hub.emit(&Event::Warning {
            message: big.clone(),
        });
    }
    let (replay, _live) = hub.subscribe(Some(1));
    assert!(matches!(replay, Replay::Reset));
    let (replay, _live) = hub.subscribe(Some(6));
    assert!(matches!(replay, Replay::Events(events) if events.len() == 1));
}

/// The real server over TCP: the event stream resumes after Last-Event-ID
/// and goes on live.
#[tokio::test]
async fn the_event_stream_resumes_after_the_last_event_id_and_goes_on_live() {
    let dir = tempfile::tempdir().unwrap();
    let hub = claimed_hub(dir.path());
    let dashboard = Dashboard::bind(ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        public: false,
    })
    .await
    .unwrap();
    let url = dashboard.url();
    let (addr, token) = url
        .trim_start_matches("http://")
        .split_once("/?token=")
        .map(|(a, t)| (a.to_owned(), t.to_owned()))
        .unwrap();
    let _server = dashboard.serve(Arc::clone(&hub), None);
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /api/events?token={token} HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: 1\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut ids = Vec::new();
    let within = std::time::Duration::from_secs(10);
    let mut live_sent = false;
    while ids.len() < 2 {
        let line = tokio::time::timeout(within, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.to_owned());
            if !live_sent {
                // The replay arrived: now one that happens while connected.
                hub.emit(&Event::IssueClosed {
                    issue: IssueId::new("bd-1"),
                });
                live_sent = true;
            }
        }
    }
    assert_eq!(ids, ["2", "3"]);
}

#[tokio::test]
async fn the_server_listens_beyond_loopback_only_when_asked() {
    let refused = Dashboard::bind(ServeOptions {
        addr: "0.0.0.0:0".parse().unwrap(),
        public: false,
    })
    .await;
    assert!(matches!(refused, Err(DashboardError::NotLoopback { .. })));
    assert!(refused.unwrap_err().to_string().contains("--serve-public"));
}

#[tokio::test]
async fn the_end_waits_for_a_connected_page_to_read_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let hub = claimed_hub(dir.path());
    let long = Duration::from_secs(60);
    // No page connected: nothing to wait for.
    tokio::time::timeout(Duration::from_secs(5), hub.settle(long))
        .await
        .expect("no page, no wait");
    let (_replay, _live) = hub.subscribe(None);
    // A page that never reads again is waited for only so long.
    tokio::time::timeout(
        Duration::from_secs(5),
        hub.settle(Duration::from_millis(50)),
    )
    .await
    .expect("the wait is bounded");
    let settling = tokio::spawn({
        let hub = Arc::clone(&hub);
        async move { hub.settle(long).await }
    });
    // Its read of the state with every event in it ends the wait.
    let (status, _) = call(&app(&hub, None), "GET", "/api/run?token=tok", &[]).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), settling)
        .await
        .expect("settled once the page read the state")
        .unwrap();
}
