//! Every real ECS file in `tests/fixtures/ecs/` (where each comes from: its `SOURCES.md`)
//! registers — with exactly the warnings listed — or is refused with exactly the problems
//! listed, named in ECS's own terms. A file added there without a line here fails the test.

use std::path::{Path, PathBuf};

use flotilla_api::{service, taskdef};

/// What Flotilla says about a file.
enum Expect {
    /// Registers; each warning starts with one of these, in order.
    Registers(&'static [&'static str]),
    /// Refused; each problem starts with one of these, in order.
    Refused(&'static [&'static str]),
}
use Expect::{Refused, Registers};

const CASES: &[(&str, Expect)] = &[
    (
        "01-nginx-fargate.json",
        Registers(&[
            "$.requiresCompatibilities: ignored",
            "$.containerDefinitions[0].logConfiguration: ignored",
        ]),
    ),
    (
        "02-tomcat-ec2-bridge.json",
        Registers(&["$.containerDefinitions[0].logConfiguration: ignored"]),
    ),
    // AWS refuses it too.
    (
        "03-tomcat-awsvpc-port-mismatch.json",
        Refused(&["$.containerDefinitions[0].portMappings[0].hostPort: must equal containerPort (8080) in host and awsvpc network modes, or be left out"]),
    ),
    (
        "04-consul-server-host-network.json",
        Registers(&[
            "$.containerDefinitions[0].dockerLabels: ignored (not supported by Flotilla yet)",
            "$.containerDefinitions[0].logConfiguration: ignored",
        ]),
    ),
    (
        "05-nginx-reverse-proxy-links.json",
        Registers(&[
            "$.containerDefinitions[0].links: ignored (not supported by Flotilla yet)",
            "$.containerDefinitions[0].cpu, $.containerDefinitions[0].memory, \
             $.containerDefinitions[0].portMappings[0].containerPort, \
             $.containerDefinitions[1].cpu, $.containerDefinitions[1].memory: numbers written as \
             strings, read as numbers",
        ]),
    ),
    (
        "06-appmesh-envoy-firelens.json",
        Registers(&[
            "$.executionRoleArn: ignored",
            "$.proxyConfiguration: ignored",
            "$.requiresCompatibilities: ignored",
            "$.taskRoleArn: ignored",
            "$.containerDefinitions[0].firelensConfiguration: ignored",
            "$.containerDefinitions[0].logConfiguration: ignored",
            "$.containerDefinitions[2].logConfiguration: ignored",
        ]),
    ),
    (
        "07-firelens-efs-wrapped.json",
        Registers(&[
            "$.taskDefinition: read as the task definition it wraps (the output of aws ecs \
             describe-task-definition or register-task-definition)",
            "$.taskDefinition.executionRoleArn: ignored",
            "$.taskDefinition.taskRoleArn: ignored",
            "$.taskDefinition.volumes[0].efsVolumeConfiguration: ignored",
            "$.taskDefinition.containerDefinitions[0].logConfiguration: ignored",
            "$.taskDefinition.containerDefinitions[1].firelensConfiguration: ignored",
            "$.taskDefinition.containerDefinitions[1].logConfiguration: ignored",
        ]),
    ),
    ("08-datadog-agent-host-volumes.json", Registers(&[])),
    (
        "09-cwagent-daemon-ec2.json",
        Registers(&[
            "$.executionRoleArn: ignored",
            "$.requiresCompatibilities: ignored",
            "$.taskRoleArn: ignored",
            "$.containerDefinitions[0].logConfiguration: ignored",
        ]),
    ),
    (
        "10-ecs-agent-docker-volume-shared.json",
        Registers(&[
            "$.volumes[0].dockerVolumeConfiguration.autoprovision: ignored: a node creates a \
             shared volume that is missing",
            "$.volumes[0].dockerVolumeConfiguration.driverOpts: ignored",
            "$.volumes[0].dockerVolumeConfiguration.labels: ignored",
            "$.volumes[0].dockerVolumeConfiguration.autoprovision: booleans written as strings, \
             read as true or false",
        ]),
    ),
    (
        "11-ecs-agent-sysctl.json",
        Registers(&["$.containerDefinitions[0].systemControls: ignored"]),
    ),
    ("12-ecs-agent-capabilities.json", Registers(&[])),
    (
        "13-ecs-agent-tmpfs.json",
        Registers(&[
            "$.containerDefinitions[0].linuxParameters.tmpfs[0].mountOptions: 'ro', 'noexec' \
             ignored",
        ]),
    ),
    (
        "14-ecs-agent-shmsize.json",
        Registers(&["$.containerDefinitions[0].linuxParameters.sharedMemorySize: ignored"]),
    ),
    (
        "15-describe-output-unwrapped.json",
        Registers(&[
            "$.ephemeralStorage: ignored",
            "$.executionRoleArn: ignored",
            "$.requiresCompatibilities: ignored",
            "$.runtimePlatform: ignored",
            "$.containerDefinitions[0].logConfiguration: ignored",
            "$.containerDefinitions[0].portMappings[0].appProtocol: ignored",
            "$.containerDefinitions[0].secrets[0], [1], [2], [3], [4], [5]: ignored (an AWS Secrets Manager",
            "$.taskDefinitionArn, $.revision, $.status, $.requiresAttributes, \
             $.compatibilities, $.registeredAt, $.registeredBy: ignored (read-only fields of \
             describe-task-definition output: ECS sets them)",
        ]),
    ),
    // The console's export: every unset field null, which asks for nothing.
    (
        "16-console-export-nulls.json",
        Registers(&[
            "$.executionRoleArn: ignored",
            "$.requiresCompatibilities: ignored",
            "$.taskRoleArn: ignored",
            "$.containerDefinitions[0].logConfiguration: ignored",
        ]),
    ),
    (
        "17-register-output-wrapped.json",
        Registers(&[
            "$.taskDefinition: read as the task definition it wraps",
            "$.taskDefinition.taskDefinitionArn, $.taskDefinition.revision, \
             $.taskDefinition.status, $.taskDefinition.compatibilities: ignored (read-only",
        ]),
    ),
    // AWS accepts it and then fails to start it.
    (
        "18-mythical-mysfits-protocol-http.json",
        Refused(&["$.containerDefinitions[0].portMappings[0].protocol: 'http': tcp or udp (the \
                   transport; ECS names an application protocol such as http in appProtocol)"]),
    ),
    // Registers with a family: `a_terraform_array_registers_with_a_family_and_memory` below.
    (
        "19-terraform-container-definitions.json",
        Refused(&["$: a bare containerDefinitions array (as Terraform's container_definitions) \
                   has no family: register it with `flotilla taskdef register --family NAME \
                   [--memory MIB] FILE`"]),
    ),
    (
        "20-fargate-todoapp.yaml",
        Registers(&["$.requiresCompatibilities: ignored"]),
    ),
    (
        "svc-01-mythical-mysfits-ec2-spread.json",
        Registers(&[
            "$.cluster: ignored",
            "$.launchType: ignored",
            "$.loadBalancers: ignored",
            "$.networkConfiguration: ignored",
        ]),
    ),
    (
        "svc-02-service-discovery-fargate.json",
        Registers(&[
            "$.cluster: ignored",
            "$.launchType: ignored",
            "$.networkConfiguration: ignored",
            "$.platformVersion: ignored",
            "$.serviceRegistries: ignored",
        ]),
    ),
    // Saved for `aws ecs create-service --service-name …`; ECS requires the name too.
    (
        "svc-03-bluegreen-codedeploy-no-name.json",
        Refused(&["$.serviceName: required (what `aws ecs create-service --service-name` gives: \
                   write it in the file)"]),
    ),
    // An ecspresso dump: ecspresso adds the name and task definition from its own config.
    (
        "svc-04-ecspresso-dump-circuit-breaker.json",
        Refused(&[
            "$.serviceName: required (what `aws ecs create-service --service-name` gives",
            "$.taskDefinition: required (what `aws ecs create-service --task-definition` gives",
        ]),
    ),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ecs")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Whether each line starts with its expected prefix, one for one.
fn same(got: &[String], want: &[&str]) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| squash(g).starts_with(&squash(w)))
}

