//! `mala dashboard` and `mala run --serve`: the run's view in the browser
//! (the server is `mala_dashboard`'s; this is where it meets the process).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use mala_core::{IssueId, StopAnswer};
use mala_dashboard::{Controls, Dashboard, Hub, LoadRecord, ServeOptions, StopReply};
use mala_orchestration::{Stage, StopRequest};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::{DashboardArgs, ServeArgs};
use crate::commands::logs;
use crate::failure::Failure;
use crate::output;

/// Where `--serve` with no address listens: loopback, any free port.
pub(crate) const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// Binds the server and prints its address, with the token, on a line of
/// its own (and a warning when it listens beyond this machine).
pub(crate) async fn bind(addr: SocketAddr, public: bool) -> Result<Dashboard, Failure> {
    let dashboard = Dashboard::bind(ServeOptions { addr, public })
        .await
        .map_err(|error| Failure::Other {
            message: error.to_string(),
            hint: Some(format!(
                "use --serve {LOOPBACK_ANY_PORT} (the default), or --serve-public with the address to listen on"
            )),
        })?;
    output::stdout(&format!("dashboard: {}\n", dashboard.url()));
    if dashboard.is_public() {
        output::note(
            "warning: the dashboard listens beyond this machine; whoever has its address with the token can watch the run and stop it",
        );
    }
    Ok(dashboard)
}

/// The page's buttons in `mala run --serve`: the first Ctrl-C's drain, and
/// a stop of one issue through the scheduler.
pub(crate) struct RunControls {
    pub(crate) stage: Arc<watch::Sender<Stage>>,
    pub(crate) stops: mpsc::UnboundedSender<StopRequest>,
}

impl Controls for RunControls {
    fn drain(&self) -> String {
        let drained = self.stage.send_if_modified(|stage| {
            let running = *stage == Stage::Running;
            if running {
                *stage = Stage::Drain;
            }
            running
        });
        if drained {
            output::note(
                "draining (asked from the dashboard): no new issues; running agents finish (Ctrl-C to stop them)",
            );
            "draining: no new issues are started; running agents finish".to_owned()
        } else {
            "the run is already draining or stopping".to_owned()
        }
    }

    fn stop_issue(&self, issue: &IssueId) -> StopReply {
        let (answer, reply) = oneshot::channel();
        let asked = StopRequest {
            issue: issue.clone(),
            answer,
        };
        if self.stops.send(asked).is_err() {
            return Box::pin(async { None });
        }
        output::note(&format!("stopping {issue} (asked from the dashboard)"));
        let issue = issue.clone();
        Box::pin(async move {
            let answer = reply.await.ok()?;
            match &answer {
                StopAnswer::Stopped => output::note(&format!(
                    "stopped {issue} (asked from the dashboard): skipped, its claim kept for the next run"
                )),
                StopAnswer::TooLate { outcome } => output::note(&format!(
                    "{issue} was already finishing when the dashboard asked to stop it: it ended {outcome}"
                )),
                StopAnswer::Deferred | StopAnswer::NotWorking => {}
            }
            Some(answer)
        })
    }
}

/// `mala dashboard [RUN_ID]`: a recorded run (the newest of this
/// repository by default), folded from its event log as the run itself
/// folds its events, followed while it is still going, until Ctrl-C. A run
/// recorded without an event log is shown from its record.
pub(crate) fn run(args: &DashboardArgs) -> Result<(), Failure> {
    let log = match &args.run_id {
        Some(id) => logs::find_run(id)?,
        None => logs::newest_run()?,
    };
    let addr = serve_addr(&args.serve)?;
    let (_, runs_dir, lock_dir) = logs::runs_dir()?;
    let (repo, run_id) = (log.repo_path.clone(), log.run_id.clone());
    let log = as_it_is(log, &lock_dir);
    let tail = mala_infra::EventTail::of_run(&runs_dir, &repo, &run_id);
    let load: LoadRecord = Box::new(move || {
        let log = mala_infra::read_run_of(&runs_dir, &repo, &run_id)?;
        Some(as_it_is(log, &lock_dir))
    });
    let budget = logs::budget_of(&log);
    let hub = match tail {
        Some(mut tail) => {
            let mut said = false;
            let read = move || {
                tail.read_new().unwrap_or_else(|error| {
                    if !std::mem::replace(&mut said, true) {
                        output::note(&format!("cannot read the run's event log: {error}"));
                    }
                    Vec::new()
                })
            };
            Hub::followed(&log, budget, Box::new(read), load)
        }
        None => Hub::recorded(&log, budget, load),
    };
    let runtime = crate::runtime::runtime(false)?;
    runtime.block_on(async {
        let dashboard = bind(addr, args.serve.serve_public).await?;
        let _server = dashboard.serve(hub, None);
        output::note(&format!("showing run {} (Ctrl-C to stop)", log.run_id));
        tokio::signal::ctrl_c().await.map_err(|e| Failure::Other {
            message: format!("could not listen for Ctrl-C: {e}"),
            hint: None,
        })
    })
}

