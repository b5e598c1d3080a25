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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;
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

/// The line of a `--jobs` run on a terminal or in a log, instead of one
/// bar per stream: `[12/50 datasets] 3 streams: 45 MB of 120 MB  12 MB/s
/// ETA 0:07`. Sizes, rate and ETA are those of the streams in flight
/// (what is known); the ETA only when each of them has an estimate and
/// none has lost its link.
pub fn combined_line(ended: usize, count: usize, streams: &[&Meter], now: Duration) -> String {
    let mut s = format!("[{ended}/{count} datasets]");
    if streams.is_empty() {
        return s;
    }
    let done: u64 = streams.iter().map(|m| m.done).sum();
    let rate: f64 = streams.iter().map(|m| m.rate()).sum();
    let known = streams.iter().all(|m| m.estimate_known());
    let n = streams.len();
    s.push_str(&format!(
        " {n} stream{}: {}",
        if n == 1 { "" } else { "s" },
        readable(done)
    ));
    if known {
        let total: u64 = streams.iter().map(|m| m.total()).sum();
        s.push_str(&format!(" of {}", readable(total)));
    }
    s.push_str(&format!("  {}", rate_text(rate)));
    let resent: u64 = streams.iter().map(|m| m.resent).sum();
    if resent > 0 {
        s.push_str(&format!("  {} sent again", readable(resent)));
    }
    let lost = streams.iter().filter(|m| m.outage.is_some()).count();
    if lost > 0 {
        s.push_str(&format!("  {lost} waiting for the link"));
    }
    let ready = streams.iter().all(|m| m.eta(now).is_some());
    if known && ready && rate >= 1.0 {
        let left: u64 = streams
            .iter()
            .map(|m| m.total().saturating_sub(m.done))
            .sum();
        s.push_str(&format!(
            "  ETA {}",
            clock(Duration::from_secs_f64(left as f64 / rate))
        ));
    }
    s
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Bar,
    Log,
    Json,
    Quiet,
}

/// The run's progress display (one per run; shared by the threads of
/// `--jobs`, each of which drives at most one stream at a time).
pub struct Progress {
    face: Face,
    /// Connections per agent (`--streams`).
    streams: usize,
    /// Datasets at once (`--jobs`): above 1, the terminal and the log get
    /// one combined line for all streams.
    jobs: usize,
    start: Instant,
    log_every: Duration,
    state: Mutex<State>,
}

/// One stream in flight.
struct Stream {
    thread: ThreadId,
    source: String,
    target: String,
    meter: Meter,
    /// Which dataset of the plan (1-based) and how many there are.
    position: (usize, usize),
    last_draw: Option<Duration>,
    drawn: bool,
    /// The stream's counters were updated at least once. A stream nothing
    /// counts (standard mode without a terminal has no meter in its
    /// pipeline) shows no progress, rather than "0 B".
    counted: bool,
}

#[derive(Default)]
struct State {
    streams: Vec<Stream>,
    /// Each thread's dataset: (index, count).
    positions: Vec<(ThreadId, (usize, usize))>,
    /// Datasets ended so far, of how many.
    ended: usize,
    count: usize,
    /// The combined line's (`--jobs`).
    last_draw: Option<Duration>,
    drawn: bool,
}

impl State {
    fn mine(&mut self) -> Option<&mut Stream> {
        let me = std::thread::current().id();
        self.streams.iter_mut().find(|s| s.thread == me)
    }
}

/// Whether a progress line stands on stderr without its newline.
static BAR_DRAWN: AtomicBool = AtomicBool::new(false);
/// Held while the line is drawn, and while a message clears it and takes
/// its place: a line drawn by one thread never lands in the middle of
/// another thread's message.
static TERMINAL: Mutex<()> = Mutex::new(());

/// Writes a message with `write` where a progress line may stand on the
/// terminal: the line is cleared first (the next update draws it again).
pub fn over_the_line(write: impl FnOnce()) {
    let _t = crate::lock(&TERMINAL);
    if BAR_DRAWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
    write();
}

