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
use flotilla_api::secrets::{pick, SecretRef};
use flotilla_api::taskdef::{ContainerDefinition, ContainerSecret};
use flotilla_api::tasks::{DesiredState, DesiredTask};
use flotilla_api::{read_frame, write_frame, AgentReply, AgentRequest};
use flotilla_certs::sealing::SealingKey;
use flotilla_runtime::container::{SecretEnv, SecretFile, SecretMaterial};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Sealed values by `name:version`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// The node's sealing key, in its data directory.
pub const KEY_FILE: &str = "secrets.key";
/// How long the control plane may take to answer for a value.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn key_text(name: &str, version: u32) -> String {
    format!("{name}:{version}")
}

/// What a sealed value is bound to.
fn context(name: &str, version: u32) -> Vec<u8> {
    format!("node secret\0{name}\0{version}").into_bytes()
}

/// The node's secrets (see the module).
pub struct Secrets {
    db: Arc<Database>,
    key: SealingKey,
    session: Mutex<Option<quinn::Connection>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

impl Secrets {
    /// The secrets kept in `db`, sealed with the key in `<data_dir>/secrets.key` (made on
    /// first use).
    pub fn open(db: Arc<Database>, data_dir: &Path) -> Result<Self> {
        let key = SealingKey::load_or_create(&data_dir.join(KEY_FILE))
            .context("the node's sealing key for secrets")?;
        let w = db.begin_write()?;
        w.open_table(SECRETS)?;
        w.commit()?;
        Ok(Self {
            db,
            key,
            session: Mutex::new(None),
        })
    }

    /// The session values are asked over (`None`: offline).
    pub fn set_session(&self, conn: Option<quinn::Connection>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    fn kept(&self, name: &str, version: u32) -> Result<Option<Vec<u8>>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SECRETS)?;
        let Some(sealed) = t.get(key_text(name, version).as_str())? else {
            return Ok(None);
        };
        let value = self
            .key
            .open(&context(name, version), sealed.value())
            .map_err(|e| anyhow!("secret {name} version {version} as kept on this node: {e}"))?;
        Ok(Some(value))
    }

    fn keep(&self, name: &str, version: u32, value: &[u8]) -> Result<()> {
        let sealed = self.key.seal(&context(name, version), value)?;
        let w = self.db.begin_write()?;
        w.open_table(SECRETS)?
            .insert(key_text(name, version).as_str(), sealed.as_slice())?;
        w.commit()?;
        Ok(())
    }

    async fn fetch(&self, name: &str, version: u32) -> Result<Vec<u8>> {
        let conn = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(conn) = conn else {
            bail!(
                "secret {name} version {version} is not on this node yet and the control plane \
                 is not reachable: it is fetched when the session is back"
            );
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(
                &mut send,
                &AgentRequest::Secret {
                    name: name.to_string(),
                    version,
                },
            )
            .await?;
            let _ = send.finish();
            anyhow::Ok(read_frame::<_, AgentReply>(&mut recv).await?)
        };
        match tokio::time::timeout(FETCH_TIMEOUT, ask).await {
            Err(_) => bail!("secret {name} version {version}: the control plane did not answer within {FETCH_TIMEOUT:?}"),
            Ok(Err(e)) => Err(e.context(format!("asking for secret {name} version {version}"))),
            Ok(Ok(AgentReply::Secret { value })) => Ok(value.0),
            Ok(Ok(AgentReply::Refused { reason })) => {
                bail!("secret {name} version {version}: the control plane refused: {reason}")
            }
            Ok(Ok(_)) => bail!("secret {name} version {version}: an unexpected answer"),
        }
    }

    /// The value of `version` of secret `name`: kept on the node, or asked of the control
    /// plane and then kept (sealed) before it is used.
    async fn value(self: &Arc<Self>, name: &str, version: u32) -> Result<Vec<u8>> {
        let me = self.clone();
        let (n, v) = (name.to_string(), version);
        if let Some(value) = tokio::task::spawn_blocking(move || me.kept(&n, v)).await?? {
            return Ok(value);
        }
        let value = self.fetch(name, version).await?;
        let me = self.clone();
        let (n, kept) = (name.to_string(), value.clone());
        tokio::task::spawn_blocking(move || me.keep(&n, version, &kept))
            .await?
            .with_context(|| format!("keeping secret {name} version {version}"))?;
        tracing::info!(secret = %name, version, "secret received and kept sealed");
        Ok(value)
    }

    /// What container `def` of task `task` gets from its secrets: each as an environment
    /// variable (unless its entry says not) and as the file `/run/secrets/<name>`. An error
    /// names the secret (and never a value): what the container's failed start says.
    pub async fn material(
        self: &Arc<Self>,
        task: &DesiredTask,
        def: &ContainerDefinition,
    ) -> Result<SecretMaterial> {
        let mut material = SecretMaterial::default();
        for s in &def.secrets {
            let (r, version) = reference(task, s)?;
            let whole = self.value(&r.secret, version).await?;
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
        Ok(material)
    }

    /// Deletes every kept value no task of `desired` is placed with; returns how many.
    pub fn retain(&self, desired: &DesiredState) -> Result<usize> {
        let wanted: BTreeSet<String> = desired
            .tasks
            .iter()
            .flat_map(|t| t.secret_versions.iter().map(|(n, v)| key_text(n, *v)))
            .collect();
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

/// The secret and version entry `s` of a container of `task` names.
fn reference(task: &DesiredTask, s: &ContainerSecret) -> Result<(SecretRef, u32)> {
    let r = s.reference().ok_or_else(|| {
        anyhow!(
            "secret for {}: '{}' is no Flotilla reference",
            s.name,
            s.value_from
        )
    })?;
    let version = task
        .secret_versions
        .get(&r.secret)
        .copied()
        .ok_or_else(|| {
            anyhow!(
                "secret {} for {}: the task was placed without it (the secret was removed)",
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
        }
    }

    #[tokio::test]
    async fn kept_values_are_sealed_made_into_material_and_dropped_when_no_task_needs_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Database::create(dir.path().join("agent.redb")).expect("db"));
        let secrets = Arc::new(Secrets::open(db.clone(), dir.path()).expect("open"));
        let value = br#"{"user": "app", "password": "hunter2-node"}"#;
        secrets.keep("db", 3, value).expect("keep");
        drop(secrets);
        // Sealed in the database: the value is nowhere in the file.
        let file = std::fs::read(dir.path().join("agent.redb")).expect("read");
        assert!(!file.windows(12).any(|w| w == b"hunter2-node"));
        let secrets = Arc::new(Secrets::open(db, dir.path()).expect("reopen"));
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
        assert!(format!("{e:#}").contains("secret gone for P"), "{e:#}");
        let desired = DesiredState {
            generation: 2,
            tasks: vec![t.clone()],
            ..Default::default()
        };
        assert_eq!(secrets.retain(&desired).expect("retain"), 0);
        assert_eq!(secrets.retain(&DesiredState::default()).expect("retain"), 1);
        assert!(secrets.kept("db", 3).expect("read").is_none());
    }
}
