//! Where a command's resources are: the local stack's environment (`make dev`), a
//! deployed stack's CloudFormation outputs, or names left in the environment.

use crate::error::CommandError;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};

/// Written by `dev/stack.py` while the local stack runs (in `VF_LOCAL_DIR` if set).
const LOCAL_ENV_FILE: &str = "stack.env";

/// Where a command's resources are: the local stack, a deployed stack's outputs, or
/// the environment.
pub struct Target {
    pub sdk: aws_config::SdkConfig,
    pub stack: Option<String>,
    pub local: bool,
}

impl Target {
    /// A resource named by environment variable `variable` (the local stack sets them),
    /// or by the stack's output `output`. An explicit --stack wins over a name left in
    /// the environment.
    pub async fn resource(&self, variable: &str, output: &str) -> Result<String, CommandError> {
        match (&self.stack, std::env::var(variable)) {
            (Some(stack), _) => stack_output(&self.sdk, stack, output).await,
            (None, Ok(name)) => Ok(name),
            (None, Err(_)) if self.local => Err(CommandError::Setup(format!(
                "the local stack's environment names no {variable}"
            ))),
            (None, Err(_)) => stack_output(&self.sdk, &default_stack_name()?, output).await,
        }
    }
}

/// `stack_name` of samconfig.toml's default environment, as `sam deploy` uses it.
fn default_stack_name() -> Result<String, CommandError> {
    let text = std::fs::read_to_string("samconfig.toml")
        .map_err(|_| "no --stack given and no samconfig.toml here to take the default from")?;
    let config: toml::Table = text
        .parse()
        .map_err(|e| format!("samconfig.toml is not valid TOML: {e}"))?;
    config
        .get("default")
        .and_then(|default| default.get("global"))
        .and_then(|global| global.get("parameters"))
        .and_then(|parameters| parameters.get("stack_name"))
        .and_then(|name| name.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "samconfig.toml names no default stack_name: pass --stack".into())
}

/// One output of a deployed stack, with errors that say what to do.
async fn stack_output(
    sdk: &aws_config::SdkConfig,
    stack: &str,
    output: &str,
) -> Result<String, CommandError> {
    let region = sdk
        .region()
        .map_or("(no region)".to_owned(), ToString::to_string);
    let described = aws_sdk_cloudformation::Client::new(sdk)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|err| {
            let message = err.as_service_error().and_then(|e| e.message()).unwrap_or_default();
            if message.contains("does not exist") {
                format!("stack {stack} not found in {region}: deploy it (`make deploy`), or pass --stack and --region")
            } else {
                format!("cannot read stack {stack} in {region}: {}", DisplayErrorContext(&err))
            }
        })?;
    described
        .stacks()
        .first()
        .into_iter()
        .flat_map(|s| s.outputs())
        .find(|o| o.output_key() == Some(output))
        .and_then(|o| o.output_value())
        .map(str::to_owned)
        .ok_or_else(|| {
            let message =
                format!("stack {stack} has no output {output}: is it a VibeFollow Users stack?");
            CommandError::Setup(message)
        })
}

pub fn load_local_env() -> Result<(), CommandError> {
    let dir = std::env::var("VF_LOCAL_DIR").unwrap_or_else(|_| ".local".to_owned());
    let path = format!("{dir}/{LOCAL_ENV_FILE}");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("{path} not found: start the local stack with `make dev` first"))?;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        if let Some((name, value)) = line.split_once('=') {
            std::env::set_var(name.trim(), value.trim());
        }
    }
    Ok(())
}
