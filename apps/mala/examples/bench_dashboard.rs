//! What the dashboard costs a run: the same 24-issue, 6-agent `mala run`
//! (real br, real Claude Code, the mock model in a child process) with and
//! without `--serve` and a page connected (another child process that keeps
//! the event stream open and reads `/api/run` twice a second, as the page
//! does, and every two seconds the first issue and what its transcript
//! gained, as an open issue on the page does). mala's own CPU (its
//! threads, not its children's) and peak RSS come from `/proc/<pid>`.
//!
//! `cargo run --release -p mala --example bench_dashboard -- MALA BR CLAUDE [ROUNDS]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mala_testkit::{
    Block, Br, ClaudeHarness, Conversation, MockAnthropic, NewIssue, Reply, Script, TempRepo,
};
use serde_json::json;

const ISSUES: usize = 24;
const AGENTS: &str = "6";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-mock") => serve_mock(Path::new(&args[1])),
        Some("page") => page(&args[1]),
        _ => bench(&args),
    }
}

/// An honest agent: lock its file, write it, run the check, commit.
fn honest(repo: PathBuf) -> Script {
    Script::from_fn(move |conversation: &Conversation<'_>| {
        let text = conversation.user_texts().join("\n");
        let issue = text
            .split("working on issue ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("x")
            .to_owned();
        let file = format!("src/{issue}.txt");
        let plan = [
            ("mcp__mala__lock_acquire", json!({"filepaths": [file]})),
            (
                "Write",
                json!({"file_path": repo.join(&file), "content": "fixed\n"}),
            ),
            ("Bash", json!({"command": "sleep 1"})),
            ("Bash", json!({"command": "ls src"})),
            (
                "mcp__mala__commit",
                json!({"paths": [file], "message": format!("bd-{issue}: fix {file}")}),
            ),
        ];
        Reply::Message(vec![match plan.get(conversation.tool_uses_so_far()) {
            Some((name, input)) => Block::ToolUse {
                name: (*name).to_owned(),
                input: input.clone(),
            },
            None => Block::Text("Fixed; `ls src` passed; committed.".to_owned()),
        }])
    })
}

