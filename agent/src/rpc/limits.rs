//! The bounds every listener shares: requests at once and how long one may take.

use std::time::Duration;

/// The layers [`limits`] adds.
pub type Limits = tower::layer::util::Stack<
    tower::layer::util::Stack<
        tower::limit::GlobalConcurrencyLimitLayer,
        tower::layer::util::Stack<tower::load_shed::LoadShedLayer, tower::layer::util::Identity>,
    >,
    tower::layer::util::Identity,
>;

/// Bounds every listener: requests at once (over all connections; the excess is refused
/// with ResourceExhausted, not queued) and how long one may take.
pub fn limits(
    b: tonic::transport::Server,
    timeout: Duration,
    max_concurrent: usize,
) -> tonic::transport::server::Server<Limits> {
    b.timeout(timeout).layer(
        tower::ServiceBuilder::new()
            .layer(tower::load_shed::LoadShedLayer::new())
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                max_concurrent,
            ))
            .into_inner(),
    )
}
