//! Adapters to the world outside AWS: the customers' own endpoints, reached over HTTPS
//! for webhooks (`docs/webhooks.md` §3).

pub mod webhook_client;
