//! Projects (`PUT`/`GET`/`DELETE /v1/projects/{name}`), driven through the harness.

use flotilla_api::ops::{Event, EventFilter, TaskDefStatus, TaskRun};
use flotilla_api::project::{Change, ProjectApplied, ProjectApply, ProjectService};
use serde_json::{json, Value};

use super::command::{ClusterError, Operator, Reply};
use super::harness::Harness;

/// A task definition of family `family` running `image`.
fn td(family: &str, image: &str) -> Value {
    json!({"family": family, "containerDefinitions": [
        {"name": "main", "image": image, "memory": 64}]})
}

/// A REPLICA service of `count` tasks, with the fields of `extra` added.
fn svc(name: &str, count: u32, extra: Value) -> Value {
    let mut s = json!({"serviceName": name, "desiredCount": count});
    if let (Some(m), Value::Object(e)) = (s.as_object_mut(), extra) {
        m.extend(e);
    }
    s
}

fn one(task_definition: Value, service: Value) -> ProjectService {
    ProjectService {
        task_definition,
        service,
    }
}

/// web (family web, nginx) and db (family db, postgres), two tasks each.
fn shop() -> Vec<ProjectService> {
    vec![
        one(td("web", "nginx:1"), svc("web", 2, json!({}))),
        one(td("db", "postgres:16"), svc("db", 1, json!({}))),
    ]
}

fn apply(
    h: &mut Harness,
    project: &str,
    services: Vec<ProjectService>,
    remove_orphans: bool,
) -> Result<ProjectApplied, ClusterError> {
    let reply = h.op(Operator::ApplyProject(
        project.into(),
        ProjectApply {
            services,
            remove_orphans,
        },
    ))?;
    match reply {
        Reply::ProjectApplied(a) => Ok(*a),
        other => panic!("{other:?}"),
    }
}

fn changes(a: &ProjectApplied) -> Vec<(&str, &str, Change)> {
    a.services
        .iter()
        .map(|c| (c.service.as_str(), c.task_definition.as_str(), c.change))
        .collect()
}

fn all_events(h: &mut Harness) -> Vec<Event> {
    match h
        .op(Operator::ListEvents {
            since: 0,
            limit: 100_000,
            filter: EventFilter::default(),
        })
        .expect("events")
    {
        Reply::Events(e) => e,
        other => panic!("{other:?}"),
    }
}

/// Every revision of `family`, with its status.
fn revisions(h: &mut Harness, family: &str) -> Vec<(u32, TaskDefStatus)> {
    match h.op(Operator::ListTaskDefs).expect("taskdefs") {
        Reply::TaskDefs(all) => all
            .into_iter()
            .filter(|r| r.family == family)
            .map(|r| (r.revision, r.status))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// A cluster with one roomy node.
fn cluster() -> Harness {
    let mut h = Harness::new();
    h.join(&[], 8192, 8);
    h
}

#[test]
fn two_services_are_created_in_one_apply_and_one_commit() {
    let mut h = cluster();
    let before = h.commit_count();
    let a = apply(&mut h, "shop", shop(), false).expect("apply");
    assert_eq!(h.commit_count() - before, 1, "one transaction");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:1", Change::Created),
            ("db", "db:1", Change::Created)
        ]
    );
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    for name in ["web", "db"] {
        let s = h.service(name);
        assert_eq!(s.project.as_deref(), Some("shop"), "{name}");
        assert_eq!(s.spec.task_definition, format!("{name}:1"));
        assert_eq!(s.deployments.len(), 1);
    }
    assert_eq!(h.events("taskdef.registered").len(), 2);
    assert_eq!(h.events("service.created").len(), 2);
    let applied = h.events("project.applied");
    assert_eq!(applied.len(), 1);
    assert_eq!(
        (applied[0].subject.as_str(), applied[0].message.as_str()),
        ("shop", "2 created, 0 updated, 0 removed")
    );
    // A service made by the service API belongs to no project.
    h.register(&td("other", "busybox").to_string());
    h.create_service(&svc("other", 1, json!({"taskDefinition": "other"})).to_string());
    assert_eq!(h.service("other").project, None);
    h.step();
    h.step();
    assert_eq!(h.service("web").running_count, 2);
}

