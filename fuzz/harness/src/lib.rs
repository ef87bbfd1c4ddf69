//! What each fuzz target feeds Flotilla's decoders: one function per target, taking the
//! fuzzer's bytes as the network or a file would give them. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` call these on nightly with coverage feedback; `tests/corpus.rs` calls
//! them on stable over every committed input (`fuzz/corpus/TARGET/`, seeds, and
//! `fuzz/regressions/TARGET/`, the inputs that once crashed), in `cargo test --workspace`.
//!
//! The rule they check is the project's: nothing read from the network or a file makes a
//! decoder panic, hang or take unbounded memory. A few targets also check an invariant the
//! code relies on (a UDP answer fits the client's size, a cached DNS answer is the answer,
//! nothing is unpacked outside the layer directory); a broken one panics here, which the
//! fuzzer reports as a crash.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use flotilla_api::discovery::{DiscoveredService, Endpoint, Registry};
use flotilla_api::taskdef::Protocol;

// Decoders compiled in by their paths (each file says so at its top, and uses only crates this
// one has): the daemons are binaries, and the runtime crate's image decoders come without its
// container and network code, which would make the instrumented build several times longer.
#[allow(dead_code, unreachable_pub)]
#[path = "../../../nodeagent/src/dns/answer.rs"]
mod dns_answer;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../nodeagent/src/config_file.rs"]
mod nodeagent_config;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../orchestratord/src/config_file.rs"]
mod orchestratord_config;
// The unpacker says `super::digest`: here, the crate root.
use flotilla_oci::{digest, manifest};
#[allow(dead_code, unreachable_pub)]
#[path = "../../../runtime/src/image/unpack.rs"]
mod unpack;

/// A fuzz target: its name (the directory of its corpus) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("session_frames", session_frames),
    ("task_definition", task_definition),
    ("service_definition", service_definition),
    ("compose", compose),
    ("image_manifest", image_manifest),
    ("layer_unpack", layer_unpack),
    ("image_archive", image_archive),
    ("dns_query", dns_query),
    ("cron", cron),
    ("member_of", member_of),
    ("config_toml", config_toml),
];

/// Runs a future over in-memory input: a `&[u8]` reader never waits, so one poll ends it.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a read of in-memory input waited"),
    }
}

/// Reads `T` frames from `data` until one fails, as a session's reader does; every decoded
/// message must encode and decode to itself (the control plane re-encodes what it keeps).
fn frames<T>(data: &[u8], mut also: impl FnMut(&T))
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let mut r = data;
    // A frame is at least its 4-byte length: the loop ends with the input.
    while let Ok(msg) = now(flotilla_api::read_frame::<_, T>(&mut r)) {
        also(&msg);
        if let Ok(bytes) = flotilla_api::encode_frame(&msg) {
            let again: T = now(flotilla_api::read_frame(&mut &bytes[..]))
                .expect("a message this build encoded decodes");
            assert_eq!(again, msg, "a message changed through the wire");
        }
    }
}

/// The registry the DNS and registry-delta targets answer from.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let endpoint = |task: &str, address: [u8; 4], port: Option<u16>| Endpoint {
            task: task.into(),
            node: "n-a".into(),
            address: address.into(),
            port,
            task_address: Some(Ipv4Addr::new(10, 42, 0, 2)),
            task_port: Some(80),
        };
        Registry {
            version: 7,
            services: vec![
                DiscoveredService {
                    namespace: "shop".into(),
                    name: "api".into(),
                    service: "api".into(),
                    vip: None,
                    port: Some(80),
                    fixed_port: None,
                    protocol: Protocol::Tcp,
                    endpoints: (0..40)
                        .map(|i| endpoint(&format!("t-{i}"), [10, 0, 0, i], Some(49153)))
                        .chain([endpoint("t-lo", [127, 0, 0, 1], None)])
                        .collect(),
                },
                DiscoveredService {
                    namespace: "shop".into(),
                    name: "db".into(),
                    service: "db".into(),
                    vip: Some(Ipv4Addr::new(10, 43, 0, 5)),
                    port: Some(5432),
                    fixed_port: Some(5432),
                    protocol: Protocol::Tcp,
                    endpoints: vec![endpoint("t-db", [10, 0, 0, 60], Some(5432))],
                },
            ],
        }
    })
}

