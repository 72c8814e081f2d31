//! S3 backend (AWS S3, Garage, MinIO, R2…): originals and derived results in two buckets.
//!
//! Credentials come from the standard AWS chain (`AWS_ACCESS_KEY_ID`, profiles, web identity…);
//! region and endpoint from config. Checksums are only sent/validated when an operation requires
//! them, which keeps S3-compatible servers that lag AWS's newest checksum headers working.
//! Reads check `Content-Length` before streaming and stop at the cap while streaming.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::{Bytes, BytesMut};

use super::StorageConfig;
use super::{Bucket, ObjectKey, ObjectStore, StorageError, with_deadline};

/// Objects in S3 buckets.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    originals: String,
    derived: String,
    audit: String,
    timeout: Duration,
    /// `storage.s3_sse`: server-side encryption asked for on every PUT.
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
}

impl S3Store {
    /// Builds the client (no network I/O happens here); credentials from the AWS chain.
    pub async fn new(cfg: &StorageConfig) -> S3Store {
        S3Store::with_credentials(cfg, None).await
    }

    /// As [`S3Store::new`], with these credentials (access key id, secret) when given.
    pub async fn with_credentials(
        cfg: &StorageConfig,
        credentials: Option<(String, String)>,
    ) -> S3Store {
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let conf = client_config(cfg, &cfg.s3_endpoint, &cfg.s3_region, credentials).await;
        S3Store {
            client: Client::from_conf(conf),
            originals: cfg.s3_bucket.clone(),
            derived: cfg.s3_derived_bucket.clone(),
            audit: if cfg.s3_audit_bucket.is_empty() {
                cfg.s3_bucket.clone()
            } else {
                cfg.s3_audit_bucket.clone()
            },
            timeout,
            sse: cfg.s3_sse.header().map(ServerSideEncryption::from),
            sse_kms_key_id: (!cfg.s3_sse_kms_key_id.is_empty())
                .then(|| cfg.s3_sse_kms_key_id.clone()),
        }
    }

    /// A PUT of `body` with the store's encryption settings.
    fn put_request(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(self.bucket(bucket))
            .key(key.as_str())
            .content_type(content_type)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .body(ByteStream::from(body))
    }

    fn bucket(&self, b: Bucket) -> &str {
        match b {
            Bucket::Originals => &self.originals,
            Bucket::Derived => &self.derived,
            Bucket::Audit => &self.audit,
        }
    }
}

/// Maps an SDK error; 404 / NoSuchKey / NoSuchBucket-less "not found" become `NotFound`.
pub(super) fn sdk_err<E, R>(e: aws_sdk_s3::error::SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
    aws_sdk_s3::error::SdkError<E, R>: std::error::Error + 'static,
{
    if let Some(se) = e.as_service_error()
        && matches!(se.code(), Some("NoSuchKey") | Some("NotFound"))
    {
        return StorageError::NotFound;
    }
    if let aws_sdk_s3::error::SdkError::TimeoutError(_) = e {
        return StorageError::Timeout;
    }
    StorageError::Backend(DisplayErrorContext(&e).to_string())
}

/// A conditional request's answer: `true` done, `false` its precondition failed (412).
pub(super) fn precondition<T, E>(
    r: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> Result<bool, StorageError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>:
        std::error::Error + 'static,
{
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
        Err(e) => Err(sdk_err(e)),
    }
}

/// An S3 client with `cfg`'s timeouts, retries, path style and checksum policy, for `endpoint`
/// (empty: AWS) and `region`; credentials from the standard AWS chain unless `credentials`
/// (access key id, secret) are given. `pixgate import` reads other services with it.
pub async fn client_config(
    cfg: &StorageConfig,
    endpoint: &str,
    region: &str,
    credentials: Option<(String, String)>,
) -> aws_sdk_s3::Config {
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .timeout_config({
            let t = TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(timeout))
                .operation_timeout(timeout);
            match cfg.s3_attempt_timeout_ms {
                0 => t,
                ms => t.operation_attempt_timeout(Duration::from_millis(ms)),
            }
            .build()
        })
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(u32::try_from(cfg.s3_max_attempts).unwrap_or(3)),
        );
    if !endpoint.is_empty() {
        loader = loader.endpoint_url(endpoint.to_owned());
    }
    if let Some((id, secret)) = credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id,
            secret,
            None,
            None,
            "pixgate-import",
        ));
    }
    let shared = loader.load().await;
    aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.s3_force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build()
}

