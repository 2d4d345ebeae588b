use std::os::unix::net::UnixStream;

use super::*;

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

fn keeper_on(ctl: OwnedFd) -> Keeper {
    Keeper {
        sandbox_id: "sb".into(),
        ctl,
        next: AtomicU64::new(1),
        pid: 0,
        lost: Default::default(),
    }
}

/// Reads one response frame: its stream and the decoded response.
fn read_response(s: &mut UnixStream) -> (u32, ttrpc::Response) {
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header).expect("header");
    assert_eq!(header[8], TYPE_RESPONSE);
    let len = u32::from_be_bytes(header[0..4].try_into().expect("test value")) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    let stream = u32::from_be_bytes(header[4..8].try_into().expect("test value"));
    (
        stream,
        ttrpc::Response::parse_from_bytes(&body).expect("response"),
    )
}

fn send_request(s: &mut UnixStream, stream: u32, method: &str, payload: Vec<u8>) {
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v2.Task".into();
    req.method = method.into();
    req.payload = payload;
    let body = req.write_to_bytes().expect("encode");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&[TYPE_REQUEST, 0]);
    frame.extend_from_slice(&body);
    s.write_all(&frame).expect("send");
}

#[test]
fn messages_round_trip_and_junk_is_refused() {
    for m in [
        Msg::Conn(7),
        Msg::Call(7, 41, Call::Wait),
        Msg::Call(7, 43, Call::Create),
        Msg::Done(7, 41),
        Msg::Bye,
    ] {
        assert_eq!(Msg::decode(m.encode().as_bytes()), Some(m));
    }
    for junk in [
        "",
        "CONN",
        "CONN x",
        "WAIT 1 2",
        "CALL 1 2",
        "CALL 1 2 Exec",
        "CALL 1 2 Wait x",
        "CONN 1 2",
        "BYE now",
        "DONE 1 2 3",
        "HELLO 1",
    ] {
        assert_eq!(Msg::decode(junk.as_bytes()), None, "{junk:?}");
    }
}

#[test]
fn a_dead_sandbox_answers_stopped_with_255_and_refuses_new_work() {
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let mut state = api::StateRequest::new();
    state.id = "app".into();
    state.exec_id = "e1".into();
    let (code, bytes) = reply("State", &state.write_to_bytes().expect("test value"), at);
    assert_eq!(code, ttrpc::Code::OK);
    let s = api::StateResponse::parse_from_bytes(&bytes).expect("test value");
    assert_eq!((s.id.as_str(), s.exec_id.as_str()), ("app", "e1"));
    assert_eq!(s.status.enum_value(), Ok(api::Status::STOPPED));
    assert_eq!(s.exit_status, DEAD_EXIT_STATUS);
    assert_eq!(s.exited_at.seconds, 1_700_000_000);
    let (code, bytes) = reply("Wait", &[], at);
    assert_eq!(code, ttrpc::Code::OK);
    assert_eq!(
        api::WaitResponse::parse_from_bytes(&bytes)
            .expect("test value")
            .exit_status,
        255
    );
    let (code, bytes) = reply("Delete", &[], at);
    assert_eq!(code, ttrpc::Code::OK);
    assert_eq!(
        api::DeleteResponse::parse_from_bytes(&bytes)
            .expect("test value")
            .exit_status,
        255
    );
    for m in ["Kill", "Shutdown", "Connect", "Pids", "CloseIO"] {
        assert_eq!(reply(m, &[], at).0, ttrpc::Code::OK, "{m}");
    }
    for m in [
        "Create",
        "Start",
        "Exec",
        "Update",
        "ResizePty",
        "Stats",
        "Pause",
    ] {
        assert_eq!(reply(m, &[], at).0, ttrpc::Code::UNAVAILABLE, "{m}");
    }
}

#[test]
fn a_goodbye_releases_and_a_silent_end_hands_the_connections_over() {
    let (ours, theirs) = pair();
    let k = keeper_on(ours);
    let (client, served) = UnixStream::pair().expect("pair");
    let key = k.hand_over(served.as_raw_fd());
    k.call_started(key, 5, Call::Wait);
    k.call_started(key, 7, Call::Wait);
    k.call_finished(key, 5);
    k.release();
    assert!(matches!(hold(&theirs), Ending::Released));

    let (ours, theirs) = pair();
    let k = keeper_on(ours);
    let key = k.hand_over(served.as_raw_fd());
    k.call_started(key, 7, Call::Wait);
    k.call_started(key, 8, Call::Create);
    // A client that already hung up is forgotten, with its Waits.
    let (gone_client, gone) = UnixStream::pair().expect("pair");
    let gone_key = k.hand_over(gone.as_raw_fd());
    k.call_started(gone_key, 9, Call::Create);
    drop((gone_client, gone));
    drop(k);
    let Ending::ShimDied(held) = hold(&theirs) else {
        panic!("a closed control socket is the shim's death");
    };
    assert_eq!(held.conns.keys().copied().collect::<Vec<_>>(), vec![key]);
    assert_eq!(
        held.pending[&key],
        BTreeMap::from([(7, Call::Wait), (8, Call::Create)])
    );
    assert!(held.ever_connected);
    drop(client);

    // A shim that dies before any client reached it.
    let (ours, theirs) = pair();
    drop(keeper_on(ours));
    let Ending::ShimDied(held) = hold(&theirs) else {
        panic!("a closed control socket is the shim's death");
    };
    assert!(!held.ever_connected && held.conns.is_empty());
}

