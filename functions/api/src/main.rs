use lambda_http::{run, service_fn, Error, Request};
use vibefollow_users::{aws::sdk_config, config::Resources, lambda::http::AwsApi, telemetry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let api = AwsApi::on_aws(&sdk_config().await, &Resources::from_env()?).await;
    let api = &api;
    run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(api.handle(request).await)
    }))
    .await
}
