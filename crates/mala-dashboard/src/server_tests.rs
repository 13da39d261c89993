use super::*;
use crate::hub::Replay;
use serde_json::Value;
use std::io::Write as _;
use std::sync::Mutex;

use crate::view::IssueState;
use axum::body::Body;
use axum::http::Request;
use mala_core::{AgentId, Event, EventSink, IssueRecord, LoggedEvent, RunLog, StopAnswer};
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
    fn stop_issue(&self, issue: &IssueId) -> StopReply {
        self.calls.lock().unwrap().push(format!("stop {issue}"));
        let answer = match issue.as_str() {
            "bd-1" => Some(StopAnswer::Stopped),
            "bd-2" => Some(StopAnswer::TooLate { outcome: "closed" }),
            "bd-3" => None,
            _ => Some(StopAnswer::NotWorking),
        };
        Box::pin(async move { answer })
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
    let hub = claimed_hub(dir.path());
    let router = app(&hub, Some(Arc::clone(&controls)));
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
    for id in ["bd-2", "bd-3", "bd-4"] {
        hub.emit(&Event::IssueClaimed {
            issue: IssueId::new(id),
            agent: AgentId::new(format!("{id}@run1")),
            title: String::new(),
        });
    }
    // Each answer as the run gave it; bd-9, never claimed, the view's own.
    let mut answers = Vec::new();
    for id in ["bd-1", "bd-2", "bd-3", "bd-4", "bd-9"] {
        let (status, body) = call(
            &router,
            "POST",
            &format!("/api/issues/{id}/stop"),
            &[token, csrf],
        )
        .await;
        answers.push((
            status,
            body["ok"].clone(),
            body["message"].as_str().unwrap().to_owned(),
        ));
    }
    let said = |n: usize, words: &str| answers[n].2.contains(words);
    assert_eq!(answers[0].0, StatusCode::OK);
    assert_eq!(answers[0].1, true);
    assert!(
        said(0, "stopped bd-1") && said(0, "claim kept"),
        "{answers:?}"
    );
    assert_eq!(answers[1].0, StatusCode::CONFLICT);
    assert!(
        said(1, "already finishing") && said(1, "ended closed"),
        "{answers:?}"
    );
    assert_eq!(answers[2].0, StatusCode::CONFLICT);
    assert!(said(2, "the run ended before"), "{answers:?}");
    assert_eq!(answers[3].0, StatusCode::NOT_FOUND);
    assert!(said(3, "bd-4 is not being worked on"), "{answers:?}");
    assert_eq!(answers[4].0, StatusCode::NOT_FOUND);
    assert!(said(4, "bd-9 is not being worked on"), "{answers:?}");
    assert_eq!(
        *controls.calls.lock().unwrap(),
        ["drain", "stop bd-1", "stop bd-2", "stop bd-3", "stop bd-4"]
    );
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

/// What a followed run's log yields, read by read, and its record.
#[derive(Clone, Default)]
struct OtherProcess {
    reads: Arc<Mutex<std::collections::VecDeque<Vec<Event>>>>,
    record: Arc<Mutex<Option<RunLog>>>,
}

impl OtherProcess {
    fn logs(&self, events: Vec<Event>) {
        self.reads.lock().unwrap().push_back(events);
    }

    fn hub(&self, first: &RunLog) -> Arc<Hub> {
        let reads = Arc::clone(&self.reads);
        let record = Arc::clone(&self.record);
        Hub::followed(
            first,
            None,
            Box::new(move || {
                let read = reads.lock().unwrap().pop_front().unwrap_or_default();
                read.into_iter()
                    .map(|event| LoggedEvent {
                        at: chrono::Utc::now(),
                        json: serde_json::to_string(&event).unwrap(),
                        event,
                    })
                    .collect()
            }),
            Box::new(move || record.lock().unwrap().clone()),
        )
    }
}

fn running_log() -> RunLog {
    RunLog {
        run_id: "run1".into(),
        repo_path: "/repo".into(),
        started_at: chrono::Utc::now(),
        finished_at: None,
        outcome: "running".into(),
        settings: Value::Null,
        issues: Vec::new(),
    }
}

#[test]
fn a_run_in_another_process_is_followed_from_its_log_as_its_own_view_would_be() {
    let other = OtherProcess::default();
    let agent = AgentId::new("bd-1@run1");
    other.logs(vec![
        Event::RunStarted {
            run_id: "run1".into(),
            repo: "/repo".into(),
            max_agents: Some(2),
            sessions: None,
        },
        Event::IssueClaimed {
            issue: IssueId::new("bd-1"),
            agent: agent.clone(),
            title: "one".into(),
        },
        Event::Agent {
            agent: agent.clone(),
            event: mala_core::AgentEvent::ToolUse {
                id: "t1".into(),
                name: "Bash".into(),
                input: serde_json::json!({"command": "cargo test"}),
            },
        },
        Event::Lock {
            event: mala_core::LockEvent::Acquired {
                agent: agent.clone(),
                key: "src/lib.rs".into(),
                path: "/repo/src/lib.rs".into(),
            },
        },
    ]);
    let log = running_log();
    *other.record.lock().unwrap() = Some(log.clone());
    let hub = other.hub(&log);
    let now = chrono::Utc::now();
    let (doing, locks, last) = hub.read(|view, last| {
        let snapshot = view.snapshot(now);
        let doing: Vec<_> = snapshot
            .agents
            .iter()
            .map(|a| a.agent.doing.clone())
            .collect();
        (doing, snapshot.locks.len(), last)
    });
    assert_eq!(doing, [Some("Bash: cargo test".to_owned())]);
    assert_eq!(locks, 1);
    assert_eq!(last, 4, "each logged event goes to the pages");
    let (Replay::Events(sent), _) = hub.subscribe(Some(2)) else {
        panic!("kept")
    };
    assert!(sent[0].json.contains("tool_use"), "{}", sent[0].json);
    assert_eq!(hub.reload(), Reloaded::Going);
}

#[test]
fn a_followed_run_ends_as_its_record_says_with_the_events_logged_last() {
    let other = OtherProcess::default();
    let agent = AgentId::new("bd-1@run1");
    other.logs(vec![Event::IssueClaimed {
        issue: IssueId::new("bd-1"),
        agent: agent.clone(),
        title: "one".into(),
    }]);
    let log = running_log();
    *other.record.lock().unwrap() = Some(log.clone());
    let hub = other.hub(&log);
    // The record ends between two reads of the log: the first read finds
    // nothing, the one after the record has the last events.
    other.logs(Vec::new());
    other.logs(vec![Event::IssueClosed {
        issue: IssueId::new("bd-1"),
    }]);
    let mut ended = log.clone();
    ended.finished_at = Some(chrono::Utc::now());
    "finished".clone_into(&mut ended.outcome);
    let mut record = IssueRecord::new("bd-1", "bd-1@run1", "/s/bd-1@run1.jsonl".into());
    "closed".clone_into(&mut record.status);
    record.tokens = 42;
    let mut killed = IssueRecord::new("bd-2", "bd-2@run1", "/s/bd-2@run1.jsonl".into());
    "failed".clone_into(&mut killed.status);
    killed.reason = Some("no commit".into());
    ended.issues = vec![record, killed];
    *other.record.lock().unwrap() = Some(ended);
    // No `run_finished` logged (a killed run, or its last lines not yet
    // written): the record is trusted on the second reload that says over.
    assert_eq!(hub.reload(), Reloaded::Going);
    assert_eq!(hub.reload(), Reloaded::Over);
    let (issues, agents, outcome, history) = hub.read(|view, _| {
        let snapshot = view.snapshot(chrono::Utc::now());
        let issues: Vec<_> = snapshot
            .issues
            .iter()
            .map(|i| (i.id.to_string(), i.state, i.tokens, i.reason.clone()))
            .collect();
        let history = view.issue(&IssueId::new("bd-1")).unwrap().history.len();
        (
            issues,
            snapshot.agents.len(),
            snapshot.outcome.to_owned(),
            history,
        )
    });
    assert_eq!(
        issues,
        [
            ("bd-1".into(), IssueState::Closed, 42, None),
            (
                "bd-2".into(),
                IssueState::Failed,
                0,
                Some("no commit".into())
            ),
        ]
    );
    assert_eq!((agents, outcome.as_str()), (0, "finished"));
    assert_eq!(history, 2, "claimed and closed, from the events");
}

#[test]
fn a_followed_run_whose_record_is_gone_is_over() {
    let other = OtherProcess::default();
    let hub = other.hub(&running_log());
    assert_eq!(hub.reload(), Reloaded::Over);
}
