//! The registry as nodes are sent it: whole at the start of a session and to agents that take
//! no deltas, else what changed since the version each node holds, one frame for all.

use flotilla_api::discovery::Registry;
use flotilla_api::ops::TaskRun;
use flotilla_api::ServerPush;

use super::command::{Agent, Command, Effect, Operator, RegistryAnswer, RegistryPush};
use super::harness::Harness;

/// The registry pushes of the commands since the last call: (nodes, push).
fn pushes(h: &mut Harness) -> Vec<(Vec<String>, RegistryPush)> {
    std::mem::take(&mut h.effects)
        .into_iter()
        .filter_map(|e| match e {
            Effect::PushRegistry { nodes, push } => Some((nodes, push)),
            _ => None,
        })
        .collect()
}

/// What a push's frames say, in order.
fn decode(push: &RegistryPush) -> Vec<ServerPush> {
    push.frames
        .iter()
        .map(|f| super::feed::decode_frame(f).0)
        .collect()
}

/// What a node holding `held` makes of `push`.
fn applied(held: &Registry, push: &RegistryPush) -> Registry {
    decode(push)
        .into_iter()
        .fold(held.clone(), |held, p| match p {
            ServerPush::Registry(r) => r,
            ServerPush::RegistryDelta(d) => held.apply(&d).expect("in sequence"),
            other => panic!("{other:?}"),
        })
}

/// `node`'s agent answers on `session` the push of `pushed` that applied to `from`.
fn answer(
    h: &mut Harness,
    node: &str,
    session: u64,
    pushed: u64,
    from: Option<u64>,
    answer: RegistryAnswer,
) {
    h.exec(Command::Agent(Agent::RegistryAnswered {
        node: node.to_string(),
        session,
        pushed,
        from,
        answer,
    }))
    .expect("answered");
}

fn current(h: &mut Harness) -> Registry {
    (**h.cluster().registry.registry()).clone()
}

/// A service `name` with discovery and one task: the registry changes at the next round.
fn discoverable(h: &mut Harness, name: &str) {
    h.register(&format!(
        r#"{{"family":"{name}","networkMode":"host","containerDefinitions":[
            {{"name":"main","image":"x","memory":8,"portMappings":[{{"containerPort":80}}]}}]}}"#
    ));
    h.create_service(&format!(
        r#"{{"serviceName":"{name}","taskDefinition":"{name}","desiredCount":1,
            "discovery":{{"namespace":"shop"}}}}"#
    ));
}

#[test]
fn a_change_reaches_each_node_as_a_delta_and_older_agents_whole() {
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 4);
    let c = h.join(&[], 4096, 4);
    let old = h.join(&[], 4096, 4);
    // An agent of the previous release speaks protocol 1 only.
    h.disconnect(&old);
    h.hello_speaking(&old, &[1]);
    discoverable(&mut h, "web");
    h.step();
    h.step();
    h.step();
    let first = current(&mut h);
    assert!(first.version != 0 && first.services.len() == 1);
    // Nothing was held: every node got the whole registry first, one frame for all; then
    // deltas, which applied in order make the registry.
    let sent = pushes(&mut h);
    // (The agents of protocol 5 share one frame, the older one another: protocol 5's may be
    // packed.)
    let wholes: Vec<_> = sent.iter().filter(|(_, p)| p.from.is_none()).collect();
    assert_eq!(
        wholes.iter().map(|(n, _)| n.len()).sum::<usize>(),
        3,
        "{sent:?}"
    );
    assert!(
        wholes.iter().any(|(n, _)| n == &vec![old.clone()]),
        "{sent:?}"
    );
    let (_, whole) = wholes
        .iter()
        .find(|(n, _)| n.contains(&a))
        .expect("a's whole");
    let mut held = applied(&Registry::default(), whole);
    for (_, p) in sent.iter().filter(|(n, _)| n.contains(&a)).skip(1) {
        assert!(p.from.is_some(), "{p:?}");
        held = applied(&held, p);
    }
    assert_eq!(held, first);

    discoverable(&mut h, "api");
    h.step();
    h.step();
    h.step();
    let next = current(&mut h);
    assert!(next.version > first.version);
    let sent = pushes(&mut h);
    let (to_new, delta): (Vec<String>, RegistryPush) = sent
        .iter()
        .find(|(_, p)| p.from.is_some())
        .cloned()
        .expect("a delta");
    let mut expected = vec![a.clone(), c.clone()];
    expected.sort();
    let mut got = to_new.clone();
    got.sort();
    assert_eq!(got, expected, "the nodes that take deltas share one frame");
    // Each change is its own delta; applied in order they make the registry.
    let mut held = first.clone();
    for (_, p) in sent.iter().filter(|(n, _)| n.contains(&a)) {
        assert!(p.from.is_some(), "{p:?}");
        held = applied(&held, p);
    }
    assert_eq!(held, next);
    assert!(matches!(&decode(&delta)[..], [ServerPush::RegistryDelta(d)] if d.removed.is_empty()));
    // The node of protocol 1 is sent every change whole.
    assert!(sent
        .iter()
        .filter(|(n, _)| n.contains(&old))
        .all(|(_, p)| p.from.is_none()));
    assert!(sent.iter().any(|(n, _)| n.contains(&old)));

    // A reconnecting node holds what it holds: it is sent the whole registry.
    h.disconnect(&a);
    h.hello(&a);
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0.clone(), sent[0].1.from), (vec![a.clone()], None));
    assert_eq!(applied(&Registry::default(), &sent[0].1), next);
}