fn serve_mock(repo: &Path) {
    let mock = MockAnthropic::start(honest(repo.to_owned()));
    println!("{}", mock.url());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

/// A kept-alive connection, as a browser keeps one to the server.
struct Connection {
    addr: String,
    token: String,
    reader: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// One GET: the body (`None` once the server is gone).
    fn get(&mut self, path: &str) -> Option<String> {
        if self.reader.is_none() {
            self.reader = Some(BufReader::new(TcpStream::connect(&self.addr).ok()?));
        }
        let reader = self.reader.as_mut()?;
        let sent = write!(
            reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\nX-Mala-Token: {}\r\n\r\n",
            self.addr,
            self.token
        );
        let body = sent.ok().and_then(|()| read_response(reader));
        if body.is_none() {
            self.reader = None;
        }
        body
    }
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

/// What a connected page asks for, until the server is gone.
fn page(url: &str) {
    let (addr, token) = url
        .trim_start_matches("http://")
        .split_once("/?token=")
        .unwrap();
    let (addr, token) = (addr.to_owned(), token.to_owned());
    let stream_addr = addr.clone();
    let stream_token = token.clone();
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&stream_addr).unwrap();
        write!(
            stream,
            "GET /api/events?token={stream_token} HTTP/1.1\r\nHost: {stream_addr}\r\n\r\n"
        )
        .unwrap();
        let mut sink = vec![0; 1 << 16];
        while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    // As the page: one issue open, its transcript read once and then
    // only what was written since.
    let mut offset = 0;
    let mut connection = Connection {
        addr,
        token,
        reader: None,
    };
    for tick in 0u64.. {
        let Some(run) = connection.get("/api/run") else {
            return;
        };
        if tick % 4 == 0 {
            let run: serde_json::Value = serde_json::from_str(&run).unwrap_or_default();
            if let Some(id) = run["issues"][0]["id"].as_str() {
                let _ = connection.get(&format!("/api/issues/{id}"));
                let path = format!("/api/issues/{id}/transcript?offset={offset}&limit=200");
                if let Some(page) = connection.get(&path) {
                    let page: serde_json::Value = serde_json::from_str(&page).unwrap_or_default();
                    offset = page["next_offset"].as_u64().unwrap_or(offset);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// mala's own CPU seconds (user + system of its threads) and peak RSS (KiB).
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    #[allow(clippy::cast_precision_loss)] // ticks are small
    Some((ticks as f64 / 100.0, hwm))
}

struct Figures {
    wall: f64,
    cpu: f64,
    rss_kib: u64,
}

/// A fresh repository with the 24 issues, committed.
fn workload(br_binary: &Path) -> (TempRepo, Br) {
    let repo = TempRepo::with_check("ls src");
    let br = Br::init(br_binary, repo.path(), "bench");
    for n in 0..ISSUES {
        br.create(&NewIssue {
            title: &format!("Fix file {n}"),
            priority: 2,
            ..NewIssue::default()
        });
    }
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "setup"]);
    (repo, br)
}

/// The mock model for `repo` in a child process, and the environment that
/// points mala (and the claude it starts) at it.
fn offline(
    repo: &Path,
    br_binary: &Path,
    claude: &Path,
    scratch: &Path,
) -> (Child, Vec<(String, String)>) {
    let mut mock = Command::new(std::env::current_exe().unwrap())
        .args([
            "serve-mock",
            &repo.canonicalize().unwrap().display().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let harness = ClaudeHarness::with_url(claude, url.trim());
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(br_binary, bin.join("br")).unwrap();
    std::os::unix::fs::symlink(claude, bin.join("claude")).unwrap();
    let env = harness.mala_env(&bin, scratch);
    (mock, env)
}

fn one_run(mala: &Path, br_binary: &Path, claude: &Path, serve: bool) -> Figures {
    let (repo, br) = workload(br_binary);
    let scratch = tempfile::tempdir().unwrap();
    let (mut mock, env) = offline(repo.path(), br_binary, claude, scratch.path());
    let mut command = Command::new(mala);
    command.args(["run", "--max-agents", AGENTS]);
    if serve {
        command.arg("--serve");
    }
    let started = Instant::now();
    let mut run = command
        .current_dir(repo.path())
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut client: Option<Child> = None;
    if serve {
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("dashboard: ").map(str::to_owned))
            .expect("the dashboard's address");
        client = Some(
            Command::new(std::env::current_exe().unwrap())
                .args(["page", &url])
                .spawn()
                .unwrap(),
        );
    }
    let said =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    let pid = run.id();
    let mut last = (0.0, 0);
    while run.try_wait().unwrap().is_none() {
        if let Some(now) = usage(pid) {
            last = now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed().as_secs_f64();
    for child in client.iter_mut().chain([&mut mock]) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let closed = br.json(&["list", "--status", "closed"]);
    assert_eq!(
        closed["issues"].as_array().map(Vec::len),
        Some(ISSUES),
        "every issue closed:\n{}",
        said.join().unwrap_or_default()
    );
    Figures {
        wall,
        cpu: last.0,
        rss_kib: last.1,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bench(args: &[String]) {
    let [mala, br, claude] = [0, 1, 2].map(|i| {
        // Absolute: the runs start in their own repositories.
        PathBuf::from(args.get(i).expect("MALA BR CLAUDE"))
            .canonicalize()
            .expect("MALA, BR and CLAUDE are paths of binaries")
    });
    let rounds: usize = args.get(3).map_or(3, |r| r.parse().unwrap());
    let mut figures: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternated, so a slow moment of the machine does not fall on one side.
        for serve in [false, true] {
            let f = one_run(&mala, &br, &claude, serve);
            eprintln!(
                "round {round} {}: wall {:.2} s, cpu {:.2} s, rss {} KiB",
                if serve { "--serve + page" } else { "plain" },
                f.wall,
                f.cpu,
                f.rss_kib
            );
            figures[usize::from(serve)].push(f);
        }
    }
    #[allow(clippy::cast_precision_loss)] // KiB of a process fit an f64
    let rss = |i: usize| {
        median(
            figures[i]
                .iter()
                .map(|f| f.rss_kib as f64 / 1024.0)
                .collect(),
        )
    };
    let cpu = |i: usize| median(figures[i].iter().map(|f| f.cpu).collect());
    let wall = |i: usize| median(figures[i].iter().map(|f| f.wall).collect());
    for (i, name) in ["without the dashboard", "--serve, a page connected"]
        .iter()
        .enumerate()
    {
        println!(
            "{name}: wall {:.2} s, mala CPU {:.2} s, peak RSS {:.1} MiB (medians of {rounds})",
            wall(i),
            cpu(i),
            rss(i),
        );
    }
    println!(
        "the dashboard adds {:+.1} % CPU and {:+.2} MiB RSS",
        (cpu(1) / cpu(0) - 1.0) * 100.0,
        rss(1) - rss(0)
    );
}
