//! Service discovery and service VIPs on real hosts with real containers: a container on one
//! host finds and reaches services on another by name (A and SRV records from the node's own
//! resolver), gets the namespace's services in its environment, an unhealthy task leaves the
//! answers, names keep resolving with the control plane down (also across an agent restart),
//! and a VIP spreads connections over a service's tasks (whose own environment names it and its
//! port) and stops sending any to a stopped one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_api::discovery::DiscoveredService;
use flotilla_api::ops::TaskInfo;
use flotilla_api::tasks::TaskState;
use flotilla_tests::cluster::Fleet;
use flotilla_tests::wait;

/// httpd on port 80 answering with the container's host name; unhealthy once /www/sick exists
/// (checked every 5 s; `retries` failures in a row make it unhealthy).
fn web_def(family: &str, mapping: &str, retries: u32) -> String {
    web_def_stopping(family, mapping, retries, 2)
}

/// [`web_def`] with its containers' `stopTimeout` (httpd ignores SIGTERM: it runs that long
/// after it was told to stop, as a task draining its connections would).
fn web_def_stopping(family: &str, mapping: &str, retries: u32, stop_timeout: u32) -> String {
    format!(
        r#"{{
  "family": "{family}",
  "networkMode": "bridge",
  "containerDefinitions": [{{
    "name": "web", "image": "test/busybox:latest", "memory": 32, "stopTimeout": {stop_timeout},
    "portMappings": [{mapping}],
    "healthCheck": {{"command": ["CMD-SHELL", "[ ! -e /www/sick ]"], "interval": 5, "retries": {retries}, "timeout": 5}},
    "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
  }}]
}}"#
    )
}

const CLIENT: &str = r#"{
  "family": "client",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "echo WEB=$WEB_SERVICE_HOST:$WEB_SERVICE_PORT; cat /etc/resolv.conf; exec sleep 3600"]
  }]
}"#;

fn service(fleet: &Fleet, json: &str) {
    fleet.cp.create_service(json);
}

fn endpoints(fleet: &Fleet, name: &str) -> DiscoveredService {
    fleet
        .cp
        .api()
        .service_endpoints(name)
        .unwrap_or_else(|e| panic!("endpoints of {name}: {e}"))
}

fn tasks_of(fleet: &Fleet, service: &str) -> Vec<TaskInfo> {
    let by = format!("service:{service}");
    fleet
        .cp
        .tasks()
        .into_iter()
        .filter(|t| t.started_by.as_ref() == Some(&by) && t.state == TaskState::Running)
        .collect()
}

/// Runs `sh -c SCRIPT` in container `name` of node `i`; (success, stdout + stderr).
fn exec(fleet: &Fleet, i: usize, name: &str, script: &str) -> (bool, String) {
    let out = fleet.nodes[i].ctr(&["exec", name, "--", "sh", "-c", script]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A site resolver on the LAN: dnsmasq on the LAN's gateway answering `printer.site.lan`;
/// stopped on drop.
struct SiteDns(std::process::Child);

impl SiteDns {
    fn start(at: std::net::Ipv4Addr) -> Self {
        Self::start_with(at, &[])
    }

    /// [`SiteDns::start`] with more of dnsmasq's options.
    fn start_with(at: std::net::Ipv4Addr, more: &[&str]) -> Self {
        let child = std::process::Command::new("dnsmasq")
            .args(more)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={at}"),
                "--port=5354",
                "--user=root",
                "--pid-file=",
                "--address=/printer.site.lan/10.9.9.9",
            ])
            .spawn()
            .expect("dnsmasq (dnsmasq-base)");
        Self(child)
    }
}

