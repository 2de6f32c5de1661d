//! The error answers lameduck writes itself, in the shape every lameduck service uses:
//! `{"error":{"code":"...","message":"..."}}` with `Content-Type: application/json`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

/// A `status` response whose body is the JSON error object with `code` and `message`. The
/// body type leaves room for the application's own (`Either::Left`), so a middleware that
/// answers early keeps the response body unboxed.
pub(crate) fn error_response<B>(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<Either<B, Full<Bytes>>> {
    let mut body = String::with_capacity(40 + code.len() + message.len());
    body.push_str("{\"error\":{\"code\":");
    crate::json::push_string(&mut body, code);
    body.push_str(",\"message\":");
    crate::json::push_string(&mut body, message);
    body.push_str("}}");
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn the_body_is_the_error_object_with_escaped_text() {
        let res = error_response::<Full<Bytes>>(StatusCode::CONFLICT, "conflict", "a \"b\"");
        assert_eq!(res.status(), 409);
        assert_eq!(res.headers()["content-type"], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "conflict");
        assert_eq!(v["error"]["message"], "a \"b\"");
    }
}
