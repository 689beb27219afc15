//! Sample domain-agent images for the tests and the demo, built `FROM scratch` on the engine
//! from the machine's static busybox: `httpd` serves `/` (the version), `/health/live`, and
//! `/health/ready` when the image is built ready. Nothing is pulled.

use std::{path::Path, time::Duration};

use bollard::Docker;
use infracrew_forge::container::image::{BuildError, ContextFile, build_image};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A sample service image.
#[derive(Debug, Clone)]
pub struct SampleService {
    pub tag: String,
    /// The port httpd listens on in the container.
    pub port: u16,
    /// Served at `/`.
    pub version: String,
    /// Whether `/health/ready` answers 200 (a broken build when not).
    pub ready: bool,
    /// How long the service takes to start listening.
    pub start_delay: Duration,
}

impl SampleService {
    /// A ready image of `tag` listening on `port`, its version the tag's.
    pub fn new(tag: &str, port: u16) -> Self {
        SampleService {
            tag: tag.to_owned(),
            port,
            version: tag.rsplit(':').next().unwrap_or(tag).to_owned(),
            ready: true,
            start_delay: Duration::ZERO,
        }
    }
}

/// Builds `sample` on the engine.
pub async fn build_sample(docker: &Docker, sample: &SampleService) -> Result<(), BuildError> {
    let busybox = std::fs::read(Path::new(BUSYBOX)).map_err(|error| BuildError {
        tag: sample.tag.clone(),
        reason: format!("reading {BUSYBOX} (Debian's busybox-static; `make deps`): {error}"),
    })?;
    let mut files = vec![
        ContextFile::new("bin/busybox", busybox, 0o755),
        ContextFile::new("www/index.html", format!("{}\n", sample.version), 0o644),
        ContextFile::new("www/health/live", "live\n", 0o644),
    ];
    if sample.ready {
        files.push(ContextFile::new("www/health/ready", "ready\n", 0o644));
    }
    let containerfile = format!(
        "FROM scratch\nCOPY bin /bin\nCOPY www /www\nLABEL infracrew.sample={version}\n\
         ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep {delay}; exec /bin/busybox httpd -f -p {port} -h /www\"]\n",
        version = sample.version,
        delay = sample.start_delay.as_secs_f64(),
        port = sample.port,
    );
    build_image(docker, &sample.tag, &containerfile, &files).await
}
