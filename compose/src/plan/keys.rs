//! The Compose specification's keys that Flotilla does not act on, and why: each becomes a
//! warning naming its path. Keys it acts on are handled in `service.rs` and `top.rs`. Also
//! the keys valid at each place of a document, from which a key that is not a Compose key is
//! given the one it likely misspells.

/// Why a service key of the Compose specification is not acted on, if it is one of those.
pub fn unmapped_service_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "networks" => {
            "not mapped: every service of a project reaches every other by its name; networks \
             are not separated"
        }
        "links" | "external_links" => {
            "not mapped: services reach each other by name, without links"
        }
        "container_name" => {
            "not mapped: Flotilla names tasks itself; other services reach this one by its \
             service name"
        }
        "logging" => {
            "not mapped: a node keeps each container's output itself (`flotilla logs`); there \
             are no log drivers"
        }
        "devices" | "gpus" | "device_cgroup_rules" => {
            "not mapped: no host device is passed to containers"
        }
        "security_opt" => {
            "not mapped: containers run with Flotilla's default seccomp profile; there are no \
             AppArmor, SELinux or no-new-privileges options"
        }
        "pull_policy" | "pull_refresh_after" => {
            "not mapped: a node pulls an image it does not hold when it starts a task"
        }
        "platform" => "not mapped: each node pulls the image for its own platform",
        "stop_signal" => {
            "not mapped: a container is stopped with its image's STOPSIGNAL, else SIGTERM"
        }
        "pids_limit" => "not mapped: Flotilla sets no pids limit",
        "volumes_from" => "not mapped: each service is its own task; share a named volume instead",
        "extends" => "not read here: the loader resolves it (this document did not come from it)",
        "label_file" => "not mapped: write the labels in labels",
        "develop" => "not mapped: there is no watch mode on the fleet",
        "post_start" | "pre_stop" => "not mapped: Flotilla runs no lifecycle hooks",
        "annotations" | "attach" | "blkio_config" | "cgroup" | "cgroup_parent" | "cpu_count"
        | "cpu_percent" | "cpu_quota" | "cpu_period" | "cpu_rt_period" | "cpu_rt_runtime"
        | "cpuset" | "credential_spec" | "dns_opt" | "domainname" | "group_add" | "ipc"
        | "isolation" | "mac_address" | "mem_swappiness" | "memswap_limit" | "models"
        | "oom_kill_disable" | "oom_score_adj" | "pid" | "provider" | "runtime" | "storage_opt"
        | "use_api_socket" | "userns_mode" | "uts" => "not mapped: Flotilla has no such setting",
        _ => return None,
    })
}

/// What is said of a key the Compose specification does not have, with the key of `known` it
/// likely misspells (as `flotilla taskdef register` says of an unknown field). `compose up`
/// refuses it: a misspelled `comand:` would otherwise deploy a service without its command.
pub fn not_compose(key: &str, known: &[&str]) -> String {
    match flotilla_api::config::nearest(key, known) {
        Some(k) => format!("not a Compose key (did you mean '{k}'?)"),
        None => "not a Compose key".to_string(),
    }
}

/// The top-level keys.
pub const TOP: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models",
];

/// A service's keys.
pub const SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// A service's `healthcheck` keys.
pub const HEALTHCHECK: &[&str] = &[
    "disable",
    "interval",
    "retries",
    "test",
    "timeout",
    "start_period",
    "start_interval",
];

/// A long `ports` entry's keys.
pub const PORT: &[&str] = &[
    "name",
    "mode",
    "host_ip",
    "target",
    "published",
    "protocol",
    "app_protocol",
];

/// A long `volumes` entry's keys.
pub const MOUNT: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "consistency",
    "bind",
    "volume",
    "tmpfs",
    "image",
];

/// The keys of a long `volumes` entry's `bind`, `volume`, `tmpfs` or `image` options.
pub fn mount_options(kind: &str) -> &'static [&'static str] {
    match kind {
        "bind" => &["propagation", "create_host_path", "recursive", "selinux"],
        "volume" => &["nocopy", "subpath", "labels"],
        "tmpfs" => &["size", "mode"],
        _ => &["subpath"],
    }
}

/// A long service `secrets` or `configs` entry's keys.
pub const VALUE_REF: &[&str] = &["source", "target", "uid", "gid", "mode"];

/// A long `depends_on` entry's keys.
pub const DEPENDS_ON: &[&str] = &["condition", "required", "restart"];

/// `deploy`'s keys.
pub const DEPLOY: &[&str] = &[
    "mode",
    "endpoint_mode",
    "replicas",
    "labels",
    "rollback_config",
    "update_config",
    "resources",
    "restart_policy",
    "placement",
];

/// `deploy.resources`' keys.
pub const RESOURCES: &[&str] = &["limits", "reservations"];

/// `deploy.resources.limits`' keys.
pub const LIMITS: &[&str] = &["cpus", "memory", "pids"];

/// `deploy.resources.reservations`' keys.
pub const RESERVATIONS: &[&str] = &["cpus", "memory", "generic_resources", "devices"];

/// `deploy.restart_policy`'s keys.
pub const RESTART_POLICY: &[&str] = &["condition", "delay", "max_attempts", "window"];

/// `deploy.placement`'s keys.
pub const PLACEMENT: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];

/// `deploy.update_config`'s keys.
pub const UPDATE_CONFIG: &[&str] = &[
    "parallelism",
    "delay",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "order",
];

/// A top-level volume's keys.
pub const VOLUME: &[&str] = &["name", "driver", "driver_opts", "external", "labels"];

/// A top-level secret's keys.
pub const SECRET: &[&str] = &[
    "name",
    "environment",
    "file",
    "external",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
];

/// A top-level config's keys.
pub const CONFIG: &[&str] = &[
    "name",
    "content",
    "environment",
    "file",
    "external",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
];
