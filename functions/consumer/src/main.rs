use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use vibefollow_users::aws_lambda_events::sqs::SqsEvent;
use vibefollow_users::{
    aws::sdk_config, config::Resources, consumer::Consumer, store::UserStore, telemetry,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let resources = Resources::from_env()?;
    let dynamodb = vibefollow_users::aws_sdk_dynamodb::Client::new(&sdk_config().await);
    let consumer = Consumer::new(
        UserStore::new(dynamodb, resources.users_table),
        resources.metrics_namespace,
    );
    consumer.open_connections().await;
    let consumer = &consumer;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(consumer.handle(event.payload).await)
    }))
    .await
}
