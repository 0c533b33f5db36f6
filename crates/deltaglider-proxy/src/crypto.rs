//! Encryption at rest, mode `aes256-gcm-proxy`: a backend wrapper that encrypts after the
//! delta engine (compression first, then encryption). Deltas and references (bounded by the
//! size cap) use single-shot AES-256-GCM (`dg-encrypted: aes-256-gcm-v1`, body = 12-byte nonce
//! ‖ ciphertext ‖ tag); passthrough objects use the streaming DGE1 format
//! (`aes-256-gcm-chunked-v1`): "DGE1" ‖ 12-byte base IV, then frames of u32-LE length ‖
//! ciphertext+tag over 64 KiB plaintext chunks; nonce_i = base_iv XOR i (96-bit big endian),
//! AAD_i = "DGE1" ‖ i (u32 LE) ‖ final flag ‖ 0,0,0, so chunks cannot be reordered or cut.
//! Every write is stamped with `dg-encryption-key-id`; a legacy key may decrypt only.

use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::backend::{Backend, ByteStream, PutData, StoredObject};
use crate::error::ProxyError;
use crate::meta::{FileMetadata, Note};

pub const SINGLE: &str = "aes-256-gcm-v1";
pub const CHUNKED: &str = "aes-256-gcm-chunked-v1";
const MAGIC: &[u8; 4] = b"DGE1";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const FRAME: u64 = (4 + CHUNK + TAG) as u64;
const HEADER: u64 = 16;

/// One key generation: id and AES-256 key.
#[derive(Clone)]
pub struct KeyGen {
    pub id: String,
    key: [u8; 32],
}

impl KeyGen {
    /// Parses a 64-hex-char key; the id is explicit or derived from the backend name.
    pub fn parse(backend: &str, hex_key: &str, id: Option<&str>) -> Result<Self, ProxyError> {
        let raw = hex::decode(hex_key.trim()).map_err(|_| {
            ProxyError::Config(format!(
                "backend {backend:?}: encryption key must be 64 hex characters"
            ))
        })?;
        let key: [u8; 32] = raw.try_into().map_err(|_| {
            ProxyError::Config(format!(
                "backend {backend:?}: encryption key must be 64 hex characters"
            ))
        })?;
        let id = match id {
            Some(i) => {
                if i.is_empty()
                    || i.len() > 64
                    || !i
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    return Err(ProxyError::Config(format!(
                        "backend {backend:?}: key_id must match [A-Za-z0-9_.-]{{1,64}}"
                    )));
                }
                i.to_string()
            }
            None => {
                let mut h = Sha256::new();
                h.update(backend.as_bytes());
                h.update([0u8]);
                h.update(key);
                hex::encode(&h.finalize()[..16])
            }
        };
        Ok(KeyGen { id, key })
    }

    pub fn same_key(&self, other: &KeyGen) -> bool {
        self.key == other.key
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.key).into())
    }
}

fn nonce_for(base: &[u8; 12], i: u64) -> [u8; 12] {
    let mut n = *base;
    let ib = (i as u128).to_be_bytes();
    for k in 0..12 {
        n[k] ^= ib[4 + k];
    }
    n
}

fn aad_for(i: u64, last: bool) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(MAGIC);
    a[4..8].copy_from_slice(&(i as u32).to_le_bytes());
    a[8] = last as u8;
    a
}

fn tamper() -> ProxyError {
    ProxyError::Integrity(
        "decryption failed: the object was tampered with, reordered or truncated".into(),
    )
}

