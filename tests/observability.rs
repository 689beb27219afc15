//! Watching the crew: every agent's health and metrics endpoints scraped by a real Prometheus
//! with the repository's configuration, the dashboard's queries and the alert rules checked
//! against what the agents export, the compose file checked against what the agents read,
//! approvals gated on a live Forge, and one plan followed through the logs by its trace id.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use infracrew_e2e::{
    AgentProcess, PATIENCE, approve, crew_bus, free_port, logs_of, submit, text, wait_for_state,
};
use infracrew_protocol::PlanState;
use infracrew_testkit::{
    NatsServer, binary, http, otlp::OtlpCollector, prometheus::Prometheus, workspace_root,
};
use serde_json::{Value, json};

const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];
const GOAL: &str = "examples/goals/valid/social-intel-staging.json";

/// Four agents, each on an HTTP port the test knows.
struct Crew {
    server: NatsServer,
    agents: Vec<AgentProcess>,
    ports: BTreeMap<&'static str, u16>,
}

impl Crew {
    fn start(conductor_args: &[&str], env: &[(&str, &str)]) -> Self {
        let server = NatsServer::start().unwrap();
        let mut ports = BTreeMap::new();
        let mut agents = Vec::new();
        for name in AGENTS {
            let port = free_port();
            ports.insert(name, port);
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec!["--listen", listen.as_str()];
            if name == "conductor" {
                args.extend_from_slice(conductor_args);
            }
            agents.push(AgentProcess::start_with_env(name, &server, &args, env));
        }
        Crew {
            server,
            agents,
            ports,
        }
    }

    fn url(&self, agent: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[agent])
    }

    fn agent(&mut self, name: &str) -> &mut AgentProcess {
        self.agents.iter_mut().find(|a| a.name == name).unwrap()
    }

    fn logs(&self) -> String {
        logs_of(&self.agents)
    }

    /// Waits until `agent` answers /health/ready with 200, and returns the answer.
    async fn ready(&self, agent: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok((200, body)) = http::get(&self.url(agent, "/health/ready")).await {
                return serde_json::from_str(&body).unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{agent} never became ready\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds, failing with the agents' logs and `what`.
    async fn wait_until<F, Fut>(&self, what: &str, patience: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let last = match check().await {
                Ok(()) => return,
                Err(last) => last,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {last}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn read_yaml(path: &str) -> Value {
    let file = workspace_root().join(path);
    let text = std::fs::read_to_string(&file).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The repository's Prometheus configuration with each agent's job pointed at the test's
/// port, a one-second scrape and evaluation, and only the agents' jobs (no NATS exporter runs
/// here). Written as JSON, which Prometheus reads as YAML.
fn prometheus_config(ports: &BTreeMap<&'static str, u16>) -> String {
    let mut config = read_yaml("deploy/prometheus/prometheus.yml");
    config["global"]["scrape_interval"] = json!("1s");
    config["global"]["evaluation_interval"] = json!("1s");
    let jobs = config["scrape_configs"].as_array_mut().unwrap();
    jobs.retain(|job| ports.contains_key(job["job_name"].as_str().unwrap_or_default()));
    assert_eq!(jobs.len(), 4, "one scrape job per agent");
    for job in jobs {
        let port = ports[job["job_name"].as_str().unwrap()];
        job["static_configs"] = json!([{"targets": [format!("127.0.0.1:{port}")]}]);
    }
    config.to_string()
}

/// Every `expr` in the dashboard, with Grafana's interval variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    fn collect(value: &Value, title: &str, found: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                    found.push((title.to_owned(), expr.to_owned()));
                }
                for child in map.values() {
                    collect(child, title, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, title, found)),
            _ => {}
        }
    }
    let file = workspace_root().join("deploy/grafana/dashboards/infracrew.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut found = Vec::new();
    collect(&dashboard["panels"], "", &mut found);
    found
        .into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$__interval", "15s");
            (title, expr)
        })
        .collect()
}