/// The QUIC session's frames (4-byte length, JSON), read as each side reads them: the control
/// plane's (`JoinRequest`, `Hello`, `AgentRequest`, `PushReply`, `LogFrame`) and the agent's
/// (`JoinReply`, `HelloReply`, `AgentReply`, `ServerPush`), then exec streams' binary frames.
/// A decoded registry delta is applied, and a secret's JSON key picked, as the agent does.
pub fn session_frames(data: &[u8]) {
    use flotilla_api::*;
    frames::<JoinRequest>(data, |_| {});
    frames::<Hello>(data, |_| {});
    frames::<AgentRequest>(data, |_| {});
    frames::<PushReply>(data, |_| {});
    frames::<LogFrame>(data, |_| {});
    frames::<JoinReply>(data, |_| {});
    frames::<HelloReply>(data, |_| {});
    frames::<AgentReply>(data, |reply| {
        if let AgentReply::Secret { value } | AgentReply::Config { value } = reply {
            let _ = secrets::pick(&value.0, Some("password"));
        }
    });
    frames::<ServerPush>(data, |push| {
        if let ServerPush::RegistryDelta(delta) = push {
            let held = Registry {
                version: delta.from,
                ..registry().clone()
            };
            let _ = held.apply(delta);
        }
    });
    let mut r = data;
    while let Ok(Some(frame)) = now(exec::read(&mut r)) {
        if let Ok(bytes) = frame.encode() {
            let again = now(exec::read(&mut &bytes[..])).expect("an encoded frame decodes");
            assert_eq!(again, Some(frame), "an exec frame changed through the wire");
        }
    }
}

/// A task definition as `flotilla taskdef register` and `POST /v1/taskdefs` read it (JSON or
/// YAML, the ECS shape), and as a bare `containerDefinitions` array given a family.
pub fn task_definition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = flotilla_api::taskdef::parse(text);
    if let Ok(wrapped) = flotilla_api::taskdef::with_fields(text, &[("family", "f")]) {
        let _ = flotilla_api::taskdef::parse(&wrapped);
    }
}

/// A service (`CreateService`) as `POST /v1/services` reads it, and the scaling documents
/// (`PutScalingPolicy`, `RegisterScalableTarget`, `PutScheduledAction`) the operator API reads
/// the same way: JSON or YAML.
pub fn service_definition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = flotilla_api::service::parse(text);
    let _ = flotilla_api::scaling::parse_policy(text, "web");
    let _ = flotilla_api::scaling::parse_autoscale(text, "web");
    if let Ok(action) = flotilla_api::scaling::parse_scheduled_action(text, "web") {
        let _ = action.value.cron();
    }
}

/// A scratch directory for one input, removed when the returned guard drops: at the end of
/// the input's run, so a fuzzing run leaves nothing behind however it ends (libFuzzer ends
/// with `exit`, which runs no destructor of a static). An input that crashes leaves its
/// directory, beside the crash it is evidence for.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("flotilla-fuzz-")
        .tempdir()
        .expect("a scratch directory")
}

/// A Compose project as `flotilla compose` loads and plans it: the input is `compose.yaml`, and
/// what follows its first NUL byte is the project's `.env` file.
pub fn compose(data: &[u8]) {
    let (file, env) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let scratch = scratch();
    let dir = scratch.path().join("compose");
    std::fs::create_dir_all(&dir).expect("the project directory");
    std::fs::write(dir.join("compose.yaml"), file).expect("compose.yaml");
    if let Some(env) = env {
        std::fs::write(dir.join(".env"), env).expect(".env");
    }
    let opts = flotilla_compose::LoadOptions {
        working_dir: dir.clone(),
        environment: BTreeMap::from([
            ("HOME".to_string(), "/home/op".to_string()),
            ("TAG".to_string(), "1.2".to_string()),
        ]),
        ..Default::default()
    };
    if let Ok(loaded) = flotilla_compose::load(&opts) {
        if let Ok(plan) = flotilla_compose::plan(&loaded) {
            let _ = flotilla_compose::stages(&plan);
        }
    }
}

/// A registry's manifest document (image manifest, index or manifest list) under each content
/// type a registry may send, the platform picked from an index, and an image configuration.
pub fn image_manifest(data: &[u8]) {
    use manifest::*;
    static MATCHERS: OnceLock<Vec<PlatformMatcher>> = OnceLock::new();
    let matchers = MATCHERS.get_or_init(|| {
        ["linux/amd64", "linux/arm/v7", "linux/arm64/v8", "linux/386"]
            .iter()
            .map(|p| PlatformMatcher::new(&p.parse().expect("a platform"), true))
            .collect()
    });
    for content_type in [
        None,
        Some(OCI_MANIFEST),
        Some(OCI_INDEX),
        Some(DOCKER_MANIFEST_LIST),
        Some("application/json; charset=utf-8"),
    ] {
        if let Ok(ManifestKind::Index(index)) = parse_manifest(content_type, data) {
            for m in matchers {
                let _ = select_platform(&index, m);
            }
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let _ = Platform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant,
        }
        .normalized();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = text.parse::<Platform>() {
            for m in matchers {
                let _ = m.rank(&p);
            }
        }
    }
}

