//! The open loop (`--rate R`): request k is scheduled at start + k/R and handed to a
//! connection then, whether or not earlier requests have answered, so that a slow server
//! cannot slow the load down (no coordinated omission). Its latency counts from its
//! scheduled time.
//!
//! One dispatcher per target owns the connections' bookkeeping; each request runs in a task
//! of its own and reports back when its connection is free again or gone:
//! - HTTP/1.1 keep-alive: one request per idle connection; `--concurrency` connections are
//!   opened before the schedule starts, more on demand up to `--max-connections`;
//! - a connection per request: each request opens its own (at most `--max-connections`
//!   at once);
//! - HTTP/2: streams multiplexed on each connection up to the server's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS`, read after the handshake (h2 directly, so that no
//!   request waits unseen inside a client's queue).
//!
//! A scheduled request that finds no free connection and no room for a new one waits in
//! order; the time during which one waits so is the client's saturation, which the report
//! names: the drill did not offer the load it was asked to.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::load::{connect, dial, h2_unprocessed, send, Conn, Sent};
use crate::outcome::Outcome;
use crate::plan::Plan;
use crate::plan::{Mode, Template};
use crate::record::Recorder;

mod requests;
use requests::*;

/// The most streams put on one HTTP/2 connection, whatever the server allows.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// What the open loop adds to the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenStats {
    /// Requests scheduled.
    pub(crate) offered: u64,
    /// Scheduled requests never handed to a connection before the load ended.
    pub(crate) unsent: u64,
    /// How long at least one request waited for want of a connection.
    pub(crate) saturated: Duration,
    /// The most connections open (or opening) at once.
    pub(crate) peak_connections: usize,
}

impl OpenStats {
    fn add(&mut self, o: OpenStats) {
        self.offered += o.offered;
        self.unsent += o.unsent;
        // Targets are loaded side by side: their saturations overlap in time.
        self.saturated = self.saturated.max(o.saturated);
        self.peak_connections += o.peak_connections;
    }
}

/// Connections opened before the schedule starts, one set per target.
pub(crate) struct Warm {
    h1: Vec<Conn>,
    h2: Vec<H2Conn>,
}

/// The share of `total` that target `i` of `n` gets (the first ones get the remainder).
fn share(total: usize, i: usize, n: usize) -> usize {
    total / n + usize::from(i < total % n)
}

/// Open `--concurrency` connections (spread over the targets) before the schedule starts.
/// A connection that cannot be opened is left out: requests open theirs on demand. HTTP/2
/// connections end when `closing` is cancelled, at the latest.
pub(crate) async fn warm_up(plan: &Plan, closing: &CancellationToken) -> Vec<Warm> {
    let n = plan.targets.len();
    let mut out = Vec::with_capacity(n);
    for (i, t) in plan.targets.iter().enumerate() {
        let count = share(plan.concurrency, i, n).min(share(plan.max_connections, i, n));
        let mut warm = Warm {
            h1: Vec::new(),
            h2: Vec::new(),
        };
        match plan.mode {
            Mode::ConnPerRequest => {}
            Mode::KeepAlive => {
                let opened = futures_util::future::join_all(
                    (0..count).map(|_| connect(t, plan.mode, plan.timeout)),
                )
                .await;
                warm.h1 = opened.into_iter().filter_map(Result::ok).collect();
            }
            Mode::H2 => {
                let opened = futures_util::future::join_all(
                    (0..count).map(|_| h2_connect(t, plan.timeout, closing)),
                )
                .await;
                warm.h2 = opened.into_iter().filter_map(Result::ok).collect();
            }
        }
        out.push(warm);
    }
    out
}

/// Run the open loop at `rate` requests per second in all, from `recorder.start` until
/// `end`, the request cap or `recorder.stop`; then wait for the requests in flight (each
/// bounded by the request timeout), and close every connection (`closing`).
pub(crate) async fn open_loop(
    plan: &Plan,
    rate: u64,
    warm: Vec<Warm>,
    recorder: &Arc<Recorder>,
    end: Instant,
    closing: CancellationToken,
) -> OpenStats {
    let tasks: Vec<_> = warm
        .into_iter()
        .enumerate()
        .map(|(i, warm)| {
            let d = Dispatcher::new(plan, i, rate, warm, recorder.clone(), end, closing.clone());
            tokio::spawn(d.run())
        })
        .collect();
    let mut stats = OpenStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            stats.add(s);
        }
    }
    closing.cancel();
    stats
}

/// A request waiting to be handed to a connection.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    scheduled: Instant,
    /// It was handed back unsent once: it goes out on a connection opened since, and at
    /// most once more.
    fresh: bool,
    /// When it was handed back (meaningful when `fresh`).
    back_at: Instant,
}

