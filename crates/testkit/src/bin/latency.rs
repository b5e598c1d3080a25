//! A link with a round trip: relays bytes between stdin/stdout and a TCP
//! address, holding each direction's bytes for a one-way delay (this
//! kernel has no netem). As an ssh `ProxyCommand`:
//!
//! ```text
//! ssh -o 'ProxyCommand=latency 50ms %h %p' host ...
//! ```
//!
//! gives that connection a 100 ms round trip. `latency DELAY HOST PORT
//! HOLD` also holds every byte while the file HOLD exists (a blackhole
//! that TCP outlasts: nothing passes, nothing is lost; removing the file
//! heals the link). Bytes are read as they
//! come, stamped, and written once their delay has passed, in order; the
//! relay itself holds what is in flight (it adds no window of its own), so
//! what limits a transfer is what limits it on a long link: ssh's channel
//! window and TCP's, against the round trip.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes on their way, each piece with the time it may be written.
#[derive(Default)]
struct Flight {
    pieces: VecDeque<(Instant, Vec<u8>)>,
    ended: bool,
}

type Shared = Arc<(Mutex<Flight>, Condvar)>;

/// The file whose presence holds the link.
type Hold = Option<std::path::PathBuf>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(delay), Some(host), Some(port)) = (
        args.get(1).and_then(|d| parse_delay(d)),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("usage: latency DELAY HOST PORT [HOLD]  (DELAY: one way, e.g. 50ms, 0.2s; HOLD: a file whose presence stops the link)");
        std::process::exit(64);
    };
    let sock = match TcpStream::connect((host.as_str(), port.parse::<u16>().unwrap_or(22))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency: connect to {host}:{port}: {e}");
            std::process::exit(69);
        }
    };
    let _ = sock.set_nodelay(true);
    let hold: Hold = args.get(4).map(std::path::PathBuf::from);
    let _up = relay(
        std::io::stdin(),
        sock.try_clone().expect("clone"),
        (delay, hold.clone()),
        |s| {
            let _ = s.shutdown(std::net::Shutdown::Write);
        },
    );
    let down = relay(sock, std::io::stdout(), (delay, hold), |_| {});
    // The far end closed and everything it sent was passed on: done
    // (ssh may still hold our stdin open).
    let _ = down.join();
}

/// Copies `r` to `w`, each piece `delay` after it was read; `close`
/// passes the end on once everything was written.
fn relay<W: Write + Send + 'static>(
    mut r: impl Read + Send + 'static,
    w: W,
    (delay, hold): (Duration, Hold),
    close: fn(&mut W),
) -> std::thread::JoinHandle<()> {
    let shared: Shared = Arc::default();
    let writer = {
        let shared = shared.clone();
        std::thread::spawn(move || write_late(w, &shared, &hold, close))
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = r.read(&mut buf).unwrap_or(0);
            let (lock, cv) = &*shared;
            let mut f = lock.lock().expect("flight");
            if n == 0 {
                f.ended = true;
                cv.notify_all();
                break;
            }
            f.pieces
                .push_back((Instant::now() + delay, buf[..n].to_vec()));
            cv.notify_all();
        }
        let _ = writer.join();
    })
}

fn write_late<W: Write>(mut w: W, shared: &Shared, hold: &Hold, close: fn(&mut W)) {
    let (lock, cv) = &**shared;
    loop {
        let piece = {
            let mut f = lock.lock().expect("flight");
            loop {
                if let Some((at, _)) = f.pieces.front() {
                    let now = Instant::now();
                    if *at <= now {
                        break f.pieces.pop_front().map(|(_, p)| p);
                    }
                    let wait = *at - now;
                    f = cv.wait_timeout(f, wait).expect("flight").0;
                } else if f.ended {
                    break None;
                } else {
                    f = cv.wait(f).expect("flight");
                }
            }
        };
        let Some(piece) = piece else {
            close(&mut w);
            return;
        };
        while hold.as_ref().is_some_and(|h| h.exists()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if w.write_all(&piece).and_then(|()| w.flush()).is_err() {
            return;
        }
    }
}

/// "50ms", "0.2s", "200" (milliseconds).
fn parse_delay(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs.parse::<f64>().ok().map(Duration::from_secs_f64);
    }
    s.parse::<f64>()
        .ok()
        .map(|v| Duration::from_secs_f64(v / 1000.0))
}
