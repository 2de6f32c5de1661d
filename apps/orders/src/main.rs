//! `lameduck-orders`: see `lameduck_orders::main_impl`.

fn main() -> std::process::ExitCode {
    lameduck_orders::main_impl()
}
