//! `vfctl users import`: the arguments into the importer's options, and its summary
//! out (a line on stderr, the JSON on stdout). `vfctl users formats`: the users table
//! by item format.

use crate::cli::ImportArgs;
use crate::error::CommandError;
use crate::import::{import, CsvOptions, ImportOptions};
use crate::target::Target;
use vibefollow_users::aws::dynamodb::UserStore;

/// What a command that calls the API says without a key.
pub const NO_KEY: &str = "no API key: pass --key or set VIBEFOLLOW_API_KEY";

/// The API's base URL: `--url`, or with --local the local stack's.
pub fn api_url(url: Option<String>, local: bool) -> Result<String, CommandError> {
    match (url, local) {
        (Some(url), _) => Ok(url),
        (None, true) => {
            Ok(std::env::var("VF_API_URL").unwrap_or_else(|_| "http://127.0.0.1:9000".into()))
        }
        (None, false) => Err("no API URL: pass --url or set VIBEFOLLOW_BASE_URL".into()),
    }
}

pub async fn import_file(args: ImportArgs, local: bool) -> Result<(), CommandError> {
    let url = api_url(args.api.url, local)?;
    let key = args.api.key.ok_or(NO_KEY)?;
    let summary = import(ImportOptions {
        file: args.file.clone(),
        url,
        key,
        concurrency: args.concurrency.into(),
        batch_size: args.batch_size.into(),
        csv: CsvOptions {
            timestamp_column: args.timestamp_column,
            once_columns: args.once_columns,
        },
    })
    .await?;
    eprintln!(
        "imported {} users in {:.1} s ({} users/s): {} accepted, {} rejected{}; {} batches sent, {} done by an earlier run, {} replayed",
        summary.users,
        summary.seconds,
        summary.users_per_second,
        summary.accepted,
        summary.rejected,
        if summary.rejected > 0 { format!(" (see {}.rejected.ndjson)", args.file.display()) } else { String::new() },
        summary.batches,
        summary.skipped_batches,
        summary.replayed_batches,
    );
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    Ok(())
}

pub async fn count_formats(target: &Target) -> Result<(), CommandError> {
    let table = target.resource("USERS_TABLE", "UsersTableName").await?;
    let store = UserStore::new(aws_sdk_dynamodb::Client::new(&target.sdk), table);
    let count = store
        .count_formats()
        .await
        .map_err(|source| CommandError::Aws {
            what: "the users table",
            source,
        })?;
    println!(
        "{}",
        serde_json::to_string(&count).map_err(|e| e.to_string())?
    );
    Ok(())
}
