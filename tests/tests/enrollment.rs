//! Cluster identity end to end: real `orchestratord`, `nodeagent` and `flotilla` binaries over
//! real QUIC and HTTPS with real certificates on loopback.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use flotilla_api::ops::NodeState;
use flotilla_tests::cluster::{raw, Agent, ControlPlane};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file below `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_node_joins_connects_and_its_key_stays_on_it() {
    let cp = ControlPlane::start(&[]);
    let token = cp.token(&["--label", "site=store-12"]);
    assert!(token.starts_with("FLT1-"), "{token}");
    let mut agent = Agent::new(&cp.scratch().join("n1"));
    let o = agent.join(&cp.server(), &token, &["--label", "rack=a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = fs::read_to_string(agent.identity().join("key.pem")).expect("node key");
    let mode = fs::metadata(agent.identity().join("key.pem"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The node's private key exists only on the node (the first 56 characters of a PKCS#8
    // P-256 key are the same for every key; the private scalar follows).
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for f in files(&cp.data) {
        let bytes = fs::read(&f).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&body[56..100]),
            "the node key is in {}",
            f.display()
        );
    }
    // The token's secret is stored hashed only.
    let secret = token.rsplit('-').next().expect("secret");
    for f in files(&cp.data) {
        assert!(
            !String::from_utf8_lossy(&fs::read(&f).expect("read")).contains(secret),
            "secret in {}",
            f.display()
        );
    }

    agent.run();
    agent.wait_in_service(&cp);
    let nodes = cp.nodes();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert!(n.connected);
    assert_eq!(n.labels.get("site").map(String::as_str), Some("store-12"));
    assert_eq!(n.labels.get("rack").map(String::as_str), Some("a"));
    assert!(agent.log().contains(&n.id));
    assert_eq!(n.state, NodeState::Ready);
    assert_eq!(n.agent_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let r = n.resources.clone().expect("resources");
    assert!(r.cpus >= 1, "{r:?}");
    assert!(
        r.memory_bytes > 0 && r.memory_available_bytes <= r.memory_bytes,
        "{r:?}"
    );
    assert!(r.disk_bytes > 0, "{r:?}");
    // A node that dies without a word is seen as gone within the idle timeout.
    let t = std::time::Instant::now();
    agent.kill();
    while cp.nodes()[0].state != NodeState::Disconnected {
        assert!(
            t.elapsed() < Duration::from_secs(25),
            "node loss not noticed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bad_tokens_are_refused_with_a_reason_and_nothing_written() {
    let cp = ControlPlane::start(&[]);
    let refused = |agent: &Agent, token: &str, why: &str| {
        let o = agent.join(&cp.server(), token, &[]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(why),
            "expected '{why}' in: {}",
            stderr(&o)
        );
        assert!(
            !agent.identity().exists(),
            "identity written for a refused join"
        );
    };
    // single use
    let token = cp.token(&[]);
    let first = Agent::new(&cp.scratch().join("a"));
    assert!(first.join(&cp.server(), &token, &[]).status.success());
    refused(&Agent::new(&cp.scratch().join("b")), &token, "already used");
    // expired
    let token = cp.token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    refused(&Agent::new(&cp.scratch().join("c")), &token, "expired");
    // revoked
    let token = cp.token(&["--uses", "3"]);
    let id = token.split('-').nth(2).expect("id");
    cp.flotilla_ok(&["token", "rm", id]);
    refused(
        &Agent::new(&cp.scratch().join("d")),
        &token,
        "unknown or revoked",
    );
    // garbage
    refused(
        &Agent::new(&cp.scratch().join("e")),
        "FLT1-nope",
        "malformed join token",
    );
    // a token of another cluster: refused by the node itself, before it sends anything —
    // the server (which logs every join request it reads) received none
    let other = ControlPlane::start(&[]);
    let foreign = other.token(&[]);
    let requests_before =
        cp.log().matches("join refused").count() + cp.log().matches("node joined").count();
    refused(
        &Agent::new(&cp.scratch().join("f")),
        &foreign,
        "does not match the join token",
    );
    std::thread::sleep(Duration::from_millis(200));
    let requests_after =
        cp.log().matches("join refused").count() + cp.log().matches("node joined").count();
    assert_eq!(
        requests_before,
        requests_after,
        "the server received a join request:\n{}",
        cp.log()
    );
    // a multi-use token serves its uses
    let token = cp.token(&["--uses", "2"]);
    assert!(Agent::new(&cp.scratch().join("g"))
        .join(&cp.server(), &token, &[])
        .status
        .success());
    assert!(Agent::new(&cp.scratch().join("h"))
        .join(&cp.server(), &token, &[])
        .status
        .success());
    refused(&Agent::new(&cp.scratch().join("i")), &token, "already used");
    assert_eq!(cp.nodes().len(), 3);
}

// The certificate tests wait out most of a 30 s certificate: their names (libtest starts tests
// in name order) start them first, so the short tests fill in around them.
#[test]
fn a_certificate_renews_in_place_and_revocation_cuts_at_once() {
    let cp = ControlPlane::start(&["--node-cert-lifetime", "30"]);
    let mut agent = Agent::new(&cp.scratch().join("n"));
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    let first_cert = fs::read_to_string(agent.identity().join("cert.pem")).expect("cert");
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    // 30-second certificates renew at 50-80 % of their life: two renewals — the second
    // asked for with the certificate the first gave — take at most 48 s, over one session.
    agent.wait_log("certificate renewed in place", 2, Duration::from_secs(70));
    assert_eq!(
        agent.log().matches("session established").count(),
        1,
        "the session dropped:\n{}",
        agent.log()
    );
    assert_ne!(
        fs::read_to_string(agent.identity().join("cert.pem")).expect("cert"),
        first_cert
    );
    let nodes = cp.nodes();
    assert!(nodes[0].connected);

    let id = nodes[0].id.clone();
    let t = Instant::now();
    cp.flotilla_ok(&["node", "revoke", &id]);
    agent.wait_log("revoked", 1, Duration::from_secs(5));
    // At once, not at the next heartbeat or the 15 s idle timeout.
    assert!(
        t.elapsed() < flotilla_tests::patient(Duration::from_secs(5)),
        "revocation took {:?}",
        t.elapsed()
    );
    // The node's session ends on the control plane's side once its session task sees the
    // connection closed, a moment after the node was told.
    flotilla_tests::wait(
        "the node shown disconnected",
        Duration::from_secs(10),
        || !cp.nodes()[0].connected,
    );
    let n = cp.nodes().remove(0);
    assert!(!n.connected && n.revoked, "{n:?}");
}

#[test]
fn operators_need_an_admin_certificate_of_the_cluster() {
    let cp = ControlPlane::start(&[]);
    let other = ControlPlane::start(&[]);
    // another cluster's admin is refused at the TLS layer
    let o = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&other.admin)
        .args(["token", "ls"])
        .env("FLOTILLA_CONFIG", &other.admin)
        .output()
        .expect("flotilla");
    assert!(o.status.success(), "own cluster works");
    let mixed = cp.scratch().join("mixed");
    fs::create_dir_all(&mixed).expect("mkdir");
    for f in ["credential.json", "ca.pem"] {
        fs::copy(cp.admin.join(f), mixed.join(f)).expect("copy");
    }
    for f in ["cert.pem", "key.pem"] {
        fs::copy(other.admin.join(f), mixed.join(f)).expect("copy");
    }
    let o = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&mixed)
        .args(["token", "ls"])
        .output()
        .expect("flotilla");
    assert!(
        !o.status.success(),
        "a foreign admin certificate was accepted"
    );
    // a second admin can be issued; its key is made by the CLI
    let bob = cp.scratch().join("bob");
    cp.flotilla_ok(&[
        "admin",
        "issue",
        "bob",
        "--out",
        bob.to_str().expect("utf8"),
    ]);
    let o = std::process::Command::new(flotilla_tests::bin("flotilla"))
        .arg("--config")
        .arg(&bob)
        .args(["node", "ls"])
        .output()
        .expect("flotilla");
    assert!(o.status.success(), "{}", stderr(&o));
    let key = fs::read_to_string(bob.join("key.pem")).expect("key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for f in files(&cp.data) {
        assert!(!String::from_utf8_lossy(&fs::read(&f).expect("read")).contains(&body[56..100]));
    }
}

#[test]
fn the_server_takes_identity_from_certificates_only() {
    use flotilla_api::{AgentReply, AgentRequest, HelloReply};
    use flotilla_certs::credential::Credential;
    let cp = ControlPlane::start(&[]);
    let a = Agent::new(&cp.scratch().join("a"));
    assert!(a.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let b = Agent::new(&cp.scratch().join("b"));
    assert!(b.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let cred_a = Credential::load(&a.identity()).expect("a");
    let cred_b = Credential::load(&b.identity()).expect("b");
    let rt = raw::runtime();
    rt.block_on(async {
        // node a is node a, whatever it asks for
        let conn = raw::connect(cp.addr, raw::client_of(&cred_a))
            .await
            .expect("connect");
        match raw::hello(&conn).await.expect("hello") {
            HelloReply::Welcome { node_id, .. } => assert_eq!(node_id, cred_a.name),
            other => panic!("{other:?}"),
        }
        // a CSR naming node b still yields a certificate for node a
        let params = flotilla_certs::key_and_csr(&cred_b.name).expect("csr");
        let reply = raw::request(
            &conn,
            &AgentRequest::Renew {
                csr_pem: params.cert_pem.clone(),
            },
        )
        .await;
        let AgentReply::Renewed { cert_pem } = reply else {
            panic!("{reply:?}")
        };
        use rustls::pki_types::pem::PemObject;
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
        let (id, _) = flotilla_certs::identity_of(&der).expect("identity");
        assert_eq!(
            id.name, cred_a.name,
            "a node obtained another node's identity"
        );
        conn.close(0u32.into(), b"");

        // no client certificate: the handshake completes (TLS 1.3), the hello does not
        let ca = std::fs::read_to_string(cp.data.join("ca.pem")).expect("ca");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).expect("ca"))
            .expect("root");
        let mut anon = rustls::ClientConfig::builder_with_provider(flotilla_certs::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        anon.alpn_protocols = vec![flotilla_certs::tls::ALPN_AGENT.to_vec()];
        let conn = raw::connect(cp.addr, anon).await.expect("connect");
        let err = raw::hello(&conn)
            .await
            .expect_err("hello without a certificate");
        assert!(err.contains("a node certificate is required"), "{err}");

        // an admin certificate is not a node certificate
        let admin = Credential::load(&cp.admin).expect("admin");
        let conn = raw::connect(cp.addr, raw::client_of(&admin))
            .await
            .expect("connect");
        let err = raw::hello(&conn).await.expect_err("admin as node");
        assert!(err.contains("not a node certificate"), "{err}");

        // a node certificate of another cluster fails the handshake
        let other = ControlPlane::start(&[]);
        let c = Agent::new(&cp.scratch().join("c"));
        assert!(c
            .join(&other.server(), &other.token(&[]), &[])
            .status
            .success());
        let mut foreign = Credential::load(&c.identity()).expect("c");
        foreign.ca_pem = cred_a.ca_pem.clone();
        let refused = match raw::connect(cp.addr, raw::client_of(&foreign)).await {
            Err(e) => e,
            Ok(conn) => raw::hello(&conn).await.expect_err("foreign node accepted"),
        };
        assert!(!refused.is_empty());
        assert!(
            !cp.log().contains(&foreign.name),
            "the foreign node got a session"
        );
    });
}

#[test]
fn a_connection_that_says_nothing_is_closed_and_gives_back_its_turn() {
    use flotilla_certs::credential::Credential;
    let cp = ControlPlane::start(&[]);
    let a = Agent::new(&cp.scratch().join("a"));
    assert!(a.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let cred = Credential::load(&a.identity()).expect("a");
    let rt = raw::runtime();
    let (held, reason) = rt.block_on(async {
        // A handshake, then no hello: the connection holds one of the turns to be admitted.
        let conn = raw::connect(cp.addr, raw::client_of(&cred))
            .await
            .expect("connect");
        let began = Instant::now();
        let why = tokio::time::timeout(Duration::from_secs(25), conn.closed())
            .await
            .expect("the control plane closes a connection that says nothing");
        (began.elapsed(), why.to_string())
    });
    assert!(
        reason.contains("no first request within 10s of the handshake"),
        "{reason}"
    );
    assert!(
        held >= Duration::from_secs(8) && held < Duration::from_secs(15),
        "held {held:?}"
    );
    // Nothing else was held up: the node itself still joins a session.
    let mut a = a;
    a.run();
    a.wait_log("session established", 1, Duration::from_secs(20));
}

#[test]
fn joins_that_never_read_their_answer_are_refused_beyond_the_address_share_then_closed_and_give_it_back(
) {
    use flotilla_certs::token::JoinToken;
    let cp = ControlPlane::start(&[]);
    let token: JoinToken = cp.token(&[]).parse().expect("token");
    let rt = raw::runtime();
    let reasons = rt.block_on(async {
        // From the address a real node dials from, as many join connections as one address
        // may hold turns (64, `orchestratord`'s `ADMISSIONS_PER_ADDRESS`, unproven and as
        // many proven): each asks, with a zero stream window (kept alive), so that the answer
        // can never be written.
        let tls = flotilla_certs::tls::enrollment_client(*token.ca_digest()).expect("tls");
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
        let mut cfg = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(0));
        transport.keep_alive_interval(Some(Duration::from_secs(2)));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(120)).expect("idle timeout"),
        ));
        cfg.transport_config(std::sync::Arc::new(transport));
        let ep = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("endpoint");
        let ask = |cfg: quinn::ClientConfig| {
            let ep = ep.clone();
            async move {
                let conn = ep
                    .connect_with(cfg, cp.addr, flotilla_certs::SERVER_NAME)
                    .expect("connect")
                    .await?;
                let (mut send, recv) = conn.open_bi().await.expect("stream");
                send.write_all(&2u32.to_be_bytes()).await.expect("length");
                send.write_all(b"{}").await.expect("body");
                let _ = send.finish();
                Ok::<_, quinn::ConnectionError>((conn, recv))
            }
        };
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(ask(cfg.clone()).await.expect("handshake"));
        }
        // The address's share of unproven connections is taken (as forged Initials would
        // take it): the next ones are sent a Retry, come back proven and have a share of
        // their own.
        for _ in 0..64 {
            held.push(ask(cfg.clone()).await.expect("handshake after a Retry"));
        }
        // One more from that address is refused before its handshake, and counted so.
        let refused = ask(cfg.clone())
            .await
            .expect_err("the address holds both its shares of the turns");
        assert!(
            matches!(refused, quinn::ConnectionError::ConnectionClosed(ref c)
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
            "{refused}"
        );
        // (The blocking client runs a runtime of its own: on a thread of its own.)
        let metrics = std::thread::scope(|s| s.spawn(|| cp.api().metrics()).join())
            .expect("metrics thread")
            .expect("metrics");
        for line in [
            "flotilla_agent_connections_refused_total{reason=\"address\"} 1",
            "flotilla_agent_connections_refused_total{reason=\"wait\"} 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
        }
        let mut reasons = Vec::new();
        for (conn, _recv) in &held {
            let why = tokio::time::timeout(Duration::from_secs(40), conn.closed())
                .await
                .expect("the control plane closes a join whose answer is never read");
            reasons.push(why.to_string());
        }
        reasons
    });
    for reason in &reasons {
        assert!(
            reason.contains("the answer to the first request not read within 10s"),
            "{reason}"
        );
    }
    // The address's share was given back: a node from it joins and starts its session.
    let mut a = Agent::new(&cp.scratch().join("a"));
    let o = a.join(&cp.server(), &cp.token(&[]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    a.run();
    a.wait_log("session established", 1, Duration::from_secs(20));
}

#[test]
fn a_node_certificate_cannot_serve_as_the_control_plane() {
    use flotilla_certs::credential::Credential;
    let cp = ControlPlane::start(&[]);
    let mut a = Agent::new(&cp.scratch().join("a"));
    assert!(a.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let b = Agent::new(&cp.scratch().join("b"));
    assert!(b.join(&cp.server(), &cp.token(&[]), &[]).status.success());
    let impostor = Credential::load(&b.identity()).expect("b");
    // a server on another port presenting node b's certificate (signed by the right CA)
    let port = flotilla_tests::cluster::free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let tls = flotilla_certs::tls::server(
        &impostor.ca_pem,
        &impostor.identity,
        &[flotilla_certs::tls::ALPN_AGENT],
    )
    .expect("server tls");
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic");
    std::thread::spawn(move || {
        raw::runtime().block_on(async move {
            let ep = quinn::Endpoint::server(
                quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
                addr,
            )
            .expect("endpoint");
            while let Some(i) = ep.accept().await {
                let _ = i.await;
            }
        })
    });
    let mut cred = Credential::load(&a.identity()).expect("a");
    cred.server = addr.to_string();
    cred.write(&a.identity()).expect("write");
    a.run();
    a.wait_log(
        "does not allow extended key usage for server authentication",
        1,
        Duration::from_secs(10),
    );
    assert!(!a.log().contains("session established"));
}

/// Debian's libfaketime, for a clock that is wrong for one process.
fn libfaketime() -> std::path::PathBuf {
    for dir in fs::read_dir("/usr/lib").expect("/usr/lib").flatten() {
        let p = dir.path().join("faketime/libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!("libfaketime missing: install Debian's faketime (scripts/install-deps.sh)")
}

#[test]
fn a_node_with_a_wrong_clock_says_so_keeps_running_and_connects_once_it_is_right() {
    let cp = ControlPlane::start(&[]);
    let mut agent = Agent::new(&cp.scratch().join("n"));
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    // A board without a real-time clock boots in 1970.
    let clock = cp.scratch().join("clock");
    fs::write(&clock, "@1970-01-02 00:00:00").expect("clock");
    let lib = libfaketime();
    agent.run_with_env(&[
        ("LD_PRELOAD", lib.as_os_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock.as_os_str()),
        ("FAKETIME_NO_CACHE", std::ffi::OsStr::new("1")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", std::ffi::OsStr::new("1")),
    ]);
    agent.wait_log(
        "the clock of this node reads 1970",
        1,
        Duration::from_secs(20),
    );
    assert!(!agent.log().contains("session established"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.running(), "the agent gave up:\n{}", agent.log());
    // NTP fixes the clock: the agent connects at its next attempt.
    fs::write(&clock, "+0").expect("clock");
    agent.wait_log("session established", 1, Duration::from_secs(90));
    assert!(cp.nodes()[0].connected);
}

#[test]
fn a_certificate_expired_offline_is_replaced_by_a_rejoin_keeping_the_node_identity() {
    let cp = ControlPlane::start(&["--node-cert-lifetime", "30"]);
    let mut agent = Agent::new(&cp.scratch().join("n"));
    assert!(agent
        .join(&cp.server(), &cp.token(&["--label", "site=a"]), &[])
        .status
        .success());
    let id = cp.nodes()[0].id.clone();
    // While its certificate is valid, a second join is refused.
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already joined"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Offline past its certificate's end.
    std::thread::sleep(Duration::from_secs(32));
    agent.run();
    agent.wait_log("certificate expired", 1, Duration::from_secs(10));
    drop(agent);
    let mut agent = Agent::new(&cp.scratch().join("n"));
    // A new token and the old key bring the same node back.
    let o = agent.join(&cp.server(), &cp.token(&[]), &["--label", "rack=b"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&id),
        "a new identity was made"
    );
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    let nodes = cp.nodes();
    assert_eq!(nodes.len(), 1, "the node came back as a second node");
    assert!(nodes[0].connected);
    assert_eq!(nodes[0].labels.get("site").map(String::as_str), Some("a"));
    assert_eq!(nodes[0].labels.get("rack").map(String::as_str), Some("b"));
    assert!(cp.log().contains("node rejoined with its identity"));
}

#[test]
fn a_new_server_certificate_reaches_connected_nodes_without_a_step_on_them() {
    let mut cp = ControlPlane::start(&[]);
    let mut agent = Agent::new(&cp.scratch().join("n"));
    assert!(agent
        .join(&cp.server(), &cp.token(&[]), &[])
        .status
        .success());
    agent.run();
    agent.wait_log("session established", 1, Duration::from_secs(10));
    let old = fs::read_to_string(cp.data.join("server.pem")).expect("cert");
    // The control plane restarts with a new server certificate.
    cp.stop();
    fs::remove_file(cp.data.join("server.pem")).expect("rm");
    fs::remove_file(cp.data.join("server-key.pem")).expect("rm");
    cp.restart();
    assert_ne!(
        fs::read_to_string(cp.data.join("server.pem")).expect("cert"),
        old
    );
    // the agent notices the old session is gone (unanswered ping) and redials
    agent.wait_log("session established", 2, Duration::from_secs(45));
    assert!(cp.nodes()[0].connected);
}

#[test]
fn a_reconnect_storm_is_spread_by_the_control_plane() {
    // One session admitted per second: four agents starting at once are given slots.
    let cp = ControlPlane::start(&["--session-rate", "1"]);
    let token = cp.token(&["--uses", "4"]);
    let mut agents: Vec<Agent> = (0..4)
        .map(|i| Agent::new(&cp.scratch().join(format!("n{i}"))))
        .collect();
    for a in &agents {
        let o = a.join(&cp.server(), &token, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for a in &mut agents {
        a.run();
    }
    for a in &agents {
        a.wait_log("session established", 1, Duration::from_secs(20));
    }
    let told_to_wait = agents
        .iter()
        .filter(|a| a.log().contains("control plane busy admitting sessions"))
        .count();
    assert!(
        told_to_wait >= 2,
        "only {told_to_wait} agents were given a slot"
    );
    assert!(cp.nodes().iter().all(|n| n.state == NodeState::Ready));
}

/// A node pointed at another cluster's control plane (an address reused, a control plane
/// initialized anew) keeps trying, and its log says what is wrong and how to join that one.
#[test]
fn a_node_pointed_at_another_cluster_says_so_and_how_to_join_it() {
    let cp = ControlPlane::start(&[]);
    let other = ControlPlane::start(&[]);
    let mut agent = Agent::new(&cp.scratch().join("n1"));
    let o = agent.join(&cp.server(), &cp.token(&[]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = agent.identity().join("credential.json");
    let text = fs::read_to_string(&file).expect("credential");
    fs::write(&file, text.replace(&cp.server(), &other.server())).expect("write");
    agent.run();
    let ca = agent.identity().join("ca.pem");
    agent.wait_log(
        &format!(
            "the control plane at {} is not of the cluster this node joined (its certificate is not signed by the CA in {})",
            other.server(),
            ca.display()
        ),
        1,
        Duration::from_secs(20),
    );
    assert!(
        agent.log().contains(&format!(
            "run `nodeagent join {} --token …`",
            other.server()
        )),
        "{}",
        agent.log()
    );
    assert!(agent.running());
}
