//! The HTTP endpoint: `/metrics` in the format the client's `Accept` header asks for.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{header, HeaderMap, StatusCode},
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;

use super::exposition::{render, Format};

/// Why the metrics endpoint could not run.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics listener to {addr} (is another emis or exporter using it? pass --metrics-addr)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    BpfStats(#[from] super::program::StatsError),
}

/// The status, headers and body of one scrape.
fn scrape(
    registry: &Registry,
    accept: Option<&str>,
) -> (StatusCode, [(header::HeaderName, &'static str); 2], String) {
    let format = Format::negotiate(accept);
    match render(registry, format) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept"),
            ],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::VARY, "Accept"),
            ],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

/// Serves `/metrics` on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
) -> Result<(), MetricsError> {
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let registry = registry.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                scrape(&registry, accept)
            }
        }),
    );
    axum::serve(listener, app)
        .await
        .map_err(MetricsError::Serve)
}

/// Binds the metrics listener now (before anything in the kernel changes), non-blocking
/// for tokio.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn content_type_follows_accept() {
        let mut registry = Registry::default();
        registry.register("emis_x", "X", Counter::<u64>::default());
        let (status, headers, body) = scrape(&registry, None);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[0].1, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.contains("# TYPE emis_x_total counter") && !body.contains("# EOF"));
        let (_, headers, body) = scrape(&registry, Some("application/openmetrics-text"));
        assert_eq!(
            headers[0].1,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(body.contains("# TYPE emis_x counter") && body.ends_with("# EOF\n"));
    }
}