#[test]
fn an_identical_apply_changes_nothing_and_writes_nothing() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), true).expect("apply");
    for _ in 0..5 {
        h.step();
    }
    let events = all_events(&mut h);
    let commits = h.commit_count();
    let a = apply(&mut h, "shop", shop(), true).expect("again");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:1", Change::Unchanged),
            ("db", "db:1", Change::Unchanged)
        ]
    );
    assert_eq!(h.commit_count(), commits, "nothing committed");
    assert_eq!(all_events(&mut h), events, "no event");
    assert_eq!(revisions(&mut h, "web"), [(1, TaskDefStatus::Active)]);
    assert_eq!(h.service("web").deployments.len(), 1);
}

#[test]
fn a_changed_definition_updates_only_its_service_with_a_new_revision_and_deployment() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), false).expect("apply");
    for _ in 0..5 {
        h.step();
    }
    let first = h.service("web").deployments[0].id.clone();
    let mut next = shop();
    next[0].task_definition = td("web", "nginx:2");
    let a = apply(&mut h, "shop", next, false).expect("apply");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:2", Change::Updated),
            ("db", "db:1", Change::Unchanged)
        ]
    );
    assert_eq!(
        revisions(&mut h, "web"),
        [(1, TaskDefStatus::Active), (2, TaskDefStatus::Active)]
    );
    assert_eq!(revisions(&mut h, "db"), [(1, TaskDefStatus::Active)]);
    let web = h.service("web");
    assert_eq!(web.spec.task_definition, "web:2");
    let primary = web
        .deployments
        .iter()
        .find(|d| d.status == flotilla_api::service::DeploymentStatus::Primary)
        .expect("primary");
    assert_ne!(primary.id, first, "a new deployment");
    assert_eq!(primary.task_definition, "web:2");
    assert_eq!(h.service("db").deployments.len(), 1, "db untouched");
    let started = h.events("service.deployment.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].subject, "web");
    assert!(h.events("service.updated").is_empty(), "only the revision");
    assert_eq!(
        h.events("project.applied")
            .last()
            .map(|e| e.message.clone())
            .as_deref(),
        Some("0 created, 1 updated, 0 removed")
    );
    // The rollout goes through as a service update's does.
    for _ in 0..10 {
        h.step();
    }
    let web = h.service("web");
    assert_eq!(web.deployments.len(), 1, "{web:#?}");
    assert_eq!(web.deployments[0].task_definition, "web:2");
}

#[test]
fn a_changed_count_scales_and_other_settings_are_updated_in_place() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), false).expect("apply");
    let mut next = shop();
    next[0].service = svc("web", 3, json!({}));
    next[1].service = svc(
        "db",
        1,
        json!({"placementConstraints": [{"type": "distinctInstance"}],
               "disconnectPolicy": {"lostAfter": 60}}),
    );
    let a = apply(&mut h, "shop", next.clone(), false).expect("apply");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:1", Change::Updated),
            ("db", "db:1", Change::Updated)
        ]
    );
    let web = h.service("web");
    assert_eq!(
        (web.spec.desired_count, web.deployments.len()),
        (3, 1),
        "a new count, no new deployment"
    );
    let scaled = h.events("service.scaled");
    assert_eq!(
        (scaled.len(), scaled[0].message.as_str()),
        (1, "desired count 3")
    );
    let db = h.service("db");
    assert_eq!(db.spec.disconnect_policy.lost_after, 60);
    assert_eq!(db.spec.placement_constraints.len(), 1);
    assert_eq!(db.deployments.len(), 1);
    let updated = h.events("service.updated");
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].subject, "db");
    assert_eq!(
        updated[0].message,
        "placementConstraints, disconnectPolicy changed (project shop)"
    );
    assert_eq!(revisions(&mut h, "web").len(), 1);
    // Said again: unchanged.
    let a = apply(&mut h, "shop", next, false).expect("again");
    assert!(a.services.iter().all(|c| c.change == Change::Unchanged));
}

