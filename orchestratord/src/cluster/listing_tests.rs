//! `GET /v1/tasks` and `GET /v1/nodes` in the core: what each filter keeps, and pages that
//! together are the whole listing, in order, whatever is created or removed between them.

use flotilla_api::ops::{NodeInfo, NodeState, TaskInfo, TaskRun};
use flotilla_api::page::{NodeCursor, NodeFilter, TaskCursor, TaskFilter};
use flotilla_api::tasks::{DesiredStatus, TaskState};

use super::command::{Operator, Reply};
use super::harness::Harness;
use flotilla_api::page::{NodeQuery, Page, TaskQuery};

fn def(family: &str) -> String {
    format!(
        r#"{{"family":"{family}","containerDefinitions":[{{"name":"main","image":"{family}","memory":16}}]}}"#
    )
}

fn run_on(h: &mut Harness, family: &str, node: Option<&str>, count: u32) -> Vec<TaskInfo> {
    let reply = h
        .op(Operator::RunTask(TaskRun {
            task_definition: family.into(),
            node: node.map(str::to_string),
            count,
            env: Vec::new(),
            placement_constraints: Vec::new(),
            placement_strategy: Vec::new(),
        }))
        .expect("run");
    let Reply::TasksCreated(t) = reply else {
        panic!("{reply:?}")
    };
    t
}

fn tasks(h: &mut Harness, q: TaskQuery) -> Page<TaskInfo, TaskCursor> {
    match h.op(Operator::ListTasks(q)).expect("tasks") {
        Reply::Tasks(p) => p,
        other => panic!("{other:?}"),
    }
}

fn nodes(h: &mut Harness, q: NodeQuery) -> Page<NodeInfo, NodeCursor> {
    match h.op(Operator::ListNodes(q)).expect("nodes") {
        Reply::Nodes(p) => p,
        other => panic!("{other:?}"),
    }
}

fn ids(tasks: &[TaskInfo]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// Every page of `filter` at `max` a page, followed by their tokens; `between` runs after each.
fn walk(
    h: &mut Harness,
    filter: &TaskFilter,
    max: usize,
    mut between: impl FnMut(&mut Harness, usize),
) -> Vec<Vec<TaskInfo>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let p = tasks(
            h,
            TaskQuery {
                filter: filter.clone(),
                after,
                max: Some(max),
            },
        );
        assert!(p.items.len() <= max);
        let more = p.next.is_some();
        after = p.next;
        pages.push(p.items);
        between(h, pages.len());
        if !more {
            return pages;
        }
        assert!(pages.len() < 100_000, "pages never end");
    }
}

#[test]
fn each_task_filter_keeps_what_it_names_and_nothing_else() {
    let mut h = Harness::new();
    let a = h.join(&[], 1000, 4);
    let b = h.join(&[], 1000, 4);
    for f in ["web", "batch"] {
        h.register(&def(f));
    }
    h.create_service(
        r#"{"serviceName":"web","taskDefinition":"web","desiredCount":2,
            "deploymentConfiguration":{"minimumHealthyPercent":50,"maximumPercent":200}}"#,
    );
    h.step();
    let batch_a = run_on(&mut h, "batch", Some(&a), 2);
    let batch_b = run_on(&mut h, "batch", Some(&b), 1);
    h.op(Operator::StopTask(batch_a[1].id.clone()))
        .expect("stop");
    h.step();
    let all = tasks(&mut h, TaskQuery::default());
    assert_eq!(all.items.len(), 5, "{:?}", all.items);
    assert_eq!(all.next, None);
    let only = |h: &mut Harness, filter: TaskFilter| {
        let mut got = ids(&tasks(
            h,
            TaskQuery {
                filter,
                ..TaskQuery::default()
            },
        )
        .items);
        got.sort();
        got
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let web: Vec<String> = all
        .items
        .iter()
        .filter(|t| t.service() == Some("web"))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(web.len(), 2);
    let on_a: Vec<String> = all
        .items
        .iter()
        .filter(|t| t.node.as_deref() == Some(a.as_str()))
        .map(|t| t.id.clone())
        .collect();
    // The stopped one too: a node's filter is not a state's.
    assert!(on_a.contains(&batch_a[1].id));
    let node_a = TaskFilter {
        node: Some(a.clone()),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, node_a), sorted(on_a));
    let service = TaskFilter {
        service: Some("web".into()),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, service), sorted(web.clone()));
    let started_by = TaskFilter {
        started_by: Some("service:web".into()),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, started_by), sorted(web));
    let family = TaskFilter {
        family: Some("batch".into()),
        ..TaskFilter::default()
    };
    assert_eq!(
        only(&mut h, family),
        sorted(ids(&[batch_a.clone(), batch_b.clone()].concat()))
    );
    let stopped = TaskFilter {
        state: Some(TaskState::Stopped),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, stopped), vec![batch_a[1].id.clone()]);
    let to_stop = TaskFilter {
        desired_status: Some(DesiredStatus::Stopped),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, to_stop), vec![batch_a[1].id.clone()]);
    let running_batch_on_b = TaskFilter {
        node: Some(b.clone()),
        family: Some("batch".into()),
        state: Some(TaskState::Running),
        ..TaskFilter::default()
    };
    assert_eq!(only(&mut h, running_batch_on_b), ids(&batch_b));
    let nothing = TaskFilter {
        service: Some("nope".into()),
        ..TaskFilter::default()
    };
    assert!(only(&mut h, nothing).is_empty());
}

