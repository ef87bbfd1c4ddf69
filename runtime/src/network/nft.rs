//! The node's nftables table: outbound NAT for task bridges, the host-port forwards of
//! bridge tasks, service VIPs, and the hairpin masquerade that lets a task reach itself
//! through either. The whole table is rendered from its description and replaced in one
//! transaction (`add table`, `delete table`, then its content), so a reader never sees half a
//! change and nothing stale survives an update. Only this one table is ever touched.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload,
    PayloadField, Prefix, SetItem, Verdict, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, VerdictMap, NAT};
use nftables::types::{NfChainType, NfFamily, NfHook};

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A task bridge: its traffic leaving the node is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNat {
    /// Bridge name.
    pub name: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
}

/// A host port forwarded to a task address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortForward {
    /// Protocol.
    pub proto: Proto,
    /// Port on every local address of the node.
    pub host_port: u16,
    /// Task address.
    pub address: Ipv4Addr,
    /// Port in the task.
    pub port: u16,
}

/// A service's virtual address: new connections to it go to one of its backends, picked at
/// random.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vip {
    /// The virtual address.
    pub address: Ipv4Addr,
    /// Protocol.
    pub proto: Proto,
    /// Port on the virtual address.
    pub port: u16,
    /// Where connections go: address and port.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// Everything the table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatTable {
    /// Task bridges.
    pub bridges: Vec<BridgeNat>,
    /// Host-port forwards.
    pub forwards: Vec<PortForward>,
    /// Service virtual addresses.
    pub vips: Vec<Vip>,
    /// Whether frames between two ports of a bridge go through this namespace's IPv4 netfilter
    /// hooks (`br_netfilter` with `net.bridge.bridge-nf-call-iptables` = 1): then the answer of
    /// a task to another task of its bridge that reached it through a translation is translated
    /// back on the bridge, and only hairpin connections (a task reaching itself) need
    /// masquerading. Without it such an answer would go straight to the other task, around the
    /// translation, so every translated connection from the bridge to the bridge is masqueraded.
    pub bridge_netfilter: bool,
}

impl NatTable {
    /// True when the table would hold nothing (it is then removed).
    pub fn is_empty(&self) -> bool {
        self.bridges.is_empty() && self.forwards.is_empty() && self.vips.is_empty()
    }
}

const FAMILY: NfFamily = NfFamily::IP;

