//! The real Compose files of `tests/cases` (see its SOURCES.md), each loaded and planned as
//! `flotilla compose -f FILE config` does: both steps succeed, every task definition and
//! service passes the API's own parsers, and the warnings name exactly the keys that do not
//! map, one line per key. The expected lists were checked against each file by hand: a key
//! missing from a list is mapped; a key of the file missing from the warnings and from the
//! mapping would be a key dropped silently, and a mapped key warned about fails the test too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_compose::{load, plan, stages, LoadOptions, Loaded, Plan};

/// One corpus file and what loading and planning it must say.
struct Case {
    /// Below `tests/cases`.
    file: &'static str,
    /// Services with `build` and no `image`: Flotilla refuses them (it runs images), so they
    /// are given one by a second file, as a user who pushed the images would (`-f FILE -f
    /// images.yaml`).
    build_only: &'static [&'static str],
    /// The loader's warnings: whether `version` is there (obsolete), and the variables used
    /// while unset (one warning each) with how many times they were in all.
    obsolete_version: bool,
    unset: &'static [&'static str],
    unset_uses: usize,
    /// The key paths of the plan's warnings, in order.
    warnings: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        file: "01-react-express-mysql.yaml",
        build_only: &["backend", "frontend"],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.private",
            "networks.public",
            "services.backend.build",
            "services.backend.networks",
            // 80, 9229 and 9230: one VIP port.
            "services.backend.ports",
            // ./backend/…: paths of this machine.
            "services.backend.volumes[0]",
            "services.backend.volumes[1]",
            "services.backend.volumes[2]",
            "services.db.networks",
            "services.db",
            "services.frontend.build",
            "services.frontend.networks",
            "services.frontend.volumes[0]",
        ],
    },
    Case {
        file: "02-nginx-golang-postgres.yaml",
        build_only: &["backend"],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "services.backend.build",
            // No port: not reachable by name.
            "services.backend",
            "services.db.expose",
            "services.proxy.volumes[0]",
        ],
    },
    Case {
        file: "03-elasticsearch-logstash-kibana.yaml",
        build_only: &[],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.elastic",
            "services.elasticsearch.container_name",
            "services.elasticsearch.networks",
            "services.elasticsearch.ports",
            "services.kibana.container_name",
            "services.kibana.networks",
            "services.logstash.container_name",
            "services.logstash.networks",
            "services.logstash.ports",
            "services.logstash.volumes[0]",
            "services.logstash.volumes[1]",
        ],
    },
    Case {
        // Every key maps: image, ports, environment, deploy.resources.limits.memory and a
        // volume in the home directory.
        file: "04-minecraft-deploy-limits.yaml",
        build_only: &[],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        // ~/minecraft_data: the HOME of the machine that loaded the file.
        warnings: &["services.minecraft.volumes[0]"],
    },
    Case {
        // seed is in the seed profile, not active: not in the project at all.
        file: "05-voting-app-profiles.yaml",
        build_only: &["result", "vote", "worker"],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.back-tier",
            "networks.front-tier",
            "services.db.networks",
            "services.db.volumes[1]",
            "services.db",
            "services.redis.networks",
            "services.redis.volumes[0]",
            "services.redis",
            "services.result.build",
            "services.result.networks",
            "services.result.ports",
            // 127.0.0.1:9229:9229
            "services.result.ports[1]",
            "services.result.volumes[0]",
            "services.vote.build",
            "services.vote.networks",
            "services.vote.volumes[0]",
            "services.worker.build",
            "services.worker.networks",
            "services.worker",
        ],
    },
    Case {
        file: "06-voting-app-stack-v3.yaml",
        build_only: &[],
        obsolete_version: true,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.backend",
            "networks.frontend",
            "services.db.deploy.placement.constraints[0]",
            "services.db.networks",
            "services.db",
            "services.redis.deploy.update_config.delay",
            "services.redis.networks",
            "services.redis",
            "services.result.deploy.update_config.delay",
            "services.result.networks",
            "services.visualizer.deploy.placement.constraints[0]",
            "services.vote.networks",
            "services.worker.deploy.labels",
            "services.worker.deploy.placement.constraints[0]",
            "services.worker.deploy.restart_policy.delay",
            "services.worker.deploy.restart_policy.max_attempts",
            "services.worker.networks",
            "services.worker",
        ],
    },
    Case {
        file: "07-swarmprom-v3.3.yaml",
        build_only: &[],
        obsolete_version: true,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.net",
            "services.alertmanager.deploy.placement.constraints[0]",
            "services.alertmanager.networks",
            "services.alertmanager",
            "services.caddy.deploy.placement.constraints[0]",
            // 1s: 2 s is the least.
            "services.caddy.healthcheck.timeout",
            "services.caddy.networks",
            "services.caddy.ports",
            "services.cadvisor.networks",
            "services.cadvisor",
            "services.dockerd-exporter.networks",
            "services.dockerd-exporter",
            "services.grafana.deploy.placement.constraints[0]",
            "services.grafana.networks",
            "services.grafana",
            "services.node-exporter.networks",
            "services.node-exporter",
            "services.prometheus.deploy.placement.constraints[0]",
            "services.prometheus.networks",
            "services.prometheus",
            "services.unsee.networks",
            "services.unsee",
        ],
    },
    Case {
        // Bind sources under ./data, each with :z or :Z (one line per entry for both);
        // dns, tty, labels and sysctls are kept in the definition but not acted on yet.
        file: "08-mailcow-v2.1.yaml",
        build_only: &[],
        obsolete_version: true,
        unset: &[
            "ADDITIONAL_SAN",
            "DBNAME",
            "DBPASS",
            "DBROOT",
            "DBUSER",
            "MAILCOW_HOSTNAME",
            "TZ",
        ],
        unset_uses: 52,
        warnings: &[
            "networks.mailcow-network",
            "services.acme-mailcow.dns",
            "services.acme-mailcow.networks",
            "services.acme-mailcow.volumes[0]",
            "services.acme-mailcow.volumes[1]",
            "services.acme-mailcow.volumes[2]",
            "services.acme-mailcow",
            "services.clamd-mailcow.dns",
            "services.clamd-mailcow.networks",
            "services.clamd-mailcow.volumes[0]",
            "services.clamd-mailcow",
            "services.dockerapi-mailcow.dns",
            "services.dockerapi-mailcow.networks",
            "services.dockerapi-mailcow.security_opt",
            "services.dockerapi-mailcow",
            "services.dovecot-mailcow.dns",
            "services.dovecot-mailcow.labels",
            "services.dovecot-mailcow.networks",
            "services.dovecot-mailcow.ports",
            "services.dovecot-mailcow.ports[0]",
            "services.dovecot-mailcow.tty",
            "services.dovecot-mailcow.volumes[0]",
            "services.dovecot-mailcow.volumes[1]",
            "services.dovecot-mailcow.volumes[2]",
            "services.dovecot-mailcow.volumes[3]",
            "services.dovecot-mailcow.volumes[4]",
            "services.dovecot-mailcow.volumes[8]",
            "services.dovecot-mailcow.volumes[9]",
            "services.ipv6nat-mailcow.security_opt",
            "services.memcached-mailcow.networks",
            "services.memcached-mailcow",
            "services.mysql-mailcow.networks",
            "services.mysql-mailcow.ports[0]",
            "services.mysql-mailcow.volumes[2]",
            "services.nginx-mailcow.dns",
            "services.nginx-mailcow.networks",
            "services.nginx-mailcow.ports",
            "services.nginx-mailcow.volumes[0]",
            "services.nginx-mailcow.volumes[1]",
            "services.nginx-mailcow.volumes[2]",
            "services.nginx-mailcow.volumes[3]",
            "services.nginx-mailcow.volumes[4]",
            "services.ofelia-mailcow.labels",
            "services.ofelia-mailcow.networks",
            "services.ofelia-mailcow.security_opt",
            "services.ofelia-mailcow",
            "services.olefy-mailcow.networks",
            "services.olefy-mailcow",
            "services.php-fpm-mailcow.dns",
            "services.php-fpm-mailcow.networks",
            "services.php-fpm-mailcow.volumes[0]",
            "services.php-fpm-mailcow.volumes[1]",
            "services.php-fpm-mailcow.volumes[2]",
            "services.php-fpm-mailcow.volumes[3]",
            "services.php-fpm-mailcow.volumes[6]",
            "services.php-fpm-mailcow.volumes[7]",
            "services.php-fpm-mailcow.volumes[8]",
            "services.php-fpm-mailcow.volumes[9]",
            "services.php-fpm-mailcow.volumes[10]",
            "services.php-fpm-mailcow.volumes[11]",
            "services.php-fpm-mailcow.volumes[12]",
            "services.php-fpm-mailcow.volumes[13]",
            "services.php-fpm-mailcow.volumes[14]",
            "services.php-fpm-mailcow.volumes[15]",
            "services.php-fpm-mailcow.volumes[16]",
            "services.php-fpm-mailcow",
            "services.postfix-mailcow.dns",
            "services.postfix-mailcow.networks",
            "services.postfix-mailcow.ports",
            "services.postfix-mailcow.volumes[0]",
            "services.postfix-mailcow.volumes[1]",
            "services.postfix-mailcow.volumes[2]",
            "services.redis-mailcow.networks",
            "services.redis-mailcow.ports[0]",
            "services.redis-mailcow.sysctls",
            "services.rspamd-mailcow.dns",
            "services.rspamd-mailcow.networks",
            "services.rspamd-mailcow.volumes[0]",
            "services.rspamd-mailcow.volumes[1]",
            "services.rspamd-mailcow.volumes[2]",
            "services.rspamd-mailcow.volumes[3]",
            "services.rspamd-mailcow.volumes[4]",
            "services.rspamd-mailcow.volumes[5]",
            "services.rspamd-mailcow.volumes[6]",
            "services.rspamd-mailcow.volumes[7]",
            "services.rspamd-mailcow",
            "services.sogo-mailcow.dns",
            "services.sogo-mailcow.labels",
            "services.sogo-mailcow.networks",
            "services.sogo-mailcow.volumes[0]",
            "services.sogo-mailcow.volumes[1]",
            "services.sogo-mailcow.volumes[2]",
            "services.sogo-mailcow.volumes[3]",
            "services.sogo-mailcow.volumes[4]",
            "services.sogo-mailcow.volumes[5]",
            "services.sogo-mailcow",
            "services.solr-mailcow.networks",
            "services.solr-mailcow.ports[0]",
            "services.unbound-mailcow.networks",
            "services.unbound-mailcow.tty",
            "services.unbound-mailcow.volumes[0]",
            "services.unbound-mailcow.volumes[1]",
            "services.unbound-mailcow",
            "services.watchdog-mailcow.dns",
            "services.watchdog-mailcow.networks",
            "services.watchdog-mailcow.tmpfs[0]",
            "services.watchdog-mailcow.volumes[3]",
            "services.watchdog-mailcow",
        ],
    },
    Case {
        // The variables come from tests/cases/.env (read for interpolation, and inlined by
        // env_file: .env).
        file: "09-immich-env-file.yaml",
        build_only: &[],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "services.database.container_name",
            "services.database.shm_size",
            "services.database.volumes[0]",
            "services.database",
            "services.immich-machine-learning.container_name",
            // disable: false and no test: the image's HEALTHCHECK, which Flotilla does not run.
            "services.immich-machine-learning.healthcheck",
            "services.immich-machine-learning",
            "services.immich-server.container_name",
            "services.immich-server.healthcheck",
            "services.immich-server.volumes[0]",
            "services.redis.container_name",
            "services.redis",
        ],
    },
    Case {
        file: "10-traefik-anchors-long-ports.yaml",
        build_only: &[],
        obsolete_version: true,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "networks.proxy",
            "networks.traefik-consul",
            "networks.traefik-docker",
            // logging, from the <<: *default-opts merge key.
            "services.consul.logging",
            "services.consul.networks",
            "services.consul",
            "services.dockersocket.deploy.placement.constraints[0]",
            "services.dockersocket.logging",
            "services.dockersocket.networks",
            "services.dockersocket",
            "services.traefik-init.logging",
            "services.traefik-init.networks",
            "services.traefik-init",
            "services.traefik.deploy.labels",
            "services.traefik.logging",
            "services.traefik.networks",
            "services.traefik.ports",
            "services.traefik.ports[2].mode",
            // driver: ${DOCKER_VOL_DRIVER:-local} is local, which maps.
            "volumes.consul.driver_opts",
        ],
    },
    Case {
        // Everything comes from .config/docker-compose-base.yaml through extends.
        file: "11-grafana-plugin-extends/docker-compose.yaml",
        build_only: &["grafana"],
        obsolete_version: false,
        unset: &[],
        unset_uses: 0,
        warnings: &[
            "services.grafana.build",
            "services.grafana.container_name",
            "services.grafana.ports",
            "services.grafana.security_opt",
            "services.grafana.volumes[0]",
            "services.grafana.volumes[1]",
            "services.grafana.volumes[2]",
        ],
    },
];

