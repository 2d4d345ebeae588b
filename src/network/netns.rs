//! Running netlink work inside a network namespace: a fresh thread enters
//! the namespace (only that thread changes namespace), runs the work on a
//! current-thread tokio runtime with its own rtnetlink connection, and
//! exits. The thread never returns to a pool, so no other work ever runs in
//! the pod's namespace by accident.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::Handle;

use super::NetworkError;

/// Opens the namespace file at `path`, checking that it is one (nsfs).
pub(super) fn open(path: &Path) -> Result<File, NetworkError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetworkError::NetnsMissing {
            path: path.to_path_buf(),
        },
        _ => NetworkError::EnterNetns {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let fs = fstatfs(&file).map_err(|e| NetworkError::EnterNetns {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(NetworkError::NotANetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Runs `work` with an rtnetlink handle inside the network namespace at
/// `path`, on a thread of its own, and waits for its result.
pub(super) fn run_in<T, F, Fut>(path: &Path, work: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let file = open(path)?;
    let netns = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("kata-netns".to_string())
        .spawn(move || enter_and_run(file, netns, work))
        .map_err(|source| NetworkError::Host {
            what: "spawn the network namespace thread",
            source,
        })?;
    thread.join().map_err(|_| NetworkError::WorkerPanicked {
        netns: path.to_path_buf(),
    })?
}

/// The worker thread's body.
fn enter_and_run<T, F, Fut>(file: File, netns: PathBuf, work: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        // nsfs, but another kind of namespace (`/proc/<pid>/ns/mnt`).
        Errno::EINVAL => NetworkError::NotANetns {
            path: netns.clone(),
        },
        e => NetworkError::EnterNetns {
            path: netns.clone(),
            source: e.into(),
        },
    })?;
    drop(file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetworkError::Host {
            what: "build the netlink runtime",
            source,
        })?;
    rt.block_on(async move {
        // After setns: the socket belongs to the namespace it is made in.
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Host {
                what: "open a netlink socket",
                source,
            })?;
        tokio::spawn(connection);
        work(handle).await
    })
}
