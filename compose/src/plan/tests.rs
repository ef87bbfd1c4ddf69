use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

/// The crate's copy of the real Compose files (see its SOURCES.md).
fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases"))
}

/// A small document written by hand, as the loader would leave it (merge keys applied, nothing
/// to interpolate): for the tests of one mapping at a time.
fn loaded(name: &str, dir: &Path, yaml: &str) -> Loaded {
    let mut document: yaml_serde::Value = yaml_serde::from_str(yaml).expect("valid YAML");
    document.apply_merge().expect("merge keys");
    Loaded {
        name: name.into(),
        project_dir: dir.to_path_buf(),
        document,
        warnings: Vec::new(),
        home_paths: Default::default(),
    }
}

/// Plans `yaml` as project `shop` in `/srv/shop`.
fn plan_of(yaml: &str) -> Result<Plan, Vec<String>> {
    plan(&loaded("shop", Path::new("/srv/shop"), yaml))
}

fn ok(yaml: &str) -> Plan {
    plan_of(yaml).unwrap_or_else(|e| panic!("problems: {e:#?}"))
}

fn service<'p>(p: &'p Plan, name: &str) -> &'p ServicePlan {
    p.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn container<'p>(p: &'p Plan, name: &str) -> &'p Value {
    &service(p, name).spec.task_definition["containerDefinitions"][0]
}

fn task<'p>(p: &'p Plan, name: &str) -> &'p Value {
    &service(p, name).spec.task_definition
}

fn svc<'p>(p: &'p Plan, name: &str) -> &'p Value {
    &service(p, name).spec.service
}

/// Warnings that start with `path`.
fn warned<'p>(p: &'p Plan, path: &str) -> Vec<&'p str> {
    p.warnings
        .iter()
        .filter(|w| w.starts_with(&format!("{path}:")))
        .map(String::as_str)
        .collect()
}

#[test]
fn a_service_is_a_task_definition_and_a_service_named_project_service() {
    let p = ok("services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n");
    assert_eq!(p.project, "shop");
    let s = service(&p, "web");
    assert_eq!(
        (s.service_name.as_str(), s.image.as_str()),
        ("shop-web", "nginx")
    );
    assert_eq!(
        s.spec.task_definition,
        json!({"family": "shop-web", "networkMode": "bridge", "containerDefinitions": [{
            "name": "web", "image": "nginx", "essential": true, "memoryReservation": 128,
            "stopTimeout": 10,
            "portMappings": [{"containerPort": 80, "hostPort": 8080, "protocol": "tcp"}]}]})
    );
    assert_eq!(
        s.spec.service,
        json!({"serviceName": "shop-web", "taskDefinition": "shop-web",
               "schedulingStrategy": "REPLICA", "desiredCount": 1,
               // Swarm's default update: one task at a time, stopped before its replacement.
               "deploymentConfiguration": {"minimumHealthyPercent": 0, "maximumPercent": 100},
               "discovery": {"namespace": "shop", "name": "web", "containerPort": 80, "vip": true}})
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn a_service_without_ports_registers_without_a_vip_and_none_not_at_all() {
    let p =
        ok("services:\n  worker:\n    image: w\n  box:\n    image: b\n    network_mode: none\n");
    assert_eq!(
        svc(&p, "worker")["discovery"],
        json!({"namespace": "shop", "name": "worker"})
    );
    assert_eq!(svc(&p, "box").get("discovery"), None);
    assert_eq!(task(&p, "box")["networkMode"], "none");
}

#[test]
fn a_name_that_is_no_dns_label_is_reached_under_one_and_said_so() {
    let p = ok("services:\n  My_DB:\n    image: postgres\n    expose: [5432]\n");
    assert_eq!(svc(&p, "My_DB")["discovery"]["name"], "my-db");
    assert_eq!(service(&p, "My_DB").service_name, "shop-My_DB");
    let w = warned(&p, "services.My_DB");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("as my-db"), "{w:?}");
    let e = plan_of("services:\n  _x_:\n    image: a\n").expect_err("no label");
    assert!(
        e[0].starts_with("services._x_: '_x_' cannot become a DNS name"),
        "{e:?}"
    );
    let e = plan_of("services:\n  a_b:\n    image: a\n  A-b:\n    image: a\n").expect_err("twice");
    assert!(e.iter().any(|x| x.contains("is reached as a-b")), "{e:?}");
}

#[test]
fn several_ports_warn_that_the_vip_carries_the_first() {
    let p = ok(
        "services:\n  api:\n    image: a\n    ports: ['80:80', '9229']\n    expose: [9000, 80]\n",
    );
    let maps = &container(&p, "api")["portMappings"];
    assert_eq!(
        maps,
        &json!([{"containerPort": 80, "hostPort": 80, "protocol": "tcp"},
                {"containerPort": 9229, "protocol": "tcp"},
                {"containerPort": 9000, "protocol": "tcp"}])
    );
    assert_eq!(svc(&p, "api")["discovery"]["containerPort"], 80);
    let w = warned(&p, "services.api.ports");
    assert_eq!(w.len(), 1, "{:?}", p.warnings);
    assert!(
        w[0].contains("only api:80") && w[0].contains("9229/tcp, 9000/tcp"),
        "{w:?}"
    );
}

#[test]
fn build_alone_is_refused_and_beside_an_image_warned() {
    let p = ok("services:\n  app:\n    build: .\n");
    assert_eq!(
        p.refusals,
        ["services.app.build: Flotilla runs images; give image: (build and push it yourself)"]
    );
    assert_eq!(p.services[0].image, format!("{}-app", p.project));
    let p = ok("services:\n  app:\n    build: .\n    image: registry/app:1\n");
    assert_eq!(warned(&p, "services.app.build").len(), 1);
}

#[test]
fn command_and_entrypoint_strings_are_split_as_a_shell_splits_them() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n",
        "    command: sh -c 'echo \"hi there\"; sleep 1'\n",
        "    entrypoint: [\"/init\", 5]\n"
    ));
    let c = container(&p, "a");
    assert_eq!(
        c["command"],
        json!(["sh", "-c", "echo \"hi there\"; sleep 1"])
    );
    assert_eq!(c["entryPoint"], json!(["/init", "5"]));
    let e =
        plan_of("services:\n  a:\n    image: a\n    command: \"echo 'x\"\n").expect_err("quote");
    assert!(
        e[0].starts_with("services.a.command: its quotes are unbalanced"),
        "{e:?}"
    );
}

