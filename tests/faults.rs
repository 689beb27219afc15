//! Faults with real processes and real servers: while at least 50 plans go through the crew
//! (dry-run driver, dev approving automatically), agents are SIGKILLed and restarted, the
//! NATS server is killed and restarted on its store, two replicas of every agent share the
//! work, and a node of a three-node JetStream cluster dies. Each run ends with every plan
//! finished, none missing, none applied twice, and the plan records agreeing with the stream.
//!
//! `make test` runs each at 50 plans; `make soak` runs them with more plans and kills
//! (INFRACREW_SOAK_PLANS, INFRACREW_SOAK_KILLS). Forge killed in the middle of a real rollout
//! on the container engine is
//! `deploy::a_forge_killed_mid_rollout_converges_when_restarted_without_duplicates`.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use infracrew_bus::{Bus, ConnectArgs, ProvisionOptions, Topology, buckets, streams};
use infracrew_e2e::{AgentProcess, logs_of, messages_on, published_moves, recorded_moves, text};
use infracrew_protocol::{PlanId, PlanRecord, PlanTransitioned, ServiceState, subjects};
use infracrew_testkit::{NatsServer, binary, workspace_root};

const SERVICES: [&str; 5] = [
    "social-intel",
    "financial-tax",
    "legal-compliance",
    "alfred-bot",
    "mission-control",
];
const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];

/// One fault run at a time: each loads both cores with a crew (three servers for the
/// cluster), and runs side by side would measure the machine rather than the crew.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// How long a run may take to finish every plan (INFRACREW_SOAK_PATIENCE, seconds).
fn patience() -> Duration {
    Duration::from_secs(setting("INFRACREW_SOAK_PATIENCE", 240) as u64)
}

/// A random number below `bound`, from the operating system's randomness.
fn random(bound: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % bound.max(1)
}

/// The crew under test: its agents, started (and restarted) with the same settings.
struct Crew {
    url: String,
    extra_env: Vec<(String, String)>,
    agents: Vec<AgentProcess>,
}

