//! The DeltaGlider object metadata (`FileMetadata`): its JSON form (the `user.dg.metadata`
//! xattr on the filesystem backend) and its bare-key form (`x-amz-meta-dg-*` on the S3
//! backend), including the legacy aliases the Python `deltaglider` CLI writes and reads.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Writer id stamped into `dg-tool`.
pub const TOOL: &str = concat!("deltaglider_proxy/", env!("CARGO_PKG_VERSION"));
/// Name of the per-deltaspace baseline object.
pub const REFERENCE_NAME: &str = "reference.bin";
/// Suffix of stored deltas.
pub const DELTA_SUFFIX: &str = ".delta";

/// How an object is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Note {
    Reference,
    Delta,
    Passthrough,
}

impl Note {
    pub fn as_str(self) -> &'static str {
        match self {
            Note::Reference => "reference",
            Note::Delta => "delta",
            Note::Passthrough => "passthrough",
        }
    }
    /// Legacy `direct` reads as passthrough, `zero-diff*` as delta.
    pub fn parse(s: &str) -> Note {
        match s {
            "reference" => Note::Reference,
            "delta" => Note::Delta,
            s if s.starts_with("zero-diff") => Note::Delta,
            _ => Note::Passthrough,
        }
    }
}

/// Codec a delta was written with. Absent in the metadata means VCDIFF (xdelta3), which is
/// what every other DeltaGlider tool writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Xdelta3,
    Zstd,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Xdelta3 => "xdelta3",
            Codec::Zstd => "zstd-patch",
        }
    }
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "xdelta3" | "vcdiff" | "" => Some(Codec::Xdelta3),
            "zstd-patch" | "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// The metadata record of one stored object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FileMetadata {
    pub tool: String,
    pub original_name: String,
    pub file_sha256: String,
    pub file_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart_etag: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub note: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(default, alias = "ref_key", skip_serializing_if = "Option::is_none")]
    pub ref_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_cmd: Option<String>,
    /// Our extension: which codec produced the delta (absent = xdelta3/VCDIFF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_codec: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
    /// Encryption-at-rest marker (`aes-256-gcm-v1` or `aes-256-gcm-chunked-v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
    /// Native server-side encryption the upstream applied (`sse-kms` or `sse-s3`): the
    /// stored bytes are plain as far as the proxy is concerned; it never decrypts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_native: Option<String>,
}

