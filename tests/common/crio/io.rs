//! The CRI-O side of a container's or exec's IO: FIFOs under
//! `<runtime_root>/crio/fifo/io/<random>/<ctrid>-std*`, read ends opened
//! `O_RDONLY|O_NONBLOCK` before Create and drained by threads, the stdin
//! write end opened in the background when requested (containerd's `fifo`
//! package), and background Wait calls.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use containerd_shim_protos::api;
use tokio::sync::watch;
use ttrpc::asynchronous::Client;

/// A FIFO read end drained into a buffer by a thread; with an echo prefix,
/// complete lines also go to the test's stderr.
pub struct Drain {
    stop: Arc<AtomicBool>,
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Drain {
    pub fn open(path: &Path, echo: Option<String>) -> Drain {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("open {} for reading: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (stop2, buf2) = (stop.clone(), buf.clone());
        let thread = std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            let mut line = Vec::new();
            loop {
                // Read the flag first: everything written before `finish`
                // is then drained by the pass below.
                let stopping = stop2.load(Ordering::SeqCst);
                loop {
                    match file.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf2.lock()
                                .expect("drain buffer")
                                .extend_from_slice(&chunk[..n]);
                            if let Some(prefix) = &echo {
                                line.extend_from_slice(&chunk[..n]);
                                while let Some(end) = line.iter().position(|b| *b == b'\n') {
                                    let l: Vec<u8> = line.drain(..=end).collect();
                                    eprint!("[{prefix}] {}", String::from_utf8_lossy(&l));
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let (Some(prefix), false) = (&echo, line.is_empty()) {
                eprintln!("[{prefix}] {}", String::from_utf8_lossy(&line));
            }
        });
        Drain {
            stop,
            buf,
            thread: Some(thread),
        }
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.lock().expect("drain buffer").clone()
    }

    /// Takes what is in the pipe now, closes the read end, returns it all.
    pub fn finish(mut self) -> Vec<u8> {
        self.join();
        std::mem::take(&mut *self.buf.lock().expect("drain buffer"))
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.join();
    }
}

/// The stdin FIFO's write end, opened (blocking) on a thread until the
/// shim opens its read end.
struct StdinEnd {
    path: PathBuf,
    rx: mpsc::Receiver<std::io::Result<File>>,
    file: Option<File>,
}

impl StdinEnd {
    fn open(path: &Path) -> StdinEnd {
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(OpenOptions::new().write(true).open(&p));
        });
        StdinEnd {
            path: path.to_path_buf(),
            rx,
            file: None,
        }
    }

    fn get(&mut self, within: Duration) -> &mut File {
        if self.file.is_none() {
            let f = self
                .rx
                .recv_timeout(within)
                .unwrap_or_else(|_| panic!("the shim never opened {}", self.path.display()))
                .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
            self.file = Some(f);
        }
        self.file.as_mut().expect("opened")
    }
}

impl Drop for StdinEnd {
    fn drop(&mut self) {
        if self.file.is_none() && self.rx.try_recv().is_err() {
            // Release the opener thread: a reader completes its open.
            let _ = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
        }
    }
}

/// The FIFO set of one container or exec process.
pub struct ExecIo {
    dir: PathBuf,
    paths: (String, String, String),
    stdin: Option<StdinEnd>,
    stdout: Option<Drain>,
    stderr: Option<Drain>,
}

impl ExecIo {
    /// Creates the FIFOs in a fresh directory named after nothing but
    /// randomness, files named after the container `id`. With `tty`, the
    /// stderr path is still sent but nothing is opened there (cio).
    pub fn new(runtime_root: &Path, id: &str, stdin: bool, tty: bool) -> ExecIo {
        let dir = runtime_root
            .join("crio/fifo/io")
            .join(&kata_shim::boot_check::nonce()[..10]);
        std::fs::create_dir_all(&dir).expect("mkdir fifo dir");
        let path = |s: &str| dir.join(format!("{id}-{s}"));
        let mkfifo = |p: &Path| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o700))
                .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()))
        };
        let stdin_end = stdin.then(|| {
            mkfifo(&path("stdin"));
            StdinEnd::open(&path("stdin"))
        });
        mkfifo(&path("stdout"));
        let stdout = Drain::open(&path("stdout"), None);
        let stderr = (!tty).then(|| {
            mkfifo(&path("stderr"));
            Drain::open(&path("stderr"), None)
        });
        let s = |p: PathBuf| p.display().to_string();
        ExecIo {
            paths: (
                if stdin {
                    s(path("stdin"))
                } else {
                    String::new()
                },
                s(path("stdout")),
                s(path("stderr")),
            ),
            dir,
            stdin: stdin_end,
            stdout: Some(stdout),
            stderr,
        }
    }

    /// (stdin, stdout, stderr) as sent to the shim.
    pub fn paths(&self) -> (String, String, String) {
        self.paths.clone()
    }

    pub fn write_stdin(&mut self, data: &[u8]) {
        let f = self
            .stdin
            .as_mut()
            .expect("the process has no stdin")
            .get(Duration::from_secs(30));
        f.write_all(data).expect("write stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn snapshot(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout
                .as_ref()
                .map(Drain::snapshot)
                .unwrap_or_default(),
            self.stderr
                .as_ref()
                .map(Drain::snapshot)
                .unwrap_or_default(),
        )
    }

    /// Closes everything and returns (stdout, stderr).
    pub fn finish(mut self) -> (Vec<u8>, Vec<u8>) {
        self.stdin = None;
        let out = self.stdout.take().map(Drain::finish).unwrap_or_default();
        let err = self.stderr.take().map(Drain::finish).unwrap_or_default();
        (out, err)
    }
}

impl Drop for ExecIo {
    fn drop(&mut self) {
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a background Wait ended; `state` is the State CRI-O reads right
/// after a successful Wait of an init process.
#[derive(Debug, Clone)]
pub struct WaitOutcome {
    pub wait: Result<api::WaitResponse, ttrpc::Error>,
    pub state: Option<Result<api::StateResponse, ttrpc::Error>>,
}

/// A Wait RPC running in the background.
#[derive(Clone)]
pub struct Waiter(watch::Receiver<Option<WaitOutcome>>);

impl Waiter {
    pub fn spawn(
        rt: &tokio::runtime::Runtime,
        client: Client,
        id: &str,
        exec_id: &str,
        then_state: bool,
    ) -> Waiter {
        let (tx, rx) = watch::channel(None);
        let mut req = api::WaitRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        rt.spawn(async move {
            let wait = super::call::<_, api::WaitResponse>(&client, "Wait", &req, None).await;
            let state = if then_state && wait.is_ok() {
                let mut s = api::StateRequest::new();
                s.id = req.id.clone();
                s.exec_id = req.exec_id.clone();
                Some(super::call::<_, api::StateResponse>(&client, "State", &s, None).await)
            } else {
                None
            };
            let _ = tx.send(Some(WaitOutcome { wait, state }));
        });
        Waiter(rx)
    }

    /// The outcome, waiting at most `within` for it.
    pub fn wait(&self, rt: &tokio::runtime::Runtime, within: Duration) -> Option<WaitOutcome> {
        let mut rx = self.0.clone();
        if let Some(o) = rx.borrow().clone() {
            return Some(o);
        }
        rt.block_on(async {
            tokio::time::timeout(within, rx.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|v| v.clone()))
        })
    }
}
