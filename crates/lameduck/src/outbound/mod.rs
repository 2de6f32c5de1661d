//! Layers for the calls a service makes to its dependencies (the client side).
//!
//! - [`breaker`]: a circuit breaker that stops calling a dependency that keeps failing;
//! - [`retry`]: bounded retries with jittered back-off, never past the request's drain
//!   deadline (a policy for tower's `RetryLayer`);
//! - [`timeout`]: a per-attempt timeout from the dependency's recent P99, never past the
//!   request's drain deadline.
//!
//! Put them around a client as `retries -> breaker -> per-attempt timeout -> client`, so
//! that the breaker counts timeouts as failures and retries never hammer an open circuit.
//!
//! Each module follows tower's naming: a state shared by every service a layer makes
//! ([`breaker::CircuitBreaker`], [`timeout::TimeoutEstimator`]), the layer (`XLayer`), the
//! service it makes (`X<S>`) and the service's `ResponseFuture`.

pub mod breaker;
pub mod retry;
pub mod timeout;