#[test]
fn a_restarted_control_plane_keeps_its_registrys_version_and_sends_a_node_that_holds_it_nothing() {
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 4);
    let b = h.join(&[], 4096, 4);
    let c = h.join(&[], 4096, 4);
    let mut versions = Vec::new();
    for name in ["web", "api"] {
        discoverable(&mut h, name);
        for _ in 0..3 {
            h.step();
        }
        versions.push(current(&mut h));
    }
    let (older, now) = (versions[0].clone(), versions[1].clone());
    // Its hello says which version it holds: the current one, nothing; a kept one, what
    // changed since; one never numbered, the whole.
    pushes(&mut h);
    h.disconnect(&a);
    h.hello_holding(&a, flotilla_api::PROTOCOLS, now.held());
    assert!(pushes(&mut h).is_empty());
    h.disconnect(&b);
    h.hello_holding(&b, flotilla_api::PROTOCOLS, older.held());
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1.from, Some(older.version));
    assert_eq!(applied(&older, &sent[0].1), now);
    h.disconnect(&c);
    h.hello_holding(
        &c,
        flotilla_api::PROTOCOLS,
        Registry {
            version: 17,
            ..now.clone()
        }
        .held(),
    );
    let sent = pushes(&mut h);
    assert_eq!((sent.len(), sent[0].1.from), (1, None), "{sent:?}");
    // The current version with other services (a store put back from a backup numbered it
    // again), or a kept one: the whole, never nothing or a delta to what it does not hold.
    for v in [&now, &older] {
        let other = Registry {
            version: v.version,
            services: Vec::new(),
        };
        h.disconnect(&c);
        h.hello_holding(&c, flotilla_api::PROTOCOLS, other.held());
        let sent = pushes(&mut h);
        assert_eq!((sent.len(), sent[0].1.from), (1, None), "{sent:?}");
    }

    // Restarted (`kill -9`) with the same services: the same version, and a node that says
    // it holds it is sent nothing — the reconnect storm sends no registries.
    h.restart(1000);
    h.advance(5);
    h.step();
    assert_eq!(current(&mut h), now);
    pushes(&mut h);
    h.hello_holding(&a, flotilla_api::PROTOCOLS, now.held());
    assert!(pushes(&mut h).is_empty());
    // The version before is no longer kept: the whole.
    h.hello_holding(&b, flotilla_api::PROTOCOLS, older.held());
    let sent = pushes(&mut h);
    assert_eq!((sent.len(), sent[0].1.from), (1, None), "{sent:?}");

    // Restarted with the clock set back a day and the services changed: numbered above every
    // version sent before, or the nodes would keep their registry over the new one.
    h.restart(2000);
    h.now.unix_ms -= 86_400_000;
    discoverable(&mut h, "db");
    for _ in 0..3 {
        h.step();
    }
    let after = current(&mut h);
    assert_ne!(after.services, now.services);
    assert!(
        after.version > now.version,
        "{} after {}",
        after.version,
        now.version
    );
}

#[test]
fn a_node_out_of_sequence_is_sent_what_changed_since_what_it_holds_or_the_whole() {
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 4);
    let mut versions = Vec::new();
    for name in ["web", "api", "db"] {
        discoverable(&mut h, name);
        for _ in 0..3 {
            h.step();
        }
        versions.push(current(&mut h));
    }
    let now = current(&mut h);
    pushes(&mut h);
    let session = h
        .cluster()
        .live
        .peek(&a)
        .and_then(|l| l.session)
        .expect("in session");
    let said = |held: u64, from: Option<u64>| {
        Command::Agent(Agent::RegistryAnswered {
            node: a.clone(),
            session,
            pushed: now.version,
            from,
            answer: RegistryAnswer::Holds(held),
        })
    };
    // A delta found it at the first version (the pushes after it were lost): it is sent
    // what changed since then, in one delta.
    h.exec(said(versions[0].version, Some(versions[1].version)))
        .expect("held");
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1.from, Some(versions[0].version));
    assert_eq!(applied(&versions[0], &sent[0].1), now);
    // It holds a version this control plane never kept (before a restart, or older than
    // the kept changes): the whole registry.
    h.exec(said(17, Some(versions[1].version))).expect("held");
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1.from, None);
    assert_eq!(applied(&Registry::default(), &sent[0].1), now);
    // It kept a version of its own over the whole registry: not sent again (no loop).
    h.exec(said(17, None)).expect("held");
    assert!(pushes(&mut h).is_empty());
    // It holds the current version: nothing to send.
    h.exec(said(now.version, Some(versions[0].version)))
        .expect("held");
    assert!(pushes(&mut h).is_empty());
}

