//! The latency relay (`latency`, the lab's round trip for ssh): bytes
//! arrive intact, in order, and no sooner than the delay each way.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bytes_cross_intact_and_each_way_takes_the_delay() {
    // An echo server: what the relay sends comes back.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let mut relay = Command::new(env!("CARGO_BIN_EXE_latency"))
        .args(["50ms", "127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = relay.stdin.take().unwrap();
    let mut from = relay.stdout.take().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let sent = Instant::now();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            to.write_all(&data).unwrap();
            // Closing our side ends the relay once all came back.
        })
    };
    let mut first = [0u8; 1];
    from.read_exact(&mut first).unwrap();
    let round_trip = sent.elapsed();
    let mut back = first.to_vec();
    while back.len() < data.len() {
        let mut buf = vec![0u8; 1 << 16];
        let n = from.read(&mut buf).unwrap();
        assert!(n > 0, "the relay ended after {} bytes", back.len());
        back.extend_from_slice(&buf[..n]);
    }
    writer.join().unwrap();
    assert!(
        round_trip >= Duration::from_millis(100),
        "the first byte came back after {round_trip:?}, under two 50 ms delays"
    );
    assert!(back == data, "the bytes came back changed or out of order");
    let _ = relay.kill();
    let _ = relay.wait();
    drop(echo);
}