#[test]
fn environment_and_labels_are_strings_in_either_form() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n",
        "    environment: {PORT: 8080, DEBUG: true, RATIO: 0.5, NAME: x}\n",
        "    labels: [traefik.enable=true, tier]\n",
        "  b:\n    image: b\n    environment: [A=1, B=x=y]\n"
    ));
    let env = container(&p, "a")["environment"]
        .as_array()
        .expect("env")
        .clone();
    for want in [
        json!({"name": "PORT", "value": "8080"}),
        json!({"name": "DEBUG", "value": "true"}),
        json!({"name": "RATIO", "value": "0.5"}),
        json!({"name": "NAME", "value": "x"}),
    ] {
        assert!(env.contains(&want), "{want} not in {env:?}");
    }
    assert_eq!(
        container(&p, "b")["environment"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "x=y"}])
    );
    assert_eq!(
        container(&p, "a")["dockerLabels"],
        json!({"traefik.enable": "true", "tier": ""})
    );
    // Flotilla keeps dockerLabels without acting on them yet: said at the Compose key.
    let w = warned(&p, "services.a.labels");
    assert_eq!(w.len(), 1, "{:?}", p.warnings);
    assert!(
        w[0].starts_with("services.a.labels: as dockerLabels: "),
        "{w:?}"
    );
}

#[test]
fn container_settings_map_one_to_one() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    user: 1000\n    working_dir: /app\n",
        "    read_only: true\n    hostname: box\n    privileged: 'false'\n",
        "    init: true\n    cap_add: [NET_ADMIN]\n    cap_drop: [ALL]\n",
        "    stop_grace_period: 1m30s\n    ports: ['80']\n",
        "    ulimits:\n      nproc: 65535\n      nofile: {soft: 20000, hard: 40000}\n"
    ));
    let c = container(&p, "a");
    assert_eq!(c["user"], "1000");
    assert_eq!(c["workingDirectory"], "/app");
    assert_eq!(c["readonlyRootFilesystem"], true);
    assert_eq!(c["hostname"], "box");
    assert_eq!(c["privileged"], false);
    assert_eq!(c["stopTimeout"], 90);
    assert_eq!(
        c["linuxParameters"],
        json!({"initProcessEnabled": true, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}})
    );
    let mut u = c["ulimits"].as_array().expect("ulimits").clone();
    u.sort_by_key(|x| x["name"].as_str().map(str::to_string));
    assert_eq!(
        u,
        [
            json!({"name": "nofile", "softLimit": 20000, "hardLimit": 40000}),
            json!({"name": "nproc", "softLimit": 65535, "hardLimit": 65535})
        ]
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let p = ok("services:\n  a:\n    image: a\n    stop_grace_period: 5m\n");
    assert_eq!(container(&p, "a")["stopTimeout"], 120);
    assert_eq!(warned(&p, "services.a.stop_grace_period").len(), 1);
}

#[test]
fn settings_flotilla_keeps_but_does_not_act_on_yet_are_warned_at_their_key() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    dns: 10.0.0.2\n    dns_search: [corp]\n",
        "    extra_hosts: ['db:10.0.0.5', 'v6=::1']\n    sysctls: [net.core.somaxconn=4096]\n",
        "    tty: true\n    stdin_open: true\n    shm_size: 128mb\n"
    ));
    let c = container(&p, "a");
    assert_eq!(c["dnsServers"], json!(["10.0.0.2"]));
    assert_eq!(c["dnsSearchDomains"], json!(["corp"]));
    assert_eq!(
        c["extraHosts"],
        json!([{"hostname": "db", "ipAddress": "10.0.0.5"}, {"hostname": "v6", "ipAddress": "::1"}])
    );
    assert_eq!(
        c["systemControls"],
        json!([{"namespace": "net.core.somaxconn", "value": "4096"}])
    );
    assert_eq!(
        (&c["pseudoTerminal"], &c["interactive"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(c["linuxParameters"]["sharedMemorySize"], 128);
    for key in [
        "dns",
        "dns_search",
        "extra_hosts",
        "sysctls",
        "tty",
        "stdin_open",
        "shm_size",
    ] {
        assert_eq!(
            warned(&p, &format!("services.a.{key}")).len(),
            1,
            "{key}: {:?}",
            p.warnings
        );
    }
}

#[test]
fn tmpfs_takes_its_size_in_mib_and_a_default_when_none_is_given() {
    let p = ok("services:\n  a:\n    image: a\n    tmpfs: ['/run:size=64m,mode=1777', /tmp]\n");
    assert_eq!(
        container(&p, "a")["linuxParameters"]["tmpfs"],
        json!([{"containerPath": "/run", "size": 64, "mountOptions": ["mode=1777"]},
               {"containerPath": "/tmp", "size": 64}])
    );
    assert_eq!(
        warned(&p, "services.a.tmpfs[1]").len(),
        1,
        "{:?}",
        p.warnings
    );
    // The mode is kept as a mount option, which Flotilla does not apply yet.
    assert_eq!(
        warned(&p, "services.a.tmpfs[0]").len(),
        1,
        "{:?}",
        p.warnings
    );
}

#[test]
fn network_modes() {
    let p = ok(concat!(
        "services:\n  h:\n    image: a\n    network_mode: host\n    ports: ['8080:80', '9000:9000']\n",
        "  s:\n    image: a\n    network_mode: 'service:h'\n"
    ));
    assert_eq!(task(&p, "h")["networkMode"], "host");
    assert_eq!(
        container(&p, "h")["portMappings"],
        json!([{"containerPort": 80, "protocol": "tcp"}, {"containerPort": 9000, "protocol": "tcp"}])
    );
    assert_eq!(
        warned(&p, "services.h.ports[0]").len(),
        1,
        "{:?}",
        p.warnings
    );
    assert_eq!(task(&p, "s")["networkMode"], "bridge");
    assert_eq!(warned(&p, "services.s.network_mode").len(), 1);
}

#[test]
fn healthchecks_in_every_form() {
    let p = ok(concat!(
        "services:\n",
        "  a:\n    image: a\n    healthcheck:\n      test: [CMD, pg_isready]\n      interval: 10s\n      timeout: 5s\n      retries: 5\n      start_period: 1m\n",
        "  b:\n    image: b\n    healthcheck:\n      test: redis-cli ping || exit 1\n",
        "  c:\n    image: c\n    healthcheck:\n      test: [NONE]\n",
        "  d:\n    image: d\n    healthcheck:\n      disable: true\n      test: [CMD, x]\n",
        "  e:\n    image: e\n    healthcheck:\n      test: [CMD, x]\n      interval: 1s\n      timeout: 500ms\n"
    ));
    assert_eq!(
        container(&p, "a")["healthCheck"],
        json!({"command": ["CMD", "pg_isready"], "interval": 10, "timeout": 5, "retries": 5, "startPeriod": 60})
    );
    assert_eq!(
        container(&p, "b")["healthCheck"],
        json!({"command": ["CMD-SHELL", "redis-cli ping || exit 1"], "interval": 30, "timeout": 30, "retries": 3, "startPeriod": 0})
    );
    assert_eq!(container(&p, "c").get("healthCheck"), None);
    assert_eq!(container(&p, "d").get("healthCheck"), None);
    assert_eq!(container(&p, "e")["healthCheck"]["interval"], 5);
    assert_eq!(container(&p, "e")["healthCheck"]["timeout"], 2);
    assert_eq!(warned(&p, "services.e.healthcheck.interval").len(), 1);
    assert_eq!(warned(&p, "services.e.healthcheck.timeout").len(), 1);
}

#[test]
fn ports_in_short_and_long_syntax() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    ports:\n",
        "      - 80\n      - '127.0.0.1:9229:9229'\n      - '8000-8001:8000-8001'\n      - '53:53/udp'\n",
        "      - {target: 443, published: '8443', protocol: tcp, mode: host, name: https}\n"
    ));
    assert_eq!(
        container(&p, "a")["portMappings"],
        json!([
            {"containerPort": 80, "protocol": "tcp"},
            {"containerPort": 9229, "hostPort": 9229, "protocol": "tcp"},
            {"containerPort": 8000, "hostPort": 8000, "protocol": "tcp"},
            {"containerPort": 8001, "hostPort": 8001, "protocol": "tcp"},
            {"containerPort": 53, "hostPort": 53, "protocol": "udp"},
            {"containerPort": 443, "hostPort": 8443, "protocol": "tcp", "name": "https"}
        ])
    );
    let w = warned(&p, "services.a.ports[1]");
    assert!(
        w.len() == 1 && w[0].contains("every address"),
        "{:?}",
        p.warnings
    );
    let e =
        plan_of("services:\n  a:\n    image: a\n    ports: ['1-3:1-2']\n").expect_err("lengths");
    assert!(e[0].starts_with("services.a.ports[0]:"), "{e:?}");
}

