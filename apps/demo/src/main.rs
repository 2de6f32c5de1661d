//! `lameduck-demo`: the smallest lameduck service. See `lameduck_demo::main_impl`.

fn main() -> std::process::ExitCode {
    lameduck_demo::main_impl()
}
