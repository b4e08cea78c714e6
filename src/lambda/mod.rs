//! The edges: each turns a Lambda event into a use-case call and its result into what
//! Lambda expects back, with one log line per request or batch.

pub mod http;
pub mod sqs;
pub mod stream;