#[test]
fn port_ranges_are_bounded() {
    // 60,000 ports in a few bytes, many times over: refused at once, without a mapping each.
    let many: String = (0..2000).map(|_| "      - '1-60000:1-60000'\n").collect();
    let start = std::time::Instant::now();
    let e = plan_of(&format!(
        "services:\n  a:\n    image: a\n    ports:\n{many}"
    ))
    .expect_err("too many");
    assert!(e[0].contains("at most 1000"), "{e:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // Up to the bound, and the warning lists a few.
    let p = ok("services:\n  a:\n    image: a\n    ports: ['1-999:1-999']\n");
    assert_eq!(
        container(&p, "a")["portMappings"].as_array().map(Vec::len),
        Some(999)
    );
    let w = warned(&p, "services.a.ports");
    assert!(w.iter().any(|w| w.contains("and 978 more")), "{w:?}");
    let e = plan_of("services:\n  a:\n    image: a\n    ports: ['1-999', '1000-1001']\n")
        .expect_err("too many");
    assert!(e[0].starts_with("services.a.ports[1]: 1001 ports"), "{e:?}");
    let e = plan_of("services:\n  a:\n    image: a\n    ports: ['-1:80']\n").expect_err("bad");
    assert!(e[0].contains("'-1'"), "{e:?}");
}

#[test]
fn expose_maps_container_ports_only() {
    let p = ok("services:\n  db:\n    image: postgres\n    expose: ['5432', 53/udp]\n");
    assert_eq!(
        container(&p, "db")["portMappings"],
        json!([{"containerPort": 5432, "protocol": "tcp"}, {"containerPort": 53, "protocol": "udp"}])
    );
}

#[test]
fn volumes_named_anonymous_bind_and_tmpfs() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    ports: ['80']\n    volumes:\n",
        "      - db-data:/var/lib/db\n      - /cache\n      - /etc/localtime:/etc/localtime:ro\n",
        "      - ./conf:/conf:ro,Z\n",
        "      - {type: volume, source: db-data, target: /backup, read_only: true}\n",
        "      - {type: tmpfs, target: /scratch, tmpfs: {size: 10485760}}\n",
        "      - {type: bind, source: /srv/data, target: /data}\n",
        "volumes:\n  db-data:\n"
    ));
    let t = task(&p, "a");
    assert_eq!(
        t["volumes"],
        json!([
            {"name": "shop_db-data", "dockerVolumeConfiguration": {"scope": "shared", "autoprovision": true}},
            {"name": "anonymous-1"},
            {"name": "bind-2", "host": {"sourcePath": "/etc/localtime"}},
            {"name": "bind-3", "host": {"sourcePath": "/srv/shop/conf"}},
            {"name": "bind-6", "host": {"sourcePath": "/srv/data"}}
        ])
    );
    assert_eq!(
        container(&p, "a")["mountPoints"],
        json!([
            {"sourceVolume": "shop_db-data", "containerPath": "/var/lib/db", "readOnly": false},
            {"sourceVolume": "anonymous-1", "containerPath": "/cache", "readOnly": false},
            {"sourceVolume": "bind-2", "containerPath": "/etc/localtime", "readOnly": true},
            {"sourceVolume": "bind-3", "containerPath": "/conf", "readOnly": true},
            {"sourceVolume": "shop_db-data", "containerPath": "/backup", "readOnly": true},
            {"sourceVolume": "bind-6", "containerPath": "/data", "readOnly": false}
        ])
    );
    assert_eq!(
        container(&p, "a")["linuxParameters"]["tmpfs"],
        json!([{"containerPath": "/scratch", "size": 10}])
    );
    // ./conf is a path of this machine, and Z is not applied: both in the key's one line.
    let w = warned(&p, "services.a.volumes[3]");
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(
        w.len() == 1
            && w[0].contains("a path on this machine")
            && w[0].ends_with(
                "; Z: not applied (Flotilla does no SELinux relabeling and has no propagation, \
             consistency or nocopy options)"
            ),
        "{w:?}"
    );
    let e = plan_of("services:\n  a:\n    image: a\n    volumes: ['nope:/x']\n")
        .expect_err("undeclared");
    assert_eq!(
        e,
        ["services.a.volumes[0]: volume 'nope' is not declared under the top-level volumes"]
    );
}

#[test]
fn top_level_volumes_external_named_and_drivers() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    ports: ['80']\n    volumes: [ext:/e, own:/o, remote:/r]\n",
        "volumes:\n  ext:\n    external: true\n    name: shared-data\n  own:\n    name: my_vol\n",
        "  remote:\n    driver: rexray/dobs\n    driver_opts: {size: 1}\n"
    ));
    let names: Vec<&str> = task(&p, "a")["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["shared-data", "my_vol", "shop_remote"]);
    assert_eq!(warned(&p, "volumes.remote.driver").len(), 1);
    assert_eq!(warned(&p, "volumes.remote.driver_opts").len(), 1);
    assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
}

#[test]
fn resources_are_memory_in_mib_and_cpu_units() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    deploy:\n      resources:\n",
        "        limits: {memory: 1.5G, cpus: '0.5'}\n        reservations: {memory: 128M, cpus: 0.25}\n",
        "  b:\n    image: b\n    mem_limit: 2048m\n    mem_reservation: 10000000\n    cpus: 2\n    cpu_shares: 512\n"
    ));
    let a = container(&p, "a");
    assert_eq!(
        (&a["memory"], &a["memoryReservation"], &a["cpu"]),
        (&json!(1536), &json!(128), &json!(256))
    );
    assert_eq!(task(&p, "a")["cpu"], 512);
    let b = container(&p, "b");
    assert_eq!(
        (&b["memory"], &b["memoryReservation"], &b["cpu"]),
        (&json!(2048), &json!(10), &json!(512))
    );
    assert_eq!(task(&p, "b")["cpu"], 2048);
}