/// Leaves the progress line as it stands: the terminal's next line
/// starts below it.
fn end_line() {
    let _t = crate::lock(&TERMINAL);
    if BAR_DRAWN.swap(false, Ordering::Relaxed) {
        eprintln!();
    }
}

/// Draws the progress line in place.
fn draw_line(line: &str) {
    let _t = crate::lock(&TERMINAL);
    eprint!("\r{line}\x1b[K");
    let _ = std::io::stderr().flush();
    BAR_DRAWN.store(true, Ordering::Relaxed);
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
            jobs: 1,
            start: Instant::now(),
            log_every,
            state: Mutex::new(State::default()),
        }
    }

    /// The same display, for streams over `streams` connections each.
    pub fn with_streams(self, streams: usize) -> Progress {
        Progress { streams, ..self }
    }

    /// The same display, for `jobs` datasets at once.
    pub fn with_jobs(self, jobs: usize) -> Progress {
        Progress { jobs, ..self }
    }

    pub fn face(&self) -> Face {
        self.face
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// One line for all streams: several datasets at once, shown on a
    /// terminal or in a log.
    fn combined(&self) -> bool {
        self.jobs > 1 && matches!(self.face, Face::Bar | Face::Log)
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

    /// The plan's dataset `index` (1-based) of `count` is next on this
    /// thread.
    pub fn dataset(&self, index: usize, count: usize) {
        let me = std::thread::current().id();
        let mut st = self.lock();
        st.count = count;
        st.positions.retain(|(t, _)| *t != me);
        st.positions.push((me, (index, count)));
    }

    /// This thread's dataset ended.
    pub fn dataset_ended(&self) {
        let now = self.now();
        let me = std::thread::current().id();
        let mut st = self.lock();
        st.positions.retain(|(t, _)| *t != me);
        st.ended += 1;
        if self.combined() {
            let last = st.ended == st.count;
            // On a terminal the count moves at once; a log gets its line
            // at the interval, and a last one if it had any.
            let force = self.face == Face::Bar && st.drawn || last && st.last_draw.is_some();
            if force || self.face == Face::Log {
                self.draw_combined(&mut st, now, force);
            }
            if last && st.drawn && self.face == Face::Bar {
                end_line();
                st.drawn = false;
            }
        }
    }

    /// A stream starts on this thread: `estimate` from zfs send -nvP
    /// (0: unknown).
    pub fn start_stream(&self, source: &str, target: &str, estimate: u64) {
        let now = self.now();
        let me = std::thread::current().id();
        let mut st = self.lock();
        let position = st
            .positions
            .iter()
            .find(|(t, _)| *t == me)
            .map(|p| p.1)
            .unwrap_or((0, 0));
        st.streams.retain(|s| s.thread != me);
        st.streams.push(Stream {
            thread: me,
            source: source.to_string(),
            target: target.to_string(),
            meter: Meter::new(now, estimate),
            position,
            last_draw: None,
            drawn: false,
            counted: false,
        });
    }

    /// Updates the counters and redraws when due: `done` bytes taken by
    /// zfs receive, `sent` produced and sent on (standard mode: both are
    /// what passed the meter), `wire` payload bytes and `resent` of them.
    pub fn tick(&self, done: u64, sent: u64, wire: u64, resent: u64) {
        let now = self.now();
        let mut st = self.lock();
        let Some(s) = st.mine() else {
            return;
        };
        s.counted = true;
        let m = &mut s.meter;
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
        let mut st = self.lock();
        let Some(s) = st.mine() else {
            return;
        };
        if s.meter.links == states {
            return;
        }
        s.meter.links = states.clone();
        self.json(
            "links",
            serde_json::json!({"source": s.source, "target": s.target, "links": states}),
        );
        self.draw(&mut st, now, true);
    }

    /// The link was lost (`why`); the display says so until `link_ok`.
    pub fn link_lost(&self, why: &str) {
        let now = self.now();
        let mut st = self.lock();
        let Some(s) = st.mine() else {
            return;
        };
        let m = &mut s.meter;
        let first = m.outage.is_none();
        m.link_lost(now);
        m.reconnecting();
        let (attempt, safe) = (m.outage.map(|o| o.1).unwrap_or(0), m.done);
        if first {
            self.json(
                "link_lost",
                serde_json::json!({"source": s.source, "target": s.target, "reason": why, "bytes_safe": safe}),
            );
        }
        self.json(
            "retry",
            serde_json::json!({"source": s.source, "target": s.target, "attempt": attempt, "reason": why}),
        );
        self.draw(&mut st, now, true);
    }

    /// The agents answered again after an outage.
    pub fn link_ok(&self) {
        let now = self.now();
        let mut st = self.lock();
        let Some(s) = st.mine() else {
            return;
        };
        let attempts = s.meter.outage.map(|o| o.1).unwrap_or(0);
        if let Some(down) = s.meter.link_ok(now) {
            self.json(
                "reconnect",
                serde_json::json!({"source": s.source, "target": s.target, "attempts": attempts,
                                   "outage_seconds": (down.as_secs_f64() * 10.0).round() / 10.0}),
            );
        }
        self.draw(&mut st, now, true);
    }

    /// This thread's stream ended (`complete`: every byte arrived, so an
    /// estimate that was too high no longer counts): a last redraw, then
    /// the line is left as is.
    pub fn end_stream(&self, complete: bool) {
        let now = self.now();
        let mut st = self.lock();
        let Some(s) = st.mine() else {
            return;
        };
        if complete {
            s.meter.complete();
        }
        let shown = s.counted || s.drawn;
        if shown && !self.combined() {
            self.draw(&mut st, now, true);
            if self.face == Face::Bar && st.mine().is_some_and(|s| s.drawn) {
                end_line();
            }
        }
        let me = std::thread::current().id();
        st.streams.retain(|s| s.thread != me);
    }

    fn every(&self) -> Option<Duration> {
        match self.face {
            Face::Quiet => None,
            Face::Bar => Some(Duration::from_millis(200)),
            Face::Log => Some(self.log_every),
            Face::Json => Some(Duration::from_secs(1)),
        }
    }

    /// Whether a line last drawn at `last` is due again.
    fn due(&self, last: &mut Option<Duration>, now: Duration, force: bool) -> bool {
        let Some(every) = self.every() else {
            return false;
        };
        if !force && last.is_some_and(|t| now.saturating_sub(t) < every) {
            return false;
        }
        if self.face == Face::Log && last.is_none() && !force {
            // The first log line comes after one interval, not at once.
            *last = Some(now);
            return false;
        }
        *last = Some(now);
        true
    }

    fn draw(&self, st: &mut State, now: Duration, force: bool) {
        if self.combined() {
            return self.draw_combined(st, now, force);
        }
        let Some(s) = st.mine() else {
            return;
        };
        if !self.due(&mut s.last_draw, now, force) {
            return;
        }
        let (index, count) = s.position;
        let (src, dst, m) = (&s.source, &s.target, &s.meter);
        // Recursive runs show where in the plan they are.
        let name = if count > 1 {
            format!("[{index}/{count}] {src}")
        } else {
            src.clone()
        };
        match self.face {
            Face::Bar => {
                draw_line(&bar_line(&name, m, now, terminal_width()));
                s.drawn = true;
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

    fn draw_combined(&self, st: &mut State, now: Duration, force: bool) {
        let mut last = st.last_draw;
        if !self.due(&mut last, now, force) {
            st.last_draw = last;
            return;
        }
        st.last_draw = last;
        let meters: Vec<&Meter> = st
            .streams
            .iter()
            .filter(|s| s.counted)
            .map(|s| &s.meter)
            .collect();
        let line = combined_line(st.ended, st.count, &meters, now);
        if self.face == Face::Bar {
            let width = terminal_width();
            let line: String = line.chars().take(width.max(20)).collect();
            draw_line(&line);
            st.drawn = true;
        } else {
            eprintln!("progress {line}");
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
