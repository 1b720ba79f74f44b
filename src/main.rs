//! `onlyone`: the command, all of it in the library's `cli` module (which
//! the Python package's `onlyone` command runs too).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(onlyone::cli::main(std::env::args_os()))
}
