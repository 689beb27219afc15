//! The default policy pack rule by rule, and the policy engine's load and evaluation guarantees.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use infracrew_protocol::Enforcement;
use infracrew_sentinel::policy::{PolicyError, PolicySet, Violation};
use serde_json::{Value, json};

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pack() -> &'static PolicySet {
    static PACK: OnceLock<PolicySet> = OnceLock::new();
    PACK.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../playbooks/policies");
        PolicySet::load(&dir).unwrap()
    })
}

/// A plan every rule of the default pack accepts: one new, well-formed service in prod.
fn compliant() -> Value {
    json!({
        "environment": "prod",
        "plan": {"plan_id": "plan-42", "intent": "deploy", "service": "social-intel",
                 "environment": "prod", "requested_by": "dave"},
        "resources": [
            {"resource": "service/prod/social-intel", "service": "social-intel", "action": "create",
             "before": null,
             "after": spec()}
        ],
        "catalog": {"social-intel": {"port": 9000}, "alfred-bot": {"port": 8011}},
        "settings": {"prod_environments": ["prod"], "min_prod_replicas": 2, "max_services_per_plan": 5,
                     "freeze": {"active": false, "reason": ""},
                     "budget": {"max_monthly_increase": 500.0}},
        "cost": {"currency": "USD", "monthly_before": 10.0, "monthly_after": 20.0, "monthly_delta": 10.0}
    })
}

fn spec() -> Value {
    json!({"image": "infracrew/social-intel:1.4.0", "replicas": 2, "port": 9000, "published_port": 9000,
           "env": {"LOG_LEVEL": "info"},
           "resources": {"cpu_request_millis": 250, "cpu_limit_millis": 500,
                         "memory_request_mib": 128, "memory_limit_mib": 256},
           "health": {"live": "/health/live", "ready": "/health/ready"},
           "privileged": false, "host_network": false})
}

fn after(input: &mut Value) -> &mut serde_json::Map<String, Value> {
    input["resources"][0]["after"].as_object_mut().unwrap()
}

/// Turns the new service into an update of a running one with `before` replicas.
fn update_from(input: &mut Value, before: u64) {
    let mut previous = spec();
    previous["replicas"] = json!(before);
    input["resources"][0]["before"] = previous;
    input["resources"][0]["action"] = json!("update");
}

fn evaluate(input: &Value) -> Vec<Violation> {
    pack().evaluate(input).unwrap()
}

/// A change made to the compliant input.
type Edit = fn(&mut Value);

/// An input derived from the compliant one that breaks exactly one rule.
struct Failing {
    case: &'static str,
    policy: &'static str,
    rule: &'static str,
    resource: &'static str,
    enforcement: Enforcement,
    /// Texts the message must contain: the offending value and what is expected.
    mentions: &'static [&'static str],
    edit: Edit,
}

const SERVICE: &str = "service/prod/social-intel";
const PLAN: &str = "plan/plan-42";

