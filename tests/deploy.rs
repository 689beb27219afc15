//! The container driver against a real engine (Docker, or Podman's Docker-compatible service
//! started by the harness): deploys, rolling and blue-green upgrades under a poller, rollback
//! of a broken image, scaling, decommissioning, returning to the previous revision, and a
//! container removed by hand showing up in the next diff. Then the whole crew on the engine: a
//! broken release ends ROLLED_BACK, and a Forge killed mid-rollout converges when restarted.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use infracrew_e2e::{
    AgentProcess, approve, crew_bus, free_port, messages_on, submit, wait_for_state,
    wait_for_state_within,
};
use infracrew_forge::{
    container::{ContainerDriver, ContainerSettings},
    driver::{Apply, ApplyContext, Driver, DriverError, Progress},
    render::{diff_text, render},
};
use infracrew_protocol::{
    DesiredState, HealthPaths, OpsEvent, OpsEventKind, PlanState, Resources, ServiceState,
    Strategy, examples, subjects,
};
use infracrew_testkit::{
    NatsServer,
    engine::ContainerEngine,
    images::{SampleService, build_sample},
};

const SERVICE: &str = "social-intel";
const PORT: u16 = 9000;

fn engine() -> &'static ContainerEngine {
    static ENGINE: OnceLock<ContainerEngine> = OnceLock::new();
    ENGINE.get_or_init(|| ContainerEngine::start().expect("a container engine"))
}

fn image(version: &str) -> String {
    format!("infracrew-test/social-intel:{version}")
}

/// Builds the sample images once per run: 1 and 2 ready, `broken` never ready.
async fn sample_images(driver: &ContainerDriver) {
    // Async-aware: the builds await while holding it, and tests run on runtimes of their own.
    static BUILT: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut built = BUILT.lock().await;
    if *built {
        return;
    }
    for (version, ready) in [("1", true), ("2", true), ("broken", false)] {
        let sample = SampleService {
            ready,
            ..SampleService::new(&image(version), PORT)
        };
        build_sample(driver.docker(), &sample).await.unwrap();
    }
    *built = true;
}

/// One test's environment on the engine, cleared first, with a service port of its own.
struct Fixture {
    driver: ContainerDriver,
    environment: String,
    published_port: u16,
}

/// A driver on the test engine, with the sample images built.
async fn test_driver() -> ContainerDriver {
    let settings = ContainerSettings {
        docker_host: Some(engine().docker_host().to_owned()),
        health_timeout: Duration::from_secs(8),
        probe_interval: Duration::from_millis(100),
        drain: Duration::from_millis(300),
        ..ContainerSettings::default()
    };
    let driver = ContainerDriver::connect(settings).await.unwrap();
    sample_images(&driver).await;
    driver
}

impl Fixture {
    async fn new(environment: &str) -> Self {
        let fixture = Fixture {
            driver: test_driver().await,
            environment: environment.to_owned(),
            published_port: free_port(),
        };
        remove_labelled(&fixture.driver, &[fixture.label()]).await;
        fixture
    }

    /// Removes this environment's containers once the test has passed. A failed test leaves
    /// them to be looked at; the next run clears them when it starts.
    async fn finish(self) {
        remove_labelled(&self.driver, &[self.label()]).await;
    }

    fn label(&self) -> String {
        format!("infracrew.environment={}", self.environment)
    }

    fn state(&self, version: &str, replicas: u32) -> ServiceState {
        ServiceState {
            image: image(version),
            replicas,
            port: PORT,
            published_port: Some(self.published_port),
            env: [("LOG_LEVEL".to_owned(), "info".to_owned())].into(),
            resources: Resources {
                cpu_request_millis: 100,
                cpu_limit_millis: 250,
                memory_request_mib: 16,
                memory_limit_mib: 64,
            },
            health: HealthPaths {
                live: "/health/live".into(),
                ready: "/health/ready".into(),
            },
            privileged: false,
            host_network: false,
        }
    }

    /// Applies `state`, returning what the driver reported on the way.
    async fn apply(
        &self,
        state: Option<&ServiceState>,
        strategy: Strategy,
    ) -> (Result<(), DriverError>, Vec<String>) {
        let (progress, mut lines) = Progress::channel();
        let expected = self
            .driver
            .current(&self.environment, SERVICE)
            .await
            .ok()
            .flatten();
        let context = ApplyContext {
            plan_id: examples::plan_spec().plan_id,
            digest: "sha256:deploy-test".into(),
            strategy,
            expected,
            progress,
        };
        let outcome = self
            .driver
            .apply(&self.environment, SERVICE, state, &context)
            .await;
        drop(context);
        let mut reported = Vec::new();
        while let Some(line) = lines.recv().await {
            reported.push(line);
        }
        (outcome, reported)
    }

