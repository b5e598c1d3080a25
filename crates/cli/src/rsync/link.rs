//! An agent's connection to its coordinator. Locally that is the
//! coordinator's own connection to the agent's socket. Through ssh it is
//! the ssh session's stdin and stdout themselves: `agent bridge` connects
//! to the socket, hands those two descriptors over (SCM_RIGHTS) and then
//! only waits, so no process of ours copies the stream between sshd and
//! the agent.
//!
//! A pipe has no `shutdown()`, so every read and write waits in `poll()`
//! beside a wake-up pipe: `cancel()` ends them at once, even when the link
//! under them is stuck and the peer never reads or writes again.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The byte `agent bridge` sends with the two descriptors. Never the first
/// byte of a frame: a frame starts with its length, at most
/// `wire::MAX_FRAME` (under 2^25), so its first byte is 0 or 1.
pub const ATTACH: u8 = b'A';

/// How long an accepted connection may take to show its first byte before
/// it is taken as a direct one.
const FIRST_BYTE: Duration = Duration::from_secs(5);

/// One connection; clones share it (a reader thread and a writer).
#[derive(Clone)]
pub struct Link(Arc<Inner>);

struct Inner {
    rx: OwnedFd,
    tx: OwnedFd,
    /// Readable once cancelled: wakes whatever waits in poll().
    wake_r: OwnedFd,
    wake_w: OwnedFd,
    cancelled: AtomicBool,
    /// The bridge's socket when the pipes were handed over: the bridge
    /// (and with it the ssh session) ends when this closes.
    hold: Option<UnixStream>,
    /// How `write_pages` reaches `tx`.
    pages: Mutex<Pages>,
}

/// How `write_pages` hands memory to the kernel.
enum Pages {
    /// `tx` is a pipe: straight into it.
    Pipe,
    /// `tx` is a socket: through a private pipe (read end, write end),
    /// made at the first use, that is empty between calls.
    Through(Option<(OwnedFd, OwnedFd)>),
    /// The kernel refused: plain writes.
    Copy,
}

