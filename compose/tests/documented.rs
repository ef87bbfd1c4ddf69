//! What the Compose documentation says `docker compose config` makes of its own examples:
//! interpolation, YAML anchors and merge keys, and the merge of several files. Each test
//! names the page its examples and expected values come from.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_compose::{load, plan, stages, LoadOptions, Loaded};
use yaml_serde::Value;

/// A project directory holding `files` (path, text).
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

/// `-f files…` in `dir`, with exactly the variables `env` (not the process's).
fn options(dir: &Path, files: &[&str], env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        files: files.iter().map(Into::into).collect(),
        working_dir: dir.to_path_buf(),
        project_name: Some("docs".into()),
        environment: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..LoadOptions::default()
    }
}

fn load_ok(opts: &LoadOptions) -> Loaded {
    load(opts).unwrap_or_else(|e| panic!("loads: {e:#?}"))
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).expect("valid YAML")
}

fn service<'a>(l: &'a Loaded, name: &str) -> &'a Value {
    l.document
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("no service {name} in {:#?}", l.document))
}

// https://docs.docker.com/reference/compose-file/interpolation/ : the table of braced
// expressions, for a variable that has a value, is empty, or is not set.
#[test]
fn interpolation_as_its_table_gives_it() {
    let dir = project(&[(
        "compose.yaml",
        r#"services:
  web:
    image: busybox
    environment:
      direct-set: ${VAR}
      direct-empty: ${EMPTY}
      direct-unset: ${UNSET}
      default-set: ${VAR:-default}
      default-empty: ${EMPTY:-default}
      default-unset: ${UNSET:-default}
      unset-default-set: ${VAR-default}
      unset-default-empty: ${EMPTY-default}
      unset-default-unset: ${UNSET-default}
      required-set: ${VAR:?error}
      unset-required-set: ${VAR?error}
      unset-required-empty: ${EMPTY?error}
      alternative-set: ${VAR:+replacement}
      alternative-empty: ${EMPTY:+replacement}
      alternative-unset: ${UNSET:+replacement}
      set-alternative-set: ${VAR+replacement}
      set-alternative-empty: ${EMPTY+replacement}
      set-alternative-unset: ${UNSET+replacement}
      unbraced: $VAR
"#,
    )]);
    let env = [("VAR", "value"), ("EMPTY", "")];
    let l = load_ok(&options(dir.path(), &["compose.yaml"], &env));
    assert_eq!(
        service(&l, "web")["environment"],
        yaml(
            "
direct-set: value
direct-empty: ''
direct-unset: ''
default-set: value
default-empty: default
default-unset: default
unset-default-set: value
unset-default-empty: ''
unset-default-unset: default
required-set: value
unset-required-set: value
unset-required-empty: ''
alternative-set: replacement
alternative-empty: ''
alternative-unset: ''
set-alternative-set: replacement
set-alternative-empty: replacement
set-alternative-unset: ''
unbraced: value
"
        )
    );
    // "If Compose can't resolve a substituted variable and no default value is defined, it
    // displays a warning and substitutes the variable with an empty string."
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("UNSET"), "{:?}", l.warnings);

    // ${VAR:?error} exits when VAR is empty or not set, ${VAR?error} only when it is not set.
    for (expr, env) in [
        ("${EMPTY:?error}", &[("EMPTY", "")][..]),
        ("${UNSET:?error}", &[][..]),
        ("${UNSET?error}", &[][..]),
    ] {
        let dir = project(&[(
            "compose.yaml",
            &format!("services:\n  web:\n    image: \"{expr}\"\n"),
        )]);
        let errors = load(&options(dir.path(), &["compose.yaml"], env)).expect_err(expr);
        assert!(
            errors.len() == 1 && errors[0].contains("error"),
            "{expr}: {errors:?}"
        );
    }
}

