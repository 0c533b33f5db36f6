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

use bytes::Bytes;

use crate::error::ProxyError;
use crate::meta::Codec;

/// Flags on every xdelta3 run, as the existing proxy passes them at HEAD:
/// - `-D`: no automatic decompression of gzip/xz inputs. Without it xdelta3 encodes the
///   *decompressed* content of a `.gz`-looking body and recompresses on decode, which
///   gives different bytes (the SHA-256 check then refuses every GET of the object).
/// - `-a` only where it works (xdelta3 3.1+): it turns off the BLAKE3 "armor" frame those
///   versions add by default, so deltas stay plain RFC 3284 VCDIFF that 3.0.x decodes.
fn common_flags() -> &'static [&'static str] {
    static FLAGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        if armor_flag_works() {
            &["-D", "-a"]
        } else {
            &["-D"]
        }
    })
}

/// The startup probe the existing proxy runs: a real 1-byte encode with `-a`.
fn armor_flag_works() -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let (s, t, o) = (
        dir.path().join("s"),
        dir.path().join("t"),
        dir.path().join("o"),
    );
    if std::fs::write(&s, b"a").is_err() || std::fs::write(&t, b"b").is_err() {
        return false;
    }
    let ok = std::process::Command::new("xdelta3")
        .args(["-e", "-f", "-D", "-a", "-s"])
        .args([&s, &t, &o])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    tracing::debug!(armor_off = ok, "xdelta3 -a probe");
    ok
}

/// How a decode treats xdelta3's automatic (de)compression of gzip/xz content.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Recompress {
    /// `-D`, as everything is encoded here and by the existing proxy at HEAD.
    Off,
    /// Without `-D`: for deltas written without it (the Python CLI, the proxy up to
    /// v0.9.0), whose header asks the decoder to recompress the target it rebuilds.
    Legacy,
}

/// Runs `xdelta3` on files in `tmp` with a watchdog.
async fn run_xdelta(
    args: &[&std::ffi::OsStr],
    timeout: Duration,
    recompress: Recompress,
) -> Result<(), ProxyError> {
    let mut cmd = tokio::process::Command::new("xdelta3");
    let flags = tokio::task::spawn_blocking(common_flags)
        .await
        .map_err(|e| ProxyError::Codec(e.to_string()))?;
    let flags = flags
        .iter()
        .filter(|f| !(recompress == Recompress::Legacy && **f == "-D"));
    cmd.arg(args[0])
        .args(flags)
        .args(&args[1..])
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

/// Encodes `target` against `reference` (off the async threads; buffers are shared, not
/// copied).
pub async fn encode(
    codec: Codec,
    reference: Bytes,
    target: Bytes,
    timeout: Duration,
) -> Result<Vec<u8>, ProxyError> {
    match codec {
        Codec::Zstd => tokio::task::spawn_blocking(move || {
            // zstd finds no match into a prefix that occupies the target's own memory (the
            // first upload of a deltaspace, encoded against itself): give it a copy then.
            let (r, t) = (reference.as_ptr_range(), target.as_ptr_range());
            if r.start < t.end && t.start < r.end {
                let copy: Vec<u8> = target.as_ref().to_owned();
                zstd_encode(&reference, &copy)
            } else {
                zstd_encode(&reference, &target)
            }
        })
        .await
        .map_err(|e| ProxyError::Codec(e.to_string()))?,
        Codec::Xdelta3 => {
            let dir = tempfile::tempdir()?;
            let (s, t, o) = (
                dir.path().join("src"),
                dir.path().join("tgt"),
                dir.path().join("out"),
            );
            let (s2, t2) = (s.clone(), t.clone());
            tokio::task::spawn_blocking(move || {
                write_file(&s2, &reference)?;
                write_file(&t2, &target)
            })
            .await
            .map_err(|e| ProxyError::Codec(e.to_string()))??;
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
                Recompress::Off,
            )
            .await?;
            Ok(tokio::fs::read(&o).await?)
        }
    }
}

