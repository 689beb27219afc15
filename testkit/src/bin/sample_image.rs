//! Builds a sample domain-agent image on the engine, for the demo: `sample-image TAG --port N`.

use anyhow::Context;
use clap::Parser;
use infracrew_testkit::images::{SampleService, build_sample};

/// Builds a sample service image FROM scratch (busybox httpd) on the container engine that
/// DOCKER_HOST names.
#[derive(Debug, Parser)]
#[command(name = "sample-image", version)]
struct Cli {
    /// The image to build, for example infracrew/social-intel:1.4.0.
    tag: String,
    /// The port the service listens on in its container.
    #[arg(long)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (docker, engine) = infracrew_forge::container::engine::connect(None)
        .await
        .context("finding the container engine")?;
    build_sample(&docker, &SampleService::new(&cli.tag, cli.port))
        .await
        .with_context(|| format!("on {engine}"))?;
    println!("built {} on {engine}", cli.tag);
    Ok(())
}