#[test]
fn a_changed_scheduling_strategy_is_refused_and_commits_nothing() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), false).expect("apply");
    let events = all_events(&mut h);
    let commits = h.commit_count();
    // db comes first with a new definition (its new revision would be registered), then web
    // asks to become a DAEMON.
    let next = vec![
        one(td("db", "postgres:17"), svc("db", 1, json!({}))),
        one(
            td("web", "nginx:1"),
            json!({"serviceName": "web", "schedulingStrategy": "DAEMON"}),
        ),
    ];
    let e = apply(&mut h, "shop", next, false).expect_err("refused");
    assert!(matches!(e, ClusterError::Invalid { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "service web: schedulingStrategy cannot change (REPLICA to DAEMON); remove the \
         service first (compose down)"
    );
    assert_eq!(h.commit_count(), commits, "nothing committed");
    assert_eq!(all_events(&mut h), events);
    assert_eq!(
        revisions(&mut h, "db"),
        [(1, TaskDefStatus::Active)],
        "db:2 was not registered either"
    );
    assert_eq!(h.service("db").spec.task_definition, "db:1");
}

#[test]
fn a_service_made_by_hand_or_by_another_project_is_never_taken_over() {
    let mut h = cluster();
    h.register(&td("web", "nginx:1").to_string());
    h.create_service(&svc("web", 1, json!({"taskDefinition": "web"})).to_string());
    let commits = h.commit_count();
    let e = apply(&mut h, "shop", shop(), false).expect_err("refused");
    assert!(matches!(e, ClusterError::Conflict(_)), "{e:?}");
    assert!(
        e.to_string().starts_with(
            "service web exists and was created with the service API (`flotilla service create`)"
        ),
        "{e}"
    );
    assert_eq!(h.commit_count(), commits);
    assert_eq!(h.service("web").project, None);
    assert!(h.op(Operator::GetService("db".into())).is_err(), "no db");

    apply(
        &mut h,
        "blog",
        vec![one(td("db", "postgres:16"), svc("db", 1, json!({})))],
        false,
    )
    .expect("blog");
    let e = apply(
        &mut h,
        "shop",
        vec![one(td("db", "postgres:16"), svc("db", 1, json!({})))],
        false,
    )
    .expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("service db exists and belongs to project blog"),
        "{e}"
    );
    // Neither can removing orphans reach another project's service or a hand-made one.
    let a = apply(&mut h, "shop", Vec::new(), true).expect("empty");
    assert!(a.services.is_empty());
    assert_eq!(h.service("db").project.as_deref(), Some("blog"));
    assert_eq!(h.service("web").project, None);
}

#[test]
fn remove_orphans_removes_only_the_projects_unlisted_services() {
    let mut h = cluster();
    h.register(&td("other", "busybox").to_string());
    h.create_service(&svc("other", 1, json!({"taskDefinition": "other"})).to_string());
    apply(&mut h, "shop", shop(), false).expect("apply");
    let web_only = || vec![one(td("web", "nginx:1"), svc("web", 2, json!({})))];
    // Without removeOrphans, db stays (and is not listed in the answer).
    let a = apply(&mut h, "shop", web_only(), false).expect("apply");
    assert_eq!(changes(&a), [("web", "web:1", Change::Unchanged)]);
    assert_eq!(h.service("db").project.as_deref(), Some("shop"));
    let a = apply(&mut h, "shop", web_only(), true).expect("apply");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:1", Change::Unchanged),
            ("db", "db:1", Change::Removed)
        ]
    );
    assert!(h.op(Operator::GetService("db".into())).is_err());
    assert_eq!(h.events("service.deleted").len(), 1);
    assert_eq!(
        h.events("project.applied")
            .last()
            .map(|e| e.message.clone())
            .as_deref(),
        Some("0 created, 0 updated, 1 removed")
    );
    // Nothing listed: every service of the project goes, and the hand-made one stays.
    let a = apply(&mut h, "shop", Vec::new(), true).expect("apply");
    assert_eq!(changes(&a), [("web", "web:1", Change::Removed)]);
    assert!(h.op(Operator::GetProject("shop".into())).is_err());
    assert_eq!(h.service("other").project, None);
}

