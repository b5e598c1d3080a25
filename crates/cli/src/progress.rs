//! What the user sees while data moves, with four faces: a bar redrawn in
//! place when stderr is a terminal, plain log lines at a steady interval
//! when it is not (cron, systemd), nothing with `--quiet`, and JSON lines
//! on stdout with `--json` (one object per event; the schema is in
//! docs/json-events.md and checked by tests).
//!
//! The `Meter` and the line renderers are pure: time and counters are
//! passed in, so the bar's arithmetic (never above 100%, a total that grows
//! when the stream outgrows `zfs send -nvP`'s estimate, a smoothed rate,
//! an ETA only when it means something, the outage text) is unit-tested.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::output::readable;

/// Exact counters of one stream, with a smoothed rate.
#[derive(Debug, Clone)]
pub struct Meter {
    started: Duration,
    estimate: u64,
    /// Bytes taken by zfs receive (safe at the receiver).
    pub done: u64,
    /// Stream bytes produced by zfs send and sent on (ahead of `done` by
    /// what is in flight), payload bytes over the wire, and those sent
    /// more than once.
    pub sent: u64,
    pub wire: u64,
    pub resent: u64,
    rate: f64,
    sample: Option<(Duration, u64)>,
    /// Since when the link has been down, and reconnect attempts so far.
    pub outage: Option<(Duration, u32)>,
    /// With several connections per agent (`--streams`): each one's state
    /// ("up", "down", "joining"); empty with one.
    pub links: Vec<&'static str>,
}

/// Rate smoothing time constant.
const TAU: f64 = 5.0;

impl Meter {
    pub fn new(now: Duration, estimate: u64) -> Meter {
        Meter {
            started: now,
            estimate,
            done: 0,
            sent: 0,
            wire: 0,
            resent: 0,
            rate: 0.0,
            sample: None,
            outage: None,
            links: Vec::new(),
        }
    }

    /// Records the receiver's position at `now`.
    pub fn update(&mut self, now: Duration, done: u64) {
        match self.sample {
            None => self.sample = Some((now, done)),
            Some((t, d)) => {
                let dt = now.saturating_sub(t).as_secs_f64();
                if dt >= 0.5 {
                    let inst = done.saturating_sub(d) as f64 / dt;
                    let w = 1.0 - (-dt / TAU).exp();
                    self.rate = if self.rate == 0.0 {
                        inst
                    } else {
                        self.rate + w * (inst - self.rate)
                    };
                    self.sample = Some((now, done));
                }
            }
        }
        self.done = self.done.max(done);
    }

    /// The estimate, or what really came when the stream outgrew it.
    pub fn total(&self) -> u64 {
        self.estimate.max(self.done)
    }

    pub fn estimate_known(&self) -> bool {
        self.estimate > 0
    }

    /// 0.0..=1.0 (0 when the size is unknown).
    pub fn fraction(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (self.done as f64 / total as f64).clamp(0.0, 1.0)
    }

    /// Bytes per second, smoothed.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Time left, shown only with a known size, a measured rate, at least
    /// 3 s of history and no outage.
    pub fn eta(&self, now: Duration) -> Option<Duration> {
        let elapsed = now.saturating_sub(self.started).as_secs_f64();
        if !self.estimate_known() || self.rate < 1.0 || elapsed < 3.0 || self.outage.is_some() {
            return None;
        }
        let left = self.total().saturating_sub(self.done) as f64;
        Some(Duration::from_secs_f64(left / self.rate))
    }

    /// The whole stream arrived: its size is what came.
    pub fn complete(&mut self) {
        self.estimate = self.done;
    }

    pub fn link_lost(&mut self, now: Duration) {
        if self.outage.is_none() {
            self.outage = Some((now, 0));
        }
    }

    pub fn reconnecting(&mut self) {
        if let Some((_, n)) = &mut self.outage {
            *n += 1;
        }
    }

