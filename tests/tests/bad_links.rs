//! Bad links, in short: three hosts whose links drop 30 % of the packets each way (nftables
//! `numgen random` in each host's namespace), then three hosts a second's round trip away from
//! the control plane (a relay that holds each datagram 500 ms each way), while a service is
//! scaled up and down and containers are killed. Every node converges, no task ever runs twice
//! (a task's container on two nodes, or a container the control plane does not hold as
//! running), none is lost; the time each step takes to converge is printed against the same
//! steps on whole links, run first.

use std::time::{Duration, Instant};

use flotilla_tests::churn::{churn, converge, SERVE};
use flotilla_tests::cluster::Fleet;
use flotilla_tests::relay::DelayRelay;

#[test]
fn a_fleet_on_links_losing_30_percent_converges_without_running_a_task_twice() {
    let fleet = Fleet::start(&[&[], &[], &[]]);
    fleet.register(SERVE);
    fleet
        .cp
        .create_service(r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 2}"#);
    converge(&fleet, 2, "created", Instant::now());
    let whole = churn(&fleet, "whole links");
    for h in &fleet.hosts {
        h.lose(30);
    }
    let lossy = churn(&fleet, "30 % loss");
    for h in &fleet.hosts {
        h.lose(0);
    }
    let ms = |d: [Duration; 3]| d.map(|d| d.as_millis());
    eprintln!(
        "converged (scale to 6, two kills, scale to 2), ms: whole links {:?}, 30 % loss {:?}",
        ms(whole),
        ms(lossy)
    );
    for (i, a) in fleet.agents.iter().enumerate() {
        let log = a.log();
        assert!(!log.contains("panicked"), "agent {i}: {log}");
    }
    assert!(!fleet.cp.log().contains("panicked"), "{}", fleet.cp.log());
}

#[test]
fn a_fleet_a_second_away_from_its_control_plane_converges_without_running_a_task_twice() {
    let fleet = Fleet::start(&[]);
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], fleet.cp.addr.port()));
    let relay = DelayRelay::start(
        std::net::SocketAddr::new(fleet.lan.gateway.into(), 0),
        upstream,
        Duration::from_millis(500),
    )
    .expect("relay");
    // The fleet goes before the relay: its teardown needs the control plane.
    let (mut fleet, relay) = (fleet, relay);
    fleet.server = relay.addr.to_string();
    let joined = Instant::now();
    for _ in 0..3 {
        fleet.add(&[]);
    }
    let joined = joined.elapsed();
    fleet.register(SERVE);
    let asked = Instant::now();
    fleet
        .cp
        .create_service(r#"{"serviceName": "web", "taskDefinition": "serve", "desiredCount": 2}"#);
    converge(&fleet, 2, "created", asked);
    let slow = churn(&fleet, "1 s round trips");
    eprintln!(
        "three hosts joined and in session in {} ms; converged (scale to 6, two kills, scale \
         to 2), ms: 1 s round trips {:?}",
        joined.as_millis(),
        slow.map(|d| d.as_millis())
    );
    for (i, a) in fleet.agents.iter().enumerate() {
        let log = a.log();
        assert!(!log.contains("panicked"), "agent {i}: {log}");
    }
    drop((fleet, relay));
}