fn failing() -> Vec<Failing> {
    use Enforcement::{Advisory, HardMandatory, SoftMandatory};
    vec![
        Failing {
            case: "image without a tag",
            policy: "images",
            rule: "image_pinned",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["image is infracrew/social-intel;", "1.4.0", "sha256"],
            edit: |i| {
                after(i).insert("image".into(), json!("infracrew/social-intel"));
            },
        },
        Failing {
            case: "image tagged latest",
            policy: "images",
            rule: "image_pinned",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["infracrew/social-intel:latest", "other than latest"],
            edit: |i| {
                after(i).insert("image".into(), json!("infracrew/social-intel:latest"));
            },
        },
        Failing {
            case: "registry port mistaken for a tag",
            policy: "images",
            rule: "image_pinned",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["registry.local:5000/social-intel"],
            edit: |i| {
                after(i).insert("image".into(), json!("registry.local:5000/social-intel"));
            },
        },
        Failing {
            case: "truncated digest",
            policy: "images",
            rule: "image_pinned",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["infracrew/social-intel@sha256:0123"],
            edit: |i| {
                after(i).insert("image".into(), json!("infracrew/social-intel@sha256:0123"));
            },
        },
        Failing {
            case: "no image",
            policy: "images",
            rule: "image_pinned",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["image is missing"],
            edit: |i| {
                after(i).remove("image");
            },
        },
        Failing {
            case: "no resources",
            policy: "resources",
            rule: "resources_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &[
                "resources.cpu_request_millis is missing",
                "resources.memory_limit_mib is missing",
                "greater than 0",
            ],
            edit: |i| {
                after(i).remove("resources");
            },
        },
        Failing {
            case: "zero cpu limit",
            policy: "resources",
            rule: "resources_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["resources.cpu_limit_millis is 0", "greater than 0"],
            edit: |i| {
                after(i)["resources"]["cpu_limit_millis"] = json!(0);
            },
        },
        Failing {
            case: "memory limit below request",
            policy: "resources",
            rule: "resources_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &[
                "resources.memory_limit_mib is 64",
                "memory_request_mib 128",
                "at least",
            ],
            edit: |i| {
                after(i)["resources"]["memory_limit_mib"] = json!(64);
            },
        },
        Failing {
            case: "no readiness probe",
            policy: "probes",
            rule: "probes_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["health.ready is missing", "starting with /"],
            edit: |i| {
                after(i)["health"].as_object_mut().unwrap().remove("ready");
            },
        },
        Failing {
            case: "liveness probe without a leading slash",
            policy: "probes",
            rule: "probes_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["health.live is health/live", "starting with /"],
            edit: |i| {
                after(i)["health"]["live"] = json!("health/live");
            },
        },
        Failing {
            case: "no health at all",
            policy: "probes",
            rule: "probes_set",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["health.live is missing", "health.ready is missing"],
            edit: |i| {
                after(i).remove("health");
            },
        },
        Failing {
            case: "one replica in prod",
            policy: "replicas",
            rule: "prod_min_replicas",
            resource: SERVICE,
            enforcement: SoftMandatory,
            mentions: &["replicas is 1", "environment prod", "at least 2"],
            edit: |i| {
                after(i).insert("replicas".into(), json!(1));
            },
        },
        Failing {
            case: "no replicas in prod",
            policy: "replicas",
            rule: "prod_min_replicas",
            resource: SERVICE,
            enforcement: SoftMandatory,
            mentions: &["replicas is missing", "at least 2"],
            edit: |i| {
                after(i).remove("replicas");
            },
        },
        Failing {
            case: "replicas doubled",
            policy: "replicas",
            rule: "large_scale_change",
            resource: SERVICE,
            enforcement: Advisory,
            mentions: &["from 2 to 4"],
            edit: |i| {
                update_from(i, 2);
                after(i).insert("replicas".into(), json!(4));
            },
        },
        Failing {
            case: "replicas halved",
            policy: "replicas",
            rule: "large_scale_change",
            resource: SERVICE,
            enforcement: Advisory,
            mentions: &["from 6 to 3"],
            edit: |i| {
                update_from(i, 6);
                after(i).insert("replicas".into(), json!(3));
            },
        },
        Failing {
            case: "privileged container",
            policy: "security",
            rule: "no_privileged",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["privileged is true", "expected false"],
            edit: |i| {
                after(i).insert("privileged".into(), json!(true));
            },
        },
        Failing {
            case: "host network",
            policy: "security",
            rule: "no_host_network",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["host_network is true", "expected false"],
            edit: |i| {
                after(i).insert("host_network".into(), json!(true));
            },
        },
        Failing {
            case: "port off the catalog",
            policy: "ports",
            rule: "catalog_ports_only",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["port is 9001", "catalog port 9000"],
            edit: |i| {
                after(i).insert("port".into(), json!(9001));
                after(i).remove("published_port");
            },
        },
        Failing {
            case: "published port off the catalog",
            policy: "ports",
            rule: "catalog_ports_only",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["published_port is 8080", "catalog port 9000"],
            edit: |i| {
                after(i).insert("published_port".into(), json!(8080));
            },
        },
        Failing {
            case: "no port",
            policy: "ports",
            rule: "catalog_ports_only",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["port is missing", "catalog port 9000"],
            edit: |i| {
                after(i).remove("port");
                after(i).remove("published_port");
            },
        },
        Failing {
            case: "service not in the catalog",
            policy: "ports",
            rule: "catalog_ports_only",
            resource: SERVICE,
            enforcement: HardMandatory,
            mentions: &["service social-intel has no port in the service catalog"],
            edit: |i| {
                i["catalog"].as_object_mut().unwrap().remove("social-intel");
            },
        },
        Failing {
            case: "change during a freeze",
            policy: "freeze",
            rule: "change_freeze",
            resource: SERVICE,
            enforcement: SoftMandatory,
            mentions: &[
                "reason: quarter close",
                "would create service/prod/social-intel",
            ],
            edit: |i| {
                i["settings"]["freeze"] = json!({"active": true, "reason": "quarter close"});
            },
        },
        Failing {
            case: "more changes than the plan limit",
            policy: "blast_radius",
            rule: "blast_radius",
            resource: PLAN,
            enforcement: HardMandatory,
            mentions: &["changes 2 services", "at most 1"],
            edit: |i| {
                let mut other = i["resources"][0].clone();
                other["action"] = json!("update");
                other["before"] = spec();
                i["resources"].as_array_mut().unwrap().push(other);
                i["settings"]["max_services_per_plan"] = json!(1);
            },
        },
        Failing {
            case: "cost rise over budget",
            policy: "budget",
            rule: "budget",
            resource: PLAN,
            enforcement: SoftMandatory,
            mentions: &["by 600.5 USD", "at most 500 USD"],
            edit: |i| {
                i["cost"]["monthly_delta"] = json!(600.5);
            },
        },
    ]
}

