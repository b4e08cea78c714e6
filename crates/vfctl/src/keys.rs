//! `vfctl keys`: API keys in the stack's keys table. A key is shown once, when it is
//! created; the table keeps its hash.

use crate::cli::{CreateArgs, KeysCommand};
use crate::error::CommandError;
use crate::target::Target;
use vibefollow_users::aws::dynamodb::ApiKeyStore;
use vibefollow_users::clock::now_millis;
use vibefollow_users::domain::auth::{generate_key, key_hash, key_id, ApiKeyRecord};
use vibefollow_users::domain::format_millis;

pub async fn run(target: &Target, command: KeysCommand) -> Result<(), CommandError> {
    let table = target
        .resource("API_KEYS_TABLE", "ApiKeysTableName")
        .await?;
    let store = ApiKeyStore::new(aws_sdk_dynamodb::Client::new(&target.sdk), table);
    match command {
        KeysCommand::Create(args) => create(&store, args).await,
        KeysCommand::List { workspace } => list(&store, &workspace).await,
        KeysCommand::Revoke { key } => revoke(&store, &key).await,
    }
}

async fn create(store: &ApiKeyStore, args: CreateArgs) -> Result<(), CommandError> {
    let key = generate_key(args.test);
    let hash = key_hash(&key);
    let mut scopes = args.scopes;
    scopes.sort();
    scopes.dedup();
    let record = ApiKeyRecord {
        key_id: key_id(&hash),
        workspace_id: args.workspace,
        scopes,
        rate_limit: args.rate_limit,
        created_at: now_millis(),
        revoked: false,
    };
    store
        .put(&hash, &record)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    eprintln!(
        "created {} for workspace {}",
        record.key_id, record.workspace_id
    );
    println!("{key}");
    Ok(())
}

async fn list(store: &ApiKeyStore, workspace: &str) -> Result<(), CommandError> {
    let mut keys = store
        .list(workspace)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    keys.sort_by_key(|k| k.created_at);
    println!(
        "{:<22} {:<40} {:>10} {:<25} revoked",
        "key_id", "scopes", "rate_limit", "created"
    );
    for key in keys {
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        let created = format_millis(key.created_at).unwrap_or_default();
        println!(
            "{:<22} {:<40} {:>10} {:<25} {}",
            key.key_id,
            scopes.join(","),
            key.rate_limit
                .map_or_else(|| "default".to_owned(), |rate| rate.to_string()),
            created,
            key.revoked
        );
    }
    Ok(())
}

async fn revoke(store: &ApiKeyStore, key: &str) -> Result<(), CommandError> {
    let target = if key.starts_with("sk_") {
        key_hash(key)
    } else {
        key.to_owned()
    };
    let revoked = store
        .revoke(&target)
        .await
        .map_err(CommandError::aws("the keys table"))?;
    if revoked {
        eprintln!("revoked; refused everywhere within 60 seconds");
        Ok(())
    } else {
        Err(CommandError::Setup("no such key".into()))
    }
}