#[test]
fn a_node_has_one_push_under_way_and_then_every_change_since_in_one_push() {
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 4);
    discoverable(&mut h, "web");
    for _ in 0..3 {
        h.step();
    }
    let start = current(&mut h);
    assert_eq!(start.services.len(), 1);
    h.effects.clear();
    // From here the node takes its time to answer.
    h.withhold_registry_answers = true;
    discoverable(&mut h, "api");
    for _ in 0..3 {
        h.step();
    }
    // A task placed on it meanwhile: its desired state names the registry to hold first.
    h.register(
        r#"{"family":"batch","containerDefinitions":[{"name":"main","image":"x","memory":8}]}"#,
    );
    h.op(Operator::RunTask(TaskRun {
        task_definition: "batch".into(),
        node: None,
        count: 1,
        env: Vec::new(),
        placement_constraints: Vec::new(),
        placement_strategy: Vec::new(),
    }))
    .expect("run");
    let desired: Vec<Option<u64>> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::PushDesired { node, registry, .. } if node == &a => Some(*registry),
            _ => None,
        })
        .collect();
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1, "one push under way at a time: {sent:?}");
    let first = sent[0].1.clone();
    assert_eq!(first.from, Some(start.version));
    let after_first = applied(&start, &first);
    assert!(
        !desired.is_empty()
            && desired
                .iter()
                .all(|r| r.is_some_and(|v| v >= first.version)),
        "the desired state waits for the registry: {desired:?}"
    );
    for name in ["db", "cache"] {
        discoverable(&mut h, name);
        for _ in 0..3 {
            h.step();
        }
    }
    assert!(
        pushes(&mut h).is_empty(),
        "nothing more while it is under way"
    );
    let now = current(&mut h);
    assert_eq!(now.services.len(), 4);
    // The answer comes: every change since, in one push from what it holds (of protocol 4,
    // each change's own delta in a row).
    let session = h
        .cluster()
        .live
        .peek(&a)
        .and_then(|l| l.session)
        .expect("in session");
    answer(
        &mut h,
        &a,
        session,
        first.version,
        first.from,
        RegistryAnswer::Holds(first.version),
    );
    let sent = pushes(&mut h);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1.from, Some(first.version));
    assert!(
        sent[0].1.frames.len() >= 2,
        "the changes it missed, each its own frame: {:?}",
        sent[0].1
    );
    assert_eq!(applied(&after_first, &sent[0].1), now);
    // An answer of an older session changes nothing of this one's.
    answer(
        &mut h,
        &a,
        session + 100,
        now.version,
        Some(first.version),
        RegistryAnswer::Unanswered,
    );
    assert!(h
        .cluster()
        .live
        .peek(&a)
        .is_some_and(|l| l.registry_in_flight));
    // No answer at all (its time ran out, the node may or may not have it): sent again from
    // what it held before.
    answer(
        &mut h,
        &a,
        session,
        now.version,
        Some(first.version),
        RegistryAnswer::Unanswered,
    );
    let again = pushes(&mut h);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].1.from, Some(first.version));
    assert_eq!(applied(&after_first, &again[0].1), now);
    // It had taken the first one after all: it says so, and has nothing more to take.
    answer(
        &mut h,
        &a,
        session,
        now.version,
        Some(first.version),
        RegistryAnswer::Holds(now.version),
    );
    assert!(pushes(&mut h).is_empty(), "it holds the current registry");
    assert!(h
        .cluster()
        .live
        .peek(&a)
        .is_some_and(|l| !l.registry_in_flight));

    // A refused delta (a frame it could not read, a row past its budget) is not sent again:
    // the whole registry is.
    answer(
        &mut h,
        &a,
        session,
        now.version,
        Some(first.version),
        RegistryAnswer::Refused,
    );
    let whole = pushes(&mut h);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!((whole[0].1.from, whole[0].1.version), (None, now.version));
    // A refused whole is not sent again at once (it would be refused again), only with the
    // next change.
    answer(
        &mut h,
        &a,
        session,
        now.version,
        None,
        RegistryAnswer::Refused,
    );
    assert!(pushes(&mut h).is_empty());
    discoverable(&mut h, "later");
    for _ in 0..3 {
        h.step();
    }
    let next = pushes(&mut h);
    let to_a: Vec<_> = next
        .iter()
        .filter(|(nodes, _)| nodes.contains(&a))
        .collect();
    assert_eq!(to_a.len(), 1, "{next:?}");
    assert_eq!(to_a[0].1.from, None, "the whole again");
    // Or, with no change, once a while has passed (its disk freed, say).
    let pushed = to_a[0].1.version;
    answer(&mut h, &a, session, pushed, None, RegistryAnswer::Refused);
    h.step();
    assert!(pushes(&mut h).is_empty(), "not at once");
    h.advance(super::feed::RETRY_REFUSED_SECS);
    h.step();
    let again = pushes(&mut h);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].0.clone(), again[0].1.from),
        (vec![a.clone()], None)
    );
}