#[test]
fn a_reservation_under_the_least_a_container_needs_is_refused_by_the_checker() {
    let e = plan_of("services:\n  a:\n    image: a\n    mem_limit: 4m\n").expect_err("tiny");
    assert_eq!(
        e,
        ["services.a.mem_limit: '4m': less than the 6 MiB a container needs"]
    );
    let e =
        plan_of("services:\n  a:\n    image: a\n    mem_limit: 64m\n    mem_reservation: 128m\n")
            .expect_err("above");
    assert!(
        e[0].starts_with("services.a: containerDefinitions[0].memoryReservation: 128 MiB exceeds"),
        "{e:?}"
    );
}

#[test]
fn replicas_scale_and_global_mode() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    deploy: {replicas: 3}\n",
        "  b:\n    image: b\n    scale: 2\n",
        "  c:\n    image: c\n    deploy: {mode: global}\n"
    ));
    assert_eq!(svc(&p, "a")["desiredCount"], 3);
    assert_eq!(svc(&p, "b")["desiredCount"], 2);
    assert_eq!(svc(&p, "c")["schedulingStrategy"], "DAEMON");
    assert_eq!(svc(&p, "c").get("desiredCount"), None);
    let e = plan_of("services:\n  a:\n    image: a\n    scale: 2\n    deploy: {replicas: 3}\n")
        .expect_err("differ");
    assert!(e[0].starts_with("services.a.scale: 2 differs"), "{e:?}");
}

#[test]
fn placement_constraints_are_member_of_node_labels() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    deploy:\n      placement:\n",
        "        constraints: ['node.labels.site == store-12', 'node.labels.disk!=hdd', 'node.role == manager', 'node.labels.room == a b']\n",
        "        preferences: [{spread: node.labels.zone}]\n        max_replicas_per_node: 1\n"
    ));
    assert_eq!(
        svc(&p, "a")["placementConstraints"],
        json!([
            {"type": "memberOf", "expression": "attribute:site == store-12"},
            {"type": "memberOf", "expression": "attribute:disk != hdd"},
            {"type": "memberOf", "expression": "attribute:room == \"a b\""},
            {"type": "distinctInstance"}
        ])
    );
    assert_eq!(
        svc(&p, "a")["placementStrategy"],
        json!([{"type": "spread", "field": "attribute:zone"}])
    );
    let w = warned(&p, "services.a.deploy.placement.constraints[2]");
    assert!(
        w.len() == 1 && w[0].contains("node.role"),
        "{:?}",
        p.warnings
    );
}

#[test]
fn update_config_becomes_the_deployment_bounds_and_circuit_breaker() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    deploy:\n      replicas: 4\n",
        "      update_config: {order: start-first, parallelism: 2, failure_action: rollback}\n",
        "  b:\n    image: b\n    deploy:\n      replicas: 4\n      update_config: {parallelism: 1, delay: 10s}\n"
    ));
    assert_eq!(
        svc(&p, "a")["deploymentConfiguration"],
        json!({"minimumHealthyPercent": 100, "maximumPercent": 150,
               "deploymentCircuitBreaker": {"enable": true, "rollback": true}})
    );
    assert_eq!(
        svc(&p, "b")["deploymentConfiguration"],
        json!({"minimumHealthyPercent": 75, "maximumPercent": 100})
    );
    assert_eq!(warned(&p, "services.b.deploy.update_config.delay").len(), 1);
}

#[test]
fn restart_policies_restart_in_place() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    restart: always\n",
        "  b:\n    image: b\n    restart: on-failure:3\n",
        "  c:\n    image: c\n    restart: 'no'\n",
        "  d:\n    image: d\n    deploy:\n      restart_policy: {condition: on-failure, window: 120s, max_attempts: 3}\n"
    ));
    assert_eq!(
        container(&p, "a")["restartPolicy"],
        json!({"enabled": true})
    );
    assert_eq!(
        container(&p, "b")["restartPolicy"],
        json!({"enabled": true, "ignoredExitCodes": [0]})
    );
    assert_eq!(warned(&p, "services.b.restart").len(), 1);
    assert_eq!(container(&p, "c").get("restartPolicy"), None);
    // Not restarted in place, and its task is not run again once it stopped: nothing to warn.
    assert_eq!(warned(&p, "services.c.restart"), Vec::<&str>::new());
    assert_eq!(
        container(&p, "d")["restartPolicy"],
        json!({"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 120})
    );
    assert_eq!(
        warned(&p, "services.d.deploy.restart_policy.max_attempts").len(),
        1
    );
}

#[test]
fn one_shot_services_are_not_run_again_once_they_completed() {
    let p = ok(concat!(
        "services:\n  always:\n    image: a\n    restart: always\n",
        "  plain:\n    image: p\n",
        "  seed:\n    image: s\n    restart: 'no'\n",
        "  retry:\n    image: r\n    restart: on-failure\n",
        "  none:\n    image: n\n    deploy:\n      restart_policy: {condition: none}\n",
        "  swarm-retry:\n    image: r\n    deploy:\n      restart_policy: {condition: on-failure}\n",
        "  any:\n    image: a\n    deploy:\n      restart_policy: {condition: any}\n",
        "  job:\n    image: j\n    deploy:\n      mode: replicated-job\n      replicas: 3\n",
        "  node-job:\n    image: j\n    deploy:\n      mode: global-job\n",
        "  once-job:\n    image: j\n    deploy:\n      mode: replicated-job\n      restart_policy: {condition: none}\n",
        "  migrate:\n    image: m\n",
        "  prepare:\n    image: p\n    restart: always\n",
        "  api:\n    image: a\n    depends_on:\n",
        "      migrate: {condition: service_completed_successfully}\n",
        "      prepare: {condition: service_completed_successfully}\n",
        "      plain: {condition: service_started}\n",
    ));
    let replace = |name: &str| svc(&p, name)["completionPolicy"]["replace"].clone();
    for (name, want) in [
        ("always", Value::Null),
        ("plain", Value::Null),
        ("any", Value::Null),
        ("api", Value::Null),
        ("seed", json!("never")),
        ("none", json!("never")),
        ("once-job", json!("never")),
        ("retry", json!("onFailure")),
        ("swarm-retry", json!("onFailure")),
        ("job", json!("onFailure")),
        ("node-job", json!("onFailure")),
        // Awaited to complete, saying nothing of restarts: a one-shot service.
        ("migrate", json!("onFailure")),
        // Awaited, but it says it restarts always: as it says.
        ("prepare", Value::Null),
    ] {
        assert_eq!(replace(name), want, "{name}: {}", svc(&p, name));
    }
    assert_eq!(svc(&p, "job")["desiredCount"], json!(3));
    assert_eq!(svc(&p, "node-job")["schedulingStrategy"], json!("DAEMON"));
    // The container's in-place restart is as it was.
    assert_eq!(
        container(&p, "retry")["restartPolicy"],
        json!({"enabled": true, "ignoredExitCodes": [0]})
    );
    assert_eq!(container(&p, "seed").get("restartPolicy"), None);
    // Jobs map: nothing to warn about.
    assert_eq!(warned(&p, "services.job.deploy.mode"), Vec::<&str>::new());
    assert_eq!(
        warned(&p, "services.node-job.deploy.mode"),
        Vec::<&str>::new()
    );
    // And the API takes what the plan says.
    for s in &p.services {
        let text = serde_json::to_string(&s.spec.service).expect("json");
        flotilla_api::service::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", s.name));
    }
    let e = plan_of("services:\n  a:\n    image: a\n    deploy:\n      mode: batch\n")
        .expect_err("unknown mode");
    assert!(
        e[0].starts_with("services.a.deploy.mode: expected replicated, global"),
        "{e:?}"
    );
}

#[test]
fn secrets_are_files_under_run_secrets_and_values_to_create() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    secrets:\n      - db-password\n",
        "      - {source: api-key, target: key.txt, uid: '1000', gid: '1000', mode: '0400'}\n",
        "      - {source: tls, target: /etc/ssl/key.pem}\n",
        "secrets:\n  db-password:\n    file: db/password.txt\n  api-key:\n    environment: API_KEY\n",
        "  tls:\n    external: true\n  unused:\n    file: /nowhere\n"
    ));
    assert_eq!(
        container(&p, "a")["secrets"],
        json!([
            {"name": "db-password", "valueFrom": "flotilla:shop-db-password", "environment": false},
            {"name": "key.txt", "valueFrom": "flotilla:shop-api-key", "environment": false,
             "mode": "0400", "uid": 1000, "gid": 1000},
            {"name": "key.pem", "valueFrom": "flotilla:tls", "environment": false}
        ])
    );
    assert_eq!(
        p.values,
        [
            ValueSource {
                kind: ValueKind::Secret,
                name: "shop-api-key".into(),
                origin: ValueOrigin::Environment("API_KEY".into())
            },
            ValueSource {
                kind: ValueKind::Secret,
                name: "shop-db-password".into(),
                origin: ValueOrigin::File("/srv/shop/db/password.txt".into())
            },
        ]
    );
    assert_eq!(
        warned(&p, "services.a.secrets[2].target").len(),
        1,
        "{:?}",
        p.warnings
    );
    let e = plan_of("services:\n  a:\n    image: a\n    secrets: [x]\n").expect_err("undeclared");
    assert_eq!(
        e,
        ["services.a.secrets[0]: secret 'x' is not declared under the top-level secrets"]
    );
}