impl Drop for SiteDns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// One of the two longest here: its name (libtest starts tests in name order) starts it first,
// rather than last after the others.
#[test]
fn a_dns_lookup_finds_services_from_another_host_and_offline() {
    // The agents send other names to the site's resolver.
    let mut fleet = Fleet::start_with(&[&["site=a"], &["site=b"]], |lan| {
        (
            Vec::new(),
            vec!["--dns-upstream".into(), format!("{}:5354", lan.gateway)],
        )
    });
    let _site = SiteDns::start(fleet.lan.gateway);
    let addr_a = fleet.hosts[0].addr.to_string();
    fleet.register(&web_def(
        "web",
        r#"{"containerPort": 80, "hostPort": 8080}"#,
        1,
    ));
    fleet.register(&web_def("api", r#"{"containerPort": 80}"#, 1));
    fleet.register(CLIENT);
    let on = |site: &str| {
        format!(
            r#""placementConstraints": [{{"type": "memberOf", "expression": "attribute:site == {site}"}}]"#
        )
    };
    service(
        &fleet,
        &format!(
            r#"{{"serviceName": "web", "taskDefinition": "web", "desiredCount": 1, {},
                "discovery": {{"namespace": "shop"}}}}"#,
            on("a")
        ),
    );
    service(
        &fleet,
        &format!(
            r#"{{"serviceName": "api", "taskDefinition": "api", "desiredCount": 2, {},
                "discovery": {{"namespace": "shop"}}}}"#,
            on("a")
        ),
    );
    wait("web and api registered", Duration::from_secs(60), || {
        endpoints(&fleet, "web").endpoints.len() == 1
            && endpoints(&fleet, "api").endpoints.len() == 2
    });
    // The client starts once the registry is on its node: its environment has the services.
    service(
        &fleet,
        &format!(
            r#"{{"serviceName": "client", "taskDefinition": "client", "desiredCount": 1, {},
                "discovery": {{"namespace": "shop", "containerPort": 9}}}}"#,
            on("b")
        ),
    );
    let mut client = String::new();
    wait("client running", Duration::from_secs(60), || {
        client = tasks_of(&fleet, "client")
            .first()
            .map(|t| format!("{}-0", t.id))
            .unwrap_or_default();
        !client.is_empty()
    });
    let mut logs = String::new();
    wait(
        "client printed its environment",
        Duration::from_secs(30),
        || {
            let id = client.trim_end_matches("-0");
            logs = String::from_utf8_lossy(&fleet.cp.flotilla(&["logs", id]).stdout).into_owned();
            logs.contains("WEB=")
        },
    );
    assert!(
        logs.contains("WEB=web.shop.flotilla.internal:8080"),
        "{logs}"
    );
    assert!(logs.contains("nameserver 127.0.0.11"), "{logs}");
    assert!(
        logs.contains("search shop.flotilla.internal flotilla.internal"),
        "{logs}"
    );

    // By name, from a container on host B, to the task on host A (A record: A's address).
    let (ok, out) = exec(&fleet, 1, &client, "nslookup web.shop.flotilla.internal");
    assert!(ok && out.contains(&addr_a), "{out}");
    let (ok, page) = exec(&fleet, 1, &client, "wget -q -O - http://web:8080/");
    assert!(ok && !page.trim().is_empty(), "{page}");
    // SRV: each api task's host port on host A.
    let api = endpoints(&fleet, "api");
    let ports: BTreeSet<u16> = api
        .endpoints
        .iter()
        .map(|e| e.port.expect("port"))
        .collect();
    let (ok, srv) = exec(
        &fleet,
        1,
        &client,
        "nslookup -type=srv api.shop.flotilla.internal",
    );
    assert!(ok, "{srv}");
    for p in &ports {
        assert!(srv.contains(&format!(" {p} ")), "port {p} not in {srv}");
    }
    for e in &api.endpoints {
        let (ok, page) = exec(
            &fleet,
            1,
            &client,
            &format!(
                "wget -q -O - http://{}:{}/",
                e.address,
                e.port.expect("port")
            ),
        );
        assert!(ok && !page.trim().is_empty(), "{e:?}: {page}");
    }
    // The SRV targets are the tasks' names, on host A's address.
    for e in &api.endpoints {
        let name = api.task_fqdn(&e.task);
        assert_eq!(name, format!("{}.api.shop.flotilla.internal", e.task));
        assert!(srv.contains(&name), "{name} not in {srv}");
        let (ok, out) = exec(&fleet, 1, &client, &format!("nslookup {name}"));
        assert!(ok && out.contains(&addr_a), "{out}");
    }
    // Names outside the cluster domain go to the node's resolvers (here the site's); unknown
    // ones of the domain are refused at once.
    // (busybox asks A and AAAA; this resolver knows only the A record.)
    let (_, out) = exec(&fleet, 1, &client, "nslookup printer.site.lan");
    assert!(out.contains("Address: 10.9.9.9"), "{out}");
    let (ok, out) = exec(&fleet, 1, &client, "nslookup nope.shop.flotilla.internal");
    assert!(!ok || out.contains("NXDOMAIN"), "{out}");

    // An api task that fails its health check leaves the answers.
    let sick = api.endpoints[0].task.clone();
    let sick_port = api.endpoints[0].port.expect("port");
    let (ok, out) = exec(&fleet, 0, &format!("{sick}-0"), "echo > /www/sick");
    assert!(ok, "{out}");
    let marked = Instant::now();
    wait(
        "the sick task left the SRV answers",
        Duration::from_secs(30),
        || {
            let (_, srv) = exec(
                &fleet,
                1,
                &client,
                "nslookup -type=srv api.shop.flotilla.internal",
            );
            !srv.contains(&format!(" {sick_port} "))
        },
    );
    // Health checks every 5 s, one failure: gone within that plus the answers' TTL (5 s).
    assert!(
        marked.elapsed() < Duration::from_secs(15),
        "{:?}",
        marked.elapsed()
    );

    // The control plane goes away; names still resolve from the node's copy, also after the
    // agent restarts.
    fleet.cp.stop();
    let (ok, out) = exec(&fleet, 1, &client, "nslookup web.shop.flotilla.internal");
    assert!(ok && out.contains(&addr_a), "{out}");
    fleet.agents[1].kill();
    fleet.agents[1].run();
    wait(
        "resolving again after the agent restart",
        Duration::from_secs(30),
        || {
            let (ok, out) = exec(&fleet, 1, &client, "nslookup web.shop.flotilla.internal");
            ok && out.contains(&addr_a)
        },
    );
    fleet.cp.restart();
    for a in &fleet.agents {
        a.wait_log("session established", 2, Duration::from_secs(60));
    }
    for s in ["web", "api", "client"] {
        fleet.cp.flotilla_ok(&["service", "rm", s]);
    }
    fleet.finish();
}

