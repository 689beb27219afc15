//! A real Prometheus (Debian's package, installed by `make deps`) on a free loopback port
//! with a configuration the test gives and a temporary store: stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::free_port;

/// How long Prometheus may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Writes `config` (YAML, or JSON, which YAML reads too) beside copies of `rule_files`
    /// and starts Prometheus on it; the config names the rule files by their file names.
    pub async fn start(config: &str, rule_files: &[PathBuf]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        for rules in rule_files {
            let name = rules.file_name().ok_or("a rule file without a name")?;
            std::fs::copy(rules, dir.path().join(name))
                .map_err(|error| format!("{}: {error}", rules.display()))?;
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(|error| error.to_string())?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .map_err(|error| error.to_string())?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|error| error.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|error| {
                format!("cannot start prometheus: {error}; run `make deps` to install it")
            })?;
        let mut prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, _)) = crate::http::get(&format!("{}/-/ready", prometheus.url())).await {
                return Ok(prometheus);
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                return Err(format!(
                    "prometheus exited ({status}): {}",
                    prometheus.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "prometheus did not become ready: {}",
                    prometheus.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The folder its configuration is in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Evaluates an instant query and returns its result vector (or why it failed).
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let query: String =
            serde_urlencoded::to_string([("query", promql)]).map_err(|error| error.to_string())?;
        let body = self.api(&format!("/api/v1/query?{query}")).await?;
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The alerts pending or firing now.
    pub async fn alerts(&self) -> Result<Vec<Value>, String> {
        let body = self.api("/api/v1/alerts").await?;
        Ok(body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The scrape targets and their health.
    pub async fn targets(&self) -> Result<Vec<Value>, String> {
        let body = self.api("/api/v1/targets").await?;
        Ok(body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = crate::http::get(&format!("{}{path}", self.url())).await?;
        let body: Value = serde_json::from_str(&body)
            .map_err(|error| format!("{path} answered {status} with no JSON: {error}"))?;
        if body["status"] != "success" {
            return Err(format!("{path}: {}", body["error"]));
        }
        Ok(body)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
