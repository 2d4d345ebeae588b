//! The connection keeper of a sandbox served to CRI-O: a small process that
//! holds a duplicate of every connection the shim accepted and, if the shim
//! dies without saying goodbye, answers on those connections as a stopped
//! sandbox.
//!
//! Why: CRI-O 1.32 dials a VM runtime's shim once per container and never
//! again (`internal/oci/runtime_vm.go`). After a `kill -9` of the shim every
//! call fails with `ttrpc: closed`, the goroutine waiting on `Wait` only
//! logs, the container stays "running" for good, and StopPodSandbox and
//! RemovePodSandbox fail for ever, since `Kill` cannot succeed. A server on
//! the old socket path would not help: CRI-O never re-dials it. What does
//! help is the connection CRI-O already has staying open and answering.
//!
//! So the keeper answers every call the shim had in flight and every later
//! one: `State` and `Wait` with exit status 255 (the VM is gone, as when
//! QEMU dies), `Kill`, `Delete` and `Shutdown` with success, anything else
//! with UNAVAILABLE. A call in flight left unanswered would hold the client
//! until its own deadline: 4 minutes for CRI-O's CreateContainer; the process that runs it (`bootstrap::keeper`) cleans up
//! as `delete` would first, and listens on the shim's old address for a
//! CRI-O that restarts and dials it again. It exits at the sandbox
//! container's Shutdown, as the shim would.
//!
//! containerd needs none of this: it sees the connection close and runs
//! `delete`, and a keeper holding the connection open would hide the death
//! from it. The keeper runs only for a shim with no events address.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// Names the keeper's end of its control socket in the keeper's environment.
pub const KEEPER_FD_ENV: &str = "KATA_SHIM_KEEPER_FD";
/// Where the keeper finds that end.
pub const KEEPER_FD: RawFd = 3;
/// Key of the connection number in ttrpc's per-connection data.
pub const CONN_KEY: &str = "kata.keeper.conn";
/// Exit status of every process of a sandbox whose shim died: its VM died
/// with it, and a dead VM's processes exit with this, as when QEMU dies.
pub const DEAD_EXIT_STATUS: u32 = crate::state::UNKNOWN_EXIT;
/// ttrpc's own cap on a frame's payload.
const FRAME_MAX: usize = 4 << 20;
const HEADER_LEN: usize = 10;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

/// A Task call that can be in flight when the shim dies: those that wait
/// on the VM. The others answer from the shim's memory at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Create,
    Start,
    Delete,
    Kill,
    Wait,
    Update,
    Stats,
    Pause,
    Resume,
    ResizePty,
    CloseIO,
}

impl Call {
    const ALL: [Call; 11] = [
        Call::Create,
        Call::Start,
        Call::Delete,
        Call::Kill,
        Call::Wait,
        Call::Update,
        Call::Stats,
        Call::Pause,
        Call::Resume,
        Call::ResizePty,
        Call::CloseIO,
    ];

    /// The method's name on the wire.
    pub fn method(self) -> &'static str {
        match self {
            Call::Create => "Create",
            Call::Start => "Start",
            Call::Delete => "Delete",
            Call::Kill => "Kill",
            Call::Wait => "Wait",
            Call::Update => "Update",
            Call::Stats => "Stats",
            Call::Pause => "Pause",
            Call::Resume => "Resume",
            Call::ResizePty => "ResizePty",
            Call::CloseIO => "CloseIO",
        }
    }

    fn from_method(m: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.method() == m)
    }
}

/// One message from the shim to its keeper: one datagram each.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    /// A new connection, whose duplicate rides along.
    Conn(u64),
    /// A call is in flight on a connection's stream.
    Call(u64, u32, Call),
    /// That call was answered (or abandoned by the client).
    Done(u64, u32),
    /// The shim exits normally: let everything go.
    Bye,
}

impl Msg {
    fn encode(&self) -> String {
        match self {
            Msg::Conn(k) => format!("CONN {k}"),
            Msg::Call(k, s, c) => format!("CALL {k} {s} {}", c.method()),
            Msg::Done(k, s) => format!("DONE {k} {s}"),
            Msg::Bye => "BYE".into(),
        }
    }

    fn decode(raw: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut w = text.split(' ');
        let msg = match (w.next()?, w.next(), w.next(), w.next()) {
            ("CONN", Some(k), None, None) => Msg::Conn(k.parse().ok()?),
            ("CALL", Some(k), Some(s), Some(c)) => {
                Msg::Call(k.parse().ok()?, s.parse().ok()?, Call::from_method(c)?)
            }
            ("DONE", Some(k), Some(s), None) => Msg::Done(k.parse().ok()?, s.parse().ok()?),
            ("BYE", None, None, None) => Msg::Bye,
            _ => return None,
        };
        w.next().is_none().then_some(msg)
    }
}

