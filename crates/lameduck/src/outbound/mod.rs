//! Layers for the calls a service makes to its dependencies (the client side).
//!
//! - [`breaker`]: a circuit breaker that stops calling a dependency that keeps failing.
//!
//! Put them around a client as `retries -> breaker -> per-attempt timeout -> client`, so
//! that the breaker counts timeouts as failures and retries never hammer an open circuit.

pub mod breaker;

pub use breaker::{
    Breaker, BreakerConfig, BreakerError, BreakerLayer, BreakerService, BreakerState,
};
