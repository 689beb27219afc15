//! `crew bench`: N plans through a whole crew (a nats-server it starts, the four agents as
//! processes, the dry-run driver, dev approving automatically), at a given rate or as fast as
//! possible; it prints throughput, end-to-end and per-stage latency, the raw JetStream hop
//! measured in the same run, each process's CPU time, each handler's mean time, and each
//! agent's peak resident memory.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    consumer::{DeliverPolicy, pull},
    stream,
};
use futures::StreamExt;
use infracrew_bus::{Bus, ConnectArgs, Sent, streams};
use infracrew_protocol::{GoalStatement, PlanId, PlanState, decode, signing::Signer, subjects};
use infracrew_testkit::NatsServer;
use tokio::process::{Child, Command};

use crate::CliError;

const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];
/// Messages in sequence from a submitted goal to an APPLIED plan as a watcher sees it: goal,
/// PlanSpec, routed plan, validate request, validation result, build status, apply request,
/// the apply's end (which carries its start), and the plan's move to APPLIED, which the bench
/// reads through a JetStream consumer as the hop probe reads its messages.
const HOPS_PER_PLAN: usize = 9;

/// Answers from the server a plan waits for in sequence besides its hops, each a request
/// and its reply: the Conductor's lock and record of a new plan; Forge's reads for the diff;
/// the Conductor's READY and APPROVED write; Forge's gate reads (with the apply's lease
/// beside them) and the dry-run driver's record (its own verification); the Conductor's
/// APPLIED write. Each is costed as a publish's ack during the run, the first part of a hop.
const ANSWERS_PER_PLAN: usize = 7;

/// How the bench runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub plans: usize,
    /// Plans per second; `None` submits as fast as the bus takes them.
    pub rate: Option<f64>,
    /// How many services the plans take turns on.
    pub services: usize,
    pub playbooks: PathBuf,
    pub config: PathBuf,
    /// How long to wait for the last plan.
    pub patience: Duration,
}

/// When one plan passed each stage.
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    submitted: Option<Instant>,
    planned: Option<Instant>,
    ready: Option<Instant>,
    applied: Option<Instant>,
    /// The last state the plan was seen moving to.
    state: Option<PlanState>,
    finished: bool,
}

/// How a plan that was not APPLIED ended, and why (its last move's reason).
type OtherEnd = (PlanState, String);

/// What the bench reads of a PlanSpec or a PlanTransitioned: the fields it times, without the
/// schema check. The crew's own readers check every message, and the bench's CPU comes out of
/// the cores the crew it measures runs on (the full check of each move was a quarter of it).
#[derive(serde::Deserialize)]
struct TimedMessage<'a> {
    plan_id: PlanId,
    #[serde(default, borrow)]
    transition: Option<TimedMove<'a>>,
    #[serde(default, borrow)]
    earlier: Vec<TimedMove<'a>>,
}

#[derive(serde::Deserialize)]
struct TimedMove<'a> {
    to: PlanState,
    #[serde(borrow)]
    why: std::borrow::Cow<'a, str>,
}

impl TimedMessage<'_> {
    /// The moves, oldest first.
    fn moves(&self) -> impl Iterator<Item = &TimedMove<'_>> {
        self.earlier.iter().chain(&self.transition)
    }
}

fn bench_error(what: &str, error: impl std::fmt::Display) -> CliError {
    CliError::Bench(format!("{what}: {error}"))
}