#[test]
fn configs_are_mounted_at_their_target() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    configs:\n      - nginx\n",
        "      - {source: rules, target: /etc/rules.yml, mode: 0o440}\n      - shared\n",
        "configs:\n  nginx:\n    content: 'server {}'\n  rules:\n    file: /srv/rules.yml\n",
        "  shared:\n    external: true\n    name: fleet-ca\n"
    ));
    assert_eq!(
        container(&p, "a")["configs"],
        json!([
            {"source": "shop-nginx", "target": "/nginx"},
            {"source": "shop-rules", "target": "/etc/rules.yml", "mode": "0440"},
            {"source": "fleet-ca", "target": "/shared"}
        ])
    );
    assert_eq!(
        p.values,
        [
            ValueSource {
                kind: ValueKind::Config,
                name: "shop-nginx".into(),
                origin: ValueOrigin::Content("server {}".into())
            },
            ValueSource {
                kind: ValueKind::Config,
                name: "shop-rules".into(),
                origin: ValueOrigin::File("/srv/rules.yml".into())
            },
        ]
    );
}

#[test]
fn depends_on_in_both_forms() {
    let p = ok(concat!(
        "services:\n  web:\n    image: w\n    depends_on: [api]\n",
        "  api:\n    image: a\n    depends_on:\n      db: {condition: service_healthy}\n",
        "      migrate: {condition: service_completed_successfully, required: false}\n",
        "  db:\n    image: d\n    healthcheck: {test: [CMD, pg_isready]}\n",
        "  migrate:\n    image: m\n"
    ));
    assert_eq!(
        service(&p, "api").depends_on,
        [
            Dependency {
                service: "db".into(),
                condition: Condition::Healthy,
                required: true
            },
            Dependency {
                service: "migrate".into(),
                condition: Condition::CompletedSuccessfully,
                required: false
            },
        ]
    );
    assert_eq!(
        service(&p, "web").depends_on,
        [Dependency {
            service: "api".into(),
            condition: Condition::Started,
            required: true
        }]
    );
    assert_eq!(
        stages(&p).expect("no cycle"),
        [vec!["db", "migrate"], vec!["api"], vec!["web"]]
    );
    let e = plan_of("services:\n  a:\n    image: a\n    depends_on: [b]\n").expect_err("unknown");
    assert_eq!(
        e,
        ["services.a.depends_on[0]: no service 'b' in the project"]
    );
}

#[test]
fn a_cycle_is_named() {
    // An error of the plan (so of `config`), not only once `up` has created secrets.
    let e = plan_of(concat!(
        "services:\n  a:\n    image: a\n    depends_on: [b]\n",
        "  b:\n    image: b\n    depends_on: [c]\n  c:\n    image: c\n    depends_on: [a]\n",
        "  d:\n    image: d\n"
    ))
    .expect_err("a cycle");
    assert_eq!(
        e,
        ["services: depends_on forms a cycle: a → b → c → a (each waits for the next)"]
    );
}

#[test]
fn more_services_than_a_project_holds_are_refused_before_up_applies_any() {
    // In stages (b… depend on a), so `up` would have applied the first before the control
    // plane refused the second.
    let mut yaml = String::from("services:\n  a:\n    image: a\n");
    for i in 0..120 {
        yaml.push_str(&format!("  b{i}:\n    image: b\n    depends_on: [a]\n"));
    }
    let p = ok(&yaml);
    assert_eq!(
        p.refusals,
        ["services: 121 services; a project has at most 100"]
    );
}

#[test]
fn healthy_waits_on_a_service_without_a_healthcheck_are_warned() {
    let p = ok(concat!(
        "services:\n  a:\n    image: a\n    depends_on: {b: {condition: service_healthy}}\n",
        "  b:\n    image: b\n"
    ));
    assert_eq!(
        warned(&p, "services.a.depends_on.b").len(),
        1,
        "{:?}",
        p.warnings
    );
}