/// An HTTP/2 connection (h2) and how many streams the server lets it carry.
#[derive(Clone)]
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    capacity: usize,
    /// Told when the connection has ended.
    gone: Arc<tokio::sync::Notify>,
}

/// What a request task tells its dispatcher.
enum Event {
    /// An HTTP/1.1 connection is free for the next request.
    Idle(Conn),
    /// A connection is gone (or was never opened): its place is free.
    Closed,
    /// An HTTP/2 connection opened by a request task (which runs one stream on it), and
    /// when its opening started.
    H2Open(u64, H2Conn, Instant),
    /// An HTTP/2 connection could not be opened.
    H2Failed,
    /// A stream on HTTP/2 connection `id` ended: whether it was answered, and whether the
    /// connection can take no new stream.
    H2Done { id: u64, answered: bool, dead: bool },
    /// HTTP/2 connection `id` has ended.
    H2Gone(u64),
    /// A request handed back unsent: send it on a new connection.
    Again(Pending),
}

/// One HTTP/2 connection as the dispatcher sees it.
struct H2Entry {
    id: u64,
    conn: H2Conn,
    /// When its opening started: a request handed back later does not go on it.
    started: Instant,
    in_flight: usize,
    /// No new stream goes on it.
    dead: bool,
    /// It answered a stream (a failure on it then counts as on a reused connection).
    answered: bool,
}

/// What a request task needs.
struct Ctx {
    target: Arc<Template>,
    mode: Mode,
    timeout: Duration,
    /// `{worker}` in templates: the target's index.
    worker: usize,
    recorder: Arc<Recorder>,
    events: mpsc::UnboundedSender<Event>,
    /// Cancelled once the load is over: HTTP/2 connections close then, answered or not.
    closing: CancellationToken,
}

impl Ctx {
    fn tell(&self, e: Event) {
        // The dispatcher outlives every request task (it waits for them).
        let _ = self.events.send(e);
    }

    fn record(&self, outcome: Outcome, p: &Pending, sent: Option<Instant>) {
        self.recorder
            .record(outcome, p.scheduled, sent, Instant::now());
    }
}

/// Why requests wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing waits.
    No,
    /// Every connection is busy and there are `--max-connections`: the client is saturated.
    Limit,
    /// An HTTP/2 connection is being opened; the requests will go on it.
    Opening,
}

/// The dispatcher of one target: the schedule, the waiting requests and the connections.
struct Dispatcher {
    ctx: Arc<Ctx>,
    rx: mpsc::UnboundedReceiver<Event>,
    tasks: TaskTracker,
    /// Request numbers `first + j * stride`, at `start + number / rate`.
    first: u64,
    stride: u64,
    rate: f64,
    requests: u64,
    end: Instant,
    max: usize,
    pending: VecDeque<Pending>,
    /// Request tasks running (each ends with one of `Idle`, `Closed`, `H2Failed`,
    /// `H2Done`).
    running: usize,
    /// Connections open or being opened.
    open: usize,
    idle: Vec<Conn>,
    h2: Vec<H2Entry>,
    h2_opening: usize,
    /// When the latest HTTP/2 connection being opened started opening.
    last_open_start: Option<Instant>,
    next_id: u64,
    stats: OpenStats,
    saturated_since: Option<Instant>,
    ended: bool,
}

