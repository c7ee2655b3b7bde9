//! One gRPC call over a bare HTTP/2 connection (hyper), for tests that must
//! see exactly what the server answered: tonic's client enforces a request's
//! `grpc-timeout` locally (CANCELLED "Timeout expired"), which would hide the
//! server's own DEADLINE_EXCEEDED.

/// Sends one unary call over a bare HTTP/2 connection, so no client-side
/// deadline enforcement can answer in the server's place; returns the
/// grpc-status the server sent.
pub async fn raw_unary_status(
    addr: std::net::SocketAddr,
    path: &str,
    message: &impl prost::Message,
    grpc_timeout: &str,
) -> String {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|status| status.to_str().unwrap().to_string())
        .unwrap_or_default()
}