    async fn current(&self) -> Option<ServiceState> {
        self.driver
            .current(&self.environment, SERVICE)
            .await
            .unwrap()
    }

    /// The names of this environment's containers, running or not.
    async fn containers(&self) -> Vec<String> {
        labelled(&self.driver, &[self.label()]).await
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.published_port, path)
    }
}

/// The names of the containers carrying every one of `labels` (`key=value`), running or not.
async fn labelled(driver: &ContainerDriver, labels: &[String]) -> Vec<String> {
    let filters = std::collections::HashMap::from([("label", labels.to_vec())]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut names: Vec<String> = driver
        .docker()
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|container| container.names.unwrap_or_default())
        .map(|name| name.trim_start_matches('/').to_owned())
        .collect();
    names.sort();
    names
}

/// Removes the containers carrying every one of `labels`, running or not; best effort, as it
/// only tidies up.
async fn remove_labelled(driver: &ContainerDriver, labels: &[String]) {
    for name in labelled(driver, labels).await {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = driver.docker().remove_container(&name, Some(options)).await;
    }
}

/// The labels of `service`'s containers in dev, where the crew tests deploy.
fn dev_service(service: &str) -> [String; 2] {
    [
        "infracrew.environment=dev".to_owned(),
        format!("infracrew.service={service}"),
    ]
}

/// A plain HTTP/1.0 GET on loopback: the status and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Hits the service's readiness path every 20 ms until stopped; returns (answers, failures).
struct Poller {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(usize, Vec<String>)>,
}

impl Poller {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut answers, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match http_get(port, "/health/ready") {
                    Ok((200, _)) => answers += 1,
                    Ok((status, body)) => failures.push(format!("{status} {body}")),
                    Err(error) => failures.push(error),
                }
                thread::sleep(Duration::from_millis(20));
            }
            (answers, failures)
        });
        Poller { stop, handle }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the poller")
    }
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
}

#[tokio::test]
async fn a_first_deploy_runs_every_replica_healthy_behind_the_published_port() {
    let fixture = Fixture::new("t-first").await;
    let v1 = fixture.state("1", 2);
    let (outcome, lines) = fixture.apply(Some(&v1), Strategy::Rolling).await;
    outcome.unwrap();
    assert_eq!(fixture.current().await, Some(v1.clone()), "{lines:#?}");
    fixture
        .driver
        .verify(&fixture.environment, SERVICE, Some(&v1))
        .await
        .unwrap();
    assert_eq!(fixture.get("/").unwrap(), (200, "1".to_owned()));
    assert_eq!(fixture.get("/health/ready").unwrap().0, 200);
    for needle in [
        "checking image",
        "starting replica 1 of 2",
        "replica 1 of 2 is ready",
        "replica 2 of 2 is ready",
    ] {
        position(&lines, needle);
    }
    let containers = fixture.containers().await;
    assert_eq!(
        containers.len(),
        3,
        "two replicas and the edge: {containers:?}"
    );

    // The same state again changes nothing.
    let (outcome, _) = fixture.apply(Some(&v1), Strategy::Rolling).await;
    outcome.unwrap();
    assert_eq!(fixture.containers().await, containers);
    fixture.finish().await;
}

#[tokio::test]
async fn a_rolling_upgrade_always_leaves_a_healthy_replica_serving() {
    let fixture = Fixture::new("t-rolling").await;
    fixture
        .apply(Some(&fixture.state("1", 2)), Strategy::Rolling)
        .await
        .0
        .unwrap();
    let poller = Poller::start(fixture.published_port);
    thread::sleep(Duration::from_millis(200));
    let v2 = fixture.state("2", 2);
    let (outcome, lines) = fixture.apply(Some(&v2), Strategy::Rolling).await;
    let (answers, failures) = poller.finish();
    outcome.unwrap();
    assert!(
        failures.is_empty(),
        "the service went without a ready replica: {failures:?}"
    );
    assert!(
        answers > 10,
        "the poller ran through the rollout ({answers} answers)"
    );
    assert_eq!(fixture.current().await, Some(v2));
    assert_eq!(fixture.get("/").unwrap(), (200, "2".to_owned()));
    // One at a time: the first old replica goes only after the first new one is ready.
    assert!(position(&lines, "replica 1 of 2 is ready") < position(&lines, "removing old replica"));
    assert!(position(&lines, "removing old replica") < position(&lines, "starting replica 2 of 2"));
    fixture.finish().await;
}