#[test]
fn removing_a_project_deletes_its_services_and_deregisters_unused_revisions() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), false).expect("apply");
    let mut next = shop();
    next[0].task_definition = td("web", "nginx:2");
    apply(&mut h, "shop", next, false).expect("apply");
    for _ in 0..3 {
        h.step();
    }
    // A task of db:1 run by hand keeps that revision in use.
    h.op(Operator::RunTask(TaskRun {
        task_definition: "db".into(),
        node: None,
        count: 1,
        env: Vec::new(),
        placement_constraints: Vec::new(),
        placement_strategy: Vec::new(),
    }))
    .expect("run");
    h.step();
    let reply = h
        .op(Operator::RemoveProject("shop".into()))
        .expect("remove");
    let Reply::ProjectApplied(a) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        changes(&a),
        [
            ("db", "db:1", Change::Removed),
            ("web", "web:2", Change::Removed)
        ]
    );
    assert_eq!(a.deregistered, ["web:1", "web:2"]);
    assert_eq!(
        revisions(&mut h, "web"),
        [(1, TaskDefStatus::Inactive), (2, TaskDefStatus::Inactive)]
    );
    assert_eq!(
        revisions(&mut h, "db"),
        [(1, TaskDefStatus::Active)],
        "a live task still uses it"
    );
    assert_eq!(h.events("service.deleted").len(), 2);
    assert_eq!(h.events("taskdef.deregistered").len(), 2);
    let removed = h.events("project.removed");
    assert_eq!(
        (removed.len(), removed[0].message.as_str()),
        (1, "2 services deleted, 2 revisions deregistered")
    );
    assert!(matches!(
        h.op(Operator::GetProject("shop".into())),
        Err(ClusterError::NotFound(_))
    ));
    // The services' tasks are being stopped; the hand-run task is not.
    for _ in 0..3 {
        h.step();
    }
    let live: Vec<String> = h
        .tasks()
        .into_iter()
        .filter(|t| t.state != flotilla_api::tasks::TaskState::Stopped)
        .map(|t| t.task_definition)
        .collect();
    assert_eq!(live, ["db:1"]);
    // Applied again, the project starts from a new revision of web (none is active).
    let a = apply(&mut h, "shop", shop(), false).expect("apply");
    assert_eq!(
        changes(&a),
        [
            ("web", "web:3", Change::Created),
            ("db", "db:1", Change::Created)
        ]
    );
}

#[test]
fn an_unknown_project_is_not_found_and_a_name_must_be_a_dns_label() {
    let mut h = cluster();
    for op in [
        Operator::GetProject("nope".into()),
        Operator::RemoveProject("nope".into()),
    ] {
        match h.op(op) {
            Err(ClusterError::NotFound(m)) => assert_eq!(m, "no project nope"),
            other => panic!("{other:?}"),
        }
    }
    let commits = h.commit_count();
    for bad in ["Shop", "my_shop", "-shop", ""] {
        let e = apply(&mut h, bad, shop(), false).expect_err(bad);
        assert!(matches!(e, ClusterError::Invalid { .. }), "{bad}: {e:?}");
        assert!(e.to_string().contains("a DNS label"), "{bad}: {e}");
    }
    let many: Vec<ProjectService> = (0..=flotilla_api::project::MAX_SERVICES)
        .map(|i| {
            one(
                td(&format!("f{i}"), "busybox"),
                svc(&format!("s{i}"), 0, json!({})),
            )
        })
        .collect();
    let e = apply(&mut h, "big", many, false).expect_err("too many");
    assert_eq!(
        e.to_string(),
        "project big: 101 services listed, at most 100"
    );
    assert_eq!(h.commit_count(), commits);
}