#[test]
fn keys_that_do_not_map_are_warned_by_path_and_x_keys_are_not() {
    let p = ok(concat!(
        "x-common: &c {logging: {driver: json-file}}\n",
        "version: '3.8'\n",
        "services:\n  web:\n    image: a\n    ports: ['80']\n    container_name: w\n    networks: [front]\n",
        "    logging: {driver: syslog}\n    security_opt: [label=disable]\n    devices: [/dev/fuse]\n",
        "    pull_policy: always\n    platform: linux/amd64\n    links: [db]\n",
        "    x-note: hi\n    bogus: 1\n    profiles: [debug]\n",
        "    deploy:\n      resources: {limits: {pids: 100}}\n      labels: [a=b]\n",
        "networks:\n  front:\n",
        "whatever: 1\n"
    ));
    let paths: Vec<&str> = p
        .warnings
        .iter()
        .map(|w| w.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [
            "networks.front",
            "services.web.container_name",
            "services.web.deploy.labels",
            "services.web.deploy.resources.limits.pids",
            "services.web.devices",
            "services.web.links",
            "services.web.logging",
            "services.web.networks",
            "services.web.platform",
            "services.web.pull_policy",
            "services.web.security_opt",
        ],
        "{:#?}",
        p.warnings
    );
    // Keys the Compose specification does not have are refused, not warned.
    assert_eq!(
        p.refusals,
        [
            "services.web.bogus: not a Compose key",
            "whatever: not a Compose key"
        ]
    );
}

#[test]
fn a_file_of_supported_keys_gives_no_warning() {
    let p = ok(concat!(
        "name: shop\n",
        "services:\n  web:\n    image: nginx:1.27\n    command: [nginx, -g, 'daemon off;']\n",
        "    environment: {MODE: prod}\n    ports: ['8080:80']\n    user: '101'\n",
        "    read_only: false\n    init: true\n    cap_add: [NET_BIND_SERVICE]\n",
        "    volumes: [static:/usr/share/nginx/html:ro, /srv/certs:/certs:ro]\n",
        "    depends_on: {api: {condition: service_healthy}}\n    restart: unless-stopped\n",
        "    deploy:\n      replicas: 2\n      resources: {limits: {memory: 256M, cpus: '1'}, reservations: {memory: 64M}}\n",
        "      update_config: {order: start-first, failure_action: rollback}\n",
        "      placement: {constraints: [node.labels.site == lab]}\n",
        "    secrets: [tls-key]\n    configs: [{source: site, target: /etc/nginx/conf.d/site.conf}]\n",
        "  api:\n    image: api:2\n    expose: [9000]\n    stop_grace_period: 20s\n",
        "    healthcheck: {test: [CMD, /health], interval: 10s, timeout: 3s, retries: 3, start_period: 5s}\n",
        "    ulimits: {nofile: 65536}\n    tmpfs: ['/tmp:size=32m']\n    working_dir: /srv\n",
        "volumes:\n  static:\n",
        "secrets:\n  tls-key:\n    file: /etc/shop/tls.key\n",
        "configs:\n  site:\n    file: /etc/shop/site.conf\n"
    ));
    // Only expose is said to be published on the node's every address.
    assert_eq!(
        p.warnings,
        [
            "services.api.expose: published on a dynamic port of every address of the node, \
             the LAN included (Flotilla has no internal-only network yet): other services reach \
             it by name through its VIP"
        ],
        "{:#?}",
        p.warnings
    );
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
    assert_eq!(p.values.len(), 2);
}

#[test]
fn values_of_the_wrong_type_are_problems_never_panics() {
    let cases = [
        "services: [a]",
        "services:\n  a: 5",
        "services:\n  a:\n    image: [x]",
        "services:\n  a:\n    image: a\n    ports: 80",
        "services:\n  a:\n    image: a\n    ports: [{published: 80}]",
        "services:\n  a:\n    image: a\n    ports: ['a:b']",
        "services:\n  a:\n    image: a\n    environment: 5",
        "services:\n  a:\n    image: a\n    environment: [{a: b}]",
        "services:\n  a:\n    image: a\n    volumes: [{type: weird, target: /x}]",
        "services:\n  a:\n    image: a\n    volumes: ['a:b:c:d']",
        "services:\n  a:\n    image: a\n    deploy: {replicas: many}",
        "services:\n  a:\n    image: a\n    deploy: {resources: {limits: {memory: lots}}}",
        "services:\n  a:\n    image: a\n    healthcheck: {test: [WHAT]}",
        "services:\n  a:\n    image: a\n    healthcheck: {interval: forever, test: x}",
        "services:\n  a:\n    image: a\n    stop_grace_period: [1]",
        "services:\n  a:\n    image: a\n    read_only: maybe",
        "services:\n  a:\n    image: a\n    ulimits: {nofile: {soft: 1}}",
        "services:\n  a:\n    image: a\n    ulimits: {bogus: 5}",
        "services:\n  a:\n    image: a\n    restart: sometimes",
        "services:\n  a:\n    image: a\n    depends_on: 5",
        "services:\n  a:\n    image: a\n    depends_on: {b: {condition: later}}\n  b:\n    image: b",
        "services:\n  a:\n    image: a\n    secrets: [{target: x}]",
        "services:\n  a:\n    image: a\n    configs: [{source: c, mode: 999}]\nconfigs:\n  c:\n    content: x",
        "services:\n  a:\n    image: a\nsecrets:\n  s: {}",
        "services:\n  a:\n    image: a\nsecrets:\n  s: 5",
        "services:\n  a:\n    image: a\nvolumes: [x]",
        "services:\n  a:\n    image: a\n    working_dir: relative",
        "services:\n  a:\n    image: a\n    deploy: {placement: {constraints: [nonsense]}}",
        "services:\n  a:\n    image: a\n    extra_hosts: [nocolon]",
        "services:\n  a:\n    image: a\n    tmpfs: [relative]",
        "services:\n  a:\n    image: a\n    cpus: -1",
        "services:\n  a:\n    image: a\n    shm_size: huge",
        "services:\n  a:\n    image: a\n    mem_limit: 64m\n    cpus: 0.01\n    cpu_shares: 4096",
        "5",
        "services:\n  a:\n    image: ''",
    ];
    for yaml in cases {
        match plan_of(yaml) {
            Ok(p) => {
                // Lenient ones must say something.
                assert!(!p.warnings.is_empty(), "{yaml}: no problem and no warning");
            }
            Err(e) => {
                assert!(!e.is_empty(), "{yaml}");
                for line in &e {
                    assert!(
                        line.starts_with("services")
                            || line.starts_with("secrets")
                            || line.starts_with("volumes")
                            || line.starts_with("the document")
                            || line.starts_with("configs"),
                        "{yaml}: {line}"
                    );
                }
            }
        }
    }
}

/// Loads corpus files as `flotilla compose -f FILE… config` does from the corpus directory,
/// in a fixed environment (never the process's). `images` gives build-only services the image
/// a user would push, in a second file, as `-f FILE -f images.yaml` would.
fn corpus_plan(files: &[&str], images: &[(&str, &str)]) -> Plan {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths: Vec<PathBuf> = files.iter().map(|f| corpus_dir().join(f)).collect();
    if !images.is_empty() {
        let mut text = String::from("services:\n");
        for (service, image) in images {
            text.push_str(&format!("  {service}:\n    image: {image}\n"));
        }
        let path = dir.path().join("images.yaml");
        std::fs::write(&path, text).expect("write");
        paths.push(path);
    }
    let opts = crate::LoadOptions {
        files: paths,
        working_dir: corpus_dir(),
        environment: [("HOME".to_owned(), "/home/user".to_owned())].into(),
        ..crate::LoadOptions::default()
    };
    let loaded = crate::load(&opts).unwrap_or_else(|e| panic!("{files:?}: load: {e:#?}"));
    plan(&loaded).unwrap_or_else(|e| panic!("{files:?}: plan: {e:#?}"))
}