/// A record that says `running` while its process is gone (killed, or the
/// machine went down) is not shown as running.
fn as_it_is(mut log: mala_core::RunLog, lock_dir: &std::path::Path) -> mala_core::RunLog {
    let alive = mala_infra::RunMarker::all(lock_dir)
        .iter()
        .any(|marker| marker.run_id == log.run_id && marker.is_alive());
    if log.outcome == mala_core::STILL_RUNNING && !alive {
        "gone".clone_into(&mut log.outcome);
    }
    log
}

/// The address `--serve` names (loopback, any port, when it names none);
/// one beyond loopback needs `--serve-public`, which needs an address.
pub(crate) fn serve_addr(serve: &ServeArgs) -> Result<SocketAddr, Failure> {
    let given = serve.serve.flatten();
    if serve.serve_public && given.is_none() {
        return Err(Failure::usage(
            "--serve-public needs the address to listen on",
            Some("for example --serve 0.0.0.0:8080 --serve-public"),
        ));
    }
    let addr = given.unwrap_or(LOOPBACK_ANY_PORT);
    if !serve.serve_public && !addr.ip().is_loopback() {
        return Err(Failure::usage(
            format!("{addr} is not a loopback address"),
            Some("the dashboard listens beyond this machine only with --serve-public"),
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_is_the_first_stage_once_and_a_stop_reaches_the_scheduler() {
        let stage = Arc::new(watch::channel(Stage::Running).0);
        let (stops, mut inbox) = mpsc::unbounded_channel();
        let controls = RunControls {
            stage: Arc::clone(&stage),
            stops,
        };
        assert!(controls.drain().starts_with("draining"));
        assert_eq!(*stage.borrow(), Stage::Drain);
        assert!(controls.drain().contains("already"));
        assert_eq!(
            *stage.borrow(),
            Stage::Drain,
            "a second drain is no second Ctrl-C"
        );
        stage.send_replace(Stage::Abort);
        assert!(controls.drain().contains("already"));
        assert_eq!(*stage.borrow(), Stage::Abort, "a drain never undoes a stop");
        let runtime = crate::runtime::runtime(false).unwrap();
        let reply = controls.stop_issue(&IssueId::new("bd-1"));
        let asked = inbox.try_recv().unwrap();
        assert_eq!(asked.issue, IssueId::new("bd-1"));
        asked.answer.send(StopAnswer::Stopped).unwrap();
        assert_eq!(runtime.block_on(reply), Some(StopAnswer::Stopped));
        drop(inbox);
        assert_eq!(
            runtime.block_on(controls.stop_issue(&IssueId::new("bd-2"))),
            None,
            "no run to tell"
        );
    }

    #[test]
    fn a_record_that_says_running_without_a_live_process_shows_as_gone() {
        let locks = tempfile::tempdir().unwrap();
        let log = |outcome: &str| mala_core::RunLog {
            run_id: "r1".into(),
            repo_path: "/repo".into(),
            started_at: chrono::Utc::now(),
            finished_at: None,
            outcome: outcome.into(),
            settings: serde_json::Value::Null,
            issues: Vec::new(),
        };
        assert_eq!(as_it_is(log("running"), locks.path()).outcome, "gone");
        assert_eq!(as_it_is(log("finished"), locks.path()).outcome, "finished");
    }

    #[test]
    fn serve_takes_loopback_by_default_and_beyond_only_with_serve_public() {
        let args = |serve, serve_public| ServeArgs {
            serve,
            serve_public,
        };
        assert_eq!(
            serve_addr(&args(Some(None), false)).unwrap().to_string(),
            "127.0.0.1:0"
        );
        let far = "0.0.0.0:8080".parse().unwrap();
        assert!(serve_addr(&args(Some(Some(far)), false)).is_err());
        assert_eq!(serve_addr(&args(Some(Some(far)), true)).unwrap(), far);
        assert!(
            serve_addr(&args(Some(None), true)).is_err(),
            "public needs an address"
        );
    }
}