#[test]
fn a_vip_spreads_connections_and_drops_stopped_tasks() {
    let fleet = Fleet::start(&[&[], &[]]);
    // A slow check on a loaded machine must not get a task replaced mid-test.
    fleet.register(&web_def_stopping(
        "vipweb",
        r#"{"containerPort": 80}"#,
        3,
        15,
    ));
    fleet.register(CLIENT);
    service(
        &fleet,
        r#"{"serviceName": "vipweb", "taskDefinition": "vipweb", "desiredCount": 3,
            "discovery": {"namespace": "shop", "vip": true}}"#,
    );
    let mut e = endpoints(&fleet, "vipweb");
    wait("three endpoints and a VIP", Duration::from_secs(60), || {
        e = endpoints(&fleet, "vipweb");
        e.vip.is_some() && e.endpoints.len() == 3
    });
    let vip = e.vip.expect("vip");
    let url = format!("http://{vip}:80/");
    // Spread: from host B's own namespace, every one of the three answers.
    let b = &fleet.hosts[1];
    // Each request may be tried up to three times: a lone connection that stalls (seen about
    // once in ten loaded runs, its cause not found yet) must not hide what is checked here —
    // which tasks answer. Three stalls in a row fail the test with everything needed to look.
    let fetch = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let try_once = || {
                    b.command("timeout")
                        .args(["5", "busybox", "wget", "-O", "-", &url])
                        .output()
                        .expect("wget")
                };
                let mut out = try_once();
                for _ in 0..2 {
                    if out.status.success() {
                        break;
                    }
                    out = try_once();
                }
                if !out.status.success() {
                    let mut why = String::new();
                    for h in &fleet.hosts {
                        let o = h.command("nft").args(["list", "ruleset"]).output();
                        let rules = o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                        why.push_str(&format!("{}:\n{}\n", h.netns, rules.unwrap_or_default()));
                    }
                    for a in &fleet.agents {
                        why.push_str(&a.log());
                    }
                    why.push_str(&format!("{:#?}\n", fleet.cp.tasks()));
                    why.push_str(&format!("{:#?}\n", fleet.cp.nodes()));
                    panic!(
                        "{url}: {}\nendpoints: {:#?}\ntasks: {}\nevents:\n{}\n{why}",
                        String::from_utf8_lossy(&out.stderr),
                        endpoints(&fleet, "vipweb"),
                        fleet.cp.flotilla_ok(&["task", "ls"]),
                        fleet.cp.flotilla_ok(&["events", "--limit", "200"])
                    );
                }
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect()
    };
    // The nodes' rules follow the registry within a service round and a push.
    wait("the VIP answers", Duration::from_secs(30), || {
        b.command("timeout")
            .args(["5", "busybox", "wget", "-q", "-O", "-", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let mut seen = BTreeSet::new();
    let start = Instant::now();
    while seen.len() < 3 {
        seen.extend(fetch(10));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {seen:?} answered on {vip}"
        );
    }
    // From a bridge container too, by the service's name (A record: the VIP).
    let client: Vec<TaskInfo> =
        fleet
            .cp
            .flotilla_json(&["task", "run", "client", "--node", &fleet.ids[1]]);
    let client = format!("{}-0", client[0].id);
    wait("client container up", Duration::from_secs(60), || {
        exec(&fleet, 1, &client, "true").0
    });
    let (ok, page) = exec(
        &fleet,
        1,
        &client,
        "wget -q -O - http://vipweb.shop.flotilla.internal/",
    );
    assert!(ok && seen.contains(page.trim()), "{page}");

    // One task stops (the service is scaled down): no new connection reaches it.
    let node_of = |t: &TaskInfo| {
        t.node
            .as_deref()
            .and_then(|n| fleet.index_of(n))
            .expect("a fleet node")
    };
    let names: Vec<(String, String)> = tasks_of(&fleet, "vipweb")
        .iter()
        .map(|t| {
            let (_, h) = exec(&fleet, node_of(t), &format!("{}-0", t.id), "hostname");
            (t.id.clone(), h.trim().to_string())
        })
        .collect();
    assert_eq!(
        names
            .iter()
            .map(|(_, h)| h.clone())
            .collect::<BTreeSet<_>>(),
        seen
    );
    // The service's own tasks, started with it before any of them ran, got its VIP and the
    // VIP's port, as every task of the namespace does.
    for t in tasks_of(&fleet, "vipweb") {
        let (ok, env) = exec(
            &fleet,
            node_of(&t),
            &format!("{}-0", t.id),
            "echo $VIPWEB_SERVICE_HOST:$VIPWEB_SERVICE_PORT",
        );
        assert!(ok && env.trim() == format!("{vip}:80"), "{}: {env}", t.id);
    }
    fleet.cp.flotilla_ok(&["service", "scale", "vipweb", "2"]);
    let mut left = endpoints(&fleet, "vipweb");
    wait("two endpoints", Duration::from_secs(60), || {
        left = endpoints(&fleet, "vipweb");
        left.endpoints.len() == 2
    });
    let kept: BTreeSet<&str> = left.endpoints.iter().map(|e| e.task.as_str()).collect();
    let (stopped, stopped_host) = names
        .iter()
        .find(|(id, _)| !kept.contains(id.as_str()))
        .expect("one task left the endpoints");
    // Every node's table follows the registry (a service round and a push) while the task
    // still drains: from then on no new connection goes there.
    let gone: Vec<String> = e
        .endpoints
        .iter()
        .filter(|x| x.task == *stopped)
        .flat_map(|x| {
            [
                format!("dnat to {}:{}", x.address, x.port.expect("port")),
                format!(
                    "l4proto tcp dnat to {}:80",
                    x.task_address.map(|a| a.to_string()).unwrap_or_default()
                ),
            ]
        })
        .collect();
    assert_eq!(gone.len(), 2, "{e:#?}");
    let propagating = Instant::now();
    wait(
        "every node dropped the stopped backend",
        Duration::from_secs(10),
        || {
            fleet.hosts.iter().all(|h| {
                let o = h
                    .command("nft")
                    .args(["list", "table", "ip", "flotilla"])
                    .output();
                let rules = o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                // VIP backends only: host-port forwards ("dport …") stay while the task drains.
                !rules
                    .unwrap_or_default()
                    .lines()
                    .any(|l| !l.contains("dport") && gone.iter().any(|g| l.contains(g.as_str())))
            })
        },
    );
    assert!(propagating.elapsed() < Duration::from_secs(5));
    // New connections from a task on host B, as a service's clients make them.
    let after: BTreeSet<String> = (0..30)
        .map(|_| {
            let (ok, page) = exec(
                &fleet,
                1,
                &client,
                "wget -q -O - http://vipweb.shop.flotilla.internal/",
            );
            assert!(ok, "{page}");
            page.trim().to_string()
        })
        .collect();
    assert!(
        !after.contains(stopped_host),
        "stopped task {stopped} still answered: {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    fleet
        .cp
        .flotilla_ok(&["task", "stop", client.trim_end_matches("-0")]);
    fleet.cp.flotilla_ok(&["service", "rm", "vipweb"]);
    fleet.finish();
}

/// As in `flotilla dev`, the node's address is `127.0.0.1`: a bridge task still reaches a
/// service of another namespace by its DNS name — also as busybox's resolver asks for
/// `api.other` — and by its VIP.
#[test]
fn a_node_on_loopback_hands_out_addresses_its_bridge_tasks_reach() {
    let fleet = Fleet::start_with(&[&[]], |_| {
        (Vec::new(), vec!["--address".into(), "127.0.0.1".into()])
    });
    fleet.register(&web_def(
        "api",
        r#"{"containerPort": 80, "hostPort": 18085}"#,
        3,
    ));
    fleet.register(&web_def("vipapi", r#"{"containerPort": 80}"#, 3));
    fleet.register(CLIENT);
    service(
        &fleet,
        r#"{"serviceName": "api", "taskDefinition": "api", "desiredCount": 1,
            "discovery": {"namespace": "other"}}"#,
    );
    service(
        &fleet,
        r#"{"serviceName": "vipapi", "taskDefinition": "vipapi", "desiredCount": 1,
            "discovery": {"namespace": "other", "vip": true}}"#,
    );
    let mut api = endpoints(&fleet, "api");
    let mut vip = endpoints(&fleet, "vipapi");
    wait(
        "both services have endpoints",
        Duration::from_secs(60),
        || {
            api = endpoints(&fleet, "api");
            vip = endpoints(&fleet, "vipapi");
            api.endpoints.len() == 1 && vip.endpoints.len() == 1 && vip.vip.is_some()
        },
    );
    assert_eq!(api.endpoints[0].address, std::net::Ipv4Addr::LOCALHOST);
    let client: Vec<TaskInfo> =
        fleet
            .cp
            .flotilla_json(&["task", "run", "client", "--node", &fleet.ids[0]]);
    let client = format!("{}-0", client[0].id);
    wait("client container up", Duration::from_secs(60), || {
        exec(&fleet, 0, &client, "true").0
    });
    for url in [
        "http://api.other.flotilla.internal:18085/",
        "http://api.other:18085/",
    ] {
        let mut last = (false, String::new());
        wait(&format!("{url} answers"), Duration::from_secs(20), || {
            last = exec(&fleet, 0, &client, &format!("wget -q -O - {url}"));
            last.0
        });
        assert!(!last.1.trim().is_empty(), "{url}: {last:?}");
    }
    let (ok, out) = exec(&fleet, 0, &client, "nslookup api.other");
    assert!(
        ok && out.contains("api.other") && !out.lines().any(|l| l.trim() == "Address: 127.0.0.1"),
        "{out}"
    );
    let vip_addr = vip.vip.expect("vip");
    for url in [
        format!("http://{vip_addr}/"),
        "http://vipapi.other/".to_string(),
    ] {
        let mut last = (false, String::new());
        wait(&format!("{url} answers"), Duration::from_secs(20), || {
            last = exec(&fleet, 0, &client, &format!("wget -q -O - {url}"));
            last.0
        });
    }
    for s in ["api", "vipapi"] {
        fleet.cp.flotilla_ok(&["service", "rm", s]);
    }
    fleet
        .cp
        .flotilla_ok(&["task", "stop", client.trim_end_matches("-0")]);
    fleet.finish();
}

/// The resolvers a container image may ship, built once for this run into a temporary
/// directory (removed with it): a C program calling `getaddrinfo` / `res_query` against glibc
/// (dynamic, with `getent` beside it) and against musl (`musl-gcc -static`, Debian's
/// musl-tools), and a Go program with Go's own resolver (`CGO_ENABLED=0`, Debian's golang-go).
struct Clients {
    dir: tempfile::TempDir,
}

impl Clients {
    fn build() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::write(d.join("probe.c"), include_str!("../fixtures/dns/probe.c")).expect("c");
        std::fs::write(d.join("probe.go"), include_str!("../fixtures/dns/probe.go")).expect("go");
        let run = |what: &str, cmd: &mut std::process::Command| {
            let out = cmd.current_dir(d).output().unwrap_or_else(|e| {
                panic!("{what}: {e} (scripts/install-deps.sh installs build-essential, musl-tools and golang-go)")
            });
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            "gcc",
            std::process::Command::new("gcc").args(["-O2", "-o", "probe-glibc", "probe.c"]),
        );
        run(
            "musl-gcc",
            std::process::Command::new("musl-gcc").args([
                "-static",
                "-O2",
                "-o",
                "probe-musl",
                "probe.c",
            ]),
        );
        run(
            "go build",
            std::process::Command::new("go")
                .args(["build", "-trimpath", "-o", "probe-go", "probe.go"])
                .env("CGO_ENABLED", "0")
                .env("GOCACHE", d.join("gocache"))
                .env("GOPATH", d.join("gopath"))
                .env("GO111MODULE", "off")
                .env("GOFLAGS", ""),
        );
        // Go's cache is written read-only; the directory must go with the test.
        run(
            "chmod",
            std::process::Command::new("chmod").args(["-R", "u+w", "."]),
        );
        Self { dir }
    }

    /// Imports an image of busybox with the clients into `node` as `name`: `/probe-glibc`
    /// (and `/bin/getent`) with their libraries, `/probe-musl`, `/probe-go`.
    fn import(&self, node: &flotilla_tests::node::Node, name: &str) {
        use flotilla_tests::image::{
            busybox_image, host_binaries_layer, write_layout, Compression,
        };
        let d = self.dir.path();
        let getent = std::path::Path::new("/usr/bin/getent");
        let layer = host_binaries_layer(&[
            (&d.join("probe-glibc"), "probe-glibc"),
            (getent, "bin/getent"),
            (&d.join("probe-musl"), "probe-musl"),
            (&d.join("probe-go"), "probe-go"),
        ])
        .expect("client layer");
        let mut spec = busybox_image(flotilla_tests::host_arch());
        spec.layers.push((layer, Compression::Gzip));
        let layout = d.join(format!("layout-{}", flotilla_tests::unique()));
        write_layout(&layout, "latest", &spec).expect("layout");
        let out = node.ctr(&[
            "image",
            "import",
            layout.to_str().expect("utf-8"),
            "--name",
            name,
        ]);
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&layout).expect("remove layout");
    }
}

/// musl's version (`1.2.3` …), as its dynamic loader (Debian's musl package) says.
fn musl_version() -> (u32, u32, u32) {
    let loader = format!("/usr/lib/{}-linux-musl/libc.so", std::env::consts::ARCH);
    let out = std::process::Command::new(&loader)
        .output()
        .unwrap_or_else(|e| panic!("{loader}: {e} (Debian's musl, with musl-tools)"));
    let text = String::from_utf8_lossy(&out.stderr);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Version "))
        .unwrap_or_else(|| panic!("no version from {loader}: {text}"));
    let n: Vec<u32> = v
        .trim()
        .split('.')
        .map(|x| x.parse().expect("number"))
        .collect();
    (n[0], n[1], n[2])
}

/// How many A records of `name` fit a 512-byte answer beside its header and question.
fn a_records_in_512(name: &str) -> usize {
    let question = name.split('.').map(|l| l.len() + 1).sum::<usize>() + 1 + 4;
    (512 - 12 - question) / 16
}

/// The `ADDRESS` lines of a probe's output.
fn addresses(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ADDRESS "))
        .map(str::to_string)
        .collect()
}

/// The number a probe printed after `key `.
fn count(out: &str, key: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// Answers larger than 512 bytes reach the resolvers of real images in a bridge task: an
/// outside name with 100 A records (1.6 KB, over the 1232 bytes Go's EDNS asks for) and one
/// with 50 (830 bytes: within EDNS, over 512), and the SRV records of a cluster service of
/// ten tasks (about 700 bytes). Clients that retry over TCP after TC — glibc (`getent`,
/// `getaddrinfo`, `res_query`), Go (EDNS 1232, then TCP) and musl from 1.2.4 — get every record;
/// those that ask only over UDP (busybox's `nslookup`, musl before 1.2.4, as Debian 12 ships
/// it) get the whole records that fit in 512 bytes, never an empty or broken answer.
#[test]
fn real_resolvers_get_large_answers_whole_over_tcp_and_what_fits_over_udp() {
    let clients = Clients::build();
    let fleet = Fleet::start_with(&[&[]], |lan| {
        (
            Vec::new(),
            vec!["--dns-upstream".into(), format!("{}:5354", lan.gateway)],
        )
    });
    clients.import(&fleet.nodes[0], "test/dnsclients:latest");
    // The site's resolver knows big.site.lan (100 addresses) and mid.site.lan (50).
    let hosts = clients.dir.path().join("site.hosts");
    let big: BTreeSet<String> = (0..100)
        .map(|i| format!("10.9.{}.{}", i / 50, i % 50 + 1))
        .collect();
    let mid: BTreeSet<String> = (0..50).map(|i| format!("10.8.0.{}", i + 1)).collect();
    let mut text = String::new();
    for a in &big {
        text.push_str(&format!("{a} big.site.lan\n"));
    }
    for a in &mid {
        text.push_str(&format!("{a} mid.site.lan\n"));
    }
    std::fs::write(&hosts, text).expect("hosts");
    let _site = SiteDns::start_with(
        fleet.lan.gateway,
        &[&format!("--addn-hosts={}", hosts.display())],
    );

    fleet.register(
        r#"{
  "family": "many",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 16, "stopTimeout": 2,
    "portMappings": [{"containerPort": 80}],
    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
  }]
}"#,
    );
    fleet.register(
        r#"{
  "family": "dnsclient",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "main", "image": "test/dnsclients:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
  }]
}"#,
    );
    service(
        &fleet,
        r#"{"serviceName": "many", "taskDefinition": "many", "desiredCount": 10,
            "discovery": {"namespace": "shop"}}"#,
    );
    let client: Vec<TaskInfo> =
        fleet
            .cp
            .flotilla_json(&["task", "run", "dnsclient", "--node", &fleet.ids[0]]);
    let client = format!("{}-0", client[0].id);
    wait("client container up", Duration::from_secs(60), || {
        exec(&fleet, 0, &client, "true").0
    });
    let run = |script: &str| {
        let started = Instant::now();
        let (ok, out) = exec(&fleet, 0, &client, script);
        assert!(ok, "{script}: {out}");
        eprintln!("{script}: {:?}", started.elapsed());
        out
    };

    // Outside names, through the node's resolver to the site's.
    let musl_tcp = musl_version() >= (1, 2, 4);
    for (name, all) in [("big.site.lan", &big), ("mid.site.lan", &mid)] {
        let udp_only = a_records_in_512(name);
        let out = run(&format!("getent ahostsv4 {name}"));
        let got: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        assert_eq!(&got, all, "glibc getent {name}: {out}");
        for probe in ["/probe-glibc", "/probe-go"] {
            let out = run(&format!("{probe} host {name}"));
            assert_eq!(&addresses(&out), all, "{probe} {name}: {out}");
        }
        // musl's getaddrinfo keeps at most 48 addresses (MAXADDRS).
        let out = run(&format!("/probe-musl host {name}"));
        let got = addresses(&out);
        let want = if musl_tcp {
            all.len().min(48)
        } else {
            udp_only
        };
        assert!(got.is_subset(all), "musl {name}: {out}");
        assert_eq!(got.len(), want, "musl {name}: {out}");
        let out = run(&format!("nslookup -type=a {name}"));
        let got: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Address: "))
            .filter(|a| !a.starts_with("127.0.0.11"))
            .map(str::to_string)
            .collect();
        assert!(got.is_subset(all), "busybox {name}: {out}");
        assert_eq!(got.len(), udp_only, "busybox {name}: {out}");
    }

    // A cluster name: the SRV records of ten tasks.
    wait("ten endpoints", Duration::from_secs(90), || {
        endpoints(&fleet, "many").endpoints.len() == 10
    });
    let name = "many.shop.flotilla.internal";
    // The node's copy follows the control plane's registry within a push.
    let mut last = (false, String::new());
    let until = Instant::now() + Duration::from_secs(30);
    while !(last.0 && last.1.contains("SRV 10")) {
        assert!(
            Instant::now() < until,
            "the node's resolver never gave ten SRV records: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        last = exec(&fleet, 0, &client, &format!("/probe-glibc srv {name}"));
    }
    for probe in ["/probe-glibc", "/probe-go"] {
        let out = run(&format!("{probe} srv {name}"));
        assert_eq!(count(&out, "SRV"), 10, "{probe}: {out}");
    }
    let out = run(&format!("/probe-musl srv {name}"));
    let musl_srv = count(&out, "SRV");
    if musl_tcp {
        assert_eq!(musl_srv, 10, "musl: {out}");
    } else {
        assert_eq!(count(&out, "TC"), 1, "musl: {out}");
        assert!((1..10).contains(&musl_srv), "musl: {out}");
    }
    let out = run(&format!("nslookup -type=srv {name}"));
    let ports: BTreeSet<u16> = endpoints(&fleet, "many")
        .endpoints
        .iter()
        .map(|e| e.port.expect("port"))
        .collect();
    let listed: Vec<&str> = out.lines().filter(|l| l.contains("service =")).collect();
    assert!((1..10).contains(&listed.len()), "busybox: {out}");
    for l in &listed {
        assert!(
            ports.iter().any(|p| l.contains(&format!(" {p} "))),
            "busybox: {l} in {out}"
        );
    }
    if !musl_tcp {
        assert_eq!(listed.len(), musl_srv, "busybox and musl: {out}");
    }

    fleet
        .cp
        .flotilla_ok(&["task", "stop", client.trim_end_matches("-0")]);
    fleet.cp.flotilla_ok(&["service", "rm", "many"]);
    fleet.finish();
}
