//! The `overseer` operator command line; see `overseer --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = overseer_cli::Cli::parse();
    overseer_cli::init_logging(cli.verbose);
    overseer_cli::report(overseer_cli::run(cli).await)
}