#[tokio::test]
async fn a_broken_image_is_rolled_back_and_the_old_revision_keeps_serving() {
    let fixture = Fixture::new("t-broken").await;
    let v1 = fixture.state("1", 2);
    fixture.apply(Some(&v1), Strategy::Rolling).await.0.unwrap();
    let (outcome, lines) = fixture
        .apply(Some(&fixture.state("broken", 2)), Strategy::Rolling)
        .await;
    let error = outcome.unwrap_err().to_string();
    assert!(
        error.contains("was not ready within") && error.contains("404"),
        "{error}"
    );
    position(&lines, "removing the 1 replica(s) this apply started");
    assert_eq!(fixture.current().await, Some(v1));
    assert_eq!(fixture.get("/").unwrap(), (200, "1".to_owned()));
    assert_eq!(fixture.containers().await.len(), 3);
    fixture.finish().await;
}

#[tokio::test]
async fn blue_green_removes_the_old_set_only_after_the_whole_new_set_is_ready() {
    let fixture = Fixture::new("t-bluegreen").await;
    fixture
        .apply(Some(&fixture.state("1", 2)), Strategy::Rolling)
        .await
        .0
        .unwrap();
    let poller = Poller::start(fixture.published_port);
    let v2 = fixture.state("2", 2);
    let (outcome, lines) = fixture.apply(Some(&v2), Strategy::BlueGreen).await;
    let (_, failures) = poller.finish();
    outcome.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let last_ready = position(&lines, "new replica 2 of 2 is ready");
    let first_removal = position(&lines, "removing old replica");
    assert!(last_ready < first_removal, "{lines:#?}");
    assert_eq!(fixture.current().await, Some(v2));
    assert_eq!(fixture.get("/").unwrap(), (200, "2".to_owned()));
    fixture.finish().await;
}

#[tokio::test]
async fn scale_rollback_and_decommission() {
    let fixture = Fixture::new("t-lifecycle").await;
    let v1 = fixture.state("1", 2);
    fixture.apply(Some(&v1), Strategy::Rolling).await.0.unwrap();
    let before = fixture.containers().await;

    let three = ServiceState {
        replicas: 3,
        ..v1.clone()
    };
    fixture
        .apply(Some(&three), Strategy::Rolling)
        .await
        .0
        .unwrap();
    let scaled = fixture.containers().await;
    assert_eq!(scaled.len(), 4);
    assert!(
        before.iter().all(|name| scaled.contains(name)),
        "scaling kept the replicas: {before:?} {scaled:?}"
    );
    fixture.apply(Some(&v1), Strategy::Rolling).await.0.unwrap();
    assert_eq!(fixture.containers().await, before);

    let v2 = fixture.state("2", 2);
    fixture.apply(Some(&v2), Strategy::Rolling).await.0.unwrap();
    let previous = fixture
        .driver
        .previous(&fixture.environment, SERVICE)
        .await
        .unwrap();
    assert_eq!(
        previous,
        Some(ServiceState {
            published_port: None,
            ..v1.clone()
        })
    );
    let back = ServiceState {
        published_port: Some(fixture.published_port),
        ..previous.unwrap()
    };
    fixture
        .apply(Some(&back), Strategy::Rolling)
        .await
        .0
        .unwrap();
    assert_eq!(fixture.current().await, Some(v1));
    assert_eq!(fixture.get("/").unwrap(), (200, "1".to_owned()));

    let (outcome, lines) = fixture.apply(None, Strategy::Rolling).await;
    outcome.unwrap();
    position(&lines, "removing the edge");
    assert_eq!(fixture.current().await, None);
    assert!(fixture.containers().await.is_empty());
    assert!(fixture.get("/").is_err(), "nothing answers any more");
}

#[tokio::test]
async fn a_container_removed_by_hand_shows_up_in_the_next_diff() {
    let fixture = Fixture::new("t-drift").await;
    let v1 = fixture.state("1", 2);
    fixture.apply(Some(&v1), Strategy::Rolling).await.0.unwrap();
    let replica = fixture
        .containers()
        .await
        .into_iter()
        .find(|name| !name.ends_with("-edge"))
        .unwrap();
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    fixture
        .driver
        .docker()
        .remove_container(&replica, Some(options))
        .await
        .unwrap();

    let mut plan = examples::plan_spec();
    plan.environment = fixture.environment.clone();
    plan.desired[0].environment = fixture.environment.clone();
    plan.desired[0].service = SERVICE.to_owned();
    let DesiredState::Running(spec) = &mut plan.desired[0].state else {
        unreachable!("the example plan deploys")
    };
    spec.image = v1.image.clone();
    spec.replicas = 2;
    spec.port = PORT;
    spec.env = v1.env.clone();
    spec.resources = v1.resources;
    let change = render(&plan, &fixture.driver).await.unwrap();
    let text = diff_text(&change);
    assert!(text.contains("replicas: 1 -> 2"), "{text}");
    fixture.finish().await;
}

/// Atlas, Sentinel and the Conductor, and Forge on the container driver.
fn start_crew_on_engine(server: &NatsServer) -> Vec<AgentProcess> {
    let mut agents: Vec<AgentProcess> = ["atlas", "sentinel", "conductor"]
        .iter()
        .map(|name| AgentProcess::start(name, server, &[]))
        .collect();
    agents.push(container_forge(server));
    agents
}

