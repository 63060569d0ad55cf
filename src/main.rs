//! The `mediarelay` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;
use mediarelay::cli::{self, Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => cli::commands::serve(args),
        Command::Ticket(cmd) => cli::commands::ticket(cmd),
        Command::Demo(args) => cli::commands::report(cli::demo::demo(args)),
        Command::Watch(args) => cli::commands::report(cli::demo::watch(args)),
        Command::Echo(args) => cli::commands::echo(args),
    }
}
