//! Task events (`/tasks/create`, `/tasks/exit`, ...) and where they go:
//! containerd's ttrpc Events service at `TTRPC_ADDRESS`, or only the log
//! when there is none (CRI-O passes it empty and reads exits through Wait).
//!
//! [`Publisher`] never blocks its caller: events enter a bounded queue and
//! one background task forwards them strictly in publish order, connecting
//! lazily and reconnecting after failures. containerd requires create →
//! start → exit → delete (and exec-added → exec-started → exit) in that
//! order, so an event that cannot be delivered is retried a few times before
//! the next one is tried, and only then dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageFull;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use tokio::sync::Notify;
use ttrpc::r#async::transport::Socket;

use crate::locks::lock;

/// A time as the protobuf timestamp containerd expects (events and the
/// Task API's `exited_at`).
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

/// Most events waiting to be forwarded; beyond it the oldest OOM event, or
/// else the oldest other event that may be dropped, makes room (see
/// [`Event::evictable`]).
const QUEUE_CAP: usize = 1024;
/// Bound on one connect and on one Forward call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per event before it is dropped.
const MAX_ATTEMPTS: u32 = 5;
/// Pause after the first failed try; doubles after each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A task event (messages from `containerd.events`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Paused(TaskPaused),
    Resumed(TaskResumed),
}

impl Event {
    /// containerd's topic for the event.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create(_) => "/tasks/create",
            Event::Start(_) => "/tasks/start",
            Event::Exit(_) => "/tasks/exit",
            Event::Delete(_) => "/tasks/delete",
            Event::ExecAdded(_) => "/tasks/exec-added",
            Event::ExecStarted(_) => "/tasks/exec-started",
            Event::Oom(_) => "/tasks/oom",
            Event::Paused(_) => "/tasks/paused",
            Event::Resumed(_) => "/tasks/resumed",
        }
    }

    /// The process the event is about: the exec id for exec events, the
    /// `id` field of exit and delete (exec id, or container id for an
    /// init), the container id otherwise.
    pub fn id(&self) -> &str {
        match self {
            Event::Create(e) => &e.container_id,
            Event::Start(e) => &e.container_id,
            Event::Exit(e) => &e.id,
            Event::Delete(e) => &e.id,
            Event::ExecAdded(e) => &e.exec_id,
            Event::ExecStarted(e) => &e.exec_id,
            Event::Oom(e) => &e.container_id,
            Event::Paused(e) => &e.container_id,
            Event::Resumed(e) => &e.container_id,
        }
    }

    /// Whether a full queue may drop it. Never an exit or a delete: a lost
    /// `/tasks/exit` leaves containerd's task running forever, and they are
    /// bounded by the pod's processes, not by anything the guest sends.
    pub fn evictable(&self) -> bool {
        !matches!(self, Event::Exit(_) | Event::Delete(_))
    }

    /// The event as an `Any` whose type URL is the bare proto full name
    /// (`containerd.events.TaskExit`): containerd resolves it by that name
    /// and rejects the `type.googleapis.com/` form.
    pub fn to_any(&self) -> Result<Any, containerd_shim_protos::protobuf::Error> {
        fn pack<M: MessageFull>(m: &M) -> Result<Any, containerd_shim_protos::protobuf::Error> {
            let mut any = Any::new();
            any.type_url = M::descriptor().full_name().to_string();
            any.value = m.write_to_bytes()?;
            Ok(any)
        }
        match self {
            Event::Create(e) => pack(e),
            Event::Start(e) => pack(e),
            Event::Exit(e) => pack(e),
            Event::Delete(e) => pack(e),
            Event::ExecAdded(e) => pack(e),
            Event::ExecStarted(e) => pack(e),
            Event::Oom(e) => pack(e),
            Event::Paused(e) => pack(e),
            Event::Resumed(e) => pack(e),
        }
    }
}

macro_rules! event_from {
    ($($variant:ident($msg:ty)),* $(,)?) => {
        $(impl From<$msg> for Event {
            fn from(m: $msg) -> Event {
                Event::$variant(m)
            }
        })*
    };
}

event_from!(
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Paused(TaskPaused),
    Resumed(TaskResumed),
);