/// A layer blob (tar, gzip or zstd) through the safe unpacker into a fresh directory; nothing
/// may appear beside it.
pub fn layer_unpack(data: &[u8]) {
    let scratch = scratch();
    let base = scratch.path().join("unpack");
    let layer = base.join("layer");
    std::fs::create_dir_all(&layer).expect("the layer directory");
    let _ = unpack::unpack_layer(data, &layer);
    let beside: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("the scratch directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert_eq!(beside, [layer], "the unpacker wrote outside the layer");
    std::fs::remove_dir_all(&base).expect("the unpacked layer is removed");
}

/// An image archive as `flotilla image push` sends it to the control plane (and `nodeagent
/// ctr image import` reads it): `flotilla_oci::layout::Layout::open` with the control plane's
/// kind of limits, then every index entry's name, manifest and blobs as the content store
/// reads them. Checks that staging writes only inside its scratch directory.
pub fn image_archive(data: &[u8]) {
    use flotilla_oci::layout::{archive_name, Layout, Limits};
    let scratch = scratch();
    let base = scratch.path().join("archive");
    let staging = base.join("staging");
    std::fs::create_dir_all(&staging).expect("the staging directory");
    let file = base.join("archive.tar");
    std::fs::write(&file, data).expect("the archive");
    let limits = Limits {
        bytes: 64 << 20,
        entries: 10_000,
    };
    if let Ok(layout) = Layout::open(&file, &staging, limits) {
        for desc in &layout.index().manifests {
            let _ = archive_name(desc);
            if let Ok(bytes) = layout.read_verified(desc) {
                if let Ok(manifest::ManifestKind::Image(m)) =
                    manifest::parse_manifest(Some(&desc.media_type), &bytes)
                {
                    let _ = layout.read_small(&m.config.digest, manifest::MAX_CONFIG_BYTES);
                    for l in &m.layers {
                        let _ = layout.blob_path(&l.digest);
                    }
                }
            }
        }
    }
    let beside: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("the scratch directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(
        beside,
        [file, staging],
        "staging wrote outside its directory"
    );
    std::fs::remove_dir_all(&base).expect("the scratch directory is removed");
}

/// A DNS message as a task sends it to the agent's resolver (UDP and TCP), answered from a
/// registry: a UDP answer fits the client's size, and the cached answer of a repeated query is
/// the answer. The same bytes as an upstream's UDP answer, cut for a client.
pub fn dns_query(data: &[u8]) {
    use dns_answer::{fit_udp, reply, udp_limit, AnswerCache, Asker, Transport};
    use hickory_proto::op::Message;
    let askers = [
        Asker::default(),
        Asker {
            node_seen_as: Some(Ipv4Addr::new(10, 42, 0, 1)),
        },
    ];
    for asker in askers {
        let _ = reply(registry(), data, Transport::Tcp, asker);
        let Some(answer) = reply(registry(), data, Transport::Udp, asker) else {
            continue;
        };
        if let Ok(query) = Message::from_vec(data) {
            assert!(
                answer.len() <= udp_limit(&query),
                "a UDP answer of {} bytes for a client that takes {}",
                answer.len(),
                udp_limit(&query)
            );
        }
        // The UDP loop's cache: the same query under another id.
        let mut cache = AnswerCache::default();
        let mut out = Vec::new();
        cache.answer(registry().version, data, &mut out);
        cache.insert(registry().version, data, answer);
        let mut again = data.to_vec();
        if let Some(id) = again.get_mut(..2) {
            id.copy_from_slice(&[0xbe, 0xef]);
        }
        if cache.answer(registry().version, &again, &mut out) {
            assert_eq!(
                Some(out),
                reply(registry(), &again, Transport::Udp, asker),
                "a cached answer is not the answer"
            );
        }
    }
    // A small query without EDNS (a 512-byte client), its answer from upstream.
    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03big\x07example\x00\x00\x01\x00\x01";
    let _ = fit_udp(QUERY, data.to_vec());
}

/// A cron expression with its time zone (after a newline), as a schedule and a scheduled
/// scaling action give them, and the firings after a few moments.
pub fn cron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, tz) = text.split_once('\n').unwrap_or((text, "UTC"));
    if let Ok(c) = flotilla_scheduler::cron::parse(expr, tz) {
        for after in [0, 1_700_000_000, 4_102_444_800, -1, i64::MAX, i64::MIN] {
            let _ = c.next_after_unix(after);
        }
    }
}

/// A placement constraint's `memberOf` expression, evaluated against a few nodes.
pub fn member_of(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = flotilla_scheduler::expr::parse(text) {
        let nodes = [
            BTreeMap::new(),
            BTreeMap::from([
                ("site".to_string(), "store-12".to_string()),
                ("zone".to_string(), "a".to_string()),
                ("ecs.os-type".to_string(), "linux".to_string()),
            ]),
        ];
        for attrs in &nodes {
            let _ = e.eval(attrs);
        }
    }
}

/// `/etc/flotilla/nodeagent.toml` and `/etc/flotilla/orchestratord.toml`, read as each daemon
/// reads its own.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = flotilla_api::config::parse::<nodeagent_config::FileConfig>(
        "nodeagent.toml",
        text,
        nodeagent_config::FILE_KEYS,
    );
    let _ = flotilla_api::config::parse::<orchestratord_config::FileConfig>(
        "orchestratord.toml",
        text,
        orchestratord_config::FILE_KEYS,
    );
}