/// The metric names a query uses (`infracrew_…` and Prometheus's own `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("infracrew_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names of the samples an agent's /metrics shows.
async fn exported(crew: &Crew, agent: &str) -> BTreeSet<String> {
    let (status, body) = http::get(&crew.url(agent, "/metrics")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_crew_and_every_dashboard_query_and_the_down_alert_work() {
    let mut crew = Crew::start(
        &["--sweep-seconds", "1", "--agent-silence-seconds", "3"],
        &[],
    );
    let bus = crew_bus(&crew.server).await;

    for agent in AGENTS {
        // Ready first: it waits for the agent's HTTP endpoint, which binds a moment after
        // the process starts.
        let ready = crew.ready(agent).await;
        let (status, live) = http::get(&crew.url(agent, "/health/live")).await.unwrap();
        assert_eq!(status, 200, "{live}");
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["checks"]["nats"]["ok"], true, "{ready}");
        assert_eq!(
            ready["checks"][format!("consumer {agent}")]["ok"],
            true,
            "{ready}"
        );
    }
    assert!(crew.ready("forge").await["checks"]["dry-run driver"]["ok"] == true);
    assert!(crew.ready("sentinel").await["checks"]["policy set"]["ok"] == true);
    // No review channel, so no reviews consumer to read (tests/slack.rs reads it).
    assert!(crew.ready("conductor").await["checks"]["consumer conductor-reviews"].is_null());

    // One plan through, so every handler, the decision and the apply have been measured.
    let plan = submit(&crew.server, GOAL);
    wait_for_state(&bus, plan, PlanState::Ready, &crew.agents).await;
    let approved = approve(&crew.server, plan, "alice");
    assert!(approved.status.success(), "{}", text(&approved.stdout));
    wait_for_state(&bus, plan, PlanState::Applied, &crew.agents).await;

    let rules = workspace_root().join("deploy/prometheus/rules.yml");
    let prometheus = Prometheus::start(&prometheus_config(&crew.ports), &[rules])
        .await
        .unwrap();
    crew.wait_until("every agent is scraped", PATIENCE, || async {
        let targets = prometheus.targets().await?;
        let up = targets.iter().filter(|t| t["health"] == "up").count();
        (up == 4).then_some(()).ok_or(format!("{targets:?}"))
    })
    .await;
    // Rates need two samples of each series; the sweep counts plans every second.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut names_exported = BTreeSet::new();
    for agent in AGENTS {
        names_exported.extend(exported(&crew, agent).await);
    }
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for (panel, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                names_exported.contains(&name),
                "panel {panel:?} queries {name}, which no agent exports ({expr})"
            );
        }
        let result = prometheus.query(expr).await.unwrap();
        assert!(
            !result.is_empty(),
            "panel {panel:?}: {expr} returned no data"
        );
    }
    let rule_text =
        std::fs::read_to_string(workspace_root().join("deploy/prometheus/rules.yml")).unwrap();
    for name in metric_names(&rule_text) {
        assert!(
            names_exported.contains(&name),
            "a rule uses {name}, which no agent exports"
        );
    }
    let plans = prometheus
        .query(r#"infracrew_plans{state="APPLIED"}"#)
        .await
        .unwrap();
    assert_eq!(plans[0]["value"][1], "1", "{plans:?}");

    // Sentinel dies: its heartbeat age grows, and the down alert fires once the Conductor's
    // (shortened) silence has passed.
    let age_query = r#"infracrew_agent_heartbeat_age_seconds{agent="sentinel"}"#;
    crew.agent("sentinel").kill();
    let age_at_kill = prometheus.query(age_query).await.unwrap()[0]["value"][1]
        .as_str()
        .unwrap()
        .parse::<f64>()
        .unwrap();
    crew.wait_until(
        "the agent-down alert fires for sentinel",
        PATIENCE,
        || async {
            let alerts = prometheus.alerts().await?;
            alerts
                .iter()
                .any(|alert| {
                    alert["labels"]["alertname"] == "InfracrewAgentDown"
                        && alert["labels"]["agent"] == "sentinel"
                        && alert["state"] == "firing"
                })
                .then_some(())
                .ok_or(format!("{alerts:?}"))
        },
    )
    .await;
    let age_now = prometheus.query(age_query).await.unwrap()[0]["value"][1]
        .as_str()
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert!(
        age_now > age_at_kill && age_now > 3.0,
        "the heartbeat age grows: {age_at_kill} then {age_now}"
    );
    let others = prometheus
        .query(r#"ALERTS{alertname="InfracrewAgentDown", agent!="sentinel"}"#)
        .await
        .unwrap();
    assert!(others.is_empty(), "only sentinel is down: {others:?}");
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let output = Command::new("promtool")
        .args(["test", "rules", "deploy/prometheus/rules.test.yml"])
        .current_dir(workspace_root())
        .output()
        .expect("promtool runs (make deps installs Debian's prometheus package)");
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let checked = Command::new("promtool")
        .args(["check", "config", "deploy/prometheus/prometheus.yml"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", text(&checked.stdout));
}

/// The environment names a binary reads, from its help (`[env: NAME=…]`).
fn env_names(binary_name: &str) -> BTreeSet<String> {
    let output = Command::new(binary(binary_name))
        .arg("--help")
        .output()
        .unwrap();
    let help = text(&output.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn compose_mounts_ports_and_environment_match_what_the_agents_read() {
    let root = workspace_root();
    let compose = read_yaml("compose.yaml");
    let prometheus = read_yaml("deploy/prometheus/prometheus.yml");
    let services = compose["services"].as_object().unwrap();
    for name in AGENTS
        .iter()
        .copied()
        .chain(["nats", "prometheus", "grafana"])
    {
        assert!(services.contains_key(name), "compose.yaml has no {name}");
    }
    assert!(root.join("Dockerfile").is_file());

    for (service, spec) in services {
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    root.join(source).exists(),
                    "{service} mounts {source}, which the repository lacks"
                );
            }
        }
        for env_file in spec["env_file"].as_array().into_iter().flatten() {
            let path = env_file["path"].as_str().unwrap();
            assert!(
                root.join(path).exists() || env_file["required"] == false,
                "{service} needs {path}"
            );
        }
        let Some(agent) = AGENTS.iter().find(|agent| *agent == service) else {
            continue;
        };
        assert_eq!(spec["command"], json!([agent]), "{service} runs its agent");
        let reads = env_names(agent);
        let environment = spec["environment"].as_object().unwrap();
        for key in environment.keys() {
            assert!(
                reads.contains(key),
                "{service} sets {key}, which {agent} does not read ({reads:?})"
            );
        }
        let listen = environment["INFRACREW_LISTEN"].as_str().unwrap();
        let port = listen.rsplit(':').next().unwrap();
        let health = spec["healthcheck"]["test"].to_string();
        assert!(
            health.contains(&format!(":{port}/health/ready")),
            "{service}'s health check asks port {port}: {health}"
        );
        let exposed: Vec<String> = spec["expose"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["ports"].as_array().into_iter().flatten())
            .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().to_owned())
            .collect();
        assert!(
            exposed.contains(&port.to_owned()),
            "{service} exposes {port}"
        );
        let job = prometheus["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["job_name"] == *agent)
            .unwrap_or_else(|| panic!("Prometheus scrapes no {agent}"));
        assert_eq!(
            job["static_configs"][0]["targets"][0],
            format!("{service}:{port}"),
            "Prometheus scrapes {service} where it listens"
        );
    }
    // Every name the example environment file sets is one the Conductor reads.
    let example = std::fs::read_to_string(root.join("deploy/env.example")).unwrap();
    let conductor_reads = env_names("conductor");
    for line in example.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap();
        assert!(
            conductor_reads.contains(key),
            "deploy/env.example sets {key}, which the Conductor does not read"
        );
    }
    for mounted in [
        "deploy/grafana/provisioning",
        "deploy/grafana/dashboards/infracrew.json",
    ] {
        assert!(Path::new(&root.join(mounted)).exists(), "{mounted}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_refused_while_forge_is_down_and_taken_once_it_is_back() {
    let mut crew = Crew::start(&["--agent-silence-seconds", "2"], &[]);
    let bus = crew_bus(&crew.server).await;
    let plan = submit(&crew.server, GOAL);
    wait_for_state(&bus, plan, PlanState::Ready, &crew.agents).await;

    crew.agent("forge").kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = approve(&crew.server, plan, "alice");
    let said = text(&refused.stdout) + &text(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("forge is down: its last heartbeat came") && said.contains("s ago"),
        "{said}"
    );
    let record = wait_for_state(&bus, plan, PlanState::Ready, &crew.agents).await;
    assert!(record.approvals.is_empty(), "{:?}", record.approvals);

    let port = crew.ports["forge"].to_string();
    let listen = format!("127.0.0.1:{port}");
    *crew.agent("forge") = AgentProcess::start("forge", &crew.server, &["--listen", &listen]);
    crew.ready("forge").await;
    crew.wait_until("the Conductor hears Forge again", PATIENCE, || async {
        let approved = approve(&crew.server, plan, "alice");
        approved
            .status
            .success()
            .then_some(())
            .ok_or(text(&approved.stdout) + &text(&approved.stderr))
    })
    .await;
    wait_for_state(&bus, plan, PlanState::Applied, &crew.agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plan_is_followed_by_its_trace_id_in_every_agents_logs_and_in_the_collector() {
    let collector = OtlpCollector::start().await.unwrap();
    let mut crew = Crew::start(
        &[],
        &[
            ("INFRACREW_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,infracrew_bus=debug"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
        ],
    );
    let bus = crew_bus(&crew.server).await;
    for agent in AGENTS {
        crew.ready(agent).await;
    }
    let submitted = infracrew_e2e::crew(&crew.server, &["submit", "--json", GOAL]);
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let report: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let trace_id = report["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace_id.len(), 32, "{report}");
    let plan = report["plan_id"].as_str().unwrap().parse().unwrap();
    wait_for_state(&bus, plan, PlanState::Ready, &crew.agents).await;
    assert!(approve(&crew.server, plan, "alice").status.success());
    wait_for_state(&bus, plan, PlanState::Applied, &crew.agents).await;

    for agent in &crew.agents {
        let log = agent.log();
        let traced: Vec<Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["span"]["trace_id"] == trace_id.as_str())
            .collect();
        assert!(
            !traced.is_empty(),
            "{} logged nothing with trace {trace_id}:\n{log}",
            agent.name
        );
    }
    // The apply itself, reached through the decision, is in the same trace.
    let forge = crew
        .agents
        .iter()
        .find(|a| a.name == "forge")
        .unwrap()
        .log();
    assert!(
        forge.lines().any(|line| line.contains(&trace_id)
            && line.contains(infracrew_protocol::subjects::APPLY_REQUEST)),
        "Forge's apply carries the plan's trace:\n{forge}"
    );

    // A clean stop sends the spans still buffered; each agent's handling is in the trace,
    // and a message's handler is the child of the handler that published it.
    for agent in &mut crew.agents {
        assert_eq!(agent.terminate(PATIENCE), Some(0), "{}", agent.log());
    }
    let spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|span| span.trace_id == trace_id)
        .collect();
    for agent in AGENTS {
        assert!(
            spans
                .iter()
                .any(|span| span.service == format!("infracrew-{agent}")),
            "no span of {agent} in trace {trace_id}: {spans:?}"
        );
    }
    let sentinel = spans
        .iter()
        .find(|span| span.service == "infracrew-sentinel")
        .unwrap();
    assert!(
        spans.iter().any(
            |span| span.service == "infracrew-forge" && span.span_id == sentinel.parent_span_id
        ),
        "Sentinel's span hangs under the Forge span that asked it: {spans:?}"
    );
}
