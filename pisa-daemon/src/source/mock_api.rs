//! Test-only pieces for driving the kube sources against a mocked API
//! server at the HTTP boundary (tower-test): the response body type, JSON
//! bodies, watch events, the client, and waiting for a reflector.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use kube::Client;
use serde_json::{json, Value};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Body>>;

/// A whole JSON response body.
pub fn full(value: Value) -> Body {
    Full::new(Bytes::from(value.to_string())).boxed_unsync()
}

/// One line of a watch stream.
pub fn event(kind: &str, object: Value) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!(
        "{}\n",
        json!({"type": kind, "object": object})
    ))))
}

/// A client whose requests the returned handle answers.
pub fn mock_client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// Waits up to 2 s for `check`, which reads a reflector's store.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
