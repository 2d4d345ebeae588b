//! `start`: give containerd or CRI-O the address of the shim that serves
//! this container. The sandbox (or an untyped container) gets a new serving
//! shim, spawned with the listening socket already bound so that the address
//! is connectable the moment it is printed; every other container of the pod
//! gets its sandbox's address.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::bootstrap_api::BootstrapParams;
use containerd_shim_protos::protobuf::Message;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};

use super::args::Flags;
use crate::annotations::{self, AnnotationError, ContainerKind};
use crate::layout::SHIM_PID_FILE;

/// The environment variable telling the serving shim which fd is its
/// listening socket.
pub const LISTEN_FD_ENV: &str = "KATA_SHIM_LISTEN_FD";
/// Where the listening socket sits in the serving shim.
pub const LISTEN_FD: RawFd = 3;
/// The address file every bundle gets; CRI-O re-dials it after a restart.
pub const ADDRESS_FILE: &str = "address";
/// containerd's event address (a plain socket path).
pub const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

pub(crate) const START_LOCK: &str = "start.lock";
/// Each lost race needs another pod's sweep to remove the directory again;
/// more than a few in a row means something else removes it.
const START_LOCK_ATTEMPTS: u32 = 5;
/// containerd writes its options or BootstrapParams at once and closes the
/// pipe; a caller that never closes stdin must not hold `start` for long.
const STDIN_WAIT: Duration = Duration::from_secs(1);
const STDIN_LIMIT: usize = 1 << 20;

/// Why `start` could not produce an address.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("-id is required")]
    MissingId,
    #[error("cannot determine the bundle directory")]
    Cwd(#[source] io::Error),
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
    #[error(
        "no shim serves sandbox {sandbox_id} at {path} (container {container_id} needs its sandbox started first)"
    )]
    NoSandboxShim {
        sandbox_id: String,
        container_id: String,
        path: PathBuf,
    },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pid file {path} does not hold a pid")]
    BadPid { path: PathBuf },
    #[error("cannot spawn the serving shim of sandbox {sandbox_id}")]
    Spawn {
        sandbox_id: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StartError {
    let path = path.to_path_buf();
    move |source| StartError::Io { what, path, source }
}

/// Runs `start` and returns the address to print.
pub fn run(flags: &Flags) -> Result<String, StartError> {
    // Drain stdin first: containerd writes it before waiting for output.
    let stdin = read_bounded(libc::STDIN_FILENO, STDIN_WAIT, STDIN_LIMIT);
    if flags.id.is_empty() {
        return Err(StartError::MissingId);
    }
    let bundle = bundle_dir(&flags.bundle).map_err(StartError::Cwd)?;
    let events_override = match std::env::var(TTRPC_ADDRESS_ENV) {
        Ok(a) if !a.is_empty() => None,
        _ => events_address_from_bootstrap(&stdin, &flags.namespace, &flags.id),
    };
    let annotations = annotations::read_bundle_annotations(&bundle)?;
    let identity = annotations::identity(&flags.id, &annotations)?;
    let sandbox_id = identity.sandbox_id.as_str();
    let socket = crate::layout::shim_socket(sandbox_id);
    let pid = match identity.kind {
        ContainerKind::Sandbox => {
            ensure_daemon(flags, sandbox_id, &bundle, events_override.as_deref())?
        }
        ContainerKind::Container => {
            if !socket_alive(&socket) {
                return Err(StartError::NoSandboxShim {
                    sandbox_id: sandbox_id.to_string(),
                    container_id: flags.id.clone(),
                    path: socket,
                });
            }
            read_pid(&crate::layout::shim_dir(sandbox_id).join(SHIM_PID_FILE))?
        }
    };
    let address = format!("unix://{}", socket.display());
    // No trailing newline: containerd 1.7 parses `address` untrimmed.
    write_file(&bundle.join(ADDRESS_FILE), address.as_bytes())?;
    write_file(&bundle.join(SHIM_PID_FILE), pid.to_string().as_bytes())?;
    Ok(address)
}

/// `-bundle` when given (made absolute), else the working directory, which
/// containerd and CRI-O set to the bundle.
pub(crate) fn bundle_dir(flag: &str) -> io::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    Ok(if flag.is_empty() { cwd } else { cwd.join(flag) })
}