fn cases_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases"))
}

/// Loads `files` as `flotilla compose -f …` run in `tests/cases` does, with a fixed
/// environment rather than the process's.
fn load_files(files: Vec<PathBuf>) -> Result<Loaded, Vec<String>> {
    load(&LoadOptions {
        files,
        working_dir: cases_dir(),
        environment: BTreeMap::from([("HOME".to_owned(), "/home/user".to_owned())]),
        ..LoadOptions::default()
    })
}

/// A second Compose file giving each of `services` an image.
fn images_file(dir: &Path, case: &Case) -> PathBuf {
    let mut text = String::from("services:\n");
    for s in case.build_only {
        text.push_str(&format!("  {s}:\n    image: registry.example.org/{s}:1\n"));
    }
    let path = dir.join(format!("images-{}.yaml", case.file.replace('/', "-")));
    std::fs::write(&path, text).expect("write the images file");
    path
}

/// The part of a warning before its first ": ".
fn path_of(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(p, _)| p)
}

/// `N` of an unset-variable warning's `(…, and N more places)`, else 0.
fn more_places(warning_rest: &str) -> usize {
    warning_rest
        .rsplit_once(", and ")
        .and_then(|(_, tail)| tail.split_once(" more place"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// Every task definition and service parses as the control plane parses it.
fn assert_registers(file: &str, p: &Plan) {
    assert!(!p.services.is_empty(), "{file}: no service");
    for s in &p.services {
        let td = flotilla_api::taskdef::parse(&s.spec.task_definition.to_string())
            .unwrap_or_else(|e| panic!("{file}: {}: task definition: {e:#?}", s.name));
        assert_eq!(td.definition.family, s.service_name, "{file}");
        let sv = flotilla_api::service::parse(&s.spec.service.to_string())
            .unwrap_or_else(|e| panic!("{file}: {}: service: {e:#?}", s.name));
        assert_eq!(sv.spec.task_definition, s.service_name, "{file}");
        assert!(sv.warnings.is_empty(), "{file}: {:?}", sv.warnings);
    }
}

#[test]
fn every_corpus_file_loads_and_plans_with_one_warning_per_key_that_does_not_map() {
    // Every file of the corpus has its case, and no case names a file that is not there.
    let mut on_disk: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("tests/cases")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    on_disk.push("11-grafana-plugin-extends/docker-compose.yaml".into());
    on_disk.sort();
    let listed: Vec<&str> = CASES.iter().map(|c| c.file).collect();
    assert_eq!(on_disk, listed);

    let images = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for case in CASES {
        let file = case.file;
        let mut files = vec![cases_dir().join(file)];
        if !case.build_only.is_empty() {
            files.push(images_file(images.path(), case));
        }
        let loaded = load_files(files).unwrap_or_else(|e| panic!("{file}: load: {e:#?}"));

        let obsolete = loaded
            .warnings
            .iter()
            .filter(|w| w.contains("the attribute `version` is obsolete"))
            .count();
        let unset: Vec<(&str, usize)> = loaded
            .warnings
            .iter()
            .filter_map(|w| {
                let (name, rest) = w.strip_prefix("the ")?.split_once(" variable is not set")?;
                Some((name, 1 + more_places(rest)))
            })
            .collect();
        let mut names: Vec<&str> = unset.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        assert_eq!(obsolete, usize::from(case.obsolete_version), "{file}");
        // One warning per variable, as docker compose gives them.
        assert_eq!(names, case.unset, "{file}: {:#?}", loaded.warnings);
        let uses: usize = unset.iter().map(|(_, n)| n).sum();
        assert_eq!(uses, case.unset_uses, "{file}");
        assert_eq!(
            loaded.warnings.len(),
            obsolete + unset.len(),
            "{file}: {:#?}",
            loaded.warnings
        );

        let p = plan(&loaded).unwrap_or_else(|e| panic!("{file}: plan: {e:#?}"));
        assert_registers(file, &p);
        stages(&p).unwrap_or_else(|e| panic!("{file}: {e}"));
        let paths: Vec<&str> = p.warnings.iter().map(|w| path_of(w)).collect();
        if paths != case.warnings {
            failures.push(format!(
                "{file}: warnings at\n{paths:#?}\nexpected at\n{:#?}\nwarnings:\n{:#?}",
                case.warnings, p.warnings
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn each_file_as_written_plans_and_up_refuses_only_the_services_compose_would_build() {
    for case in CASES {
        let loaded = load_files(vec![cases_dir().join(case.file)])
            .unwrap_or_else(|e| panic!("{}: load: {e:#?}", case.file));
        let want: Vec<String> = case
            .build_only
            .iter()
            .map(|s| {
                format!(
                    "services.{s}.build: Flotilla runs images; give image: (build and push it \
                     yourself)"
                )
            })
            .collect();
        // `config` shows the file as it is; `up` refuses the services it would have to build.
        let p = plan(&loaded).unwrap_or_else(|e| panic!("{}: plan: {e:#?}", case.file));
        assert_eq!(p.refusals, want, "{}", case.file);
    }
}
