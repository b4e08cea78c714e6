use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use vibefollow_users::aws_lambda_events::sqs::SqsEvent;
use vibefollow_users::{
    aws::sdk_config, config::Resources, lambda::webhooks::WebhooksFunction, telemetry,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let webhooks = WebhooksFunction::on_aws(&sdk_config().await, &Resources::from_env()?)?;
    let webhooks = &webhooks;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = i64::try_from(event.context.deadline).unwrap_or(i64::MAX);
        Ok::<_, Error>(webhooks.handle(event.payload, deadline).await)
    }))
    .await
}