/// The transaction that replaces table `name` by `t` (or only removes it when `t` is empty).
pub fn render(name: &str, t: &NatTable) -> Nftables<'static> {
    let name = name.to_string();
    let table = || {
        NfListObject::Table(Table {
            family: FAMILY,
            name: Cow::Owned(name.clone()),
            handle: None,
        })
    };
    let mut batch = Batch::new();
    // `add` makes sure the `delete` has a table to delete.
    batch.add(table());
    batch.delete(table());
    if t.is_empty() {
        return batch.to_nftables();
    }
    batch.add(table());
    let chain = |chain: &str, hook: Option<(NfHook, i32)>| {
        NfListObject::Chain(Chain {
            family: FAMILY,
            table: Cow::Owned(name.clone()),
            name: Cow::Owned(chain.to_string()),
            _type: hook.map(|_| NfChainType::NAT),
            hook: hook.map(|(h, _)| h),
            prio: hook.map(|(_, p)| p),
            ..Default::default()
        })
    };
    let rule = |chain: &str, expr: Vec<Statement<'static>>| {
        NfListObject::Rule(Rule {
            family: FAMILY,
            table: Cow::Owned(name.clone()),
            chain: Cow::Owned(chain.to_string()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: None,
        })
    };
    batch.add(chain("services", None));
    batch.add(chain("ports", None));
    batch.add(chain("prerouting", Some((NfHook::Prerouting, -100))));
    batch.add(chain("output", Some((NfHook::Output, -100))));
    batch.add(chain("postrouting", Some((NfHook::Postrouting, 100))));
    // Virtual addresses first: they are never local.
    for hook in ["prerouting", "output"] {
        batch.add(rule(
            hook,
            vec![Statement::Jump(JumpTarget {
                target: Cow::Borrowed("services"),
            })],
        ));
    }
    let mut vips = t.vips.clone();
    vips.sort();
    for (i, v) in vips.iter().enumerate() {
        if v.backends.is_empty() {
            continue;
        }
        let svc = format!("svc-{i}");
        batch.add(chain(&svc, None));
        batch.add(rule(
            "services",
            vec![
                matches(
                    payload("ip", "daddr"),
                    Operator::EQ,
                    string(&v.address.to_string()),
                ),
                matches(
                    payload(v.proto.name(), "dport"),
                    Operator::EQ,
                    Expression::Number(v.port.into()),
                ),
                Statement::Goto(JumpTarget {
                    target: Cow::Owned(svc.clone()),
                }),
            ],
        ));
        // A port translation needs the protocol matched in its own rule.
        let dnat = |(addr, port): (Ipv4Addr, u16)| {
            vec![
                matches(
                    named(NamedExpression::Meta(Meta {
                        key: MetaKey::L4proto,
                    })),
                    Operator::EQ,
                    string(v.proto.name()),
                ),
                Statement::DNAT(Some(NAT {
                    addr: Some(string(&addr.to_string())),
                    family: None,
                    port: Some(Expression::Number(port.into())),
                    flags: None,
                })),
            ]
        };
        if let [one] = v.backends.as_slice() {
            batch.add(rule(&svc, dnat(*one)));
            continue;
        }
        let mut arms = Vec::new();
        for (j, b) in v.backends.iter().enumerate() {
            let ep = format!("svc-{i}-{j}");
            batch.add(chain(&ep, None));
            batch.add(rule(&ep, dnat(*b)));
            arms.push(SetItem::Mapping(
                Expression::Number(u32::try_from(j).unwrap_or(u32::MAX)),
                Expression::Verdict(Verdict::Goto(JumpTarget {
                    target: Cow::Owned(ep),
                })),
            ));
        }
        batch.add(rule(
            &svc,
            vec![Statement::VerdictMap(VerdictMap {
                key: named(NamedExpression::Numgen(Numgen {
                    mode: NgMode::Random,
                    ng_mod: u32::try_from(v.backends.len()).unwrap_or(u32::MAX),
                    offset: None,
                })),
                data: named(NamedExpression::Set(arms)),
            })],
        ));
    }
    // Connections to any local address of the node go through the forwards.
    let to_local = || {
        vec![
            matches(
                named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: HashSet::from([FibFlag::Daddr]),
                })),
                Operator::EQ,
                string("local"),
            ),
            Statement::Jump(JumpTarget {
                target: Cow::Borrowed("ports"),
            }),
        ]
    };
    batch.add(rule("prerouting", to_local()));
    batch.add(rule("output", to_local()));
    let mut forwards = t.forwards.clone();
    forwards.sort();
    for f in &forwards {
        batch.add(rule(
            "ports",
            vec![
                matches(
                    payload(f.proto.name(), "dport"),
                    Operator::EQ,
                    Expression::Number(f.host_port.into()),
                ),
                Statement::DNAT(Some(NAT {
                    addr: Some(string(&f.address.to_string())),
                    family: None,
                    port: Some(Expression::Number(f.port.into())),
                    flags: None,
                })),
            ],
        ));
    }
    // Where a translation may lead back into a bridge: the tasks' own addresses.
    let mut targets: Vec<Ipv4Addr> = forwards
        .iter()
        .map(|f| f.address)
        .chain(vips.iter().flat_map(|v| v.backends.iter().map(|b| b.0)))
        .collect();
    targets.sort();
    targets.dedup();
    for b in &t.bridges {
        let from_subnet = || {
            matches(
                payload("ip", "saddr"),
                Operator::EQ,
                named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(string(&b.subnet.network().to_string())),
                    len: b.subnet.prefix_len().into(),
                })),
            )
        };
        let oif = || {
            named(NamedExpression::Meta(Meta {
                key: MetaKey::Oifname,
            }))
        };
        // Leaving the node: the node's address.
        batch.add(rule(
            "postrouting",
            vec![
                from_subnet(),
                matches(oif(), Operator::NEQ, string(&b.name)),
                Statement::Masquerade(None),
            ],
        ));
        let translated = || {
            matches(
                named(NamedExpression::CT(CT {
                    key: Cow::Borrowed("status"),
                    family: None,
                    dir: None,
                })),
                Operator::IN,
                string("dnat"),
            )
        };
        // Hairpin: a task sent to itself through a VIP or a host port. Its answer would go
        // from its address to its address, never back through the translation (and its
        // kernel drops a packet from its own address arriving from outside); from the
        // bridge's address instead, it returns through the node. As Docker's
        // `-s C -d C -j MASQUERADE`, and only for such connections: every other client keeps
        // its own address.
        for a in targets.iter().filter(|a| b.subnet.contains(*a)) {
            batch.add(rule(
                "postrouting",
                vec![
                    matches(oif(), Operator::EQ, string(&b.name)),
                    matches(payload("ip", "saddr"), Operator::EQ, string(&a.to_string())),
                    matches(payload("ip", "daddr"), Operator::EQ, string(&a.to_string())),
                    translated(),
                    Statement::Masquerade(None),
                ],
            ));
        }
        // A task reaching another task of its bridge through a translation, when bridged
        // frames skip netfilter: the answer would go straight back over the bridge, around
        // the translation.
        if !t.bridge_netfilter {
            batch.add(rule(
                "postrouting",
                vec![
                    from_subnet(),
                    matches(oif(), Operator::EQ, string(&b.name)),
                    translated(),
                    Statement::Masquerade(None),
                ],
            ));
        }
        // The node itself on 127.0.0.1:HOSTPORT (needs route_localnet on the bridge).
        batch.add(rule(
            "postrouting",
            vec![
                matches(
                    payload("ip", "saddr"),
                    Operator::EQ,
                    named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(string("127.0.0.0")),
                        len: 8,
                    })),
                ),
                matches(oif(), Operator::EQ, string(&b.name)),
                Statement::Masquerade(None),
            ],
        ));
    }
    batch.to_nftables()
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn named(e: NamedExpression<'static>) -> Expression<'static> {
    Expression::Named(e)
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// Replaces table `name` of this network namespace by `t` (removes it when `t` is empty).
pub fn apply(name: &str, t: &NatTable) -> io::Result<()> {
    nftables::helper::apply_ruleset(&render(name, t)).map_err(|e| {
        let detail = match &e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                format!("{e}: {}", stderr.trim())
            }
            nftables::helper::NftablesError::NftExecution { inner, .. }
                if inner.kind() == io::ErrorKind::NotFound =>
            {
                format!("{e} — install nftables: bridge networking and service VIPs need `nft`")
            }
            _ => e.to_string(),
        };
        io::Error::other(format!("nftables table ip {name}: {detail}"))
    })
}