/// The shim's side: sends the keeper what it must know. Every send is
/// best effort and never blocks: a keeper that is gone or stuck costs the
/// shim nothing but a warning.
#[derive(Debug)]
pub struct Keeper {
    sandbox_id: String,
    ctl: OwnedFd,
    next: AtomicU64,
    pid: u32,
    /// The keeper is gone: said once, then nothing more is sent.
    lost: std::sync::atomic::AtomicBool,
}

impl Keeper {
    /// Starts the keeper of `sandbox_id` (this binary, action `keeper`),
    /// in a process group of its own so that what ends the shim's group
    /// does not end it.
    pub fn spawn(
        sandbox_id: &str,
        namespace: &str,
        bundle: &Path,
        debug: bool,
    ) -> io::Result<Keeper> {
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = std::env::args_os().next() {
            cmd.arg0(arg0);
        }
        cmd.args(["-namespace", namespace, "-id", sandbox_id, "-bundle"])
            .arg(bundle);
        if debug {
            cmd.arg("-debug");
        }
        cmd.arg("keeper")
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .env(KEEPER_FD_ENV, KEEPER_FD.to_string())
            .process_group(0);
        let fd = theirs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2(2) and fcntl(2), which are async-signal-safe; `theirs`
        // is open in the parent for the whole spawn.
        unsafe {
            cmd.pre_exec(move || {
                if fd != KEEPER_FD && libc::dup2(fd, KEEPER_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::fcntl(KEEPER_FD, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        drop(theirs);
        nix::fcntl::fcntl(
            ours.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // The keeper outlives us by design; its exit status is nobody's.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(Keeper {
            sandbox_id: sandbox_id.to_string(),
            ctl: ours,
            next: AtomicU64::new(1),
            pid,
            lost: Default::default(),
        })
    }

    fn send(&self, msg: &Msg, fd: Option<RawFd>) {
        if self.lost.load(Ordering::Relaxed) {
            return;
        }
        let text = msg.encode();
        let iov = [IoSlice::new(text.as_bytes())];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsg: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        match sendmsg::<()>(
            self.ctl.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                tracing::warn!(sandbox_id = %self.sandbox_id, msg = %text,
                    "the connection keeper is not reading; message dropped");
            }
            Err(e) => {
                self.lost.store(true, Ordering::Relaxed);
                tracing::warn!(sandbox_id = %self.sandbox_id, error = %e,
                    "the connection keeper is gone; a crash of this shim would now leave the pod to the next pod's sweep");
            }
        }
    }

    /// Hands a duplicate of an accepted connection over; returns the number
    /// the connection goes by.
    pub fn hand_over(&self, conn: RawFd) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.send(&Msg::Conn(key), Some(conn));
        key
    }

    fn call_started(&self, conn: u64, stream: u32, call: Call) {
        self.send(&Msg::Call(conn, stream, call), None);
    }

    fn call_finished(&self, conn: u64, stream: u32) {
        self.send(&Msg::Done(conn, stream), None);
    }

    /// Tells the keeper about the call `ctx` until the returned guard goes
    /// (answered or abandoned); `None` on a connection it was not handed.
    pub fn pending(&self, ctx: &ttrpc::r#async::TtrpcContext, call: Call) -> Option<Pending<'_>> {
        use ttrpc::ConnectionDataExt;
        let conn = *ctx.connection_data.get_typed::<u64>(CONN_KEY)?;
        let stream = ctx.mh.stream_id;
        self.call_started(conn, stream, call);
        Some(Pending {
            keeper: self,
            conn,
            stream,
        })
    }

    /// The shim is exiting normally: the keeper closes its duplicates and
    /// exits, so that the clients see the connections close.
    pub fn release(&self) {
        self.send(&Msg::Bye, None);
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// A call the keeper knows is in flight, until dropped.
#[derive(Debug)]
pub struct Pending<'a> {
    keeper: &'a Keeper,
    conn: u64,
    stream: u32,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.keeper.call_finished(self.conn, self.stream);
    }
}

/// ttrpc's accept hook: every accepted connection goes to the keeper, and
/// its number rides in the connection's data for calls in flight to report.
#[derive(Debug, Clone)]
pub struct AcceptHook(pub std::sync::Arc<Keeper>);

impl ttrpc::AcceptHook for AcceptHook {
    fn on_accept(&self, fd: RawFd) -> Result<ttrpc::HookOutput, ttrpc::HookError> {
        let key = self.0.hand_over(fd);
        let mut data = ttrpc::ConnectionData::new();
        data.insert(CONN_KEY.to_string(), Box::new(key));
        Ok(ttrpc::HookOutput {
            data,
            payload_transform: None,
        })
    }
}

/// What the keeper holds while the shim lives.
#[derive(Debug, Default)]
pub struct Held {
    pub conns: HashMap<u64, OwnedFd>,
    /// Per connection, the calls in flight by stream.
    pub pending: HashMap<u64, BTreeMap<u32, Call>>,
    /// Whether the shim ever accepted a client: a shim that died before
    /// one reached it leaves nobody to answer, now or after a restart
    /// (CRI-O counts that create as failed and never dials it).
    pub ever_connected: bool,
}

/// How holding ended.
#[derive(Debug)]
pub enum Ending {
    /// The shim said goodbye: nothing to do.
    Released,
    /// The shim is gone without a word: answer for it.
    ShimDied(Held),
}

/// Holds connections until the shim says goodbye or dies (its end of
/// `ctl` closes).
pub fn hold(ctl: &OwnedFd) -> Ending {
    let mut held = Held::default();
    let mut buf = [0u8; 256];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) = match recvmsg::<()>(
            ctl.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(r) => {
                let fds: Vec<RawFd> = r
                    .cmsgs()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => Some(fds),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                (r.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Ending::ShimDied(held),
        };
        // SAFETY: SCM_RIGHTS handed us these descriptors; nothing else owns
        // them.
        let mut fds: Vec<OwnedFd> = fds
            .into_iter()
            .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
            .collect();
        if len == 0 {
            return Ending::ShimDied(held);
        }
        match Msg::decode(&buf[..len]) {
            Some(Msg::Conn(k)) => {
                if let Some(fd) = fds.pop() {
                    held.conns.insert(k, fd);
                    held.ever_connected = true;
                }
            }
            Some(Msg::Call(k, s, c)) => {
                held.pending.entry(k).or_default().insert(s, c);
            }
            Some(Msg::Done(k, s)) => {
                if let Some(p) = held.pending.get_mut(&k) {
                    p.remove(&s);
                }
            }
            Some(Msg::Bye) => return Ending::Released,
            None => tracing::warn!(len, "the keeper got a message it does not know"),
        }
        forget_closed(&mut held);
    }
}

/// Drops the duplicates whose client hung up, so a long-lived sandbox
/// does not pile them up.
fn forget_closed(held: &mut Held) {
    held.conns.retain(|_, fd| {
        let mut p = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        }];
        // SAFETY: `p` is a valid array of one pollfd for the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 1, 0) };
        !(n == 1 && p[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLNVAL) != 0)
    });
    let conns = &held.conns;
    held.pending.retain(|k, _| conns.contains_key(k));
}

