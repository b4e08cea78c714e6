use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use vibefollow_users::aws_lambda_events::sqs::SqsEvent;
use vibefollow_users::{aws::sdk_config, config::Resources, lambda::sqs::Consumer, telemetry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let consumer = Consumer::on_aws(&sdk_config().await, &Resources::from_env()?).await;
    let consumer = &consumer;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(consumer.handle(event.payload).await)
    }))
    .await
}