pub async fn bench(options: BenchOptions) -> Result<ExitCode, CliError> {
    let work = tempfile::tempdir().map_err(|e| bench_error("a work folder", e))?;
    let playbooks = work.path().join("playbooks");
    copy_dir(&options.playbooks, &playbooks)
        .map_err(|e| bench_error("copying the playbooks", e))?;
    // By default one service per plan, so no plan waits for another's lock: the bench
    // measures the crew, not the queue in front of one target.
    add_bench_services(&playbooks, options.services)
        .map_err(|e| bench_error("the bench catalog", e))?;

    let server = NatsServer::start().map_err(|e| bench_error("nats-server", e))?;
    let url = server.url();
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let (signer, seed) = Signer::generate();
    let mut agents: Vec<(&str, Child)> = Vec::new();
    // Each agent's /metrics, read at the end for its handlers' times.
    let mut metrics: Vec<(&str, String)> = Vec::new();
    for name in AGENTS {
        let listen = free_address().map_err(|e| bench_error("a free port", e))?;
        metrics.push((name, format!("http://{listen}/metrics")));
        let log = std::fs::File::create(work.path().join(format!("{name}.log")))
            .map_err(|e| bench_error("an agent log", e))?;
        let mut command = Command::new(bin.join(name));
        command
            .env("NATS_URL", &url)
            .env("INFRACREW_PLAYBOOKS", &playbooks)
            .env("INFRACREW_CONDUCTOR_CONFIG", &options.config)
            .env("INFRACREW_DRIVER", "dry-run")
            .env("INFRACREW_LISTEN", &listen)
            .env("INFRACREW_AUTO_APPROVE", "dev")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| bench_error("an agent log", e))?,
            )
            .stderr(log)
            .kill_on_drop(true);
        match name {
            "conductor" => command.env("INFRACREW_CONDUCTOR_SIGNING_SEED", &seed),
            "forge" => command.env("INFRACREW_CONDUCTOR_PUBLIC_KEY", signer.public_key()),
            _ => &mut command,
        };
        let child = command
            .spawn()
            .map_err(|e| bench_error(&format!("starting {name}"), e))?;
        agents.push((name, child));
    }
    let bus = Bus::connect(&ConnectArgs::for_url(url.clone()), "infracrew-bench").await?;
    if let Err(error) = wait_until_ready(&bus, &mut agents).await {
        // Kept, so the agents' logs say why.
        let logs = work.keep();
        return Err(bench_error(
            "the crew did not become ready",
            format!("{error}; the agents' logs are in {}", logs.display()),
        ));
    }

    println!(
        "crew bench: {} plans {}, on {url}: four agent processes, the dry-run driver, dev approving automatically",
        options.plans,
        options
            .rate
            .map_or("as fast as possible".to_owned(), |rate| format!(
                "at {rate} per second"
            ))
    );
    // Every process's CPU time over the plans alone, to show which one the machine's cores
    // are spent on.
    let mut processes: Vec<(&str, Option<u32>)> = vec![("nats-server", server.pid())];
    processes.extend(agents.iter().map(|(name, child)| (*name, child.id())));
    let counts_before = server_counts(&bus).await?;
    let mut probe = HopProbe::start(&bus, &url).await?;
    let (stop_probe, probe_stopped) = tokio::sync::oneshot::channel();
    let probe_period = options
        .rate
        .map_or(PROBE_PERIOD_SHORTEST, |rate| {
            Duration::from_secs_f64(1.0 / rate.max(f64::EPSILON))
        })
        .clamp(PROBE_PERIOD_SHORTEST, Duration::from_secs(1));
    // On a task of its own, so handling the plans' messages does not hold a hop up.
    let paced = tokio::spawn(async move {
        let hops = probe.paced(probe_period, probe_stopped).await;
        (probe, hops)
    });
    let pids: Vec<Option<u32>> = processes.iter().map(|(_, pid)| *pid).collect();
    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel();
    let sampling = tokio::spawn(sample_cpu(pids, sampling_stopped));
    let run = run_plans(&bus, &options).await;
    let _ = stop_sampling.send(());
    let _ = stop_probe.send(());
    let cpu_samples = sampling
        .await
        .map_err(|e| bench_error("the CPU sampler", e))?;
    let (mut probe, paced) = paced.await.map_err(|e| bench_error("the hop probe", e))?;
    let (run, (paced, paced_acks)) = (run?, paced?);
    let counts_after = server_counts(&bus).await?;
    let cpu_used: Vec<(&str, Option<Duration>)> = match (cpu_samples.first(), cpu_samples.last()) {
        (Some(first), Some(last)) => processes
            .iter()
            .map(|(name, _)| *name)
            .zip(cpu_used_between(first, last))
            .collect(),
        _ => Vec::new(),
    };
    let back_to_back = probe.back_to_back(options.plans.clamp(200, 5000)).await?;
    report(
        &run.stages,
        &Hops {
            paced,
            paced_acks,
            period: probe_period,
            back_to_back,
        },
        options.plans,
    );
    report_other_ends(&run.other_ends);
    report_windows(&run.stages, &cpu_samples);
    report_cpu(&cpu_used, options.plans);
    let plans = options.plans.max(1) as f64;
    println!(
        "server work per plan: {:.1} stored messages (streams and buckets), {:.1} JetStream API requests",
        counts_after.stored.saturating_sub(counts_before.stored) as f64 / plans,
        counts_after
            .api_requests
            .saturating_sub(counts_before.api_requests) as f64
            / plans,
    );
    report_handlers(&metrics).await;
    print!("peak resident memory:");
    for (name, child) in &agents {
        let peak = child.id().and_then(peak_rss_kib);
        match peak {
            Some(kib) => print!(" {name} {:.1} MB", kib as f64 / 1024.0),
            None => print!(" {name} ?"),
        }
    }
    println!();
    for (_, child) in &mut agents {
        let _ = child.kill().await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_until_ready(bus: &Bus, agents: &mut [(&str, Child)]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (name, child) in agents.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited ({status})"));
            }
        }
        // Every agent has provisioned and bound its consumer once all four consumers exist
        // and heartbeats say ready; the simplest sign is a heartbeat from each with ready set.
        let mut ready = 0;
        if let Ok(stream) = bus
            .jetstream()
            .get_stream_no_info(infracrew_bus::streams::HEARTBEATS)
            .await
        {
            for role in infracrew_protocol::AgentRole::ALL {
                if let Ok(message) = stream
                    .direct_get_last_for_subject(subjects::heartbeat(role))
                    .await
                    && decode::<infracrew_protocol::Heartbeat>(&message.payload)
                        .is_ok_and(|beat| beat.ready)
                {
                    ready += 1;
                }
            }
        }
        if ready == AGENTS.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{ready} of 4 agents ready after a minute"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plan `index` of a run over `services` services: the next version of its service.