impl Crew {
    fn spawn(&self, name: &str) -> AgentProcess {
        let mut args: Vec<&str> = Vec::new();
        if name == "conductor" {
            args.extend([
                "--auto-approve",
                "dev",
                "--sweep-seconds",
                "1",
                "--lock-lease-seconds",
                "3",
            ]);
        }
        let mut env: Vec<(&str, &str)> = vec![("NATS_URL", self.url.as_str())];
        env.extend(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        AgentProcess::start_at(name, &self.url, &args, &env)
    }

    fn start(url: String, replicas: usize, extra_env: Vec<(String, String)>) -> Self {
        let mut crew = Crew {
            url,
            extra_env,
            agents: Vec::new(),
        };
        for _ in 0..replicas {
            for name in AGENTS {
                let agent = crew.spawn(name);
                crew.agents.push(agent);
            }
        }
        crew
    }

    /// SIGKILLs one agent at random and starts it again.
    fn kill_one(&mut self) -> String {
        let index = random(self.agents.len() as u64) as usize;
        let name = self.agents[index].name.clone();
        self.agents[index].kill();
        self.agents[index] = self.spawn(&name);
        name
    }

    fn logs(&self) -> String {
        logs_of(&self.agents)
    }
}

/// `count` deploy goals for dev, spread over the catalog's services, each a new version.
fn goals(dir: &tempfile::TempDir, count: usize) -> Vec<String> {
    let sample: serde_json::Value = serde_json::from_slice(
        &std::fs::read(workspace_root().join("examples/goals/valid/social-intel-staging.json"))
            .unwrap(),
    )
    .unwrap();
    (0..count)
        .map(|index| {
            let mut goal = sample.clone();
            goal["service"] = SERVICES[index % SERVICES.len()].into();
            goal["environment"] = "dev".into();
            goal["replicas"] = 1.into();
            goal["version"] = format!("2.{}.0", index / SERVICES.len()).into();
            let path = dir.path().join(format!("goal-{index}.json"));
            std::fs::write(&path, goal.to_string()).unwrap();
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

fn submit(url: &str, goal: &str) -> PlanId {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let output = std::process::Command::new(binary("crew"))
            .args(["submit", "--json", goal])
            .env("NATS_URL", url)
            .current_dir(workspace_root())
            .output()
            .unwrap();
        if output.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            return report["plan_id"].as_str().unwrap().parse().unwrap();
        }
        // The server may be restarting under the test: submitting again is safe, the goal's
        // id makes a second copy a duplicate.
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            text(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn connect(url: &str) -> Bus {
    Bus::connect(&ConnectArgs::for_url(url), "faults-test")
        .await
        .unwrap()
}

/// Plans not finished yet.
async fn unfinished(bus: &Bus, plans: &[PlanId]) -> Vec<(PlanId, Option<String>)> {
    let Ok(records) = bus.kv::<PlanRecord>(buckets::PLANS).await else {
        return plans.iter().map(|plan| (*plan, None)).collect();
    };
    let mut left = Vec::new();
    for plan in plans {
        match records.get(&plan.to_string()).await {
            Ok(Some(record)) if record.value.state.is_terminal() => {}
            Ok(Some(record)) => left.push((*plan, Some(record.value.state.to_string()))),
            _ => left.push((*plan, None)),
        }
    }
    left
}

/// The work stream's consumers with messages not yet delivered or not yet acknowledged.
async fn unsettled_consumers(bus: &Bus) -> Vec<(String, u64, usize)> {
    use futures::StreamExt;
    let Ok(stream) = bus.jetstream().get_stream_no_info(streams::WORK).await else {
        return vec![("(the work stream is not readable)".into(), 0, 0)];
    };
    let mut infos = stream.consumers();
    let mut unsettled = Vec::new();
    while let Some(info) = infos.next().await {
        match info {
            // Ordered consumers made by readers are not the crew's.
            Ok(info) if info.config.durable_name.is_none() => {}
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
            Ok(info) => unsettled.push((info.name, info.num_pending, info.num_ack_pending)),
            Err(error) => unsettled.push((format!("(listing failed: {error})"), 0, 0)),
        }
    }
    unsettled
}

/// Waits until every plan is finished, then checks that none is missing, none was applied
/// twice, and each record's moves are exactly the ones on `crew.plan.state`.
async fn check_outcome(url: &str, plans: &[PlanId], crew: &Crew, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    let bus = loop {
        let bus = connect(url).await;
        let left = unfinished(&bus, plans).await;
        if left.is_empty() {
            break bus;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} plans not finished: {left:?}\n{}",
            left.len(),
            plans.len(),
            crew.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A plan can end while a message about it still waits for its redelivery (its handler
    // died, or its ack was lost in a failover), which then finishes its work: the crew is
    // compared with the stream once every consumer has settled everything.
    loop {
        let unsettled = unsettled_consumers(&bus).await;
        if unsettled.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers still hold messages: {unsettled:?}\n{}",
            crew.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let records = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    let moves: Vec<PlanTransitioned> = messages_on(&bus, subjects::PLAN_STATE).await;
    let mut states = BTreeMap::new();
    for plan in plans {
        let record = records
            .get(&plan.to_string())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("plan {plan} is missing"))
            .value;
        // Every move once, at its position.
        let recorded = recorded_moves(&record);
        let published = published_moves(&moves, *plan);
        assert_eq!(
            recorded, published,
            "plan {plan}: its record and crew.plan.state disagree"
        );
        *states.entry(record.state.to_string()).or_insert(0) += 1;
    }
    assert!(
        states.get("APPLIED").copied().unwrap_or(0) >= plans.len() / 2,
        "most plans apply: {states:?}"
    );

    // Each version was recorded as running once at most: nothing was applied twice.
    let applied = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    for service in SERVICES {
        let history = applied.history(&format!("dev.{service}")).await.unwrap();
        let images: Vec<&str> = history.iter().map(|r| r.value.image.as_str()).collect();
        let distinct: BTreeSet<&str> = images.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            images.len(),
            "dev.{service} was applied twice: {images:?}"
        );
    }
    eprintln!("{} plans: {states:?}", plans.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_at_random_and_restarted_lose_nothing_and_apply_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plans_wanted = setting("INFRACREW_SOAK_PLANS", 50);
    let kills = setting("INFRACREW_SOAK_KILLS", 8);
    let mut crew = Crew::start(server.url(), 1, Vec::new());
    let mut plans = Vec::new();
    let mut killed = Vec::new();
    for (index, goal) in goals(&dir, plans_wanted).iter().enumerate() {
        plans.push(submit(&server.url(), goal));
        if index % (plans_wanted / kills.max(1)).max(1) == 0 && killed.len() < kills {
            tokio::time::sleep(Duration::from_millis(random(400))).await;
            killed.push(crew.kill_one());
        }
    }
    eprintln!("killed and restarted: {killed:?}");
    check_outcome(&server.url(), &plans, &crew, patience()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_killed_and_restarted_on_its_store_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crew = Crew::start(server.url(), 1, Vec::new());
    let goals = goals(&dir, setting("INFRACREW_SOAK_PLANS", 50));
    let mut plans = Vec::new();
    for (index, goal) in goals.iter().enumerate() {
        plans.push(submit(&server.url(), goal));
        if index == goals.len() / 2 {
            server.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart().unwrap();
        }
    }
    check_outcome(&server.url(), &plans, &crew, patience()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_agent_split_the_work_and_do_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crew = Crew::start(server.url(), 2, Vec::new());
    let plans: Vec<PlanId> = goals(&dir, setting("INFRACREW_SOAK_PLANS", 50))
        .iter()
        .map(|goal| submit(&server.url(), goal))
        .collect();
    check_outcome(&server.url(), &plans, &crew, patience()).await;
    for name in ["atlas", "forge"] {
        let busy = crew
            .agents
            .iter()
            .filter(|agent| agent.name == name && agent.log().contains("trace_id"))
            .count();
        assert_eq!(busy, 2, "both {name} replicas took work\n{}", crew.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_losing_a_node_carries_on() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster_ports: Vec<u16> = (0..3).map(|_| infracrew_testkit::free_port()).collect();
    let routes = cluster_ports
        .iter()
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<NatsServer> = cluster_ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            NatsServer::start_with_args(&[
                "--server_name",
                &format!("crew-{index}"),
                "--cluster_name",
                "crew",
                "--cluster",
                &format!("nats://127.0.0.1:{port}"),
                "--routes",
                &routes,
            ])
            .unwrap()
        })
        .collect();
    let url = nodes
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",");
    // The meta leader takes a moment to be elected: provision (three copies of everything)
    // once the cluster takes it, then start the crew.
    let options = ProvisionOptions {
        replicas: 3,
        ..ProvisionOptions::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let provisioned = match Bus::connect(&ConnectArgs::for_url(&url), "faults-test").await {
            Ok(bus) => Topology::crew(&options)
                .provision(&bus)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match provisioned {
            Ok(_) => break,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let crew = Crew::start(
        url.clone(),
        1,
        vec![("INFRACREW_REPLICAS".into(), "3".into())],
    );
    let goals = goals(&dir, setting("INFRACREW_SOAK_PLANS", 50));
    let mut plans = Vec::new();
    for (index, goal) in goals.iter().enumerate() {
        plans.push(submit(&url, goal));
        if index == goals.len() / 3 {
            nodes[0].kill();
        }
        if index == 2 * goals.len() / 3 {
            nodes[0].restart().unwrap();
        }
    }
    check_outcome(&url, &plans, &crew, patience()).await;
}
