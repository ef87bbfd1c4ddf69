//! Benchmark: agent sessions per second and enrollment time on loopback, against the bare
//! mutually authenticated QUIC handshake measured in the same run.
//!
//! - sessions/s: connect with a node certificate, `Hello` round trip (identity from the
//!   certificate, store lookup), close — from 4 concurrent clients for a few seconds; anchor:
//!   the same connections without the `Hello` (handshake only).
//! - enrollment: `nodeagent join` with a fresh token, then `nodeagent run` until it reports the
//!   session established; anchor: one bare handshake.
//!
//! Run: `cargo build --release --workspace && target/release/bench-quic`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_api::{read_frame, write_frame, Hello, HelloReply, PROTOCOLS};
use flotilla_certs::credential::Credential;
use flotilla_certs::tls::ALPN_AGENT;
use flotilla_certs::SERVER_NAME;
use flotilla_tests::cluster::{Agent, ControlPlane};

const WINDOW: Duration = Duration::from_secs(3);
const CLIENTS: usize = 4;
const ENROLLMENTS: usize = 10;

async fn session(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    hello: bool,
) -> Result<()> {
    let conn = ep.connect_with(cfg, addr, SERVER_NAME)?.await?;
    if hello {
        let (mut s, mut r) = conn.open_bi().await?;
        write_frame(
            &mut s,
            &Hello {
                protocols: PROTOCOLS.to_vec(),
                agent_version: "bench".into(),
                address: None,
                registry: None,
            },
        )
        .await?;
        let _ = s.finish();
        match read_frame::<_, HelloReply>(&mut r).await? {
            HelloReply::Welcome { .. } => {}
            HelloReply::Refused { reason } => bail!("refused: {reason}"),
            HelloReply::Busy { .. } => bail!("busy: the session rate limit was reached"),
        }
    }
    conn.close(0u32.into(), b"");
    Ok(())
}

/// Completed connections per second over [`WINDOW`] from concurrent loops, one per client
/// configuration (one node each: a node has one session at a time).
async fn rate(cfgs: &[quinn::ClientConfig], addr: SocketAddr, hello: bool) -> Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for cfg in cfgs {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let mut n = 0u64;
            while start.elapsed() < WINDOW {
                session(&ep, cfg.clone(), addr, hello).await?;
                n += 1;
            }
            ep.wait_idle().await;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    flotilla_tests::bench_args([]);
    // Raw capacity: admission is not what is measured here.
    let cp = ControlPlane::start(&["--session-rate", "1000000"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut cfgs = Vec::new();
    for i in 0..CLIENTS {
        let node = Agent::new(&cp.scratch().join(format!("bench-node-{i}")));
        let o = node.join(&cp.server(), &cp.token(&[]), &[]);
        if !o.status.success() {
            bail!("join: {}", String::from_utf8_lossy(&o.stderr));
        }
        let cred = Credential::load(&node.identity())?;
        let tls = flotilla_certs::tls::client(&cred.ca_pem, &cred.identity, ALPN_AGENT)?;
        cfgs.push(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )));
    }
    let cfg = cfgs[0].clone();

    let (bare, full, one) = rt.block_on(async {
        // warm up
        let _ = rate(&cfgs, cp.addr, true).await?;
        let bare = rate(&cfgs, cp.addr, false).await?;
        let full = rate(&cfgs, cp.addr, true).await?;
        let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let mut one = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            session(&ep, cfg.clone(), cp.addr, false).await?;
            one.push(t.elapsed());
        }
        anyhow::Ok((bare, full, median(one)))
    })?;

    let mut enroll = Vec::new();
    for i in 0..ENROLLMENTS {
        let token = cp.token(&[]);
        let agent = Agent::new(&cp.scratch().join(format!("n{i}")));
        let t = Instant::now();
        let o = agent.join(&cp.server(), &token, &[]);
        if !o.status.success() {
            bail!("join: {}", String::from_utf8_lossy(&o.stderr));
        }
        let mut run = Command::new(flotilla_tests::bin("nodeagent"))
            .arg("--data-dir")
            .arg(&agent.data)
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut out = std::io::BufReader::new(run.stdout.take().context("stdout")?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line)?;
        let d = t.elapsed();
        let _ = run.kill();
        let _ = run.wait();
        if !line.contains("session established") {
            bail!("agent said: {line}");
        }
        enroll.push(d);
    }
    let enroll = median(enroll);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "agent channel on loopback, {CLIENTS} concurrent clients, {} s windows",
        WINDOW.as_secs()
    );
    println!("  bare mTLS QUIC handshakes   : {bare:8.0} /s (anchor)");
    println!(
        "  sessions (handshake + hello): {full:8.0} /s  = {:.2}x the anchor",
        full / bare
    );
    println!(
        "  one bare handshake (median) : {:8.2} ms (anchor)",
        ms(one)
    );
    println!(
        "  enrollment, token -> session: {:8.1} ms  = {:.0}x one handshake (two process starts, key generation, CSR signing, store commits)",
        ms(enroll),
        enroll.as_secs_f64() / one.as_secs_f64()
    );
    Ok(())
}