#[test]
fn after_the_shim_dies_its_calls_in_flight_and_new_calls_are_answered() {
    let (mut client, served) = UnixStream::pair().expect("pair");
    // The shim's runtime had made it non-blocking; the keeper copes.
    served.set_nonblocking(true).expect("nonblocking");
    let mut held = Held::default();
    held.conns.insert(1, OwnedFd::from(served));
    held.pending.insert(
        1,
        BTreeMap::from([(3, Call::Wait), (5, Call::Create), (11, Call::Wait)]),
    );
    let at = SystemTime::now();
    let keeper = std::thread::spawn(move || answer_all(held, "sb", at, None));
    let mut answers: Vec<(u32, ttrpc::Response)> =
        (0..3).map(|_| read_response(&mut client)).collect();
    answers.sort_by_key(|a| a.0);
    let streams: Vec<u32> = answers.iter().map(|a| a.0).collect();
    assert_eq!(streams, vec![3, 5, 11], "every call in flight answered");
    for (stream, resp) in &answers {
        if *stream == 5 {
            // The Create in flight fails at once, not at the client's deadline.
            assert_eq!(resp.status.code.enum_value(), Ok(ttrpc::Code::UNAVAILABLE));
            assert!(
                resp.status
                    .message
                    .contains("died while Create was in flight"),
                "{}",
                resp.status.message
            );
        } else {
            assert_eq!(resp.status.code.enum_value(), Ok(ttrpc::Code::OK));
            let w = api::WaitResponse::parse_from_bytes(&resp.payload).expect("test value");
            assert_eq!(w.exit_status, DEAD_EXIT_STATUS);
        }
    }
    let mut state = api::StateRequest::new();
    state.id = "sb".into();
    send_request(
        &mut client,
        13,
        "State",
        state.write_to_bytes().expect("test value"),
    );
    let (stream, resp) = read_response(&mut client);
    assert_eq!(stream, 13);
    assert_eq!(resp.status.code.enum_value(), Ok(ttrpc::Code::OK));
    let s = api::StateResponse::parse_from_bytes(&resp.payload).expect("test value");
    assert_eq!(s.status.enum_value(), Ok(api::Status::STOPPED));
    send_request(&mut client, 15, "Exec", Vec::new());
    let (stream, resp) = read_response(&mut client);
    assert_eq!(stream, 15);
    assert_eq!(resp.status.code.enum_value(), Ok(ttrpc::Code::UNAVAILABLE));
    assert!(
        resp.status
            .message
            .contains("the shim of this sandbox died")
    );
    drop(client);
    keeper
        .join()
        .expect("the keeper ends when its last client hangs up");
}

#[test]
fn the_sandboxs_shutdown_ends_the_keeper_while_clients_stay_connected() {
    // CRI-O keeps its clients after RemovePodSandbox.
    let (mut app_client, app) = UnixStream::pair().expect("pair");
    let (mut sb_client, sb) = UnixStream::pair().expect("pair");
    let mut held = Held::default();
    held.conns.insert(1, OwnedFd::from(app));
    held.conns.insert(2, OwnedFd::from(sb));
    let keeper = std::thread::spawn(move || answer_all(held, "sb", SystemTime::now(), None));
    let shutdown = |id: &str| {
        let mut r = api::ShutdownRequest::new();
        r.id = id.into();
        r.write_to_bytes().expect("encode")
    };
    send_request(&mut app_client, 1, "Shutdown", shutdown("app"));
    assert_eq!(read_response(&mut app_client).0, 1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !keeper.is_finished(),
        "an app container's Shutdown ends nothing"
    );
    send_request(&mut sb_client, 1, "Shutdown", shutdown("sb"));
    assert_eq!(read_response(&mut sb_client).0, 1);
    keeper
        .join()
        .expect("the sandbox's Shutdown ends the keeper");
    drop((app_client, sb_client));
}

#[test]
fn a_keeper_that_is_gone_is_noted_once_and_costs_nothing() {
    let (ours, theirs) = pair();
    let k = keeper_on(ours);
    drop(theirs);
    k.call_started(1, 3, Call::Wait);
    assert!(k.lost.load(Ordering::Relaxed));
    // No more sends (nor warnings) from here on.
    k.call_finished(1, 3);
    k.release();
}

#[test]
fn a_client_that_dials_again_gets_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shim.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let keeper = std::thread::spawn(move || {
        answer_all(Held::default(), "sb", SystemTime::now(), Some(listener))
    });
    // No held connection at all: a listening keeper waits for a re-dial.
    let mut client = UnixStream::connect(&path).expect("re-dial");
    let mut state = api::StateRequest::new();
    state.id = "app".into();
    send_request(
        &mut client,
        1,
        "State",
        state.write_to_bytes().expect("encode"),
    );
    let (stream, resp) = read_response(&mut client);
    assert_eq!(stream, 1);
    let s = api::StateResponse::parse_from_bytes(&resp.payload).expect("state");
    assert_eq!(s.status.enum_value(), Ok(api::Status::STOPPED));
    drop(client);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !keeper.is_finished(),
        "a listening keeper outlives a hang-up"
    );
    let mut client = UnixStream::connect(&path).expect("re-dial");
    let mut shut = api::ShutdownRequest::new();
    shut.id = "sb".into();
    send_request(
        &mut client,
        3,
        "Shutdown",
        shut.write_to_bytes().expect("encode"),
    );
    assert_eq!(read_response(&mut client).0, 3);
    keeper.join().expect("the sandbox's Shutdown ends it");
}
