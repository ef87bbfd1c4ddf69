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
#[path = "../../../runtime/src/container/accounts.rs"]
mod accounts;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../runtime/src/container/logs.rs"]
mod logs;
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
    ("registry_answer", registry_answer),
    ("layer_unpack", layer_unpack),
    ("image_archive", image_archive),
    ("image_user", image_user),
    ("container_logs", container_logs),
    ("dns_query", dns_query),
    ("cron", cron),
    ("member_of", member_of),
    ("config_toml", config_toml),
    ("join_request", join_request),
    ("operator_query", operator_query),
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
/// (`JoinReply`, `HelloReply`, `AgentReply`, `ServerPush` plain or packed), a prefetch's `PullFrame`s as the
/// control plane reads them from a node, then exec streams' binary frames.
/// A joining node's labels are checked as the control plane does; a decoded registry delta is
/// applied, and a secret's JSON key picked, as the agent does.
pub fn session_frames(data: &[u8]) {
    use flotilla_api::*;
    frames::<JoinRequest>(data, |req| {
        for (k, v) in &req.labels {
            let _ = parse_label(&format!("{k}={v}"));
        }
    });
    frames::<Hello>(data, |_| {});
    frames::<AgentRequest>(data, |_| {});
    frames::<PushReply>(data, |_| {});
    frames::<LogFrame>(data, |_| {});
    frames::<images::PullFrame>(data, |_| {});
    frames::<JoinReply>(data, |_| {});
    frames::<HelloReply>(data, |_| {});
    frames::<AgentReply>(data, |reply| {
        if let AgentReply::Secret { value } | AgentReply::Config { value } = reply {
            let _ = secrets::pick(&value.0, Some("password"));
        }
    });
    // Pushes as a node reads them: plain or packed (Zstandard, the length word's top bit).
    let mut r = data;
    while let Ok(Some(push)) = now(read_next_push(&mut r)) {
        if let ServerPush::RegistryDelta(delta) = &push {
            let held = Registry {
                version: delta.from,
                ..registry().clone()
            };
            let _ = held.apply(delta);
        }
        if let Ok(frame) = encode_push(&push) {
            let again = now(read_push(&mut &frame[..])).expect("a push this build encoded decodes");
            assert_eq!(again, push, "a push changed through the wire");
            let packed = pack_push(&frame).expect("a push this build encoded packs");
            let again = now(read_push(&mut &packed[..])).expect("a push this build packed decodes");
            assert_eq!(again, push, "a push changed through packing");
        }
    }
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
        image_reference(text);
    }
}

/// An image reference as a task definition, a manifest's annotation or the operator API's path
/// names one: the name the stores file it under parses to itself, and the quick name a node's
/// store looks it up by first, when it is a name the parser gives, is the parser's.
fn image_reference(text: &str) {
    use flotilla_oci::ImageRef;
    let _ = text.parse::<digest::Digest>();
    let parsed = ImageRef::parse(text).map(|r| r.name());
    if let Ok(name) = &parsed {
        assert_eq!(
            ImageRef::parse(name).map(|r| r.name()).as_ref(),
            Ok(name),
            "a stored name does not parse to itself"
        );
        let _ = ImageRef::lookup_names(text);
    }
    if let Some(quick) = ImageRef::quick_name(text) {
        if ImageRef::parse(&quick).map(|r| r.name()).as_ref() == Ok(&quick) {
            assert_eq!(
                parsed.as_ref().ok(),
                Some(&quick),
                "the quick name of {text:?} is another image's"
            );
        }
    }
}

