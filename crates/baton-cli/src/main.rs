//! The `baton` binary: parses arguments and hands over to the library.

use clap::Parser;

fn main() {
    let cli = baton_cli::Cli::parse();
    std::process::exit(baton_cli::run(cli));
}
