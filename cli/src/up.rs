//! `crew up`: a whole local crew, nats-server included unless one is named, with each agent's
//! log prefixed by its name, stopped cleanly on Ctrl-C or SIGTERM.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::Duration,
};

use infracrew_bus::{Bus, ConnectArgs, Shutdown, permissions, shutdown_on_signal};
use infracrew_protocol::signing::Signer;
use infracrew_testkit::NatsServer;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::CliError;

const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];
/// How long agents get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `crew up` starts the crew with.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// A running NATS to use; without it, `crew up` starts nats-server with JetStream.
    pub nats_url: Option<String>,
    pub playbooks: PathBuf,
    pub config: PathBuf,
    pub driver: String,
    /// `ENV=DRIVER` each, handed to Forge.
    pub environment_drivers: Vec<String>,
}

pub async fn up(options: UpOptions) -> Result<ExitCode, CliError> {
    let shutdown = shutdown_on_signal();
    // Our own server runs with the crew's users (one per agent and the CLI, each allowed only
    // its role's subjects) and passwords made for this run; a named server brings its own.
    let passwords: BTreeMap<String, String> = permissions::crew_users()
        .iter()
        .map(|user| (user.name.to_owned(), crate::new_password()))
        .collect();
    let config = tempfile::tempdir().map_err(|error| CliError::Up(error.to_string()))?;
    let server = match &options.nats_url {
        Some(_) => None,
        None => {
            let users = config.path().join("users.conf");
            std::fs::write(
                &users,
                permissions::users_conf_with_passwords(&|user| passwords[user.name].clone()),
            )
            .map_err(|error| CliError::Up(error.to_string()))?;
            let users = users.to_string_lossy().into_owned();
            Some(
                NatsServer::start_with_args(&["-c", &users])
                    .map_err(|error| CliError::Up(error.to_string()))?,
            )
        }
    };
    let credentials = |user: &str| {
        server
            .as_ref()
            .map(|_| (user.to_owned(), passwords[user].clone()))
    };
    let url = options
        .nats_url
        .clone()
        .or_else(|| server.as_ref().map(NatsServer::url))
        .unwrap_or_default();
    if server.is_some() {
        println!(
            "crew up: nats-server with JetStream at {url} (its store is removed when the crew stops)"
        );
    }
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // A key for this crew only: the Conductor signs its ApplyRequests, Forge checks them.
    let (signer, seed) = Signer::generate();
    let mut children = Vec::new();
    for name in AGENTS {
        let mut command = Command::new(bin.join(name));
        command
            .env("NATS_URL", &url)
            .env("INFRACREW_PLAYBOOKS", &options.playbooks)
            .env("INFRACREW_CONDUCTOR_CONFIG", &options.config)
            .env("INFRACREW_DRIVER", &options.driver)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((user, password)) = credentials(name) {
            command
                .env("NATS_USER", user)
                .env("NATS_PASSWORD", password);
        }
        match name {
            "conductor" => command.env("INFRACREW_CONDUCTOR_SIGNING_SEED", &seed),
            "forge" => command.env("INFRACREW_CONDUCTOR_PUBLIC_KEY", signer.public_key()),
            _ => &mut command,
        };
        if !options.environment_drivers.is_empty() {
            command.env(
                "INFRACREW_ENVIRONMENT_DRIVERS",
                options.environment_drivers.join(","),
            );
        }
        let mut child = command.spawn().map_err(|error| {
            CliError::Up(format!(
                "cannot start {}: {error}",
                bin.join(name).display()
            ))
        })?;
        prefix_lines(name, &mut child);
        children.push((name, child));
    }
    let mut connect = ConnectArgs::for_url(url.clone());
    let login = match credentials("cli") {
        Some((user, password)) => {
            connect.nats_user = Some(user.clone());
            connect.nats_password = Some(password.clone());
            format!(" NATS_USER={user}; NATS_PASSWORD={password};")
        }
        None => String::new(),
    };
    let bus = Bus::connect(&connect, "infracrew-cli").await?;
    println!(
        "crew up: atlas, forge, sentinel and conductor started; NATS_URL={url};{login} Ctrl-C stops them"
    );
    let code = watch_children(&mut children, &shutdown).await;
    bus.drain().await;
    stop(&mut children).await;
    drop(server);
    Ok(code)
}

/// Copies a child's output lines to ours, each behind the agent's name.
fn prefix_lines(name: &'static str, child: &mut Child) {
    let label = format!("{name:<9}|");
    if let Some(stdout) = child.stdout.take() {
        let label = label.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{label} {line}");
            }
        });
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{label} {line}");
            }
        });
    }
}

/// Waits for the signal, or for an agent to exit on its own (then the crew is stopped too).
async fn watch_children(children: &mut [(&'static str, Child)], shutdown: &Shutdown) -> ExitCode {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("crew up: {name} exited ({status}); stopping the crew");
                return ExitCode::FAILURE;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return ExitCode::SUCCESS,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// SIGTERM to every agent, then a kill for any still running after the grace period.
async fn stop(children: &mut [(&'static str, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    for (name, child) in children.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("crew up: {name} did not stop within {STOP_GRACE:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
    println!("crew up: stopped");
}