    /// The link works again; returns how long it was down.
    pub fn link_ok(&mut self, now: Duration) -> Option<Duration> {
        self.outage.take().map(|(t, _)| now.saturating_sub(t))
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn rate_text(bps: f64) -> String {
    format!("{}/s", readable(bps as u64))
}

/// The part after the name, shared by the bar and the log line (`pct`
/// follows the sizes).
fn status(m: &Meter, now: Duration, pct: &str) -> String {
    if let Some((since, attempts)) = m.outage {
        return format!(
            "link lost {} ago, {attempts} reconnect attempt{}; {} safe at the receiver",
            clock(now.saturating_sub(since)),
            if attempts == 1 { "" } else { "s" },
            readable(m.done)
        );
    }
    let of = if m.estimate_known() {
        format!(" of {}", readable(m.total()))
    } else {
        String::new()
    };
    let mut s = format!("{}{of}{pct}  {}", readable(m.done), rate_text(m.rate()));
    if m.sent > m.done {
        s.push_str(&format!("  {} in flight", readable(m.sent - m.done)));
    }
    if m.resent > 0 {
        s.push_str(&format!("  {} sent again", readable(m.resent)));
    }
    if !m.links.is_empty() {
        let up = m.links.iter().filter(|l| **l == "up").count();
        s.push_str(&format!("  {up}/{} links", m.links.len()));
    }
    if let Some(eta) = m.eta(now) {
        s.push_str(&format!("  ETA {}", clock(eta)));
    }
    s
}

/// One terminal line: `name [#####>----]  45%  450 MB of 1.0 GB  85 MB/s  ETA 0:07`.
pub fn bar_line(name: &str, m: &Meter, now: Duration, width: usize) -> String {
    let pct = if m.estimate_known() {
        format!("{:>3.0}%", (m.fraction() * 100.0).floor())
    } else {
        "  ?%".to_string()
    };
    let cells = 20;
    let filled = (m.fraction() * cells as f64).floor() as usize;
    let bar: String = (0..cells)
        .map(|i| match i.cmp(&filled) {
            std::cmp::Ordering::Less => '#',
            std::cmp::Ordering::Equal if filled < cells => '>',
            _ => '-',
        })
        .collect();
    let line = format!("{name} [{bar}] {pct}  {}", status(m, now, ""));
    line.chars().take(width.max(20)).collect()
}

/// One log line for a non-terminal stderr.
pub fn log_line(name: &str, m: &Meter, now: Duration) -> String {
    let pct = if m.estimate_known() {
        format!(" ({:.0}%)", (m.fraction() * 100.0).floor())
    } else {
        String::new()
    };
    format!("progress {name}: {}", status(m, now, &pct))
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Bar,
    Log,
    Json,
    Quiet,
}

/// The run's progress display (one per run; safe to share).
pub struct Progress {
    face: Face,
    /// Connections per agent (`--streams`).
    streams: usize,
    start: Instant,
    log_every: Duration,
    state: Mutex<State>,
}

struct State {
    current: Option<(String, String, Meter)>,
    /// Which dataset of the plan (1-based) and how many there are.
    position: (usize, usize),
    last_draw: Option<Duration>,
    drawn: bool,
    /// The stream's counters were updated at least once. A stream nothing
    /// counts (standard mode without a terminal has no meter in its
    /// pipeline) shows no progress, rather than "0 B".
    counted: bool,
}

impl Progress {
    pub fn new(face: Face) -> Progress {
        let log_every = std::env::var("SYNCOID_RSYNC_LOG_INTERVAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(10));
        Progress {
            face,
            streams: 1,
            start: Instant::now(),
            log_every,
            state: Mutex::new(State {
                current: None,
                position: (0, 0),
                last_draw: None,
                drawn: false,
                counted: false,
            }),
        }
    }

    /// The same display, for streams over `streams` connections each.
    pub fn with_streams(self, streams: usize) -> Progress {
        Progress { streams, ..self }
    }

    pub fn face(&self) -> Face {
        self.face
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Writes one JSON event (with `--json`): `event`, `elapsed` seconds
    /// since the start, `time` (Unix seconds), then `fields`.
    pub fn json(&self, event: &str, fields: serde_json::Value) {
        if self.face != Face::Json {
            return;
        }
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), event.into());
        obj.insert(
            "elapsed".into(),
            ((self.now().as_secs_f64() * 1000.0).round() / 1000.0).into(),
        );
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        obj.insert("time".into(), ((unix * 1000.0).round() / 1000.0).into());
        if let serde_json::Value::Object(f) = fields {
            obj.extend(f);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
        let _ = out.flush();
    }

    /// The plan's dataset `index` (1-based) of `count` is next.
    pub fn dataset(&self, index: usize, count: usize) {
        self.state.lock().expect("progress").position = (index, count);
    }

    /// A stream starts: `estimate` from zfs send -nvP (0: unknown).
    pub fn start_stream(&self, source: &str, target: &str, estimate: u64) {
        let mut st = self.state.lock().expect("progress");
        st.current = Some((
            source.to_string(),
            target.to_string(),
            Meter::new(self.now(), estimate),
        ));
        st.last_draw = None;
        st.drawn = false;
        st.counted = false;
    }

    /// Updates the counters and redraws when due: `done` bytes taken by
    /// zfs receive, `sent` produced and sent on (standard mode: both are
    /// what passed the meter), `wire` payload bytes and `resent` of them.
    pub fn tick(&self, done: u64, sent: u64, wire: u64, resent: u64) {
        let now = self.now();
        let mut st = self.state.lock().expect("progress");
        st.counted = true;
        let Some((_, _, m)) = st.current.as_mut() else {
            return;
        };
        m.update(now, done);
        m.sent = sent.max(done);
        m.wire = wire;
        m.resent = resent;
        self.draw(&mut st, now, false);
    }

    /// Each connection's state, with several per agent (`--streams`):
    /// "up", "down" or "joining". A change is an event in `--json`.
    pub fn lanes(&self, states: Vec<&'static str>) {
        let now = self.now();
        let mut st = self.state.lock().expect("progress");
        let Some((src, dst, m)) = st.current.as_mut() else {
            return;
        };
        if m.links == states {
            return;
        }
        let (src, dst) = (src.clone(), dst.clone());
        m.links = states.clone();
        self.json(
            "links",
            serde_json::json!({"source": src, "target": dst, "links": states}),
        );
        self.draw(&mut st, now, true);
    }

    /// The link was lost (`why`); the display says so until `link_ok`.
    pub fn link_lost(&self, why: &str) {
        let now = self.now();
        let mut st = self.state.lock().expect("progress");
        let Some((src, dst, m)) = st.current.as_mut() else {
            return;
        };
        let first = m.outage.is_none();
        m.link_lost(now);
        m.reconnecting();
        let (attempt, safe) = (m.outage.map(|o| o.1).unwrap_or(0), m.done);
        let (src, dst) = (src.clone(), dst.clone());
        if first {
            self.json(
                "link_lost",
                serde_json::json!({"source": src, "target": dst, "reason": why, "bytes_safe": safe}),
            );
        }
        self.json(
            "retry",
            serde_json::json!({"source": src, "target": dst, "attempt": attempt, "reason": why}),
        );
        self.draw(&mut st, now, true);
    }

    /// The agents answered again after an outage.
    pub fn link_ok(&self) {
        let now = self.now();
        let mut st = self.state.lock().expect("progress");
        let Some((src, dst, m)) = st.current.as_mut() else {
            return;
        };
        let attempts = m.outage.map(|o| o.1).unwrap_or(0);
        if let Some(down) = m.link_ok(now) {
            let (src, dst) = (src.clone(), dst.clone());
            self.json(
                "reconnect",
                serde_json::json!({"source": src, "target": dst, "attempts": attempts,
                                   "outage_seconds": (down.as_secs_f64() * 10.0).round() / 10.0}),
            );
        }
        self.draw(&mut st, now, true);
    }

    /// The stream ended (`complete`: every byte arrived, so an estimate
    /// that was too high no longer counts): a last redraw, then the line
    /// is left as is.
    pub fn end_stream(&self, complete: bool) {
        let now = self.now();
        let mut st = self.state.lock().expect("progress");
        if let Some((_, _, m)) = st.current.as_mut() {
            if complete {
                m.complete();
            }
        }
        if st.current.is_some() && (st.counted || st.drawn) {
            self.draw(&mut st, now, true);
            if self.face == Face::Bar && st.drawn {
                eprintln!();
            }
        }
        st.current = None;
    }

    fn draw(&self, st: &mut State, now: Duration, force: bool) {
        let every = match self.face {
            Face::Quiet => return,
            Face::Bar => Duration::from_millis(200),
            Face::Log => self.log_every,
            Face::Json => Duration::from_secs(1),
        };
        if !force && st.last_draw.is_some_and(|t| now.saturating_sub(t) < every) {
            return;
        }
        if self.face == Face::Log && st.last_draw.is_none() && !force {
            // The first log line comes after one interval, not at once.
            st.last_draw = Some(now);
            return;
        }
        st.last_draw = Some(now);
        let Some((src, dst, m)) = st.current.as_ref() else {
            return;
        };
        let (index, count) = st.position;
        // Recursive runs show where in the plan they are.
        let name = if count > 1 {
            format!("[{index}/{count}] {src}")
        } else {
            src.clone()
        };
        match self.face {
            Face::Bar => {
                let width = terminal_width();
                eprint!("\r{}\x1b[K", bar_line(&name, m, now, width));
                let _ = std::io::stderr().flush();
                st.drawn = true;
            }
            Face::Log => eprintln!("{}", log_line(&name, m, now)),
            Face::Json => {
                let eta = m.eta(now).map(|d| d.as_secs());
                self.json(
                    "progress",
                    serde_json::json!({
                        "source": src, "target": dst,
                        "dataset": index, "datasets": count,
                        "bytes_received": m.done, "bytes_sent": m.sent,
                        "total_bytes": m.total(),
                        "estimate_known": m.estimate_known(),
                        "wire_bytes": m.wire, "resent_bytes": m.resent,
                        "rate_bps": m.rate().round(), "eta_seconds": eta,
                        "link_down": m.outage.is_some(),
                        "streams": self.streams, "links": m.links,
                    }),
                );
            }
            Face::Quiet => {}
        }
    }
}

fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we pass for fd 2.
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize - 1
    } else {
        100
    }
}

#[cfg(test)]
mod tests;
