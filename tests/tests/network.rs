//! Task networking on real hosts (network namespaces on a test LAN) with real containers:
//! bridge tasks reached through static and dynamic host ports from another host, outbound NAT,
//! port conflicts refused at placement, containers of a task sharing its namespace, `host` and
//! `none` as named, awsvpc tasks with their own LAN address, a bridge task reaching itself
//! through its host ports and its service's VIP (hairpin), the table following
//! `bridge-nf-call-iptables` changed while tasks run — and nothing left on a host once its
//! tasks are gone.

use std::process::Output;
use std::time::Duration;

use flotilla_api::ops::{TaskInfo, TaskRun};
use flotilla_api::taskdef::{NetworkMode, Protocol};
use flotilla_api::tasks::{TaskNetwork, TaskState};
use flotilla_tests::cluster::Fleet;
use flotilla_tests::netns::Host;
use flotilla_tests::wait;

/// busybox httpd on port `port` answering with the container's host name.
fn httpd(port: u16) -> String {
    format!(
        r#"["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p {port} -h /www"]"#
    )
}

fn web_def(family: &str, mode: &str, mappings: &str, port: u16) -> String {
    web_def_running(family, mode, mappings, &httpd(port))
}

/// A task definition of one container named `web` running `cmd` (JSON).
fn web_def_running(family: &str, mode: &str, mappings: &str, cmd: &str) -> String {
    format!(
        r#"{{
  "family": "{family}",
  "networkMode": "{mode}",
  "containerDefinitions": [{{
    "name": "web", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "portMappings": {mappings},
    "command": {cmd}
  }}]
}}"#
    )
}

/// Runs one task of `family` on node `node`; its id.
fn run_on(fleet: &Fleet, family: &str, node: usize) -> String {
    let placed = fleet.cp.run_task(&TaskRun {
        node: Some(fleet.ids[node].clone()),
        ..TaskRun::new(family)
    });
    placed.into_iter().next().expect("one task").id
}

/// Waits for task `id` to run with its network; the task and its network as the control
/// plane shows them.
fn running(fleet: &Fleet, id: &str) -> (TaskInfo, TaskNetwork) {
    let mut last = fleet.cp.task(id);
    wait(
        &format!("task {id} running"),
        Duration::from_secs(60),
        || {
            last = fleet.cp.task(id);
            assert_ne!(last.state, TaskState::Stopped, "{last:#?}");
            last.state == TaskState::Running && last.network.is_some()
        },
    );
    let net = last.network.clone().expect("network");
    (last, net)
}

fn stop_and_wait(fleet: &Fleet, ids: &[&str]) {
    let mut args = vec!["task", "stop"];
    args.extend(ids);
    fleet.cp.flotilla_ok(&args);
    for id in ids {
        wait(
            &format!("task {id} stopped"),
            Duration::from_secs(60),
            || fleet.cp.task(id).state == TaskState::Stopped,
        );
    }
}

/// `busybox wget -qO- URL` run on `host`, for at most 5 s (busybox 1.35's own `-T`
/// crashes).
fn fetch(host: &Host, url: &str) -> Output {
    host.command("timeout")
        .args(["5", "busybox", "wget", "-q", "-O", "-", url])
        .output()
        .expect("busybox wget")
}