pub fn encrypt_single(k: &KeyGen, plain: &[u8]) -> Result<Vec<u8>, ProxyError> {
    let nonce: [u8; 12] = rand::random();
    let ct = k
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), plain)
        .map_err(|_| ProxyError::Internal("encrypt failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

pub fn decrypt_single(k: &KeyGen, body: &[u8]) -> Result<Vec<u8>, ProxyError> {
    if body.len() < 12 + TAG {
        return Err(tamper());
    }
    k.cipher()
        .decrypt(Nonce::from_slice(&body[..12]), &body[12..])
        .map_err(|_| tamper())
}

/// Encrypts a file into the DGE1 chunked format.
pub fn encrypt_file(
    k: &KeyGen,
    src: &std::path::Path,
    dst: &std::path::Path,
) -> Result<(), ProxyError> {
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src)?);
    let len = std::fs::metadata(src)?.len();
    let chunks = len.div_ceil(CHUNK as u64).max(1);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dst)?);
    let base: [u8; 12] = rand::random();
    out.write_all(MAGIC)?;
    out.write_all(&base)?;
    let c = k.cipher();
    let mut buf = vec![0u8; CHUNK];
    for i in 0..chunks {
        let want = (len - i * CHUNK as u64).min(CHUNK as u64) as usize;
        input.read_exact(&mut buf[..want])?;
        let ct = c
            .encrypt(
                Nonce::from_slice(&nonce_for(&base, i)),
                Payload {
                    msg: &buf[..want],
                    aad: &aad_for(i, i + 1 == chunks),
                },
            )
            .map_err(|_| ProxyError::Internal("encrypt failed".into()))?;
        out.write_all(&(ct.len() as u32).to_le_bytes())?;
        out.write_all(&ct)?;
    }
    out.flush()?;
    Ok(())
}

/// Decrypts DGE1 frames `first..` (wire bytes starting at that frame) of an object whose
/// plaintext is `plain_len` bytes.
fn decrypt_frames(
    k: &KeyGen,
    base: &[u8; 12],
    first: u64,
    wire: &[u8],
    plain_len: u64,
) -> Result<Vec<u8>, ProxyError> {
    let chunks = plain_len.div_ceil(CHUNK as u64).max(1);
    let c = k.cipher();
    let mut out = Vec::with_capacity(wire.len());
    let mut pos = 0usize;
    let mut i = first;
    while pos < wire.len() {
        if pos + 4 > wire.len() {
            return Err(tamper());
        }
        let n = u32::from_le_bytes(wire[pos..pos + 4].try_into().map_err(|_| tamper())?) as usize;
        pos += 4;
        if n > CHUNK + TAG || pos + n > wire.len() {
            return Err(tamper());
        }
        let pt = c
            .decrypt(
                Nonce::from_slice(&nonce_for(base, i)),
                Payload {
                    msg: &wire[pos..pos + n],
                    aad: &aad_for(i, i + 1 == chunks),
                },
            )
            .map_err(|_| tamper())?;
        out.extend_from_slice(&pt);
        pos += n;
        i += 1;
    }
    Ok(out)
}

/// Decrypts a whole DGE1 object; a missing final frame (truncation) fails.
pub fn decrypt_whole(k: &KeyGen, body: &[u8], plain_len: u64) -> Result<Vec<u8>, ProxyError> {
    if body.len() < HEADER as usize || &body[..4] != MAGIC {
        return Err(tamper());
    }
    let base: [u8; 12] = body[4..16].try_into().map_err(|_| tamper())?;
    let out = decrypt_frames(k, &base, 0, &body[16..], plain_len)?;
    if out.len() as u64 != plain_len {
        return Err(tamper());
    }
    Ok(out)
}

/// Decrypts DGE1 frames from `first` on as they arrive, one frame (~64 KiB) at a time, so a
/// GET of any size holds about two frames in memory: the frame being read and the one being
/// sent. The first `skip` plaintext bytes are dropped and `want` are yielded; a stream that
/// ends short, or a frame that fails its tag, ends the body with an error (never with
/// bytes that were not authenticated).
fn decrypt_stream(
    wire: ByteStream,
    k: KeyGen,
    base: [u8; 12],
    first: u64,
    plain_len: u64,
    skip: u64,
    want: u64,
) -> ByteStream {
    struct St {
        wire: ByteStream,
        buf: bytes::BytesMut,
        cipher: Aes256Gcm,
        base: [u8; 12],
        i: u64,
        chunks: u64,
        skip: usize,
        left: u64,
    }
    let st = St {
        wire,
        buf: bytes::BytesMut::new(),
        cipher: k.cipher(),
        base,
        i: first,
        chunks: plain_len.div_ceil(CHUNK as u64).max(1),
        skip: skip as usize,
        left: want,
    };
    let io = |e: ProxyError| std::io::Error::other(e.to_string());
    Box::pin(futures::stream::try_unfold(st, move |mut st| async move {
        if st.left == 0 {
            return Ok(None);
        }
        // One whole frame: length prefix, then that many bytes.
        loop {
            if st.buf.len() >= 4 {
                let n = u32::from_le_bytes(st.buf[..4].try_into().expect("4 bytes")) as usize;
                if n > CHUNK + TAG {
                    return Err(io(tamper()));
                }
                if st.buf.len() >= 4 + n {
                    break;
                }
            }
            match st.wire.next().await {
                Some(c) => st.buf.extend_from_slice(&c?),
                None => return Err(io(tamper())),
            }
        }
        let n = u32::from_le_bytes(st.buf[..4].try_into().expect("4 bytes")) as usize;
        let frame = st.buf.split_to(4 + n);
        let pt = st
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce_for(&st.base, st.i)),
                Payload {
                    msg: &frame[4..],
                    aad: &aad_for(st.i, st.i + 1 == st.chunks),
                },
            )
            .map_err(|_| io(tamper()))?;
        st.i += 1;
        let mut out = Bytes::from(pt);
        let skip = st.skip.min(out.len());
        out = out.slice(skip..);
        st.skip -= skip;
        if out.len() as u64 > st.left {
            out.truncate(st.left as usize);
        }
        st.left -= out.len() as u64;
        Ok(Some((out, st)))
    }))
}

