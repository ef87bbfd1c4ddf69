//! Reading Compose files into one canonical document.
//!
//! The steps, in the order `docker compose` takes them (compose-go's `loader`), with the
//! Compose specification's page for each (<https://github.com/compose-spec/compose-spec>):
//!
//! 1. **Files.** `-f` files in order, relative ones against the working directory; without
//!    any, the first of `compose.yaml`, `compose.yml`, `docker-compose.yaml`,
//!    `docker-compose.yml` there, followed, as `docker compose` reads them (compose-go's
//!    `DefaultOverrideFileNames`), by the first of `compose.override.yml`,
//!    `compose.override.yaml`, `docker-compose.override.yml`, `docker-compose.override.yaml`
//!    in the same directory when one is there: merged after it as a second `-f` file would
//!    be. The project directory is the first file's directory.
//! 2. **Environment** for interpolation: the `--env-file` files (a missing one is an error),
//!    or else `.env` in the project directory when present, read with Compose's dotenv rules
//!    (see `dotenv.rs`); the process environment wins over them.
//! 3. **Each file on its own** (`interpolation.md`: "interpolation is applied before a merge
//!    on a per-file basis"): YAML parsed, `<<` merge keys applied, every string value
//!    interpolated (keys never; `x-` extension fields too, as compose-go does), the obsolete
//!    top-level `version` dropped with a warning, each service put in its canonical shape
//!    (see `merge.rs`), then `extends` resolved (`extends.md`): the base service, from the same
//!    file or from `file:` (relative to the extending file's directory, read and interpolated
//!    with the same environment, its relative paths resolved against its own directory),
//!    merged under the extending service by the merge rules; chains allowed up to 64 deep,
//!    cycles are errors. As in compose-go, every attribute is inherited, `depends_on` and
//!    `volumes_from` included.
//! 4. **Merge** the files in order (`merge.md`, see `merge.rs`), `!reset` and `!override`
//!    honoured; tags left over afterwards are dropped.
//! 5. **Canonical forms**, what `docker compose config` prints: relative paths made absolute
//!    against the project directory (`build.context` unless a URL, `env_file`, bind volume
//!    sources starting with `.` or `~`, long-syntax `type: bind` sources, top-level `secrets`
//!    and `configs` `file:`; `~` is `HOME` from the environment, and a bind source written
//!    with `~` is noted in [`Loaded::home_paths`] so the plan can say it is a path of this
//!    machine); `env_file` read and inlined
//!    into `environment` (`environment` wins, the key removed); an `environment` or
//!    `build.args` entry without a value takes it from the interpolation environment and is
//!    left out when not set there; `depends_on` entries `{condition, required, restart}`
//!    (defaults `service_started`, `true`, `false`); `networks` a mapping with a mapping per
//!    network; repeated unique resources (`volumes`, `ports`, `secrets`, `configs`) collapsed.
//! 6. **Profiles** (`profiles.md`): a service with `profiles` stays only when one of them is
//!    active (`--profile`, `COMPOSE_PROFILES`; `*` activates all). A remaining service that
//!    depends on (`depends_on`, `links`, `volumes_from`, `network_mode: service:…`) a service
//!    that is not there is an error, unless the `depends_on` entry says `required: false`
//!    (then the entry is dropped with a warning).
//! 7. **Name**: `-p`, else the top-level `name:`, else `COMPOSE_PROJECT_NAME`, else the
//!    project directory's name made into a DNS label (see [`project_name_from_dir`]); an
//!    explicit name must already be a DNS label. Written to the document's `name:`.
//!
//! Shapes the plan step reads: `ports` and `volumes` entries stay in the syntax they were
//! written in (short strings, or long mappings), short volume sources made absolute when
//! they are paths; `environment`, `labels`, `annotations`, `sysctls` are mappings of strings;
//! `extra_hosts` maps a host to a list of addresses; `ulimits` entries are `{soft, hard}`;
//! scalars otherwise stay as YAML gave them (`"80"` or `80`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use yaml_serde::{Mapping, Value};

use crate::files::read_text;
use crate::interpolate::interpolate_tree;
use crate::merge::{
    dedupe_unique, merge, merge_mappings, normalize_service, scalar_string, short_volume, Unique,
};
use crate::{dotenv, Loaded};

