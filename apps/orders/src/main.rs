//! `lameduck-orders`: see `lameduck_orders::main_impl`.

/// A request's allocations cost about a sixth of its instructions with the system's
/// allocator (`benches/orders-instructions`); mimalloc's per-thread free lists cost less.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lameduck_orders::main_impl()
}
