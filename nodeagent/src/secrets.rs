//! The node's secrets: the values its desired tasks' containers reference, asked of the
//! control plane over the node's own session (`AgentRequest::Secret`, which the control plane
//! answers only for a version a task of this node's desired state is placed with) and kept
//! in `agent.redb` sealed with the node's own key (`<data-dir>/secrets.key`, 0600; see
//! `flotilla_certs::sealing`), so that after a cold boot without the control plane the node
//! starts its tasks with their secrets. The database file alone opens nothing.
//!
//! A value is kept while the desired state holds a task placed with it, and deleted with the
//! first desired state that holds none ([`Secrets::retain`]). Values go to the runtime in
//! memory ([`SecretMaterial`]), never into a container's record, spec or log; nothing here
//! logs a value.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::secrets::pick;
use flotilla_api::taskdef::{ContainerDefinition, ContainerSecret};
use flotilla_api::tasks::{DesiredState, DesiredTask};
use flotilla_api::{read_frame, write_frame, AgentReply, AgentRequest};
use flotilla_certs::sealing::SealingKey;
use flotilla_runtime::container::{ConfigFile, SecretEnv, SecretFile, SecretMaterial};
use redb::{ReadableTable, TableDefinition};

use crate::db::AgentDb;

/// Sealed values by `name:version` (secrets) and `config/name:version` (configs).
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// The node's sealing key, in its data directory.
pub const KEY_FILE: &str = "secrets.key";
/// How long the control plane may take to answer for a value.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Secrets or configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Config => "config",
        }
    }
}

fn key_text(kind: Kind, name: &str, version: u32) -> String {
    match kind {
        Kind::Secret => format!("{name}:{version}"),
        Kind::Config => format!("config/{name}:{version}"),
    }
}

/// What a sealed value is bound to.
fn context(kind: Kind, name: &str, version: u32) -> Vec<u8> {
    format!("node {}\0{name}\0{version}", kind.noun()).into_bytes()
}

