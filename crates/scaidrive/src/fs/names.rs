//! File and folder name rules: what the API refuses, with a reason the client can show, and
//! the MIME type guessed from a name's extension.

use crate::error::{ApiError, ApiResult};

pub const MAX_NAME_BYTES: usize = 255;

pub fn validate(field: &str, name: &str) -> ApiResult<()> {
    let reason = if name.is_empty() || name.trim().is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'".to_string())
    } else if name.contains('/') || name.contains('\\') {
        Some("must not contain '/' or '\\'".to_string())
    } else if name.contains('\0') {
        Some("must not contain NUL".to_string())
    } else if name.chars().any(|c| c.is_control()) {
        Some("must not contain control characters".to_string())
    } else {
        None
    };
    match reason {
        Some(r) => Err(ApiError::field(field, r)),
        None => Ok(()),
    }
}

pub fn mime_for(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn names() {
        assert!(validate("name", "report.pdf").is_ok());
        assert!(validate("name", "résumé ü.txt").is_ok());
        for bad in [
            "", "  ", ".", "..", "a/b", "a\\b", "a\0b", "a\nb", "a\u{7f}",
        ] {
            assert!(validate("name", bad).is_err(), "{bad:?}");
        }
        assert!(validate("name", &"x".repeat(256)).is_err());
        assert!(validate("name", &"x".repeat(255)).is_ok());
    }
}