/// A serving shim for `sandbox_id`: the one already answering on its
/// socket, or a new one. Returns its pid.
fn ensure_daemon(
    flags: &Flags,
    sandbox_id: &str,
    bundle: &Path,
    events_override: Option<&str>,
) -> Result<u32, StartError> {
    let dir = crate::layout::shim_dir(sandbox_id);
    let _lock = lock_start(&dir)?;
    let socket = crate::layout::shim_socket(sandbox_id);
    let pid_path = dir.join(SHIM_PID_FILE);
    if socket_alive(&socket) {
        return read_pid(&pid_path);
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale socket", &socket)(e)),
    }
    let listener = UnixListener::bind(&socket).map_err(io_err("bind", &socket))?;
    let pid =
        spawn_daemon(flags, sandbox_id, bundle, &listener, events_override).map_err(|source| {
            StartError::Spawn {
                sandbox_id: sandbox_id.to_string(),
                source,
            }
        })?;
    write_file(&pid_path, pid.to_string().as_bytes())?;
    Ok(pid)
}

/// Makes the sandbox's directory and holds its start lock. Two `start`s of
/// one sandbox (a retry racing the first) must not both remove and rebind
/// the socket, and another pod's sweep may remove a directory that has no
/// shim yet between our creating and our locking it: a lock on a file no
/// longer at its path guards nothing, so that case starts over.
fn lock_start(dir: &Path) -> Result<Flock<std::fs::File>, StartError> {
    use std::os::unix::fs::MetadataExt;
    let lock_path = dir.join(START_LOCK);
    let mut attempts = 0;
    loop {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        // The directory may go again before the lock file is made in it.
        match std::fs::File::create(&lock_path) {
            Ok(file) => {
                let lock = Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| io_err("lock", &lock_path)(e.into()))?;
                let held = lock.metadata().map_err(io_err("stat", &lock_path))?;
                match std::fs::metadata(&lock_path) {
                    Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                        return Ok(lock);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("stat", &lock_path)(e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("create", &lock_path)(e)),
        }
        attempts += 1;
        if attempts == START_LOCK_ATTEMPTS {
            return Err(io_err("lock", &lock_path)(io::Error::other(
                "the directory was removed under every attempt to lock it",
            )));
        }
    }
}

/// Re-executes this binary as `... serve` with `listener` on fd 3, in its
/// own session (so it outlives the caller's process group), with null stdio
/// (Go's `exec` waits for every holder of its stdout/stderr pipes).
fn spawn_daemon(
    flags: &Flags,
    sandbox_id: &str,
    bundle: &Path,
    listener: &UnixListener,
    events_override: Option<&str>,
) -> io::Result<u32> {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd.args(["-namespace", &flags.namespace, "-id", sandbox_id])
        .args(["-address", &flags.address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env(LISTEN_FD_ENV, LISTEN_FD.to_string());
    if let Some(addr) = events_override {
        cmd.env(TTRPC_ADDRESS_ENV, addr);
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, dup2, fcntl) without
    // allocating or taking locks. `fd` is the listener, open in the parent
    // for the whole of `spawn` and hence in the child. fd 3 is never one of
    // std's own descriptors here: stdio 0-2 are open (see
    // `ensure_std_fds`) and the lock file and listener were opened before
    // std creates its exec-error pipe, so that pipe sits above 3.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if fd != LISTEN_FD {
                nix::unistd::dup2(fd, LISTEN_FD)?;
            }
            // dup2 onto itself keeps FD_CLOEXEC, and std opens everything
            // close-on-exec: clear it explicitly on the one fd to pass.
            nix::fcntl::fcntl(
                LISTEN_FD,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    // The child is not waited for: `start` exits at once and the serving
    // shim is reparented, as containerd expects.
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// Whether something accepts connections on `path`. A non-blocking connect
/// so a shim with a full backlog counts as alive instead of hanging us.
pub(crate) fn socket_alive(path: &Path) -> bool {
    let Ok(fd) = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    matches!(
        nix::sys::socket::connect(fd.as_raw_fd(), &addr),
        Ok(()) | Err(Errno::EAGAIN)
    )
}

fn read_pid(path: &Path) -> Result<u32, StartError> {
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    text.trim()
        .parse()
        .ok()
        .filter(|&p: &u32| p > 0)
        .ok_or_else(|| StartError::BadPid {
            path: path.to_path_buf(),
        })
}

fn write_file(path: &Path, body: &[u8]) -> Result<(), StartError> {
    std::fs::write(path, body).map_err(io_err("write", path))
}

/// Reads `fd` to EOF, but for at most `wait` and `limit` bytes: stdin may be
/// /dev/null, a pipe containerd closes after writing, or a terminal.
pub(crate) fn read_bounded(fd: RawFd, wait: Duration, limit: usize) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < limit {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd that outlives the
        // call, and nfds is 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            break;
        }
        if ready == 0 || pfd.revents & libc::POLLNVAL != 0 {
            break;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n.min(limit - out.len())]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => break,
        }
    }
    out
}

/// containerd 2.3 writes a protobuf `BootstrapParams` on stdin; older ones
/// may write the runtime options `Any`. Only a message that decodes as
/// BootstrapParams and names our namespace and id is trusted for its ttrpc
/// (events) address, returned as a plain path like `TTRPC_ADDRESS`.
pub(crate) fn events_address_from_bootstrap(
    stdin: &[u8],
    namespace: &str,
    id: &str,
) -> Option<String> {
    if stdin.is_empty() {
        return None;
    }
    let params = BootstrapParams::parse_from_bytes(stdin).ok()?;
    if !namespace.is_empty() && params.namespace != namespace {
        return None;
    }
    // An options Any decodes with its type URL here: it never equals an id.
    if !params.instance_id.is_empty() && params.instance_id != id {
        return None;
    }
    let addr = params.containerd_ttrpc_address.trim();
    let addr = addr.strip_prefix("unix://").unwrap_or(addr);
    (!addr.is_empty()).then(|| addr.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use containerd_shim_protos::protobuf::well_known_types::any::Any;

    use super::*;

    /// BootstrapParams as containerd 2.3 encodes it: instance_id "sb1",
    /// namespace "k8s.io", log_level DEBUG (-4, a ten-byte varint),
    /// containerd_version "v2.3.0", containerd_ttrpc_address
    /// "unix:///run/containerd/containerd.sock.ttrpc", containerd_binary
    /// "/usr/bin/containerd".
    const BOOTSTRAP_PARAMS: &[u8] = &[
        0x0a, 0x03, b's', b'b', b'1', //
        0x12, 0x06, b'k', b'8', b's', b'.', b'i', b'o', //
        0x18, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, //
        0x22, 0x06, b'v', b'2', b'.', b'3', b'.', b'0', //
        0x2a, 0x2c, b'u', b'n', b'i', b'x', b':', b'/', b'/', b'/', b'r', b'u', b'n', b'/', b'c',
        b'o', b'n', b't', b'a', b'i', b'n', b'e', b'r', b'd', b'/', b'c', b'o', b'n', b't', b'a',
        b'i', b'n', b'e', b'r', b'd', b'.', b's', b'o', b'c', b'k', b'.', b't', b't', b'r', b'p',
        b'c', //
        0x3a, 0x13, b'/', b'u', b's', b'r', b'/', b'b', b'i', b'n', b'/', b'c', b'o', b'n', b't',
        b'a', b'i', b'n', b'e', b'r', b'd',
    ];

    #[test]
    fn bootstrap_params_fixture_decodes() {
        let p = BootstrapParams::parse_from_bytes(BOOTSTRAP_PARAMS).expect("decode");
        assert_eq!(p.instance_id, "sb1");
        assert_eq!(p.namespace, "k8s.io");
        assert_eq!(p.log_level.value(), -4);
        assert_eq!(p.containerd_version, "v2.3.0");
        assert_eq!(
            p.containerd_ttrpc_address,
            "unix:///run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(p.containerd_binary, "/usr/bin/containerd");
        assert_eq!(
            events_address_from_bootstrap(BOOTSTRAP_PARAMS, "k8s.io", "sb1").as_deref(),
            Some("/run/containerd/containerd.sock.ttrpc")
        );
        assert!(events_address_from_bootstrap(BOOTSTRAP_PARAMS, "", "sb1").is_some());
        assert_eq!(
            events_address_from_bootstrap(BOOTSTRAP_PARAMS, "default", "sb1"),
            None
        );
        assert_eq!(
            events_address_from_bootstrap(BOOTSTRAP_PARAMS, "k8s.io", "other"),
            None
        );
    }

    #[test]
    fn runtime_options_any_and_garbage_are_ignored() {
        // runtimeoptions.v1.Options{config_path: "/etc/kata-containers/configuration.toml"}
        let mut options = vec![0x12, 39];
        options.extend_from_slice(b"/etc/kata-containers/configuration.toml");
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = options;
        let bytes = any.write_to_bytes().expect("encode");
        for ns in ["k8s.io", ""] {
            assert_eq!(
                events_address_from_bootstrap(&bytes, ns, "sb1"),
                None,
                "ns {ns:?}"
            );
        }
        assert_eq!(
            events_address_from_bootstrap(&[0xff, 0xff, 0x07], "k8s.io", "sb1"),
            None
        );
        assert_eq!(events_address_from_bootstrap(b"", "k8s.io", "sb1"), None);
    }

    #[test]
    fn stdin_reads_to_eof_or_gives_up() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut w = std::fs::File::from(w);
        w.write_all(BOOTSTRAP_PARAMS).expect("write");
        drop(w);
        let got = read_bounded(r.as_raw_fd(), Duration::from_secs(5), STDIN_LIMIT);
        assert_eq!(got, BOOTSTRAP_PARAMS);

        // A writer that never closes: bounded by the wait, keeps what came.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let mut w = std::fs::File::from(w);
        w.write_all(b"partial").expect("write");
        let t = Instant::now();
        let got = read_bounded(r.as_raw_fd(), Duration::from_millis(200), STDIN_LIMIT);
        assert_eq!(got, b"partial");
        assert!(t.elapsed() < Duration::from_secs(2));
        // The size cap holds too.
        assert_eq!(read_bounded(r.as_raw_fd(), Duration::ZERO, 3).len(), 0);
        w.write_all(b"abcdef").expect("write");
        assert_eq!(
            read_bounded(r.as_raw_fd(), Duration::from_millis(200), 3),
            b"abc"
        );

        let null = std::fs::File::open("/dev/null").expect("null");
        assert!(read_bounded(null.as_raw_fd(), Duration::from_secs(5), STDIN_LIMIT).is_empty());
    }

    #[test]
    fn socket_liveness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        assert!(!socket_alive(&path));
        let listener = UnixListener::bind(&path).expect("bind");
        assert!(socket_alive(&path));
        drop(listener);
        // The stale file remains but nobody answers.
        assert!(path.exists());
        assert!(!socket_alive(&path));
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(SHIM_PID_FILE);
        std::fs::write(&p, "1234\n").expect("write");
        assert_eq!(read_pid(&p).expect("pid"), 1234);
        std::fs::write(&p, "0").expect("write");
        assert!(matches!(read_pid(&p), Err(StartError::BadPid { .. })));
        std::fs::remove_file(&p).expect("rm");
        assert!(matches!(read_pid(&p), Err(StartError::Io { .. })));
    }

    /// A sweep removes a directory with no shim while holding its lock; the
    /// `start` waiting on that lock must end up holding a lock that is
    /// still at its path, in a directory that exists.
    #[test]
    fn a_start_lock_whose_directory_was_swept_is_taken_again() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("sandbox");
        let sweeper = lock_start(&dir).expect("first lock");
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || lock_start(&dir))
        };
        std::thread::sleep(Duration::from_millis(100));
        std::fs::remove_dir_all(&dir).expect("sweep the directory");
        drop(sweeper);
        let held = waiter.join().expect("thread").expect("second lock");
        let now = std::fs::metadata(dir.join(START_LOCK)).expect("lock file is back");
        let held = held.metadata().expect("fstat");
        assert_eq!((now.dev(), now.ino()), (held.dev(), held.ino()));
    }
}
