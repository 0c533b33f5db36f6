//! PostObject: `POST /{bucket}` multipart/form-data browser uploads authorised by a SigV4
//! POST policy.
//!
//! s3s 0.14.1 does the protocol part before the handler runs: it parses the form, verifies
//! `x-amz-signature` over the base64 policy with the IAM user's secret (through
//! `auth::Auth`), refuses an expired policy, and checks every condition (bucket, key
//! eq/starts-with, content-length-range, Content-Type, x-amz-meta-*, success_action_*)
//! and that each form field is covered by one. It also answers with the requested
//! `success_action_status` (200, 201 with a PostResponse XML, default 204) or a 303 to
//! `success_action_redirect`.
//!
//! What is left here: the handler (IAM write permission on the final key, the bucket
//! quota, the store through the same engine path as PutObject so the delta/passthrough
//! decision applies, an audit record), and an HTTP layer for the two things s3s does not
//! do: `${filename}` substitution in the key field, and AWS's wire form of a failed policy
//! condition (403 AccessDenied "Invalid according to Policy", where s3s says 400
//! InvalidPolicyDocument).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::auth::Principal;
use super::{content_md5_hex, etag, perr, Proxy};
use crate::delta::BodyInfo;
use crate::iam::Action;

pub(super) async fn handle(
    p: &Proxy,
    req: S3Request<PostObjectInput>,
) -> S3Result<S3Response<PostObjectOutput>> {
    let principal = Proxy::principal(&req);
    let (ip, ua) = client_of(&req);
    let i = req.input;
    let (bucket, key) = (i.bucket.clone(), i.key.clone());
    // The access layer admitted the signature without a key (the key is a form field):
    // the IAM decision on the key itself is made here.
    if !p.state.allowed(&principal, Action::Write, &bucket, &key) {
        p.state
            .audit_denial(&principal, "PostObject", &bucket, &key);
        return Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "Access Denied",
        ));
    }
    p.usage.admit(p, &bucket).await?;
    let old = p.usage.size_before(p, &bucket, &key).await;
    let info = BodyInfo {
        len: i.content_length.and_then(|l| u64::try_from(l).ok()),
        verified_sha256: None,
        content_md5: i.content_md5.as_deref().map(content_md5_hex),
    };
    let opts = Proxy::put_options(i.content_type, i.metadata);
    let body = i.body.unwrap_or_else(|| {
        StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, std::io::Error>>())
    });
    let meta = p
        .state
        .engine
        .put_stream(&bucket, &key, body, info, opts)
        .await
        .map_err(perr)?;
    p.usage.wrote(p, &bucket, old, meta.file_size);
    // Browser uploads act on a credential delegated through a policy: keep a trace of each.
    let user = match &principal {
        Principal::User(u, _) => u.name.clone(),
        Principal::Open => "$open".into(),
        Principal::Anonymous(_) => "$anonymous".into(),
    };
    p.state.audit.record(
        "object_posted",
        &user,
        "PostObject",
        &ip,
        &ua,
        &bucket,
        &key,
    );
    Ok(S3Response::new(PostObjectOutput {
        e_tag: Some(etag(&meta.etag())),
        ..Default::default()
    }))
}

/// (client ip, user agent) for the audit record. The address is the one the admission
/// chain already derived for this request (peer or trusted forwarding header).
fn client_of<T>(req: &S3Request<T>) -> (String, String) {
    let ip = req
        .extensions
        .get::<crate::admission::Admission>()
        .and_then(|a| a.source_ip)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let ua = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ip, ua)
}

/// Is this a browser form upload (`POST /{bucket}` with a multipart/form-data body)?
/// Also used for the `post_object` metrics label.
pub fn is_form_upload(method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
    let bucket_only = path.strip_prefix('/').is_some_and(|b| {
        !b.is_empty() && !b.starts_with("_/") && !b.trim_end_matches('/').contains('/')
    });
    method == http::Method::POST && bucket_only && form_boundary(headers).is_some()
}

fn form_boundary(headers: &http::HeaderMap) -> Option<String> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let mut params = ct.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// How much of a form body is read ahead looking for the `file` part. The fields before it
/// are small in practice; past this the key is left as sent.
const FIELDS_LOOKAHEAD: usize = 1024 * 1024;

/// Around the S3 service for a form upload (see [`is_form_upload`]): `${filename}` in the
/// key field is replaced by the uploaded file's name before s3s parses the form (so the key
/// the handler stores, the 201 PostResponse and the redirect all agree), and a failed
/// policy condition is answered as AWS does.
pub(super) async fn around(req: Request, next: Next) -> Response {
    let req = substitute_filename(req).await;
    let resp = next.run(req).await;
    policy_failure_as_access_denied(resp).await
}

async fn substitute_filename(req: Request) -> Request {
    let Some(boundary) = form_boundary(req.headers()) else {
        return req;
    };
    let (mut parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut head = BytesMut::new();
    let mut failed = None;
    let fields = loop {
        if let Some(f) = scan_fields(&head, boundary.as_bytes()) {
            break Some(f);
        }
        if head.len() > FIELDS_LOOKAHEAD {
            break None;
        }
        match stream.next().await {
            Some(Ok(b)) => head.extend_from_slice(&b),
            Some(Err(e)) => {
                failed = Some(e);
                break None;
            }
            None => break None,
        }
    };
    let mut head = head.freeze();
    if let Some(f) = fields {
        if let (Some(name), Some(range)) = (f.filename, f.key_value) {
            let value = &head[range.clone()];
            let rewritten = replace_all(value, b"${filename}", name.as_bytes());
            if rewritten != value {
                let mut out = BytesMut::with_capacity(head.len() + rewritten.len());
                out.extend_from_slice(&head[..range.start]);
                out.extend_from_slice(&rewritten);
                out.extend_from_slice(&head[range.end..]);
                let grown = out.len() as i64 - head.len() as i64;
                head = out.freeze();
                adjust_content_length(&mut parts.headers, grown);
            }
        }
    }
    let rest = futures::stream::iter(failed.map(Err)).chain(stream);
    let body = futures::stream::iter([Ok::<Bytes, axum::Error>(head)]).chain(rest);
    Request::from_parts(parts, axum::body::Body::from_stream(body))
}

fn adjust_content_length(headers: &mut http::HeaderMap, by: i64) {
    let Some(n) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return;
    };
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(n + by),
    );
}