#[test]
fn every_real_ecs_file_registers_or_is_refused_in_ecs_terms() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SOURCES.md")
        .collect();
    names.sort();
    let listed: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, listed, "every fixture has one expectation");
    let mut wrong = Vec::new();
    for (name, expect) in CASES {
        let text = read(name);
        let got = if name.starts_with("svc-") {
            service::parse(&text).map(|p| p.warnings)
        } else {
            taskdef::parse(&text).map(|p| p.warnings)
        };
        let ok = match (expect, &got) {
            (Registers(want), Ok(warnings)) => same(warnings, want),
            (Refused(want), Err(problems)) => same(problems, want),
            _ => false,
        };
        if !ok {
            wrong.push(format!("{name}: {got:#?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_terraform_array_registers_with_a_family_and_memory() {
    let text = taskdef::with_fields(
        &read("19-terraform-container-definitions.json"),
        &[("family", "warp"), ("memory", "2 GB")],
    )
    .expect("an array");
    let parsed = taskdef::parse(&text).expect("registers");
    assert_eq!(parsed.definition.family, "warp");
    assert_eq!(parsed.definition.memory, Some(2048));
    assert_eq!(parsed.definition.container_definitions.len(), 1);
    assert!(parsed
        .warnings
        .iter()
        .all(|w| w.contains("ignored (it only means something on AWS)")));
    // A whole (wrapped) definition gets the family in place of its own.
    let text = taskdef::with_fields(
        &read("17-register-output-wrapped.json"),
        &[("family", "web")],
    )
    .expect("an object");
    assert_eq!(
        taskdef::parse(&text).expect("registers").definition.family,
        "web"
    );
}