#[test]
fn invalid_inputs_are_refused_with_every_problem_by_its_path_in_the_body() {
    let mut h = cluster();
    let commits = h.commit_count();
    let services = vec![
        one(
            json!({"family": "web", "containerDefinitions": [{"name": "main", "memory": 64}]}),
            svc("web", 1, json!({"taskDefinition": "api"})),
        ),
        one(
            td("db", "postgres:16"),
            svc("db", 1, json!({"discovery": {"namespace": "elsewhere"}})),
        ),
        one(td("web2", "x"), svc("db", 1, json!({}))),
        one(td("web", "nginx:2"), svc("web3", 1, json!({}))),
    ];
    let e = apply(&mut h, "shop", services, false).expect_err("refused");
    let ClusterError::Invalid { message, problems } = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        message,
        format!("invalid project shop ({} problems)", problems.len())
    );
    let has = |prefix: &str| {
        assert!(
            problems.iter().any(|p| p.starts_with(prefix)),
            "no {prefix}… in {problems:#?}"
        )
    };
    has("web: $.services[0].taskDefinition.containerDefinitions[0].image");
    has("web: $.services[0].service.taskDefinition: \"api\" is not the family of its task definition (web)");
    has("db: $.services[1].service.discovery.namespace: \"elsewhere\" is not the project (shop)");
    has("db: $.services[2].service.serviceName: service db is listed twice (also services[1])");
    assert_eq!(h.commit_count(), commits);
}

#[test]
fn discovery_registers_in_the_projects_namespace_and_projects_are_listed() {
    let mut h = cluster();
    let services = vec![
        one(
            json!({"family": "web", "containerDefinitions": [{"name": "main", "image": "nginx",
                "memory": 64, "portMappings": [{"containerPort": 80}]}]}),
            svc(
                "web",
                2,
                json!({"discovery": {"vip": true}, "launchType": "EC2"}),
            ),
        ),
        one(td("db", "postgres:16"), svc("db", 1, json!({}))),
    ];
    let a = apply(&mut h, "shop", services, false).expect("apply");
    assert_eq!(
        a.warnings,
        ["web: $.services[0].service.launchType: ignored (AWS only)"]
    );
    let web = h.service("web");
    let d = web.spec.discovery.expect("discovery");
    assert_eq!((d.namespace.as_str(), d.name.as_str()), ("shop", "web"));
    assert_eq!(h.service("db").spec.discovery, None, "no discovery asked");
    apply(
        &mut h,
        "blog",
        vec![one(td("blog", "ghost"), svc("blog", 3, json!({})))],
        false,
    )
    .expect("blog");
    for _ in 0..3 {
        h.step();
    }
    let Reply::Projects(all) = h.op(Operator::ListProjects).expect("ls") else {
        panic!()
    };
    let rows: Vec<(&str, u32, u32, u32)> = all
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.services,
                p.running_count,
                p.desired_count,
            )
        })
        .collect();
    assert_eq!(rows, [("blog", 1, 3, 3), ("shop", 2, 3, 3)]);
    let Reply::Project(p) = h.op(Operator::GetProject("shop".into())).expect("get") else {
        panic!()
    };
    let names: Vec<&str> = p
        .services
        .iter()
        .map(|s| s.spec.service_name.as_str())
        .collect();
    assert_eq!((p.name.as_str(), names), ("shop", vec!["db", "web"]));
}

#[test]
fn an_auto_scaled_count_is_left_to_auto_scaling_with_a_warning() {
    let mut h = cluster();
    apply(&mut h, "shop", shop(), false).expect("apply");
    h.op(Operator::Autoscale(
        "web".into(),
        r#"{"target": {"MinCapacity": 1, "MaxCapacity": 4}}"#.into(),
    ))
    .expect("autoscale");
    let commits = h.commit_count();
    let mut next = shop();
    next[0].service = svc("web", 3, json!({}));
    let a = apply(&mut h, "shop", next, false).expect("apply");
    assert_eq!(changes(&a)[0], ("web", "web:1", Change::Unchanged));
    assert_eq!(
        a.warnings,
        ["web: desiredCount 3 left to auto scaling (between 1 and 4; now 2)"]
    );
    assert_eq!(h.commit_count(), commits);
}