pub(super) fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A close-on-exec pipe (read end, write end), with `flags` added.
pub(super) fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Link {
    /// Takes an accepted connection: the ssh session's pipes if the peer
    /// is `agent bridge` handing them over, otherwise the socket itself.
    pub fn accept(s: UnixStream) -> io::Result<Link> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(FIRST_BYTE))?;
        let mut first = [0u8; 1];
        // SAFETY: peeking one byte into a buffer of one byte.
        let peeked =
            cvt(unsafe { libc::recv(s.as_raw_fd(), first.as_mut_ptr().cast(), 1, libc::MSG_PEEK) });
        s.set_read_timeout(None)?;
        if matches!(peeked, Ok(1)) && first[0] == ATTACH {
            let (rx, tx) = recv_pipes(&s)?;
            return Link::new(rx, tx, Some(s));
        }
        // A direct connection (or one that said nothing yet, or closed):
        // its bytes are frames, left unread for the reader.
        Link::direct(s)
    }

    pub(super) fn direct(s: UnixStream) -> io::Result<Link> {
        let rx = OwnedFd::from(s.try_clone()?);
        Link::new(rx, OwnedFd::from(s), None)
    }

    fn new(rx: OwnedFd, tx: OwnedFd, hold: Option<UnixStream>) -> io::Result<Link> {
        set_nonblocking(rx.as_raw_fd())?;
        set_nonblocking(tx.as_raw_fd())?;
        if hold.is_some() {
            // sshd's pipes: a chunk passes in one write instead of sixteen.
            crate::transfer::widen_pipe(&rx);
            crate::transfer::widen_pipe(&tx);
        }
        let (wake_r, wake_w) = pipe(libc::O_NONBLOCK)?;
        let pages = if is_pipe(tx.as_raw_fd()) {
            Pages::Pipe
        } else {
            Pages::Through(None)
        };
        Ok(Link(Arc::new(Inner {
            rx,
            tx,
            wake_r,
            wake_w,
            cancelled: AtomicBool::new(false),
            hold,
            pages: Mutex::new(pages),
        })))
    }

    /// Whether the ssh session's pipes were handed over (no bridge copies).
    pub fn attached(&self) -> bool {
        self.0.hold.is_some()
    }

    /// Ends every read and write on this connection, now and later, in
    /// every clone. The descriptors close when the last clone is dropped.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        // SAFETY: one byte from a local into our wake-up pipe.
        unsafe {
            libc::write(self.0.wake_w.as_raw_fd(), [1u8].as_ptr().cast(), 1);
        }
    }

    fn aborted() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "connection replaced")
    }

    /// Waits until `fd` is ready for `events` or the link is cancelled.
    fn wait(&self, fd: RawFd, events: libc::c_short) -> io::Result<()> {
        let mut p = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.0.wake_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if self.0.cancelled.load(Ordering::SeqCst) {
                return Err(Link::aborted());
            }
            // SAFETY: two pollfds that live across the call.
            if unsafe { libc::poll(p.as_mut_ptr(), 2, -1) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if p[1].revents != 0 {
                return Err(Link::aborted());
            }
            // Ready, hung up or failed: the next read or write tells which.
            return Ok(());
        }
    }

    fn io(
        &self,
        fd: RawFd,
        events: libc::c_short,
        mut op: impl FnMut() -> isize,
    ) -> io::Result<usize> {
        loop {
            if self.0.cancelled.load(Ordering::SeqCst) {
                return Err(Link::aborted());
            }
            match cvt(op()) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(fd, events)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Link {
    /// Writes `bytes` whole, like `write_all`, but hands the kernel
    /// references to their pages (`vmsplice(2)`) instead of copying them:
    /// into `tx` when it is a pipe, else through a private pipe spliced
    /// into the socket (emptied before this returns, so later writes stay
    /// in order). Where the kernel refuses, the bytes are copied.
    ///
    /// The pipe (and whatever it is spliced on to) reads the caller's
    /// memory until the bytes are consumed, after this returns: `bytes`
    /// must not change until its reader is known to have them. The sender
    /// agent writes chunks from its spool this way; a chunk leaves the
    /// spool only once the receiver acknowledged it, which it does only
    /// after verifying the bytes (and a chunk damaged on its way would be
    /// refused by that same check).
    pub fn write_pages(&mut self, bytes: &[u8]) -> io::Result<()> {
        let inner = self.0.clone();
        let mut pages = inner.pages.lock().expect("pages");
        let tx = inner.tx.as_raw_fd();
        let mut done = 0;
        while done < bytes.len() {
            let rest = &bytes[done..];
            let step = match &mut *pages {
                Pages::Copy => return self.write_all(rest),
                Pages::Pipe => self.vmsplice(tx, rest),
                Pages::Through(mid) => {
                    if mid.is_none() {
                        let (r, w) = pipe(libc::O_NONBLOCK)?;
                        crate::transfer::widen_pipe(&w);
                        *mid = Some((r, w));
                    }
                    let (r, w) = mid.as_ref().expect("made");
                    // Counted in `done` as they reach `tx`, so a failure
                    // part-way knows whether any byte got there.
                    self.vmsplice(w.as_raw_fd(), rest).and_then(|n| {
                        self.splice_all(r.as_raw_fd(), tx, n, &mut done)?;
                        Ok(0)
                    })
                }
            };
            match step {
                Ok(n) => done += n,
                // Refused before a byte reached `tx`: copy them all.
                Err(e) if refused(&e) && done == 0 => *pages = Pages::Copy,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands up to all of `bytes` to the pipe `fd`; returns how many.
    fn vmsplice(&self, fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
        let iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: one iovec over the caller's live slice; the kernel only
        // reads it (see `write_pages` for how long).
        self.io(fd, libc::POLLOUT, || unsafe {
            libc::vmsplice(fd, &iov, 1, libc::SPLICE_F_NONBLOCK)
        })
    }

    /// Moves exactly `len` bytes from the private pipe `from` into `to`,
    /// counting them in `moved`.
    fn splice_all(
        &self,
        from: RawFd,
        to: RawFd,
        mut len: usize,
        moved: &mut usize,
    ) -> io::Result<()> {
        while len > 0 {
            let n = self.io(to, libc::POLLOUT, || {
                splice(from, to, len, libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MORE)
            })?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            len -= n;
            *moved += n;
        }
        Ok(())
    }
}

/// `splice(2)` of up to `len` bytes from `from` to `to` at their current
/// positions (no offsets); the raw result.
pub(super) fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> isize {
    // SAFETY: splice between two descriptors the caller holds open; with
    // null offsets the kernel touches no memory of ours.
    unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    }
}

/// Whether the kernel refused to splice at all, rather than failed: the
/// call does not apply to this descriptor (EINVAL; EBADF, not a pipe) or is
/// not allowed here (EPERM, ENOSYS: a seccomp filter, an old kernel).
/// Plain reads and writes do the same work.
pub(super) fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EBADF | libc::EPERM | libc::ENOSYS)
    )
}

fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat into a zeroed stat of our own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.0.rx.as_raw_fd();
        // SAFETY: reading into the caller's buffer, within its length.
        self.io(fd, libc::POLLIN, || unsafe {
            libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
        })
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.0.tx.as_raw_fd();
        // SAFETY: writing from the caller's buffer, within its length.
        self.io(fd, libc::POLLOUT, || unsafe {
            libc::write(fd, buf.as_ptr().cast(), buf.len())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `agent bridge`'s half: hands this process's stdin and stdout to the
/// agent behind `s`.
pub fn send_stdio(s: &UnixStream) -> io::Result<()> {
    send_pipes(s, [0, 1])
}

/// Sends ATTACH with `fds` (read side, write side) over `s`.
fn send_pipes(s: &UnixStream, fds: [RawFd; 2]) -> io::Result<()> {
    let byte = [ATTACH];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut space = [0u64; 8];
    // SAFETY: the control buffer is 64 bytes, aligned for cmsghdr, and
    // CMSG_SPACE of two descriptors fits in it; the header and data written
    // are within it.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), 2);
        match cvt(libc::sendmsg(s.as_raw_fd(), &msg, 0))? {
            1 => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::WriteZero, "attach not sent")),
        }
    }
}