/// The node's secrets (see the module).
pub struct Secrets {
    db: Arc<AgentDb>,
    /// The node's key, or why there is none (secrets cannot be used then; nothing else
    /// stops; it is read again at the next use, once the operator fixed it).
    key: Mutex<std::result::Result<Arc<SealingKey>, String>>,
    data_dir: std::path::PathBuf,
    session: Arc<crate::session::Session>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

/// The node's key in `<data_dir>/secrets.key`: made when missing; a damaged one (of the wrong
/// length: a power cut while it was first written by an older agent, say) is set aside and a
/// new one made — the values it sealed are then fetched again. One readable by others is
/// refused: the values it sealed may be known.
fn node_key(data_dir: &Path) -> std::result::Result<SealingKey, String> {
    let path = data_dir.join(KEY_FILE);
    match SealingKey::load_or_create(&path) {
        Ok(k) => Ok(k),
        Err(e @ flotilla_certs::CertError::Damaged { .. }) => {
            let aside = data_dir.join(format!("{KEY_FILE}.damaged"));
            tracing::warn!("{e}: set aside as {} and replaced", aside.display());
            std::fs::rename(&path, &aside)
                .map_err(|r| format!("setting aside {}: {r}", path.display()))?;
            SealingKey::load_or_create(&path).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Secrets {
    /// The secrets kept in `db`, sealed with the node's key in `<data_dir>/secrets.key` (made
    /// on first use). A key that cannot be used is logged, and only containers that reference
    /// secrets or configs then fail to start, naming why.
    /// Values not kept are asked for over `session`.
    pub fn open(
        db: Arc<AgentDb>,
        data_dir: &Path,
        session: Arc<crate::session::Session>,
    ) -> Result<Self> {
        let key = node_key(data_dir).map(Arc::new);
        if let Err(why) = &key {
            tracing::error!("the node's sealing key for secrets: {why}; containers that reference secrets or configs cannot start");
        }
        let w = db.begin_write()?;
        w.open_table(SECRETS)?;
        w.commit()?;
        Ok(Self {
            db,
            key: Mutex::new(key),
            data_dir: data_dir.to_path_buf(),
            session,
        })
    }

    fn key(&self) -> Result<Arc<SealingKey>> {
        let mut key = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if key.is_err() {
            *key = node_key(&self.data_dir).map(Arc::new);
            if key.is_ok() {
                tracing::info!("the node's sealing key for secrets can be used now");
            }
        }
        key.clone()
            .map_err(|why| anyhow!("the node's sealing key for secrets: {why}"))
    }

    /// A kept value: `None` when there is none, or when the one kept does not open (another
    /// key, a damaged record): that one is deleted, to be fetched again.
    fn kept(&self, kind: Kind, name: &str, version: u32) -> Result<Option<Vec<u8>>> {
        let key = self.key()?;
        let k = key_text(kind, name, version);
        let sealed = {
            let r = self.db.begin_read()?;
            let t = r.open_table(SECRETS)?;
            let Some(sealed) = t.get(k.as_str())? else {
                return Ok(None);
            };
            sealed.value().to_vec()
        };
        match key.open(&context(kind, name, version), &sealed) {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                tracing::warn!(
                    "{} {name} version {version} as kept on this node: {e}; deleted, to be \
                     fetched again",
                    kind.noun()
                );
                let w = self.db.begin_write()?;
                w.open_table(SECRETS)?.remove(k.as_str())?;
                w.commit()?;
                Ok(None)
            }
        }
    }

    fn keep(&self, kind: Kind, name: &str, version: u32, value: &[u8]) -> Result<()> {
        let sealed = self.key()?.seal(&context(kind, name, version), value)?;
        let w = self.db.begin_write()?;
        w.open_table(SECRETS)?
            .insert(key_text(kind, name, version).as_str(), sealed.as_slice())?;
        w.commit()?;
        Ok(())
    }

    async fn fetch(&self, kind: Kind, name: &str, version: u32) -> Result<Vec<u8>> {
        let noun = kind.noun();
        let Some(conn) = self.session.current() else {
            bail!(
                "{noun} {name} version {version} is not on this node yet and the control plane \
                 is not reachable: it is fetched when the session is back"
            );
        };
        let request = match kind {
            Kind::Secret => AgentRequest::Secret {
                name: name.to_string(),
                version,
            },
            Kind::Config => AgentRequest::Config {
                name: name.to_string(),
                version,
            },
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &request).await?;
            let _ = send.finish();
            anyhow::Ok(read_frame::<_, AgentReply>(&mut recv).await?)
        };
        match tokio::time::timeout(FETCH_TIMEOUT, ask).await {
            Err(_) => bail!(
                "{noun} {name} version {version}: the control plane did not answer within \
                 {FETCH_TIMEOUT:?}"
            ),
            Ok(Err(e)) => Err(e.context(format!("asking for {noun} {name} version {version}"))),
            Ok(Ok(AgentReply::Secret { value })) if kind == Kind::Secret => Ok(value.0),
            Ok(Ok(AgentReply::Config { value })) if kind == Kind::Config => Ok(value.0),
            Ok(Ok(AgentReply::Refused { reason })) => {
                bail!("{noun} {name} version {version}: the control plane refused: {reason}")
            }
            Ok(Ok(_)) => bail!("{noun} {name} version {version}: an unexpected answer"),
        }
    }

    /// The value of `version` of `name`: kept on the node, or asked of the control plane and
    /// then kept (sealed) before it is used.
    async fn value(self: &Arc<Self>, kind: Kind, name: &str, version: u32) -> Result<Vec<u8>> {
        let me = self.clone();
        let n = name.to_string();
        if let Some(value) =
            tokio::task::spawn_blocking(move || me.kept(kind, &n, version)).await??
        {
            return Ok(value);
        }
        let value = self.fetch(kind, name, version).await?;
        let me = self.clone();
        let (n, kept) = (name.to_string(), value.clone());
        tokio::task::spawn_blocking(move || me.keep(kind, &n, version, &kept))
            .await?
            .with_context(|| format!("keeping {} {name} version {version}", kind.noun()))?;
        tracing::info!(name = %name, version, "{} received and kept sealed", kind.noun());
        Ok(value)
    }

    /// What container `def` of task `task` gets from its secrets — each as an environment
    /// variable (unless its entry says not) and as the file `/run/secrets/<name>` — and its
    /// configs. An error names the secret or config (and never a value): what the container's
    /// failed start says.
    pub async fn material(
        self: &Arc<Self>,
        task: &DesiredTask,
        def: &ContainerDefinition,
    ) -> Result<SecretMaterial> {
        let mut material = SecretMaterial::default();
        for s in &def.secrets {
            let (r, version) = reference(task, s)?;
            let whole = self.value(Kind::Secret, &r.secret, version).await?;
            let value = pick(&whole, r.json_key.as_deref())
                .map_err(|why| anyhow!("secret {} version {version}: {why}", r.secret))?;
            if s.environment {
                let text = String::from_utf8(value.clone()).map_err(|_| {
                    anyhow!(
                        "secret {} for variable {}: not UTF-8 text (set \"environment\": false \
                         to have it as a file only)",
                        r.secret,
                        s.name
                    )
                })?;
                material.env.push(SecretEnv {
                    name: s.name.clone(),
                    value: text,
                });
            }
            material.files.push(SecretFile {
                name: s.name.clone(),
                data: value,
                uid: s.uid.unwrap_or(0),
                gid: s.gid.unwrap_or(0),
                mode: s.mode.unwrap_or(ContainerSecret::DEFAULT_MODE),
            });
        }
        for c in &def.configs {
            let version = c
                .version
                .or_else(|| task.config_versions.get(&c.source).copied())
                .ok_or_else(|| {
                    anyhow!(
                        "config {} for {}: the config was removed (`flotilla config rm --force`) and taken from this task",
                        c.source,
                        c.target
                    )
                })?;
            let data = self.value(Kind::Config, &c.source, version).await?;
            material.configs.push(ConfigFile {
                target: c.target.clone(),
                data,
                uid: c.uid.unwrap_or(0),
                gid: c.gid.unwrap_or(0),
                mode: c.mode.unwrap_or(ContainerSecret::DEFAULT_MODE),
            });
        }
        // What the runtime would refuse (a NUL byte in a variable's value …) fails the start
        // here, with the names and never a value.
        let problems = material.problems();
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(material)
    }

    /// Deletes every kept value no task of `desired` uses; returns how many.
    pub fn retain(&self, desired: &DesiredState) -> Result<usize> {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for t in &desired.tasks {
            wanted.extend(
                t.secret_versions
                    .iter()
                    .map(|(n, v)| key_text(Kind::Secret, n, *v)),
            );
            wanted.extend(
                t.config_versions
                    .iter()
                    .map(|(n, v)| key_text(Kind::Config, n, *v)),
            );
            for c in &t.definition.container_definitions {
                wanted.extend(c.secrets.iter().filter_map(|s| {
                    let r = s.reference()?;
                    Some(key_text(Kind::Secret, &r.secret, r.version?))
                }));
                wanted.extend(
                    c.configs
                        .iter()
                        .filter_map(|f| Some(key_text(Kind::Config, &f.source, f.version?))),
                );
            }
        }
        let w = self.db.begin_write()?;
        let removed = {
            let mut t = w.open_table(SECRETS)?;
            let stale: Vec<String> = t
                .iter()?
                .filter_map(|e| e.ok().map(|(k, _)| k.value().to_string()))
                .filter(|k| !wanted.contains(k))
                .collect();
            for k in &stale {
                t.remove(k.as_str())?;
            }
            stale.len()
        };
        w.commit()?;
        Ok(removed)
    }
}

/// The secret and version entry `s` of a container of `task` names: the version its
/// reference names, else the one the task was placed with.
fn reference(
    task: &DesiredTask,
    s: &ContainerSecret,
) -> Result<(flotilla_api::secrets::SecretRef, u32)> {
    let r = s.reference().ok_or_else(|| {
        anyhow!(
            "secret for {}: '{}' is no Flotilla reference",
            s.name,
            s.value_from
        )
    })?;
    let version = r
        .version
        .or_else(|| task.secret_versions.get(&r.secret).copied())
        .ok_or_else(|| {
            anyhow!(
                "secret {} for {}: the secret was removed (`flotilla secret rm --force`) and taken from this task",
                r.secret,
                s.name
            )
        })?;
    Ok((r, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(versions: &[(&str, u32)], secrets: &str) -> DesiredTask {
        let definition = flotilla_api::taskdef::parse(&format!(
            r#"{{"family":"f","containerDefinitions":[{{"name":"main","image":"x","memory":8,
                "secrets":{secrets}}}]}}"#
        ))
        .expect("valid")
        .definition;
        DesiredTask {
            id: "t-1".into(),
            task_definition: "f:1".into(),
            definition,
            env: Vec::new(),
            desired: flotilla_api::tasks::DesiredStatus::Running,
            stop_reason: None,
            stop_code: None,
            stop_on_client_after: None,
            address: None,
            namespace: None,
            service: None,
            secret_versions: versions.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            config_versions: Default::default(),
        }
    }

    #[tokio::test]
    async fn kept_values_are_sealed_made_into_material_and_dropped_when_no_task_needs_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(AgentDb::open(&dir.path().join("agent.redb")).expect("db"));
        let secrets =
            Arc::new(Secrets::open(db.clone(), dir.path(), Arc::default()).expect("open"));
        let value = br#"{"user": "app", "password": "hunter2-node"}"#;
        secrets.keep(Kind::Secret, "db", 3, value).expect("keep");
        drop(secrets);
        // Sealed in the database: the value is nowhere in the file.
        let file = std::fs::read(dir.path().join("agent.redb")).expect("read");
        assert!(!file.windows(12).any(|w| w == b"hunter2-node"));
        let secrets = Arc::new(Secrets::open(db, dir.path(), Arc::default()).expect("reopen"));
        let t = task(
            &[("db", 3)],
            r#"[{"name":"DB_PASSWORD","valueFrom":"flotilla:db:password"},
                {"name":"db.json","valueFrom":"flotilla:db","environment":false,"mode":"0400","uid":1000}]"#,
        );
        let def = &t.definition.container_definitions[0];
        let m = secrets
            .material(&t, def)
            .await
            .expect("offline, from what is kept");
        assert_eq!(m.env.len(), 1);
        assert_eq!(
            (m.env[0].name.as_str(), m.env[0].value.as_str()),
            ("DB_PASSWORD", "hunter2-node")
        );
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            (m.files[1].mode, m.files[1].uid, m.files[1].gid),
            (0o400, 1000, 0)
        );
        assert_eq!(m.files[1].data, value.to_vec());
        // Not kept, offline: the error names the secret and says why.
        let t2 = task(&[("db", 4)], r#"[{"name":"P","valueFrom":"flotilla:db"}]"#);
        let e = secrets
            .material(&t2, &t2.definition.container_definitions[0])
            .await
            .expect_err("an error");
        assert!(
            format!("{e:#}").contains("secret db version 4 is not on this node"),
            "{e:#}"
        );
        // Placed without it.
        let t3 = task(&[], r#"[{"name":"P","valueFrom":"flotilla:gone"}]"#);
        let e = secrets
            .material(&t3, &t3.definition.container_definitions[0])
            .await
            .expect_err("an error");
        assert!(
            format!("{e:#}").contains("secret gone for P: the secret was removed"),
            "{e:#}"
        );
        // A value a variable cannot hold fails the start, naming it and not the value.
        secrets
            .keep(Kind::Secret, "nul", 1, b"a\0hunter2")
            .expect("keep");
        let t4 = task(
            &[("nul", 1)],
            r#"[{"name":"P","valueFrom":"flotilla:nul"}]"#,
        );
        let e = secrets
            .material(&t4, &t4.definition.container_definitions[0])
            .await
            .expect_err("a NUL byte");
        assert!(
            format!("{e:#}").contains("NUL") && !format!("{e:#}").contains("hunter2"),
            "{e:#}"
        );
        // A key readable by others is refused, and used again once it is fixed.
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        *secrets.key.lock().expect("lock") = node_key(dir.path()).map(Arc::new);
        assert!(secrets.kept(Kind::Secret, "db", 3).is_err());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(secrets
            .kept(Kind::Secret, "db", 3)
            .expect("fixed")
            .is_some());
        let desired = DesiredState {
            generation: 2,
            tasks: vec![t.clone()],
            ..Default::default()
        };
        assert_eq!(secrets.retain(&desired).expect("retain"), 1, "nul:1");
        assert_eq!(secrets.retain(&DesiredState::default()).expect("retain"), 1);
        assert!(secrets.kept(Kind::Secret, "db", 3).expect("read").is_none());
    }
}