/// Decodes `delta` against `reference` (off the async threads).
pub async fn decode(
    codec: Codec,
    reference: Bytes,
    delta: Bytes,
    timeout: Duration,
    recompress: Recompress,
) -> Result<Vec<u8>, ProxyError> {
    match codec {
        Codec::Zstd => tokio::task::spawn_blocking(move || zstd_decode(&reference, &delta))
            .await
            .map_err(|e| ProxyError::Codec(e.to_string()))?,
        Codec::Xdelta3 => {
            let dir = tempfile::tempdir()?;
            let (s, d, o) = (
                dir.path().join("src"),
                dir.path().join("delta"),
                dir.path().join("out"),
            );
            let (s2, d2) = (s.clone(), d.clone());
            tokio::task::spawn_blocking(move || {
                write_file(&s2, &reference)?;
                write_file(&d2, &delta)
            })
            .await
            .map_err(|e| ProxyError::Codec(e.to_string()))??;
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
                recompress,
            )
            .await?;
            Ok(tokio::fs::read(&o).await?)
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

/// `DGP_ZSTD_LEVEL`, default 1: with long-distance matching doing the delta work, level 1
/// encodes about twice as fast as level 3 and, on artifacts that are mostly compressed
/// data (zip/jar members), even writes slightly smaller deltas (botocore wheels: 8.36 MB
/// vs 8.53 MB for 7 versions).
fn zstd_level() -> i32 {
    std::env::var("DGP_ZSTD_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Compression contexts kept between encodes. A fresh context allocates its hash tables,
/// the LDM table and (streaming) a window-sized input buffer, ~20 MiB for a 12 MB
/// reference, and page-faults all of it on every PUT: on the bench corpus a reused context
/// took ~35% less CPU per encode (161k → 44k page faults for 21 encodes). At most
/// [`POOL_CONTEXTS`] idle contexts of at most [`POOL_CONTEXT_MAX_BYTES`] each are kept, so
/// one huge object does not pin its window's worth of memory.
static CCTX_POOL: std::sync::Mutex<Vec<CCtx<'static>>> = std::sync::Mutex::new(Vec::new());
const POOL_CONTEXTS: usize = 2;
const POOL_CONTEXT_MAX_BYTES: usize = 64 << 20;

use zstd::zstd_safe::CCtx;

/// A pooled compression context borrowing a reference for one frame; back to the pool
/// (reset, the reference forgotten) on drop.
pub(crate) struct PatchCtx<'r>(Option<CCtx<'r>>);

impl<'r> std::ops::Deref for PatchCtx<'r> {
    type Target = CCtx<'r>;
    fn deref(&self) -> &CCtx<'r> {
        self.0.as_ref().expect("context present until drop")
    }
}

impl std::ops::DerefMut for PatchCtx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("context present until drop")
    }
}

impl Drop for PatchCtx<'_> {
    fn drop(&mut self) {
        let Some(mut c) = self.0.take() else { return };
        // Resetting session and parameters drops the prefix (ZSTD_clearAllDicts) and any
        // frame in progress: the context no longer refers to the reference.
        if c.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters)
            .is_err()
            || c.sizeof() > POOL_CONTEXT_MAX_BYTES
        {
            return;
        }
        // SAFETY: after the reset above the context holds no borrow of `'r` data; the
        // lifetime only tracked the prefix.
        let c: CCtx<'static> = unsafe { std::mem::transmute::<CCtx<'_>, CCtx<'static>>(c) };
        if let Ok(mut pool) = CCTX_POOL.lock() {
            if pool.len() < POOL_CONTEXTS {
                pool.push(c);
            }
        }
    }
}

/// A compression context set up for zstd's `--patch-from` mode: the reference as a raw
/// prefix, long-distance matching, and a window covering the larger of reference and
/// target (so every match into the reference is reachable).
fn patch_cctx(reference: &[u8], target_len: usize) -> Result<PatchCtx<'_>, ProxyError> {
    use zstd::zstd_safe::CParameter;
    let pooled = CCTX_POOL.lock().ok().and_then(|mut p| p.pop());
    // A `'static` context is usable for any shorter borrow.
    let mut cctx = PatchCtx(Some(pooled.unwrap_or_else(CCtx::create)));
    cctx.set_parameter(CParameter::CompressionLevel(zstd_level()))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::WindowLog(
        window_log(reference.len().max(target_len)).max(17),
    ))
    .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(zstd_err)?;
    cctx.ref_prefix(reference).map_err(zstd_err)?;
    Ok(cctx)
}

/// zstd with the reference as a raw-content prefix and long-distance matching: zstd's
/// `--patch-from` mode, through the library.
pub fn zstd_encode(reference: &[u8], target: &[u8]) -> Result<Vec<u8>, ProxyError> {
    let mut cctx = patch_cctx(reference, target.len())?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zstd_err)?;
    Ok(out)
}