async fn collect(s: ByteStream) -> Result<Vec<u8>, ProxyError> {
    let mut s = s;
    let mut v = Vec::new();
    while let Some(c) = s.next().await {
        v.extend_from_slice(&c?);
    }
    Ok(v)
}

/// A backend that encrypts what it stores.
pub struct EncryptedBackend {
    pub inner: Arc<dyn Backend>,
    pub name: String,
    pub current: Option<KeyGen>,
    pub legacy: Option<KeyGen>,
}

impl EncryptedBackend {
    /// The key for an object's marker and id, or the operator-facing error.
    fn key_for(&self, meta: &FileMetadata) -> Result<&KeyGen, ProxyError> {
        let Some(id) = meta.encryption_key_id.as_deref() else {
            // Objects written before key-id stamping decrypt if the key bytes match.
            return self
                .current
                .as_ref()
                .or(self.legacy.as_ref())
                .ok_or_else(|| {
                    ProxyError::Integrity("object is encrypted but no key is configured".into())
                });
        };
        for k in [&self.current, &self.legacy].into_iter().flatten() {
            if k.id == id {
                return Ok(k);
            }
        }
        if self.current.is_none() && self.legacy.is_none() {
            return Err(ProxyError::Integrity(
                "object is encrypted but no key is configured".into(),
            ));
        }
        Err(ProxyError::Integrity(format!(
            "object was encrypted with key id '{id}', but this backend is configured with key id '{}' (rotation without a legacy_key shim, a bucket routed to the wrong backend, or two backends sharing storage with different keys)",
            self.current.as_ref().map(|k| k.id.as_str()).unwrap_or("")
        )))
    }

    async fn meta_of(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError> {
        self.inner.head(bucket, key).await
    }
}

#[async_trait]
impl Backend for EncryptedBackend {
    fn decrypts(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn create_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        self.inner.create_bucket(bucket).await
    }
    async fn delete_bucket(&self, bucket: &str) -> Result<(), ProxyError> {
        self.inner.delete_bucket(bucket).await
    }
    async fn bucket_exists(&self, bucket: &str) -> Result<bool, ProxyError> {
        self.inner.bucket_exists(bucket).await
    }
    async fn list_buckets(&self) -> Result<Vec<(String, DateTime<Utc>)>, ProxyError> {
        self.inner.list_buckets().await
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: PutData,
        meta: &FileMetadata,
    ) -> Result<(), ProxyError> {
        let Some(k) = self.current.clone() else {
            return self.inner.put(bucket, key, data, meta).await;
        };
        if key.ends_with('/') {
            return self.inner.put(bucket, key, data, meta).await;
        }
        let mut meta = meta.clone();
        meta.encryption_key_id = Some(k.id.clone());
        match data {
            PutData::Bytes(b) if meta.note() != Note::Passthrough => {
                meta.encrypted = Some(SINGLE.into());
                let ct = tokio::task::spawn_blocking(move || encrypt_single(&k, &b))
                    .await
                    .map_err(|e| ProxyError::Internal(e.to_string()))??;
                self.inner
                    .put(bucket, key, PutData::Bytes(Bytes::from(ct)), &meta)
                    .await
            }
            data => {
                meta.encrypted = Some(CHUNKED.into());
                let spool = self.inner.spool_dir();
                let (src, remove_src): (PathBuf, bool) = match data {
                    PutData::File(p) => (p, true),
                    PutData::Bytes(b) => {
                        let p = spool.join(format!("plain-{}", uuid::Uuid::new_v4()));
                        std::fs::write(&p, &b)?;
                        (p, true)
                    }
                };
                let dst = spool.join(format!("enc-{}", uuid::Uuid::new_v4()));
                let (s2, d2) = (src.clone(), dst.clone());
                let res = tokio::task::spawn_blocking(move || encrypt_file(&k, &s2, &d2))
                    .await
                    .map_err(|e| ProxyError::Internal(e.to_string()))?;
                if remove_src {
                    let _ = std::fs::remove_file(&src);
                }
                if let Err(e) = res {
                    let _ = std::fs::remove_file(&dst);
                    return Err(e);
                }
                self.inner.put(bucket, key, PutData::File(dst), &meta).await
            }
        }
    }

