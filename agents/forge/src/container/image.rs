//! Images built on the engine from files in memory, `FROM scratch`: the edge that fronts every
//! service, and (for tests and the demo) sample services. Nothing is pulled.

use bollard::{Docker, body_full, query_parameters::BuildImageOptionsBuilder};
use futures::StreamExt;

/// One file of an image's build context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl ContextFile {
    pub fn new(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        ContextFile {
            path: path.into(),
            contents: contents.into(),
            mode,
        }
    }
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building image {tag}: {reason}")]
pub struct BuildError {
    pub tag: String,
    pub reason: String,
}

/// Builds `tag` from `containerfile` and `files`, the whole context sent as one tar.
pub async fn build_image(
    docker: &Docker,
    tag: &str,
    containerfile: &str,
    files: &[ContextFile],
) -> Result<(), BuildError> {
    let failed = |reason: String| BuildError {
        tag: tag.to_owned(),
        reason,
    };
    let mut context = tar::Builder::new(Vec::new());
    let dockerfile = ContextFile::new("Dockerfile", containerfile, 0o644);
    for file in std::iter::once(&dockerfile).chain(files) {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.contents.len() as u64);
        header.set_mode(file.mode);
        header.set_cksum();
        context
            .append_data(&mut header, &file.path, file.contents.as_slice())
            .map_err(|error| failed(error.to_string()))?;
    }
    let context = context
        .into_inner()
        .map_err(|error| failed(error.to_string()))?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .build();
    let mut output = docker.build_image(options, None, Some(body_full(context.into())));
    while let Some(step) = output.next().await {
        let step = step.map_err(|error| failed(error.to_string()))?;
        if let Some(error) = step.error_detail.and_then(|detail| detail.message) {
            return Err(failed(error));
        }
    }
    docker
        .inspect_image(tag)
        .await
        .map_err(|error| failed(format!("the engine built nothing: {error}")))?;
    Ok(())
}