/// What a registry's answers carry besides its documents, as the pull client reads them: a
/// `WWW-Authenticate` challenge, the token service's JSON, and a `206`'s `Content-Range`.
pub fn registry_answer(data: &[u8]) {
    use flotilla_oci::auth::{content_range_start, parse_challenge, parse_token};
    let _ = parse_token(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((scheme, params)) = parse_challenge(text) {
        assert!(!scheme.is_empty(), "a challenge without a scheme");
        let _ = params.get("realm");
    }
    let _ = content_range_start(text);
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

/// An image's `/etc/passwd`, `/etc/group` and a `user[:group]` (three parts, NUL-separated), as a
/// container's user is resolved against its root filesystem; also a few usual users. A
/// resolved id is never above `MAX_ID` (the kernel reads `(uid_t) -1` as "leave unchanged").
pub fn image_user(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0).map(String::from_utf8_lossy);
    let passwd = parts.next().unwrap_or_default();
    let group = parts.next().unwrap_or_default();
    let spec = parts.next();
    let usual = [
        None,
        Some("root"),
        Some("0"),
        Some("app"),
        Some("1000:1000"),
        Some("app:wheel"),
    ];
    for spec in usual.into_iter().chain([spec.as_deref()]) {
        if let Ok(u) = accounts::resolve(&passwd, &group, spec) {
            assert!(
                std::iter::once(u.uid)
                    .chain([u.gid])
                    .chain(u.additional_gids.iter().copied())
                    .all(|id| id <= accounts::MAX_ID),
                "{spec:?} resolved to an id above MAX_ID: {u:?}"
            );
        }
    }
}

/// The token id `join_request`'s rejoins name (a proof signs it).
pub const JOIN_TOKEN_ID: &str = "0123456789ab";

/// What `join_request` makes of its input, as a node sends it: the previous certificate
/// (PEM), the proof (base64) and the CSR (PEM).
pub fn join_request_parts(data: &[u8]) -> (String, String, String) {
    use base64::Engine as _;
    let mut rest = data;
    let cert = part(&mut rest);
    let proof = part(&mut rest);
    (
        pem("CERTIFICATE", cert),
        base64::engine::general_purpose::STANDARD.encode(proof),
        pem("CERTIFICATE REQUEST", rest),
    )
}

/// A fixed cluster CA (`harness/ca/`, made for these targets only), so a committed node
/// certificate can be one it issued.
pub fn fuzz_ca() -> &'static flotilla_certs::ClusterCa {
    static CA: OnceLock<flotilla_certs::ClusterCa> = OnceLock::new();
    CA.get_or_init(|| {
        flotilla_certs::ClusterCa::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ca"),
        )
        .expect("the harness's CA")
    })
}

/// The next part of `data`: a 2-byte big-endian length, then that many bytes (fewer at the
/// end of the input).
fn part<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => (0, &[][..]),
    };
    let (head, tail) = rest.split_at(len.min(rest.len()));
    *data = tail;
    head
}

/// `der` in PEM with `label`, as openssl and rcgen write it (64 columns).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What a node sends the join port before it holds a certificate (`JoinRequest`): a returning
/// node's previous certificate and its proof, checked before the token is (so by anyone who
/// reaches the port), and the CSR the control plane signs once the token holds. The input is
/// `LEN CERTIFICATE LEN PROOF CSR` (lengths of 2 bytes, big-endian): DER, the raw signature,
/// DER, each wrapped as the node sends it (PEM, base64); the whole input is also tried as the
/// PEM text of each, and as a join token. An
/// issued certificate names the node the control plane chose, whatever the CSR says.
pub fn join_request(data: &[u8]) {
    use flotilla_certs::{identity_of, validity_of, Role};
    let ca = fuzz_ca();
    let lifetime = std::time::Duration::from_secs(3600);
    let issue = |csr_pem: &str| {
        if let Ok(cert) = ca.issue_node(csr_pem, "n-fuzz", lifetime) {
            let der = <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(cert.as_bytes())
                .expect("an issued certificate is PEM");
            let (id, _) = identity_of(&der).expect("an issued certificate names its node");
            assert_eq!((id.role, id.name.as_str()), (Role::Node, "n-fuzz"));
        }
        let _ = ca.issue_admin_from_csr(csr_pem, "op", lifetime);
    };
    let rejoin = |cert_pem: &str, proof: &str, csr_pem: &str| {
        if let Ok(id) = ca.verify_rejoin(cert_pem, proof, JOIN_TOKEN_ID, csr_pem) {
            let der = <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(cert_pem.as_bytes())
                .expect("a verified certificate is PEM");
            let (who, _) = identity_of(&der).expect("a verified certificate has an identity");
            assert_eq!(
                (who.role, who.name),
                (Role::Node, id),
                "a rejoin kept another id"
            );
        }
    };
    let mut rest = data;
    let cert = part(&mut rest);
    let _ = identity_of(cert);
    let _ = validity_of(cert);
    let (cert_pem, proof, csr_pem) = join_request_parts(data);
    rejoin(&cert_pem, &proof, &csr_pem);
    issue(&csr_pem);
    if let Ok(text) = std::str::from_utf8(data) {
        rejoin(text, text, text);
        issue(text);
        let _ = text.parse::<flotilla_certs::token::JoinToken>();
    }
}

