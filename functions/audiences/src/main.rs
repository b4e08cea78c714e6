use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;
use vibefollow_users::{
    aws::sdk_config, config::Resources, lambda::audiences::AudiencesFunction, telemetry,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let audiences = AudiencesFunction::on_aws(&sdk_config().await, &Resources::from_env()?);
    let audiences = &audiences;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        Ok::<_, Error>(audiences.handle(event.payload, deadline).await?)
    }))
    .await
}