#[test]
fn pages_are_the_whole_listing_in_order_whatever_happens_between_them() {
    let mut h = Harness::new();
    h.join(&[], 100_000, 64);
    h.register(&def("job"));
    // Several tasks a second: the order within a second is the id's.
    for _ in 0..7 {
        run_on(&mut h, "job", None, 3);
        h.advance(1);
    }
    let whole = tasks(&mut h, TaskQuery::default()).items;
    assert_eq!(whole.len(), 21);
    let keys: Vec<(u64, &str)> = whole
        .iter()
        .map(|t| (t.created_at, t.id.as_str()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    for max in [1, 2, 5, 20, 21, 22, 1000] {
        let pages = walk(&mut h, &TaskFilter::default(), max, |_, _| {});
        assert_eq!(pages.concat(), whole, "pages of {max}");
        // No empty last page when the count divides evenly.
        assert!(pages.iter().all(|p| !p.is_empty()), "pages of {max}");
        assert_eq!(pages.len(), whole.len().div_ceil(max), "pages of {max}");
    }
    // A page's token is the place of its last task: removing that task, or creating tasks
    // (which sort after every existing one), moves nothing across the pages already read.
    let mut created = Vec::new();
    let pages = walk(&mut h, &TaskFilter::default(), 4, |h, n| {
        if n == 2 {
            h.advance(1);
            created = run_on(h, "job", None, 2);
        }
    });
    let listed = pages.concat();
    assert_eq!(ids(&listed[..21]), ids(&whole));
    assert_eq!(ids(&listed[21..]), ids(&created));
    // A filter and a page together: every page holds only matches.
    let first = whole[0].id.clone();
    h.op(Operator::StopTask(first.clone())).expect("stop");
    let live = TaskFilter {
        desired_status: Some(DesiredStatus::Running),
        ..TaskFilter::default()
    };
    let pages = walk(&mut h, &live, 3, |_, _| {});
    let listed = pages.concat();
    assert_eq!(listed.len(), 22);
    assert!(!ids(&listed).contains(&first));
    // A token whose task is gone still names a place.
    let after = Some(TaskCursor {
        created_at: whole[9].created_at,
        id: format!("{}~gone", whole[9].id),
    });
    let p = tasks(
        &mut h,
        TaskQuery {
            after,
            max: Some(2),
            ..TaskQuery::default()
        },
    );
    assert_eq!(ids(&p.items), ids(&whole[10..12]));
}

#[test]
fn node_pages_go_by_id_and_the_status_and_labels_filter_them() {
    let mut h = Harness::new();
    let mut all: Vec<String> = (0..7)
        .map(|i| {
            let site = if i % 2 == 0 { "a" } else { "b" };
            h.join(&[("site", site)], 1000, 4)
        })
        .collect();
    all.sort();
    let gone = all[3].clone();
    h.disconnect(&gone);
    let whole = nodes(&mut h, NodeQuery::default());
    assert_eq!(
        whole.items.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        all
    );
    assert_eq!(whole.next, None);
    for max in [1, 3, 7, 8] {
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let p = nodes(
                &mut h,
                NodeQuery {
                    after,
                    max: Some(max),
                    ..NodeQuery::default()
                },
            );
            assert!(!p.items.is_empty() && p.items.len() <= max);
            listed.extend(p.items.into_iter().map(|n| n.id));
            after = p.next;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(listed, all, "pages of {max}");
    }
    let only = |h: &mut Harness, filter: NodeFilter| -> Vec<String> {
        nodes(
            h,
            NodeQuery {
                filter,
                ..NodeQuery::default()
            },
        )
        .items
        .into_iter()
        .map(|n| n.id)
        .collect()
    };
    let disconnected = NodeFilter {
        status: Some(NodeState::Disconnected),
        ..NodeFilter::default()
    };
    assert_eq!(only(&mut h, disconnected), vec![gone.clone()]);
    let ready = NodeFilter {
        status: Some(NodeState::Ready),
        ..NodeFilter::default()
    };
    assert_eq!(only(&mut h, ready).len(), 6);
    let site_a = NodeFilter {
        status: None,
        labels: vec![("site".into(), Some("a".into()))],
    };
    let on_a = only(&mut h, site_a);
    assert_eq!(on_a.len(), 4, "{on_a:?}");
    let any_site = NodeFilter {
        status: None,
        labels: vec![("site".into(), None)],
    };
    assert_eq!(only(&mut h, any_site), all);
}

/// What a page costs against the whole list on 1,000 nodes with 11,000 tasks (`LIST_NODES`
/// for another size). Ignored by default; BENCHMARKS.md has its numbers:
/// `CARGO_PROFILE_RELEASE_LTO=false cargo test --release -p orchestratord --lib -- --ignored
/// --nocapture listing_cost`.
#[test]
#[ignore]
fn listing_cost_with_1000_nodes() {
    use std::time::{Duration, Instant};
    let count: u32 = std::env::var("LIST_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let mut h = Harness::with_config(super::Config {
        session_rate: count + 1,
        ..Default::default()
    });
    let joined: Vec<String> = (0..count)
        .map(|i| h.join(&[("site", &format!("s{}", i % 10))], 256 << 10, 64))
        .collect();
    h.register(&def("web"));
    h.register(&def("agent"));
    for s in 0..100 {
        h.create_service(&format!(
            r#"{{"serviceName":"web{s}","taskDefinition":"web","desiredCount":{},
                "deploymentConfiguration":{{"minimumHealthyPercent":50,"maximumPercent":200}}}}"#,
            count / 10
        ));
    }
    h.create_service(
        r#"{"serviceName":"everywhere","taskDefinition":"agent","schedulingStrategy":"DAEMON"}"#,
    );
    for _ in 0..3 {
        h.step();
    }
    let p50 = |h: &mut Harness, op: &dyn Fn() -> Operator| {
        let mut v: Vec<Duration> = (0..11)
            .map(|_| {
                let t = Instant::now();
                h.op(op()).expect("listing");
                t.elapsed()
            })
            .collect();
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let total = tasks(&mut h, TaskQuery::default()).items.len();
    let whole = p50(&mut h, &|| Operator::ListTasks(TaskQuery::default()));
    let page = p50(&mut h, &|| {
        Operator::ListTasks(TaskQuery {
            max: Some(500),
            ..TaskQuery::default()
        })
    });
    let service = p50(&mut h, &|| {
        Operator::ListTasks(TaskQuery {
            filter: TaskFilter {
                service: Some("web7".into()),
                ..TaskFilter::default()
            },
            max: Some(500),
            ..TaskQuery::default()
        })
    });
    let node = p50(&mut h, &|| {
        Operator::ListTasks(TaskQuery {
            filter: TaskFilter {
                node: Some(joined[count as usize / 2].clone()),
                ..TaskFilter::default()
            },
            max: Some(500),
            ..TaskQuery::default()
        })
    });
    let t = Instant::now();
    let pages = walk(&mut h, &TaskFilter::default(), 500, |_, _| {}).len();
    let walked = t.elapsed().as_secs_f64() * 1e3;
    let nodes_whole = p50(&mut h, &|| Operator::ListNodes(NodeQuery::default()));
    let nodes_page = p50(&mut h, &|| {
        Operator::ListNodes(NodeQuery {
            max: Some(500),
            ..NodeQuery::default()
        })
    });
    println!(
        "{count} nodes, {total} tasks (core only, p50): all tasks {whole:.2} ms; a page of 500 \
         {page:.2} ms; a service's page {service:.2} ms; a node's page {node:.2} ms; all \
         {pages} pages of 500 one after another {walked:.1} ms; all nodes {nodes_whole:.2} ms; \
         a page of 500 nodes {nodes_page:.2} ms"
    );
}

