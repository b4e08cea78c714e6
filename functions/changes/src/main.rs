use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use vibefollow_users::store::StreamEvent;
use vibefollow_users::{
    aws::sdk_config, aws_sdk_eventbridge, changes::Publisher, config::Resources, events::EventBus,
    telemetry,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let resources = Resources::from_env()?;
    let eventbridge = aws_sdk_eventbridge::Client::new(&sdk_config().await);
    let publisher = Publisher::new(EventBus::new(eventbridge, resources.event_bus_name));
    let publisher = &publisher;
    run(service_fn(
        move |event: LambdaEvent<StreamEvent>| async move {
            Ok::<_, Error>(publisher.handle(event.payload).await)
        },
    ))
    .await
}
