use super::*;

fn s(x: f64) -> Duration {
    Duration::from_secs_f64(x)
}

const MB: u64 = 1 << 20;

#[test]
fn bar_moves_and_ends_at_100_percent() {
    let mut m = Meter::new(s(0.0), 100 * MB);
    m.update(s(1.0), 10 * MB);
    let l = bar_line("tank/data", &m, s(1.0), 200);
    assert!(
        l.starts_with("tank/data [##>-----------------]  10%  10.0 MB of 100.0 MB"),
        "{l}"
    );
    assert!(!l.contains("ETA"), "no ETA before 3 s of history: {l}");
    for i in 2..=10 {
        m.update(s(i as f64), i * 10 * MB);
    }
    let l = bar_line("tank/data", &m, s(10.0), 200);
    assert!(
        l.contains("[####################] 100%  100.0 MB of 100.0 MB"),
        "{l}"
    );
    assert!(l.contains("10.0 MB/s"), "steady rate: {l}");
}

#[test]
fn a_stream_larger_than_its_estimate_grows_the_total_and_never_passes_100() {
    let mut m = Meter::new(s(0.0), 50 * MB);
    for i in 1..=8 {
        m.update(s(i as f64), i * 10 * MB);
        let l = bar_line("big", &m, s(i as f64), 200);
        let pct: u32 = l
            .split('%')
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pct <= 100, "{l}");
        assert!(!l.contains('-') || m.done < m.total(), "{l}");
    }
    assert_eq!(m.total(), 80 * MB, "the total grew with the real stream");
    assert_eq!(m.fraction(), 1.0);
    assert_eq!(m.eta(s(8.0)), Some(Duration::ZERO));
    let log = log_line("big", &m, s(8.0));
    assert!(log.contains("80.0 MB of 80.0 MB (100%)"), "{log}");
}

#[test]
fn rate_is_smoothed_and_eta_shown_only_when_it_means_something() {
    let mut m = Meter::new(s(0.0), 1000 * MB);
    m.update(s(0.0), 0);
    m.update(s(1.0), 10 * MB);
    assert!((m.rate() - 10.0 * MB as f64).abs() < 1.0);
    // A burst of one second at 100 MB/s moves the rate only part of the way.
    m.update(s(2.0), 110 * MB);
    assert!(
        m.rate() > 10.0 * MB as f64 && m.rate() < 40.0 * MB as f64,
        "{}",
        m.rate()
    );
    assert_eq!(m.eta(s(2.0)), None, "under 3 s of history");
    m.update(s(4.0), 150 * MB);
    let eta = m.eta(s(4.0)).expect("eta after 3 s");
    assert!(eta > Duration::from_secs(10), "{eta:?}");
    // Unknown size: no percentage, no ETA.
    let mut u = Meter::new(s(0.0), 0);
    u.update(s(5.0), 5 * MB);
    assert_eq!(u.eta(s(5.0)), None);
    assert!(bar_line("u", &u, s(5.0), 200).contains("  ?%  5.0 MB  "));
}

#[test]
fn an_outage_is_shown_with_its_duration_attempts_and_what_is_safe() {
    let mut m = Meter::new(s(0.0), 100 * MB);
    m.update(s(5.0), 40 * MB);
    m.link_lost(s(6.0));
    m.reconnecting();
    m.reconnecting();
    m.reconnecting();
    let l = bar_line("tank/data", &m, s(48.0), 200);
    assert!(
        l.contains("40%  link lost 0:42 ago, 3 reconnect attempts; 40.0 MB safe at the receiver"),
        "{l}"
    );
    assert_eq!(m.eta(s(48.0)), None, "no ETA while the link is down");
    let log = log_line("tank/data", &m, s(3700.0));
    assert!(log.contains("link lost 1:01:34 ago"), "{log}");
    assert_eq!(m.link_ok(s(50.0)), Some(s(44.0)));
    assert!(!bar_line("tank/data", &m, s(50.0), 200).contains("link lost"));
}

#[test]
fn resent_bytes_are_shown_and_lines_fit_the_terminal() {
    let mut m = Meter::new(s(0.0), 100 * MB);
    m.update(s(1.0), 20 * MB);
    m.resent = 3 * MB;
    assert!(bar_line("x", &m, s(1.0), 200).contains("3.0 MB sent again"));
    assert!(bar_line("x", &m, s(1.0), 40).chars().count() <= 40);
}

/// With several connections, the line says how many are up; with one, it
/// says nothing of them.
#[test]
fn the_width_and_the_links_up_are_shown() {
    let mut m = Meter::new(s(0.0), 100 * MB);
    m.update(s(1.0), 20 * MB);
    assert!(!bar_line("x", &m, s(1.0), 200).contains("links"));
    m.links = vec!["up", "down", "joining", "up"];
    let line = log_line("x", &m, s(1.0));
    assert!(line.contains("2/4 links"), "{line}");
}

#[test]
fn a_nonsense_estimate_ends_at_100_percent_when_the_stream_completes() {
    // zfs send -nvP -t can overestimate a resumed stream.
    let mut m = Meter::new(s(0.0), 900 * MB);
    m.update(s(4.0), 120 * MB);
    assert!(bar_line("r", &m, s(4.0), 200).contains(" 13%"));
    m.complete();
    let l = bar_line("r", &m, s(4.0), 200);
    assert!(
        l.contains("[####################] 100%  120.0 MB of 120.0 MB"),
        "{l}"
    );
}

#[test]
fn bytes_in_flight_are_shown() {
    let mut m = Meter::new(s(0.0), 100 * MB);
    m.update(s(1.0), 20 * MB);
    m.sent = 28 * MB;
    assert!(bar_line("x", &m, s(1.0), 200).contains("8.0 MB in flight"));
}

#[test]
fn several_streams_share_one_line_with_their_sums() {
    let mut a = Meter::new(s(0.0), 100 * MB);
    let mut b = Meter::new(s(0.0), 50 * MB);
    for i in 1..=5 {
        a.update(s(i as f64), i * 10 * MB);
        b.update(s(i as f64), i * 5 * MB);
    }
    let l = combined_line(12, 50, &[&a, &b], s(5.0));
    assert!(
        l.starts_with("[12/50 datasets] 2 streams: 75.0 MB of 150.0 MB  15.0 MB/s"),
        "{l}"
    );
    // 75 MB left at 15 MB/s.
    assert!(l.ends_with("ETA 0:05"), "{l}");
    // One stream without an estimate: no total, no ETA.
    let c = Meter::new(s(0.0), 0);
    let l = combined_line(12, 50, &[&a, &c], s(5.0));
    assert!(!l.contains(" of ") && !l.contains("ETA"), "{l}");
    // One that lost its link: said, and no ETA.
    b.link_lost(s(5.0));
    let l = combined_line(12, 50, &[&a, &b], s(6.0));
    assert!(
        l.contains("1 waiting for the link") && !l.contains("ETA"),
        "{l}"
    );
    assert_eq!(combined_line(50, 50, &[], s(9.0)), "[50/50 datasets]");
}