#[test]
fn hostile_bodies_are_refused_whole_with_the_field_named() {
    let mut h = cluster();
    // A hand-made service already holds shop's discovery name db.
    h.register(&td("other", "busybox").to_string());
    h.create_service(
        &svc(
            "other",
            1,
            json!({"taskDefinition": "other", "discovery": {"namespace": "shop", "name": "db"}}),
        )
        .to_string(),
    );
    let commits = h.commit_count();
    // web would be created first: the refusal of db later in the same apply takes it back.
    let services = vec![
        one(td("web", "nginx:1"), svc("web", 1, json!({}))),
        one(
            td("db", "postgres:16"),
            svc("db", 1, json!({"discovery": {"name": "db"}})),
        ),
    ];
    let e = apply(&mut h, "shop", services, false).expect_err("discovery name taken");
    assert!(e.to_string().contains("db"), "{e}");
    assert_eq!(h.commit_count(), commits, "nothing half-applied");
    assert!(h.op(Operator::GetService("web".into())).is_err(), "no web");
    assert!(revisions(&mut h, "web").is_empty(), "no revision of web");

    // Inputs of the wrong shape, each named by its path.
    let services = vec![
        one(json!("web"), svc("a", 1, json!({}))),
        one(json!([1, 2]), svc("b", 1, json!({}))),
        one(Value::Null, svc("c", 1, json!({}))),
        one(td("d", "x"), json!("d")),
        one(td("e", "x"), svc("e", 1, json!({"discovery": "e"}))),
        one(td("f", "x"), svc("../f", 1, json!({}))),
        one(td("g", "x"), svc(&"g".repeat(300), 1, json!({}))),
        one(
            td("h", "x"),
            svc("h", 1, json!({"discovery": {"namespace": 7}})),
        ),
    ];
    let e = apply(&mut h, "shop", services, false).expect_err("refused");
    let ClusterError::Invalid { problems, .. } = e else {
        panic!("{e:?}")
    };
    for prefix in [
        "a: $.services[0].taskDefinition",
        "b: $.services[1].taskDefinition",
        "c: $.services[2].taskDefinition",
        "$.services[3].service: expected an object",
        "e: $.services[4].service.discovery",
        "../f: $.services[5].service.serviceName",
        "h: $.services[7].service.discovery.namespace: 7 is not the project",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(prefix)),
            "no {prefix}… in {problems:#?}"
        );
    }
    assert!(
        problems
            .iter()
            .any(|p| p.contains("$.services[6].service.serviceName: use 1-255")),
        "{problems:#?}"
    );
    assert_eq!(h.commit_count(), commits);
}

/// A project's one-shot service (`compose up` of a seed with `restart: "no"`) runs once: an
/// `up` that changes nothing does not run it again, one that changes it runs it once more,
/// and a changed `completionPolicy` alone is recorded without a new deployment.
#[test]
fn a_one_shot_service_of_a_project_runs_once_per_deployment() {
    let mut h = Harness::new();
    h.join(&[], 2048, 4);
    h.completing.insert("seed".into());
    let seed = |image: &str, replace: &str| {
        vec![one(
            td("seed", image),
            svc("seed", 1, json!({"completionPolicy": {"replace": replace}})),
        )]
    };
    let runs = |h: &mut Harness| {
        h.tasks()
            .iter()
            .filter(|t| t.started_by.as_deref() == Some("service:seed"))
            .count()
    };
    apply(&mut h, "shop", seed("seed:1", "never"), true).expect("apply");
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(runs(&mut h), 1);
    let a = apply(&mut h, "shop", seed("seed:1", "never"), true).expect("again");
    assert_eq!(changes(&a), [("seed", "seed:1", Change::Unchanged)]);
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(runs(&mut h), 1, "an up that changes nothing seeds nothing");
    let a = apply(&mut h, "shop", seed("seed:1", "onFailure"), true).expect("policy");
    assert_ne!(changes(&a)[0].2, Change::Unchanged);
    assert_eq!(
        h.service("seed").spec.completion_policy.replace,
        flotilla_api::service::ReplaceStopped::OnFailure
    );
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(runs(&mut h), 1, "the policy alone is no new deployment");
    apply(&mut h, "shop", seed("seed:2", "onFailure"), true).expect("new image");
    for _ in 0..5 {
        h.step();
    }
    assert_eq!(runs(&mut h), 2, "a new revision seeds once more");
    assert_eq!(h.service("seed").completed_count, 1);
}