/// What `flotilla compose` was told.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f`, in order (later files override earlier ones); empty: `compose.yaml`,
    /// `compose.yml`, `docker-compose.yaml` or `docker-compose.yml` in `working_dir`, then
    /// its override file there if any (see [`OVERRIDE_FILES`]).
    pub files: Vec<PathBuf>,
    /// The directory the command runs in.
    pub working_dir: PathBuf,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--env-file`, in order; empty: `.env` in the project directory, if present.
    pub env_files: Vec<PathBuf>,
    /// `--profile` (with `COMPOSE_PROFILES`).
    pub profiles: Vec<String>,
    /// The process's environment, which wins over the env files.
    pub environment: BTreeMap<String, String>,
}

/// The names looked for in the working directory when no file is given, in order.
pub const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The override files looked for beside the default file, in order: the first one present is
/// merged after it (compose-go's `DefaultOverrideFileNames`).
pub const OVERRIDE_FILES: [&str; 4] = [
    "compose.override.yml",
    "compose.override.yaml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

/// How long an `extends` chain may be.
const MAX_EXTENDS: usize = 64;

/// Loads a project.
///
/// # Errors
/// Every problem found, each naming its file and key path (`FILE: services.web.image: …`):
/// no compose file, unreadable or malformed files, a required variable missing, a malformed
/// `${…}`, an `extends` that cannot be resolved or that loops, a missing `env_file`, a
/// service depending on one that is not there, a project name that is not a DNS label.
pub fn load(opts: &LoadOptions) -> Result<Loaded, Vec<String>> {
    let mut diag = Diag::default();
    let files = compose_files(opts)?;
    let project_dir = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let env = interpolation_environment(opts, &project_dir, &mut diag);

    let mut loader = FileLoader {
        env: &env,
        cache: HashMap::new(),
        resolved: HashMap::new(),
        diag: &mut diag,
    };
    let mut merged: Option<Mapping> = None;
    for file in &files {
        let Some(mut doc) = loader.file(file) else {
            continue;
        };
        loader.resolve_extends(file, &mut doc);
        merged = Some(match merged {
            None => doc,
            Some(earlier) => merge_mappings(earlier, doc, &[]),
        });
    }
    if !diag.errors.is_empty() {
        return Err(diag.errors);
    }
    let mut doc = Value::Mapping(merged.unwrap_or_default());
    strip_tags(&mut doc, "", &mut diag);
    let Value::Mapping(mut doc) = doc else {
        return Err(vec!["compose: the document is not a mapping".into()]);
    };
    if doc.contains_key("include") {
        diag.error("include: is not supported yet; merge the files with -f instead".into());
    }

    let mut services = match doc.remove("services") {
        Some(Value::Mapping(s)) => s,
        _ => Mapping::new(),
    };
    for (name, service) in services.iter_mut() {
        if diag.exhausted() {
            return Err(diag.errors);
        }
        let path = child_path("services", name);
        if let Value::Mapping(service) = service {
            resolve_paths(service, &project_dir, &env, &path, &mut diag);
            finalize_service(service, &env, &path, &mut diag);
        }
    }
    for top in ["secrets", "configs"] {
        if let Some(Value::Mapping(items)) = doc.get_mut(top) {
            for (name, item) in items.iter_mut() {
                let path = format!("{}.file", child_path(top, name));
                if let Some(file) = item.get_mut("file") {
                    if let Some(s) = file.as_str() {
                        if let Some(abs) = absolute(s, &project_dir, &env, &path, &mut diag) {
                            *file = Value::String(abs);
                        }
                    }
                }
            }
        }
    }
    apply_profiles(&mut services, opts, &env, &mut diag);

    let name = project_name(opts, &doc, &env, &project_dir, &mut diag);
    if !diag.errors.is_empty() {
        return Err(diag.errors);
    }
    let name = name.unwrap_or_default();
    let mut document = Mapping::new();
    document.insert("name".into(), Value::String(name.clone()));
    doc.remove("name");
    document.insert("services".into(), Value::Mapping(services));
    document.extend(doc);
    Ok(Loaded {
        name,
        project_dir,
        document: Value::Mapping(document),
        warnings: once_per_variable(diag.warnings),
        home_paths: diag.home_paths,
    })
}

/// The unset-variable warnings one per variable, as `docker compose` gives them: the first
/// place it was used, and how many more there were; other warnings as they were.
fn once_per_variable(warnings: Vec<String>) -> Vec<String> {
    // (warning's index in `out`, further uses) by variable.
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    let mut out: Vec<String> = Vec::with_capacity(warnings.len());
    for w in warnings {
        let name = w
            .strip_prefix("the ")
            .and_then(|rest| rest.split_once(" variable is not set; "))
            .map(|(name, _)| name.to_string());
        match name {
            Some(name) => match seen.get_mut(&name) {
                Some((_, more)) => *more += 1,
                None => {
                    seen.insert(name, (out.len(), 0));
                    out.push(w);
                }
            },
            None => out.push(w),
        }
    }
    for (at, more) in seen.into_values() {
        if more > 0 {
            let w = &mut out[at];
            if w.ends_with(')') {
                w.pop();
                let places = if more == 1 { "place" } else { "places" };
                w.push_str(&format!(", and {more} more {places})"));
            }
        }
    }
    out
}

/// How large the loaded project may grow, counted as [`crate::yaml::size`] counts: every
/// copy that aliases, `extends`, repeated `-f` files, `env_file` and variables make counts, so
/// no combination of them takes unbounded memory.
const MAX_DOCUMENT: usize = 32 * 1024 * 1024;

/// Errors and warnings gathered along the way.
#[derive(Debug, Default)]
pub(crate) struct Diag {
    pub(crate) errors: Vec<String>,
    pub(crate) warnings: Vec<String>,
    /// Bind sources made absolute from `~`, as [`Loaded::home_paths`] has them.
    pub(crate) home_paths: BTreeMap<String, String>,
    /// What the copies made so far count towards [`MAX_DOCUMENT`].
    spent: usize,
}

impl Diag {
    /// Counts `size` towards [`MAX_DOCUMENT`]; `false` (with one error) once past it.
    fn charge(&mut self, size: usize) -> bool {
        let before = self.spent;
        self.spent = self.spent.saturating_add(size);
        if self.spent <= MAX_DOCUMENT {
            return true;
        }
        if before <= MAX_DOCUMENT {
            self.error(format!(
                "the project is larger than {} MiB once loaded: every -f file, extends, env_file and expanded alias counts each time it is used",
                MAX_DOCUMENT / (1024 * 1024)
            ));
        }
        false
    }

    /// Whether [`MAX_DOCUMENT`] was passed: the rest of the work is skipped.
    fn exhausted(&self) -> bool {
        self.spent > MAX_DOCUMENT
    }

    pub(crate) fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }
}

/// A mapping key as text (strings, numbers, booleans; `None` for others).
pub(crate) fn key_name(key: &Value) -> Option<String> {
    scalar_string(key)
}

/// `path.key`, or `key` at the top.
pub(crate) fn child_path(path: &str, key: &Value) -> String {
    let key = key_name(key).unwrap_or_else(|| "?".into());
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn compose_files(opts: &LoadOptions) -> Result<Vec<PathBuf>, Vec<String>> {
    let working_dir = clean(&opts.working_dir);
    if !opts.files.is_empty() {
        return Ok(opts
            .files
            .iter()
            .map(|f| clean(&working_dir.join(f)))
            .collect());
    }
    let first = |names: &[&str]| {
        names
            .iter()
            .map(|name| working_dir.join(name))
            .find(|path| path.is_file())
    };
    first(&DEFAULT_FILES)
        .map(|path| {
            let mut files = vec![path];
            files.extend(first(&OVERRIDE_FILES));
            files
        })
        .ok_or_else(|| {
            vec![format!(
                "no compose file in {}: looked for {}",
                working_dir.display(),
                DEFAULT_FILES.join(", ")
            )]
        })
}

/// Makes `path` absolute (against the current directory when relative) and removes `.` and
/// `..` components without touching the file system.
fn clean(path: &Path) -> PathBuf {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
    };
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn interpolation_environment(
    opts: &LoadOptions,
    project_dir: &Path,
    diag: &mut Diag,
) -> BTreeMap<String, String> {
    let working_dir = clean(&opts.working_dir);
    let files: Vec<(PathBuf, bool)> = if opts.env_files.is_empty() {
        vec![(project_dir.join(".env"), false)]
    } else {
        opts.env_files
            .iter()
            .map(|f| (clean(&working_dir.join(f)), true))
            .collect()
    };
    let mut vars = BTreeMap::new();
    for (file, required) in files {
        let text = match read_text(&file) {
            Ok(text) => text,
            Err(e) if !required && e.is_not_found() => continue,
            Err(e) => {
                diag.error(format!("env file {}: {e}", file.display()));
                continue;
            }
        };
        let lookup = |k: &str| opts.environment.get(k).or_else(|| vars.get(k)).cloned();
        match dotenv::parse(&text, &file.display().to_string(), &lookup, false) {
            Ok(parsed) => vars.extend(parsed),
            Err(errors) => diag.errors.extend(errors),
        }
    }
    vars.extend(opts.environment.clone());
    vars
}

/// Reads files once each, and resolves `extends` across them.
struct FileLoader<'a> {
    env: &'a BTreeMap<String, String>,
    /// Each file read, as [`FileLoader::read`] left it (`None`: it failed, already reported).
    cache: HashMap<PathBuf, Option<Mapping>>,
    /// Each service whose `extends` was resolved (`None`: it failed, already reported), so a
    /// base extended by many services, or through a long chain, is resolved once.
    resolved: HashMap<(PathBuf, String), Option<Mapping>>,
    diag: &'a mut Diag,
}

impl FileLoader<'_> {
    fn file(&mut self, path: &Path) -> Option<Mapping> {
        let doc = match self.cache.get(path) {
            Some(doc) => doc.clone(),
            None => {
                let doc = self.read(path);
                self.cache.insert(path.to_path_buf(), doc.clone());
                doc
            }
        }?;
        let size = crate::yaml::mapping_size(&doc);
        self.diag.charge(size).then_some(doc)
    }

    /// Parses, merges `<<` keys, interpolates and normalizes one file.
    fn read(&mut self, path: &Path) -> Option<Mapping> {
        let shown = path.display().to_string();
        let text = read_text(path)
            .map_err(|e| self.diag.error(format!("{shown}: {e}")))
            .ok()?;
        let mut doc: Value = crate::yaml::parse(&text)
            .map_err(|e| self.diag.error(format!("{shown}: {e}")))
            .ok()?;
        doc.apply_merge()
            .map_err(|e| self.diag.error(format!("{shown}: merge keys (<<): {e}")))
            .ok()?;
        if let Value::Mapping(top) = &mut doc {
            if top.shift_remove("version").is_some() {
                self.diag.warn(format!(
                    "{shown}: the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion"
                ));
            }
        }
        let env = self.env;
        let lookup = |k: &str| env.get(k).cloned();
        let errors_before = self.diag.errors.len();
        let mut budget = crate::interpolate::MAX_TOTAL;
        interpolate_tree(
            &mut doc,
            "",
            &shown,
            &lookup,
            &mut self.diag.warnings,
            &mut self.diag.errors,
            &mut budget,
        );
        let mut doc = match doc {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                self.diag
                    .error(format!("{shown}: the top level must be a mapping"));
                return None;
            }
        };
        match doc.get_mut("services") {
            None => {}
            Some(Value::Null) => {
                doc.insert("services".into(), Value::Mapping(Mapping::new()));
            }
            Some(Value::Mapping(services)) => {
                for (name, service) in services.iter_mut() {
                    let path = child_path("services", name);
                    if !matches!(name, Value::String(_)) {
                        self.diag
                            .error(format!("{shown}: {path}: a service name must be a string"));
                    }
                    match service {
                        Value::Mapping(service) => {
                            let mut diag = Diag::default();
                            normalize_service(service, &path, &mut diag);
                            self.diag
                                .errors
                                .extend(diag.errors.into_iter().map(|e| format!("{shown}: {e}")));
                        }
                        _ => self
                            .diag
                            .error(format!("{shown}: {path}: a service must be a mapping")),
                    }
                }
            }
            Some(_) => self
                .diag
                .error(format!("{shown}: services: must be a mapping")),
        }
        (self.diag.errors.len() == errors_before).then_some(doc)
    }

    /// Resolves `extends` in every service of `doc`, read from `file`.
    fn resolve_extends(&mut self, file: &Path, doc: &mut Mapping) {
        let Some(Value::Mapping(services)) = doc.get("services") else {
            return;
        };
        let names: Vec<String> = services.keys().filter_map(key_name).collect();
        let mut resolved = Vec::new();
        for name in names {
            if self.diag.exhausted() {
                return;
            }
            let mut chain = Vec::new();
            if let Some(service) = self.service(file, &name, &mut chain) {
                resolved.push((name, service));
            }
        }
        if let Some(Value::Mapping(services)) = doc.get_mut("services") {
            for (name, service) in resolved {
                services.insert(Value::String(name), Value::Mapping(service));
            }
        }
    }

    /// Service `name` of `file` with its `extends` resolved. `chain` is the services being
    /// resolved, to find cycles.
    fn service(
        &mut self,
        file: &Path,
        name: &str,
        chain: &mut Vec<(PathBuf, String)>,
    ) -> Option<Mapping> {
        let key = (file.to_path_buf(), name.to_owned());
        if let Some(done) = self.resolved.get(&key) {
            return done.clone();
        }
        let service = self.resolve(file, name, chain);
        // Each copy kept counts: this one, and the one its caller makes of it.
        if let Some(s) = &service {
            if !self.diag.charge(crate::yaml::mapping_size(s)) {
                return None;
            }
        }
        // A failure met inside a cycle is only this chain's; the cycle is reported anyway.
        self.resolved.insert(key, service.clone());
        service
    }

    /// [`FileLoader::service`] without the memory of services resolved before.
    fn resolve(
        &mut self,
        file: &Path,
        name: &str,
        chain: &mut Vec<(PathBuf, String)>,
    ) -> Option<Mapping> {
        let shown = file.display().to_string();
        let link = (file.to_path_buf(), name.to_owned());
        if chain.contains(&link) || chain.len() >= MAX_EXTENDS {
            let mut steps: Vec<String> = chain
                .iter()
                .map(|(f, s)| format!("{s} ({})", f.display()))
                .collect();
            steps.push(format!("{name} ({shown})"));
            let what = if chain.contains(&link) {
                "extends forms a cycle"
            } else {
                "extends chain is longer than 64"
            };
            self.diag.error(format!("{what}: {}", steps.join(" -> ")));
            return None;
        }
        if !self.cache.contains_key(file) {
            let doc = self.read(file);
            self.cache.insert(file.to_path_buf(), doc);
        }
        // Only the one service is cloned: a file's document is read once however many of its
        // services are extended.
        let doc = self.cache.get(file).and_then(Option::as_ref)?;
        let Some(Value::Mapping(mut service)) =
            doc.get("services").and_then(|s| s.get(name)).cloned()
        else {
            let from = chain
                .last()
                .map(|(f, s)| format!("{}: services.{s}.extends: ", f.display()))
                .unwrap_or_default();
            self.diag
                .error(format!("{from}no service {name} in {shown}"));
            return None;
        };
        let Some(extends) = service.shift_remove("extends") else {
            return Some(service);
        };
        if self.diag.exhausted() {
            return None;
        }
        let path = format!("{shown}: services.{name}.extends");
        let (base_name, base_file) = match &extends {
            Value::String(s) => (s.clone(), None),
            Value::Mapping(m) => {
                let Some(base) = m.get("service").and_then(Value::as_str) else {
                    self.diag
                        .error(format!("{path}.service: must be a service name"));
                    return None;
                };
                let base_file = match m.get("file") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(f)) => Some(f.clone()),
                    Some(_) => {
                        self.diag.error(format!("{path}.file: must be a path"));
                        return None;
                    }
                };
                (base.to_owned(), base_file)
            }
            _ => {
                self.diag.error(format!(
                    "{path}: must be a service name or {{service, file}}"
                ));
                return None;
            }
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_path = match &base_file {
            None => file.to_path_buf(),
            Some(f) => {
                let abs = absolute(f, &dir, self.env, &format!("{path}.file"), self.diag)?;
                PathBuf::from(abs)
            }
        };
        chain.push(link);
        let base = self.service(&base_path, &base_name, chain);
        chain.pop();
        let mut base = base?;
        if base_path != file {
            let base_dir = base_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let base_shown = format!("{}: services.{base_name}", base_path.display());
            resolve_paths(&mut base, &base_dir, self.env, &base_shown, self.diag);
        }
        let segments = vec!["services".to_owned(), name.to_owned()];
        match merge(Value::Mapping(base), Value::Mapping(service), &segments) {
            Some(Value::Mapping(merged)) => Some(merged),
            _ => Some(Mapping::new()),
        }
    }
}

/// Removes what `!reset` marks and unwraps every other tag (warning about unknown ones).
fn strip_tags(value: &mut Value, path: &str, diag: &mut Diag) {
    match value {
        Value::Mapping(map) => {
            map.retain(|_, v| !matches!(v, Value::Tagged(t) if t.tag == "reset"));
            for (k, v) in map.iter_mut() {
                let p = child_path(path, k);
                untag(v, &p, diag);
                strip_tags(v, &p, diag);
            }
        }
        Value::Sequence(items) => {
            items.retain(|v| !matches!(v, Value::Tagged(t) if t.tag == "reset"));
            for (i, v) in items.iter_mut().enumerate() {
                let p = format!("{path}[{i}]");
                untag(v, &p, diag);
                strip_tags(v, &p, diag);
            }
        }
        _ => {}
    }
}

fn untag(value: &mut Value, path: &str, diag: &mut Diag) {
    while let Value::Tagged(tagged) = value {
        if tagged.tag != "override" {
            diag.warn(format!(
                "{path}: the tag {} is not a Compose tag; ignored",
                tagged.tag
            ));
        }
        let inner = std::mem::take(&mut tagged.value);
        *value = inner;
    }
}

/// Makes `path` absolute against `dir`: `~` and `~/…` against `HOME` from `env`; `.` and
/// `..` removed. `None` (with an error naming `at`) when `HOME` is needed and not set.
fn absolute(
    path: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    at: &str,
    diag: &mut Diag,
) -> Option<String> {
    let joined = if path == "~" || path.starts_with("~/") {
        let Some(home) = env.get("HOME").filter(|h| !h.is_empty()) else {
            diag.error(format!("{at}: {path} needs HOME, which is not set"));
            return None;
        };
        Path::new(home).join(path.trim_start_matches('~').trim_start_matches('/'))
    } else {
        dir.join(path)
    };
    Some(clean(&joined).to_string_lossy().into_owned())
}

/// Whether a build context is a URL rather than a directory.
fn is_remote_context(context: &str) -> bool {
    context.contains("://") || context.starts_with("git@") || context.starts_with("github.com/")
}

/// Makes one service's relative paths absolute against `dir` (compose-go's
/// `ResolveRelativePaths`). `path` names the service in errors.
fn resolve_paths(
    service: &mut Mapping,
    dir: &Path,
    env: &BTreeMap<String, String>,
    path: &str,
    diag: &mut Diag,
) {
    if let Some(Value::Mapping(build)) = service.get_mut("build") {
        if let Some(Value::String(context)) = build.get_mut("context") {
            if !is_remote_context(context) {
                let at = format!("{path}.build.context");
                if let Some(abs) = absolute(context, dir, env, &at, diag) {
                    *context = abs;
                }
            }
        }
    }
    if let Some(Value::Sequence(files)) = service.get_mut("env_file") {
        for (i, entry) in files.iter_mut().enumerate() {
            let at = format!("{path}.env_file[{i}]");
            let slot = match entry {
                Value::String(_) => Some(entry),
                Value::Mapping(m) => m.get_mut("path"),
                _ => None,
            };
            if let Some(Value::String(file)) = slot {
                if let Some(abs) = absolute(file, dir, env, &at, diag) {
                    *file = abs;
                }
            }
        }
    }
    if let Some(Value::Sequence(volumes)) = service.get_mut("volumes") {
        for (i, volume) in volumes.iter_mut().enumerate() {
            let at = format!("{path}.volumes[{i}]");
            match volume {
                Value::String(spec) => {
                    let (Some(source), target, mode) = short_volume(spec) else {
                        continue;
                    };
                    if !(source.starts_with('.') || source.starts_with('~')) {
                        continue;
                    }
                    let Some(abs) = absolute(source, dir, env, &at, diag) else {
                        continue;
                    };
                    if source.starts_with('~') {
                        diag.home_paths.insert(abs.clone(), source.to_string());
                    }
                    if abs.contains(':') {
                        diag.error(format!(
                            "{at}: the source {abs} holds a ':', which the short syntax cannot carry; use the long syntax"
                        ));
                        continue;
                    }
                    let mut rebuilt = format!("{abs}:{target}");
                    if let Some(mode) = mode {
                        rebuilt.push(':');
                        rebuilt.push_str(mode);
                    }
                    *spec = rebuilt;
                }
                Value::Mapping(long) => {
                    if long.get("type").and_then(Value::as_str) != Some("bind") {
                        continue;
                    }
                    if let Some(Value::String(source)) = long.get_mut("source") {
                        if let Some(abs) = absolute(source, dir, env, &at, diag) {
                            if source.starts_with('~') {
                                diag.home_paths.insert(abs.clone(), source.clone());
                            }
                            *source = abs;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Inlines `env_file`, resolves value-less entries, fills `depends_on` and `networks`,
/// collapses repeated unique resources.
fn finalize_service(
    service: &mut Mapping,
    env: &BTreeMap<String, String>,
    path: &str,
    diag: &mut Diag,
) {
    let mut environment = Mapping::new();
    let had_env_file = service.contains_key("env_file");
    if let Some(files) = service.shift_remove("env_file") {
        let entries = match files {
            Value::Sequence(entries) => entries,
            Value::Null => Vec::new(),
            _ => {
                diag.error(format!("{path}.env_file: must be a path or a list"));
                Vec::new()
            }
        };
        for (i, entry) in entries.iter().enumerate() {
            let at = format!("{path}.env_file[{i}]");
            let (file, required, format) = match entry {
                Value::String(f) => (f.clone(), true, None),
                Value::Mapping(m) => {
                    let Some(f) = m.get("path").and_then(Value::as_str) else {
                        diag.error(format!("{at}.path: must be a path"));
                        continue;
                    };
                    let required = match m.get("required") {
                        None => true,
                        Some(Value::Bool(b)) => *b,
                        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
                        Some(_) => {
                            diag.error(format!("{at}.required: must be true or false"));
                            continue;
                        }
                    };
                    (
                        f.to_owned(),
                        required,
                        m.get("format").and_then(Value::as_str),
                    )
                }
                _ => {
                    diag.error(format!("{at}: must be a path or {{path, required}}"));
                    continue;
                }
            };
            let raw = match format {
                None => false,
                Some("raw") => true,
                Some(other) => {
                    diag.error(format!("{at}.format: {other} is not a known format (raw)"));
                    continue;
                }
            };
            if diag.exhausted() {
                return;
            }
            let text = match read_text(Path::new(&file)) {
                Ok(text) => text,
                Err(e) if !required && e.is_not_found() => continue,
                Err(e) => {
                    diag.error(format!("{at}: {file}: {e}"));
                    continue;
                }
            };
            // Each service that names the file gets its own copy: its text, and a node for each
            // name and value.
            let lines = text.bytes().filter(|&b| b == b'\n').count();
            if !diag.charge(text.len().saturating_add(lines.saturating_mul(128))) {
                continue;
            }
            let lookup = |k: &str| env.get(k).cloned();
            match dotenv::parse(&text, &file, &lookup, raw) {
                Ok(vars) => {
                    for (k, v) in vars {
                        environment.insert(Value::String(k), Value::String(v));
                    }
                }
                Err(errors) => diag
                    .errors
                    .extend(errors.into_iter().map(|e| format!("{at}: {e}"))),
            }
        }
    }
    let had_environment = service.contains_key("environment");
    if let Some(Value::Mapping(own)) = service.get("environment") {
        for (k, v) in own {
            match v {
                Value::Null => match key_name(k).and_then(|k| env.get(&k)) {
                    Some(value) => {
                        environment.insert(k.clone(), Value::String(value.clone()));
                    }
                    None => {
                        environment.shift_remove(k);
                    }
                },
                other => {
                    environment.insert(k.clone(), other.clone());
                }
            }
        }
    }
    if had_environment || had_env_file {
        service.insert("environment".into(), Value::Mapping(environment));
    }
    if let Some(Value::Mapping(args)) = service
        .get_mut("build")
        .and_then(|b| b.as_mapping_mut())
        .and_then(|b| b.get_mut("args"))
    {
        let mut resolved = Mapping::new();
        for (k, v) in std::mem::take(args) {
            match v {
                Value::Null => {
                    if let Some(value) = key_name(&k).and_then(|k| env.get(&k)) {
                        resolved.insert(k, Value::String(value.clone()));
                    }
                }
                other => {
                    resolved.insert(k, other);
                }
            }
        }
        *args = resolved;
    }
    if let Some(Value::Mapping(deps)) = service.get_mut("depends_on") {
        for (k, dep) in deps.iter_mut() {
            if dep.is_null() {
                *dep = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(dep) = dep else {
                diag.error(format!(
                    "{}: must be a mapping",
                    child_path(&format!("{path}.depends_on"), k)
                ));
                continue;
            };
            for (key, default) in [
                ("condition", Value::from("service_started")),
                ("required", Value::Bool(true)),
                ("restart", Value::Bool(false)),
            ] {
                if !dep.contains_key(key) {
                    dep.insert(key.into(), default);
                }
            }
        }
    }
    if let Some(Value::Mapping(networks)) = service.get_mut("networks") {
        for (_, network) in networks.iter_mut() {
            if network.is_null() {
                *network = Value::Mapping(Mapping::new());
            }
        }
    }
    for (attr, kind) in Unique::ALL {
        if let Some(Value::Sequence(list)) = service.get_mut(attr) {
            *list = dedupe_unique(std::mem::take(list), kind);
        }
    }
}

fn apply_profiles(
    services: &mut Mapping,
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    diag: &mut Diag,
) {
    let mut active: Vec<String> = opts.profiles.clone();
    if let Some(list) = env.get("COMPOSE_PROFILES") {
        active.extend(
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    let all = active.iter().any(|p| p == "*");
    let mut disabled: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, service) in services.iter() {
        let path = format!("{}.profiles", child_path("services", name));
        let profiles = match service.get("profiles") {
            None | Some(Value::Null) => continue,
            Some(Value::Sequence(list)) => list,
            Some(_) => {
                diag.error(format!("{path}: must be a list of profile names"));
                continue;
            }
        };
        let names: Vec<String> = profiles.iter().filter_map(scalar_string).collect();
        if names.len() != profiles.len() {
            diag.error(format!("{path}: must be a list of profile names"));
            continue;
        }
        if !names.is_empty() && !all && !names.iter().any(|p| active.contains(p)) {
            disabled.insert(key_name(name).unwrap_or_default(), names);
        }
    }
    services.retain(|name, _| !disabled.contains_key(&key_name(name).unwrap_or_default()));
    let present: Vec<String> = services.keys().filter_map(key_name).collect();
    let missing = |target: &str| -> Option<String> {
        if present.iter().any(|p| p == target) {
            return None;
        }
        Some(match disabled.get(target) {
            Some(profiles) => format!(
                "service {target} is not enabled (profiles: {}; enable one with --profile or COMPOSE_PROFILES)",
                profiles.join(", ")
            ),
            None => format!("service {target} is not defined"),
        })
    };
    for (name, service) in services.iter_mut() {
        let path = child_path("services", name);
        let Value::Mapping(service) = service else {
            continue;
        };
        if let Some(Value::Mapping(deps)) = service.get_mut("depends_on") {
            let mut dropped = Vec::new();
            for (dep, spec) in deps.iter() {
                let Some(target) = key_name(dep) else {
                    continue;
                };
                let Some(why) = missing(&target) else {
                    continue;
                };
                let optional = spec.get("required") == Some(&Value::Bool(false));
                let at = format!("{path}.depends_on.{target}");
                if optional {
                    diag.warn(format!(
                        "{at}: {why}; the dependency is optional and dropped"
                    ));
                    dropped.push(dep.clone());
                } else {
                    diag.error(format!("{at}: {why}"));
                }
            }
            for dep in dropped {
                deps.shift_remove(&dep);
            }
        }
        let mut check = |at: String, target: &str| {
            if let Some(why) = missing(target) {
                diag.error(format!("{at}: {why}"));
            }
        };
        for attr in ["links", "volumes_from"] {
            if let Some(Value::Sequence(list)) = service.get(attr) {
                for (i, entry) in list.iter().enumerate() {
                    let Some(entry) = entry.as_str() else {
                        continue;
                    };
                    if attr == "volumes_from" && entry.starts_with("container:") {
                        continue;
                    }
                    let target = entry.split(':').next().unwrap_or_default();
                    check(format!("{path}.{attr}[{i}]"), target);
                }
            }
        }
        if let Some(target) = service
            .get("network_mode")
            .and_then(Value::as_str)
            .and_then(|m| m.strip_prefix("service:"))
        {
            check(format!("{path}.network_mode"), target);
        }
    }
}

/// The project's name from the options, the document or the environment, else from the
/// project directory. `None` (with an error) when an explicit name is not a DNS label.
fn project_name(
    opts: &LoadOptions,
    doc: &Mapping,
    env: &BTreeMap<String, String>,
    project_dir: &Path,
    diag: &mut Diag,
) -> Option<String> {
    let given = opts
        .project_name
        .clone()
        .filter(|n| !n.is_empty())
        .map(|n| (n, "-p"));
    let from_doc = match doc.get("name") {
        None | Some(Value::Null) => None,
        Some(value) => match scalar_string(value) {
            Some(n) if !n.is_empty() => Some((n, "the top-level name:")),
            Some(_) => None,
            None => {
                diag.error("name: must be a string".into());
                return None;
            }
        },
    };
    let from_env = env
        .get("COMPOSE_PROJECT_NAME")
        .filter(|n| !n.is_empty())
        .map(|n| (n.clone(), "COMPOSE_PROJECT_NAME"));
    if let Some((name, origin)) = given.or(from_doc).or(from_env) {
        if flotilla_api::discovery::is_label(&name) {
            return Some(name);
        }
        diag.error(format!(
            "project name {} (from {origin}) is not a DNS label: lowercase letters, digits and hyphens, 1 to 63 characters, not starting or ending with a hyphen",
            crate::interpolate::excerpt(&name)
        ));
        return None;
    }
    let dir_name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = project_name_from_dir(&dir_name);
    if name.is_empty() {
        diag.error(format!(
            "cannot make a project name of the directory {}; give one with -p or name:",
            project_dir.display()
        ));
        return None;
    }
    Some(name)
}

/// A project directory's name made into a DNS label: lowercased, `_` and `.` made `-`, other
/// characters that are not letters, digits or `-` dropped, cut to 63 characters, hyphens
/// trimmed from both ends (`My_App.v2` → `my-app-v2`). Empty when nothing is left.
pub fn project_name_from_dir(dir_name: &str) -> String {
    let mapped: String = dir_name
        .chars()
        .filter_map(|c| match c {
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            'a'..='z' | '0'..='9' | '-' => Some(c),
            '_' | '.' => Some('-'),
            _ => None,
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let cut: String = trimmed.chars().take(63).collect();
    cut.trim_end_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project directory with the given files.
    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn options(dir: &Path) -> LoadOptions {
        LoadOptions {
            working_dir: dir.to_path_buf(),
            project_name: Some("test".into()),
            environment: [("HOME".to_owned(), "/home/user".to_owned())].into(),
            ..LoadOptions::default()
        }
    }

    fn load_ok(opts: &LoadOptions) -> Loaded {
        load(opts).unwrap_or_else(|errors| panic!("loads: {errors:#?}"))
    }

    fn load_err(opts: &LoadOptions) -> Vec<String> {
        load(opts).expect_err("fails")
    }

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).expect("valid yaml")
    }

    fn service<'a>(loaded: &'a Loaded, name: &str) -> &'a Value {
        loaded
            .document
            .get("services")
            .and_then(|s| s.get(name))
            .unwrap_or_else(|| panic!("service {name} in {:#?}", loaded.document))
    }

    fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
        path.split('.')
            .fold(value, |v, k| match k.parse::<usize>() {
                Ok(i) if v.is_sequence() => &v[i],
                _ => &v[k],
            })
    }

    fn d(dir: &Path) -> String {
        dir.display().to_string()
    }

    #[test]
    fn default_file_names_in_order_and_an_error_naming_them() {
        let dir = project(&[]);
        let errors = load_err(&options(dir.path()));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains(&d(dir.path())), "{errors:?}");
        assert!(errors[0]
            .contains("compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml"));

        let dir = project(&[
            ("docker-compose.yml", "services: {old: {image: a}}"),
            ("compose.yml", "services: {new: {image: a}}"),
        ]);
        let loaded = load_ok(&options(dir.path()));
        assert!(loaded.document["services"].get("new").is_some());
        assert_eq!(loaded.project_dir, dir.path());
    }

    #[test]
    fn without_f_the_override_file_beside_the_default_file_is_merged_after_it() {
        let dir = project(&[
            (
                "compose.yaml",
                "services: {web: {image: a, environment: {A: base, B: base}}}",
            ),
            (
                "compose.override.yaml",
                "services: {web: {environment: {B: override}}, extra: {image: b}}",
            ),
            (
                "docker-compose.override.yml",
                "services: {not-read: {image: c}}",
            ),
        ]);
        let loaded = load_ok(&options(dir.path()));
        let env = &service(&loaded, "web")["environment"];
        assert_eq!(env["A"], "base");
        assert_eq!(env["B"], "override");
        assert!(loaded.document["services"].get("extra").is_some());
        // One override file only: the first of OVERRIDE_FILES present.
        assert!(loaded.document["services"].get("not-read").is_none());
        assert_eq!(loaded.project_dir, dir.path());

        // A docker-compose.* default file takes its docker-compose.override.* file.
        let dir = project(&[
            ("docker-compose.yml", "services: {web: {image: a}}"),
            ("docker-compose.override.yml", "services: {web: {image: b}}"),
        ]);
        assert_eq!(service(&load_ok(&options(dir.path())), "web")["image"], "b");

        // -f files are read as given: no override file is added to them.
        let mut opts = options(dir.path());
        opts.files = vec!["docker-compose.yml".into()];
        assert_eq!(service(&load_ok(&opts), "web")["image"], "a");

        // An override file alone is no project.
        let dir = project(&[("compose.override.yaml", "services: {web: {image: a}}")]);
        assert!(load_err(&options(dir.path()))[0].contains("no compose file"));
    }

    #[test]
    fn an_unset_variable_is_warned_once_with_the_number_of_other_places() {
        let dir = project(&[(
            "compose.yaml",
            "services:
  a:
    image: \"img${TAG}\"
    environment: {X: $NOPE, Y: $NOPE}
  b:
    image: img
    environment: {X: $NOPE, Z: $ONCE}
",
        )]);
        let loaded = load_ok(&options(dir.path()));
        let file = d(&dir.path().join("compose.yaml"));
        assert_eq!(
            loaded.warnings,
            [
                format!("the TAG variable is not set; using an empty string ({file}: services.a.image)"),
                format!("the NOPE variable is not set; using an empty string ({file}: services.a.environment.X, and 2 more places)"),
                format!("the ONCE variable is not set; using an empty string ({file}: services.b.environment.Z)"),
            ]
        );
    }

    #[test]
    fn bind_sources_written_with_a_tilde_are_noted_as_home_paths() {
        let dir = project(&[(
            "compose.yaml",
            "services:
  web:
    image: a
    volumes:
      - ~/data:/data
      - {type: bind, source: ~/conf, target: /conf}
      - ./local:/local
      - /srv/abs:/abs
",
        )]);
        let loaded = load_ok(&options(dir.path()));
        assert_eq!(
            loaded.home_paths,
            BTreeMap::from([
                ("/home/user/conf".to_string(), "~/conf".to_string()),
                ("/home/user/data".to_string(), "~/data".to_string()),
            ])
        );
        // The plan says they are paths of this machine, as it does of ./local.
        let p = crate::plan(&loaded).expect("plans");
        let at = |i: usize| {
            p.warnings
                .iter()
                .find(|w| w.starts_with(&format!("services.web.volumes[{i}]:")))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            at(0).contains("~/data: a path on this machine (~ is its HOME): each node mounts its own /home/user/data"),
            "{:#?}",
            p.warnings
        );
        assert!(
            at(1).contains("~/conf: a path on this machine"),
            "{:#?}",
            p.warnings
        );
        assert!(
            at(2).contains("a path on this machine"),
            "{:#?}",
            p.warnings
        );
        assert_eq!(at(3), "", "{:#?}", p.warnings);
    }

    #[test]
    fn unreadable_and_malformed_files_are_named() {
        let dir = project(&[("bad.yaml", "services:\n  web: [\n")]);
        let mut opts = options(dir.path());
        opts.files = vec!["missing.yaml".into(), "bad.yaml".into()];
        let errors = load_err(&opts);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("missing.yaml"), "{errors:?}");
        assert!(
            errors[1].contains("bad.yaml") && errors[1].contains("line"),
            "{errors:?}"
        );
    }

    #[test]
    fn environment_from_dotenv_and_process_the_process_winning() {
        let dir = project(&[
            (".env", "A=from-dotenv\nB=from-dotenv\n"),
            ("compose.yaml", "services: {web: {image: \"$A/$B\"}}"),
            ("other.env", "B=other\n"),
        ]);
        let mut opts = options(dir.path());
        opts.environment.insert("B".into(), "from-process".into());
        let loaded = load_ok(&opts);
        assert_eq!(service(&loaded, "web")["image"], "from-dotenv/from-process");

        // --env-file replaces .env.
        let mut opts = options(dir.path());
        opts.env_files = vec!["other.env".into()];
        let loaded = load_ok(&opts);
        assert_eq!(service(&loaded, "web")["image"], "/other");
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);

        opts.env_files = vec!["nope.env".into()];
        let errors = load_err(&opts);
        assert!(errors[0].contains("nope.env"), "{errors:?}");
    }

    #[test]
    fn interpolation_warnings_and_errors_name_file_and_path() {
        let dir = project(&[(
            "compose.yaml",
            "version: '3.8'
x-common: &c {image: \"${IMG:-busybox}\"}
services:
  web:
    <<: *c
    environment:
      FOO: ${UNSET_ONE}
      ${KEY_NOT_INTERPOLATED}: x
    command: echo $${HOME} {{.Node.ID}}
",
        )]);
        let loaded = load_ok(&options(dir.path()));
        let file = d(&dir.path().join("compose.yaml"));
        assert_eq!(
            loaded.warnings,
            [
                format!("{file}: the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion"),
                format!("the UNSET_ONE variable is not set; using an empty string ({file}: services.web.environment.FOO)"),
            ]
        );
        let web = service(&loaded, "web");
        assert_eq!(web["image"], "busybox");
        assert_eq!(web["command"], "echo ${HOME} {{.Node.ID}}");
        assert_eq!(web["environment"]["FOO"], "");
        assert_eq!(web["environment"]["${KEY_NOT_INTERPOLATED}"], "x");
        assert_eq!(loaded.document["x-common"]["image"], "busybox");
        assert!(loaded.document.get("version").is_none());

        let dir = project(&[(
            "compose.yaml",
            "services:
  web:
    image: ${IMAGE:?set IMAGE}
    environment:
      - A=${B}c}
      - C=${D
",
        )]);
        let errors = load_err(&options(dir.path()));
        let file = d(&dir.path().join("compose.yaml"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "{file}: services.web.image: required variable IMAGE"
            )) && errors[0].ends_with("set IMAGE"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(&format!("{file}: services.web.environment[1]: invalid")),
            "{errors:?}"
        );
    }

    #[test]
    fn two_files_merge() {
        let dir = project(&[
            (
                "compose.yaml",
                "services:
  web:
    image: web:1
    command: [serve, --port, '80']
    environment: [A=1, B=2]
    ports: ['8080:80']
    volumes: ['data:/data', './conf:/etc/conf:ro']
",
            ),
            (
                "override/compose.override.yaml",
                "services:
  web:
    image: web:2
    command: serve
    environment: {B: 3, C: '4'}
    ports: ['9090:90']
    volumes: ['other:/data']
  db:
    image: postgres
",
            ),
        ]);
        let mut opts = options(dir.path());
        opts.files = vec![
            "compose.yaml".into(),
            "override/compose.override.yaml".into(),
        ];
        let loaded = load_ok(&opts);
        let web = service(&loaded, "web");
        let conf = format!("{}:/etc/conf:ro", d(&dir.path().join("conf")));
        assert_eq!(
            *web,
            yaml(&format!(
                "image: web:2
command: serve
environment: {{A: '1', B: '3', C: '4'}}
ports: ['8080:80', '9090:90']
volumes: ['other:/data', '{conf}']
"
            ))
        );
        assert_eq!(service(&loaded, "db")["image"], "postgres");
        assert_eq!(loaded.document["name"], "test");
    }

    #[test]
    fn extends_in_the_file_and_from_another_with_its_own_paths() {
        let dir = project(&[
            (
                "app/compose.yaml",
                "services:
  base:
    image: base
    environment: {A: '1'}
  mid:
    extends: base
    environment: {B: '2'}
  web:
    extends: mid
    ports: ['80:80']
  remote:
    extends: {file: ../shared/common.yaml, service: common}
    volumes: ['./local:/local']
",
            ),
            (
                "shared/common.yaml",
                "services:
  common:
    image: common
    build: ./ctx
    env_file: common.env
    volumes: ['../data:/data', './cfg:/cfg:ro', 'named:/named']
",
            ),
            ("shared/common.env", "FROM_FILE=yes\n"),
        ]);
        let app = dir.path().join("app");
        let loaded = load_ok(&options(&app));
        let web = service(&loaded, "web");
        assert_eq!(web["image"], "base");
        assert_eq!(web["environment"], yaml("{A: '1', B: '2'}"));
        assert!(web.get("extends").is_none());
        let remote = service(&loaded, "remote");
        let shared = dir.path().join("shared");
        assert_eq!(remote["build"]["context"], d(&shared.join("ctx")).as_str());
        assert_eq!(remote["environment"]["FROM_FILE"], "yes");
        assert_eq!(
            remote["volumes"],
            yaml(&format!(
                "['{}:/data', '{}:/cfg:ro', 'named:/named', '{}:/local']",
                d(&dir.path().join("data")),
                d(&shared.join("cfg")),
                d(&app.join("local"))
            ))
        );
    }

    #[test]
    fn extends_cycles_and_missing_bases_are_errors() {
        let dir = project(&[(
            "compose.yaml",
            "services:
  a: {extends: b}
  b: {extends: {service: c}}
  c: {extends: a}
  d: {extends: {service: nowhere}}
",
        )]);
        let errors = load_err(&options(dir.path()));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("cycle") && e.contains("a (") && e.contains("-> c (")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("no service nowhere")),
            "{errors:?}"
        );
    }

    #[test]
    fn profiles_select_services() {
        let text = "services:
  web: {image: web}
  debug: {image: debug, profiles: [debug]}
  seed: {image: seed, profiles: [seed], depends_on: [web]}
";
        let dir = project(&[("compose.yaml", text)]);
        let mut opts = options(dir.path());
        let loaded = load_ok(&opts);
        let names: Vec<_> = loaded.document["services"]
            .as_mapping()
            .expect("services")
            .keys()
            .filter_map(key_name)
            .collect();
        assert_eq!(names, ["web"]);

        opts.profiles = vec!["debug".into()];
        opts.environment
            .insert("COMPOSE_PROFILES".into(), "seed, other".into());
        let loaded = load_ok(&opts);
        assert_eq!(
            loaded.document["services"].as_mapping().map(Mapping::len),
            Some(3)
        );

        let dir = project(&[(
            "compose.yaml",
            "services:
  web: {image: web, depends_on: {debug: {condition: service_started}, opt: {required: false}}}
  debug: {image: debug, profiles: [debug]}
  opt: {image: opt, profiles: [opt]}
",
        )]);
        let errors = load_err(&options(dir.path()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "services.web.depends_on.debug: service debug is not enabled (profiles: debug"
            ),
            "{errors:?}"
        );
        let mut opts = options(dir.path());
        opts.profiles = vec!["*".into()];
        assert!(load(&opts).is_ok());
        opts.profiles = vec!["debug".into()];
        let loaded = load_ok(&opts);
        assert_eq!(
            service(&loaded, "web")["depends_on"],
            yaml("{debug: {condition: service_started, required: true, restart: false}}")
        );
        assert!(loaded.warnings.iter().any(|w| w.contains("depends_on.opt")));
    }

    #[test]
    fn project_names() {
        let dir = project(&[("My_App.v2/compose.yaml", "services: {}")]);
        let app = dir.path().join("My_App.v2");
        let mut opts = options(&app);
        opts.project_name = None;
        assert_eq!(load_ok(&opts).name, "my-app-v2");

        opts.environment
            .insert("COMPOSE_PROJECT_NAME".into(), "from-env".into());
        assert_eq!(load_ok(&opts).name, "from-env");

        opts.environment
            .insert("COMPOSE_PROJECT_NAME".into(), "Bad_Name".into());
        let errors = load_err(&opts);
        assert!(
            errors[0].contains("\"Bad_Name\" (from COMPOSE_PROJECT_NAME)"),
            "{errors:?}"
        );

        opts.project_name = Some("-bad".into());
        let errors = load_err(&opts);
        assert!(
            errors[0].contains("(from -p) is not a DNS label"),
            "{errors:?}"
        );

        let dir = project(&[("compose.yaml", "name: ${N:-from-doc}\nservices: {}")]);
        let mut opts = options(dir.path());
        opts.project_name = None;
        let loaded = load_ok(&opts);
        assert_eq!(loaded.name, "from-doc");
        assert_eq!(loaded.document["name"], "from-doc");

        for (dir_name, want) in [
            ("web", "web"),
            ("My_App.v2", "my-app-v2"),
            ("__x__", "x"),
            ("ünïcode app", "ncodeapp"),
            ("...", ""),
            (&"a".repeat(70), &"a".repeat(63)),
        ] {
            assert_eq!(project_name_from_dir(dir_name), want, "{dir_name}");
        }
    }

    #[test]
    fn env_file_is_inlined_under_environment() {
        let dir = project(&[
            (
                "compose.yaml",
                "services:
  web:
    image: web
    env_file:
      - web.env
      - {path: optional.env, required: false}
    environment:
      SHARED: from-environment
      FROM_SHELL:
      NOT_SET_ANYWHERE:
  worker:
    image: worker
    env_file: missing.env
",
            ),
            ("web.env", "SHARED=from-file\nONLY_FILE=${SHELL_VAR}\n"),
        ]);
        let mut opts = options(dir.path());
        opts.environment.insert("FROM_SHELL".into(), "shell".into());
        opts.environment
            .insert("SHELL_VAR".into(), "expanded".into());
        let errors = load_err(&opts);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("services.worker.env_file[0]:")
                && errors[0].contains("missing.env"),
            "{errors:?}"
        );

        std::fs::write(dir.path().join("missing.env"), "").expect("write");
        let loaded = load_ok(&opts);
        let web = service(&loaded, "web");
        assert!(web.get("env_file").is_none());
        assert_eq!(
            web["environment"],
            yaml("{SHARED: from-environment, ONLY_FILE: expanded, FROM_SHELL: shell}")
        );
        assert_eq!(service(&loaded, "worker")["environment"], yaml("{}"));
    }

    #[test]
    fn canonical_shapes() {
        let dir = project(&[(
            "compose.yaml",
            "services:
  web:
    build: .
    labels: [a=b, bare]
    extra_hosts: ['db:10.0.0.2', 'v6=::1']
    ulimits: {nproc: 65535, nofile: {soft: 1, hard: 2}}
    networks: [front]
    depends_on: [db]
    dns: 8.8.8.8
    volumes:
      - ~/data:/data
      - {type: bind, source: ./src, target: /src}
      - {type: volume, source: ./named-looking, target: /v}
    secrets: [s, {source: s, target: /run/secrets/s, mode: 0400}]
  db:
    image: db
secrets:
  s: {file: ./s.txt}
",
        )]);
        let loaded = load_ok(&options(dir.path()));
        let web = service(&loaded, "web");
        let root = d(dir.path());
        assert_eq!(
            *web,
            yaml(&format!(
                "build: {{context: '{root}'}}
labels: {{a: b, bare: ''}}
extra_hosts: {{db: [10.0.0.2], v6: ['::1']}}
ulimits: {{nproc: {{soft: 65535, hard: 65535}}, nofile: {{soft: 1, hard: 2}}}}
networks: {{front: {{}}}}
depends_on: {{db: {{condition: service_started, required: true, restart: false}}}}
dns: [8.8.8.8]
volumes:
  - /home/user/data:/data
  - {{type: bind, source: '{root}/src', target: /src}}
  - {{type: volume, source: ./named-looking, target: /v}}
secrets: [{{source: s, target: /run/secrets/s, mode: 0400}}]
"
            ))
        );
        assert_eq!(
            loaded.document["secrets"]["s"]["file"],
            format!("{root}/s.txt").as_str()
        );
    }

    #[test]
    fn hostile_documents_fail_cleanly() {
        let deep = format!(
            "services: {{web: {{image: x, x-deep: {}{}}}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases = [
            "- a list",
            "services: [web]",
            "services: {web: [image]}",
            "services: {web: null}",
            "services: {? [a, b] : {image: x}}",
            "services: {web: {environment: [{a: b}]}}",
            "services: {web: {environment: {A: [1]}}}",
            "services: {web: {depends_on: [[x]]}}",
            "services: {web: {extends: [x]}}",
            "services: {web: {extends: {service: web}}}",
            "services: {web: {env_file: {path: x}}}",
            "services: {web: {profiles: 3}}",
            "services: {web: {profiles: [[a]]}}",
            "name: [x]",
            "a: !!binary aGVsbG8=\nservices: {web: {<<: !tag {a: b}}}",
            &deep,
            "services: {web: {image: x, replicas: 123456789012345678901234567890}}",
        ];
        for text in cases {
            let dir = project(&[("compose.yaml", text)]);
            let result = load(&options(dir.path()));
            assert!(result.is_err(), "{text}: {result:?}");
        }
        let fine = [
            "",
            "services:",
            "x-only: 1",
            "services: {web: {image: x, cpus: 1e999, memswap_limit: -9223372036854775808}}",
            "services: {web: {image: !custom x, 1: 2, true: false}}",
        ];
        for text in fine {
            let dir = project(&[("compose.yaml", text)]);
            let loaded = load_ok(&options(dir.path()));
            assert!(loaded.document["services"].is_mapping(), "{text}");
        }
    }

    fn corpus() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
    }

    fn corpus_file(name: &str) -> Loaded {
        let mut opts = options(&corpus());
        opts.project_name = None;
        opts.files = vec![name.into()];
        load_ok(&opts)
    }

    #[test]
    fn every_corpus_file_loads() {
        let mut names: Vec<String> = std::fs::read_dir(corpus())
            .expect("corpus")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        names.push("11-grafana-plugin-extends/docker-compose.yaml".into());
        assert_eq!(names.len(), 11);
        for name in names {
            let loaded = corpus_file(&name);
            assert!(
                loaded.document["services"]
                    .as_mapping()
                    .is_some_and(|s| !s.is_empty()),
                "{name}"
            );
        }
    }

    #[test]
    fn corpus_values() {
        let cases = corpus();
        let root = d(&cases);

        let l = corpus_file("01-react-express-mysql.yaml");
        assert_eq!(l.name, "cases");
        let backend = service(&l, "backend");
        assert_eq!(
            backend["build"]["context"],
            format!("{root}/backend").as_str()
        );
        assert_eq!(backend["build"]["args"]["NODE_ENV"], "development");
        assert_eq!(backend["environment"]["DATABASE_HOST"], "db");
        assert_eq!(
            at(backend, "volumes.0"),
            format!("{root}/backend/src:/code/src:ro").as_str()
        );
        assert_eq!(
            at(backend, "volumes.3"),
            "back-notused:/opt/app/node_modules"
        );
        assert_eq!(service(&l, "frontend")["volumes"][1], "/code/node_modules");
        assert_eq!(
            at(&l.document, "secrets.db-password.file"),
            format!("{root}/db/password.txt").as_str()
        );

        let l = corpus_file("04-minecraft-deploy-limits.yaml");
        assert_eq!(
            service(&l, "minecraft")["volumes"][0],
            "/home/user/minecraft_data:/data"
        );

        let l = corpus_file("05-voting-app-profiles.yaml");
        assert!(l.document["services"].get("seed").is_none());
        assert_eq!(
            at(service(&l, "worker"), "depends_on.db.condition"),
            "service_healthy"
        );

        let l = corpus_file("06-voting-app-stack-v3.yaml");
        assert!(l.warnings[0].ends_with("the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion"));
        assert_eq!(
            at(service(&l, "worker"), "deploy.labels"),
            &yaml("{APP: VOTING}")
        );

        let l = corpus_file("07-swarmprom-v3.3.yaml");
        assert_eq!(
            at(service(&l, "node-exporter"), "command.3"),
            "--collector.filesystem.ignored-mount-points=^/(sys|proc|dev|host|etc)($|/)"
        );
        assert_eq!(
            at(service(&l, "node-exporter"), "environment.NODE_ID"),
            "{{.Node.ID}}"
        );
        assert_eq!(
            at(service(&l, "grafana"), "environment.GF_SECURITY_ADMIN_USER"),
            "admin"
        );
        assert_eq!(
            at(&l.document, "configs.caddy_config.file"),
            format!("{root}/caddy/Caddyfile").as_str()
        );

        let l = corpus_file("08-mailcow-v2.1.yaml");
        let mut unset: Vec<&str> = l
            .warnings
            .iter()
            .filter_map(|w| w.strip_prefix("the ")?.split(' ').next())
            .collect();
        unset.sort_unstable();
        unset.dedup();
        assert!(
            unset.contains(&"TZ") && unset.contains(&"DBPASS"),
            "{unset:?}"
        );
        let sogo = service(&l, "sogo-mailcow");
        let label = sogo["labels"]["ofelia.job-exec.sogo_sessions.command"]
            .as_str()
            .expect("label");
        assert!(
            label.starts_with("/bin/bash -c \"[[ ${MASTER} == y ]]"),
            "{label}"
        );
        assert_eq!(
            service(&l, "mysql-mailcow")["ports"][0],
            "127.0.0.1:13306:3306"
        );
        assert_eq!(
            at(
                service(&l, "unbound-mailcow"),
                "networks.mailcow-network.ipv4_address"
            ),
            "172.22.1.254"
        );

        let l = corpus_file("09-immich-env-file.yaml");
        assert_eq!(l.name, "immich");
        let server = service(&l, "immich-server");
        assert_eq!(server["image"], "ghcr.io/immich-app/immich-server:release");
        assert_eq!(server["ports"][0], ":2283:2283");
        assert_eq!(
            server["volumes"][0],
            format!("{root}/library:/data").as_str()
        );
        assert_eq!(server["environment"]["DB_USERNAME"], "postgres");
        assert_eq!(server["environment"]["UPLOAD_LOCATION"], "./library");
        assert_eq!(
            service(&l, "database")["volumes"][0],
            format!("{root}/postgres:/var/lib/postgresql/data").as_str()
        );

        let l = corpus_file("10-traefik-anchors-long-ports.yaml");
        for name in ["traefik-init", "traefik", "consul", "dockersocket"] {
            assert_eq!(
                at(service(&l, name), "logging.options.max-size"),
                "1m",
                "{name}"
            );
        }
        assert_eq!(at(service(&l, "traefik"), "ports.2.mode"), "ingress");
        assert_eq!(at(service(&l, "dockersocket"), "environment.NETWORKS"), "1");
        assert_eq!(at(&l.document, "volumes.consul.driver"), "local");

        let l = corpus_file("11-grafana-plugin-extends/docker-compose.yaml");
        let grafana = service(&l, "grafana");
        let project = cases.join("11-grafana-plugin-extends");
        let p = d(&project);
        assert_eq!(l.name, "11-grafana-plugin-extends");
        assert_eq!(grafana["build"]["context"], format!("{p}/.config").as_str());
        assert_eq!(grafana["build"]["args"]["grafana_version"], "12.4.0");
        assert_eq!(
            grafana["volumes"],
            yaml(&format!(
                "['{p}/dist:/var/lib/grafana/plugins/googlecloud-logging-datasource', '{p}/provisioning:/etc/grafana/provisioning', '{p}:/root/googlecloud-logging-datasource']"
            ))
        );
        assert_eq!(grafana["environment"]["GF_DATAPROXY_LOGGING"], "1");
        assert_eq!(grafana["cap_add"], yaml("[SYS_PTRACE]"));
    }

    #[test]
    fn hostile_paths_fail_at_once() {
        let dir = project(&[("ok.yaml", "services:\n  web:\n    image: nginx\n")]);
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        for bad in [fifo.display().to_string(), "/dev/zero".into(), "/".into()] {
            let files = [
                format!("services:\n  web:\n    image: nginx\n    env_file: {bad}\n"),
                format!("services:\n  web:\n    extends: {{file: {bad}, service: x}}\n"),
            ];
            for text in files {
                std::fs::write(dir.path().join("compose.yaml"), text).expect("write");
                let errors = load_err(&options(dir.path()));
                assert!(errors[0].contains("not a regular file"), "{errors:?}");
            }
            let mut opts = options(dir.path());
            opts.files = vec![PathBuf::from(&bad)];
            assert!(load_err(&opts)[0].contains("not a regular file"));
            let mut opts = options(dir.path());
            opts.files = vec![PathBuf::from("ok.yaml")];
            opts.env_files = vec![PathBuf::from(&bad)];
            assert!(load_err(&opts)[0].contains("not a regular file"));
        }
    }

    #[test]
    fn copies_are_bounded_across_the_project() {
        // A 3 MB environment extended by 2000 services, and a 3 MB env_file named by 2000:
        // each copy counts, and loading stops once they add up past the bound.
        let env: String = (0..25_000)
            .map(|i| format!("      K{i}: \"{}\"\n", "v".repeat(100)))
            .collect();
        let extenders: String = (0..2000)
            .map(|i| format!("  s{i}:\n    extends: base\n"))
            .collect();
        let env_file: String = (0..25_000)
            .map(|i| format!("K{i}={}\n", "v".repeat(100)))
            .collect();
        let users: String = (0..2000)
            .map(|i| format!("  s{i}:\n    image: nginx\n    env_file: big.env\n"))
            .collect();
        for (compose, extra) in [
            (
                format!("services:\n  base:\n    image: nginx\n    environment:\n{env}{extenders}"),
                "",
            ),
            (format!("services:\n{users}"), env_file.as_str()),
        ] {
            let dir = project(&[("compose.yaml", &compose), ("big.env", extra)]);
            let start = std::time::Instant::now();
            let errors = load_err(&options(dir.path()));
            assert!(
                errors.iter().any(|e| e.contains("larger than 32 MiB")),
                "{:?}",
                &errors[..errors.len().min(3)]
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(30));
        }
        // The same file given twice is two copies, still well within the bound.
        let dir = project(&[("compose.yaml", "services:\n  web:\n    image: nginx\n")]);
        let mut opts = options(dir.path());
        opts.files = vec!["compose.yaml".into(), "compose.yaml".into()];
        assert_eq!(load_ok(&opts).document["services"]["web"]["image"], "nginx");
    }

    #[test]
    fn a_chain_extended_by_many_services_is_resolved_once() {
        // 3000 services extending the head of a 40-file chain: resolved once per link, not
        // once per link for each service (which also counted 120,000 copies).
        let mut files: Vec<(String, String)> = (0..40)
            .map(|i| {
                (
                    format!("c{i}.yaml"),
                    format!("services:\n  s:\n    extends: {{file: c{}.yaml, service: s}}\n    labels: {{l{i}: x}}\n", i + 1),
                )
            })
            .collect();
        files.push(("c40.yaml".into(), "services:\n  s:\n    image: x\n".into()));
        let fan: String = (0..3000)
            .map(|i| format!("  s{i}:\n    extends: {{file: c0.yaml, service: s}}\n"))
            .collect();
        files.push(("compose.yaml".into(), format!("services:\n{fan}")));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let dir = project(&refs);
        let start = std::time::Instant::now();
        let l = load_ok(&options(dir.path()));
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        let s = &l.document["services"]["s2999"];
        assert_eq!(s["image"], "x");
        assert_eq!(s["labels"]["l39"], "x");
    }
}
