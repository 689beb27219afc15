//! The bus latency floor, measured on a real nats-server that this bench starts:
//! core NATS request-reply, JetStream publish-to-ack, publish-to-consume-to-ack through a
//! durable pull consumer, and the throughput of `Bus::consume` on schema-checked messages.
//!
//! Run: `make bench`, or `cargo run --release -p infracrew-bus --example bus_latency -- [N]`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream::{consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;
use infracrew_bus::{
    Bus, ConnectArgs, ConsumerSettings, ConsumerSpec, Creation, Delivery, Shutdown, WorkStats,
};
use infracrew_protocol::{PlanSpec, encode, examples};
use infracrew_testkit::NatsServer;

const WARM_UP: usize = 200;

type BenchError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5000);
    let server = NatsServer::start()?;
    let bus = Bus::connect(&ConnectArgs::for_url(server.url()), "infracrew-bench").await?;
    let payload = Bytes::from(encode(&examples::plan_spec())?);
    let version = std::process::Command::new(infracrew_testkit::find_binary()?)
        .arg("--version")
        .output()?;
    println!(
        "infracrew bus bench: {} on loopback, file storage, {count} sequential round trips after {WARM_UP} warm-up, payload {} bytes (a PlanSpec)",
        String::from_utf8_lossy(&version.stdout).trim(),
        payload.len()
    );

    let bench_stream = stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.js.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    bus.jetstream().create_stream(bench_stream).await?;

    // Core NATS request-reply.
    let mut requests = bus.client().subscribe("bench.echo").await?;
    let responder = bus.client().clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    let mut samples = time_each(count, async |_| {
        bus.client().request("bench.echo", payload.clone()).await?;
        Ok(())
    })
    .await?;
    report("core NATS request-reply", &mut samples);

    // JetStream publish, waiting for the stream's ack (the path every agent publishes on).
    let mut samples = time_each(count, async |i| {
        bus.publish_bytes(
            "bench.js.ack",
            "plan_spec",
            &format!("ack-{i}"),
            payload.clone(),
        )
        .await?;
        Ok(())
    })
    .await?;
    report("JetStream publish -> ack", &mut samples);

    // Publish, pull through a durable consumer, and acknowledge, one message at a time.
    let stream = bus.jetstream().get_stream("BENCH").await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-hop".into()),
            filter_subject: "bench.js.hop".into(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut samples = time_each(count, async |i| {
        bus.publish_bytes(
            "bench.js.hop",
            "plan_spec",
            &format!("hop-{i}"),
            payload.clone(),
        )
        .await?;
        let message = messages.next().await.ok_or("the consumer stream ended")??;
        message.double_ack().await?;
        Ok(())
    })
    .await?;
    report("publish -> consume -> ack (pull)", &mut samples);

    // Throughput of the bus's own consumer: decode, schema-check, handle, ack.
    let spec = ConsumerSpec {
        stream: "BENCH".into(),
        durable: "bench-throughput".into(),
        filter_subjects: vec!["bench.js.flow".into()],
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        max_ack_pending: 10_000,
        creation: Creation::WithTopology,
    };
    spec.ensure(&bus).await?;
    let stats = Arc::new(WorkStats::default());
    let shutdown = Shutdown::new();
    let handler = |_plan: PlanSpec, _delivery: Delivery| async { Ok(()) };
    let settings = ConsumerSettings {
        concurrency: 64,
        ..ConsumerSettings::default()
    };
    let runner = {
        let (bus, spec, stats, shutdown) =
            (bus.clone(), spec.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(async move { bus.consume(&spec, settings, stats, handler, shutdown).await })
    };
    let started = Instant::now();
    let js = bus.jetstream().clone();
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("flow-{i}"));
        acks.push(js.send_publish("bench.js.flow", message).await?);
    }
    for ack in acks {
        ack.await?;
    }
    while stats.handled.load(Ordering::Relaxed) < count as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let info_stream = bus.jetstream().get_stream_no_info("BENCH").await?;
    while info_stream
        .consumer_info("bench-throughput")
        .await?
        .num_ack_pending
        > 0
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    runner.await??;
    println!(
        "{:<34} {count} msgs in {:.2} s = {:.0} msgs/s (pipelined publish, 64 handlers, schema-checked PlanSpec, plain ack)",
        "publish -> Bus::consume -> ack",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    bus.drain().await;
    Ok(())
}

/// Times `step` `count` times, one after the other, after `WARM_UP` untimed runs.
async fn time_each(
    count: usize,
    mut step: impl AsyncFnMut(usize) -> Result<(), BenchError>,
) -> Result<Vec<Duration>, BenchError> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + WARM_UP {
        let start = Instant::now();
        step(i).await?;
        if i >= WARM_UP {
            samples.push(start.elapsed());
        }
    }
    Ok(samples)
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
        samples[index.min(samples.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "{name:<34} p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    );
}