#[test]
fn a_node_holding_a_registry_this_control_plane_does_not_know_is_sent_one_it_takes() {
    use super::command::Tick;
    let mut h = Harness::new();
    let a = h.join(&[], 4096, 4);
    let b = h.join(&[], 4096, 4);
    discoverable(&mut h, "web");
    for _ in 0..3 {
        h.step();
    }
    let now = current(&mut h);
    pushes(&mut h);

    // Its hello says a version above this control plane's that it does not know (the store
    // put back from a backup): the next registry is numbered above it — a node keeps its own
    // registry over an older whole one — even with nothing changed.
    let ahead = now.version + 5_000;
    h.disconnect(&b);
    h.hello_holding(
        &b,
        flotilla_api::PROTOCOLS,
        Registry {
            version: ahead,
            services: Vec::new(),
        }
        .held(),
    );
    h.step();
    let next = current(&mut h);
    assert!(next.version > ahead, "{} after {ahead}", next.version);
    assert_eq!(next.services, now.services);
    let sent = pushes(&mut h);
    assert!(
        sent.iter()
            .any(|(nodes, p)| nodes.contains(&b) && p.version == next.version),
        "{sent:?}"
    );

    // A node that kept its own registry over the whole one pushed (it holds a newer one):
    // the same, and it is sent the whole.
    let session = h
        .cluster()
        .live
        .peek(&a)
        .and_then(|l| l.session)
        .expect("in session");
    let kept = next.version + 9_000;
    answer(
        &mut h,
        &a,
        session,
        next.version,
        None,
        RegistryAnswer::Holds(kept),
    );
    h.step();
    let after = current(&mut h);
    assert!(after.version > kept, "{} after {kept}", after.version);
    let sent = pushes(&mut h);
    assert!(
        sent.iter()
            .any(|(nodes, p)| nodes.contains(&a) && p.from.is_none() && p.version == after.version),
        "{sent:?}"
    );

    // A version far past the clock is not believed: a node cannot push the registry's
    // versions to their end.
    h.disconnect(&b);
    let far = h.now.unix_ms + 30 * 24 * 3600 * 1000;
    h.hello_holding(
        &b,
        flotilla_api::PROTOCOLS,
        Registry {
            version: far,
            services: Vec::new(),
        }
        .held(),
    );
    h.step();
    assert_eq!(current(&mut h).version, after.version);

    // After a restart, hellos before the first registry is numbered: what they say is
    // checked then — the node holding it is sent nothing.
    pushes(&mut h);
    h.restart(1000);
    h.hello_holding(&a, flotilla_api::PROTOCOLS, after.held());
    h.hello_holding(&b, flotilla_api::PROTOCOLS, now.held());
    h.step();
    assert_eq!(current(&mut h), after);
    let sent = pushes(&mut h);
    assert!(
        !sent.iter().any(|(nodes, _)| nodes.contains(&a)),
        "{sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(nodes, p)| nodes.contains(&b) && p.from.is_none()),
        "{sent:?}"
    );

    // A command whose commit fails makes no push: its nodes are as before it, and the next
    // round sends them the change.
    discoverable(&mut h, "api");
    h.refusing_commits
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(h.exec(Command::Tick(Tick::ServiceRound)).is_err());
    h.refusing_commits
        .store(false, std::sync::atomic::Ordering::SeqCst);
    pushes(&mut h);
    h.exec(Command::Tick(Tick::ServiceRound)).expect("round");
    let sent = pushes(&mut h);
    for node in [&a, &b] {
        assert!(
            sent.iter().any(|(nodes, _)| nodes.contains(node)),
            "{node}: {sent:?}"
        );
    }
}