#[test]
fn the_compliant_plan_breaks_no_rule() {
    assert_eq!(evaluate(&compliant()), vec![]);
}

#[test]
fn each_failing_input_breaks_exactly_its_rule() {
    for case in failing() {
        let mut input = compliant();
        (case.edit)(&mut input);
        let found = evaluate(&input);
        assert_eq!(found.len(), 1, "{}: {found:#?}", case.case);
        let violation = &found[0];
        assert_eq!(violation.rule, case.rule, "{}", case.case);
        assert_eq!(violation.policy, case.policy, "{}", case.case);
        assert_eq!(violation.resource, case.resource, "{}", case.case);
        assert_eq!(violation.enforcement, case.enforcement, "{}", case.case);
        for mention in case.mentions {
            assert!(
                violation.message.contains(mention),
                "{}: message {:?} does not mention {mention:?}",
                case.case,
                violation.message
            );
        }
    }
}

#[test]
fn every_declared_rule_has_a_failing_case() {
    let declared: BTreeSet<(&str, &str)> = pack()
        .rules()
        .iter()
        .map(|info| (info.policy.as_str(), info.rule.as_str()))
        .collect();
    let tested: BTreeSet<(&str, &str)> = failing()
        .iter()
        .map(|case| (case.policy, case.rule))
        .collect();
    assert_eq!(declared, tested);
}

#[test]
fn declared_levels_match_the_failing_cases() {
    for case in failing() {
        let info = pack()
            .rules()
            .iter()
            .find(|info| info.rule == case.rule)
            .unwrap();
        assert_eq!(info.enforcement, case.enforcement, "{}", case.rule);
        assert!(!info.description.is_empty(), "{}", case.rule);
    }
}

