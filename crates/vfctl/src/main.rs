//! `vfctl`: admin command for API keys, the importer customers run to load their
//! users, and their webhook endpoints (with a local listener). `--local` targets the `make dev` stack; otherwise a deployed stack, whose
//! table names come from its CloudFormation outputs (keys), or `--url` (import).

use clap::Parser;
use cli::{Cli, Command, EventsCommand, UsersCommand};
use error::CommandError;
use std::process::ExitCode;
use target::{load_local_env, Target};
use vibefollow_users::aws::sdk_config;

mod cli;
mod dlq;
mod error;
mod events;
mod import;
mod keys;
mod target;
mod users;
mod webhooks;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vfctl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CommandError> {
    if cli.local {
        load_local_env()?;
    }
    let command = match cli.command {
        Command::Users(UsersCommand::Import(args)) => {
            return users::import_file(args, cli.local).await
        }
        Command::Users(UsersCommand::Formats) => Command::Users(UsersCommand::Formats),
        Command::Events(EventsCommand::Tail { count }) => {
            return events::tail_events(cli.local, count).await
        }
        Command::Webhooks(args) => return webhooks::run(args, cli.local).await,
        command => command,
    };
    let mut sdk = sdk_config().await.into_builder();
    if let Some(region) = &cli.region {
        sdk.set_region(Some(aws_config::Region::new(region.clone())));
    }
    let target = Target {
        sdk: sdk.build(),
        stack: cli.stack,
        local: cli.local,
    };
    match command {
        Command::Keys(command) => keys::run(&target, command).await,
        Command::Dlq(command) => dlq::run(&target, command).await,
        Command::Users(UsersCommand::Formats) => users::count_formats(&target).await,
        Command::Users(UsersCommand::Import(_)) | Command::Events(_) | Command::Webhooks(_) => {
            unreachable!("handled above")
        }
    }
}