/// How one connection's answering ended, or that one began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// A client connected anew (a restarted CRI-O re-dials the address).
    Opened,
    /// The client hung up (or broke the framing).
    Closed,
    /// The sandbox container's own Shutdown was answered: as the shim
    /// itself would, the keeper is done.
    SandboxShutdown,
}

/// How long a keeper that listens waits with no client at all before it
/// gives up: long enough for CRI-O to restart and re-dial.
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Answers on every held connection as a stopped sandbox until the
/// sandbox container (`sandbox_id`) is shut down, which is when a live
/// shim would exit: CRI-O keeps its clients open after RemovePodSandbox.
/// With `listener` (the shim's old socket path) a CRI-O that restarted and
/// re-dials gets the same answers; then the keeper also ends after
/// [`IDLE_LIMIT`] without any client, and without it when the last held
/// connection closes. `died_at` is the exit time reported.
pub fn answer_all(
    held: Held,
    sandbox_id: &str,
    died_at: SystemTime,
    listener: Option<std::os::unix::net::UnixListener>,
) {
    let Held {
        conns, mut pending, ..
    } = held;
    let (tx, rx) = std::sync::mpsc::channel();
    let serve = |fd: OwnedFd, calls: BTreeMap<u32, Call>, tx: std::sync::mpsc::Sender<Answered>| {
        let sid = sandbox_id.to_string();
        std::thread::spawn(move || {
            let end = answer_connection(fd, &calls, &sid, died_at).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "keeper connection ended");
                Answered::Closed
            });
            let _ = tx.send(end);
        });
    };
    let mut open = conns.len();
    for (k, fd) in conns {
        serve(fd, pending.remove(&k).unwrap_or_default(), tx.clone());
    }
    let listening = listener.is_some();
    if let Some(l) = listener {
        let (tx, sid) = (tx.clone(), sandbox_id.to_string());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                if tx.send(Answered::Opened).is_err() {
                    return;
                }
                let tx = tx.clone();
                let sid = sid.clone();
                std::thread::spawn(move || {
                    let end =
                        answer_connection(OwnedFd::from(conn), &BTreeMap::new(), &sid, died_at)
                            .unwrap_or(Answered::Closed);
                    let _ = tx.send(end);
                });
            }
        });
    }
    drop(tx);
    loop {
        let next = if open > 0 {
            rx.recv().ok()
        } else if listening {
            rx.recv_timeout(IDLE_LIMIT).ok()
        } else {
            None
        };
        match next {
            Some(Answered::Opened) => open += 1,
            Some(Answered::Closed) => open = open.saturating_sub(1),
            Some(Answered::SandboxShutdown) | None => return,
        }
    }
}