/// Where the task service sends its events.
pub trait EventSink: Send + Sync + 'static {
    /// Queues the event; never blocks.
    fn publish(&self, event: Event);
}

/// An event with the time it was published.
struct Queued {
    event: Event,
    timestamp: Timestamp,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Queued>,
    /// The forwarder holds an event it has not finished with.
    in_flight: bool,
    dropped: u64,
    /// The publisher is gone: the forwarder exits once the queue is empty.
    closed: bool,
}

struct Queue {
    address: String,
    namespace: String,
    state: Mutex<QueueState>,
    wake: Notify,
    /// Signalled whenever the queue becomes empty and idle.
    idle: Notify,
}

/// Forwards events to containerd, or logs them when there is no address.
pub struct Publisher {
    queue: Option<Arc<Queue>>,
    namespace: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("address", &self.queue.as_ref().map(|q| q.address.as_str()))
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Publisher {
    /// `address` = `TTRPC_ADDRESS` when non-empty (a plain socket path, or
    /// `unix://` + path); `None` => events are only logged at debug level.
    /// The forwarder task is spawned on the current tokio runtime; outside
    /// one the publisher only logs.
    pub fn new(address: Option<String>, namespace: String) -> Publisher {
        let address = address.filter(|a| !a.is_empty());
        let queue = address.and_then(|address| {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                tracing::error!(
                    address = %address,
                    "event publisher created outside the tokio runtime, events are only logged"
                );
                return None;
            };
            let queue = Arc::new(Queue {
                address,
                namespace: namespace.clone(),
                state: Mutex::new(QueueState::default()),
                wake: Notify::new(),
                idle: Notify::new(),
            });
            rt.spawn(forward_loop(queue.clone()));
            Some(queue)
        });
        Publisher { queue, namespace }
    }

    /// Waits until every queued event was forwarded (or given up on), at
    /// most `timeout`. For the last events before the shim exits.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(q) = &self.queue else {
            return true;
        };
        let drained = async {
            loop {
                let idle = q.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                {
                    let st = lock(&q.state);
                    if st.events.is_empty() && !st.in_flight {
                        return;
                    }
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, drained).await.is_ok()
    }
}

impl EventSink for Publisher {
    fn publish(&self, event: Event) {
        let Some(q) = &self.queue else {
            tracing::debug!(
                topic = event.topic(),
                id = event.id(),
                namespace = %self.namespace,
                event = ?event,
                "task event (no events address, not forwarded)"
            );
            return;
        };
        tracing::debug!(
            topic = event.topic(),
            id = event.id(),
            "queueing task event"
        );
        let mut st = lock(&q.state);
        if st.events.len() >= QUEUE_CAP {
            // The guest's OOM reports go first: they are what a flood is
            // made of. Exits and deletes stay, beyond the cap if need be.
            let victim = st
                .events
                .iter()
                .position(|q| matches!(q.event, Event::Oom(_)))
                .or_else(|| st.events.iter().position(|q| q.event.evictable()));
            let dropped = victim.and_then(|i| st.events.remove(i)).map(|q| q.event);
            // Nothing may go: a newcomer that may be dropped is, and an exit
            // or a delete stays beyond the cap.
            let newcomer_dropped = dropped.is_none() && event.evictable();
            if dropped.is_some() || newcomer_dropped {
                st.dropped += 1;
                // One line per hundred drops is enough to see the problem.
                if st.dropped % 100 == 1 {
                    let old = dropped.as_ref().unwrap_or(&event);
                    tracing::warn!(
                        topic = old.topic(),
                        id = old.id(),
                        dropped = st.dropped,
                        "event queue full, dropping an event that may be dropped"
                    );
                }
            }
            if newcomer_dropped {
                return;
            }
        }
        st.events.push_back(Queued {
            event,
            timestamp: Timestamp::now(),
        });
        drop(st);
        q.wake.notify_one();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(q) = &self.queue {
            lock(&q.state).closed = true;
            q.wake.notify_one();
        }
    }
}

async fn forward_loop(q: Arc<Queue>) {
    let mut client: Option<EventsClient> = None;
    loop {
        let next = {
            let mut st = lock(&q.state);
            let next = st.events.pop_front();
            st.in_flight = next.is_some();
            if next.is_none() {
                q.idle.notify_waiters();
                if st.closed {
                    return;
                }
            }
            next
        };
        match next {
            Some(item) => deliver(&q, &mut client, item).await,
            None => q.wake.notified().await,
        }
    }
}