// https://docs.docker.com/reference/compose-file/interpolation/ : nesting, `$$`, what is not
// a variable, and keys.
#[test]
fn interpolation_nests_escapes_and_leaves_keys_alone() {
    let dir = project(&[(
        "compose.yaml",
        r#"services:
  web:
    image: busybox
    command: "$$VAR_NOT_INTERPOLATED_BY_COMPOSE"
    environment:
      nested: ${VARIABLE:-${FOO}}
      nested-default: ${VARIABLE:-${OTHER:-default}}
      not-a-variable: "cost: $5 and $"
    labels:
      "$VAR_NOT_INTERPOLATED_BY_COMPOSE": "BAR"
  other:
    image: busybox
    labels:
      - "$VAR_INTERPOLATED_BY_COMPOSE=BAR"
"#,
    )]);
    let env = [
        ("FOO", "foo"),
        ("VAR_NOT_INTERPOLATED_BY_COMPOSE", "no"),
        ("VAR_INTERPOLATED_BY_COMPOSE", "interpolated"),
    ];
    let l = load_ok(&options(dir.path(), &["compose.yaml"], &env));
    let web = service(&l, "web");
    assert_eq!(web["command"], "$VAR_NOT_INTERPOLATED_BY_COMPOSE");
    assert_eq!(
        web["environment"],
        yaml("{nested: foo, nested-default: default, not-a-variable: 'cost: $5 and $'}")
    );
    assert_eq!(
        web["labels"],
        yaml("{$VAR_NOT_INTERPOLATED_BY_COMPOSE: BAR}")
    );
    assert_eq!(service(&l, "other")["labels"], yaml("{interpolated: BAR}"));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    // ${VARIABLE?$FOO}: the specification interpolates the message too; Flotilla shows it as
    // written, so an error never prints another variable's value (often a secret).
    let dir = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: \"${VARIABLE?$FOO}\"\n",
    )]);
    let errors = load(&options(
        dir.path(),
        &["compose.yaml"],
        &[("FOO", "say foo")],
    ))
    .expect_err("unset");
    assert!(errors[0].ends_with("$FOO"), "{errors:?}");
    assert!(!errors[0].contains("say foo"), "{errors:?}");

    // ${VARIABLE/foo/bar} is not supported.
    let dir = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: \"${VARIABLE/foo/bar}\"\n",
    )]);
    assert!(load(&options(
        dir.path(),
        &["compose.yaml"],
        &[("VARIABLE", "foo")]
    ))
    .is_err());
}

// https://docs.docker.com/reference/compose-file/interpolation/ : "interpolation is applied
// before a merge on a per-file basis": a `$$` of one file is not interpolated again once
// merged with another.
#[test]
fn interpolation_is_per_file_before_the_merge() {
    let dir = project(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: busybox\n    environment: {A: $$X, B: $X}\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    environment: {C: $$X}\n",
        ),
    ]);
    let l = load_ok(&options(
        dir.path(),
        &["compose.yaml", "compose.override.yaml"],
        &[("X", "x")],
    ));
    assert_eq!(
        service(&l, "web")["environment"],
        yaml("{A: $X, B: x, C: $X}")
    );
}

// https://docs.docker.com/reference/compose-file/fragments/ : examples 1 to 4.
#[test]
fn anchors_aliases_and_merge_keys_as_the_fragments_page_shows() {
    let dir = project(&[(
        "compose.yaml",
        r#"services:
  first:
    image: my-image:latest
    environment: &env
      - CONFIG_KEY
      - EXAMPLE_KEY
      - DEMO_VAR
  second:
    image: another-image:latest
    environment: *env
  third:
    image: my-image:latest
    environment: &env2
      FOO: BAR
      ZOT: QUIX
  fourth:
    image: another-image:latest
    environment:
      <<: *env2
      YET_ANOTHER: VARIABLE
volumes:
  db-data: &default-volume
    driver: default
    name: "data"
  metrics:
    <<: *default-volume
    name: "metrics"
  logs: *default-volume
"#,
    )]);
    // Example 2: keys without a value take it from the environment, and are left out when it
    // has none.
    let l = load_ok(&options(
        dir.path(),
        &["compose.yaml"],
        &[("CONFIG_KEY", "c"), ("DEMO_VAR", "d")],
    ));
    for name in ["first", "second"] {
        assert_eq!(
            service(&l, name)["environment"],
            yaml("{CONFIG_KEY: c, DEMO_VAR: d}"),
            "{name}"
        );
    }
    // Example 4: the anchor extended.
    assert_eq!(
        service(&l, "fourth")["environment"],
        yaml("{FOO: BAR, ZOT: QUIX, YET_ANOTHER: VARIABLE}")
    );
    // Examples 1 and 3: an alias, and a merge key overriding name.
    let volumes = &l.document["volumes"];
    assert_eq!(volumes["db-data"], yaml("{driver: default, name: data}"));
    assert_eq!(volumes["metrics"], yaml("{driver: default, name: metrics}"));
    assert_eq!(volumes["logs"], yaml("{driver: default, name: data}"));
}

// https://docs.docker.com/reference/compose-file/merge/ : mapping, sequence, shell commands,
// unique resources.
#[test]
fn two_files_merge_as_the_merge_page_shows() {
    let dir = project(&[
        (
            "compose.yaml",
            r#"services:
  foo:
    image: foo
    key1: value1
    key2: value2
    dns:
      - 1.1.1.1
    command: ["echo", "foo"]
    volumes:
      - foo:/work
"#,
        ),
        (
            "compose.override.yaml",
            r#"services:
  foo:
    key2: VALUE
    key3: value3
    dns:
      - 8.8.8.8
    command: ["echo", "bar"]
    volumes:
      - bar:/work
"#,
        ),
    ]);
    let l = load_ok(&options(
        dir.path(),
        &["compose.yaml", "compose.override.yaml"],
        &[],
    ));
    assert_eq!(
        *service(&l, "foo"),
        yaml(
            r#"
image: foo
key1: value1
key2: VALUE
key3: value3
dns:
  - 1.1.1.1
  - 8.8.8.8
command: ["echo", "bar"]
volumes:
  - bar:/work
"#
        )
    );
}

