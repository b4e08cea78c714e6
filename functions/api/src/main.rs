use lambda_http::{run, service_fn, Error, Request};
use vibefollow_users::{aws::sdk_config, config::Resources, http::App, telemetry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let app = App::new(&sdk_config().await, &Resources::from_env()?);
    app.open_connections().await;
    let app = &app;
    run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(app.handle(request).await)
    }))
    .await
}