#[test]
fn edge_inputs_that_pass() {
    let passing: Vec<(&str, Edit)> = vec![
        ("digest image", |i| {
            after(i).insert(
                "image".into(),
                json!(format!("infracrew/social-intel@sha256:{DIGEST}")),
            );
        }),
        ("tag and digest", |i| {
            let image = format!("infracrew/social-intel:1.4.0@sha256:{DIGEST}");
            after(i).insert("image".into(), json!(image));
        }),
        ("registry with a port and a tag", |i| {
            let image = "registry.local:5000/infracrew/social-intel:1.4.0";
            after(i).insert("image".into(), json!(image));
        }),
        ("limits equal to requests", |i| {
            after(i)["resources"]["cpu_limit_millis"] = json!(250);
            after(i)["resources"]["memory_limit_mib"] = json!(128);
        }),
        ("three replicas in prod", |i| {
            after(i).insert("replicas".into(), json!(3));
        }),
        ("one replica in staging", |i| {
            i["environment"] = json!("staging");
            after(i).insert("replicas".into(), json!(1));
        }),
        ("scaling by less than double", |i| {
            update_from(i, 2);
            after(i).insert("replicas".into(), json!(3));
        }),
        ("scaling by less than half", |i| {
            update_from(i, 3);
            after(i).insert("replicas".into(), json!(2));
        }),
        ("scaling up from zero", |i| {
            update_from(i, 0);
            after(i).insert("replicas".into(), json!(2));
        }),
        ("no published port", |i| {
            after(i).remove("published_port");
        }),
        ("null published port", |i| {
            after(i).insert("published_port".into(), Value::Null);
        }),
        ("no privileged or host_network fields", |i| {
            after(i).remove("privileged");
            after(i).remove("host_network");
        }),
        ("a delete has no shape to judge", |i| {
            let resource = &mut i["resources"][0];
            resource["before"] = json!({"image": "infracrew/social-intel:latest", "replicas": 1});
            resource["after"] = Value::Null;
            resource["action"] = json!("delete");
            i["catalog"] = json!({});
        }),
        ("an unchanged service during a freeze", |i| {
            i["settings"]["freeze"] = json!({"active": true, "reason": "quarter close"});
            i["resources"][0]["before"] = spec();
            i["resources"][0]["action"] = json!("unchanged");
        }),
        (
            "changes exactly at the plan limit, unchanged ones not counted",
            |i| {
                let mut unchanged = i["resources"][0].clone();
                unchanged["action"] = json!("unchanged");
                unchanged["before"] = spec();
                let resources = i["resources"].as_array_mut().unwrap();
                resources.extend([unchanged.clone(), unchanged]);
                i["settings"]["max_services_per_plan"] = json!(1);
            },
        ),
        ("cost rise exactly at the budget", |i| {
            i["cost"]["monthly_delta"] = json!(500.0);
        }),
    ];
    for (case, edit) in passing {
        let mut input = compliant();
        edit(&mut input);
        assert_eq!(evaluate(&input), vec![], "{case}");
    }
}

#[test]
fn freeze_reports_every_changed_resource_and_a_missing_reason() {
    let mut input = compliant();
    input["settings"]["freeze"] = json!({"active": true, "reason": ""});
    let mut deleted = input["resources"][0].clone();
    deleted["resource"] = json!("service/prod/alfred-bot");
    deleted["service"] = json!("alfred-bot");
    deleted["action"] = json!("delete");
    deleted["before"] = deleted["after"].take();
    input["resources"].as_array_mut().unwrap().push(deleted);
    let found = evaluate(&input);
    let resources: Vec<&str> = found.iter().map(|v| v.resource.as_str()).collect();
    assert_eq!(
        resources,
        ["service/prod/alfred-bot", "service/prod/social-intel"]
    );
    assert!(found.iter().all(|v| v.rule == "change_freeze"));
    assert!(
        found[0].message.contains("reason: none given"),
        "{found:#?}"
    );
}

