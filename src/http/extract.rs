//! Extractors: bodies (capped), JSON objects, query parameters.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::error::Error;

/// Reads a whole request body of at most `limit` bytes.
pub(crate) async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, Error> {
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Error::PayloadTooLarge { limit })
        }
        Err(_) => Err(Error::BadRequest("could not read the request body".into())),
    }
}

/// Refuses a declared body larger than `limit` without reading it.
pub(crate) fn reject_large_body(headers: &HeaderMap, limit: u64) -> Result<(), Error> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(Error::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Reads a JSON object body (an empty body is `{}`).
pub(crate) async fn read_json(body: Incoming, limit: u64) -> Result<serde_json::Value, Error> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| Error::BadRequest("the body is not valid JSON".into()))?;
    if !v.is_object() {
        return Err(Error::BadRequest("the body must be a JSON object".into()));
    }
    Ok(v)
}

/// The decoded value of query parameter `name` (first occurrence); `Err` if it is not valid
/// percent-encoded UTF-8.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, Error> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return percent_decode(&v.replace('+', " "))
                .map(Some)
                .ok_or_else(|| Error::BadRequest(format!("query parameter {name} is malformed")));
        }
    }
    Ok(None)
}

pub(crate) use crate::options::percent_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_query_parameters() {
        assert_eq!(percent_decode("a%2Fb%C3%A9").as_deref(), Some("a/bé"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            query_param(Some("limit=5&cursor=x%3Dy"), "cursor")
                .unwrap()
                .as_deref(),
            Some("x=y")
        );
        assert_eq!(query_param(None, "limit").unwrap(), None);
        assert!(query_param(Some("owner=%E0"), "owner").is_err());
    }
}
