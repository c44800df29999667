//! `--limit-rate`: an upload that leaves bandwidth to others on a shared link.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Reads from `inner` at no more than `bytes_per_sec` on average since the first read.
pub struct Throttled<R> {
    inner: R,
    bytes_per_sec: u64,
    started: Option<Instant>,
    read: u64,
    wait: Option<Pin<Box<Sleep>>>,
    scratch: Vec<u8>,
}

impl<R> Throttled<R> {
    pub fn new(inner: R, bytes_per_sec: u64) -> Self {
        Self {
            inner,
            bytes_per_sec: bytes_per_sec.max(1),
            started: None,
            read: 0,
            wait: None,
            scratch: Vec::new(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttled<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        // Due time of the bytes read so far at the allowed rate.
        let due = started + Duration::from_secs_f64(this.read as f64 / this.bytes_per_sec as f64);
        if due > Instant::now() {
            let wait = this
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            wait.as_mut().reset(due);
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // At most a tenth of a second's worth at once, so the rate holds over short spans.
        let most = (this.bytes_per_sec / 10).clamp(1, buf.remaining() as u64) as usize;
        this.scratch.resize(most, 0);
        let mut limited = ReadBuf::new(&mut this.scratch);
        let r = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        if let Poll::Ready(Ok(())) = r {
            let got = limited.filled();
            buf.put_slice(got);
            this.read += got.len() as u64;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// On the real clock (the workspace does not build tokio's paused test clock): 1,000 bytes
    /// at 5,000 bytes/s come in reads of at most 500, the last one due 0.2 s after the first.
    #[tokio::test]
    async fn holds_the_rate() {
        let data = vec![1u8; 1000];
        let mut r = Throttled::new(&data[..], 5000);
        let t = Instant::now();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
    }

    #[tokio::test]
    async fn an_empty_buffer_reads_nothing() {
        let data = [1u8; 10];
        let mut r = Throttled::new(&data[..], 1);
        let mut none = [0u8; 0];
        assert_eq!(r.read(&mut none).await.unwrap(), 0);
    }
}
