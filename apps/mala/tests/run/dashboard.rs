//! `mala run --serve` in a real browser: Debian's headless Chromium, driven
//! through ChromeDriver (W3C WebDriver over HTTP), watches a real run with
//! the real br and claude against the mock model; then `mala dashboard`
//! shows the finished run as `mala logs show` does.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mala_testkit::{
    Br, ClaudeHarness, Conversation, MockAnthropic, NewIssue, Script, TempRepo, Tool, require_tool,
};
use serde_json::{Value, json};

use super::{bin_dir, issue_of, reply};

/// How long any one thing the test waits for may take before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

/// One HTTP/1.1 request on its own connection; the status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read by the length the answer gives: a server may keep the
    // connection open whatever the request said.
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_owned())
    };
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Headless Chromium in a session of its own ChromeDriver.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            assert!(started.elapsed() < PATIENCE, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags a closed network needs (no background connections).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1280,900",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (status, body) = http(&addr, "POST", "/session", &[], &capabilities.to_string());
        assert_eq!(status, 200, "no browser session: {body}");
        let session = serde_json::from_str::<Value>(&body).unwrap()["value"]["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let (status, text) = http(&self.addr, method, &path, &[], &body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", &json!({"url": url}));
    }

    fn script(&self, js: &str) -> Value {
        self.command("POST", "/execute/sync", &json!({"script": js, "args": []}))
    }

    /// Waits until `js` returns something truthy, and returns it.
    fn until(&self, what: &str, js: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(js);
            if !matches!(&value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the page never showed {what}; it shows:\n{}",
                self.script("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The browser console's errors (its log at level SEVERE).
    fn console_errors(&self) -> Vec<String> {
        let log = self.command("POST", "/se/log", &json!({"type": "browser"}));
        log.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", &Value::Null);
        decode_base64(encoded.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            "",
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let n =
                chunk.iter().fold(0u32, |n, d| (n << 6) | u32::from(*d)) << (6 * (4 - chunk.len()));
            let bytes = n.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

/// The file the waiter holds and the liar waits for.
const SHARED: &str = "src/shared.txt";
const HOSTILE_TITLE: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_TEXT: &str = "<script>alert(2)</script>";

/// Agents by the role their issue's description names: honest ones wait
/// for `go`, then lock, write, check and commit, and end with a hostile
/// text; the waiter locks `src/shared.txt` and waits for ever (until the
/// page stops it); the liar waits for `go`, then for the waiter's lock,
/// and says it is done without a commit.
fn script(repo: &Path, go: &Path, never: &Path) -> Script {
    let repo = repo.canonicalize().unwrap();
    let (go, never) = (go.to_owned(), never.to_owned());
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = issue_of(&text);
        let file = format!("src/{issue}.txt");
        let wait = |path: &Path| {
            (
                "Bash",
                json!({"command": format!("until test -e {}; do sleep 0.1; done", path.display())}),
            )
        };
        let shared = (
            "mcp__mala__lock_acquire",
            json!({"filepaths": [SHARED], "timeout_seconds": 600}),
        );
        let plan = if text.contains("ROLE=liar") {
            vec![wait(&go), shared]
        } else if text.contains("ROLE=waiter") {
            vec![shared, wait(&never)]
        } else {
            vec![
                wait(&go),
                ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
                (
                    "Write",
                    json!({"file_path": repo.join(&file), "content": "fixed\n"}),
                ),
                ("Bash", json!({"command": "ls src"})),
                (
                    "mcp__mala__commit",
                    json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
                ),
            ]
        };
        let done = if text.contains("ROLE=liar") {
            "All done and committed.".to_owned()
        } else {
            format!("Done: {HOSTILE_TEXT}")
        };
        reply(plan.get(conversation.tool_uses_so_far()), &done)
    })
}

/// Reads the child's stdout on a thread; the `dashboard: URL` line.
fn dashboard_url(child: &mut Child) -> (String, mpsc::Receiver<String>) {
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    loop {
        let line = lines
            .recv_timeout(PATIENCE.saturating_sub(started.elapsed()))
            .expect("mala printed no dashboard address");
        if let Some(url) = line.strip_prefix("dashboard: ") {
            return (url.to_owned(), lines);
        }
    }
}

/// JavaScript: the state the issues table shows for `id`.
fn row_state(id: &str) -> String {
    format!(
        "var r = document.querySelector('tr.issue[data-id=\"{id}\"]'); return r && r.dataset.state;"
    )
}

/// JavaScript: whether the issues table shows `id` in `state`.
fn row_in(id: &str, state: &str) -> String {
    format!(
        "var r = document.querySelector('tr.issue[data-id=\"{id}\"]'); return !!r && r.dataset.state === '{state}';"
    )
}

#[allow(clippy::too_many_lines)] // one run walked through in the browser, in order
#[test]
fn the_page_follows_a_real_run_live_escapes_agent_text_and_stops_an_issue() {
    let (claude, br_binary) = (require_tool!(Tool::Claude), require_tool!(Tool::Br));
    let (chromium, chromedriver) = (
        require_tool!(Tool::Chromium),
        require_tool!(Tool::Chromedriver),
    );
    let repo = TempRepo::new();
    std::fs::create_dir(repo.path().join("src")).unwrap();
    std::fs::write(
        repo.path().join("mala.yaml"),
        "commands:\n  check: \"ls src\"\nevidence_check:\n  required: [check]\nmax_gate_retries: 1\n",
    )
    .unwrap();
    let br = Br::init(&br_binary, repo.path(), "dash");
    let create = |title: &str, role: &str| {
        br.create(&NewIssue {
            title,
            priority: 2,
            description: &format!("ROLE={role}"),
            ..NewIssue::default()
        })
    };
    let hostile = create(HOSTILE_TITLE, "honest");
    let honest = create("Fix the second file", "honest");
    let liar = create("Say it is done", "liar");
    let waiter = create("Wait until stopped", "waiter");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);

    let scratch = tempfile::tempdir().unwrap();
    let (go, never) = (scratch.path().join("go"), scratch.path().join("never"));
    let mock = MockAnthropic::start(script(repo.path(), &go, &never));
    let harness = ClaudeHarness::new(&claude, &mock);
    let bin = bin_dir(scratch.path(), &br_binary, &claude);
    let env = harness.mala_env(&bin, scratch.path());
    let mut run = Command::new(env!("CARGO_BIN_EXE_mala"))
        .args(["run", "--max-agents", "4", "--serve"])
        .current_dir(repo.path())
        .env_clear()
        .envs(env.clone())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (url, _stdout) = dashboard_url(&mut run);
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {url}");

    // Without the token: 401, for the page and the API alike.
    for path in ["/", "/api/run", "/api/events", "/api/run?token=wrong"] {
        assert_eq!(http(&addr, "GET", path, &[], "").0, 401, "{path}");
    }

    let browser = Browser::start(&chromium, &chromedriver);
    browser.open(&url);
    browser.until(
        "every agent in its first tool call",
        "var a = document.getElementById('agents').innerText; \
         return document.querySelectorAll('#issues tr.issue').length === 4 \
           && (a.match(/until test -e/g) || []).length === 4;",
    );
    browser.script("window.__sameDocument = 'yes';");
    live_run_from_another_process(repo.path(), &env);
    // Tracker text is text: the title shows as typed and makes no element.
    let title = browser.script(&format!(
        "return document.querySelector('tr.issue[data-id=\"{hostile}\"] .title').textContent"
    ));
    assert_eq!(title, HOSTILE_TITLE);
    assert_eq!(
        browser.script("return document.querySelectorAll('#issues img').length"),
        0
    );

    std::fs::write(&go, "").unwrap();
    for id in [&hostile, &honest] {
        browser.until(&format!("{id} closed"), &row_in(id, "closed"));
    }
    assert_eq!(
        browser.script(&row_state(&waiter)),
        "turn",
        "the waiter is still at work"
    );
    // The lock graph: the waiter holds the shared file, the liar waits on it.
    browser.until(
        "the waiter's lock and the liar's wait",
        &format!(
            "var box = document.getElementById('locks'); \
             return !!box.querySelector('g.fnode[data-path$=\"{SHARED}\"]') \
               && box.querySelectorAll('path.edge.held').length === 1 \
               && box.querySelectorAll('path.edge.wait').length === 1 \
               && box.querySelectorAll('g.anode.waiting').length === 1;"
        ),
    );
    // The run's own spend, as its budget counts it, is there and covers the issues'.
    let spend = browser.until(
        "the run's spend",
        "var run = document.querySelector('[data-total=\"run_cost\"]').textContent, \
             issues = document.querySelector('[data-total=\"cost\"]').textContent; \
         return run.startsWith('$') && parseFloat(run.slice(1)) >= parseFloat(issues.slice(1)) && run;",
    );
    assert!(spend.as_str().unwrap().starts_with('$'), "{spend}");
    assert_eq!(
        browser.script("return window.__sameDocument"),
        "yes",
        "all of it arrived without a reload"
    );

    // The transcript of the issue whose agent printed a script tag.
    browser.script(&format!(
        "document.querySelector('tr.issue[data-id=\"{hostile}\"]').click()"
    ));
    browser.until(
        "the transcript",
        "return document.querySelectorAll('#transcript .entry[data-kind=\"tool_call\"]').length > 0 \
           && document.querySelectorAll('#transcript .entry[data-kind=\"command\"]').length > 0",
    );
    let shown = browser.until(
        "the agent's text",
        &format!(
            "return [...document.querySelectorAll('#transcript .entry')].some(e => e.textContent.includes({}))",
            json!(HOSTILE_TEXT)
        ),
    );
    assert_eq!(shown, true);
    assert_eq!(
        browser.script("return document.querySelectorAll('#detail script, #detail img').length"),
        0
    );
    assert_eq!(
        browser.script("return document.getElementById('conn').textContent"),
        "live"
    );
    for section in [
        "#totals",
        "#issues",
        "#agents",
        "#locks",
        "#timeline svg",
        "#detail",
    ] {
        assert_eq!(
            browser.script(&format!("return !!document.querySelector('{section}')")),
            true,
            "{section}"
        );
    }
    assert_eq!(
        browser.script("return document.querySelectorAll('#timeline rect.bar').length"),
        4
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console has errors: {errors:?}");
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    if std::env::var_os("MALA_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png"),
            &png,
        )
        .unwrap();
    }

    // Stop the waiter from the page: its confirm, then the POST.
    browser.script(&format!(
        "document.querySelector('tr.issue[data-id=\"{waiter}\"] button').click()"
    ));
    browser.command("POST", "/alert/accept", &json!({}));
    browser.until("the waiter skipped", &row_in(&waiter, "skipped"));
    browser.until(
        "the stop's answer",
        &format!(
            "return document.getElementById('message').textContent.startsWith('stopped {waiter}')"
        ),
    );
    // The waiter's lock freed, the liar takes it and fails the gate.
    let reason = browser.until(
        "the liar's issue failed with its reason",
        &format!(
            "var r = document.querySelector('tr.issue[data-id=\"{liar}\"]'); \
             return r && r.dataset.state === 'failed' && r.querySelector('.reason').textContent;"
        ),
    );
    assert!(reason.as_str().unwrap().contains("commit"), "{reason}");
    // The run's end reaches the page before the process is gone.
    browser.until(
        "the run finished",
        "return document.getElementById('conn').textContent === 'finished' \
           && document.getElementById('outcome').textContent.includes('finished')",
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < PATIENCE, "the run did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("stopped {waiter} (asked from the dashboard)")),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(1), "one issue failed: {stderr}");
    assert_eq!(br.json(&["show", &hostile])[0]["status"], "closed");
    assert_eq!(br.json(&["show", &honest])[0]["status"], "closed");
    assert_eq!(
        br.json(&["show", &waiter])[0]["status"],
        "in_progress",
        "the stopped issue keeps its claim for the next run"
    );

    finished_run_shows_as_logs_show(&repo, &env, &browser);
}

/// `mala dashboard RUN_ID` on the finished run: the same issues, statuses
/// and reasons as `mala logs show RUN_ID`.
fn finished_run_shows_as_logs_show(repo: &TempRepo, env: &[(String, String)], browser: &Browser) {
    let mala = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mala"))
            .args(args)
            .current_dir(repo.path())
            .env_clear()
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let run_id = mala(&["logs", "list"])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let shown: Value = serde_json::from_str(&mala(&["logs", "show", &run_id, "--json"])).unwrap();
    let (mut dashboard, url, served) = mala_dashboard(repo.path(), env, &[&run_id]);
    let pick =
        |issues: &Value, id: &str, status: &str, reason: &str| -> Vec<(String, String, String)> {
            let mut rows: Vec<_> = issues
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i[id].as_str().unwrap().to_owned(),
                        i[status].as_str().unwrap().to_owned(),
                        i[reason].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            rows.sort();
            rows
        };
    assert_eq!(
        pick(&served["issues"], "id", "state", "reason"),
        pick(&shown["issues"], "issue", "status", "reason"),
    );
    assert_eq!(served["outcome"], shown["outcome"]);
    assert_eq!(served["controls"], false);
    // Folded from the run's event log, not only its record: the run's own
    // spend is known, and no agent is left live.
    assert!(served["totals"]["run_cost_usd"].is_f64(), "{served}");
    assert_eq!(served["agents"], json!([]));
    // And the page draws it.
    browser.open(&url);
    browser.until(
        "the finished run",
        "return document.querySelectorAll('#issues tr.issue').length === 4 \
           && document.getElementById('conn').textContent === 'finished'",
    );
    let _ = dashboard.kill();
    let _ = dashboard.wait();
}

/// `mala dashboard` in another process while the run goes on: the view
/// the run's own page has, folded from its event log (the issues in their
/// turns with their titles, every agent in its tool call), still running,
/// and no controls.
fn live_run_from_another_process(repo: &Path, env: &[(String, String)]) {
    let (mut dashboard, _, run) = mala_dashboard(repo, env, &[]);
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    assert_eq!(run["outcome"], "running");
    assert_eq!(run["live"], true);
    assert_eq!(
        run["controls"], false,
        "the controls are the running process's"
    );
    let issues = run["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 4, "{run}");
    assert!(issues.iter().all(|i| i["state"] == "turn"), "{run}");
    assert!(
        issues.iter().any(|i| i["title"] == HOSTILE_TITLE),
        "titles come with the claims: {run}"
    );
    let agents = run["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 4, "{run}");
    assert!(
        agents.iter().all(|a| a["doing"]
            .as_str()
            .is_some_and(|doing| doing.contains("until test -e"))),
        "each agent's current tool call: {run}"
    );
}

/// `mala dashboard ARGS` started in `repo`: the process, its address, and
/// the run it serves (`GET /api/run`).
fn mala_dashboard(repo: &Path, env: &[(String, String)], args: &[&str]) -> (Child, String, Value) {
    let mut dashboard = Command::new(env!("CARGO_BIN_EXE_mala"))
        .arg("dashboard")
        .args(args)
        .current_dir(repo)
        .env_clear()
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (url, _stdout) = dashboard_url(&mut dashboard);
    let (addr, token) = url
        .trim_start_matches("http://")
        .split_once("/?token=")
        .unwrap();
    let (status, body) = http(addr, "GET", "/api/run", &[("X-Mala-Token", token)], "");
    assert_eq!(status, 200, "{body}");
    (dashboard, url.clone(), serde_json::from_str(&body).unwrap())
}
