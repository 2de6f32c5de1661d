//! Service registries: the process registers once it serves, leaves the registry first
//! when it drains (before the listener closes), follows an operator drain, and registers
//! again by itself when the registry forgets it (the registry restarted, the lease was
//! lost).
//!
//! [`Registry`] is the small trait a registry implements; `etcd` (feature `etcd`) is the
//! one lameduck ships. [`Server::with_registry`](crate::server::Server::with_registry) hands one to
//! the server, which drives it.
//!
//! ```no_run
//! # #[cfg(feature = "etcd")] {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lameduck::registry::etcd::{EtcdConfig, EtcdRegistry};
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::server::Server;
//!
//! # async fn run() -> Result<(), lameduck::Error> {
//! let server = Server::builder()
//!     .bind("127.0.0.1:8080".parse().unwrap(), Lifecycle::new())
//!     .await?;
//! // Once bound: what it registers may name the address (port 0 picks one).
//! let registry = EtcdRegistry::new(EtcdConfig {
//!     endpoints: vec!["http://127.0.0.1:2379".into()],
//!     key: "/services/orders/host-a-8080".into(),
//!     value: r#"{"http":"10.0.0.7:8080"}"#.into(),
//!     ttl: Duration::from_secs(10),
//! });
//! let server = server.with_registry(Arc::new(registry));
//! # let _ = server;
//! # Ok(())
//! # }
//! # }
//! ```

#[cfg(feature = "etcd")]
pub mod etcd;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::OperatorDrain;
use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;

/// How long the deregistration at the start of the drain may take (a before-drain hook).
pub const DEFAULT_DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait after a failed registration; doubles up to [`MAX_RETRY`].
pub const MIN_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between two registration attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// A boxed future of a registry operation.
pub type RegistryFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached or refused the operation.
    #[error("{registry}: {message}")]
    Unavailable {
        /// Which registry (its endpoints).
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// The registration was lost (lease expired or revoked, registry restarted).
    #[error("{registry}: registration lost: {message}")]
    Lost {
        /// Which registry.
        registry: String,
        /// What happened.
        message: String,
    },
}

/// A service registry this process registers itself in.
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Register (or register again) and keep the registration alive; the returned future
    /// resolves when the registration is lost, with why. `Err` when registering failed.
    fn register(
        &self,
    ) -> RegistryFuture<'_, Result<RegistryFuture<'static, RegistryError>, RegistryError>>;

    /// Remove this process's registration, and only its own (a successor's stays).
    fn deregister(&self) -> RegistryFuture<'_, Result<(), RegistryError>>;
}

/// How long the server waits for the first registration before it reports ready. In an
/// upgrade, the old process drains (and deregisters, unless the key is no longer under its
/// lease) as soon as it hears the new one is ready: the new registration must come first.
pub const FIRST_REGISTRATION_WAIT: Duration = Duration::from_secs(2);

/// Keep `registry` registered while the process serves and is not drained by an
/// operator: register, wait until the registration is lost or the operator drains, and
/// start again, with capped exponential back-off after failures. `first` is told when the
/// first attempt has ended, either way. Returns when the drain starts (the before-drain
/// hook deregisters).
pub(crate) async fn keep_registered(
    registry: Arc<dyn Registry>,
    shutdown: Shutdown,
    operator: OperatorDrain,
    metrics: Metrics,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut operator_rx = operator.subscribe();
    let mut retry = MIN_RETRY;
    loop {
        if shutdown.is_draining() {
            return;
        }
        if operator.is_drained() {
            // Nothing to wait for before reporting ready (a process that starts drained).
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            metrics.set_registered(false);
            tokio::select! {
                _ = operator_rx.changed() => continue,
                _ = shutdown.stop_soon() => return,
            }
        }
        let attempt = tokio::select! {
            r = registry.register() => r,
            _ = shutdown.stop_soon() => return,
        };
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        match attempt {
            Ok(lost) => {
                retry = MIN_RETRY;
                metrics.set_registered(true);
                tracing::info!(registry = ?registry, "registered");
                tokio::select! {
                    why = lost => {
                        metrics.set_registered(false);
                        metrics.registry_failure();
                        tracing::warn!(error = %why, "registration lost; registering again");
                    }
                    _ = wait_for_operator_drain(&mut operator_rx) => {
                        metrics.set_registered(false);
                        match registry.deregister().await {
                            Ok(()) => tracing::info!("operator drain: deregistered"),
                            Err(e) => tracing::warn!(error = %e, "operator drain: deregistration failed"),
                        }
                    }
                    _ = shutdown.stop_soon() => return,
                }
            }
            Err(e) => {
                metrics.registry_failure();
                tracing::warn!(error = %e, retry_ms = retry.as_millis() as u64, "registration failed; serving anyway, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.stop_soon() => return,
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Completes when the operator drains the process.
async fn wait_for_operator_drain(rx: &mut tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
