//! Nothing here: see `benches/layers.rs`.
