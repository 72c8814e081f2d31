//! The response body: whole bytes (almost every response), or a bounded stream fed by a
//! producer task (the GDPR export).
//!
//! A stream is an `mpsc` channel of a few chunks: the producer waits while the client is slow
//! (memory stays at the channel's capacity), and stops when the client goes away (the
//! receiver is dropped, `send` fails). A producer that fails mid-way sends an error, which
//! aborts the response instead of ending it cleanly, so a client never mistakes a truncated
//! body for a complete one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body.
#[derive(Debug)]
pub struct Body(Inner);

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

/// The producing end of a streamed body.
pub type BodySender = mpsc::Sender<Result<Bytes, std::io::Error>>;

impl Body {
    /// A streamed body buffering at most `chunks` chunks.
    pub fn channel(chunks: usize) -> (BodySender, Body) {
        let (tx, rx) = mpsc::channel(chunks.max(1));
        (tx, Body(Inner::Stream(rx)))
    }

    /// Whether the size is known up front (not a stream).
    pub fn is_full(&self) -> bool {
        matches!(self.0, Inner::Full(_))
    }
}

impl Default for Body {
    fn default() -> Self {
        Body(Inner::Full(None))
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body(Inner::Full((!b.is_empty()).then_some(b)))
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body::from(Bytes::from(b))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from(Bytes::from(s))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Inner::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_and_streamed_bodies() {
        let b = Body::from(Bytes::from_static(b"abc"));
        assert_eq!(hyper::body::Body::size_hint(&b).exact(), Some(3));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");
        assert!(hyper::body::Body::is_end_stream(&Body::default()));

        let (tx, b) = Body::channel(2);
        tokio::spawn(async move {
            for part in ["a", "b", "c"] {
                tx.send(Ok(Bytes::from(part))).await.unwrap();
            }
        });
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");

        // A producer error fails the body: the client sees an aborted response.
        let (tx, b) = Body::channel(2);
        tx.send(Ok(Bytes::from("a"))).await.unwrap();
        tx.send(Err(std::io::Error::other("storage failed")))
            .await
            .unwrap();
        drop(tx);
        assert!(b.collect().await.is_err());
    }
}