#[test]
fn loading_from_disk_and_from_memory_agree() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../playbooks/policies");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "rego") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            sources.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    sources.reverse();
    let from_memory = PolicySet::from_sources(sources).unwrap();
    assert_eq!(from_memory.version(), pack().version());
    assert_eq!(from_memory.rules(), pack().rules());
}

#[test]
fn evaluation_runs_concurrently_on_a_shared_set() {
    fn shareable<T: Send + Sync>() {}
    shareable::<PolicySet>();
    let set = pack();
    let mut input = compliant();
    after(&mut input).insert("privileged".into(), json!(true));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..50)
                        .map(|_| set.evaluate(&input).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for found in handle.join().unwrap() {
                assert_eq!(found.len(), 1);
                assert_eq!(found[0].rule, "no_privileged");
            }
        }
    });
}

#[test]
fn values_of_the_wrong_type_are_violations_not_errors() {
    let mut input = compliant();
    let after = after(&mut input);
    after.insert("image".into(), json!(42));
    after.insert("replicas".into(), json!("two"));
    after.insert("port".into(), json!("9000"));
    after.insert(
        "resources".into(),
        json!({"cpu_request_millis": "250m", "cpu_limit_millis": null,
                                            "memory_request_mib": true, "memory_limit_mib": [256]}),
    );
    after.insert("health".into(), json!("/health"));
    after.insert("privileged".into(), json!("yes"));
    let rules: BTreeSet<String> = evaluate(&input).into_iter().map(|v| v.rule).collect();
    let expected = [
        "catalog_ports_only",
        "image_pinned",
        "probes_set",
        "prod_min_replicas",
        "resources_set",
    ];
    assert_eq!(rules, expected.map(String::from).into());

    let mut input = compliant();
    update_from(&mut input, 2);
    input["resources"][0]["before"]["replicas"] = json!("2");
    input["settings"]["freeze"] = json!({"active": "yes", "reason": 7});
    assert_eq!(evaluate(&input), vec![]);
}

#[test]
fn a_malformed_input_document_is_an_evaluation_error() {
    let mut input = compliant();
    input["resources"][0]["after"] = json!("not a spec");
    let err = pack().evaluate(&input).unwrap_err();
    assert!(
        matches!(err, PolicyError::Evaluation { line: Some(_), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(".rego"), "{err}");
}

const SAMPLE: &str = r#"package infracrew.policy.sample

import rego.v1

rules := {"flag_unset": {"enforcement": "advisory", "description": "The flag is not set."}}

violations contains v if {
	input.flag == true
	v := {"rule": "flag_unset", "resource": "plan/x", "message": "flag is true, expected false"}
}
"#;

fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
        .collect()
}

#[test]
fn a_policy_that_does_not_compile_names_its_file_and_line() {
    let broken = SAMPLE.replace(
        r#""advisory", "description""#,
        r#""advisory" "description""#,
    );
    let err = PolicySet::from_sources(sources(&[
        ("sample.rego", SAMPLE),
        ("broken.rego", &broken),
    ]))
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Compile { file, line: Some(5), .. } if file == "broken.rego"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("broken.rego") && text.contains("line 5"),
        "{text}"
    );
}

#[test]
fn an_unsafe_variable_is_a_compile_error_with_its_line() {
    let unsafe_var = SAMPLE.replace("input.flag == true", "x > 1");
    let err = PolicySet::from_sources(sources(&[("unsafe.rego", &unsafe_var)])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unsafe.rego") && text.contains("line 8"),
        "{text}"
    );
}

#[test]
fn a_policy_without_rules_names_its_file() {
    let no_rules = "package infracrew.policy.norules\n\nimport rego.v1\n\nviolations contains v if {\n\tinput.flag\n\tv := {\"rule\": \"r\", \"resource\": \"x\", \"message\": \"m\"}\n}\n";
    let err = PolicySet::from_sources(sources(&[("norules.rego", no_rules)])).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Missing {
                declaration: "rules",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("norules.rego"), "{err}");

    let empty_rules = SAMPLE.replace(
        r#"{"flag_unset": {"enforcement": "advisory", "description": "The flag is not set."}}"#,
        "{}",
    );
    let err = PolicySet::from_sources(sources(&[("empty.rego", &empty_rules)])).unwrap_err();
    assert!(err.to_string().contains("empty.rego"), "{err}");
}