fn bench_goal(index: usize, services: usize) -> GoalStatement {
    let mut goal = infracrew_protocol::examples::goal();
    goal.goal_id = None;
    goal.service = bench_service(index % services.max(1));
    goal.environment = "dev".into();
    goal.replicas = Some(1);
    goal.version = Some(format!("1.0.{index}"));
    goal.with_id()
}

fn bench_service(index: usize) -> String {
    format!("bench-{index:05}")
}

/// How many submitted goals may wait for their acks at once.
const SUBMIT_WINDOW: usize = 64;

async fn confirm_goals(bus: &Bus, sent: Vec<Sent>) {
    if let Err(error) = bus.confirm(sent).await {
        eprintln!("crew bench: a goal was not stored: {error}");
    }
}

/// What became of the plans: when each passed each stage, and how those not APPLIED ended.
struct Run {
    stages: HashMap<PlanId, Stages>,
    other_ends: Vec<OtherEnd>,
}

async fn run_plans(bus: &Bus, options: &BenchOptions) -> Result<Run, CliError> {
    let mut pending = bus
        .client()
        .subscribe(subjects::PLAN_PENDING)
        .await
        .map_err(|e| bench_error("subscribing", e))?;
    let mut moves = bus
        .follow(streams::WORK, subjects::PLAN_STATE, DeliverPolicy::New)
        .await
        .map_err(|e| bench_error("the plans' moves", e))?;
    let goals: Vec<GoalStatement> = (0..options.plans)
        .map(|index| bench_goal(index, options.services))
        .collect();
    let mut stages: HashMap<PlanId, Stages> = goals
        .iter()
        .map(|goal| (PlanId::for_goal(goal.id()), Stages::default()))
        .collect();
    let (submitted_tx, mut submitted_rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = {
        let bus = bus.clone();
        let rate = options.rate;
        tokio::spawn(async move {
            let started = Instant::now();
            // Goals go out without waiting for each one's ack, as many submitters would send
            // them: awaited one by one, the acks' round trips, not the crew, set the pace.
            let mut unconfirmed = Vec::with_capacity(SUBMIT_WINDOW);
            for (index, goal) in goals.into_iter().enumerate() {
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let at = Instant::now();
                match bus.send(subjects::GOAL_SUBMITTED, &goal).await {
                    Ok(sent) => unconfirmed.push(sent),
                    Err(error) => {
                        eprintln!("crew bench: a goal was not published: {error}");
                        continue;
                    }
                }
                let _ = submitted_tx.send((PlanId::for_goal(goal.id()), at));
                if unconfirmed.len() == SUBMIT_WINDOW {
                    confirm_goals(&bus, std::mem::take(&mut unconfirmed)).await;
                }
            }
            confirm_goals(&bus, unconfirmed).await;
        })
    };
    let mut finished = 0;
    let mut other_ends: Vec<OtherEnd> = Vec::new();
    let deadline = tokio::time::Instant::now() + options.patience;
    while finished < options.plans {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            Some((plan, at)) = submitted_rx.recv() => {
                if let Some(stage) = stages.get_mut(&plan) { stage.submitted = Some(at); }
            }
            Some(message) = pending.next() => {
                let now = Instant::now();
                if let Ok(plan) = serde_json::from_slice::<TimedMessage>(&message.payload)
                    && let Some(stage) = stages.get_mut(&plan.plan_id)
                {
                    stage.planned.get_or_insert(now);
                }
            }
            Some(Ok(message)) = moves.next() => {
                let now = Instant::now();
                if let Ok(event) = serde_json::from_slice::<TimedMessage>(&message.payload)
                    && let Some(stage) = stages.get_mut(&event.plan_id)
                {
                    for moved in event.moves() {
                        stage.state = Some(moved.to);
                        match moved.to {
                            PlanState::Ready => { stage.ready.get_or_insert(now); }
                            PlanState::Applied => { stage.applied.get_or_insert(now); }
                            _ => {}
                        }
                        if moved.to.is_terminal() && !stage.finished {
                            stage.finished = true;
                            finished += 1;
                            if moved.to != PlanState::Applied {
                                other_ends.push((moved.to, moved.why.to_string()));
                            }
                        }
                    }
                }
            }
        }
    }
    let _ = publisher.await;
    while let Ok((plan, at)) = submitted_rx.try_recv() {
        if let Some(stage) = stages.get_mut(&plan) {
            stage.submitted = Some(at);
        }
    }
    if finished < options.plans {
        let mut states: std::collections::BTreeMap<String, usize> = Default::default();
        for stage in stages.values().filter(|stage| !stage.finished) {
            let state = stage
                .state
                .map_or("not planned".to_owned(), |s| s.to_string());
            *states.entry(state).or_default() += 1;
        }
        eprintln!(
            "crew bench: {} of {} plans did not finish within {:?}; where they are: {states:?}",
            options.plans - finished,
            options.plans,
            options.patience
        );
    }
    Ok(Run { stages, other_ends })
}