fn container_forge(server: &NatsServer) -> AgentProcess {
    let args = [
        "--driver",
        "container",
        "--docker-host",
        engine().docker_host(),
        "--health-timeout",
        "5s",
        "--drain",
        "200ms",
    ];
    AgentProcess::start("forge", server, &args)
}

/// A deploy goal for `service` in dev, written to a file in `dir`.
fn deploy_goal(dir: &tempfile::TempDir, service: &str, version: &str) -> String {
    let goal = serde_json::json!({
        "intent": "deploy",
        "service": service,
        "environment": "dev",
        "version": version,
        "replicas": 2,
        "strategy": "rolling",
        "requested_by": "dave",
        "reason": "end-to-end test on the container engine",
    });
    let path = dir.path().join(format!("{service}.json"));
    std::fs::write(&path, goal.to_string()).unwrap();
    path.display().to_string()
}

/// Builds `sample` and clears what an earlier run left of `service` in dev.
async fn prepare(service: &str, sample: SampleService) -> ContainerDriver {
    let driver = test_driver().await;
    build_sample(driver.docker(), &sample).await.unwrap();
    remove_labelled(&driver, &dev_service(service)).await;
    driver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_becomes_ready_ends_rolled_back_with_the_reason() {
    let service = "financial-tax";
    let sample = SampleService {
        ready: false,
        ..SampleService::new("infracrew/financial-tax:7.0.0", 9003)
    };
    let driver = prepare(service, sample).await;
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew_on_engine(&server);
    let dir = tempfile::tempdir().unwrap();
    let plan = submit(&server, &deploy_goal(&dir, service, "7.0.0"));
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    assert!(approve(&server, plan, "carol").status.success());
    let record = wait_for_state_within(
        &bus,
        plan,
        PlanState::RolledBack,
        &agents,
        Duration::from_secs(60),
    )
    .await;
    let reason = &record.history.last().unwrap().why;
    assert!(
        reason.contains("was not ready within 5s") && reason.contains("404"),
        "{reason}"
    );
    assert_eq!(
        driver.current("dev", service).await.unwrap(),
        None,
        "what the apply started is gone"
    );
    remove_labelled(&driver, &dev_service(service)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_killed_mid_rollout_converges_when_restarted_without_duplicates() {
    let service = "legal-compliance";
    let sample = SampleService {
        start_delay: Duration::from_millis(1500),
        ..SampleService::new("infracrew/legal-compliance:7.0.0", 9002)
    };
    let driver = prepare(service, sample).await;
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let mut agents = start_crew_on_engine(&server);
    let dir = tempfile::tempdir().unwrap();
    let plan = submit(&server, &deploy_goal(&dir, service, "7.0.0"));
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    assert!(approve(&server, plan, "carol").status.success());

    // Kill Forge as soon as the first replica is up and the second is not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = messages_on::<OpsEvent>(&bus, subjects::OPS).await;
        if events
            .iter()
            .any(|event| event.message.contains("replica 1 of 2 is ready"))
        {
            // A rollout that runs over a second has its start reported on its own, so the
            // plan is APPLYING while it runs; its step reports progress, so the step's start
            // went first.
            let reported = |kind, seq| {
                events
                    .iter()
                    .any(|event| event.kind == kind && event.seq == seq)
            };
            assert!(reported(OpsEventKind::ApplyStarted, 1), "{events:#?}");
            assert!(reported(OpsEventKind::StepStarted, 2), "{events:#?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut forge = agents.pop().unwrap();
    forge.kill();
    let half_done = driver.current("dev", service).await.unwrap();
    assert_eq!(
        half_done.map(|state| state.replicas),
        Some(1),
        "killed mid-rollout"
    );

    agents.push(container_forge(&server));
    // The ApplyRequest comes back once its ack deadline (30 s) passes.
    wait_for_state_within(
        &bus,
        plan,
        PlanState::Applied,
        &agents,
        Duration::from_secs(90),
    )
    .await;
    let current = driver.current("dev", service).await.unwrap().unwrap();
    assert_eq!(current.replicas, 2);
    assert_eq!(current.image, "infracrew/legal-compliance:7.0.0");
    let names = labelled(&driver, &dev_service(service)).await.len();
    assert_eq!(names, 3, "two replicas and the edge, no duplicates");
    assert_eq!(http_get(9002, "/").unwrap(), (200, "7.0.0".to_owned()));
    let events = messages_on::<OpsEvent>(&bus, subjects::OPS).await;
    assert!(
        events
            .iter()
            .any(|event| event.attempt == 2 && event.kind == OpsEventKind::ApplyDone),
        "the second attempt finished the apply: {events:#?}"
    );
    remove_labelled(&driver, &dev_service(service)).await;
}
