//! The connection's socket: it tells the connection's state when bytes arrive, and holds
//! HTTP/1 request heads to lameduck's limit.

use super::*;

pin_project! {
    /// A socket that tells its [`ConnState`] when bytes arrive, and holds HTTP/1 request
    /// heads to lameduck's limit (see `head_limit.rs`): a head over it is answered 431 here,
    /// before hyper sees it. A head hyper refuses itself for its number of fields (more than
    /// its 100) gets hyper's bare 431, which is replaced here, as hyper writes it, by the
    /// same JSON answer: nothing is counted on the way in, and the check on the way out is
    /// a comparison of three bytes of each write.
    #[derive(Debug)]
    pub(crate) struct TrackedIo<T> {
        #[pin]
        io: T,
        state: Arc<ConnState>,
        head: HeadLimit,
        reject: Option<Box<Reject>>,
    }
}

impl<T> TrackedIo<T> {
    /// `io` with its connection's state; request heads of at most `max_head` bytes.
    pub(crate) fn new(io: T, state: Arc<ConnState>, max_head: usize) -> Self {
        Self {
            io,
            state,
            head: HeadLimit::new(max_head),
            reject: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(reject) = this.reject.as_mut() {
            return reject.poll(this.io, cx);
        }
        let before = buf.filled().len();
        ready!(this.io.as_mut().poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if let Some(new_head) = this.state.on_read() {
            if new_head {
                this.head.new_head();
            }
            if this.head.on_bytes(new) == HeadCheck::TooLarge {
                // hyper never sees these bytes; the connection answers 431 and closes.
                buf.set_filled(before);
                tracing::debug!("request head over the limit: answered 431");
                let reject = this.reject.insert(Box::new(Reject {
                    answer: too_large_response(HeadCheck::TooLarge, this.head.limit()),
                    written: 0,
                    shut: false,
                }));
                return reject.poll(this.io, cx);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Answering a request head over the limit: write the 431, close the writing side, then
/// read and drop what the client still sends until it closes (closing with unread bytes
/// would reset the connection and could take the answer with it); hyper then reads the
/// end of the stream.
#[derive(Debug)]
pub(crate) struct Reject {
    answer: Vec<u8>,
    written: usize,
    shut: bool,
}

impl Reject {
    /// Write the answer and close the writing side (not the reading of what follows).
    fn poll_answer<T: AsyncWrite>(
        &mut self,
        mut io: Pin<&mut T>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while self.written < self.answer.len() {
            match ready!(io.as_mut().poll_write(cx, &self.answer[self.written..])) {
                Ok(n) if n > 0 => self.written += n,
                // The peer is gone: nothing more to write.
                _ => self.written = self.answer.len(),
            }
        }
        if !self.shut {
            let _ = ready!(io.as_mut().poll_shutdown(cx));
            self.shut = true;
        }
        Poll::Ready(())
    }

    fn poll<T: AsyncRead + AsyncWrite>(
        &mut self,
        mut io: Pin<&mut T>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.written < self.answer.len() {
                match ready!(io.as_mut().poll_write(cx, &self.answer[self.written..])) {
                    Ok(n) if n > 0 => self.written += n,
                    _ => return Poll::Ready(Ok(())),
                }
            } else if !self.shut {
                let _ = ready!(io.as_mut().poll_shutdown(cx));
                self.shut = true;
            } else {
                let mut scratch = [0u8; 1024];
                let mut drop_buf = ReadBuf::new(&mut scratch);
                match ready!(io.as_mut().poll_read(cx, &mut drop_buf)) {
                    Ok(()) if !drop_buf.filled().is_empty() => {}
                    _ => return Poll::Ready(Ok(())),
                }
            }
        }
    }
}

/// Whether `head`, written while no request was handed over for the head in progress, is
/// hyper's own 431 (a head with more fields than hyper takes).
#[inline]
fn hyper_431(state: &ConnState, head: &[u8]) -> bool {
    head.get(8..13) == Some(b" 431 ") && state.head_refused_by_hyper()
}

impl<T: AsyncRead + AsyncWrite> TrackedIo<T> {
    /// Write lameduck's JSON 431 instead of hyper's (installed on the first write of it),
    /// and tell hyper its `len` bytes were written.
    fn replace_431(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let reject = this.reject.get_or_insert_with(|| {
            tracing::debug!("request head with too many header fields: answered 431");
            Box::new(Reject {
                answer: too_large_response(HeadCheck::TooMany, this.head.limit()),
                written: 0,
                shut: false,
            })
        });
        ready!(reject.poll_answer(this.io, cx));
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reject.is_some() || hyper_431(&self.state, buf) {
            return self.replace_431(cx, buf.len());
        }
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if self.reject.is_some() || hyper_431(&self.state, first) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return self.replace_431(cx, len);
        }
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reject.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Some(reject) = this.reject.as_mut() {
            ready!(reject.poll_answer(this.io, cx));
            return Poll::Ready(Ok(()));
        }
        this.io.poll_shutdown(cx)
    }
}