/// The stream the hop probe publishes to, and its subject.
const HOP_STREAM: &str = "BENCH_HOP";
const HOP_SUBJECT: &str = "bench.hop";

/// How often the hop probe runs beside plans submitted as fast as possible, and at most as
/// often at any rate: one hop per plan at 1,000 plans/s would add a stored message and a
/// delivery to each plan's 28 on the server being measured.
const PROBE_PERIOD_SHORTEST: Duration = Duration::from_millis(10);

/// The raw JetStream hop: publish (waiting for the ack, as the agents do) until a durable pull
/// consumer on another connection has the message, one at a time. Measured both as a plan's
/// hops are taken (paced, beside the plans, each one reaching a consumer that sat idle) and
/// back to back (a hot loop: the fastest a hop gets, not what a plan meets).
struct HopProbe {
    jetstream: async_nats::jetstream::Context,
    messages: pull::Stream,
    /// The consumer's own connection, held open while the probe runs.
    _receiver: Bus,
}

/// Each sorted, for percentiles.
struct Hops {
    /// Measured during the run, one every `period`.
    paced: Vec<Duration>,
    /// The same hops' publish until its ack.
    paced_acks: Vec<Duration>,
    period: Duration,
    /// Measured after the run, one after another.
    back_to_back: Vec<Duration>,
}