/// Every task definition and service parses as the control plane parses it.
fn assert_registers(file: &str, p: &Plan) {
    for s in &p.services {
        let td = flotilla_api::taskdef::parse(&s.spec.task_definition.to_string())
            .unwrap_or_else(|e| panic!("{file}: {}: {e:#?}", s.name));
        assert_eq!(td.definition.family, s.service_name);
        let sv = flotilla_api::service::parse(&s.spec.service.to_string())
            .unwrap_or_else(|e| panic!("{file}: {}: {e:#?}", s.name));
        assert_eq!(sv.spec.task_definition, s.service_name);
        assert!(sv.warnings.is_empty(), "{file}: {:?}", sv.warnings);
    }
}

// Every corpus file, loaded and planned, with the exact warnings: tests/corpus.rs.

#[test]
fn the_voting_app_maps_as_a_swarm_stack_does() {
    let p = corpus_plan(&["06-voting-app-stack-v3.yaml"], &[]);
    assert_registers("06", &p);
    // The project is named after the corpus directory, as Compose names it.
    assert_eq!(p.project, "cases");
    assert_eq!(svc(&p, "vote")["desiredCount"], 2);
    assert_eq!(
        svc(&p, "vote")["deploymentConfiguration"],
        json!({"minimumHealthyPercent": 0, "maximumPercent": 100})
    );
    assert_eq!(
        container(&p, "vote")["restartPolicy"],
        json!({"enabled": true, "ignoredExitCodes": [0]})
    );
    assert_eq!(
        container(&p, "worker")["restartPolicy"],
        json!({"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 120})
    );
    assert_eq!(container(&p, "visualizer")["stopTimeout"], 90);
    assert_eq!(task(&p, "db")["volumes"][0]["name"], "cases_db-data");
    assert_eq!(
        container(&p, "db")["environment"],
        json!([{"name": "POSTGRES_PASSWORD", "value": "postgres"},
               {"name": "POSTGRES_USER", "value": "postgres"}])
    );
    assert!(warned(&p, "services.worker.deploy.placement.constraints[0]")[0].contains("node.role"));
    assert_eq!(
        stages(&p).expect("no cycle"),
        [
            vec!["db", "redis", "visualizer"],
            vec!["result", "vote", "worker"]
        ]
    );
}

#[test]
fn mailcow_with_its_defaults() {
    let p = corpus_plan(&["08-mailcow-v2.1.yaml"], &[]);
    assert_registers("08", &p);
    assert_eq!(task(&p, "ipv6nat-mailcow")["networkMode"], "host");
    // "${SQL_PORT:-127.0.0.1:13306}:3306": on every address, said so.
    assert_eq!(
        container(&p, "mysql-mailcow")["portMappings"],
        json!([{"containerPort": 3306, "hostPort": 13306, "protocol": "tcp"}])
    );
    assert_eq!(warned(&p, "services.mysql-mailcow.ports[0]").len(), 1);
    // "${HTTPS_BIND:-}:${HTTPS_PORT:-443}:${HTTPS_PORT:-443}": no address, so no warning.
    assert_eq!(
        container(&p, "nginx-mailcow")["portMappings"][0],
        json!({"containerPort": 443, "hostPort": 443, "protocol": "tcp"})
    );
    assert!(warned(&p, "services.nginx-mailcow.ports[0]").is_empty());
    let dovecot = container(&p, "dovecot-mailcow");
    assert_eq!(dovecot["pseudoTerminal"], true);
    // $${MASTER} is the label's own ${MASTER}.
    assert!(
        dovecot["dockerLabels"]["ofelia.job-exec.dovecot_trim_logs.command"]
            .as_str()
            .is_some_and(|c| c.starts_with("/bin/bash -c \"[[ ${MASTER} == y ]]"))
    );
    // TZ is not set: an empty value, as Compose gives it (the loader warned).
    let env = container(&p, "memcached-mailcow")["environment"].clone();
    assert_eq!(env, json!([{"name": "TZ", "value": ""}]));
    // One line for a bind source of this machine and its :Z.
    let w = warned(&p, "services.unbound-mailcow.volumes[0]");
    assert!(
        w.len() == 1 && w[0].contains("a path on this machine") && w[0].contains("Z: not applied"),
        "{w:?}"
    );
    assert_eq!(
        container(&p, "watchdog-mailcow")["linuxParameters"]["tmpfs"],
        json!([{"containerPath": "/tmp", "size": 64}])
    );
}

#[test]
fn immich_reads_its_variables_from_the_env_file() {
    let p = corpus_plan(&["09-immich-env-file.yaml"], &[]);
    assert_registers("09", &p);
    // name: immich.
    assert_eq!(p.project, "immich");
    assert_eq!(
        service(&p, "immich-server").image,
        "ghcr.io/immich-app/immich-server:release"
    );
    let env = container(&p, "database")["environment"]
        .as_array()
        .expect("environment")
        .clone();
    assert!(env.contains(&json!({"name": "POSTGRES_USER", "value": "postgres"})));
    // ${UPLOAD_LOCATION} is ./library, against the project directory.
    let library = corpus_dir().join("library");
    assert_eq!(
        task(&p, "immich-server")["volumes"][0]["host"]["sourcePath"],
        library.to_string_lossy().as_ref()
    );
    // ${EXPOSE_PORT-:2283:2283}: published on 2283.
    assert_eq!(
        container(&p, "immich-server")["portMappings"],
        json!([{"containerPort": 2283, "hostPort": 2283, "protocol": "tcp"}])
    );
    assert_eq!(
        container(&p, "redis")["healthCheck"]["command"],
        json!(["CMD-SHELL", "redis-cli ping || exit 1"])
    );
}

#[test]
fn the_extended_grafana_plugin_as_the_loader_resolves_it() {
    // compose/tests/cases/11-grafana-plugin-extends: the base service, its paths against its
    // own directory (.config), given an image as a user who pushed it would.
    let p = corpus_plan(
        &["11-grafana-plugin-extends/docker-compose.yaml"],
        &[("grafana", "grafana-enterprise:12.4.0")],
    );
    assert_registers("11", &p);
    assert_eq!(p.project, "11-grafana-plugin-extends");
    let c = container(&p, "grafana");
    assert_eq!(c["image"], "grafana-enterprise:12.4.0");
    assert_eq!(c["user"], "root");
    assert_eq!(
        c["linuxParameters"]["capabilities"]["add"],
        json!(["SYS_PTRACE"])
    );
    let dir = corpus_dir().join("11-grafana-plugin-extends");
    let sources: Vec<&str> = task(&p, "grafana")["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["host"]["sourcePath"].as_str())
        .collect();
    assert_eq!(
        sources,
        [
            dir.join("dist").to_string_lossy(),
            dir.join("provisioning").to_string_lossy(),
            dir.to_string_lossy()
        ]
    );
    assert!(container(&p, "grafana")["environment"]
        .as_array()
        .expect("environment")
        .contains(&json!({"name": "GF_DATAPROXY_LOGGING", "value": "1"})));
    for key in ["build", "container_name", "security_opt", "ports"] {
        assert_eq!(
            warned(&p, &format!("services.grafana.{key}")).len(),
            1,
            "{key}: {:#?}",
            p.warnings
        );
    }
}

#[test]
fn warnings_are_in_the_order_of_their_paths_indices_as_numbers() {
    let mut volumes =
        String::from("services:\n  a:\n    image: a\n    ports: ['80']\n    volumes:\n");
    for i in 0..12 {
        volumes.push_str(&format!("      - /srv/d{i}:/d{i}:z\n"));
    }
    let p = ok(&volumes);
    let paths: Vec<&str> = p
        .warnings
        .iter()
        .map(|w| w.split(':').next().unwrap_or_default())
        .collect();
    let want: Vec<String> = (0..12)
        .map(|i| format!("services.a.volumes[{i}]"))
        .collect();
    assert_eq!(paths, want);
}

#[test]
fn a_negative_number_is_named_as_one_and_long_values_are_cut_in_messages() {
    let e = plan_of("services:\n  a:\n    image: a\n    cpus: -1\n").expect_err("negative");
    assert_eq!(
        e,
        ["services.a.cpus: expected a number of 0 or more, found -1"]
    );
    let long = "9".repeat(100_000);
    let e = plan_of(&format!(
        "services:\n  a:\n    image: a\n    cpus: 'x{long}'\n"
    ))
    .expect_err("not a number");
    assert!(e[0].len() < 200, "{}", e[0]);
}

#[test]
fn a_project_larger_than_the_control_plane_takes_is_refused_before_up_applies_any() {
    // Small a first, then b with a large environment applied in a second stage: the first
    // stage would pass and the second be refused.
    let env: String = (0..300)
        .map(|i| format!("      K{i}: '{}'\n", "v".repeat(4000)))
        .collect();
    let p = ok(&format!(
        "services:\n  a:\n    image: a\n  b:\n    image: b\n    depends_on: [a]\n    environment:\n{env}"
    ));
    assert_eq!(p.refusals.len(), 1, "{:?}", p.refusals);
    assert!(
        p.refusals[0].starts_with("services: the project is ")
            && p.refusals[0].contains("at most 1048576"),
        "{:?}",
        p.refusals
    );
    assert!(ok("services:\n  a:\n    image: a\n").refusals.is_empty());
}

#[test]
fn a_key_compose_does_not_have_is_refused_with_the_key_it_likely_misspells() {
    let p = ok(concat!(
        "services:\n  web:\n    image: a\n    comand: [run]\n    port: ['80:80']\n",
        "    enviroment: {A: b}\n    expose: [80]\n",
        "    healthcheck: {test: [CMD, x], intervl: 10s}\n",
        "    deploy: {resources: {limits: {memroy: 1G}}, restart_policy: {conditon: any}}\n",
        "    volumes: [{type: bind, source: /srv, target: /s, bind: {propogation: rshared}}]\n",
        "    depends_on: {db: {conditon: service_healthy}}\n",
        "  db:\n    image: b\n    expose: [5432]\n",
        "volumes:\n  v:\n    drvier: local\n",
        "secrets:\n  s:\n    external: true\n    lables: {a: b}\n",
        "servics: {}\n"
    ));
    let refused: std::collections::BTreeSet<&str> = p.refusals.iter().map(String::as_str).collect();
    let want: std::collections::BTreeSet<&str> = [
        "services.web.comand: not a Compose key (did you mean 'command'?)",
        "services.web.deploy.resources.limits.memroy: not a Compose key (did you mean 'memory'?)",
        "services.web.deploy.restart_policy.conditon: not a Compose key (did you mean 'condition'?)",
        "services.web.depends_on.db.conditon: not a Compose key (did you mean 'condition'?)",
        "services.web.enviroment: not a Compose key (did you mean 'environment'?)",
        "services.web.healthcheck.intervl: not a Compose key (did you mean 'interval'?)",
        "services.web.port: not a Compose key (did you mean 'ports'?)",
        "services.web.volumes[0].bind.propogation: not a Compose key (did you mean 'propagation'?)",
        "secrets.s.lables: not a Compose key (did you mean 'labels'?)",
        "servics: not a Compose key (did you mean 'services'?)",
        "volumes.v.drvier: not a Compose key (did you mean 'driver'?)",
    ]
    .into_iter()
    .collect();
    assert_eq!(refused, want, "{:#?}", p.refusals);
    // Not warned as well: `config` shows the refusals beside the warnings.
    assert!(p.warnings.iter().all(|w| !w.contains("not a Compose key")));
    // A Compose key that does not map is still only a warning.
    let p = ok("services:\n  a:\n    image: a\n    ports: ['80']\n    pids_limit: 5\n");
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
    assert_eq!(warned(&p, "services.a.pids_limit").len(), 1);
}

#[test]
fn expose_is_warned_as_published_on_every_address_of_the_node() {
    let p = ok(concat!(
        "services:\n  db:\n    image: a\n    expose: [5432, 5433]\n",
        "  web:\n    image: b\n    ports: ['80:80']\n    expose: [80]\n"
    ));
    let w = warned(&p, "services.db.expose");
    assert_eq!(w.len(), 1, "{:?}", p.warnings);
    assert!(w[0].contains(
        "published on a dynamic port of every address of the node, the LAN included (Flotilla \
         has no internal-only network yet): other services reach it by name through its VIP"
    ));
    assert!(w[0].contains("only db:5432 is reached by name"), "{w:?}");
    // A port both published and exposed is published on its own host port only.
    assert!(
        warned(&p, "services.web.expose").is_empty(),
        "{:?}",
        p.warnings
    );
}

#[test]
fn a_service_without_a_port_is_warned_that_no_one_reaches_it_by_name() {
    let p = ok(concat!(
        "services:\n  worker:\n    image: a\n",
        "  cache:\n    image: b\n    expose: [6379]\n",
        "  probe:\n    image: c\n    network_mode: host\n",
        "  off:\n    image: d\n    network_mode: none\n"
    ));
    assert_eq!(
        warned(&p, "services.worker"),
        [
            "services.worker: other services cannot reach it by name: Flotilla reaches a service \
             through a port it declares; give it expose: PORT"
        ]
    );
    for s in ["services.cache", "services.probe", "services.off"] {
        assert!(warned(&p, s).is_empty(), "{s}: {:?}", p.warnings);
    }
}

#[test]
fn the_stop_grace_period_is_compose_s_ten_seconds_when_none_is_given() {
    let p = ok("services:\n  a:\n    image: a\n  b:\n    image: b\n    stop_grace_period: 3s\n");
    assert_eq!(container(&p, "a")["stopTimeout"], 10);
    assert_eq!(container(&p, "b")["stopTimeout"], 3);
}