#[test]
fn the_order_index_reads_a_commands_own_writes_and_survives_a_restart() {
    let mut h = Harness::new();
    h.join(&[], 100_000, 64);
    h.register(&def("job"));
    for _ in 0..3 {
        run_on(&mut h, "job", None, 2);
        h.advance(1);
    }
    let whole = tasks(&mut h, TaskQuery::default()).items;
    // Within one command: a task written (between two others in the order), one removed.
    let state = &h.cluster().state;
    let mut txn = super::state::Txn::new(state);
    let mut added = txn.task(&whole[2].id).expect("a task").clone();
    added.info.id = format!("{}~new", whole[2].id);
    txn.put_task(added.clone());
    txn.remove_task(&whole[4].id);
    let mut want: Vec<String> = ids(&whole);
    want.insert(3, added.info.id.clone());
    want.retain(|id| *id != whole[4].id);
    let read: Vec<String> = txn
        .tasks_by_created(None)
        .map(|t| t.info.id.clone())
        .collect();
    assert_eq!(read, want);
    let after = (whole[2].created_at, whole[2].id.as_str());
    let read: Vec<String> = txn
        .tasks_by_created(Some(after))
        .map(|t| t.info.id.clone())
        .collect();
    assert_eq!(read, want[3..]);
    drop(txn);
    // Built anew from the store.
    h.restart(1000);
    assert_eq!(ids(&tasks(&mut h, TaskQuery::default()).items), ids(&whole));
    let on_node = TaskQuery {
        filter: TaskFilter {
            node: whole[0].node.clone(),
            ..TaskFilter::default()
        },
        ..TaskQuery::default()
    };
    assert_eq!(ids(&tasks(&mut h, on_node).items), ids(&whole));
}