impl HopProbe {
    async fn start(bus: &Bus, url: &str) -> Result<Self, CliError> {
        let jetstream = bus.jetstream();
        jetstream
            .create_stream(stream::Config {
                name: HOP_STREAM.into(),
                subjects: vec![HOP_SUBJECT.into()],
                ..Default::default()
            })
            .await
            .map_err(|e| bench_error("the hop stream", e))?;
        let receiver =
            Bus::connect(&ConnectArgs::for_url(url.to_owned()), "infracrew-bench-hop").await?;
        let consumer = receiver
            .jetstream()
            .get_stream(HOP_STREAM)
            .await
            .map_err(|e| bench_error("the hop stream", e))?
            .create_consumer(pull::Config {
                durable_name: Some("hop".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| bench_error("the hop consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| bench_error("the hop consumer", e))?;
        Ok(HopProbe {
            jetstream: jetstream.clone(),
            messages,
            _receiver: receiver,
        })
    }

    /// One hop: how long until its publish was acked, and until the consumer had it.
    async fn hop(&mut self) -> Result<(Duration, Duration), CliError> {
        let started = Instant::now();
        let ack = self
            .jetstream
            .publish(HOP_SUBJECT, Default::default())
            .await
            .map_err(|e| bench_error("publishing a hop", e))?;
        ack.await.map_err(|e| bench_error("a hop's ack", e))?;
        let acked = started.elapsed();
        let Some(Ok(message)) = self.messages.next().await else {
            return Err(bench_error("the hop consumer", "it stopped"));
        };
        let elapsed = started.elapsed();
        let _ = message.ack().await;
        Ok((acked, elapsed))
    }

    /// One hop every `period` until `stop`: the hops and their acks, each sorted.
    async fn paced(
        &mut self,
        period: Duration,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(Vec<Duration>, Vec<Duration>), CliError> {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut hops, mut acks) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                _ = &mut stop => {
                    hops.sort();
                    acks.sort();
                    return Ok((hops, acks));
                }
                _ = ticker.tick() => {
                    let (acked, elapsed) = self.hop().await?;
                    acks.push(acked);
                    hops.push(elapsed);
                }
            }
        }
    }

    /// `count` hops one after another, sorted.
    async fn back_to_back(&mut self, count: usize) -> Result<Vec<Duration>, CliError> {
        let mut samples = Vec::with_capacity(count);
        for index in 0..count + 100 {
            let (_, elapsed) = self.hop().await?;
            // The first hundred warm the loop up.
            if index >= 100 {
                samples.push(elapsed);
            }
        }
        samples.sort();
        Ok(samples)
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn line(label: &str, mut samples: Vec<Duration>) -> Vec<Duration> {
    samples.sort();
    println!(
        "{label:<24} p50 {:>9}  p90 {:>9}  p99 {:>9}  ({} plans)",
        millis(percentile(&samples, 0.50)),
        millis(percentile(&samples, 0.90)),
        millis(percentile(&samples, 0.99)),
        samples.len()
    );
    samples
}

fn report(stages: &HashMap<PlanId, Stages>, hops: &Hops, plans: usize) {
    let between = |from: fn(&Stages) -> Option<Instant>, to: fn(&Stages) -> Option<Instant>| {
        stages
            .values()
            .filter_map(|stage| Some(to(stage)?.saturating_duration_since(from(stage)?)))
            .collect::<Vec<_>>()
    };
    let applied = stages
        .values()
        .filter(|stage| stage.applied.is_some())
        .count();
    let first = stages.values().filter_map(|stage| stage.submitted).min();
    let last = stages.values().filter_map(|stage| stage.applied).max();
    if let (Some(first), Some(last)) = (first, last) {
        let seconds = last.duration_since(first).as_secs_f64();
        println!(
            "throughput: {:.0} plans/s ({applied} of {plans} plans APPLIED in {seconds:.2} s)",
            applied as f64 / seconds.max(f64::EPSILON)
        );
    }
    let end_to_end = line("submit -> APPLIED", between(|s| s.submitted, |s| s.applied));
    line(
        "  goal -> PlanSpec",
        between(|s| s.submitted, |s| s.planned),
    );
    line("  PlanSpec -> READY", between(|s| s.planned, |s| s.ready));
    line("  READY -> APPLIED", between(|s| s.ready, |s| s.applied));
    let hop_line = |label: String, sorted: &[Duration]| {
        println!(
            "{label} p50 {}  p99 {}  ({} hops)",
            millis(percentile(sorted, 0.50)),
            millis(percentile(sorted, 0.99)),
            sorted.len()
        );
    };
    hop_line(
        format!(
            "JetStream hop (publish, ack, consume), during the run, one every {}:",
            millis(hops.period)
        ),
        &hops.paced,
    );
    hop_line(
        "JetStream hop, back to back after the run:".into(),
        &hops.back_to_back,
    );
    let end_to_end = percentile(&end_to_end, 0.50).as_secs_f64();
    let floor = percentile(&hops.paced, 0.50) * HOPS_PER_PLAN as u32;
    let hot_floor = percentile(&hops.back_to_back, 0.50) * HOPS_PER_PLAN as u32;
    println!(
        "a plan is {HOPS_PER_PLAN} hops in sequence: floor {} at p50 (hops during the run); end to end p50 is {:.1} x the floor ({:.1} x {} back to back)",
        millis(floor),
        end_to_end / floor.as_secs_f64().max(f64::EPSILON),
        end_to_end / hot_floor.as_secs_f64().max(f64::EPSILON),
        millis(hot_floor),
    );
    let answer = percentile(&hops.paced_acks, 0.50);
    let with_answers = floor + answer * ANSWERS_PER_PLAN as u32;
    println!(
        "and waits for {ANSWERS_PER_PLAN} answers from the server in sequence, each about a publish's ack (p50 {} during the run): floor {}, end to end p50 is {:.1} x that",
        millis(answer),
        millis(with_answers),
        end_to_end / with_answers.as_secs_f64().max(f64::EPSILON),
    );
}

/// How often a long run is summed up, to show whether the crew keeps its pace.
const WINDOW: Duration = Duration::from_secs(10);

/// The crew's processes' CPU time so far, at one moment.
struct CpuSample {
    at: Instant,
    used: Vec<Option<Duration>>,
}

/// Each process's CPU time from now, every [`WINDOW`] until `stop`, and once more then (see
/// [`push_last`]): the first and last samples span the run.
async fn sample_cpu(
    pids: Vec<Option<u32>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<CpuSample> {
    let sample = || CpuSample {
        at: Instant::now(),
        used: pids.iter().map(|pid| pid.and_then(cpu_time)).collect(),
    };
    let mut ticker = tokio::time::interval(WINDOW);
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stop => {
                push_last(&mut samples, sample());
                return samples;
            }
            _ = ticker.tick() => samples.push(sample()),
        }
    }
}

/// The sample at the run's end, in place of a tick less than half a window before it (never
/// the run's first): a last window of a few milliseconds would report its handful of plans as
/// a pace.
fn push_last(samples: &mut Vec<CpuSample>, last: CpuSample) {
    if samples.len() > 1
        && samples
            .last()
            .is_some_and(|tick| last.at.duration_since(tick.at) < WINDOW / 2)
    {
        samples.pop();
    }
    samples.push(last);
}

/// For a run that spans more than one window, each window's pace: plans APPLIED per second,
/// their submit-to-APPLIED p99, and the crew's CPU (nats-server and agents) per plan APPLIED.
fn report_windows(stages: &HashMap<PlanId, Stages>, samples: &[CpuSample]) {
    if samples.len() < 3 {
        return;
    }
    println!(
        "by {} s window: plans APPLIED per second, their submit -> APPLIED p99, the crew's CPU per plan APPLIED",
        WINDOW.as_secs()
    );
    let first = samples[0].at;
    for pair in samples.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        let mut latencies: Vec<Duration> = stages
            .values()
            .filter_map(|stage| {
                let applied = stage.applied.filter(|at| (from.at..to.at).contains(at))?;
                Some(applied.saturating_duration_since(stage.submitted?))
            })
            .collect();
        latencies.sort();
        let cpu: Duration = cpu_used_between(from, to).into_iter().flatten().sum();
        let seconds = to
            .at
            .duration_since(from.at)
            .as_secs_f64()
            .max(f64::EPSILON);
        println!(
            "  {:>4.0} to {:>4.0} s  {:>6.0} plans/s  p99 {:>11}  CPU {:.2} ms per plan",
            from.at.duration_since(first).as_secs_f64(),
            to.at.duration_since(first).as_secs_f64(),
            latencies.len() as f64 / seconds,
            millis(percentile(&latencies, 0.99)),
            cpu.as_secs_f64() * 1000.0 / latencies.len().max(1) as f64,
        );
    }
}

/// Each process's CPU time between two samples (`None` where either could not be read).
fn cpu_used_between(from: &CpuSample, to: &CpuSample) -> Vec<Option<Duration>> {
    from.used
        .iter()
        .zip(&to.used)
        .map(|(before, after)| Some(after.as_ref()?.saturating_sub(*before.as_ref()?)))
        .collect()
}

/// The plans that ended other than APPLIED, by end state, each with the reason of one.
fn report_other_ends(other_ends: &[OtherEnd]) {
    let mut by_state: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for (state, why) in other_ends {
        by_state.entry(state.to_string()).or_insert((0, why)).0 += 1;
    }
    for (state, (count, why)) in by_state {
        println!("not APPLIED: {count} plans ended {state}, for example: {why}");
    }
}

/// What the server has done so far.
struct ServerCounts {
    /// Messages ever stored, over every stream and bucket (their last sequences summed).
    stored: u64,
    /// JetStream API requests answered (KV reads through the API, consumer and stream calls).
    api_requests: u64,
}

async fn server_counts(bus: &Bus) -> Result<ServerCounts, CliError> {
    let jetstream = bus.jetstream();
    let api_requests = jetstream
        .query_account()
        .await
        .map_err(|e| bench_error("the server's account", e))?
        .requests
        .total;
    let mut stored = 0;
    let mut streams = jetstream.streams();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|e| bench_error("the server's streams", e))?;
        // The hop probe's messages are the bench's, not the crew's.
        if info.config.name != HOP_STREAM {
            stored += info.state.last_sequence;
        }
    }
    Ok(ServerCounts {
        stored,
        api_requests,
    })
}

