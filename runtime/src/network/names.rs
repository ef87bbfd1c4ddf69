//! The name files every container gets — `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` —
//! written as Docker writes them (Docker's docs, "Networking overview: DNS services" and
//! "Container networking: IP address and hostname"; moby's `libnetwork/etchosts`).

use std::net::IpAddr;

/// Docker's `/etc/hosts` head (moby `libnetwork/etchosts/etchosts.go`, `defaultContent`).
const LOOPBACK_LINES: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// Where a container's own name points when it has no address of its own (`none`, `host`):
/// Debian's convention for a machine's name without a permanent address (Debian Reference,
/// "The hostname resolution"), on the loopback every namespace has.
pub const NAME_WITHOUT_ADDRESS: &str = "127.0.1.1";

/// A container's `/etc/hosts`. In its own namespace: Docker's loopback lines, then each of
/// its own `addresses` with its `hostname` (or [`NAME_WITHOUT_ADDRESS`] when it has none, so
/// `hostname -i` and software that looks up its own name work in `none` too). In the node's
/// namespace (`node_hosts` given, the `host` mode): the node's file, as Docker copies it, with
/// the container's name added when the node's file does not name it.
pub fn hosts_file(hostname: &str, addresses: &[IpAddr], node_hosts: Option<&str>) -> String {
    let mut out = match node_hosts {
        Some(node) => {
            let mut s = node.to_string();
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        None => LOOPBACK_LINES.to_string(),
    };
    let named = node_hosts.is_some_and(|node| names(node).any(|n| n == hostname));
    if addresses.is_empty() && !named {
        out.push_str(&format!("{NAME_WITHOUT_ADDRESS}\t{hostname}\n"));
    }
    for a in addresses {
        out.push_str(&format!("{a}\t{hostname}\n"));
    }
    out
}

/// Every name a hosts file gives (comments left out).
fn names(hosts: &str) -> impl Iterator<Item = &str> {
    hosts.lines().flat_map(|l| {
        let l = l.split('#').next().unwrap_or_default();
        l.split_whitespace().skip(1)
    })
}

/// A container's `/etc/hostname`: the name and a newline, as Docker writes it.
pub fn hostname_file(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// The node's resolver configuration as a container in its own namespace sees it: loopback
/// name servers (a local stub resolver such as systemd-resolved's `127.0.0.53`) are
/// unreachable from there and left out, as Docker does (Docker's docs, "Networking overview:
/// DNS services").
pub fn namespaced_resolv_conf(node: &str) -> String {
    let mut out = String::new();
    for line in node.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("nameserver") {
            let loopback = f
                .next()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_none_or(|a| a.is_loopback());
            if loopback {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_gets_docker_loopback_lines_and_its_address() {
        let a: IpAddr = "172.30.0.5".parse().expect("an address");
        let h = hosts_file("web-1", &[a], None);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost"));
        assert!(h.ends_with("ip6-allrouters\n172.30.0.5\tweb-1\n"), "{h}");
    }

    #[test]
    fn without_an_address_the_name_still_resolves() {
        let h = hosts_file("sealed", &[], None);
        assert!(h.ends_with("127.0.1.1\tsealed\n"), "{h}");
    }

    #[test]
    fn host_mode_keeps_the_node_file_and_adds_the_name_once() {
        let node = "127.0.0.1 localhost\n10.0.0.4 edge-7 # me";
        let h = hosts_file("abc", &[], Some(node));
        assert_eq!(h, format!("{node}\n127.0.1.1\tabc\n"));
        let h = hosts_file("edge-7", &[], Some(node));
        assert_eq!(h, format!("{node}\n"));
    }

    #[test]
    fn loopback_name_servers_are_left_out() {
        let node = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch lan\noptions edns0\n";
        assert_eq!(
            namespaced_resolv_conf(node),
            "# generated\nnameserver 10.0.0.2\nsearch lan\noptions edns0\n"
        );
    }
}
