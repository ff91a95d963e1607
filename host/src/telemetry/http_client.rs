//! OTLP over HTTP through `ureq`, the blocking client the CLI already
//! uses: the exporters call it on their own threads (the SDK's batch
//! processor and periodic reader run one each), never on the runtime's.

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// The most of a collector's answer read (it is a short protobuf).
const MAX_ANSWER: u64 = 1 << 20;

/// Sends each export as one request.
#[derive(Debug)]
pub struct Ureq(ureq::Agent);

impl Ureq {
    pub fn new(timeout: std::time::Duration) -> Ureq {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Ureq(ureq::Agent::new_with_config(config))
    }
}

#[async_trait::async_trait]
impl HttpClient for Ureq {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, body.to_vec());
        let (parts, mut body) = self.0.run(request)?.into_parts();
        let answer = body.with_config().limit(MAX_ANSWER).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(answer)))
    }
}