/// A loopback address no one listens on now, for an agent's HTTP endpoint.
fn free_address() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Each agent's mean handling time per subject (its ack's round trip included), read from
/// its /metrics: where a plan's time goes beside the hops.
async fn report_handlers(metrics: &[(&str, String)]) {
    print!("handling per message (mean, ack included):");
    for (name, url) in metrics {
        match infracrew_testkit::http::get(url).await {
            Ok((200, body)) => {
                let times: Vec<String> = mean_handler_times(&body)
                    .into_iter()
                    .map(|(subject, time)| {
                        format!("{} {}", subject.trim_start_matches("crew."), millis(time))
                    })
                    .collect();
                print!(" {name}: {};", times.join(", "));
            }
            _ => print!(" {name}: ?;"),
        }
    }
    println!();
}

/// The handler histogram's sum over its count, per subject, from a Prometheus text page.
fn mean_handler_times(page: &str) -> Vec<(String, Duration)> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for line in page.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (totals, labels) =
            if let Some(labels) = series.strip_prefix("infracrew_handler_duration_seconds_sum{") {
                (&mut sums, labels)
            } else if let Some(labels) =
                series.strip_prefix("infracrew_handler_duration_seconds_count{")
            {
                (&mut counts, labels)
            } else {
                continue;
            };
        let subject = labels
            .split("subject=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        if let (Some(subject), Ok(value)) = (subject, value.parse::<f64>()) {
            totals.insert(subject.to_owned(), value);
        }
    }
    sums.into_iter()
        .filter_map(|(subject, sum)| {
            let count = counts.get(&subject).copied().filter(|count| *count > 0.0)?;
            Some((subject, Duration::from_secs_f64(sum / count)))
        })
        .collect()
}

