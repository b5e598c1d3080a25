//! `--rsync`: a chunked, verified transport that survives outages. See
//! docs/design.md for the protocol, the resume invariants and cleanup.

pub mod agent;
pub mod coordinator;
pub mod session;

use std::io::Read;
use syncoid_rsync_core::wire::{self, Decoder, Msg};

/// Why `read_msgs` stopped.
pub enum Stop {
    /// The handler asked to stop.
    Handler,
    /// The peer closed the connection.
    Closed,
    /// A read failed or a frame was malformed.
    Failed(String),
}

/// Reads frames from `r` and hands each message to `f` until `f` returns
/// false, the input ends or a frame is malformed.
pub fn read_msgs(r: &mut impl Read, mut f: impl FnMut(Msg) -> bool) -> Stop {
    read_frames(r, |frame| match wire::decode_frame(&frame) {
        Ok(m) => Ok(f(m)),
        Err(e) => Err(format!("protocol error: {e}")),
    })
}

/// Reads whole frames (length prefix included, undecoded) from `r` and
/// hands each to `f` until `f` returns false or an error, the input ends,
/// or a frame is malformed.
pub fn read_frames(r: &mut impl Read, mut f: impl FnMut(Vec<u8>) -> Result<bool, String>) -> Stop {
    let mut d = Decoder::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => match f(frame) {
                    Ok(true) => {}
                    Ok(false) => return Stop::Handler,
                    Err(e) => return Stop::Failed(e),
                },
                Ok(None) => break,
                Err(e) => return Stop::Failed(format!("protocol error: {e}")),
            }
        }
        match r.read(&mut buf) {
            Ok(0) => return Stop::Closed,
            Ok(n) => d.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Stop::Failed(format!("read: {e}")),
        }
    }
}
