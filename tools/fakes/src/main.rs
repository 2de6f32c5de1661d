//! `lameduck-fakes`: fake services for tests and drills. See `lameduck_fakes::main_impl`.

fn main() -> std::process::ExitCode {
    lameduck_fakes::main_impl()
}
