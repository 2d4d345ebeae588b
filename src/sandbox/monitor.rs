//! The sandbox's background watchers: one per process waiting for its
//! exit in the guest, one watching QEMU and the agent's health, and one
//! forwarding the guest's OOM events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::TaskOOM;

use crate::agent_client::AgentClient;
use crate::events::Event;
use crate::host_cgroup;
use crate::ratelimit::quote_guest;
use crate::sandbox::container::Container;
use crate::sandbox::oom::{self, OomFilter, Verdict};
use crate::sandbox::process::Process;
use crate::sandbox::{Lifecycle, Sandbox};
use crate::state::{Exit, UNKNOWN_EXIT};
use crate::vm::child::{Tail, panic_line};

/// How often the agent's health is checked, and how long it may take.
const HEALTH_PERIOD: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(8);
/// Consecutive failed checks after which the agent counts as stalled.
const HEALTH_FAILURES: u32 = 2;
/// How long a call that lost the agent (a process's WaitProcess, a
/// Delete's RemoveContainer) waits for the sandbox to be declared dead:
/// longer than the health checks take to call a stalled agent dead.
const DEATH_VERDICT_WAIT: Duration = Duration::from_secs(
    (HEALTH_PERIOD.as_secs() + HEALTH_TIMEOUT.as_secs()) * (HEALTH_FAILURES as u64 + 1),
);

/// Starts the VM and OOM monitors of a freshly booted sandbox.
pub(super) fn spawn(sb: Arc<Sandbox>, lc: &Lifecycle) {
    let qemu_exit = lc.vm.as_ref().and_then(|v| v.vm.exit_watch());
    let console = lc.vm.as_ref().and_then(|v| v.vm.console_tail());
    let helpers = lc
        .vm
        .as_ref()
        .map(|v| v.vm.helper_exit_watches())
        .unwrap_or_default();
    let Ok(agent) = sb.agent() else { return };
    tokio::spawn(watch_vm(
        sb.clone(),
        agent.clone(),
        (qemu_exit, console),
        helpers,
    ));
    tokio::spawn(forward_ooms(sb, agent));
}

type ExitWatch = tokio::sync::watch::Receiver<Option<std::process::ExitStatus>>;

