//! `vfctl events tail`: the change events that reach the local stack's sink.

use crate::error::CommandError;
use vibefollow_users::aws::sdk_config;

pub async fn tail_events(local: bool, count: Option<usize>) -> Result<(), CommandError> {
    if !local {
        return Err("events tail reads the local stack's sink (--local); on AWS, add a rule on the bus named by the stack's EventBusName output".into());
    }
    let sink = std::env::var("VF_EVENT_SINK_URL")
        .map_err(|_| "this local stack has no event sink: `make dev` starts one")?;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config().await);
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        let received = sqs
            .receive_message()
            .queue_url(&sink)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| CommandError::aws("the event sink")(e.into()))?;
        for message in received.messages() {
            if count.is_some_and(|count| printed >= count) {
                break;
            }
            println!("{}", message.body().unwrap_or_default());
            printed += 1;
            if let Some(handle) = message.receipt_handle() {
                sqs.delete_message()
                    .queue_url(&sink)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| CommandError::aws("the event sink")(e.into()))?;
            }
        }
    }
    Ok(())
}