async fn deliver(q: &Queue, client: &mut Option<EventsClient>, item: Queued) {
    let topic = item.event.topic();
    let id = item.event.id().to_string();
    let any = match item.event.to_any() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(topic, id = %id, error = %e, "cannot encode event, dropping it");
            return;
        }
    };
    let mut envelope = Envelope::new();
    envelope.timestamp = Some(item.timestamp).into();
    envelope.namespace = q.namespace.clone();
    envelope.topic = topic.to_string();
    envelope.event = Some(any).into();
    let mut req = ForwardRequest::new();
    req.envelope = Some(envelope).into();

    let mut delay = FIRST_RETRY_DELAY;
    for attempt in 1..=MAX_ATTEMPTS {
        match try_forward(q, client, &req).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                topic,
                id = %id,
                attempt,
                address = %q.address,
                error = %e,
                "forwarding event failed"
            ),
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
    tracing::error!(
        topic,
        id = %id,
        attempts = MAX_ATTEMPTS,
        "giving up on event"
    );
}

async fn try_forward(
    q: &Queue,
    client: &mut Option<EventsClient>,
    req: &ForwardRequest,
) -> Result<(), String> {
    let c = match client {
        Some(c) => c,
        None => client.insert(connect(&q.address).await?),
    };
    let ctx = ttrpc::context::with_timeout(ATTEMPT_TIMEOUT.as_nanos() as i64);
    match c.forward(ctx, req).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // containerd answering with an error status is still a working
            // connection; anything else may be a dead one.
            if !matches!(e, ttrpc::Error::RpcStatus(_)) {
                *client = None;
            }
            Err(e.to_string())
        }
    }
}

async fn connect(address: &str) -> Result<EventsClient, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let stream = tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| format!("connect to {path} timed out"))?
        .map_err(|e| format!("connect to {path}: {e}"))?;
    let client = ttrpc::r#async::Client::new(Socket::from(stream));
    Ok(EventsClient::new(client))
}

/// Records events in order, for tests of the task service.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Event>>,
}

impl RecordingSink {
    pub fn new() -> RecordingSink {
        RecordingSink::default()
    }

    /// `(topic, id)` of every event so far, in publish order (see
    /// [`Event::id`]).
    pub fn events(&self) -> Vec<(String, String)> {
        lock(&self.events)
            .iter()
            .map(|e| (e.topic().to_string(), e.id().to_string()))
            .collect()
    }

