use std::process::ExitCode;

use clap::Parser;
use infracrew_cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crew: {error}");
            ExitCode::FAILURE
        }
    }
}