/// The body of a GET, at most `max_bytes`: refused from `Content-Length` before streaming,
/// and stopped at the cap while streaming (a lying length cannot make it read more).
pub async fn read_capped(
    out: aws_sdk_s3::operation::get_object::GetObjectOutput,
    max_bytes: u64,
) -> Result<Bytes, StorageError> {
    let declared = out.content_length().unwrap_or(0).max(0) as u64;
    if declared > max_bytes {
        return Err(StorageError::TooLarge { limit: max_bytes });
    }
    let mut body = out.body;
    let mut buf = BytesMut::with_capacity(declared as usize);
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| StorageError::Backend(DisplayErrorContext(&e).to_string()))?
    {
        if (buf.len() + chunk.len()) as u64 > max_bytes {
            return Err(StorageError::TooLarge { limit: max_bytes });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let req = self.put_request(bucket, key, body, content_type);
        with_deadline(self.timeout, async move {
            req.send().await.map(|_| ()).map_err(sdk_err)
        })
        .await
    }

    async fn copy_in(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        from: &super::foreign::Reference,
        content_type: &str,
    ) -> Result<bool, StorageError> {
        let req = self
            .client
            .copy_object()
            .bucket(self.bucket(bucket))
            .key(key.as_str())
            .copy_source(super::foreign::copy_source(&from.bucket, &from.key))
            .copy_source_if_match(&from.etag)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type(content_type)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone());
        with_deadline(self.timeout, async move { precondition(req.send().await) }).await
    }

    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        body: Bytes,
        content_type: &str,
    ) -> Result<bool, StorageError> {
        let req = self
            .put_request(bucket, key, body, content_type)
            .if_none_match("*");
        with_deadline(self.timeout, async move { precondition(req.send().await) }).await
    }

    async fn get(
        &self,
        bucket: Bucket,
        key: &ObjectKey,
        max_bytes: u64,
    ) -> Result<Bytes, StorageError> {
        let req = self
            .client
            .get_object()
            .bucket(self.bucket(bucket))
            .key(key.as_str());
        with_deadline(self.timeout, async move {
            let out = req.send().await.map_err(sdk_err)?;
            read_capped(out, max_bytes).await
        })
        .await
    }

    async fn delete(&self, bucket: Bucket, key: &ObjectKey) -> Result<(), StorageError> {
        let req = self
            .client
            .delete_object()
            .bucket(self.bucket(bucket))
            .key(key.as_str());
        with_deadline(self.timeout, async move {
            match req.send().await.map_err(sdk_err) {
                Ok(_) | Err(StorageError::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<ObjectKey>, StorageError> {
        let bucket = self.bucket(bucket).to_owned();
        with_deadline(self.timeout, async move {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(sdk_err)?;
                for obj in out.contents() {
                    // Objects written by others under a non-conforming name are skipped.
                    if let Some(k) = obj.key().and_then(|k| ObjectKey::new(k).ok()) {
                        keys.push(k);
                    }
                }
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn list_page(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectKey>, StorageError> {
        Ok(self
            .list_page_dated(bucket, prefix, start_after, max)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    async fn list_page_dated(
        &self,
        bucket: Bucket,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(ObjectKey, std::time::SystemTime)>, StorageError> {
        let req = self
            .client
            .list_objects_v2()
            .bucket(self.bucket(bucket))
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .max_keys(i32::try_from(max.min(1000)).unwrap_or(1000));
        with_deadline(self.timeout, async move {
            let out = req.send().await.map_err(sdk_err)?;
            let mut keys: Vec<(ObjectKey, std::time::SystemTime)> = out
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = o.key().and_then(|k| ObjectKey::new(k).ok())?;
                    let modified = o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    Some((key, modified))
                })
                .collect();
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn check(&self) -> Result<(), StorageError> {
        with_deadline(self.timeout, async move {
            for b in [&self.originals, &self.derived] {
                self.client
                    .head_bucket()
                    .bucket(b)
                    .send()
                    .await
                    .map_err(sdk_err)?;
            }
            Ok(())
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "s3"
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Accepts one connection, answers `200 OK`, and returns the request head it received.
    async fn capture_one(listener: tokio::net::TcpListener) -> String {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            n += sock.read(&mut buf[n..]).await.unwrap();
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    }

    #[tokio::test]
    async fn configured_sse_is_sent_with_every_put() {
        // Credentials for the SDK's signer only; nothing leaves loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = StorageConfig {
            backend: crate::storage::Backend::S3,
            s3_endpoint: format!("http://{addr}"),
            s3_region: "test".into(),
            s3_bucket: "o".into(),
            s3_derived_bucket: "d".into(),
            s3_audit_bucket: String::new(),
            s3_force_path_style: true,
            s3_sse: crate::storage::Sse::Kms,
            s3_sse_kms_key_id: "key-1234".into(),
            ..StorageConfig::default()
        };
        let creds = aws_sdk_s3::config::Credentials::new("AK", "SK", None, None, "test");
        let mut store = S3Store::new(&cfg).await;
        let conf = store
            .client
            .config()
            .to_builder()
            .credentials_provider(creds)
            .build();
        store.client = Client::from_conf(conf);
        let head = tokio::spawn(capture_one(listener));
        store
            .put(
                Bucket::Originals,
                &ObjectKey::new("images/x/original").unwrap(),
                Bytes::from_static(b"abc"),
                "image/png",
            )
            .await
            .unwrap();
        let head = head.await.unwrap();
        assert!(head.starts_with("put /o/images/x/original"), "{head}");
        assert!(
            head.contains("x-amz-server-side-encryption: aws:kms"),
            "{head}"
        );
        assert!(
            head.contains("x-amz-server-side-encryption-aws-kms-key-id: key-1234"),
            "{head}"
        );
    }
}