    /// The events themselves, for tests that check their fields.
    pub fn full_events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

impl EventSink for RecordingSink {
    fn publish(&self, event: Event) {
        lock(&self.events).push(event);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::shim_async::{Events, create_events};
    use tokio::sync::mpsc;
    use ttrpc::r#async::{Server, TtrpcContext};

    use super::*;

    /// containerd's side: records every envelope it is sent.
    struct FakeContainerd {
        tx: mpsc::UnboundedSender<Envelope>,
    }

    #[async_trait::async_trait]
    impl Events for FakeContainerd {
        async fn forward(
            &self,
            _ctx: &TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty>
        {
            let _ = self.tx.send(req.envelope.unwrap_or_default());
            Ok(Default::default())
        }
    }

    async fn serve(path: &Path, tx: mpsc::UnboundedSender<Envelope>) -> Server {
        let _ = std::fs::remove_file(path);
        let svc: Arc<dyn Events + Send + Sync> = Arc::new(FakeContainerd { tx });
        let mut server = Server::new()
            .bind(&format!("unix://{}", path.display()))
            .expect("bind events socket")
            .register_service(create_events(svc));
        server.start().await.expect("start events server");
        server
    }

    fn exit(id: &str, status: u32) -> Event {
        let mut e = TaskExit::new();
        e.container_id = "c1".into();
        e.id = id.into();
        e.exit_status = status;
        e.into()
    }

    fn create(id: &str) -> Event {
        let mut e = TaskCreate::new();
        e.container_id = id.into();
        e.bundle = format!("/run/b/{id}");
        e.into()
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Envelope {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("event within 20 s")
            .expect("server alive")
    }

    fn socket(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("containerd.sock.ttrpc")
    }

    #[tokio::test]
    async fn forwards_in_order_with_exact_type_urls_and_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = socket(&dir);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut server = serve(&sock, tx).await;
        // containerd passes a plain path.
        let publisher = Publisher::new(Some(sock.display().to_string()), "k8s.io".into());
        let mut sent = vec![create("c1")];
        let mut start = TaskStart::new();
        start.container_id = "c1".into();
        start.pid = 42;
        sent.push(start.into());
        let mut added = TaskExecAdded::new();
        added.container_id = "c1".into();
        added.exec_id = "e1".into();
        sent.push(added.into());
        for i in 0..50 {
            sent.push(exit(&format!("e{i}"), i));
        }
        let mut oom = TaskOOM::new();
        oom.container_id = "c1".into();
        sent.push(oom.into());
        for e in &sent {
            publisher.publish(e.clone());
        }
        for e in &sent {
            let env = recv(&mut rx).await;
            assert_eq!(env.namespace, "k8s.io");
            assert_eq!(env.topic, e.topic());
            assert!(env.timestamp.is_some());
            let any = env.event.into_option().expect("event set");
            let want = match e {
                Event::Create(_) => "containerd.events.TaskCreate",
                Event::Start(_) => "containerd.events.TaskStart",
                Event::ExecAdded(_) => "containerd.events.TaskExecAdded",
                Event::Exit(_) => "containerd.events.TaskExit",
                Event::Oom(_) => "containerd.events.TaskOOM",
                other => panic!("not sent: {other:?}"),
            };
            assert_eq!(any.type_url, want);
            let round_trip = match e {
                Event::Create(_) => {
                    Event::Create(TaskCreate::parse_from_bytes(&any.value).expect("decode"))
                }
                Event::Start(_) => {
                    Event::Start(TaskStart::parse_from_bytes(&any.value).expect("decode"))
                }
                Event::ExecAdded(_) => {
                    Event::ExecAdded(TaskExecAdded::parse_from_bytes(&any.value).expect("decode"))
                }
                Event::Exit(_) => {
                    Event::Exit(TaskExit::parse_from_bytes(&any.value).expect("decode"))
                }
                Event::Oom(_) => Event::Oom(TaskOOM::parse_from_bytes(&any.value).expect("decode")),
                other => panic!("not sent: {other:?}"),
            };
            assert_eq!(&round_trip, e);
        }
        assert!(publisher.flush(Duration::from_secs(5)).await);
        server.shutdown().await.expect("server shutdown");
    }

    #[tokio::test]
    async fn reconnects_after_the_server_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = socket(&dir);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut server = serve(&sock, tx.clone()).await;
        let publisher =
            Publisher::new(Some(format!("unix://{}", sock.display())), "default".into());
        publisher.publish(create("before"));
        assert_eq!(recv(&mut rx).await.topic, "/tasks/create");
        server.shutdown().await.expect("server shutdown");
        drop(server);

        // Published while containerd is down: retried until it is back.
        publisher.publish(exit("during-1", 1));
        publisher.publish(exit("during-2", 2));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // A new server with its own channel: the events can only reach it
        // through a new connection.
        drop(tx);
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let mut server = serve(&sock, tx2).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let env = recv(&mut rx2).await;
            let any = env.event.into_option().expect("event");
            ids.push(TaskExit::parse_from_bytes(&any.value).expect("decode").id);
        }
        assert_eq!(ids, ["during-1", "during-2"]);
        publisher.publish(create("after"));
        let env = recv(&mut rx2).await;
        let any = env.event.into_option().expect("event");
        assert_eq!(
            TaskCreate::parse_from_bytes(&any.value)
                .expect("decode")
                .container_id,
            "after"
        );
        assert!(rx.try_recv().is_err(), "nothing reached the old server");
        server.shutdown().await.expect("server shutdown");
    }

    #[tokio::test]
    async fn without_an_address_events_are_only_logged() {
        let publisher = Publisher::new(Some(String::new()), "default".into());
        publisher.publish(create("c1"));
        assert!(publisher.flush(Duration::from_millis(10)).await);
        let publisher = Publisher::new(None, "default".into());
        publisher.publish(create("c1"));
        assert!(publisher.flush(Duration::from_millis(10)).await);
        assert!(format!("{publisher:?}").contains("address: None"));
    }