/// The operator API's query strings (`GET /v1/tasks?…`, `/v1/nodes?…`, an exec's) with the
/// `nextToken`s a listing reads back, and a `Link` header as the CLI follows it to the next
/// page. A token read back is the cursor it was made from.
pub fn operator_query(data: &[u8]) {
    use flotilla_api::page::{self, NodeCursor, TaskCursor};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = page::percent_decoded(text);
    for (_, v) in page::query_pairs(text).unwrap_or_default() {
        if let Ok(c) = TaskCursor::parse(&v) {
            assert_eq!(TaskCursor::parse(&c.token()), Ok(c), "a task token changed");
        }
        if let Ok(c) = NodeCursor::parse(&v) {
            assert_eq!(NodeCursor::parse(&c.token()), Ok(c), "a node token changed");
        }
        let _ = page::task_state(&v);
        let _ = page::node_state(&v);
        let _ = page::desired_status(&v);
    }
    let _ = page::next_link(text);
}

/// What a container prints, as its shim writes it to the container's log files (cut into
/// lines and pieces per stream, rotated by size) and the agent reads it back (`logs::read`,
/// whole or its tail). The input is the container's writes, split at each `0xFF` byte, to
/// stdout and stderr in turn. Each stream's records end with a whole line; read back, the log
/// is what was written: all of it with room to spare, its last records when files rotated
/// away, its last N lines for a tail of N.
pub fn container_logs(data: &[u8]) {
    use logs::{LineSplitter, LogEntry, LogLimits, LogWriter, Stream};
    let record = |e: &LogEntry| (e.stream, e.partial, e.content.clone());
    let scratch = scratch();
    for (name, limits) in [
        ("roomy", LogLimits::default()),
        (
            "rotating",
            LogLimits {
                max_size: 1024,
                max_files: 2,
            },
        ),
    ] {
        let dir = scratch.path().join(name);
        let mut log = LogWriter::open(&dir, limits).expect("the log directory");
        let mut written = Vec::new();
        let mut split = [LineSplitter::default(), LineSplitter::default()];
        let streams = [Stream::Stdout, Stream::Stderr];
        let mut write = |stream: Stream, partial: bool, content: &[u8]| {
            written.push((stream, partial, content.to_vec()));
            log.write(stream, partial, content)
        };
        for (i, chunk) in data.split(|b| *b == 0xff).enumerate() {
            split[i % 2]
                .feed(chunk, &mut |p, c| write(streams[i % 2], p, c))
                .expect("a log write");
        }
        for (s, stream) in split.iter_mut().zip(streams) {
            s.finish(&mut |p, c| write(stream, p, c))
                .expect("a log write");
        }
        for stream in streams {
            let last = written.iter().rev().find(|(s, _, _)| *s == stream);
            assert!(
                last.is_none_or(|(_, partial, _)| !partial),
                "{name}: the {stream:?} output ended inside a line (a container started again \
                 would continue it)"
            );
        }
        let (all, _) = logs::read(&dir, None).expect("the log reads back");
        let all: Vec<_> = all.iter().map(record).collect();
        assert!(
            written.ends_with(&all),
            "{name}: the log read back is not what was written"
        );
        if name == "roomy" {
            assert_eq!(all.len(), written.len(), "a record of a roomy log was lost");
        }
        for n in 0..3 {
            let (tail, _) = logs::read(&dir, Some(n)).expect("the log's tail reads back");
            let tail: Vec<_> = tail.iter().map(record).collect();
            assert!(
                all.ends_with(&tail),
                "{name}: a tail of {n} is not the log's end"
            );
            let lines = tail.iter().filter(|(_, partial, _)| !partial).count();
            assert!(lines <= n, "{name}: a tail of {n} has {lines} lines");
        }
    }
}