/// The same encoding, fed chunk by chunk while the upload arrives (`len` bytes in all,
/// pledged so the frame records its content size, as the one-shot form does). The output
/// decodes with [`zstd_decode`] like the one-shot form's. Also returns the time spent
/// encoding (not waiting for the network).
#[allow(clippy::type_complexity)]
pub fn zstd_stream_encoder(
    reference: Bytes,
    len: u64,
) -> (
    tokio::sync::mpsc::Sender<super::ingest::Batch>,
    tokio::task::JoinHandle<Result<(Vec<u8>, Duration), ProxyError>>,
) {
    // The batches are held in memory by the receiver anyway: a deep queue costs nothing and
    // lets the receive run ahead while zstd indexes the reference at the start.
    let depth = (len as usize / super::ingest::BATCH + 2).min(4096);
    super::ingest::consumer(depth, move |mut rx| {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let t0 = std::time::Instant::now();
        let mut cctx = patch_cctx(&reference, len as usize)?;
        cctx.set_pledged_src_size(Some(len)).map_err(zstd_err)?;
        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
        // A first call without input starts the frame: zstd indexes the reference now,
        // before the body's first batch is here.
        {
            let mut o = OutBuffer::around_pos(&mut out, 0);
            let mut empty = InBuffer::around(&[]);
            cctx.compress_stream2(&mut o, &mut empty, ZSTD_EndDirective::ZSTD_e_continue)
                .map_err(zstd_err)?;
        }
        let mut busy = t0.elapsed();
        let room = |out: &mut Vec<u8>| {
            if out.capacity() - out.len() < zstd::zstd_safe::CCtx::out_size() {
                out.reserve(out.capacity().max(zstd::zstd_safe::CCtx::out_size()));
            }
        };
        while let Some(batch) = rx.blocking_recv() {
            let t = std::time::Instant::now();
            for chunk in batch.iter() {
                let mut input = InBuffer::around(chunk);
                while input.pos() < chunk.len() {
                    room(&mut out);
                    let pos = out.len();
                    let mut o = OutBuffer::around_pos(&mut out, pos);
                    cctx.compress_stream2(&mut o, &mut input, ZSTD_EndDirective::ZSTD_e_continue)
                        .map_err(zstd_err)?;
                }
            }
            busy += t.elapsed();
        }
        let t = std::time::Instant::now();
        loop {
            room(&mut out);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(&mut out, pos);
            let mut empty = InBuffer::around(&[]);
            let left = cctx
                .compress_stream2(&mut o, &mut empty, ZSTD_EndDirective::ZSTD_e_end)
                .map_err(zstd_err)?;
            if left == 0 {
                break;
            }
        }
        Ok((out, busy + t.elapsed()))
    })
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
    let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
    let d = encode(Codec::Xdelta3, a.clone(), b, Duration::from_secs(10)).await?;
    let back = decode(
        Codec::Xdelta3,
        a,
        Bytes::from(d),
        Duration::from_secs(10),
        Recompress::Off,
    )
    .await?;
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

    #[test]
    fn pooled_contexts_forget_their_previous_reference() {
        let a: Vec<u8> = (0..150_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let b: Vec<u8> = (0..150_000u32)
            .map(|i| (i.wrapping_mul(2246822519) >> 9) as u8)
            .collect();
        let mut ta = a.clone();
        ta[500..600].fill(1);
        let mut tb = b.clone();
        tb[700..800].fill(2);
        // Same input, same output, whether the context is fresh or reused; and a reused
        // context encodes against the new reference only.
        let first = zstd_encode(&a, &ta).unwrap();
        for _ in 0..3 {
            assert_eq!(zstd_encode(&a, &ta).unwrap(), first);
            let d = zstd_encode(&b, &tb).unwrap();
            assert!(d.len() < tb.len() / 10, "delta {} too big", d.len());
            assert_eq!(zstd_decode(&b, &d).unwrap(), tb);
            assert!(zstd_decode(&a, &d).map_or(true, |x| x != tb));
        }
        assert!(CCTX_POOL.lock().unwrap().len() <= POOL_CONTEXTS);
    }

    #[tokio::test]
    async fn zstd_self_delta_of_one_buffer_is_small() {
        let data = Bytes::from(
            (0..200_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect::<Vec<_>>(),
        );
        let d = encode(
            Codec::Zstd,
            data.clone(),
            data.clone(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(d.len() < 1000, "self-delta of {} bytes", d.len());
        assert_eq!(zstd_decode(&data, &d).unwrap(), data.as_ref());
    }

    #[tokio::test]
    async fn zstd_streamed_equals_one_shot_round_trip() {
        let reference: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let mut target = reference.clone();
        target[5000..5100].fill(9);
        target.extend_from_slice(&reference[..70_000]);
        let (tx, h) = zstd_stream_encoder(Bytes::from(reference.clone()), target.len() as u64);
        for c in target.chunks(7_777 * 3) {
            let batch: Vec<Bytes> = c.chunks(7_777).map(Bytes::copy_from_slice).collect();
            tx.send(std::sync::Arc::new(batch)).await.unwrap();
        }
        drop(tx);
        let (d, _) = h.await.unwrap().unwrap();
        assert!(d.len() < target.len() / 10, "delta {} too big", d.len());
        assert_eq!(zstd_decode(&reference, &d).unwrap(), target);
        // Fewer bytes than pledged: an error, never a truncated delta.
        let (tx, h) = zstd_stream_encoder(Bytes::from(reference), 1000);
        tx.send(std::sync::Arc::new(vec![Bytes::from_static(b"short")]))
            .await
            .unwrap();
        drop(tx);
        assert!(h.await.unwrap().is_err());
    }
}