/// The agent's half: the ATTACH byte and the two descriptors with it.
fn recv_pipes(s: &UnixStream) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 8];
    let mut got = Vec::new();
    // SAFETY: recvmsg writes within the iovec and the 64-byte control
    // buffer; every descriptor it installed is taken into an OwnedFd, so
    // none leaks whatever the sender put there.
    let (n, flags) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&space) as _;
        let n = cvt(libc::recvmsg(
            s.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC,
        ))?;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    got.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        (n, msg.msg_flags)
    };
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("attach: {why}"));
    if n != 1 || byte[0] != ATTACH {
        return Err(bad("no attach byte"));
    }
    if flags & libc::MSG_CTRUNC != 0 || got.len() != 2 {
        return Err(bad("expected two descriptors"));
    }
    let tx = got.pop().expect("two");
    let rx = got.pop().expect("two");
    Ok((rx, tx))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn files() -> (std::fs::File, std::fs::File) {
        let (r, w) = pipe(0).unwrap();
        (r.into(), w.into())
    }

    /// A bridge that hands over two pipes: the agent reads what is written
    /// into one and writes into the other, and the bridge's socket stays
    /// open until the agent drops the link.
    #[test]
    fn handed_over_pipes_carry_the_stream_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (in_r, mut in_w) = files();
        let (mut out_r, out_w) = files();
        let bridge = std::thread::spawn(move || {
            let s = UnixStream::connect(&path).unwrap();
            // What a bridge does with fds 0 and 1, with two pipes instead.
            send_pipes(&s, [in_r.as_raw_fd(), out_w.as_raw_fd()]).unwrap();
            drop((in_r, out_w));
            // Waits for the agent to let go, as the bridge does.
            let mut rest = Vec::new();
            (&s).read_to_end(&mut rest).unwrap();
            rest
        });
        let (s, _) = listener.accept().unwrap();
        let mut link = Link::accept(s).unwrap();
        assert!(link.attached());
        let data = syncoid_rsync_core::fuzz::noise(3 << 20, 7);
        let feed = {
            let data = data.clone();
            std::thread::spawn(move || in_w.write_all(&data).unwrap())
        };
        let mut got = vec![0u8; data.len()];
        link.read_exact(&mut got).unwrap();
        feed.join().unwrap();
        assert!(got == data, "the stream read through the link differs");
        let back = std::thread::spawn(move || {
            let mut v = Vec::new();
            out_r.read_to_end(&mut v).unwrap();
            v
        });
        link.write_all(&data).unwrap();
        drop(link);
        assert!(
            back.join().unwrap() == data,
            "the stream written through the link differs"
        );
        assert!(
            bridge.join().unwrap().is_empty(),
            "the bridge's socket carried data"
        );
    }

    /// A direct connection's first bytes are frames: none is consumed.
    #[test]
    fn a_direct_connection_keeps_its_first_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"\x00\x00\x00\x05hello").unwrap();
        let mut link = Link::accept(a).unwrap();
        assert!(!link.attached());
        let mut got = [0u8; 9];
        link.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00\x00\x00\x05hello");
        link.write_all(b"back").unwrap();
        let mut back = [0u8; 4];
        b.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");
    }

    /// cancel() ends a read and a write that are stuck on a peer that
    /// never reads nor writes (what a pipe to a dead ssh session is).
    #[test]
    fn cancel_ends_blocked_reads_and_writes() {
        let (a, _peer) = UnixStream::pair().unwrap();
        let link = Link::direct(a).unwrap();
        let (mut r, mut w) = (link.clone(), link.clone());
        let reader = std::thread::spawn(move || r.read(&mut [0u8; 16]).map_err(|e| e.kind()));
        let writer = std::thread::spawn(move || {
            let big = vec![0u8; 64 << 20];
            w.write_all(&big).map_err(|e| e.kind())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !reader.is_finished() && !writer.is_finished(),
            "nothing to read, no room to write"
        );
        link.cancel();
        assert_eq!(
            reader.join().unwrap().unwrap_err(),
            io::ErrorKind::ConnectionAborted
        );
        assert_eq!(
            writer.join().unwrap().unwrap_err(),
            io::ErrorKind::ConnectionAborted
        );
    }

    /// Bytes handed over by reference arrive whole and in order with the
    /// ones written around them, into a pipe and into a socket (through
    /// the private pipe), in pieces larger and smaller than a pipe holds.
    #[test]
    fn pages_handed_over_arrive_in_order_with_writes() {
        for socket in [false, true] {
            let (mut link, mut peer): (Link, Box<dyn Read + Send>) = if socket {
                let (a, b) = UnixStream::pair().unwrap();
                (Link::direct(a).unwrap(), Box::new(b))
            } else {
                let (r, w) = pipe(0).unwrap();
                let (_, unused) = pipe(0).unwrap();
                let link = Link::new(unused, w, None).unwrap();
                (link, Box::new(std::fs::File::from(r)))
            };
            let pieces: Vec<Vec<u8>> = [62usize, 3 << 20, 5, 70_000, 1 << 20]
                .iter()
                .enumerate()
                .map(|(i, n)| syncoid_rsync_core::fuzz::noise(*n, i as u64))
                .collect();
            let want: Vec<u8> = pieces.concat();
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                peer.read_to_end(&mut v).unwrap();
                v
            });
            for (i, p) in pieces.iter().enumerate() {
                if i % 2 == 0 {
                    link.write_all(p).unwrap();
                } else {
                    link.write_pages(p).unwrap();
                }
            }
            assert!(
                matches!(
                    *link.0.pages.lock().unwrap(),
                    Pages::Pipe | Pages::Through(Some(_))
                ),
                "pages were copied ({socket})"
            );
            drop(link);
            assert!(
                reader.join().unwrap() == want,
                "the bytes differ ({socket})"
            );
        }
    }

    /// Makes splice(2) and vmsplice(2) fail with EPERM on the calling
    /// thread from now on, as a container's seccomp filter may (a seccomp
    /// filter without TSYNC applies to the thread that installs it).
    pub(in crate::rsync) fn deny_splice_on_this_thread() {
        let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        const LD_W_ABS: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        let prog = [
            // The syscall number (seccomp_data.nr, at offset 0).
            insn(LD_W_ABS, 0, 0, 0),
            insn(JEQ_K, 2, 0, libc::SYS_vmsplice as u32),
            insn(JEQ_K, 1, 0, libc::SYS_splice as u32),
            insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
            insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with a filter program that lives across the call;
        // it only makes two syscalls fail on this thread.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog),
                0,
                "seccomp: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Where a seccomp filter forbids splicing, the bytes are written
    /// instead, into a pipe and into a socket alike.
    #[test]
    fn pages_are_copied_where_splicing_is_forbidden() {
        std::thread::spawn(|| {
            deny_splice_on_this_thread();
            let (a, mut b) = UnixStream::pair().unwrap();
            let mut link = Link::direct(a).unwrap();
            let data = syncoid_rsync_core::fuzz::noise(3 << 20, 9);
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                b.read_to_end(&mut v).unwrap();
                v
            });
            link.write_pages(&data).unwrap();
            assert!(matches!(*link.0.pages.lock().unwrap(), Pages::Copy));
            drop(link);
            assert!(reader.join().unwrap() == data, "the bytes differ");
            let (r, w) = pipe(0).unwrap();
            let (_, unused) = pipe(0).unwrap();
            let mut link = Link::new(unused, w, None).unwrap();
            let reader = std::thread::spawn(move || {
                let mut v = Vec::new();
                std::fs::File::from(r).read_to_end(&mut v).unwrap();
                v
            });
            link.write_pages(&data).unwrap();
            assert!(matches!(*link.0.pages.lock().unwrap(), Pages::Copy));
            drop(link);
            assert!(reader.join().unwrap() == data, "the bytes differ");
        })
        .join()
        .unwrap();
    }

    /// Something that says it attaches but sends no descriptors is refused.
    #[test]
    fn an_attach_without_descriptors_is_refused() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[ATTACH]).unwrap();
        let e = Link::accept(a).err().expect("refused");
        assert!(e.to_string().contains("two descriptors"), "{e}");
    }
}