/// UTC timestamp with microseconds, the format every DeltaGlider writer uses.
pub fn now_timestamp() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses `created_at`: RFC 3339 with or without `Z`, with or without fractions.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let trimmed = s.trim_end_matches('Z');
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(trimmed, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

pub fn format_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl FileMetadata {
    pub fn note(&self) -> Note {
        if self.ref_path.is_some() {
            return Note::Delta;
        }
        Note::parse(&self.note)
    }

    pub fn codec(&self) -> Option<Codec> {
        Codec::parse(self.delta_codec.as_deref().unwrap_or(""))
    }

    pub fn created(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(&self.created_at)
    }

    /// The ETag clients see: the multipart ETag, else the MD5 of the original bytes. Objects
    /// written by the Python CLI carry no MD5; for those the first 32 hex digits of the
    /// SHA-256 stand in (stable, and never the ETag of the stored delta).
    pub fn etag(&self) -> String {
        if let Some(m) = &self.multipart_etag {
            return m.trim_matches('"').to_string();
        }
        if let Some(m) = &self.md5 {
            return m.clone();
        }
        self.file_sha256.chars().take(32).collect()
    }

    /// The bare-key map stored as `x-amz-meta-*` on the S3 backend. The reference is written
    /// under both `dg-ref-path` (our proxy's name) and `dg-ref-key` (the Python CLI's), and
    /// passthrough carries `dg-compression: none` so the CLI does not try to delta-decode it.
    pub fn to_bare_map(&self, bucket_relative_ref_key: Option<&str>) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("dg-tool".into(), self.tool.clone());
        m.insert("dg-original-name".into(), self.original_name.clone());
        m.insert("dg-file-sha256".into(), self.file_sha256.clone());
        m.insert("dg-file-size".into(), self.file_size.to_string());
        m.insert("dg-created-at".into(), self.created_at.clone());
        m.insert("dg-note".into(), self.note.clone());
        if let Some(v) = &self.md5 {
            m.insert("dg-md5".into(), v.clone());
        }
        if let Some(v) = &self.multipart_etag {
            m.insert("dg-multipart-etag".into(), v.clone());
        }
        if let Some(v) = &self.source_name {
            m.insert("dg-source-name".into(), v.clone());
        }
        if let Some(v) = &self.ref_path {
            m.insert("dg-ref-path".into(), v.clone());
            m.insert(
                "dg-ref-key".into(),
                bucket_relative_ref_key.unwrap_or(v).to_string(),
            );
        }
        if let Some(v) = &self.ref_sha256 {
            m.insert("dg-ref-sha256".into(), v.clone());
        }
        if let Some(v) = self.delta_size {
            m.insert("dg-delta-size".into(), v.to_string());
        }
        if let Some(v) = &self.delta_cmd {
            m.insert("dg-delta-cmd".into(), v.clone());
        }
        if let Some(v) = &self.delta_codec {
            m.insert("dg-delta-codec".into(), v.clone());
        }
        if self.note() == Note::Passthrough {
            m.insert("dg-compression".into(), "none".into());
        }
        if let Some(v) = &self.encrypted {
            m.insert("dg-encrypted".into(), v.clone());
        }
        if let Some(v) = &self.encryption_key_id {
            m.insert("dg-encryption-key-id".into(), v.clone());
        }
        if let Some(v) = &self.encrypted_native {
            m.insert("dg-encrypted-native".into(), v.clone());
        }
        for (k, v) in &self.user_metadata {
            m.insert(format!("user-{k}"), v.clone());
        }
        m
    }

    /// Reads the bare-key map (lower-cased keys), accepting every legacy alias. Returns
    /// `None` when the object carries no DeltaGlider metadata (unmanaged object).
    pub fn from_bare_map(
        m: &BTreeMap<String, String>,
        content_type: Option<String>,
    ) -> Option<Self> {
        let get = |keys: &[&str]| -> Option<String> {
            keys.iter()
                .filter_map(|k| m.get(*k))
                .find(|v| !v.is_empty())
                .cloned()
        };
        let file_sha256 = get(&[
            "dg-file-sha256",
            "dg_file_sha256",
            "file_sha256",
            "file-sha256",
        ])?;
        let tool = get(&["dg-tool", "dg_tool", "tool"]).unwrap_or_else(|| "unknown".into());
        let original_name = get(&[
            "dg-original-name",
            "dg_original_name",
            "original_name",
            "original-name",
            "dg-source-name",
            "source-name",
        ])
        .unwrap_or_default();
        let ref_path = get(&[
            "dg-ref-path",
            "dg-ref-key",
            "dg_ref_key",
            "ref_key",
            "ref-path",
            "ref-key",
        ])
        .map(|v| v.rsplit('/').next().unwrap_or(&v).to_string());
        let mut note = get(&["dg-note", "dg_note", "note"]).unwrap_or_default();
        if note.is_empty() {
            note = if ref_path.is_some() {
                "delta".into()
            } else {
                "passthrough".into()
            };
        }
        let user_metadata = m
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("user-").map(|k| (k.to_string(), v.clone())))
            .collect();
        Some(FileMetadata {
            tool,
            original_name,
            file_sha256,
            file_size: get(&["dg-file-size", "dg_file_size", "file_size", "file-size"])
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            md5: get(&["dg-md5"]),
            multipart_etag: get(&["dg-multipart-etag"]),
            created_at: get(&["dg-created-at", "dg_created_at", "created_at", "created-at"])
                .unwrap_or_else(now_timestamp),
            content_type,
            note,
            source_name: get(&[
                "dg-source-name",
                "dg_source_name",
                "source_name",
                "source-name",
            ]),
            ref_path,
            ref_sha256: get(&["dg-ref-sha256", "dg_ref_sha256", "ref_sha256", "ref-sha256"]),
            delta_size: get(&["dg-delta-size", "dg_delta_size", "delta_size", "delta-size"])
                .and_then(|v| v.parse().ok()),
            delta_cmd: get(&["dg-delta-cmd", "dg_delta_cmd", "delta_cmd", "delta-cmd"]),
            delta_codec: get(&["dg-delta-codec"]),
            user_metadata,
            encrypted: get(&["dg-encrypted"]),
            encryption_key_id: get(&["dg-encryption-key-id"]),
            encrypted_native: get(&["dg-encrypted-native"]),
        })
    }

    /// JSON form for the `user.dg.metadata` xattr.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_map_round_trip_and_cli_aliases() {
        let m = FileMetadata {
            tool: TOOL.into(),
            original_name: "a.zip".into(),
            file_sha256: "ab".repeat(32),
            file_size: 10,
            md5: Some("cd".repeat(16)),
            created_at: now_timestamp(),
            note: "delta".into(),
            ref_path: Some("reference.bin".into()),
            ref_sha256: Some("ef".repeat(32)),
            delta_size: Some(3),
            user_metadata: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        let bare = m.to_bare_map(Some("p/reference.bin"));
        assert_eq!(bare["dg-ref-key"], "p/reference.bin");
        assert_eq!(bare["user-k"], "v");
        let back = FileMetadata::from_bare_map(&bare, None).unwrap();
        assert_eq!(back.ref_path.as_deref(), Some("reference.bin"));
        assert_eq!(back.note(), Note::Delta);
        assert_eq!(back.user_metadata, m.user_metadata);
        let json = m.to_json();
        assert_eq!(FileMetadata::from_json(&json).unwrap(), m);
    }

    #[test]
    fn timestamps_parse_with_and_without_z() {
        assert!(parse_timestamp("2026-01-02T03:04:05.123456Z").is_some());
        assert!(parse_timestamp("2026-01-02T03:04:05.123456").is_some());
        assert!(parse_timestamp("2026-01-02T03:04:05+00:00").is_some());
    }
}
