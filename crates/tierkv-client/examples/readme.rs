use std::time::Duration;

use tierkv_client::convert::{json_from_proto, json_to_proto};
use tierkv_client::proto::v1::{get_response, put_request, GetRequest, PutRequest};
use tierkv_client::retry::RetryPolicy;
use tierkv_client::{deadline, Client, ConnectOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `https://` for TLS (system roots, or `.with_ca_pem(…)`); a token if the server has `[auth]`.
    let mut options = ConnectOptions::new("http://127.0.0.1:50051");
    if let Ok(token) = std::env::var("TIERKV_TOKEN") {
        options = options.with_token(token);
    }
    let client = Client::connect(options).await?;

    // A write, with a 2 s deadline. Not retried: an UNAVAILABLE can come after it committed.
    let mut kv = client.kv();
    let put = PutRequest {
        key: "user:1".into(),
        value: Some(put_request::Value::Json(json_to_proto(
            serde_json::json!({"name": "Ada"}),
        ))),
        ..Default::default()
    };
    let written = deadline::call(Duration::from_secs(2), put, |request| kv.put(request)).await?;
    println!("version {}", written.into_inner().version);

    // A read, retried on UNAVAILABLE and on RESOURCE_EXHAUSTED with a RetryInfo, 1 s per attempt.
    let got = RetryPolicy::default()
        .run(|_| {
            let mut kv = client.kv();
            let request = GetRequest {
                key: "user:1".into(),
                ..Default::default()
            };
            async move { deadline::call(Duration::from_secs(1), request, |r| kv.get(r)).await }
        })
        .await?
        .into_inner();
    if let Some(get_response::Value::Json(json)) = got.value {
        println!("{}", json_from_proto(json)?);
    }
    Ok(())
}
