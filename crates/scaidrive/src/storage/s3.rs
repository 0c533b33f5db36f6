//! S3-compatible object store (Garage, MinIO, AWS, s3s-fs in tests): path-style requests to
//! one bucket, keys exactly as the local layout. A successful PUT is durable by S3's contract,
//! which is what the "bytes before the row" rule needs.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as AwsByteStream;
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::{ByteStream, ObjectStore};
use crate::config::S3Config;

pub struct S3Store {
    client: Client,
    bucket: String,
}

fn io_err<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> std::io::Error {
    let code = e.code().map(str::to_string).unwrap_or_default();
    let kind = match code.as_str() {
        "NoSuchKey" | "NotFound" | "NoSuchBucket" => std::io::ErrorKind::NotFound,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(
        kind,
        format!("s3 {code}: {}", e.message().unwrap_or("request failed")),
    )
}

fn status<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}

impl S3Store {
    /// Connect and make sure the bucket exists (created when missing).
    pub async fn connect(cfg: &S3Config) -> std::io::Result<S3Store> {
        let creds = Credentials::new(&cfg.access_key, &cfg.secret_key, None, None, "scaidrive");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(creds)
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(&cfg.endpoint)
            .force_path_style(true)
            .build();
        let store = S3Store {
            client: Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
        };
        match store
            .client
            .head_bucket()
            .bucket(&store.bucket)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {
                store
                    .client
                    .create_bucket()
                    .bucket(&store.bucket)
                    .send()
                    .await
                    .map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        Ok(store)
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> std::io::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(AwsByteStream::from(data))
            .send()
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn get(&self, key: &str, offset: u64, len: Option<u64>) -> std::io::Result<ByteStream> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        match len {
            Some(0) => return Ok(futures::stream::empty().boxed()),
            Some(n) => req = req.range(format!("bytes={offset}-{}", offset + n - 1)),
            None if offset > 0 => req = req.range(format!("bytes={offset}-")),
            None => {}
        }
        let out = req.send().await.map_err(io_err)?;
        Ok(ReaderStream::with_capacity(out.body.into_async_read(), 1 << 20).boxed())
    }

    async fn read_all(&self, key: &str) -> std::io::Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(io_err)?;
        let data = out.body.collect().await.map_err(std::io::Error::other)?;
        Ok(data.into_bytes())
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> std::io::Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn put_new(&self, key: &str, data: Bytes) -> std::io::Result<bool> {
        // `If-None-Match: *` makes the PUT conditional on servers that support it (AWS, MinIO,
        // Garage); the HEAD before it covers servers that ignore the header, except for two
        // writers racing on the same key.
        if self.exists(key).await? {
            return Ok(false);
        }
        match self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(AwsByteStream::from(data))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(status(&e), Some(412) | Some(409)) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn promote(&self, from: &str, to: &str) -> std::io::Result<bool> {
        match self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(to)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(io_err)?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            // Plain deletes, a few at a time: every S3-compatible server has DeleteObject.
            let results: Vec<std::io::Result<()>> = futures::stream::iter(keys)
                .map(|k| async move { self.delete(&k).await })
                .buffer_unordered(16)
                .collect()
                .await;
            results.into_iter().collect::<std::io::Result<()>>()?;
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(());
            }
        }
    }

    async fn ready(&self) -> bool {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
    }
}
