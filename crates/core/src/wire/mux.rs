//! The run's connection to a host (`agent serve`): one ssh session that
//! starts every agent of a `--jobs` thread on that host and carries each
//! transfer's first connection, tagged by a channel number (the transfer
//! id of the connection).
//!
//! The stream is a sequence of pieces, `u32 channel | u32 length | bytes`.
//! A piece of channel 0 is one control message (`Control`); a piece of
//! any other channel is the next bytes of that channel's connection,
//! passed on as they are: the frames of the agent protocol inside are
//! neither read nor cut, so every rule of that protocol holds on a
//! channel as on a connection of its own.

use super::{WireError, R, W};

/// This side's version of the control messages (`Control::Hi`).
pub const VERSION: u16 = 1;
/// Bytes before a piece's contents.
pub const HEADER: usize = 8;
/// The longest piece either side sends or accepts.
pub const MAX_PIECE: usize = 1 << 20;
/// The channel of control messages.
pub const CONTROL: u32 = 0;

/// A piece's header.
pub fn header(channel: u32, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&channel.to_be_bytes());
    h[4..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// A piece's channel and length, or an error for a length above
/// `MAX_PIECE` (garbage: the connection is dropped).
pub fn parse_header(h: &[u8; HEADER]) -> Result<(u32, usize), WireError> {
    let channel = u32::from_be_bytes(h[..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(h[4..].try_into().expect("4 bytes")) as usize;
    if len > MAX_PIECE {
        return Err(WireError::TooLarge(len));
    }
    Ok((channel, len))
}

/// Messages on channel 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Both sides' first message: a coordinator does not use a host
    /// agent of another version (it starts its agents as before).
    Hi {
        version: u16,
    },
    /// Coordinator -> host: run `agent start ARGV...` (the agent's own
    /// arguments) and join its socket to `channel`.
    Start {
        channel: u32,
        argv: Vec<String>,
    },
    /// Coordinator -> host: join the socket of the live agent in `dir` to
    /// `channel` (a rerun re-attaching).
    Attach {
        channel: u32,
        dir: String,
    },
    /// Host -> coordinator: `channel` is joined to the agent in `dir`.
    Opened {
        channel: u32,
        dir: String,
    },
    /// Host -> coordinator: `channel` could not be joined; `gone`: no
    /// agent answers at the directory asked for.
    Refused {
        channel: u32,
        gone: bool,
        why: String,
    },
    /// Either way: `channel` ended (its agent closed the connection, or
    /// the coordinator let go of it). Its bytes still in flight are
    /// dropped.
    Close {
        channel: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

mod kind {
    pub const HI: u8 = 1;
    pub const START: u8 = 2;
    pub const ATTACH: u8 = 3;
    pub const OPENED: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const CLOSE: u8 = 6;
    pub const PING: u8 = 7;
    pub const PONG: u8 = 8;
}

/// A control message as a whole piece of channel 0 (header included).
pub fn encode(c: &Control) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(64));
    match c {
        Control::Hi { version } => {
            w.u8(kind::HI);
            w.u16(*version);
        }
        Control::Start { channel, argv } => {
            w.u8(kind::START);
            w.u32(*channel);
            w.u32(argv.len() as u32);
            for a in argv {
                w.bytes(a.as_bytes());
            }
        }
        Control::Attach { channel, dir } => {
            w.u8(kind::ATTACH);
            w.u32(*channel);
            w.bytes(dir.as_bytes());
        }
        Control::Opened { channel, dir } => {
            w.u8(kind::OPENED);
            w.u32(*channel);
            w.bytes(dir.as_bytes());
        }
        Control::Refused { channel, gone, why } => {
            w.u8(kind::REFUSED);
            w.u32(*channel);
            w.u8(u8::from(*gone));
            w.bytes(why.as_bytes());
        }
        Control::Close { channel } => {
            w.u8(kind::CLOSE);
            w.u32(*channel);
        }
        Control::Ping { nonce } => {
            w.u8(kind::PING);
            w.u64(*nonce);
        }
        Control::Pong { nonce } => {
            w.u8(kind::PONG);
            w.u64(*nonce);
        }
    }
    let mut piece = header(CONTROL, w.0.len()).to_vec();
    piece.extend_from_slice(&w.0);
    piece
}

/// Decodes the contents of a piece of channel 0.
pub fn decode(body: &[u8]) -> Result<Control, WireError> {
    let mut r = R {
        b: body,
        what: "control",
    };
    let c = match r.u8()? {
        kind::HI => Control::Hi { version: r.u16()? },
        kind::START => {
            let channel = r.u32()?;
            let n = r.u32()? as usize;
            // Each word takes at least its 4-byte length.
            if n > body.len() / 4 {
                return Err(WireError::Malformed("control"));
            }
            let mut argv = Vec::with_capacity(n);
            for _ in 0..n {
                argv.push(r.string()?);
            }
            Control::Start { channel, argv }
        }
        kind::ATTACH => Control::Attach {
            channel: r.u32()?,
            dir: r.string()?,
        },
        kind::OPENED => Control::Opened {
            channel: r.u32()?,
            dir: r.string()?,
        },
        kind::REFUSED => Control::Refused {
            channel: r.u32()?,
            gone: r.u8()? != 0,
            why: r.string()?,
        },
        kind::CLOSE => Control::Close { channel: r.u32()? },
        kind::PING => Control::Ping { nonce: r.u64()? },
        kind::PONG => Control::Pong { nonce: r.u64()? },
        t => return Err(WireError::UnknownType(t)),
    };
    r.done()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Control> {
        vec![
            Control::Hi { version: VERSION },
            Control::Start {
                channel: 7,
                argv: vec!["receive".into(), "--key".into(), "k".into(), "".into()],
            },
            Control::Attach {
                channel: u32::MAX,
                dir: "/tmp/syncoid-rsync-0123456789abcdef".into(),
            },
            Control::Opened {
                channel: 1,
                dir: "/tmp/x".into(),
            },
            Control::Refused {
                channel: 2,
                gone: true,
                why: "no agent: é".into(),
            },
            Control::Close { channel: 3 },
            Control::Ping { nonce: 9 },
            Control::Pong { nonce: u64::MAX },
        ]
    }

    #[test]
    fn every_control_message_reads_back_as_itself() {
        for c in all() {
            let piece = encode(&c);
            let (channel, len) = parse_header(piece[..HEADER].try_into().unwrap()).unwrap();
            assert_eq!((channel, len), (CONTROL, piece.len() - HEADER));
            assert_eq!(decode(&piece[HEADER..]), Ok(c));
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for c in all() {
            let piece = encode(&c);
            let body = &piece[HEADER..];
            for cut in 0..body.len() {
                assert!(decode(&body[..cut]).is_err(), "{c:?} cut at {cut}");
            }
            let mut longer = body.to_vec();
            longer.push(0);
            assert!(decode(&longer).is_err(), "{c:?} with a byte more");
        }
        // An argv count no body could hold is refused before allocating.
        let mut w = W(Vec::new());
        w.u8(kind::START);
        w.u32(1);
        w.u32(u32::MAX);
        assert!(decode(&w.0).is_err());
        assert!(decode(&[99]).is_err());
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_piece_longer_than_the_limit_is_refused() {
        assert_eq!(parse_header(&header(5, MAX_PIECE)), Ok((5, MAX_PIECE)));
        assert!(parse_header(&header(5, MAX_PIECE + 1)).is_err());
    }
}
