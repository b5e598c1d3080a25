//! A link that damages one chunk: copies `--rsync` frames from stdin to
//! stdout and flips a payload byte of chunk SEQ, once (the first time it
//! passes, across runs of this filter, while ONCE does not exist; it is
//! created then). Tests put it in front of ssh on the coordinator's
//! connection to the receiver agent: `tamper SEQ ONCE | ssh ...`.

use std::io::{Read, Write};
use syncoid_rsync_core::wire;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(seq), Some(once)) = (args.get(1).and_then(|s| s.parse::<u64>().ok()), args.get(2))
    else {
        eprintln!("usage: tamper SEQ ONCE-FILE");
        std::process::exit(64);
    };
    let (mut r, mut w) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut frame = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        frame.clear();
        frame.extend_from_slice(&len);
        frame.resize(4 + n, 0);
        if r.read_exact(&mut frame[4..]).is_err() {
            return;
        }
        let target = wire::chunk_header(&frame).is_some_and(|h| h.seq == seq && h.payload > 0);
        if target
            && std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(once)
                .is_ok()
        {
            let last = frame.len() - 1;
            frame[last] ^= 0xff;
            eprintln!("tamper: damaged chunk {seq}");
        }
        if w.write_all(&frame).and_then(|()| w.flush()).is_err() {
            return;
        }
    }
}
