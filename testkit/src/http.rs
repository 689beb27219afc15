//! A plain HTTP/1 client for the tests: GET an agent's health or metrics, POST to an endpoint.

use axum::http::Request;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Sends `request` and returns the status and body of the answer, or why there is none.
pub async fn send(request: Request<Full<Bytes>>) -> Result<(u16, String), String> {
    let uri = request.uri().to_string();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(request)
        .await
        .map_err(|error| format!("{uri}: {error}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("{uri}: {error}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GETs `url`.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|error| format!("{url}: {error}"))?;
    send(request).await
}