#[test]
fn a_policy_without_violations_names_its_file() {
    let text = SAMPLE.split("violations").next().unwrap();
    let err = PolicySet::from_sources(sources(&[("silent.rego", text)])).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::Missing {
                declaration: "violations",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("silent.rego"), "{err}");
}

#[test]
fn an_unknown_enforcement_level_names_its_file_and_rule() {
    let text = SAMPLE.replace("\"advisory\"", "\"mandatory-ish\"");
    let err = PolicySet::from_sources(sources(&[("levels.rego", &text)])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("levels.rego")
            && text.contains("flag_unset")
            && text.contains("mandatory-ish"),
        "{text}"
    );
}

#[test]
fn a_package_outside_the_policy_namespace_is_refused() {
    let text = SAMPLE.replace("infracrew.policy.sample", "sample");
    let err = PolicySet::from_sources(sources(&[("stray.rego", &text)])).unwrap_err();
    assert!(matches!(err, PolicyError::Package { .. }), "{err:?}");
    assert!(err.to_string().contains("stray.rego"), "{err}");
}

#[test]
fn two_files_with_one_package_are_refused() {
    let err =
        PolicySet::from_sources(sources(&[("a.rego", SAMPLE), ("b.rego", SAMPLE)])).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("a.rego") && text.contains("b.rego"), "{text}");
}

#[test]
fn no_policy_at_all_is_refused() {
    let err = PolicySet::from_sources(vec![]).unwrap_err();
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err:?}");
    let err =
        PolicySet::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path()).unwrap_err();
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err:?}");
}

#[test]
fn a_violation_of_an_undeclared_rule_is_an_error() {
    let text = SAMPLE.replace(r#"{"rule": "flag_unset""#, r#"{"rule": "flag_set""#);
    let set = PolicySet::from_sources(sources(&[("undeclared.rego", &text)])).unwrap();
    assert_eq!(set.evaluate(&json!({"flag": false})).unwrap(), vec![]);
    let err = set.evaluate(&json!({"flag": true})).unwrap_err();
    assert!(matches!(err, PolicyError::UndeclaredRule { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("undeclared.rego") && text.contains("flag_set"),
        "{text}"
    );
}

#[test]
fn a_violation_takes_its_declared_level() {
    let set = PolicySet::from_sources(sources(&[("sample.rego", SAMPLE)])).unwrap();
    assert_eq!(
        set.evaluate(&json!({"flag": true})).unwrap(),
        vec![Violation {
            policy: "sample".into(),
            rule: "flag_unset".into(),
            resource: "plan/x".into(),
            enforcement: Enforcement::Advisory,
            message: "flag is true, expected false".into(),
        }]
    );
}

#[test]
fn version_follows_the_text_and_nothing_else() {
    let version = |files: &[(&str, &str)]| {
        PolicySet::from_sources(sources(files))
            .unwrap()
            .version()
            .to_owned()
    };
    let other = SAMPLE.replace("sample", "other");
    let base = version(&[("a.rego", SAMPLE), ("b.rego", &other)]);
    assert!(base.starts_with("sha256:"), "{base}");
    let hex = &base["sha256:".len()..];
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{base}"
    );
    assert_eq!(base, version(&[("a.rego", SAMPLE), ("b.rego", &other)]));
    assert_eq!(base, version(&[("b.rego", &other), ("a.rego", SAMPLE)]));

    let edited = other.replace("flag is true", "flag is on");
    assert_ne!(base, version(&[("a.rego", SAMPLE), ("b.rego", &edited)]));
    assert_ne!(base, version(&[("a.rego", SAMPLE), ("c.rego", &other)]));
}