// https://docs.docker.com/reference/compose-file/merge/ : "Reset value" and "Replace value".
#[test]
fn reset_and_override_as_the_merge_page_shows() {
    let dir = project(&[
        (
            "compose.yaml",
            "services:\n  app:\n    image: myapp\n    ports:\n      - \"8080:80\"\n    environment:\n      FOO: BAR\n",
        ),
        (
            "reset.yaml",
            "services:\n  app:\n    image: myapp\n    ports: !reset []\n    environment:\n      FOO: !reset null\n",
        ),
        (
            "replace.yaml",
            "services:\n  app:\n    ports: !override\n      - \"8443:443\"\n",
        ),
    ]);
    let l = load_ok(&options(dir.path(), &["compose.yaml", "reset.yaml"], &[]));
    // "Results in: services: app: image: myapp" (an environment without its only variable is
    // the same as none).
    let app = service(&l, "app");
    assert_eq!(app["image"], "myapp");
    assert!(app.get("ports").is_none(), "{app:?}");
    assert!(
        app.get("environment")
            .is_none_or(|e| e.as_mapping().is_some_and(|m| m.is_empty())),
        "{app:?}"
    );

    let l = load_ok(&options(dir.path(), &["compose.yaml", "replace.yaml"], &[]));
    assert_eq!(service(&l, "app")["ports"], yaml("['8443:443']"));
}

// https://docs.docker.com/compose/how-tos/multiple-compose-files/merge/ : "Merging rules".
#[test]
fn the_merging_rules_of_the_how_to() {
    let dir = project(&[
        (
            "compose.yaml",
            r#"services:
  myservice:
    image: example/web
    command: python app.py
    expose:
      - "3000"
    environment:
      - FOO=original
      - BAR=original
    volumes:
      - ./original:/foo
      - ./original:/bar
"#,
        ),
        (
            // In another directory: its paths are still relative to the base file.
            "local/compose.local.yaml",
            r#"services:
  myservice:
    command: python otherapp.py
    expose:
      - "4000"
      - "5000"
    environment:
      - BAR=local
      - BAZ=local
    volumes:
      - ./local:/bar
      - ./local:/baz
"#,
        ),
    ]);
    let l = load_ok(&options(
        dir.path(),
        &["compose.yaml", "local/compose.local.yaml"],
        &[],
    ));
    let s = service(&l, "myservice");
    let root = dir.path().display();
    assert_eq!(s["command"], "python otherapp.py");
    assert_eq!(s["expose"], yaml("['3000', '4000', '5000']"));
    assert_eq!(
        s["environment"],
        yaml("{FOO: original, BAR: local, BAZ: local}")
    );
    assert_eq!(
        s["volumes"],
        yaml(&format!(
            "['{root}/original:/foo', '{root}/local:/bar', '{root}/local:/baz']"
        ))
    );
}

// https://docs.docker.com/compose/how-tos/multiple-compose-files/merge/ : "Example", the
// production file over the base one, then planned.
#[test]
fn the_production_example_of_the_how_to_plans() {
    let dir = project(&[
        (
            "compose.yaml",
            r#"services:
  web:
    image: example/my_web_app:latest
    depends_on:
      - db
      - cache

  db:
    image: postgres:18

  cache:
    image: redis:latest
"#,
        ),
        (
            "compose.prod.yaml",
            r#"services:
  web:
    ports:
      - 80:80
    environment:
      PRODUCTION: 'true'

  cache:
    environment:
      TTL: '500'
"#,
        ),
    ]);
    let l = load_ok(&options(
        dir.path(),
        &["compose.yaml", "compose.prod.yaml"],
        &[],
    ));
    assert_eq!(service(&l, "web")["ports"], yaml("['80:80']"));
    assert_eq!(
        service(&l, "web")["environment"],
        yaml("{PRODUCTION: 'true'}")
    );
    assert_eq!(service(&l, "cache")["environment"], yaml("{TTL: '500'}"));
    assert!(service(&l, "db").get("environment").is_none());

    let p = plan(&l).unwrap_or_else(|e| panic!("plans: {e:#?}"));
    // db and cache declare no port: web could not reach them by name until they do.
    let no_port = "other services cannot reach it by name: Flotilla reaches a service through \
                   a port it declares; give it expose: PORT";
    assert_eq!(
        p.warnings,
        [
            format!("services.cache: {no_port}"),
            format!("services.db: {no_port}")
        ],
        "{:#?}",
        p.warnings
    );
    let web = p.services.iter().find(|s| s.name == "web").expect("web");
    let c = &web.spec.task_definition["containerDefinitions"][0];
    assert_eq!(
        c["portMappings"],
        serde_json::json!([{"containerPort": 80, "hostPort": 80, "protocol": "tcp"}])
    );
    assert_eq!(
        c["environment"],
        serde_json::json!([{"name": "PRODUCTION", "value": "true"}])
    );
    assert_eq!(
        stages(&p).expect("no cycle"),
        [vec!["cache", "db"], vec!["web"]]
    );
}
