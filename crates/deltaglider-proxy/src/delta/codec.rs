//! Delta codecs. VCDIFF through the `xdelta3` binary (the format every DeltaGlider tool
//! reads: byte-for-byte what the existing proxy and the Python CLI produce and consume), and
//! an opt-in native codec, zstd with the reference as a raw prefix ("patch-from"), recorded
//! as `dg-delta-codec: zstd-patch`. Every proxy version decodes both.
//!
//! Why the xdelta3 binary rather than a crate: the existing tools shell out to the same
//! binary, so deltas are interchangeable by construction; the Rust VCDIFF crates on
//! crates.io are decoders only or unmaintained bindings, and the subprocess keeps a codec
//! bug from taking the proxy down (watchdog: `DGP_CODEC_TIMEOUT_SECS`).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::error::ProxyError;
use crate::meta::Codec;

/// Runs `xdelta3` on files in `tmp` with a watchdog.
async fn run_xdelta(args: &[&std::ffi::OsStr], timeout: Duration) -> Result<(), ProxyError> {
    let mut cmd = tokio::process::Command::new("xdelta3");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| ProxyError::Codec(format!("cannot run xdelta3 (is it installed?): {e}")))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(ProxyError::Codec(format!(
            "xdelta3 timed out after {}s",
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(ProxyError::Codec(e.to_string())),
        Ok(Ok(out)) if !out.status.success() => Err(ProxyError::Codec(format!(
            "xdelta3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

fn write_file(p: &Path, b: &[u8]) -> Result<(), ProxyError> {
    let mut f = std::fs::File::create(p)?;
    f.write_all(b)?;
    Ok(())
}

/// Encodes `target` against `reference`.
pub async fn encode(
    codec: Codec,
    reference: &[u8],
    target: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ProxyError> {
    match codec {
        Codec::Zstd => {
            let (r, t) = (reference.to_vec(), target.to_vec());
            tokio::task::spawn_blocking(move || zstd_encode(&r, &t))
                .await
                .map_err(|e| ProxyError::Codec(e.to_string()))?
        }
        Codec::Xdelta3 => {
            let dir = tempfile::tempdir()?;
            let (s, t, o) = (
                dir.path().join("src"),
                dir.path().join("tgt"),
                dir.path().join("out"),
            );
            write_file(&s, reference)?;
            write_file(&t, target)?;
            run_xdelta(
                &[
                    "-e".as_ref(),
                    "-f".as_ref(),
                    "-s".as_ref(),
                    s.as_os_str(),
                    t.as_os_str(),
                    o.as_os_str(),
                ],
                timeout,
            )
            .await?;
            Ok(std::fs::read(&o)?)
        }
    }
}

/// Decodes `delta` against `reference`.
pub async fn decode(
    codec: Codec,
    reference: &[u8],
    delta: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ProxyError> {
    match codec {
        Codec::Zstd => {
            let (r, d) = (reference.to_vec(), delta.to_vec());
            tokio::task::spawn_blocking(move || zstd_decode(&r, &d))
                .await
                .map_err(|e| ProxyError::Codec(e.to_string()))?
        }
        Codec::Xdelta3 => {
            let dir = tempfile::tempdir()?;
            let (s, d, o) = (
                dir.path().join("src"),
                dir.path().join("delta"),
                dir.path().join("out"),
            );
            write_file(&s, reference)?;
            write_file(&d, delta)?;
            run_xdelta(
                &[
                    "-d".as_ref(),
                    "-f".as_ref(),
                    "-s".as_ref(),
                    s.as_os_str(),
                    d.as_os_str(),
                    o.as_os_str(),
                ],
                timeout,
            )
            .await?;
            Ok(std::fs::read(&o)?)
        }
    }
}

fn window_log(len: usize) -> u32 {
    // The window must cover the whole reference plus the target for patch-from.
    let mut w = 10u32;
    while (1usize << w) < len && w < 31 {
        w += 1;
    }
    w
}

fn zstd_err(code: usize) -> ProxyError {
    ProxyError::Codec(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// zstd with the reference as a raw-content prefix and long-distance matching: zstd's
/// `--patch-from` mode, through the library.
pub fn zstd_encode(reference: &[u8], target: &[u8]) -> Result<Vec<u8>, ProxyError> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    let level = std::env::var("DGP_ZSTD_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::WindowLog(
        window_log(reference.len().max(target.len())).max(17),
    ))
    .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(zstd_err)?;
    cctx.ref_prefix(reference).map_err(zstd_err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zstd_err)?;
    Ok(out)
}

pub fn zstd_decode(reference: &[u8], delta: &[u8]) -> Result<Vec<u8>, ProxyError> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let size = zstd::zstd_safe::get_frame_content_size(delta)
        .map_err(|_| ProxyError::Codec("zstd: bad frame".into()))?
        .ok_or_else(|| ProxyError::Codec("zstd: frame has no content size".into()))?;
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(31))
        .map_err(zstd_err)?;
    dctx.ref_prefix(reference).map_err(zstd_err)?;
    let mut out = Vec::with_capacity(size as usize);
    dctx.decompress(&mut out, delta).map_err(zstd_err)?;
    Ok(out)
}

/// Checks at startup that the xdelta3 binary works (a real 1-byte round trip).
pub async fn probe_xdelta3() -> Result<(), ProxyError> {
    let d = encode(Codec::Xdelta3, b"a", b"b", Duration::from_secs(10)).await?;
    let back = decode(Codec::Xdelta3, b"a", &d, Duration::from_secs(10)).await?;
    if back != b"b" {
        return Err(ProxyError::Codec(
            "xdelta3 probe round trip mismatch".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_patch_round_trip() {
        let reference: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut target = reference.clone();
        target[1000..1100].fill(7);
        target.extend_from_slice(b"tail");
        let d = zstd_encode(&reference, &target).unwrap();
        assert!(d.len() < target.len() / 10, "delta {} too big", d.len());
        assert_eq!(zstd_decode(&reference, &d).unwrap(), target);
    }
}