/// CPU time per plan of each process, and the throughput the machine's cores would allow
/// if they did nothing else.
fn report_cpu(used: &[(&str, Option<Duration>)], plans: usize) {
    let per_plan = |time: Duration| time.as_secs_f64() * 1000.0 / plans.max(1) as f64;
    let mut total = 0.0;
    print!("CPU per plan:");
    for (name, time) in used {
        match time {
            Some(time) => {
                total += per_plan(*time);
                print!(" {name} {:.2} ms", per_plan(*time));
            }
            None => print!(" {name} ?"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "; {total:.2} ms in all, so {cores} core(s) carry at most {:.0} plans/s",
        cores as f64 * 1000.0 / total.max(f64::EPSILON)
    );
}

/// A process's user and system CPU time so far, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Some(Duration::from_millis(ticks * 10))
}

/// A process's peak resident set (VmHWM), in KiB, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Gives each bench service a file of its own in the catalog's `services/`, as a large catalog
/// should be kept: parsed one file at a time, it costs Atlas and Sentinel its size, not 36
/// times the whole catalog's while it is read.
fn add_bench_services(playbooks: &Path, count: usize) -> std::io::Result<()> {
    let services = playbooks.join(infracrew_playbooks::SERVICES_DIR);
    std::fs::create_dir_all(&services)?;
    for index in 0..count {
        std::fs::write(
            services.join(format!("{}.toml", bench_service(index))),
            "description = \"a bench service\"\nimage = \"infracrew/bench\"\nport = 9000\nhealth = { live = \"/health/live\", ready = \"/health/ready\" }\nresources = { cpu_request_millis = 10, cpu_limit_millis = 20, memory_request_mib = 16, memory_limit_mib = 32 }\nenvironments.dev = { replicas = 1 }\nenvironments.staging = { replicas = 1 }\nenvironments.prod = { replicas = 1 }\n",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_reads_the_plan_and_every_move_of_the_crews_messages() {
        let spec = serde_json::to_vec(&infracrew_protocol::examples::plan_spec()).unwrap();
        let read: TimedMessage = serde_json::from_slice(&spec).unwrap();
        assert_eq!(
            read.plan_id,
            infracrew_protocol::examples::plan_spec().plan_id
        );
        assert_eq!(read.moves().count(), 0);

        let mut moved = infracrew_protocol::examples::plan_transitioned();
        moved.transition.why = "refused: \"prod\" needs two approvals".into();
        let bytes = serde_json::to_vec(&moved).unwrap();
        let read: TimedMessage = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read.plan_id, moved.plan_id);
        let moves: Vec<(PlanState, &str)> = read
            .moves()
            .map(|timed| (timed.to, timed.why.as_ref()))
            .collect();
        assert_eq!(
            moves,
            [
                (PlanState::Ready, "validated: 1 to change"),
                (PlanState::Approved, "refused: \"prod\" needs two approvals"),
            ],
            "oldest first, escapes and all"
        );
    }

    #[test]
    fn the_last_sample_replaces_a_tick_less_than_half_a_window_before_it() {
        let start = Instant::now();
        let at = |seconds: f64| CpuSample {
            at: start + Duration::from_secs_f64(seconds),
            used: Vec::new(),
        };
        let ends = |samples: &[CpuSample]| -> Vec<f64> {
            samples
                .iter()
                .map(|sample| sample.at.duration_since(start).as_secs_f64())
                .collect()
        };

        let mut run_of_ten_seconds = vec![at(0.0), at(10.0)];
        push_last(&mut run_of_ten_seconds, at(10.01));
        assert_eq!(ends(&run_of_ten_seconds), [0.0, 10.01]);

        let mut run_of_seventeen_seconds = vec![at(0.0), at(10.0)];
        push_last(&mut run_of_seventeen_seconds, at(17.0));
        assert_eq!(ends(&run_of_seventeen_seconds), [0.0, 10.0, 17.0]);

        let mut run_of_two_seconds = vec![at(0.0)];
        push_last(&mut run_of_two_seconds, at(2.0));
        assert_eq!(
            ends(&run_of_two_seconds),
            [0.0, 2.0],
            "the run's start is kept"
        );
    }

    #[test]
    fn mean_handling_is_each_subjects_sum_over_its_count() {
        let page = "\
# HELP infracrew_handler_duration_seconds Time from taking a message to settling it.
infracrew_handler_duration_seconds_sum{subject=\"crew.plan.routed\"} 0.009
infracrew_handler_duration_seconds_count{subject=\"crew.plan.routed\"} 10
infracrew_handler_duration_seconds_bucket{le=\"0.001\",subject=\"crew.plan.routed\"} 2
infracrew_handler_duration_seconds_sum{agent=\"forge\",subject=\"crew.apply.request\"} 0.004
infracrew_handler_duration_seconds_count{agent=\"forge\",subject=\"crew.apply.request\"} 2
infracrew_handler_duration_seconds_sum{subject=\"crew.validate.result\"} 0
infracrew_handler_duration_seconds_count{subject=\"crew.validate.result\"} 0
";
        assert_eq!(
            mean_handler_times(page),
            vec![
                ("crew.apply.request".to_owned(), Duration::from_millis(2)),
                ("crew.plan.routed".to_owned(), Duration::from_micros(900)),
            ]
        );
    }
}
