//! The edge: one small container per service that owns the service's published port and passes
//! each connection to a ready replica. Replicas come and go behind it during a rollout, so the
//! service's address never changes and never lacks a healthy replica. Forge also probes replicas
//! from inside it, on the same network path the traffic takes.
//!
//! The image is busybox alone: `nc -ll -e` accepts connections and runs `route` for each, which
//! picks a replica from `/edge/upstreams`; Forge rewrites that file atomically (write, then
//! rename) through the engine's exec API.

use bollard::{
    Docker,
    exec::{CreateExecOptions, StartExecResults},
};
use futures::StreamExt;

use super::image::{BuildError, ContextFile, build_image};

/// The port the edge listens on inside its container.
pub const EDGE_PORT: u16 = 8080;

const ROUTE: &str = r#"#!/bin/busybox sh
# One client connection, on stdin and stdout: pass it to one of the ready replicas Forge lists.
set -- $(/bin/busybox cat /edge/upstreams 2>/dev/null)
[ $# -gt 0 ] || exit 1
shift $((RANDOM % $#))
exec /bin/busybox nc -w 5 "${1%:*}" "${1##*:}"
"#;

const SET_UPSTREAMS: &str =
    r#"printf '%s\n' "$@" > /edge/upstreams.next && mv /edge/upstreams.next /edge/upstreams"#;

const PROBE: &str = r#"printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$2" | /bin/busybox nc -w 2 "$2" "$3" | /bin/busybox head -n 1"#;

/// Builds the edge image from a static busybox binary.
pub async fn build_edge_image(
    docker: &Docker,
    tag: &str,
    busybox: Vec<u8>,
) -> Result<(), BuildError> {
    let containerfile = format!(
        "FROM scratch\nCOPY bin /bin\nCOPY edge /edge\nLABEL infracrew.role=edge\n\
         ENTRYPOINT [\"/bin/busybox\", \"nc\", \"-ll\", \"-p\", \"{EDGE_PORT}\", \"-e\", \"/edge/route\"]\n"
    );
    let files = [
        ContextFile::new("bin/busybox", busybox, 0o755),
        ContextFile::new("edge/route", ROUTE, 0o755),
    ];
    build_image(docker, tag, &containerfile, &files).await
}

/// What a command run in a container printed, and how it exited.
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
}

/// Runs `command` in `container` and waits for it.
pub async fn exec(
    docker: &Docker,
    container: &str,
    command: Vec<String>,
) -> Result<ExecOutput, bollard::errors::Error> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(command),
                ..Default::default()
            },
        )
        .await?;
    let mut stdout = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&created.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = chunk? {
                stdout.push_str(&String::from_utf8_lossy(&message));
            }
        }
    }
    let inspected = docker.inspect_exec(&created.id).await?;
    Ok(ExecOutput {
        exit_code: inspected.exit_code.unwrap_or(-1),
        stdout,
    })
}

fn shell(script: &str, name: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    ["/bin/busybox", "sh", "-c", script, name]
        .into_iter()
        .map(str::to_owned)
        .chain(args)
        .collect()
}

/// Makes the edge route to exactly `upstreams` (`ip:port` each).
pub async fn set_upstreams(
    docker: &Docker,
    edge: &str,
    upstreams: &[String],
) -> Result<(), String> {
    let output = exec(
        docker,
        edge,
        shell(SET_UPSTREAMS, "set-upstreams", upstreams.to_vec()),
    )
    .await
    .map_err(|error| format!("updating the edge's replicas: {error}"))?;
    if output.exit_code == 0 {
        Ok(())
    } else {
        Err(format!(
            "updating the edge's replicas failed with exit code {}",
            output.exit_code
        ))
    }
}

/// Asks `ip:port` for `path` from inside the edge: `Ok` on a 2xx, otherwise what it answered.
pub async fn probe(
    docker: &Docker,
    edge: &str,
    ip: &str,
    port: u16,
    path: &str,
) -> Result<(), String> {
    let args = [path.to_owned(), ip.to_owned(), port.to_string()];
    let output = exec(docker, edge, shell(PROBE, "probe", args))
        .await
        .map_err(|error| format!("probing through the edge: {error}"))?;
    let status_line = output.stdout.trim();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') && code.len() == 3 {
        Ok(())
    } else if status_line.is_empty() {
        Err(format!("GET {path} on {ip}:{port} got no answer"))
    } else {
        Err(format!("GET {path} on {ip}:{port} answered {status_line}"))
    }
}