impl Dispatcher {
    fn new(
        plan: &Plan,
        i: usize,
        rate: u64,
        warm: Warm,
        recorder: Arc<Recorder>,
        end: Instant,
        closing: CancellationToken,
    ) -> Self {
        let n = plan.targets.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            target: plan.targets[i].clone(),
            mode: plan.mode,
            timeout: plan.timeout,
            worker: i,
            recorder,
            events: tx,
            closing,
        });
        let mut d = Dispatcher {
            ctx,
            rx,
            tasks: TaskTracker::new(),
            first: i as u64,
            stride: n as u64,
            rate: rate as f64,
            requests: plan.requests,
            end,
            max: share(plan.max_connections, i, n).max(1),
            pending: VecDeque::new(),
            running: 0,
            open: 0,
            idle: warm.h1,
            h2: Vec::new(),
            h2_opening: 0,
            last_open_start: None,
            next_id: 0,
            stats: OpenStats::default(),
            saturated_since: None,
            ended: false,
        };
        d.open = d.idle.len();
        for conn in warm.h2 {
            d.add_h2(conn, 0);
        }
        d.stats.peak_connections = d.open;
        d
    }

    /// Register an open HTTP/2 connection carrying `in_flight` streams; its end is reported.
    fn add_h2(&mut self, conn: H2Conn, in_flight: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.watch_h2(id, &conn);
        self.h2.push(H2Entry {
            id,
            conn,
            started: Instant::now(),
            in_flight,
            dead: false,
            answered: false,
        });
        self.open += 1;
        id
    }

    /// Report `conn`'s end as [`Event::H2Gone`] (until the load is over).
    fn watch_h2(&self, id: u64, conn: &H2Conn) {
        let (gone, ctx) = (conn.gone.clone(), self.ctx.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = gone.notified() => ctx.tell(Event::H2Gone(id)),
                _ = ctx.closing.cancelled() => {}
            }
        });
    }

    /// When request `j` of this target is due, if it exists.
    fn due(&self, j: u64) -> Option<Instant> {
        let k = self.first + j * self.stride;
        if k >= self.requests {
            return None;
        }
        let at = self.ctx.recorder.start + Duration::from_secs_f64(k as f64 / self.rate);
        (at < self.end).then_some(at)
    }

    async fn run(mut self) -> OpenStats {
        let stop = self.ctx.recorder.stop.clone();
        let mut j = 0u64;
        let mut next = self.due(j);
        loop {
            // Past the schedule, requests handed back unsent and requests still waiting
            // go out until the end; without them the load is over.
            if next.is_none() && self.pending.is_empty() && self.running == 0 {
                break;
            }
            let wake = next.unwrap_or(self.end);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(wake.into()) => {
                    if next.is_none() {
                        break;
                    }
                }
                Some(e) = self.rx.recv() => self.handle(e),
            }
            while let Ok(e) = self.rx.try_recv() {
                self.handle(e);
            }
            // Every request due by now joins the queue with its scheduled time: a late
            // wake-up delays the hand-over (the send lag), never the schedule.
            let now = Instant::now();
            while let Some(at) = next.filter(|at| *at <= now) {
                let seq = self.first + j * self.stride;
                self.pending.push_back(Pending {
                    seq,
                    scheduled: at,
                    fresh: false,
                    back_at: at,
                });
                self.stats.offered += 1;
                j += 1;
                next = self.due(j);
            }
            self.dispatch();
        }
        self.finish().await
    }

    /// The schedule is over: what still waits for a connection is unsent; the requests in
    /// flight finish (each within its timeout), and one the server hands back unsent goes
    /// out again as it would have during the load (it was offered in time; the server
    /// refusing it unprocessed is not the client's lack of connections).
    async fn finish(mut self) -> OpenStats {
        self.ended = true;
        self.stats.unsent += self.pending.len() as u64;
        self.pending.clear();
        self.note_wait(Wait::No);
        // Idle connections close; HTTP/2 ones once their streams end and their handles go.
        self.idle.clear();
        self.h2.clear();
        self.tasks.close();
        loop {
            while let Ok(e) = self.rx.try_recv() {
                self.handle(e);
            }
            self.dispatch();
            if self.running == 0 {
                break;
            }
            tokio::select! {
                _ = self.tasks.wait() => {}
                Some(e) = self.rx.recv() => self.handle(e),
            }
        }
        // Handed back and not sent again (no place for it once the others had finished).
        self.stats.unsent += self.pending.len() as u64;
        self.note_wait(Wait::No);
        self.stats
    }

    fn handle(&mut self, e: Event) {
        if matches!(
            e,
            Event::Idle(_) | Event::Closed | Event::H2Failed | Event::H2Done { .. }
        ) {
            self.running -= 1;
        }
        match e {
            Event::Idle(conn) => {
                if self.ended {
                    self.open = self.open.saturating_sub(1);
                } else {
                    self.idle.push(conn);
                }
            }
            Event::Closed => self.open = self.open.saturating_sub(1),
            Event::H2Open(id, conn, started) => {
                self.h2_opening -= 1;
                self.watch_h2(id, &conn);
                if !self.ended {
                    self.h2.push(H2Entry {
                        id,
                        conn,
                        started,
                        in_flight: 1,
                        dead: false,
                        answered: false,
                    });
                }
            }
            Event::H2Failed => {
                self.h2_opening -= 1;
                self.open = self.open.saturating_sub(1);
            }
            Event::H2Done { id, answered, dead } => {
                if let Some(e) = self.h2.iter_mut().find(|e| e.id == id) {
                    e.in_flight -= 1;
                    e.answered |= answered;
                    e.dead |= dead;
                }
                self.drop_dead_h2();
            }
            Event::H2Gone(id) => {
                if let Some(e) = self.h2.iter_mut().find(|e| e.id == id) {
                    e.dead = true;
                }
                self.drop_dead_h2();
            }
            Event::Again(p) => self.pending.push_front(p),
        }
    }

    /// Forget dead HTTP/2 connections without streams: their places are free.
    fn drop_dead_h2(&mut self) {
        let before = self.h2.len();
        self.h2.retain(|e| !(e.dead && e.in_flight == 0));
        self.open = self.open.saturating_sub(before - self.h2.len());
    }

    /// Hand waiting requests to connections, oldest first, while there are any.
    fn dispatch(&mut self) {
        let wait = loop {
            let Some(p) = self.pending.front().copied() else {
                break Wait::No;
            };
            let went = match self.ctx.mode {
                Mode::KeepAlive => self.keep_alive(p),
                Mode::ConnPerRequest => self.new_h1(p),
                Mode::H2 => self.h2(p),
            };
            match went {
                Wait::No => {
                    self.pending.pop_front();
                }
                w => break w,
            }
        };
        self.note_wait(wait);
    }

    /// Start or end a stretch of saturation.
    fn note_wait(&mut self, wait: Wait) {
        match (wait, self.saturated_since) {
            (Wait::Limit, None) => self.saturated_since = Some(Instant::now()),
            (Wait::Limit, Some(_)) => {}
            (_, Some(since)) => {
                self.stats.saturated += since.elapsed();
                self.saturated_since = None;
            }
            (_, None) => {}
        }
    }

    fn keep_alive(&mut self, p: Pending) -> Wait {
        if !p.fresh {
            if let Some(conn) = self.idle.pop() {
                self.spawn_h1(p, Some(conn));
                return Wait::No;
            }
        }
        if self.open >= self.max && !self.idle.is_empty() {
            // A request that must go on a new connection takes an idle one's place.
            self.idle.pop();
            self.open -= 1;
        }
        self.new_h1(p)
    }

    fn new_h1(&mut self, p: Pending) -> Wait {
        if self.open >= self.max {
            return Wait::Limit;
        }
        self.open += 1;
        self.stats.peak_connections = self.stats.peak_connections.max(self.open);
        self.spawn_h1(p, None);
        Wait::No
    }

    fn spawn_h1(&mut self, p: Pending, conn: Option<Conn>) {
        self.running += 1;
        self.tasks.spawn(h1_request(self.ctx.clone(), p, conn));
    }

    /// An HTTP/2 request goes on the least busy live connection with room for a stream; a
    /// request handed back (refused, or above a GOAWAY) only on one opened since, so that it
    /// reaches the process now accepting. A new connection is opened only when none fits
    /// and none that would is being opened: requests wait for it rather than each opening
    /// its own.
    fn h2(&mut self, p: Pending) -> Wait {
        let fits = |e: &H2Entry| {
            !e.dead && e.in_flight < e.conn.capacity && (!p.fresh || e.started > p.back_at)
        };
        if let Some(e) = self
            .h2
            .iter_mut()
            .filter(|e| fits(e))
            .min_by_key(|e| e.in_flight)
        {
            e.in_flight += 1;
            let target = H2Target::Open {
                id: e.id,
                conn: e.conn.clone(),
                reused: e.answered,
            };
            self.running += 1;
            self.tasks.spawn(h2_request(self.ctx.clone(), p, target));
            return Wait::No;
        }
        let opening_since = self.last_open_start.filter(|_| self.h2_opening > 0);
        if opening_since.is_some_and(|t| !p.fresh || t > p.back_at) {
            return Wait::Opening;
        }
        if self.open >= self.max {
            if let Some(i) = self.h2.iter().position(|e| e.in_flight == 0) {
                // Make room: a connection without streams closes for a new one.
                self.h2.swap_remove(i);
                self.open -= 1;
            } else {
                return Wait::Limit;
            }
        }
        self.open += 1;
        self.stats.peak_connections = self.stats.peak_connections.max(self.open);
        self.h2_opening += 1;
        let started = Instant::now();
        self.last_open_start = Some(started);
        let id = self.next_id;
        self.next_id += 1;
        self.running += 1;
        self.tasks.spawn(h2_request(
            self.ctx.clone(),
            p,
            H2Target::New { id, started },
        ));
        Wait::No
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        for (total, n) in [(32, 1), (32, 3), (5, 2), (1, 4), (4096, 7)] {
            let parts: Vec<usize> = (0..n).map(|i| share(total, i, n)).collect();
            assert_eq!(parts.iter().sum::<usize>(), total, "{total} over {n}");
            let (lo, hi) = (parts.iter().min().unwrap(), parts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{parts:?}");
        }
    }
}
