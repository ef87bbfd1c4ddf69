//! The daemons under systemd's notify protocol, with a real `NOTIFY_SOCKET`: `READY=1` only once
//! they serve (the control plane: API answering; the agent: after its containers' round and its
//! first session attempt, also when the control plane is away), and watchdog pings at half of
//! `WATCHDOG_USEC`.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use flotilla_tests::cluster::{Agent, ControlPlane};

/// Datagrams received until one contains `what`.
fn expect(sock: &UnixDatagram, what: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(what);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("never received '{what}'; got {got:?}");
}

#[test]
fn readiness_and_watchdog_follow_the_notify_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cp.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    let env = [
        ("NOTIFY_SOCKET", path.as_os_str()),
        ("WATCHDOG_USEC", std::ffi::OsStr::new("2000000")),
    ];
    // start_with returns once the API answers; READY=1 came before that, with a status.
    let mut cp = ControlPlane::start_with(std::net::Ipv4Addr::LOCALHOST, &[], &env);
    let got = expect(&sock, "READY=1", Duration::from_secs(5));
    assert!(
        got[0].contains("STATUS=serving agents and operators"),
        "{got:?}"
    );
    expect(&sock, "WATCHDOG=1", Duration::from_secs(3));

    let agent_path = dir.path().join("agent.sock");
    let agent_sock = UnixDatagram::bind(&agent_path).expect("bind");
    let agent_env = [
        ("NOTIFY_SOCKET", agent_path.as_os_str()),
        ("WATCHDOG_USEC", std::ffi::OsStr::new("2000000")),
    ];
    let mut agent = Agent::new(&dir.path().join("node"));
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run_with_env(&agent_env);
    let got = expect(&agent_sock, "READY=1", Duration::from_secs(10));
    assert!(got.concat().contains("STATUS=in session with"), "{got:?}");
    expect(&agent_sock, "WATCHDOG=1", Duration::from_secs(3));
    agent.kill();

    // Without its control plane the node still becomes ready, and says why it is offline.
    cp.stop();
    agent.run_with_env(&agent_env);
    let got = expect(&agent_sock, "READY=1", Duration::from_secs(30));
    assert!(got.concat().contains("STATUS=running offline"), "{got:?}");
    agent.kill();
}