/// One connection: the calls in flight first, then request by request.
fn answer_connection(
    fd: OwnedFd,
    in_flight: &BTreeMap<u32, Call>,
    sandbox_id: &str,
    died_at: SystemTime,
) -> io::Result<Answered> {
    // The shim's runtime made the shared file description non-blocking.
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    let mut sock = std::fs::File::from(fd);
    for (&stream, &call) in in_flight {
        // Their requests are gone with the shim: a `State` would need its
        // ids, but `State` never waits, so it is never in flight.
        let (code, payload) = reply(call.method(), &[], died_at);
        let message = if code == ttrpc::Code::OK {
            String::new()
        } else {
            format!(
                "the shim of this sandbox died while {} was in flight; only stop and remove are possible",
                call.method()
            )
        };
        tracing::info!(
            method = call.method(),
            ?code,
            "answered a call in flight of the dead shim"
        );
        write_response(&mut sock, stream, code, &message, &payload)?;
    }
    loop {
        let mut header = [0u8; HEADER_LEN];
        sock.read_exact(&mut header)?;
        let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let stream = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > FRAME_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body)?;
        if header[8] != TYPE_REQUEST {
            continue;
        }
        let Ok(req) = ttrpc::Request::parse_from_bytes(&body) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a request"));
        };
        let (code, payload) = reply(&req.method, &req.payload, died_at);
        let message = if code == ttrpc::Code::OK {
            String::new()
        } else {
            format!(
                "the shim of this sandbox died; {} is not possible, only stop and remove",
                req.method
            )
        };
        tracing::info!(method = %req.method, ?code, "answered for the dead shim");
        write_response(&mut sock, stream, code, &message, &payload)?;
        if req.method == "Shutdown"
            && api::ShutdownRequest::parse_from_bytes(&req.payload)
                .is_ok_and(|r| r.id == sandbox_id)
        {
            return Ok(Answered::SandboxShutdown);
        }
    }
}

fn write_response(
    sock: &mut std::fs::File,
    stream: u32,
    code: ttrpc::Code,
    message: &str,
    payload: &[u8],
) -> io::Result<()> {
    let mut resp = ttrpc::Response::new();
    let mut status = ttrpc::Status::new();
    status.code = code.into();
    status.message = message.to_string();
    resp.status = Some(status).into();
    resp.payload = payload.to_vec();
    let body = resp.write_to_bytes().map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&[TYPE_RESPONSE, 0]);
    frame.extend_from_slice(&body);
    sock.write_all(&frame)
}

/// The answer of a dead sandbox to one Task call: its code and payload.
fn reply(method: &str, payload: &[u8], died_at: SystemTime) -> (ttrpc::Code, Vec<u8>) {
    let at = || Some(crate::events::timestamp(died_at)).into();
    let encoded = |m: &dyn containerd_shim_protos::protobuf::MessageDyn| {
        m.write_to_bytes_dyn().unwrap_or_default()
    };
    let ok = |bytes| (ttrpc::Code::OK, bytes);
    match method {
        "State" => {
            let req = api::StateRequest::parse_from_bytes(payload).unwrap_or_default();
            ok(encoded(&api::StateResponse {
                id: req.id,
                exec_id: req.exec_id,
                status: api::Status::STOPPED.into(),
                exit_status: DEAD_EXIT_STATUS,
                exited_at: at(),
                ..Default::default()
            }))
        }
        "Wait" => ok(encoded(&api::WaitResponse {
            exit_status: DEAD_EXIT_STATUS,
            exited_at: at(),
            ..Default::default()
        })),
        "Delete" => ok(encoded(&api::DeleteResponse {
            exit_status: DEAD_EXIT_STATUS,
            exited_at: at(),
            ..Default::default()
        })),
        "Kill" | "Shutdown" | "CloseIO" => ok(encoded(&api::Empty::new())),
        "Connect" => ok(encoded(&api::ConnectResponse {
            shim_pid: std::process::id(),
            ..Default::default()
        })),
        "Pids" => ok(encoded(&api::PidsResponse::new())),
        _ => (ttrpc::Code::UNAVAILABLE, Vec::new()),
    }
}

/// Whether a keeper of `sandbox_id` runs (this binary, `-id <id>`, action
/// `keeper`).
pub fn is_running(sandbox_id: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
        args.last() == Some(&b"keeper".as_slice())
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == sandbox_id.as_bytes())
    })
}

#[cfg(test)]
mod tests;