    async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Bytes, ProxyError> {
        let head = self
            .meta_of(bucket, key)
            .await?
            .ok_or(ProxyError::NoSuchKey)?;
        let body = self.inner.get_bytes(bucket, key).await?;
        let meta = head.meta.unwrap_or_default();
        match meta.encrypted.as_deref() {
            // Native SSE objects are plain to the proxy: never decrypted, never probed.
            None if meta.encrypted_native.is_some() => Ok(body),
            None => {
                if body.starts_with(MAGIC) {
                    return Err(ProxyError::Integrity("object body starts with DGE1 but carries no dg-encrypted marker: xattrs may have been stripped during backup/restore".into()));
                }
                Ok(body)
            }
            Some(SINGLE) => Ok(Bytes::from(decrypt_single(self.key_for(&meta)?, &body)?)),
            Some(CHUNKED) => {
                if body.len() < HEADER as usize {
                    return Err(tamper());
                }
                let base: [u8; 12] = body[4..16].try_into().map_err(|_| tamper())?;
                Ok(Bytes::from(decrypt_frames(
                    self.key_for(&meta)?,
                    &base,
                    0,
                    &body[16..],
                    meta.file_size,
                )?))
            }
            Some(other) => Err(ProxyError::Integrity(format!(
                "unknown encryption marker {other:?}"
            ))),
        }
    }

    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, ProxyError> {
        let head = self
            .meta_of(bucket, key)
            .await?
            .ok_or(ProxyError::NoSuchKey)?;
        let meta = head.meta.clone().unwrap_or_default();
        match meta.encrypted.as_deref() {
            None if meta.encrypted_native.is_some() => {
                self.inner.get_stream(bucket, key, range).await
            }
            None => {
                {
                    let probe = collect(
                        self.inner
                            .get_stream(bucket, key, Some(0..4.min(head.size)))
                            .await?,
                    )
                    .await?;
                    if probe == MAGIC {
                        return Err(ProxyError::Integrity("object body starts with DGE1 but carries no dg-encrypted marker: xattrs may have been stripped during backup/restore".into()));
                    }
                }
                self.inner.get_stream(bucket, key, range).await
            }
            Some(CHUNKED) => {
                // Map the plaintext range to whole frames; fetch only those plus the header.
                let k = self.key_for(&meta)?.clone();
                let len = meta.file_size;
                let r = range.unwrap_or(0..len);
                if r.start >= r.end {
                    return Ok(Box::pin(futures::stream::empty()));
                }
                let (a, b) = (r.start / CHUNK as u64, (r.end - 1) / CHUNK as u64);
                let header =
                    collect(self.inner.get_stream(bucket, key, Some(0..HEADER)).await?).await?;
                if header.len() != HEADER as usize || &header[..4] != MAGIC {
                    return Err(tamper());
                }
                let base: [u8; 12] = header[4..16].try_into().map_err(|_| tamper())?;
                let wire_end = (HEADER + (b + 1) * FRAME).min(head.size);
                let wire = self
                    .inner
                    .get_stream(bucket, key, Some(HEADER + a * FRAME..wire_end))
                    .await?;
                Ok(decrypt_stream(
                    wire,
                    k,
                    base,
                    a,
                    len,
                    r.start - a * CHUNK as u64,
                    r.end - r.start,
                ))
            }
            Some(_) => {
                let all = self.get_bytes(bucket, key).await?;
                let r = range.unwrap_or(0..all.len() as u64);
                Ok(Box::pin(futures::stream::iter([Ok(
                    all.slice(r.start as usize..r.end as usize)
                )])))
            }
        }
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, ProxyError> {
        self.inner.head(bucket, key).await
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ProxyError> {
        self.inner.delete(bucket, key).await
    }
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        with_meta: bool,
    ) -> Result<Vec<StoredObject>, ProxyError> {
        self.inner.list(bucket, prefix, with_meta).await
    }
    fn spool_dir(&self) -> PathBuf {
        self.inner.spool_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_round_trip_and_tamper_detection() {
        let k = KeyGen::parse("b", &"11".repeat(32), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (src, dst) = (dir.path().join("p"), dir.path().join("c"));
        std::fs::write(&src, &plain).unwrap();
        encrypt_file(&k, &src, &dst).unwrap();
        let wire = std::fs::read(&dst).unwrap();
        assert_eq!(
            wire.len() as u64,
            HEADER + 3 * FRAME + 4 + (200_000 - 3 * CHUNK as u64) + TAG as u64
        );
        let base: [u8; 12] = wire[4..16].try_into().unwrap();
        assert_eq!(
            decrypt_frames(&k, &base, 0, &wire[16..], plain.len() as u64).unwrap(),
            plain
        );
        // Truncation (drop the final frame) and reordering fail.
        assert_eq!(decrypt_whole(&k, &wire, plain.len() as u64).unwrap(), plain);
        let cut = &wire[..16 + 3 * FRAME as usize];
        assert!(decrypt_whole(&k, cut, plain.len() as u64).is_err());
        let mut swapped = wire[16..].to_vec();
        let f = FRAME as usize;
        let (a, b) = swapped.split_at_mut(f);
        a.swap_with_slice(&mut b[..f]);
        assert!(decrypt_frames(&k, &base, 0, &swapped, plain.len() as u64).is_err());
        let single = encrypt_single(&k, b"abc").unwrap();
        assert_eq!(decrypt_single(&k, &single).unwrap(), b"abc");
        let other = KeyGen::parse("b", &"22".repeat(32), None).unwrap();
        assert!(decrypt_single(&other, &single).is_err());
        assert_ne!(k.id, KeyGen::parse("c", &"11".repeat(32), None).unwrap().id);
    }

    /// The streaming decrypter yields exactly the requested plaintext range from frames fed
    /// in arbitrary slices, and fails (never yields unauthenticated bytes) on a cut stream.
    #[tokio::test]
    async fn stream_decrypt_serves_ranges_and_refuses_truncation() {
        let k = KeyGen::parse("b", &"11".repeat(32), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (src, dst) = (dir.path().join("p"), dir.path().join("c"));
        std::fs::write(&src, &plain).unwrap();
        encrypt_file(&k, &src, &dst).unwrap();
        let wire = Bytes::from(std::fs::read(&dst).unwrap());
        let base: [u8; 12] = wire[4..16].try_into().unwrap();
        // Feeds `bytes` in 1000-byte pieces, as a network body would arrive.
        let feed = |bytes: Bytes| -> ByteStream {
            let pieces: Vec<Result<Bytes, std::io::Error>> = (0..bytes.len())
                .step_by(1000)
                .map(|i| Ok(bytes.slice(i..(i + 1000).min(bytes.len()))))
                .collect();
            Box::pin(futures::stream::iter(pieces))
        };
        let len = plain.len() as u64;
        for (start, end) in [
            (0u64, len),
            (1, 2),
            (65_530, 65_545),
            (131_000, len),
            (0, 65_536),
        ] {
            let (a, b) = (start / CHUNK as u64, (end - 1) / CHUNK as u64);
            let wire_end = (HEADER + (b + 1) * FRAME).min(wire.len() as u64);
            let frames = wire.slice((HEADER + a * FRAME) as usize..wire_end as usize);
            let s = decrypt_stream(
                feed(frames),
                k.clone(),
                base,
                a,
                len,
                start - a * CHUNK as u64,
                end - start,
            );
            let got: Vec<Bytes> = s.map(|r| r.unwrap()).collect().await;
            assert_eq!(
                got.concat(),
                &plain[start as usize..end as usize],
                "{start}..{end}"
            );
        }
        let cut = wire.slice(HEADER as usize..(HEADER + FRAME + 100) as usize);
        let mut s = decrypt_stream(feed(cut), k.clone(), base, 0, len, 0, len);
        assert_eq!(s.next().await.unwrap().unwrap().len(), CHUNK);
        assert!(s.next().await.unwrap().is_err());
    }
}
