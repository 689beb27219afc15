//! Converging a service to its approved state: rolling (one replica at a time, a ready one
//! always serving) or blue-green (the whole new set ready before traffic moves), with the new
//! replicas removed again when one does not become ready.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    models::{
        ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
        PortBinding,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use futures::StreamExt;
use infracrew_protocol::{ServiceState, Strategy};

use super::{
    ContainerSettings,
    edge::{self, EDGE_PORT},
    observe::{self, Edge, Observed, Replica},
};
use crate::driver::ApplyContext;

/// One service's rollout.
pub struct Rollout<'a> {
    pub docker: &'a Docker,
    pub settings: &'a ContainerSettings,
    pub environment: &'a str,
    pub service: &'a str,
    pub context: &'a ApplyContext,
}

impl Rollout<'_> {
    fn report(&self, line: impl Into<String>) {
        self.context.progress.report(line);
    }

    /// Makes the service run as `desired` (or not at all), starting from whatever runs now.
    pub async fn converge(&self, desired: Option<&ServiceState>) -> Result<(), String> {
        let observed = observe::observe(self.docker, self.environment, self.service).await?;
        let Some(desired) = desired else {
            return self.remove_service(observed).await;
        };
        if desired.host_network {
            return Err(
                "the container driver runs services on their environment's network; \
                        host networking is not supported"
                    .to_owned(),
            );
        }
        self.ensure_image(&desired.image).await?;
        self.ensure_network().await?;
        let edge = self
            .ensure_edge(observed.edge.as_ref(), desired.published_port)
            .await?;
        let revision = observe::revision(desired);
        let new = NewRevision {
            revision: &revision,
            previous: replaced_state(&observed, &revision),
        };

        // Replicas of the wanted revision that run and answer are kept (an earlier attempt may
        // have started them); anything stopped or not ready is only in the way.
        let mut kept = Vec::new();
        let mut old = Vec::new();
        for replica in observed.replicas {
            if !replica.running {
                self.report(format!("removing stopped container {}", replica.name));
                self.remove(&replica.id).await?;
            } else if replica.revision != revision {
                old.push(replica);
            } else if self.answers(&replica, desired, &edge).await {
                kept.push(replica);
            } else {
                self.report(format!(
                    "replacing replica {}: it is not ready",
                    replica.name
                ));
                self.remove(&replica.id).await?;
            }
        }
        let started = match self.context.strategy {
            Strategy::Rolling => {
                self.rolling(desired, &new, &edge, &mut kept, &mut old)
                    .await
            }
            Strategy::BlueGreen => self.blue_green(desired, &new, &edge, &mut kept, &old).await,
        };
        if let Err((error, started)) = started {
            self.report(format!(
                "removing the {} replica(s) this apply started",
                started.len()
            ));
            let serving: Vec<&Replica> = kept
                .iter()
                .chain(&old)
                .filter(|replica| !started.iter().any(|s| s.id == replica.id))
                .collect();
            self.route(&edge, &serving, desired.port).await?;
            for replica in &started {
                self.remove(&replica.id).await?;
            }
            return Err(error);
        }
        // Fewer replicas wanted than run: the highest slots go, out of the edge first.
        kept.sort_by_key(|replica| replica.slot);
        while kept.len() > desired.replicas as usize
            && let Some(extra) = kept.pop()
        {
            self.report(format!("removing replica {} (scaling down)", extra.name));
            self.route(&edge, &kept.iter().collect::<Vec<_>>(), desired.port)
                .await?;
            self.drain_and_remove(&extra).await?;
        }
        self.route(&edge, &kept.iter().collect::<Vec<_>>(), desired.port)
            .await?;
        // The old replicas left are out of the edge now: they drain together.
        if !old.is_empty() {
            tokio::time::sleep(self.settings.drain).await;
        }
        for replica in old.drain(..) {
            self.report(format!("removing old replica {}", replica.name));
            self.remove(&replica.id).await?;
        }
        self.report(format!(
            "{} replica(s) of {} ready behind port {}",
            kept.len(),
            desired.image,
            desired
                .published_port
                .map_or_else(|| "(unpublished)".to_owned(), |port| port.to_string())
        ));
        Ok(())
    }

    /// One new replica at a time: started, ready, added to the edge, then one old one removed.
    async fn rolling(
        &self,
        desired: &ServiceState,
        new: &NewRevision<'_>,
        edge: &Edge,
        kept: &mut Vec<Replica>,
        old: &mut Vec<Replica>,
    ) -> Result<(), (String, Vec<Replica>)> {
        let mut started = Vec::new();
        let wanted = desired.replicas as usize;
        while kept.len() < wanted {
            let slot = self.free_slot(new, kept.iter().chain(old.iter()).chain(&started));
            self.report(format!(
                "starting replica {} of {wanted} ({})",
                kept.len() + 1,
                desired.image
            ));
            let replica = match self.start_replica(desired, new, slot).await {
                Ok(replica) => replica,
                Err(error) => return Err((error, started)),
            };
            started.push(replica.clone());
            if let Err(error) = self.wait_ready(&replica, desired, edge).await {
                return Err((error, started));
            }
            self.report(format!("replica {} of {wanted} is ready", kept.len() + 1));
            kept.push(replica);
            let retiring = old.pop();
            let serving: Vec<&Replica> = kept.iter().chain(old.iter()).collect();
            if let Err(error) = self.route(edge, &serving, desired.port).await {
                return Err((error, started));
            }
            if let Some(retiring) = retiring {
                self.report(format!("removing old replica {}", retiring.name));
                if let Err(error) = self.drain_and_remove(&retiring).await {
                    return Err((error, started));
                }
            }
        }
        Ok(())
    }

    /// The whole new set started and ready before the edge moves to it.
    async fn blue_green(
        &self,
        desired: &ServiceState,
        new: &NewRevision<'_>,
        edge: &Edge,
        kept: &mut Vec<Replica>,
        old: &[Replica],
    ) -> Result<(), (String, Vec<Replica>)> {
        let mut started = Vec::new();
        let wanted = desired.replicas as usize;
        let missing = wanted.saturating_sub(kept.len());
        for n in 1..=missing {
            let slot = self.free_slot(new, kept.iter().chain(old).chain(&started));
            self.report(format!(
                "starting new replica {n} of {missing} ({})",
                desired.image
            ));
            match self.start_replica(desired, new, slot).await {
                Ok(replica) => started.push(replica),
                Err(error) => return Err((error, started)),
            }
        }
        for (n, replica) in started.iter().enumerate() {
            if let Err(error) = self.wait_ready(replica, desired, edge).await {
                return Err((error, started));
            }
            self.report(format!("new replica {} of {missing} is ready", n + 1));
        }
        kept.extend(started.iter().cloned());
        kept.sort_by_key(|replica| replica.slot);
        if !old.is_empty() {
            self.report(format!(
                "the new set is ready: moving traffic off the {} old replica(s)",
                old.len()
            ));
        }
        Ok(())
    }

    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        self.report(format!("checking image {image}"));
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        self.report(format!("pulling image {image}"));
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|error| {
                format!("image {image} is not on the engine and could not be pulled: {error}")
            })?;
        }
        Ok(())
    }

    async fn ensure_network(&self) -> Result<(), String> {
        let name = observe::network_name(self.environment);
        if self.docker.inspect_network(&name, None).await.is_ok() {
            return Ok(());
        }
        self.report(format!("creating network {name}"));
        let request = NetworkCreateRequest {
            name: name.clone(),
            labels: Some(HashMap::from([
                (observe::MANAGED_BY.to_owned(), observe::FORGE.to_owned()),
                (observe::ENVIRONMENT.to_owned(), self.environment.to_owned()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Another apply in the same environment created it meanwhile.
            Err(_) if self.docker.inspect_network(&name, None).await.is_ok() => Ok(()),
            Err(error) => Err(format!("creating network {name}: {error}")),
        }
    }

    /// The edge, running and publishing `published_port`; recreated when the port changes.
    async fn ensure_edge(
        &self,
        edge: Option<&Edge>,
        published_port: Option<u16>,
    ) -> Result<Edge, String> {
        if let Some(edge) = edge {
            if edge.running && edge.published_port == published_port {
                return Ok(edge.clone());
            }
            self.report("replacing the edge (its port changed or it stopped)");
            self.remove(&edge.id).await?;
        }
        let name = observe::edge_name(self.environment, self.service);
        let port_key = format!("{EDGE_PORT}/tcp");
        let mut labels = self.labels(observe::ROLE_EDGE);
        if let Some(port) = published_port {
            labels.insert(observe::PUBLISHED_PORT.to_owned(), port.to_string());
            self.report(format!("starting the edge on port {port}"));
        }
        let body = ContainerCreateBody {
            image: Some(self.settings.edge_image.clone()),
            labels: Some(labels),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(HostConfig {
                port_bindings: published_port.map(|port| {
                    HashMap::from([(
                        port_key,
                        Some(vec![PortBinding {
                            host_ip: None,
                            host_port: Some(port.to_string()),
                        }]),
                    )])
                }),
                network_mode: Some(observe::network_name(self.environment)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.create_and_start(&name, body).await?;
        Ok(Edge {
            id,
            running: true,
            published_port,
        })
    }

    fn labels(&self, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (observe::MANAGED_BY.to_owned(), observe::FORGE.to_owned()),
            (observe::ENVIRONMENT.to_owned(), self.environment.to_owned()),
            (observe::SERVICE.to_owned(), self.service.to_owned()),
            (observe::ROLE.to_owned(), role.to_owned()),
            (observe::PLAN.to_owned(), self.context.plan_id.to_string()),
        ])
    }

    async fn start_replica(
        &self,
        desired: &ServiceState,
        new: &NewRevision<'_>,
        slot: u32,
    ) -> Result<Replica, String> {
        let revision = new.revision;
        let name = observe::replica_name(self.environment, self.service, revision, slot);
        let mut labels = self.labels(observe::ROLE_REPLICA);
        labels.extend([
            (observe::REVISION.to_owned(), revision.to_owned()),
            (observe::SLOT.to_owned(), slot.to_string()),
            (observe::PORT.to_owned(), desired.port.to_string()),
            (observe::IMAGE.to_owned(), desired.image.clone()),
            (
                observe::ENV_KEYS.to_owned(),
                desired.env.keys().cloned().collect::<Vec<_>>().join(","),
            ),
            (observe::HEALTH_LIVE.to_owned(), desired.health.live.clone()),
            (
                observe::HEALTH_READY.to_owned(),
                desired.health.ready.clone(),
            ),
        ]);
        if let Some(previous) = &new.previous {
            labels.insert(observe::PREVIOUS.to_owned(), previous.clone());
        }
        let resources = desired.resources;
        let network = observe::network_name(self.environment);
        let body = ContainerCreateBody {
            image: Some(desired.image.clone()),
            env: Some(
                desired
                    .env
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: Some(vec![format!("{}/tcp", desired.port)]),
            host_config: Some(HostConfig {
                nano_cpus: Some(i64::from(resources.cpu_limit_millis) * 1_000_000),
                cpu_shares: Some((i64::from(resources.cpu_request_millis) * 1024 + 500) / 1000),
                memory: Some(i64::from(resources.memory_limit_mib) * 1024 * 1024),
                memory_reservation: Some(i64::from(resources.memory_request_mib) * 1024 * 1024),
                privileged: Some(desired.privileged),
                network_mode: Some(network.clone()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![self.service.to_owned()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let id = self.create_and_start(&name, body).await?;
        observe::started_replica(self.docker, self.environment, &id).await
    }

    /// Creates `name` (replacing a leftover of the same name) and starts it.
    async fn create_and_start(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, String> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => created,
            // A leftover of the same name that is no replica of this revision (a stopped one was
            // already removed): Docker answers 409, Podman 500 "already in use".
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) if status_code == 409 || message.contains("already in use") => {
                self.remove(name).await?;
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|error| format!("creating {name}: {error}"))?
            }
            Err(error) => return Err(format!("creating {name}: {error}")),
        };
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|error| format!("starting {name}: {error}"))?;
        Ok(created.id)
    }

    /// The lowest slot of the new revision whose container name no replica holds (a replica
    /// changed by hand keeps its old name but counts as another revision).
    fn free_slot<'a>(
        &self,
        new: &NewRevision<'_>,
        replicas: impl Iterator<Item = &'a Replica>,
    ) -> u32 {
        let taken: Vec<&str> = replicas.map(|replica| replica.name.as_str()).collect();
        (1..)
            .find(|slot| {
                let name =
                    observe::replica_name(self.environment, self.service, new.revision, *slot);
                !taken.contains(&name.as_str())
            })
            .unwrap_or(1)
    }

    /// Whether `replica` answers its readiness path now.
    async fn answers(&self, replica: &Replica, desired: &ServiceState, edge: &Edge) -> bool {
        self.probe_ready(replica, desired, edge).await.is_ok()
    }

    async fn probe_ready(
        &self,
        replica: &Replica,
        desired: &ServiceState,
        edge: &Edge,
    ) -> Result<(), String> {
        let ip = replica.ip.as_deref().unwrap_or_default();
        edge::probe(
            self.docker,
            &edge.id,
            ip,
            desired.port,
            &desired.health.ready,
        )
        .await
    }

    /// Waits until `replica` answers its readiness path, or says why it did not in time.
    async fn wait_ready(
        &self,
        replica: &Replica,
        desired: &ServiceState,
        edge: &Edge,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.settings.health_timeout;
        loop {
            let inspected = self
                .docker
                .inspect_container(&replica.id, None)
                .await
                .map_err(|error| format!("inspecting {}: {error}", replica.name))?;
            let state = inspected.state.unwrap_or_default();
            if state.running != Some(true) {
                return Err(format!(
                    "replica {} of {} stopped (exit code {}) before it was ready",
                    replica.name,
                    desired.image,
                    state.exit_code.unwrap_or_default()
                ));
            }
            let last = match self.probe_ready(replica, desired, edge).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica {} of {} was not ready within {}: {last}",
                    replica.name,
                    desired.image,
                    humanize(self.settings.health_timeout)
                ));
            }
            tokio::time::sleep(self.settings.probe_interval).await;
        }
    }

    /// Points the edge at `replicas`.
    async fn route(&self, edge: &Edge, replicas: &[&Replica], port: u16) -> Result<(), String> {
        let upstreams: Vec<String> = replicas
            .iter()
            .filter_map(|replica| replica.ip.as_ref())
            .map(|ip| format!("{ip}:{port}"))
            .collect();
        edge::set_upstreams(self.docker, &edge.id, &upstreams).await
    }

    /// Lets a replica the edge no longer routes to finish its connections, then removes it.
    async fn drain_and_remove(&self, replica: &Replica) -> Result<(), String> {
        tokio::time::sleep(self.settings.drain).await;
        self.remove(&replica.id).await
    }

    async fn remove(&self, container: &str) -> Result<(), String> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(format!("removing {container}: {error}")),
        }
    }

    /// Decommission: out of the edge, then every replica and the edge itself.
    async fn remove_service(&self, observed: Observed) -> Result<(), String> {
        if let Some(edge) = &observed.edge {
            if edge.running {
                edge::set_upstreams(self.docker, &edge.id, &[]).await?;
            }
            self.report("removing the edge");
            self.remove(&edge.id).await?;
        }
        let total = observed.replicas.len();
        for (n, replica) in observed.replicas.iter().enumerate() {
            self.report(format!(
                "removing replica {} of {total} ({})",
                n + 1,
                replica.name
            ));
            self.remove(&replica.id).await?;
        }
        Ok(())
    }
}

/// The revision a rollout starts, and what it replaces (JSON, for the label).
struct NewRevision<'a> {
    revision: &'a str,
    previous: Option<String>,
}

/// What the revision being rolled out replaces: what runs now, or, when an earlier attempt
/// already made the new revision the newest, what that attempt recorded.
fn replaced_state(observed: &Observed, revision: &str) -> Option<String> {
    let current = observed.current()?;
    let replaced = if observe::revision(&current) == revision {
        observed.previous()?
    } else {
        ServiceState {
            published_port: None,
            ..current
        }
    };
    serde_json::to_string(&replaced).ok()
}

fn humanize(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