/// True when table `name` exists in this network namespace. Without `nft` installed there is
/// none this node could have made (nor remove).
pub fn exists(name: &str) -> io::Result<bool> {
    let out = match std::process::Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft list tables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == format!("table ip {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_is_only_removed() {
        let json =
            serde_json::to_value(render("flotilla", &NatTable::default())).expect("test value");
        let cmds = json["nftables"].as_array().expect("test value");
        assert_eq!(cmds.len(), 2);
        assert!(cmds[0]["add"]["table"].is_object());
        assert!(cmds[1]["delete"]["table"].is_object());
    }

    #[test]
    fn forwards_become_dnat_rules_in_the_ports_chain() {
        let t = NatTable {
            bridges: vec![BridgeNat {
                name: "flotilla0".into(),
                subnet: "10.42.3.0/24".parse().expect("test value"),
            }],
            forwards: vec![PortForward {
                proto: Proto::Udp,
                host_port: 5353,
                address: "10.42.3.2".parse().expect("test value"),
                port: 53,
            }],
            vips: Vec::new(),
            bridge_netfilter: false,
        };
        let json = serde_json::to_string(&render("flotilla", &t)).expect("test value");
        assert!(
            json.contains(r#"{"dnat":{"addr":"10.42.3.2","port":53}}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""protocol":"udp","field":"dport""#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"prefix":{"addr":"10.42.3.0","len":24}}"#),
            "{json}"
        );
        assert!(json.contains(r#""masquerade":null"#), "{json}");
    }

    #[test]
    fn a_vip_picks_a_backend_at_random() {
        let t = NatTable {
            vips: vec![Vip {
                address: "10.43.0.1".parse().expect("test value"),
                proto: Proto::Tcp,
                port: 80,
                backends: vec![
                    ("10.0.0.10".parse().expect("test value"), 49153),
                    ("10.42.0.3".parse().expect("test value"), 80),
                ],
            }],
            ..NatTable::default()
        };
        let json = serde_json::to_string(&render("flotilla", &t)).expect("test value");
        assert!(
            json.contains(r#"{"numgen":{"mode":"random","mod":2}}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"[1,{"goto":{"target":"svc-0-1"}}]"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"dnat":{"addr":"10.0.0.10","port":49153}}"#),
            "{json}"
        );
        assert!(!t.is_empty());
    }

    /// The postrouting rules that masquerade translated connections into a bridge: the JSON
    /// text of each one's `(oifname, saddr, daddr)` match (empty when it has none).
    fn masquerades_into_the_bridge(t: &NatTable) -> Vec<(String, String, String)> {
        let json = serde_json::to_value(render("flotilla", t)).expect("test value");
        let mut out = Vec::new();
        for cmd in json["nftables"].as_array().expect("test value") {
            let r = &cmd["add"]["rule"];
            if r["chain"] != "postrouting" {
                continue;
            }
            let exprs = r["expr"].as_array().expect("test value");
            if !exprs
                .iter()
                .any(|e| e["match"]["left"]["ct"]["key"] == "status")
            {
                continue;
            }
            let field = |left: serde_json::Value| {
                exprs
                    .iter()
                    .find(|e| e["match"]["left"] == left)
                    .map(|e| e["match"]["right"].to_string())
                    .unwrap_or_default()
            };
            out.push((
                field(serde_json::json!({"meta": {"key": "oifname"}})),
                field(serde_json::json!({"payload": {"protocol": "ip", "field": "saddr"}})),
                field(serde_json::json!({"payload": {"protocol": "ip", "field": "daddr"}})),
            ));
        }
        out
    }

    fn hairpin_table(bridge_netfilter: bool) -> NatTable {
        let a = |s: &str| -> Ipv4Addr { s.parse().expect("test value") };
        NatTable {
            bridges: vec![BridgeNat {
                name: "flotilla0".into(),
                subnet: "10.42.3.0/24".parse().expect("test value"),
            }],
            forwards: vec![
                PortForward {
                    proto: Proto::Tcp,
                    host_port: 8080,
                    address: a("10.42.3.2"),
                    port: 80,
                },
                PortForward {
                    proto: Proto::Udp,
                    host_port: 5353,
                    address: a("10.42.3.2"),
                    port: 53,
                },
            ],
            vips: vec![Vip {
                address: a("10.43.0.1"),
                proto: Proto::Tcp,
                port: 80,
                // One backend of this bridge, one on another node.
                backends: vec![(a("10.42.3.3"), 80), (a("10.0.0.10"), 49153)],
            }],
            bridge_netfilter,
        }
    }

    #[test]
    fn only_a_task_reaching_itself_is_masqueraded_when_bridged_frames_see_netfilter() {
        let got = masquerades_into_the_bridge(&hairpin_table(true));
        let q = |s: &str| format!("\"{s}\"");
        // One rule per task address a translation leads to, from it to it; nothing for the
        // backend on another node, nothing for the bridge's other clients.
        assert_eq!(
            got,
            [
                (q("flotilla0"), q("10.42.3.2"), q("10.42.3.2")),
                (q("flotilla0"), q("10.42.3.3"), q("10.42.3.3")),
            ],
        );
    }

    #[test]
    fn without_bridge_netfilter_every_translated_connection_within_the_bridge_is_masqueraded() {
        let got = masquerades_into_the_bridge(&hairpin_table(false));
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[2],
            (
                "\"flotilla0\"".to_string(),
                r#"{"prefix":{"addr":"10.42.3.0","len":24}}"#.to_string(),
                String::new()
            ),
        );
    }

    /// Removes the scratch namespace also when the test fails.
    struct Scratch(tempfile::TempDir, std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = crate::network::netns::remove(&self.1);
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn every_kind_of_rule_is_accepted_by_the_kernel() {
        if !rustix::process::geteuid().is_root() {
            panic!("this test needs root (it makes a network namespace)");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = crate::network::netns::create(dir.path(), "nft").expect("namespace");
        let _scratch = Scratch(dir, ns.clone());
        let t = NatTable {
            bridges: vec![BridgeNat {
                name: "flotilla0".into(),
                subnet: "10.42.3.0/24".parse().expect("test value"),
            }],
            forwards: vec![
                PortForward {
                    proto: Proto::Tcp,
                    host_port: 8080,
                    address: "10.42.3.2".parse().expect("test value"),
                    port: 80,
                },
                PortForward {
                    proto: Proto::Udp,
                    host_port: 5353,
                    address: "10.42.3.2".parse().expect("test value"),
                    port: 53,
                },
            ],
            vips: vec![
                Vip {
                    address: "10.43.0.1".parse().expect("test value"),
                    proto: Proto::Tcp,
                    port: 80,
                    backends: vec![
                        ("10.0.0.10".parse().expect("test value"), 49153),
                        ("10.42.3.2".parse().expect("test value"), 80),
                    ],
                },
                Vip {
                    address: "10.43.0.2".parse().expect("test value"),
                    proto: Proto::Udp,
                    port: 53,
                    backends: vec![("10.0.0.11".parse().expect("test value"), 5353)],
                },
            ],
            bridge_netfilter: false,
        };
        let listed = crate::network::netns::run_in(Some(&ns), move || {
            apply("flotilla", &t)?;
            let out = std::process::Command::new("nft")
                .args(["list", "table", "ip", "flotilla"])
                .output()?;
            let listed = String::from_utf8_lossy(&out.stdout).into_owned();
            // Replaced whole, then removed.
            apply("flotilla", &t)?;
            apply("flotilla", &NatTable::default())?;
            assert!(!exists("flotilla")?);
            Ok(listed)
        })
        .expect("applied");
        for want in [
            "tcp dport 8080 dnat to 10.42.3.2:80",
            "udp dport 5353 dnat to 10.42.3.2:53",
            "numgen random mod 2 vmap",
            "dnat to 10.0.0.10:49153",
            "ip daddr 10.43.0.2 udp dport 53 goto svc-1",
            "masquerade",
            "oifname \"flotilla0\" ip saddr 10.42.3.2 ip daddr 10.42.3.2 ct status dnat masquerade",
            "ip saddr 10.42.3.0/24 oifname \"flotilla0\" ct status dnat masquerade",
        ] {
            assert!(listed.contains(want), "{want} not in:\n{listed}");
        }
    }
}