/// A process of a test, killed and reaped when dropped (also when the test panics).
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`fetch`] until it succeeds, for at most 15 s: a task counts as RUNNING once its container
/// started, which may be before its server listens (on a busy machine, seconds before).
fn fetch_ok(host: &Host, url: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut out = fetch(host, url);
    while !out.status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = fetch(host, url);
    }
    assert!(
        out.status.success(),
        "wget {url} from {}: {}",
        host.netns,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn text(host: &Host, program: &str, args: &[&str]) -> String {
    let out = host.command(program).args(args).output().expect(program);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the tasks' networking leaves on a host: task links (veth ends, the bridge, macvlans),
/// the nftables table, namespace mounts.
fn leftovers(host: &Host, data: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for line in text(host, "ip", &["-o", "link", "show"]).lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim();
        if name.starts_with("fl") {
            out.push(format!("link {name}"));
        }
    }
    if text(host, "nft", &["list", "tables"]).contains("flotilla") {
        out.push("nft table flotilla".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let netns = data.join("netns");
    for m in mounts.lines() {
        let point = m.split(' ').nth(4).unwrap_or_default();
        if point.starts_with(&format!("{}/", netns.display())) {
            out.push(format!("mount {point}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&netns) {
        for e in entries.flatten() {
            out.push(format!("file {}", e.path().display()));
        }
    }
    out
}

#[test]
fn bridge_tasks_publish_ports_nat_out_and_leave_nothing_behind() {
    let fleet = Fleet::start(&[&[], &[]]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    fleet.register(&web_def(
        "web",
        "bridge",
        r#"[{"containerPort": 80, "hostPort": 8080}]"#,
        80,
    ));
    fleet.register(&web_def(
        "dyn",
        "bridge",
        r#"[{"containerPort": 80, "hostPort": 0}, {"containerPort": 81, "protocol": "udp"}]"#,
        80,
    ));
    // Two containers, one namespace: the second reaches the first on localhost.
    fleet.register(
        r#"{
  "family": "pair",
  "networkMode": "bridge",
  "containerDefinitions": [
    {"name": "server", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
     "command": ["sh", "-c", "mkdir -p /www && echo shared > /www/index.html && exec httpd -f -p 9000 -h /www"]},
    {"name": "client", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
     "essential": false,
     "command": ["sh", "-c", "until wget -q -O - http://127.0.0.1:9000/; do sleep 0.2; done; sleep 600"]}
  ]
}"#,
    );

    let web_id = run_on(&fleet, "web", 0);
    let (web, net) = running(&fleet, &web_id);
    assert_eq!(net.mode, NetworkMode::Bridge, "{web:#?}");
    let addr = net.address.expect("address");
    assert_eq!(addr.octets()[..2], [10, 42], "{web:#?}");
    assert_eq!(net.bindings[0].host_port, 8080, "{web:#?}");
    assert_eq!(net.bindings[0].container_port, 80, "{web:#?}");

    // From the other host, on host A's address.
    let page = fetch_ok(b, &format!("http://{}:8080/", a.addr));
    assert!(!page.is_empty());
    // On host A itself, through 127.0.0.1 and through its own address.
    assert_eq!(fetch_ok(a, "http://127.0.0.1:8080/"), page);
    assert_eq!(fetch_ok(a, &format!("http://{}:8080/", a.addr)), page);

    // A second task asking for host port 8080 on the same node is refused at placement.
    let out = fleet
        .cp
        .flotilla(&["task", "run", "web", "--node", &fleet.ids[0]]);
    assert!(!out.status.success(), "a second 8080 was placed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("8080"), "{err}");
    // Another node has its own 8080.
    let web_b_id = run_on(&fleet, "web", 1);
    let addr_b = running(&fleet, &web_b_id).1.address.expect("address");
    assert_ne!(addr_b, addr, "bridge subnets overlap across nodes");
    assert_ne!(
        addr_b.octets()[..3],
        addr.octets()[..3],
        "both nodes got the same bridge subnet"
    );
    assert!(!fetch_ok(a, &format!("http://{}:8080/", b.addr)).is_empty());

    // Dynamic host ports: picked from the range, reported, reachable.
    let d_id = run_on(&fleet, "dyn", 0);
    let (d, net) = running(&fleet, &d_id);
    let bindings = &net.bindings;
    assert_eq!(bindings.len(), 2, "{d:#?}");
    let tcp = bindings
        .iter()
        .find(|b| b.protocol == Protocol::Tcp)
        .expect("tcp binding");
    let port = tcp.host_port;
    assert!((49153..=65535).contains(&port), "{d:#?}");
    let udp = bindings
        .iter()
        .find(|b| b.protocol == Protocol::Udp)
        .expect("udp binding");
    assert_ne!(udp.host_port, 0, "{d:#?}");
    assert!(!fetch_ok(b, &format!("http://{}:{port}/", a.addr)).is_empty());

    // Outbound: a task reaches the LAN (the control plane's port on the LAN gateway) through
    // the node's address.
    let cp_port = fleet.cp.addr.port();
    let probe = fleet.nodes[0].ctr(&[
        "exec",
        &format!("{d_id}-0"),
        "--",
        "sh",
        "-c",
        &format!("nc -w 5 {} {cp_port} </dev/null", fleet.lan.gateway),
    ]);
    assert!(
        probe.status.success(),
        "no way out from a bridge task: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // Containers of one task share its namespace.
    let pair_id = run_on(&fleet, "pair", 0);
    running(&fleet, &pair_id);
    fleet.nodes[0].wait_for(
        "client reached server on localhost",
        Duration::from_secs(30),
        || {
            let logs = fleet.cp.flotilla(&["logs", &pair_id, "-c", "client"]);
            String::from_utf8_lossy(&logs.stdout).contains("shared")
        },
    );

    // Host A while its tasks run: a bridge, one veth per task, the table.
    let during = leftovers(a, &fleet.nodes[0].data);
    assert!(
        during.iter().any(|l| l == "nft table flotilla"),
        "{during:?}"
    );
    assert_eq!(
        during.iter().filter(|l| l.starts_with("mount ")).count(),
        3,
        "{during:?}"
    );

    stop_and_wait(&fleet, &[&web_id, &d_id, &pair_id, &web_b_id]);
    for (i, host) in fleet.hosts.iter().enumerate() {
        let data = fleet.nodes[i].data.clone();
        wait("task networks removed", Duration::from_secs(30), || {
            leftovers(host, &data).is_empty()
        });
    }
    // The host port is free again.
    assert!(!fetch(b, &format!("http://{}:8080/", a.addr))
        .status
        .success());
    fleet.finish();
}

#[test]
fn host_and_none_modes_behave_as_named() {
    let fleet = Fleet::start(&[&[], &[]]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    fleet.register(&web_def(
        "hostweb",
        "host",
        r#"[{"containerPort": 18080}]"#,
        18080,
    ));
    let gw = fleet.lan.gateway;
    fleet.register(&format!(
        r#"{{
  "family": "sealed",
  "networkMode": "none",
  "containerDefinitions": [{{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sh", "-c", "ip -o link; ip route; timeout 3 wget http://{gw}:{port}/ || echo NO-ROUTE-OUT; sleep 600"]
  }}]
}}"#,
        port = fleet.cp.addr.port()
    ));
    let h_id = run_on(&fleet, "hostweb", 0);
    let (_, net) = running(&fleet, &h_id);
    assert_eq!(net.mode, NetworkMode::Host);
    assert_eq!(net.bindings[0].host_port, 18080);
    assert!(!fetch_ok(b, &format!("http://{}:18080/", a.addr)).is_empty());

    let n_id = run_on(&fleet, "sealed", 0);
    running(&fleet, &n_id);
    let mut logs = String::new();
    wait(
        "the sealed task tried its way out",
        Duration::from_secs(30),
        || {
            let out = fleet.cp.flotilla(&["logs", &n_id]);
            logs = String::from_utf8_lossy(&out.stdout).into_owned();
            logs.contains("NO-ROUTE-OUT")
        },
    );
    assert!(logs.contains("lo:"), "{logs}");
    assert!(!logs.contains("eth0"), "{logs}");
    assert!(!logs.contains("default"), "{logs}");

    stop_and_wait(&fleet, &[&h_id, &n_id]);
    let data = fleet.nodes[0].data.clone();
    wait("task networks removed", Duration::from_secs(30), || {
        leftovers(a, &data).is_empty()
    });
    fleet.finish();
}

#[test]
fn awsvpc_tasks_get_lan_addresses_released_on_stop() {
    let fleet = Fleet::start_with(&[&[], &[]], |lan| {
        let g = lan.gateway.octets();
        let base = format!("{}.{}.{}", g[0], g[1], g[2]);
        let cp = vec![
            "--awsvpc-subnet".into(),
            format!("{base}.0/24"),
            "--awsvpc-range".into(),
            format!("{base}.100-{base}.111"),
            "--awsvpc-gateway".into(),
            lan.gateway.to_string(),
        ];
        (cp, Vec::new())
    });
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    // httpd as PID 1 ignores SIGTERM: under a shell that ends at it, each of the many stops
    // below is over at once rather than at the stopTimeout's SIGKILL.
    fleet.register(&web_def_running(
        "vpc",
        "awsvpc",
        r#"[{"containerPort": 80}]"#,
        r#"["sh", "-c", "mkdir -p /www && hostname > /www/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]"#,
    ));
    let id = run_on(&fleet, "vpc", 0);
    let (t, net) = running(&fleet, &id);
    let addr = net.address.expect("address").to_string();
    assert!(addr.ends_with(".100"), "{t:#?}");
    // Reached from host B directly on its own address, like a machine on the LAN.
    assert!(!fetch_ok(b, &format!("http://{addr}/")).is_empty());
    stop_and_wait(&fleet, &[&id]);
    assert!(!fetch(b, &format!("http://{addr}/")).status.success());

    // 50 starts and stops, ten at a time across both hosts (the pool has 12 addresses):
    // no address is ever held twice, and nothing is left.
    for round in 0..5 {
        let placed = fleet.cp.run_task(&TaskRun {
            count: 10,
            ..TaskRun::new("vpc")
        });
        let ids: Vec<String> = placed.into_iter().map(|t| t.id).collect();
        let mut addrs = std::collections::BTreeSet::new();
        for id in &ids {
            let addr = running(&fleet, id).1.address.expect("address");
            assert!(addrs.insert(addr), "round {round}: {addr} handed out twice");
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        stop_and_wait(&fleet, &ids);
    }
    for (i, host) in fleet.hosts.iter().enumerate() {
        let data = fleet.nodes[i].data.clone();
        wait("task networks removed", Duration::from_secs(30), || {
            leftovers(host, &data).is_empty()
        });
        // Only the host's own address is left on its LAN link.
        let addrs = text(host, "ip", &["-o", "-4", "addr", "show"]);
        assert_eq!(addrs.lines().count(), 2, "{addrs}");
    }
    let _ = a;
    fleet.finish();
}

/// What a container prints about its name files: each file between markers, then
/// `hostname -i`.
const NAME_FILES: &str = "for f in /etc/hosts /etc/hostname /etc/resolv.conf; do echo \"== $f\"; cat $f || echo MISSING; done; echo \"== ip\"; hostname -i || echo NONE; echo END-NAMES";

/// The text of `file` in what [`NAME_FILES`] printed.
fn section<'a>(out: &'a str, file: &str) -> &'a str {
    let start = out
        .find(&format!("== {file}\n"))
        .unwrap_or_else(|| panic!("{file} in {out}"));
    let rest = &out[start + file.len() + 4..];
    let end = rest.find("== ").or(rest.find("END-NAMES"));
    &rest[..end.unwrap_or(rest.len())]
}

/// Docker gives every container `/etc/hosts` (localhost and its own address with its hostname),
/// `/etc/hostname` and `/etc/resolv.conf`, whatever its network: so does a task in each mode.
#[test]
fn every_network_mode_gets_hosts_hostname_and_resolv_conf() {
    let fleet = Fleet::start_with(&[&[]], |lan| {
        let g = lan.gateway.octets();
        let base = format!("{}.{}.{}", g[0], g[1], g[2]);
        let cp = vec![
            "--awsvpc-subnet".into(),
            format!("{base}.0/24"),
            "--awsvpc-range".into(),
            format!("{base}.100-{base}.101"),
            "--awsvpc-gateway".into(),
            lan.gateway.to_string(),
        ];
        (cp, Vec::new())
    });
    for mode in ["bridge", "awsvpc", "host", "none"] {
        fleet.register(
            &format!(
                r#"{{
  "family": "names-{mode}",
  "networkMode": "{mode}",
  "containerDefinitions": [{{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "hostname": "{host}",
    "command": {cmd}
  }}]
}}"#,
                cmd = serde_json::json!(["sh", "-c", format!("{NAME_FILES}; sleep 600")]),
                // ECS allows a hostname only outside awsvpc.
                host = if mode == "awsvpc" { "" } else { "named-task" },
            )
            .replace(r#""hostname": "","#, ""),
        );
    }
    let mut ids = Vec::new();
    for mode in ["bridge", "awsvpc", "host", "none"] {
        let id = run_on(&fleet, &format!("names-{mode}"), 0);
        let (_, net) = running(&fleet, &id);
        let mut logs = String::new();
        wait(
            &format!("the {mode} task printed its name files"),
            Duration::from_secs(30),
            || {
                let out = fleet.cp.flotilla(&["logs", &id]);
                logs = String::from_utf8_lossy(&out.stdout).into_owned();
                logs.contains("END-NAMES")
            },
        );
        let hosts = section(&logs, "/etc/hosts");
        let hostname = section(&logs, "/etc/hostname").trim().to_string();
        let resolv = section(&logs, "/etc/resolv.conf");
        let ip = section(&logs, "ip").trim().to_string();
        assert!(!logs.contains("MISSING"), "{mode}: {logs}");
        assert!(!hostname.is_empty(), "{mode}: {logs}");
        if mode != "awsvpc" {
            assert_eq!(hostname, "named-task", "{mode}: {logs}");
        }
        assert!(
            hosts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&"127.0.0.1") && f.contains(&"localhost")
            }),
            "{mode}: {logs}"
        );
        assert_ne!(ip, "NONE", "{mode}: hostname -i failed: {logs}");
        match mode {
            "bridge" | "awsvpc" => {
                let addr = net.address.expect("address").to_string();
                assert!(
                    hosts
                        .lines()
                        .any(|l| l.split_whitespace().collect::<Vec<_>>()
                            == [addr.as_str(), hostname.as_str()]),
                    "{mode}: {logs}"
                );
                assert_eq!(ip, addr, "{mode}: {logs}");
                assert!(resolv.contains("nameserver 127.0.0.11"), "{mode}: {logs}");
            }
            _ => {
                assert!(!resolv.contains("127.0.0.11"), "{mode}: {logs}");
            }
        }
        ids.push(id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    stop_and_wait(&fleet, &ids);
    fleet.finish();
}

/// `nodeagent ctr run` gives the same name files with `--net none` and `--net host`.
#[test]
fn ctr_run_gets_name_files_with_net_none_and_host() {
    use flotilla_tests::node::{Node, IMAGE};
    let node = Node::new();
    for net in ["none", "host"] {
        let o = node.ctr(&[
            "run",
            "--rm",
            "--net",
            net,
            "--hostname",
            "ctr-box",
            IMAGE,
            "sh",
            "-c",
            NAME_FILES,
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{net}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.contains("MISSING"), "{net}: {out}");
        assert_eq!(section(&out, "/etc/hostname").trim(), "ctr-box", "{net}");
        assert!(
            section(&out, "/etc/hosts").contains("ctr-box"),
            "{net}: {out}"
        );
        assert_ne!(section(&out, "ip").trim(), "NONE", "{net}: {out}");
    }
    node.assert_clean();
}

/// Waits for task `id` to stop; its stop reason.
fn stop_reason(fleet: &Fleet, id: &str) -> String {
    let mut last = fleet.cp.task(id);
    wait(
        &format!("task {id} stopped"),
        Duration::from_secs(60),
        || {
            last = fleet.cp.task(id);
            last.state == TaskState::Stopped
        },
    );
    last.stop_reason.unwrap_or_default()
}

/// A host port something on the node already holds is refused with its holder, and the host
/// service keeps its traffic; ssh's port is never published; a published port is held, so a
/// host process cannot take it later; dynamic ports skip ports in use.
#[test]
fn host_ports_in_use_or_reserved_are_refused_and_dynamic_ones_skip_them() {
    let fleet = Fleet::start_with(&[&[], &[]], |_| {
        (
            Vec::new(),
            vec!["--dynamic-ports".into(), "18090-18092".into()],
        )
    });
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    let www = tempfile::tempdir().expect("tmp");
    std::fs::write(www.path().join("index.html"), "HOST-SERVICE\n").expect("index");
    let www_dir = www.path().to_str().expect("utf-8");
    // Stopped also when the test fails: left running, they would hold the test's output open.
    let _host_service = Stopped(
        a.command("busybox")
            .args(["httpd", "-f", "-p", "18081", "-h", www_dir])
            .spawn()
            .expect("busybox httpd"),
    );
    let _on_dynamic = Stopped(
        a.command("busybox")
            .args(["httpd", "-f", "-p", "18090", "-h", www_dir])
            .spawn()
            .expect("busybox httpd"),
    );
    wait("the host services listen", Duration::from_secs(10), || {
        fetch(b, &format!("http://{}:18081/", a.addr))
            .status
            .success()
            && fetch(b, &format!("http://{}:18090/", a.addr))
                .status
                .success()
    });

    fleet.register(&web_def(
        "taken",
        "bridge",
        r#"[{"containerPort": 80, "hostPort": 18081}]"#,
        80,
    ));
    let id = run_on(&fleet, "taken", 0);
    let reason = stop_reason(&fleet, &id);
    assert!(
        reason.contains("host port 18081/tcp is in use on this node")
            && reason.contains("busybox (pid"),
        "{reason}"
    );
    assert_eq!(
        fetch_ok(b, &format!("http://{}:18081/", a.addr)),
        "HOST-SERVICE"
    );

    fleet.register(&web_def(
        "ssh",
        "bridge",
        r#"[{"containerPort": 22, "hostPort": 22}]"#,
        22,
    ));
    let id = run_on(&fleet, "ssh", 0);
    let reason = stop_reason(&fleet, &id);
    assert!(
        reason.contains("host port 22/tcp is reserved for the node's own ssh"),
        "{reason}"
    );

    // Dynamic: 18090 is in use, so the task gets 18091, and holds it.
    fleet.register(&web_def(
        "dynamic",
        "bridge",
        r#"[{"containerPort": 80}]"#,
        80,
    ));
    let id = run_on(&fleet, "dynamic", 0);
    let (_, net) = running(&fleet, &id);
    assert_eq!(net.bindings[0].host_port, 18091, "{net:#?}");
    assert!(!fetch_ok(b, &format!("http://{}:18091/", a.addr)).contains("HOST-SERVICE"));
    let mut late = a
        .command("busybox")
        .args(["httpd", "-f", "-p", "18091", "-h", www_dir])
        .spawn()
        .expect("busybox httpd");
    let status = late.wait().expect("late httpd");
    assert!(!status.success(), "a host process bound a published port");
    stop_and_wait(&fleet, &[&id]);

    fleet.finish();
}

/// A bridge task whose httpd (ports 80 and 81) answers `/cgi-bin/ip` with the address it sees
/// the client at; `mappings` publishes them.
fn echo_def(family: &str, mappings: &str) -> String {
    format!(
        r#"{{
  "family": "{family}",
  "networkMode": "bridge",
  "containerDefinitions": [{{
    "name": "web", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "portMappings": {mappings},
    "command": ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && httpd -p 81 -h /www && exec httpd -f -p 80 -h /www"]
  }}]
}}"#
    )
}

const SLEEPER: &str = r#"{
  "family": "sleeper",
  "networkMode": "bridge",
  "containerDefinitions": [{
    "name": "main", "image": "test/busybox:latest", "memory": 32, "stopTimeout": 2,
    "command": ["sleep", "3600"]
  }]
}"#;

/// `wget -q -O - URL` (at most 5 s) in container `container` of node `node`: the answer, or
/// why there is none.
fn fetch_in(fleet: &Fleet, node: usize, container: &str, url: &str) -> Result<String, String> {
    let out = fleet.nodes[node].ctr(&[
        "exec", container, "--", "timeout", "5", "wget", "-q", "-O", "-", url,
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "wget {url} in {container}: {} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The client address an echo task answered with, as IPv4 (its httpd listens on IPv6 too and
/// reports IPv4 clients as `[::ffff:A.B.C.D]`).
fn client_address(answer: &str) -> String {
    let a = answer.trim().trim_start_matches('[').trim_end_matches(']');
    a.strip_prefix("::ffff:").unwrap_or(a).to_string()
}

/// [`fetch_in`] until it answers (20 s at most, as a fresh table may take a moment); the
/// answer, or a failure with the last error.
fn fetch_in_soon(fleet: &Fleet, node: usize, container: &str, url: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        match fetch_in(fleet, node, container, url) {
            Ok(answer) => return client_address(&answer),
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Hairpin: a bridge task reaches itself through its own published host port, on every
/// address of its node (translated, it sees the connection from its bridge's address) — and
/// only such connections are masqueraded: another task of the same bridge, another host and
/// the node keep their own address.
#[test]
fn a_bridge_task_reaches_itself_through_its_host_port_and_others_keep_their_address() {
    let fleet = Fleet::start(&[&[], &[]]);
    let (a, b) = (&fleet.hosts[0], &fleet.hosts[1]);
    fleet.register(&echo_def(
        "echo",
        r#"[{"containerPort": 80, "hostPort": 18090}, {"containerPort": 81, "hostPort": 0}]"#,
    ));
    fleet.register(SLEEPER);
    let echo_id = run_on(&fleet, "echo", 0);
    let (echo, net) = running(&fleet, &echo_id);
    let echo_addr = net.address.expect("address");
    let dynamic = net
        .bindings
        .iter()
        .map(|b| b.host_port)
        .find(|p| *p != 18090)
        .unwrap_or_else(|| panic!("a dynamic host port: {echo:#?}"));
    let other_id = run_on(&fleet, "sleeper", 0);
    let other_addr = running(&fleet, &other_id).1.address.expect("address");
    let (echo_c, other_c) = (format!("{echo_id}-0"), format!("{other_id}-0"));
    let gateway = std::net::Ipv4Addr::from(u32::from(echo_addr) & 0xffff_ff00 | 1);

    // The task itself, on the node's LAN address and on its bridge's address, through a
    // static and a dynamic host port.
    for url in [
        format!("http://{}:18090/cgi-bin/ip", a.addr),
        format!("http://{}:{dynamic}/cgi-bin/ip", a.addr),
        format!("http://{gateway}:18090/cgi-bin/ip"),
    ] {
        let seen = fetch_in_soon(&fleet, 0, &echo_c, &url);
        assert_ne!(seen, echo_addr.to_string(), "{url}: not masqueraded");
        assert_eq!(seen, gateway.to_string(), "{url}");
    }

    // Everyone else keeps its own address: another task of the bridge, another host, the node.
    let url = format!("http://{}:18090/cgi-bin/ip", a.addr);
    assert_eq!(
        fetch_in_soon(&fleet, 0, &other_c, &url),
        other_addr.to_string(),
        "another task of the bridge"
    );
    assert_eq!(
        client_address(&fetch_ok(b, &url)),
        b.addr.to_string(),
        "another host"
    );
    assert_eq!(
        client_address(&fetch_ok(a, &url)),
        a.addr.to_string(),
        "the node"
    );

    stop_and_wait(&fleet, &[&echo_id, &other_id]);
    fleet.finish();
}

const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// `net.bridge.bridge-nf-call-iptables` of a host (it is per network namespace), put back as
/// it was when dropped, also when the test fails.
struct BridgeNetfilter<'a> {
    host: &'a Host,
    original: String,
}

impl<'a> BridgeNetfilter<'a> {
    /// The host's setting as it is; `None` without `br_netfilter`.
    fn of(host: &'a Host) -> Option<Self> {
        let out = host
            .command("cat")
            .arg(BRIDGE_NF_CALL_IPTABLES)
            .output()
            .expect("cat");
        out.status.success().then(|| Self {
            host,
            original: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    fn set(&self, value: &str) {
        let out = self
            .host
            .command("sh")
            .args(["-c", &format!("echo {value} > {BRIDGE_NF_CALL_IPTABLES}")])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "setting {BRIDGE_NF_CALL_IPTABLES} to {value} in {}: {}",
            self.host.netns,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for BridgeNetfilter<'_> {
    fn drop(&mut self) {
        let _ = self
            .host
            .command("sh")
            .args([
                "-c",
                &format!("echo {} > {BRIDGE_NF_CALL_IPTABLES}", self.original),
            ])
            .status();
    }
}

/// [`fetch_in`] until the client address answered is `want` (`within` at most): how long it
/// took, or a failure with the last answer or error.
fn fetch_in_until(
    fleet: &Fleet,
    container: &str,
    url: &str,
    want: &str,
    within: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let got = fetch_in(fleet, 0, container, url).map(|a| client_address(&a));
        if got.as_deref() == Ok(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{url} from {container}: no answer seen from {want} within {within:?}; last: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The table follows `net.bridge.bridge-nf-call-iptables` changed under a running agent (as
/// `br_netfilter` loaded or `sysctl.d` applied after it started, or another tool, do): turned
/// off, another task of the bridge still reaches a task's host port within seconds (masqueraded,
/// as the answer would skip the translation back); turned on again, the server sees that
/// task's own address again. Hairpin keeps working both ways.
#[test]
fn the_table_follows_bridge_netfilter_changed_while_tasks_run() {
    let fleet = Fleet::start(&[&[]]);
    let a = &fleet.hosts[0];
    if BridgeNetfilter::of(a).is_none() {
        // A module on some kernels: loaded as an operator would (built in on this one).
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    // (the fleet's hosts are removed when it is dropped, also here)
    let setting = BridgeNetfilter::of(a).unwrap_or_else(|| {
        panic!("no {BRIDGE_NF_CALL_IPTABLES}: this test needs br_netfilter (modprobe br_netfilter)")
    });
    fleet.register(&echo_def(
        "echo",
        r#"[{"containerPort": 80, "hostPort": 18090}]"#,
    ));
    fleet.register(SLEEPER);
    let echo_id = run_on(&fleet, "echo", 0);
    let echo_addr = running(&fleet, &echo_id).1.address.expect("address");
    let other_id = run_on(&fleet, "sleeper", 0);
    let other_addr = running(&fleet, &other_id).1.address.expect("address");
    let (echo_c, other_c) = (format!("{echo_id}-0"), format!("{other_id}-0"));
    let gateway = std::net::Ipv4Addr::from(u32::from(echo_addr) & 0xffff_ff00 | 1);
    let url = format!("http://{}:18090/cgi-bin/ip", a.addr);
    let within = Duration::from_secs(15);

    setting.set("1");
    fetch_in_until(&fleet, &other_c, &url, &other_addr.to_string(), within);

    // Off: the answer would reach the client untranslated; only a masquerade brings it back.
    setting.set("0");
    let took = fetch_in_until(&fleet, &other_c, &url, &gateway.to_string(), within);
    eprintln!("followed 1 -> 0 in {took:?}");
    assert_eq!(
        fetch_in_soon(&fleet, 0, &echo_c, &url),
        gateway.to_string(),
        "hairpin at 0"
    );

    // On again: the broad masquerade goes, the server sees the client's own address.
    setting.set("1");
    let took = fetch_in_until(&fleet, &other_c, &url, &other_addr.to_string(), within);
    eprintln!("followed 0 -> 1 in {took:?}");
    assert_eq!(
        fetch_in_soon(&fleet, 0, &echo_c, &url),
        gateway.to_string(),
        "hairpin at 1"
    );
    let log = fleet.agents[0].log();
    assert!(
        log.matches("bridge-nf-call-iptables changed").count() >= 2,
        "the agent logs the changes: {log}"
    );

    drop(setting);
    stop_and_wait(&fleet, &[&echo_id, &other_id]);
    fleet.finish();
}

/// Hairpin through a VIP: the only task of a `"vip": true` service reaches the service's VIP
/// (which can only lead back to itself); another task of the bridge reaching the VIP keeps its
/// own address.
#[test]
fn a_bridge_task_reaches_itself_through_its_services_vip() {
    let fleet = Fleet::start(&[&[]]);
    fleet.register(&echo_def("vipecho", r#"[{"containerPort": 80}]"#));
    fleet.register(SLEEPER);
    fleet.cp.create_service(
        r#"{"serviceName": "vipecho", "taskDefinition": "vipecho", "desiredCount": 1,
            "discovery": {"namespace": "shop", "vip": true}}"#,
    );
    let endpoints = || {
        fleet
            .cp
            .api()
            .service_endpoints("vipecho")
            .unwrap_or_else(|e| panic!("endpoints of vipecho: {e}"))
    };
    let mut e = endpoints();
    wait("an endpoint and a VIP", Duration::from_secs(60), || {
        e = endpoints();
        e.vip.is_some() && e.endpoints.len() == 1
    });
    let vip = e.vip.expect("vip");
    let task = fleet
        .cp
        .tasks()
        .into_iter()
        .find(|t| {
            t.started_by.as_deref() == Some("service:vipecho") && t.state == TaskState::Running
        })
        .expect("the service's task");
    let (_, net) = running(&fleet, &task.id);
    let task_addr = net.address.expect("address");
    let other_id = run_on(&fleet, "sleeper", 0);
    let other_addr = running(&fleet, &other_id).1.address.expect("address");

    let url = format!("http://{vip}:80/cgi-bin/ip");
    let seen = fetch_in_soon(&fleet, 0, &format!("{}-0", task.id), &url);
    assert_ne!(seen, task_addr.to_string(), "not masqueraded");
    assert_eq!(
        fetch_in_soon(&fleet, 0, &format!("{other_id}-0"), &url),
        other_addr.to_string(),
        "another task of the bridge"
    );

    fleet.cp.flotilla_ok(&["service", "rm", "vipecho"]);
    stop_and_wait(&fleet, &[&other_id]);
    fleet.finish();
}

/// Two node agents on one host (a dev cluster beside the node's own agent): the bridge and the
/// nftables table are the namespace's, so the first to make them holds them. The second is
/// refused bridge tasks, naming the holder, runs its other tasks, and never removes what the
/// first made — not when its last task goes, nor at `ctr network prune` after it stopped.
#[test]
fn a_second_agent_on_a_host_leaves_the_first_ones_bridge_and_table_alone() {
    let fleet = Fleet::start(&[&[]]);
    let host = &fleet.hosts[0];
    fleet.register(&web_def(
        "web",
        "bridge",
        r#"[{"containerPort": 80, "hostPort": 8080}]"#,
        80,
    ));
    fleet.register(&web_def("quiet", "none", "[]", 80));
    let web_id = run_on(&fleet, "web", 0);
    running(&fleet, &web_id);
    let page = fetch_ok(host, "http://127.0.0.1:8080/");

    let node = flotilla_tests::node::Node::new();
    let mut second = flotilla_tests::cluster::Agent::for_node(&node).on_host(host);
    let out = second.join(&fleet.server, &fleet.cp.token(&[]), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = flotilla_certs::credential::Credential::load(&second.identity())
        .expect("identity")
        .name;
    second.run();
    second.wait_log("session established", 1, Duration::from_secs(15));
    fleet.cp.wait_reported(&id);
    let on_second = |family: &str| {
        let placed = fleet.cp.run_task(&TaskRun {
            node: Some(id.clone()),
            ..TaskRun::new(family)
        });
        placed.into_iter().next().expect("one task").id
    };

    let refused = on_second("web");
    let mut last = fleet.cp.task(&refused);
    wait(
        "the refused bridge task stopped",
        Duration::from_secs(60),
        || {
            last = fleet.cp.task(&refused);
            last.state == TaskState::Stopped
        },
    );
    let reason = last.containers[0].reason.clone().unwrap_or_default();
    let holder = format!(
        "another node agent (pid {}, data dir {})",
        fleet.agents[0].pid().expect("pid"),
        fleet.nodes[0].data.display()
    );
    assert!(
        reason.contains(&holder) && reason.contains("one node agent per network namespace"),
        "{last:#?}"
    );
    let quiet = on_second("quiet");
    running(&fleet, &quiet);

    // Its last task goes, then it stops and prunes: the first one's task is still served.
    stop_and_wait(&fleet, &[&quiet]);
    node.wait_for(
        "the second node's containers removed",
        Duration::from_secs(60),
        || node.ps().is_empty(),
    );
    second.kill();
    let pruned = second
        .command()
        .args(["ctr", "network", "prune"])
        .output()
        .expect("nodeagent ctr network prune");
    assert!(
        pruned.status.success(),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    assert!(
        leftovers(host, &fleet.nodes[0].data).contains(&"nft table flotilla".to_string()),
        "the first agent's table went"
    );
    assert_eq!(fetch_ok(host, "http://127.0.0.1:8080/"), page);
    assert_eq!(fetch_ok(host, &format!("http://{}:8080/", host.addr)), page);

    stop_and_wait(&fleet, &[&web_id]);
    wait("task networks removed", Duration::from_secs(30), || {
        leftovers(host, &fleet.nodes[0].data).is_empty()
    });
    fleet.finish();
}