fn replace_all(hay: &[u8], pat: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(pat) {
            out.extend_from_slice(with);
            i += pat.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// What the read-ahead found once the `file` part's headers are in: the file's name and
/// where the `key` field's value sits in the buffer.
#[derive(Debug, PartialEq)]
struct Fields {
    filename: Option<String>,
    key_value: Option<std::ops::Range<usize>>,
}

/// Walks the complete parts in `buf`; Some once the `file` part's headers are complete
/// (every field before it is then complete too, as S3 forms put the file last).
fn scan_fields(buf: &[u8], boundary: &[u8]) -> Option<Fields> {
    let delim = [b"--".as_slice(), boundary].concat();
    let mut key_value = None;
    let mut at = find(buf, &delim, 0)?;
    loop {
        let headers_start = at + delim.len() + 2; // past "--boundary\r\n"
        let headers_end = find(buf, b"\r\n\r\n", headers_start)?;
        let headers = std::str::from_utf8(buf.get(headers_start..headers_end)?).ok()?;
        let (name, filename) = disposition(headers);
        let value_start = headers_end + 4;
        if name.eq_ignore_ascii_case("file") {
            // Browsers of old sent a full client path; S3 uses the last component.
            let base =
                filename.map(|f| f.rsplit(['/', '\\']).next().unwrap_or_default().to_string());
            return Some(Fields {
                filename: base.filter(|f| !f.is_empty()),
                key_value,
            });
        }
        let end = find(buf, &[b"\r\n".as_slice(), &delim].concat(), value_start)?;
        if name.eq_ignore_ascii_case("key") {
            key_value = Some(value_start..end);
        }
        at = end + 2;
    }
}

/// The `name` and `filename` parameters of a part's Content-Disposition header.
fn disposition(headers: &str) -> (String, Option<String>) {
    let mut name = String::new();
    let mut filename = None;
    for line in headers.split("\r\n") {
        let Some((h, v)) = line.split_once(':') else {
            continue;
        };
        if !h.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for param in v.split(';').map(str::trim) {
            let Some((k, val)) = param.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"').to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = val,
                "filename" => filename = Some(val),
                _ => {}
            }
        }
    }
    (name, filename)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// s3s reports a failed policy condition as 400 InvalidPolicyDocument; AWS answers 403
/// AccessDenied "Invalid according to Policy: Policy Condition failed: ...", which is what
/// browser upload code checks for. Malformed policies stay InvalidPolicyDocument.
async fn policy_failure_as_access_denied(resp: Response) -> Response {
    if resp.status() != http::StatusCode::BAD_REQUEST {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = text
        .split_once("<Message>")
        .and_then(|(_, r)| r.split_once("</Message>"))
        .map(|(m, _)| m.to_string())
        .unwrap_or_default();
    let condition_failed = text.contains("<Code>InvalidPolicyDocument</Code>")
        && (message.contains("Policy condition") || message.contains("does not match"));
    if !condition_failed {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    parts.status = http::StatusCode::FORBIDDEN;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>\
         <Message>Invalid according to Policy: Policy Condition failed: {message}</Message></Error>"
    );
    Response::from_parts(parts, axum::body::Body::from(xml))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &str)], boundary: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, file, value) in parts {
            v.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => v.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: text/plain\r\n\r\n").as_bytes(),
                ),
                None => v.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            v.extend_from_slice(value.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    #[test]
    fn finds_the_key_value_and_the_file_name() {
        let b = "XyZ";
        let body = form(
            &[
                ("x-amz-meta-key", None, "no"),
                ("key", None, "up/${filename}"),
                ("policy", None, "abc"),
                ("file", Some("C:\\tmp\\r.zip"), "DATA"),
            ],
            b,
        );
        let f = scan_fields(&body, b.as_bytes()).unwrap();
        assert_eq!(f.filename.as_deref(), Some("r.zip"));
        assert_eq!(&body[f.key_value.unwrap()], b"up/${filename}");
        // Not yet complete: the file part's headers are cut off.
        let cut = body.len() - 40;
        assert_eq!(scan_fields(&body[..cut], b.as_bytes()), None);
    }

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!(
            replace_all(b"a/${filename}/${filename}", b"${filename}", b"x.bin"),
            b"a/x.bin/x.bin"
        );
        assert_eq!(replace_all(b"plain", b"${filename}", b"x"), b"plain");
    }

    #[test]
    fn only_bucket_posts_with_a_form_body_are_form_uploads() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "multipart/form-data; boundary=abc".parse().unwrap(),
        );
        assert!(is_form_upload(&http::Method::POST, "/bkt", &h));
        assert!(is_form_upload(&http::Method::POST, "/bkt/", &h));
        assert!(!is_form_upload(&http::Method::POST, "/bkt/key", &h));
        assert!(!is_form_upload(&http::Method::POST, "/_/api/x", &h));
        assert!(!is_form_upload(&http::Method::PUT, "/bkt", &h));
        assert!(!is_form_upload(
            &http::Method::POST,
            "/bkt",
            &http::HeaderMap::new()
        ));
    }
}
