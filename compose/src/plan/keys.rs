//! The Compose specification's keys that Flotilla does not act on, and why: each becomes a
//! warning naming its path. Keys it acts on are handled in `service.rs` and `top.rs`.

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

/// What is said of a key the Compose specification does not have.
pub const NOT_COMPOSE: &str = "ignored: not a Compose key";