/// How long a helper's exit waits for QEMU's own before the sandbox's
/// death is judged: QEMU's end (a guest panic) closes the helpers' sockets,
/// and they may be seen exiting first. Short, since a helper that died on
/// its own leaves the pod hung until the death is declared.
const QEMU_EXIT_ECHO: Duration = Duration::from_millis(500);
/// The same when the pod's host cgroup counted OOM kills: the OOM killer
/// may take QEMU a moment after a helper.
const QEMU_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Declares the sandbox dead when QEMU or one of its helpers exits, or the
/// agent stops answering; as OOM-killed when the host's OOM killer did it.
async fn watch_vm(
    sb: Arc<Sandbox>,
    agent: AgentClient,
    (qemu_exit, console): (Option<ExitWatch>, Option<Tail>),
    helpers: Vec<(&'static str, ExitWatch)>,
) {
    let mut dead = sb.dead_watch();
    let qemu_after = qemu_exit.clone();
    let qemu_exited = async move {
        match qemu_exit {
            Some(mut rx) => match rx.wait_for(|s| s.is_some()).await {
                Ok(s) => ("QEMU", *s),
                Err(_) => ("QEMU", None),
            },
            None => std::future::pending().await,
        }
    };
    // The first helper to exit, whichever it is.
    let (exited_tx, mut exited) = tokio::sync::mpsc::channel(1);
    for (name, mut rx) in helpers {
        let tx = exited_tx.clone();
        tokio::spawn(async move {
            let status = match rx.wait_for(|s| s.is_some()).await {
                Ok(s) => *s,
                Err(_) => None,
            };
            let _ = tx.send((name, status)).await;
        });
    }
    drop(exited_tx);
    let helper_exited = async move {
        match exited.recv().await {
            Some(exit) => exit,
            None => std::future::pending().await,
        }
    };
    let stalled = async {
        let mut failures = 0;
        loop {
            tokio::time::sleep(HEALTH_PERIOD).await;
            match agent.check_health(HEALTH_TIMEOUT).await {
                Ok(()) => failures = 0,
                // A guest busy writing output answers its stream reads
                // while the health check waits behind them: alive.
                Err(e) if agent.answered_within(HEALTH_TIMEOUT) => {
                    failures = 0;
                    tracing::info!(sandbox_id = %sb.id, error = %e, "agent health check late, but the agent is answering other calls");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(sandbox_id = %sb.id, failures, error = %e, "agent health check failed");
                    if failures >= HEALTH_FAILURES {
                        return format!(
                            "the agent did not answer {failures} health checks in a row"
                        );
                    }
                }
            }
        }
    };
    let ended = tokio::select! {
        r = qemu_exited => Ok(r),
        r = helper_exited => Ok(r),
        r = stalled => Err(r),
        _ = dead.wait_for(|d| *d) => return,
    };
    let (who, status) = match ended {
        Ok(exit) => exit,
        Err(stalled) => return sb.die(stalled).await,
    };
    let said = |who: &str, status: Option<std::process::ExitStatus>| match status {
        Some(s) => format!("{who} exited ({s})"),
        None => format!("{who}'s watcher ended"),
    };
    let mut reason = said(who, status);
    let mut ended = vec![(who, status)];
    // A helper often goes first only because QEMU's end closed its socket
    // (virtiofsd exits when its client leaves; the host's OOM killer ends
    // QEMU): then QEMU's end is the news, the helper's its echo.
    if who != "QEMU" {
        if let Some(mut rx) = qemu_after {
            let wait = if sb.oom_kills_since_boot().is_some_and(|k| k > 0) {
                QEMU_EXIT_GRACE
            } else {
                QEMU_EXIT_ECHO
            };
            if let Ok(Ok(s)) = tokio::time::timeout(wait, rx.wait_for(|s| s.is_some())).await {
                reason = format!("{}, and {reason}", said("QEMU", *s));
                ended.insert(0, ("QEMU", *s));
            }
        }
    }
    // The guest's own words, bounded by the console's line cap: an
    // operator's first question.
    if let Some(line) = console.as_ref().and_then(panic_line) {
        reason = format!("{reason}: the guest kernel panicked: {line}");
    }
    match vmm_oom_kills(&sb, &ended) {
        Some((victim, kills)) => sb.die_oom_killed(reason, victim, kills).await,
        None => sb.die(reason).await,
    }
}

/// Which of the VM's processes that `ended` the host's OOM killer ended,
/// and how many OOM kills the pod's host cgroup counted since boot; `None`
/// when the death was not for memory.
fn vmm_oom_kills(
    sb: &Sandbox,
    ended: &[(&'static str, Option<std::process::ExitStatus>)],
) -> Option<(&'static str, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let kills = sb.oom_kills_since_boot()?;
    if kills == 0 {
        return None;
    }
    ended.iter().find_map(|(who, status)| {
        host_cgroup::oom::killed_for_memory(status.and_then(|s| s.signal()), Some(kills))
            .map(|n| (*who, n))
    })
}

/// Forwards each OOM the agent reports: a `/tasks/oom` event for
/// containerd, and an empty `<bundle>/oom` file for CRI-O. The guest picks
/// the ids and the rate, so `oom::OomFilter` paces, deduplicates and
/// quiets them first.
async fn forward_ooms(sb: Arc<Sandbox>, agent: AgentClient) {
    let mut dead = sb.dead_watch();
    let mut filter = OomFilter::new(Instant::now());
    loop {
        // A flood waits in the guest: its next report is asked for only
        // when the pace allows.
        let pause = filter.pause(Instant::now());
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = dead.wait_for(|d| *d) => return,
            }
        }
        let call = agent.get_oom_event();
        let ev = tokio::select! {
            r = call => r,
            _ = dead.wait_for(|d| *d) => return,
        };
        match ev {
            Ok(container_id) => {
                let c = sb.container(&container_id).ok();
                match filter.admit(&container_id, c.is_some(), Instant::now()) {
                    Verdict::Unknown(Some(suppressed)) => {
                        tracing::warn!(sandbox_id = %sb.id,
                            container_id = %quote_guest(&container_id, oom::QUOTED_ID_MAX),
                            suppressed, "the guest reported an OOM of a container this sandbox does not have; dropped (one warning per 10 s)");
                    }
                    Verdict::Unknown(None) | Verdict::Duplicate => {}
                    Verdict::Forward => {
                        let Some(c) = c else { continue };
                        tracing::warn!(sandbox_id = %sb.id, container_id = %c.id, "container hit its memory limit");
                        if c.crio {
                            write_oom_file(&sb.id, &c);
                        }
                        sb.publish(Event::Oom(TaskOOM {
                            container_id: c.id.clone(),
                            ..Default::default()
                        }));
                    }
                }
            }
            Err(e) => {
                if *sb.dead_watch().borrow() {
                    return;
                }
                tracing::warn!(sandbox_id = %sb.id, error = %e, "waiting for OOM events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The empty `<bundle>/oom` CRI-O looks for to report OOMKilled.
pub(super) fn write_oom_file(sandbox_id: &str, c: &Container) {
    let path = c.bundle.join("oom");
    if let Err(e) = std::fs::File::create(&path) {
        tracing::warn!(sandbox_id, container_id = %c.id, path = %path.display(), error = %e, "cannot write the oom file");
    }
}

impl Sandbox {
    /// After a call lost the agent's transport: whether the sandbox is
    /// declared dead (or stopped) within the time the health checks take to
    /// call a stalled agent dead. A dead VM took the guest's state along,
    /// so what the call was to undo there is undone.
    pub(super) async fn dies_after_losing_the_agent(&self) -> bool {
        let mut dead = self.dead_watch();
        let verdict = async { dead.wait_for(|d| *d).await.is_ok() };
        tokio::time::timeout(DEATH_VERDICT_WAIT, verdict)
            .await
            .unwrap_or(false)
    }
}

/// Waits for `p` to exit in the guest (or the sandbox to die) and reports
/// the exit. One watcher per process: a second call does nothing.
pub(super) fn watch_exit(sb: Arc<Sandbox>, c: Arc<Container>, p: Arc<Process>, agent: AgentClient) {
    if !p.claim_watch() {
        return;
    }
    tokio::spawn(async move {
        let mut dead = sb.dead_watch();
        let wait = agent.wait_process(&p.container_id, &p.exec_id);
        // A dead sandbox reports every exit itself, once its VM is gone:
        // CRI-O and containerd take an exit as leave to clean up, and
        // nothing of the VM may be left on the host when they look.
        let waited = tokio::select! {
            r = wait => r,
            _ = dead.wait_for(|d| *d) => return,
        };
        let exit = match waited {
            Ok(status) => Exit::from_agent(status),
            Err(e) if e.lost_transport() => {
                // The transport broke: the VM is most likely dying, and its
                // monitor will say so.
                tracing::warn!(sandbox_id = %sb.id, container_id = %p.container_id, exec_id = %p.exec_id,
                    error = %e, "WaitProcess lost the agent; waiting for the sandbox's verdict");
                if sb.dies_after_losing_the_agent().await {
                    return;
                }
                tracing::warn!(sandbox_id = %sb.id, container_id = %p.container_id, exec_id = %p.exec_id,
                    "the sandbox lives on without an answer for this process; its exit status is unknown");
                Exit::now(UNKNOWN_EXIT)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %sb.id, container_id = %p.container_id, exec_id = %p.exec_id,
                    error = %e, "WaitProcess failed; the exit status is unknown");
                Exit::now(UNKNOWN_EXIT)
            }
        };
        sb.finish(&c, &p, exit).await;
    });
}
