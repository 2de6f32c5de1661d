//! `lameduck-drill`: see `lameduck_drill::main_impl`.

fn main() -> std::process::ExitCode {
    lameduck_drill::main_impl()
}
