use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use vibefollow_users::aws_lambda_events::dynamodb::Event;
use vibefollow_users::{
    aws::sdk_config, config::Resources, lambda::stream::ChangesFunction, telemetry,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let changes = ChangesFunction::on_aws(&sdk_config().await, &Resources::from_env()?);
    let changes = &changes;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<_, Error>(changes.handle(event.payload).await)
    }))
    .await
}
