//! The scheduler under load: 500 issues, 32 agents, each agent taking 200 ms
//! (scripted, in memory), against the ideal of ceil(500/32) × 200 ms; and
//! mala's own CPU time per issue.
//!
//! `cargo run --release -p mala-orchestration --example bench_scheduler [ISSUES] [AGENTS] [MS] [RUNS]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a bench command

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mala_domain::{ConfigSources, FlagOverrides, resolve};
use mala_orchestration::{Orchestrator, RunPlan, Stage};
use mala_testkit::{MemoryRepository, MemoryTracker, ScriptedBackend};

/// User plus system CPU time of this process so far (all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: ISSUES AGENTS MS RUNS"))
        .collect();
    let issues = usize::try_from(*args.first().unwrap_or(&500)).unwrap();
    let agents = usize::try_from(*args.get(1).unwrap_or(&32)).unwrap();
    let work = Duration::from_millis(*args.get(2).unwrap_or(&200));
    let runs = *args.get(3).unwrap_or(&3);
    let waves = u32::try_from(issues.div_ceil(agents)).unwrap();
    let ideal = work * waves;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| issues | agents | turn | ideal | wall | over ideal | mala CPU | CPU per issue |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = resolve(ConfigSources {
            file: None,
            env: &BTreeMap::new(),
            flags: &FlagOverrides::default(),
        })
        .unwrap();
        settings.paths.runs_dir = dir.path().join("runs");
        settings.paths.lock_dir = dir.path().join("locks");
        let tracker = MemoryTracker::with_tasks(issues);
        let repository = MemoryRepository::default();
        let backend = ScriptedBackend::honest(repository.clone(), work);
        let orchestrator = Orchestrator::builder(settings, dir.path())
            .plan(RunPlan {
                max_agents: agents,
                run_id: format!("bench-{run}"),
                ..RunPlan::default()
            })
            .tracker(Arc::new(tracker))
            .backend(Arc::new(backend))
            .repository(Arc::new(repository))
            // The run's record and marks on disk, as `mala run` keeps them.
            .run_store(Arc::new(mala_infra::FileRunStore::new(
                &dir.path().join("runs"),
                &dir.path().join("locks"),
                dir.path(),
            )))
            .build()
            .unwrap();
        let (_stage, stages) = tokio::sync::watch::channel(Stage::Running);
        let cpu_before = cpu_time();
        let started = Instant::now();
        let summary = runtime.block_on(orchestrator.run(stages)).unwrap();
        let wall = started.elapsed();
        let cpu = cpu_time().saturating_sub(cpu_before);
        assert_eq!(summary.closed.len(), issues, "{summary:?}");
        let over = (wall.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0;
        println!(
            "| {issues} | {agents} | {} ms | {:.2} s | {:.3} s | {over:+.2} % | {:.0} ms | {:.0} µs |",
            work.as_millis(),
            ideal.as_secs_f64(),
            wall.as_secs_f64(),
            cpu.as_secs_f64() * 1000.0,
            cpu.as_secs_f64() * 1e6 / f64::from(u32::try_from(issues).unwrap()),
        );
    }
}