    /// Issue 14: the queue dropped its oldest entry at 1024, so a guest
    /// flooding OOM reports could push a real `/tasks/exit` out.
    #[tokio::test]
    async fn a_full_queue_never_drops_an_exit_or_a_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let publisher = Publisher::new(Some(socket(&dir).display().to_string()), "default".into());
        let oom = |id: &str| {
            Event::Oom(TaskOOM {
                container_id: id.into(),
                ..Default::default()
            })
        };
        publisher.publish(exit("real-exit", 137));
        for i in 0..(QUEUE_CAP * 3) {
            publisher.publish(oom(&format!("flood{i}")));
        }
        let mut delete = TaskDelete::new();
        delete.id = "real-delete".into();
        publisher.publish(delete.into());
        for i in 0..QUEUE_CAP {
            publisher.publish(oom(&format!("more{i}")));
        }
        let q = publisher.queue.as_ref().expect("queue");
        {
            let st = lock(&q.state);
            assert!(st.events.len() <= QUEUE_CAP, "{}", st.events.len());
            let ids: Vec<&str> = st.events.iter().map(|q| q.event.id()).collect();
            // The forwarder may hold the first exit in flight.
            assert!(
                ids.contains(&"real-exit") || st.in_flight,
                "the exit was dropped"
            );
            assert!(ids.contains(&"real-delete"), "the delete was dropped");
            assert!(st.dropped >= 3 * QUEUE_CAP as u64, "dropped {}", st.dropped);
        }
        // A queue of exits only keeps every one, and drops a newcomer that
        // may be dropped instead.
        let publisher = Publisher::new(Some(socket(&dir).display().to_string()), "default".into());
        for i in 0..(QUEUE_CAP as u32 + 10) {
            publisher.publish(exit(&format!("e{i}"), i));
        }
        publisher.publish(oom("late"));
        let q = publisher.queue.as_ref().expect("queue");
        let st = lock(&q.state);
        let exits = st
            .events
            .iter()
            .filter(|q| matches!(q.event, Event::Exit(_)))
            .count();
        assert!(exits + 1 >= QUEUE_CAP + 10, "exits kept: {exits}");
        assert!(!st.events.iter().any(|q| q.event.id() == "late"));
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_drops_the_oldest() {
        // Nobody listens: the forwarder is stuck retrying the first event
        // while the rest pile up.
        let dir = tempfile::tempdir().expect("tempdir");
        let publisher = Publisher::new(Some(socket(&dir).display().to_string()), "default".into());
        for i in 0..(QUEUE_CAP as u32 + 10) {
            publisher.publish(create(&format!("e{i}")));
        }
        let q = publisher.queue.as_ref().expect("queue");
        let st = lock(&q.state);
        assert!(st.events.len() <= QUEUE_CAP);
        assert!(st.dropped >= 10, "dropped {}", st.dropped);
        let last = st.events.back().expect("newest kept");
        assert_eq!(last.event.id(), format!("e{}", QUEUE_CAP + 9));
    }

    #[test]
    fn topics_ids_and_recording() {
        let sink = RecordingSink::new();
        let mut started = TaskExecStarted::new();
        started.container_id = "c1".into();
        started.exec_id = "e1".into();
        let mut delete = TaskDelete::new();
        delete.container_id = "c1".into();
        delete.id = "c1".into();
        let mut paused = TaskPaused::new();
        paused.container_id = "c1".into();
        let mut resumed = TaskResumed::new();
        resumed.container_id = "c1".into();
        for e in [
            create("c1"),
            started.into(),
            exit("e1", 0),
            delete.into(),
            paused.into(),
            resumed.into(),
        ] {
            sink.publish(e);
        }
        let got = sink.events();
        let want = [
            ("/tasks/create", "c1"),
            ("/tasks/exec-started", "e1"),
            ("/tasks/exit", "e1"),
            ("/tasks/delete", "c1"),
            ("/tasks/paused", "c1"),
            ("/tasks/resumed", "c1"),
        ];
        assert_eq!(
            got,
            want.map(|(t, i)| (t.to_string(), i.to_string())).to_vec()
        );
        assert_eq!(sink.full_events().len(), 6);
    }
}
