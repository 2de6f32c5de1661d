//! The etcd (v3 API) registry: the key `{prefix}{instance}` holds a JSON value (the
//! process's addresses, pid and version) under a lease of `ttl`, kept alive while the
//! process is registered. A crash leaves the key to the lease's expiry; a drain deletes it
//! in a transaction that first compares the key's lease with this process's own, so that a
//! successor's registration (an upgrade's new process writes the same key under its own
//! lease) is never deleted; then the lease is revoked.

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};

use super::{Registry, RegistryError, RegistryFuture};
use crate::sync::lock;

/// How long connecting to etcd, and each request, may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and what to register.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// etcd's client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The key, such as `/services/orders/host-a-8080`.
    pub key: String,
    /// The value, JSON by convention.
    pub value: String,
    /// The lease's time to live: how long the key outlives a crash. etcd may raise a very
    /// short one (3.4 raises 1 s to 2 s).
    pub ttl: Duration,
}

/// A registration in etcd. See the [module docs](self).
pub struct EtcdRegistry {
    config: EtcdConfig,
    /// The client and the lease of the current registration.
    current: Mutex<Option<(Client, i64)>>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.config.endpoints)
            .field("key", &self.config.key)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// A registry for `config`; nothing is contacted until the server registers.
    pub fn new(config: EtcdConfig) -> Self {
        Self {
            config,
            current: Mutex::new(None),
        }
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unavailable {
            registry: self.name(),
            message: format!("{what}: {e}"),
        }
    }

    fn name(&self) -> String {
        format!("etcd {}", self.config.endpoints.join(","))
    }

    async fn register_once(&self) -> Result<RegistryFuture<'static, RegistryError>, RegistryError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let mut client = Client::connect(&self.config.endpoints, Some(options))
            .await
            .map_err(|e| self.unavailable("connect", e))?;
        let ttl = i64::try_from(self.config.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| self.unavailable("grant a lease", e))?;
        let id = lease.id();
        client
            .put(
                self.config.key.as_bytes(),
                self.config.value.as_bytes(),
                Some(PutOptions::new().with_lease(id)),
            )
            .await
            .map_err(|e| self.unavailable("put the key", e))?;
        let (keeper, stream) = client
            .lease_keep_alive(id)
            .await
            .map_err(|e| self.unavailable("keep the lease alive", e))?;
        *lock(&self.current) = Some((client, id));
        let name = self.name();
        let every = (self.config.ttl / 3).max(Duration::from_millis(300));
        Ok(Box::pin(keep_alive(keeper, stream, every, name)))
    }

    async fn deregister_once(&self) -> Result<(), RegistryError> {
        let Some((mut client, id)) = lock(&self.current).take() else {
            return Ok(());
        };
        let key = self.config.key.as_bytes();
        let only_ours = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, id)])
            .and_then([TxnOp::delete(key, None)]);
        let deleted = client
            .txn(only_ours)
            .await
            .map_err(|e| self.unavailable("delete the key", e))?
            .succeeded();
        if !deleted {
            tracing::info!(key = %self.config.key, "the key belongs to another process now; left in place");
        }
        client
            .lease_revoke(id)
            .await
            .map_err(|e| self.unavailable("revoke the lease", e))?;
        Ok(())
    }
}

/// Send keep-alives every `every` until etcd says the lease is gone or the stream breaks;
/// returns why.
async fn keep_alive(
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    every: Duration,
    registry: String,
) -> RegistryError {
    let lost = |message: String| RegistryError::Lost {
        registry: registry.clone(),
        message,
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return lost(format!("keep-alive: {e}"));
        }
        match tokio::time::timeout(every.max(REQUEST_TIMEOUT), stream.message()).await {
            Ok(Ok(Some(res))) if res.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return lost("the lease expired".into()),
            Ok(Ok(None)) => return lost("the keep-alive stream ended".into()),
            Ok(Err(e)) => return lost(format!("keep-alive: {e}")),
            Err(_) => return lost("no keep-alive answer in time".into()),
        }
    }
}

impl Registry for EtcdRegistry {
    fn register(
        &self,
    ) -> RegistryFuture<'_, Result<RegistryFuture<'static, RegistryError>, RegistryError>> {
        Box::pin(self.register_once())
    }

    fn deregister(&self) -> RegistryFuture<'_, Result<(), RegistryError>> {
        Box::pin(self.deregister_once())
    }
}
