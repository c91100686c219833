//! Throughput of deliver's mailbox pool, in three scenarios (see the header it prints):
//!
//! 1. limits off, end to end (simulator with `limits_enabled = false`, real RabbitMQ, deliver
//!    in this process) for 1, 10 and 100 mailboxes: messages/s, CPU per message, peak RSS;
//! 2. Exchange's limits, the pure scheduler (`PoolSchedule`) on a virtual clock for 10, 1,000
//!    and 10,000 mailboxes: the fraction of the pool's summed capacity it achieves, and ns per
//!    pick (and per settle, which re-queues the mailbox);
//! 3. limits on, end to end, windows scaled to seconds, 10 mailboxes: the fraction of the
//!    pool's limit carried through the real SMTP path, and the simulator's refusals;
//! 4. the write-ahead record of each send (PostgreSQL): time per send for the fenced insert
//!    and the closing update, one at a time and 12 at once;
//! 5. one pool of 6 mailboxes carried by 1 deliver process, then by 3 (fenced leases, fair
//!    shares): the pool's rate with 3 against the rate with 1.
//!
//! ```text
//! cargo bench -p mailpipe-deliver --bench pool_throughput               # full run (~2 min)
//! cargo bench -p mailpipe-deliver --bench pool_throughput -- --quick    # CI smoke run
//! cargo bench -p mailpipe-deliver --bench pool_throughput -- --messages 5000
//! cargo bench -p mailpipe-deliver --bench pool_throughput -- --scheduler    # scenario 2 only
//! cargo bench -p mailpipe-deliver --bench pool_throughput -- --write-ahead  # scenario 4 only
//! cargo bench -p mailpipe-deliver --bench pool_throughput -- --processes    # scenario 5 only
//! ```
//!
//! `MAILPIPE_BENCH_MESSAGES=N` sets scenario 1's N too (the flag wins). Without `--bench`
//! or `--quick` (as under `cargo test --all-targets`) it prints a note and exits. Scenarios 1
//! and 3 need RabbitMQ (127.0.0.1:5672 guest/guest, or MAILPIPE_TEST_AMQP_URL); `--scheduler`
//! runs scenario 2 alone, without it (with `--quick`: shorter). A benchmark, not a test: it
//! prints figures and only fails if the pipeline does not finish at all.

#[path = "measure/mod.rs"]
mod measure;
#[path = "../tests/support/mod.rs"]
mod support;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mailpipe_deliver::throttle::{
    MailboxLimits, MailboxThrottle, Millis, Pick, PoolSchedule, Reservation, TenantLimit,
};
use mailpipe_sim::Simulator;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Harness, Limits, PoolSpec, recipients};

// ---------------------------------------------------------------------------------------
// Arguments and process figures
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Args {
    /// `cargo bench` passes `--bench`; `cargo test --benches/--all-targets` passes nothing.
    bench: bool,
    quick: bool,
    /// Only scenario 2 (the pure scheduler), which needs no RabbitMQ.
    scheduler_only: bool,
    /// Only scenario 4.
    write_ahead_only: bool,
    /// Only scenario 5.
    processes_only: bool,
    messages: usize,
}

fn parse_args() -> Args {
    let mut bench = false;
    let mut quick = false;
    let mut scheduler_only = false;
    let mut write_ahead_only = false;
    let mut processes_only = false;
    let mut messages: Option<usize> = None;
    // ignore what we do not know (a filter, cargo's other flags)
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--bench" {
            bench = true;
        } else if a == "--quick" {
            quick = true;
        } else if a == "--scheduler" {
            scheduler_only = true;
        } else if a == "--write-ahead" {
            write_ahead_only = true;
        } else if a == "--processes" {
            processes_only = true;
        } else if a == "--messages" {
            messages = args.next().and_then(|v| v.parse().ok());
        } else if let Some(v) = a.strip_prefix("--messages=") {
            messages = v.parse().ok();
        }
    }
    let messages = messages
        .or_else(|| {
            std::env::var("MAILPIPE_BENCH_MESSAGES")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(if quick { 200 } else { 2_000 })
        .max(1);
    Args {
        bench,
        quick,
        scheduler_only,
        write_ahead_only,
        processes_only,
        messages,
    }
}

fn cpu_seconds() -> f64 {
    measure::cpu_seconds_of("self").unwrap_or(0.0)
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`), so each
/// scenario reports its own peak. False where the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RabbitMQ's Erlang VM on this machine, if visible, so its CPU can be shown next to ours.
fn rabbitmq_pid() -> Option<String> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("rabbit") {
                return Some(name);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Harness extensions (the test harness is reused as is)
// ---------------------------------------------------------------------------------------

/// Replaces the harness's simulator by one with the same mailboxes, tenants and apps but
/// `limits_enabled = false` (no message, recipient, connection or tenant limit), and points
/// deliver's settings at it. Also bounds the simulator's in-memory record of accepted
/// messages, so the process's memory is about the pipeline, not the recorder.
async fn switch_simulator_limits_off(h: &mut Harness) {
    let mut config = h.sim.config().clone();
    config.limits_enabled = false;
    config.max_recorded_messages = 1_000;
    let sim = Simulator::start(config).await.expect("simulator starts");
    for m in &mut h.settings.mailboxes {
        m.port = sim.smtp_addr().port();
    }
    for t in &mut h.settings.tenants {
        if let Some(app) = &mut t.oauth {
            app.authority = sim.authority();
        }
        t.external_recipient_limit = Some(1_000_000_000);
        t.external_window_ms = 1_000;
    }
    h.settings.extra_ca_file = Some(sim.ca_pem_path().to_owned());
    h.settings.validate().expect("deliver settings");
    std::mem::replace(&mut h.sim, sim).shutdown().await;
}

/// Publishes `n` one-recipient messages, 128 confirms in flight (the harness's `publish`
/// waits for each confirm; running them concurrently keeps setup short).
async fn publish_backlog(h: &Harness, prefix: &str, n: usize) {
    futures::stream::iter(0..n)
        .for_each_concurrent(128, |i| async move {
            h.publish(
                &format!("{prefix}-{i:07}"),
                "billing@contoso.example",
                &recipients(i, 1),
            )
            .await;
        })
        .await;
}

/// Messages the simulator accepted, from its per-mailbox counters (cheap to poll, unlike
/// `accepted()`, which clones every recorded message).
fn accepted_count(h: &Harness) -> u64 {
    h.sim.mailbox_stats().iter().map(|s| s.accepted).sum()
}

/// Polls every 2 ms until `n` messages were accepted; returns when the first and the last
/// acceptance were observed, or `None` after `limit`.
async fn wait_accepted(h: &Harness, n: u64, limit: Duration) -> Option<(Instant, Instant)> {
    let deadline = Instant::now() + limit;
    let mut first = None;
    loop {
        let got = accepted_count(h);
        let now = Instant::now();
        if got > 0 && first.is_none() {
            first = Some(now);
        }
        if got >= n {
            return Some((first.unwrap_or(now), now));
        }
        if now > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// deliver's own SMTP-exchange histogram (process-global): (sum of seconds, count).
fn smtp_seconds() -> (f64, u64) {
    let h = mailpipe_deliver::metrics::SMTP_SECONDS.with_label_values(&["smtp"]);
    (h.get_sample_sum(), h.get_sample_count())
}

fn mean_smtp_ms(before: (f64, u64), after: (f64, u64)) -> f64 {
    let count = after.1.saturating_sub(before.1);
    if count == 0 {
        f64::NAN
    } else {
        (after.0 - before.0) / count as f64 * 1e3
    }
}

fn is_limit_refusal(r: &mailpipe_sim::Refusal) -> bool {
    let text = format!("{} {} {}", r.code, r.enhanced, r.text);
    text.contains("4.4.2")
        || text.contains("SubmissionQuotaExceeded")
        || text.contains("thread limit")
        || text.contains("5.7.233")
}

// ---------------------------------------------------------------------------------------
// Scenario 1: limits off, end to end
// ---------------------------------------------------------------------------------------

async fn limits_off(mailboxes: usize, n: usize) {
    // deliver always throttles; give it limits it can never reach (1 s windows keep its logs short)
    let limits = Limits {
        messages: 1_000_000_000,
        message_window_ms: 1_000,
        recipients: 1_000_000_000,
        recipient_window_ms: 1_000,
        connections: 3,
    };
    let mut h = Harness::new(
        &format!("bench-off-{mailboxes}"),
        PoolSpec {
            mailboxes,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    switch_simulator_limits_off(&mut h).await;
    publish_backlog(&h, &format!("off{mailboxes}"), n).await;

    let rabbit = rabbitmq_pid();
    let rabbit_cpu0 = rabbit.as_deref().and_then(measure::cpu_seconds_of);
    let statements0 = measure::transactions(h.broker.store()).await;
    let pg_cpu0 = measure::postgres_cpu_seconds();
    let rss_reset = reset_peak_rss();
    let smtp0 = smtp_seconds();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let (shutdown, task) = h.start_deliver().await;
    let limit = Duration::from_secs(60) + Duration::from_millis(n as u64 * 20);
    let Some((first, last)) = wait_accepted(&h, n as u64, limit).await else {
        panic!(
            "limits off, {mailboxes} mailboxes: only {} of {n} accepted within {limit:?}",
            accepted_count(&h)
        );
    };
    let cpu = cpu_seconds() - cpu0;
    let rabbit_cpu = rabbit
        .as_deref()
        .and_then(measure::cpu_seconds_of)
        .zip(rabbit_cpu0)
        .map(|(b, a)| b - a);
    let peak = status_kib("VmHWM:");
    let wall = (last - t0).as_secs_f64();
    let steady = (last - first).as_secs_f64();
    let refusals = h.sim.refusals().len();
    let smtp_ms = mean_smtp_ms(smtp0, smtp_seconds());
    let pg_cpu = measure::postgres_cpu_seconds() - pg_cpu0;
    let statements = measure::transactions(h.broker.store()).await - statements0;

    println!(
        "  {mailboxes:>4} mailboxes  {n:>6} msgs  {wall:>6.2} s  {:>7.0} msg/s  (first accept after {:>4.0} ms, then {:>7.0} msg/s)  \
         CPU {:>6.1} µs/msg = {:.2} cores  RabbitMQ {}  peak RSS {:>5.1} MiB{}  SMTP exchange {smtp_ms:.1} ms  refusals {refusals}",
        n as f64 / wall,
        (first - t0).as_secs_f64() * 1e3,
        if steady > 0.0 {
            (n as f64 - 1.0) / steady
        } else {
            f64::NAN
        },
        cpu / n as f64 * 1e6,
        cpu / wall,
        rabbit_cpu.map_or_else(
            || "n/a".to_owned(),
            |c| format!("{:>5.1} µs/msg = {:.2} cores", c / n as f64 * 1e6, c / wall)
        ),
        mib(peak),
        if rss_reset { "" } else { " (process peak)" },
    );
    println!(
        "                  PostgreSQL: {:.1} statements/msg, CPU {:>6.1} µs/msg",
        statements as f64 / n as f64,
        pg_cpu / n as f64 * 1e6,
    );

    shutdown.cancel();
    task.await
        .expect("deliver task")
        .expect("deliver stops cleanly");
    h.finish().await;
}

// ---------------------------------------------------------------------------------------
// Scenario 2: Exchange's limits, pure scheduler, virtual clock
// ---------------------------------------------------------------------------------------

/// Send time: triangular on [150, 400] ms (mean 275 ms), a submission of an invoice-sized
/// message to Exchange Online over an established connection.
fn send_time_ms(rng: &mut StdRng) -> u64 {
    let u: f64 = (rng.random::<f64>() + rng.random::<f64>()) / 2.0;
    150 + (u * 250.0).round() as u64
}

/// The most entries of a sorted list that fall inside one window `[t, t + window)`.
fn max_in_window(times: &mut [u64], window: u64) -> usize {
    times.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// One mailbox's sustained rate (per ms) from its completion instants (ms): completions
/// between the end of the first window's burst (the `limit`-th) and the last one a whole
/// number of `limit`s later, over the time between them. Both ends sit at the same phase of
/// the window cycle (the same slot's successive uses), so the figure is free of the
/// start-up burst and of where the run happened to stop.
fn sustained_rate(done: &mut [u64], limit: usize) -> f64 {
    done.sort_unstable();
    let a = limit.saturating_sub(1);
    let Some(last) = done.len().checked_sub(1).filter(|&last| last > a) else {
        return 0.0;
    };
    let b = last - (last - a) % limit.max(1);
    if b <= a || done[b] <= done[a] {
        return 0.0;
    }
    (b - a) as f64 / (done[b] - done[a]) as f64
}

fn scheduler(mailboxes: usize, minutes: u64) {
    let limits = MailboxLimits::default(); // Exchange: 30 / 60 s, 10,000 recipients / 24 h, 3 connections
    let window = limits.message_window.as_millis() as u64;
    let mut pool = PoolSchedule::new();
    for _ in 0..mailboxes {
        // one tenant per mailbox, Exchange's default external limit (10,000 / 24 h)
        let t = pool.add_tenant(TenantLimit::new(
            10_000,
            Duration::from_secs(86_400),
            ["contoso.example"],
        ));
        pool.add_mailbox(MailboxThrottle::new(limits.clone()), t)
            .expect("tenant exists");
    }
    let all = pool.class(0..mailboxes);
    let mut rng = StdRng::seed_from_u64(7);
    let start: u64 = 1_800_000_000_000;
    let end = start + minutes * 60_000;
    let warm = start + window; // the first window's burst is left out of the fraction

    let mut in_flight: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut slots: Vec<Option<Reservation>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut starts: Vec<Vec<u64>> = vec![Vec::new(); mailboxes];
    let mut completions: Vec<Vec<u64>> = vec![Vec::new(); mailboxes];
    let (mut picks, mut sends, mut steady_done, mut send_ms_total) = (0u64, 0u64, 0u64, 0u64);
    let mut pick_time = Duration::ZERO;
    let (mut settle_time, mut settles) = (Duration::ZERO, 0u64);
    let wall = Instant::now();
    let mut now = start;
    loop {
        while let Some(&Reverse((done, k))) = in_flight.peek() {
            if done > now {
                break;
            }
            in_flight.pop();
            let r = slots[k].take().expect("reservation in flight");
            completions[r.mailbox()].push(done);
            if (warm..end).contains(&done) {
                steady_done += 1;
            }
            let t = Instant::now();
            let settled = pool.settle(r, Millis(done));
            settle_time += t.elapsed();
            settles += 1;
            settled.expect("own reservation");
            free.push(k);
        }
        let mut wake = None;
        if now < end {
            // saturated backlog: there is always a message waiting
            loop {
                let t = Instant::now();
                let pick = pool.pick(Millis(now), 1, 1, all);
                pick_time += t.elapsed();
                picks += 1;
                match pick {
                    Pick::Mailbox(idx, r) => {
                        let s = send_time_ms(&mut rng);
                        send_ms_total += s;
                        sends += 1;
                        starts[idx].push(now);
                        let k = free.pop().unwrap_or_else(|| {
                            slots.push(None);
                            slots.len() - 1
                        });
                        slots[k] = Some(r);
                        in_flight.push(Reverse((now + s, k)));
                    }
                    Pick::WaitUntil(t) => {
                        assert!(t.0 > now, "WaitUntil names a later instant");
                        wake = Some(t.0);
                        break;
                    }
                    Pick::WaitForRelease => break,
                    Pick::Impossible(why) => panic!("impossible: {why}"),
                }
            }
        }
        let next_done = in_flight.peek().map(|Reverse((t, _))| *t);
        now = match (wake, next_done) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
    }
    let wall = wall.elapsed();
    // Sustained rate of each mailbox, between two completions `limit` apart (the same slot's
    // successive uses, so both ends are at the same phase of the window cycle), from the end
    // of the first window's burst to the last such completion.
    let sustained: f64 = completions
        .iter_mut()
        .map(|done| sustained_rate(done, limits.messages as usize))
        .sum();
    let fraction = sustained * window as f64 / (mailboxes as f64 * limits.messages as f64);
    let capacity = mailboxes as f64 * limits.messages as f64 * (end - warm) as f64 / window as f64;
    let run_fraction = steady_done as f64 / capacity;
    let mean_send = send_ms_total as f64 / sends.max(1) as f64;
    let bound = window as f64 / (window as f64 + mean_send);
    let worst_start = starts
        .iter_mut()
        .map(|t| max_in_window(t, window))
        .max()
        .unwrap_or(0);
    let worst_done = completions
        .iter_mut()
        .map(|t| max_in_window(t, window))
        .max()
        .unwrap_or(0);
    println!(
        "  {mailboxes:>5} mailboxes  {minutes:>3} min  {sends:>8} sends  sustained fraction {fraction:.4} = {:.4} of the bound W/(W+s̄) = {bound:.4} (s̄ = {mean_send:.0} ms; \
         run {run_fraction:.4})  max per 60 s window {worst_start}/{worst_done} of {}  {:>6.0} ns/pick  {:>5.0} ns/settle  {:.2} picks/send  wall {:.2} s",
        fraction / bound,
        limits.messages,
        pick_time.as_nanos() as f64 / picks.max(1) as f64,
        settle_time.as_nanos() as f64 / settles.max(1) as f64,
        picks as f64 / sends.max(1) as f64,
        wall.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------------------
// Scenario 3: limits on, end to end, time-scaled
// ---------------------------------------------------------------------------------------

/// The first acceptance, and the rate N / (last - first acceptance + one window).
fn acceptance_rate(
    accepted: &[mailpipe_sim::AcceptedMessage],
    window: Duration,
) -> (chrono::DateTime<chrono::Utc>, f64) {
    let first = accepted
        .iter()
        .map(|m| m.received_at)
        .min()
        .expect("accepted");
    let last = accepted
        .iter()
        .map(|m| m.received_at)
        .max()
        .expect("accepted");
    let elapsed = (last - first).to_std().unwrap_or_default() + window;
    (first, accepted.len() as f64 / elapsed.as_secs_f64())
}

async fn limits_on(mailboxes: usize, windows: u64) {
    let limits = Limits {
        messages: 20,
        message_window_ms: 2_000,
        recipients: 10_000,
        recipient_window_ms: 60_000,
        connections: 3,
    };
    let n = mailboxes as u64 * limits.messages * windows;
    let h = Harness::new(
        "bench-on",
        PoolSpec {
            mailboxes,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    publish_backlog(&h, "on", n as usize).await;
    let smtp0 = smtp_seconds();
    let (shutdown, task) = h.start_deliver().await;
    let limit =
        Duration::from_millis(limits.message_window_ms * windows * 3) + Duration::from_secs(30);
    if wait_accepted(&h, n, limit).await.is_none() {
        panic!(
            "limits on: only {} of {n} accepted within {limit:?}; refusals: {:?}",
            accepted_count(&h),
            h.sim.refusals()
        );
    }
    // let anything still in flight land, so a late refusal would be seen
    tokio::time::sleep(Duration::from_millis(300)).await;

    let accepted = h.sim.accepted();
    let window = Duration::from_millis(limits.message_window_ms);
    let (first, rate) = acceptance_rate(&accepted, window);
    let pool_limit = mailboxes as f64 * limits.messages as f64 / window.as_secs_f64();
    let mut by_mailbox: std::collections::HashMap<&str, Vec<u64>> =
        std::collections::HashMap::new();
    for m in &accepted {
        let at =
            u64::try_from((m.received_at - first).num_microseconds().unwrap_or(0)).unwrap_or(0);
        by_mailbox.entry(m.mailbox.as_str()).or_default().push(at);
    }
    // per µs -> per s
    let sustained: f64 = by_mailbox
        .values_mut()
        .map(|t| sustained_rate(t, limits.messages as usize) * 1e6)
        .sum();
    let refusals = h.sim.refusals();
    let limit_refusals = refusals.iter().filter(|r| is_limit_refusal(r)).count();
    let stats = h.sim.mailbox_stats();
    let max_window = stats
        .iter()
        .map(|s| s.max_messages_in_window)
        .max()
        .unwrap_or(0);
    let max_conns = stats
        .iter()
        .map(|s| s.max_concurrent_connections)
        .max()
        .unwrap_or(0);
    let smtp_ms = mean_smtp_ms(smtp0, smtp_seconds());
    let bound = limits.message_window_ms as f64 / (limits.message_window_ms as f64 + smtp_ms);
    let (lo, hi) = (
        stats.iter().map(|s| s.accepted).min().unwrap_or(0),
        stats.iter().map(|s| s.accepted).max().unwrap_or(0),
    );
    println!(
        "  {mailboxes:>4} mailboxes  {} per {} s  {n:>5} msgs ({windows} windows)  {rate:>6.1} msg/s of {pool_limit:.0}/s  fraction {:.4}  \
         sustained {:.4} (bound W/(W+SMTP exchange) = {bound:.4})  refused for rate/connections/quota: {limit_refusals} (all refusals: {})  max per window {max_window}/{}  max connections {max_conns}/{}  per mailbox {lo}..{hi}  SMTP exchange {smtp_ms:.1} ms",
        limits.messages,
        window.as_secs(),
        rate / pool_limit,
        sustained / pool_limit,
        refusals.len(),
        limits.messages,
        limits.connections,
    );
    if accepted.len() as u64 != n {
        println!(
            "  note: the simulator recorded {} acceptances for {n} messages",
            accepted.len()
        );
    }
    shutdown.cancel();
    task.await
        .expect("deliver task")
        .expect("deliver stops cleanly");
    h.finish().await;
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args = parse_args();
    if !args.bench && !args.quick {
        // `cargo test --all-targets` runs bench binaries without `--bench`: a benchmark is not a test.
        println!(
            "pool_throughput: benchmark not run (no --bench); use `cargo bench -p mailpipe-deliver --bench pool_throughput [-- --quick] [-- --scheduler]`"
        );
        return;
    }
    let n = args.messages;
    let e2e_windows = if args.quick { 3 } else { 10 };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pool_throughput ({} run{}, {cores} cores visible; tokio runtime with 2 workers)",
        if args.quick { "quick" } else { "full" },
        if args.scheduler_only {
            ", scenario 2 only"
        } else {
            ""
        }
    );
    if args.scheduler_only {
        scheduler_scenario(args.quick);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.write_ahead_only {
        runtime.block_on(write_ahead(if args.quick { 500 } else { 5_000 }));
        return;
    }
    if args.processes_only {
        runtime.block_on(processes_scenario(if args.quick { 3 } else { 8 }));
        return;
    }
    println!(
        "\n1. Limits off, end to end: simulator limits_enabled = false, real RabbitMQ, deliver in this process\n   \
         (3 connections per mailbox, prefetch 64). {n} one-recipient messages are queued first, then deliver starts;\n   \
         msg/s = N / (deliver start .. simulator accepted the Nth), which includes deliver's startup (then: rate\n   \
         from the first to the last acceptance). CPU = utime+stime of this whole process (/proc/self/stat) over\n   \
         that interval, per message: it INCLUDES the in-process simulator (TLS server side, SMTP, token endpoint)\n   \
         and the bench's polling, so deliver alone costs less. RabbitMQ's own CPU (beam.smp) is shown beside it.\n   \
         Peak RSS = VmHWM of this process, reset before each row (includes the simulator)."
    );
    runtime.block_on(async {
        for mailboxes in [1, 10, 100] {
            limits_off(mailboxes, n).await;
        }
    });

    scheduler_scenario(args.quick);

    println!(
        "\n3. Limits on, end to end, time-scaled: 10 mailboxes limited to 20 msgs / 2 s and 3 connections in both the\n   \
         simulator and deliver, real SMTP path and RabbitMQ, backlog of exactly {e2e_windows} windows' worth. rate = N /\n   \
         (last - first acceptance + one window); fraction = rate / the pool's limit (with 2 s windows the send time\n   \
         weighs 30x more than on Exchange's 60 s). sustained = the long-run rate measured as in 2 (free of the\n   \
         last window's burst), against the exactness bound computed from deliver's mean SMTP exchange time\n   \
         (mailpipe_deliver_smtp_duration_seconds). The simulator must refuse none for rate, connections or quota."
    );
    runtime.block_on(limits_on(10, e2e_windows));
    runtime.block_on(write_ahead(if args.quick { 500 } else { 5_000 }));
    runtime.block_on(processes_scenario(e2e_windows));
}

// ---------------------------------------------------------------------------------------
// Scenario 4: the write-ahead record
// ---------------------------------------------------------------------------------------

async fn write_ahead(n: usize) {
    use mailpipe_common::store::{SendOutcome, SendStart};
    println!(
        "\n4. Write-ahead sends: each send is inserted before MAIL FROM (fenced by the mailbox's lease, on the database's\n   \
         clock) and updated with its outcome; {n} sends against the test database (a local PostgreSQL), one at a time,\n   \
         then 12 at once (3 connections x 4 mailboxes). Time per send = insert + update."
    );
    mailpipe_common::testkit::ensure_test_database().await;
    let (store, settings) = mailpipe_common::testkit::test_store(
        "bench-write-ahead",
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let owner = uuid::Uuid::new_v4();
    let ttl = Duration::from_secs(600);
    let mut tokens = Vec::new();
    for m in 0..4 {
        let mailbox = format!("mbx{m}@contoso.example");
        let token = store
            .acquire_lease(owner, &mailbox, ttl)
            .await
            .expect("database")
            .expect("free lease");
        tokens.push((mailbox, token));
    }
    let one = |i: usize| {
        let (mailbox, token) = tokens[i % tokens.len()].clone();
        let store = store.clone();
        async move {
            let send = SendStart {
                id: uuid::Uuid::now_v7(),
                mailbox,
                tenant: Some("contoso".into()),
                job_id: format!("job-{i}"),
                message_id: format!("<job-{i}@bench>"),
                owner,
                token,
                batch: None,
                recipients: vec![
                    mailpipe_common::domain::EmailAddress::parse("x@fabrikam.example")
                        .expect("address"),
                ],
                external_recipients: 1,
                budget: Duration::from_secs(90),
                rules: mailpipe_common::store::SendRules::default(),
            };
            let started = Instant::now();
            assert_eq!(
                store.open_send(&send).await.expect("insert"),
                mailpipe_common::store::Decision::Written
            );
            store
                .close_send(
                    send.id,
                    SendOutcome::Accepted {
                        recipients: 1,
                        external: 1,
                    },
                )
                .await
                .expect("update");
            started.elapsed()
        }
    };
    let mut times = Vec::with_capacity(n);
    let wall = Instant::now();
    for i in 0..n {
        times.push(one(i).await);
    }
    let serial = wall.elapsed();
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "  one at a time: {:.3} ms per send (p50 {:.3} ms, p99 {:.3} ms), {:.0} sends/s",
        serial.as_secs_f64() * 1e3 / n as f64,
        p(0.5),
        p(0.99),
        n as f64 / serial.as_secs_f64()
    );
    let wall = Instant::now();
    let mut times: Vec<Duration> = futures::stream::iter(n..2 * n)
        .map(one)
        .buffer_unordered(12)
        .collect()
        .await;
    let parallel = wall.elapsed();
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "  12 at once:    p50 {:.3} ms, p99 {:.3} ms per send, {:.0} sends/s (Exchange's limit for 1,000 mailboxes is 500/s)",
        p(0.5),
        p(0.99),
        n as f64 / parallel.as_secs_f64()
    );
    mailpipe_common::testkit::drop_schema(&store, &settings.schema).await;
}

// ---------------------------------------------------------------------------------------
// Scenario 5: 3 deliver processes against 1 on one pool
// ---------------------------------------------------------------------------------------

async fn processes_scenario(windows: u64) {
    println!(
        "\n5. Several deliver processes, one pool: 6 mailboxes limited to 20 msgs / 2 s in the simulator and deliver,\n   \
         {windows} windows' worth of backlog, carried by 1 deliver, then (a fresh pool) by 3 (in this process, each with\n   \
         its own leases: 2 mailboxes each). rate = N / (last - first acceptance + one window);\n   \
         MAILPIPE_BENCH_DEBUG=1 prints each mailbox's count and last acceptance (the tail)."
    );
    let one = processes_rate(1, windows).await;
    let three = processes_rate(3, windows).await;
    println!(
        "  3 processes carry {:.3} of what 1 process carries",
        three / one
    );
}

async fn processes_rate(processes: usize, windows: u64) -> f64 {
    let limits = Limits {
        messages: 20,
        message_window_ms: 2_000,
        recipients: 10_000,
        recipient_window_ms: 60_000,
        connections: 3,
    };
    let mailboxes = 6;
    let n = mailboxes as u64 * limits.messages * windows;
    let mut h = Harness::new(
        &format!("bench-procs{processes}"),
        PoolSpec {
            mailboxes,
            limits,
            ..PoolSpec::default()
        },
    )
    .await;
    h.settings.lease_ttl_ms = 3_000;
    let mut running = Vec::new();
    for _ in 0..processes {
        running.push(h.start_deliver().await);
    }
    // Fair shares settle within a few lease rounds before the work arrives.
    let store = h.broker.pipeline.store().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owners = store.lease_owners().await.expect("database");
        let distinct: std::collections::HashSet<_> =
            owners.iter().filter_map(|(_, o, _)| *o).collect();
        if owners.iter().all(|(_, o, _)| o.is_some())
            && owners.len() == mailboxes
            && distinct.len() == processes
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shares never settled: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish_backlog(&h, "procs", n as usize).await;
    let limit =
        Duration::from_millis(limits.message_window_ms * windows * 3) + Duration::from_secs(30);
    if wait_accepted(&h, n, limit).await.is_none() {
        panic!(
            "{processes} processes: only {} of {n} accepted within {limit:?}",
            accepted_count(&h)
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepted = h.sim.accepted();
    let window = Duration::from_millis(limits.message_window_ms);
    let (first, rate) = acceptance_rate(&accepted, window);
    let refused = h
        .sim
        .refusals()
        .iter()
        .filter(|r| is_limit_refusal(r))
        .count();
    // Each message once: the Message-IDs the simulator took more than once, and their sends.
    let mut seen = std::collections::HashMap::new();
    for m in &accepted {
        let id = String::from_utf8_lossy(&m.raw)
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("message-id")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        *seen.entry(id).or_insert(0usize) += 1;
    }
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    if !twice.is_empty() {
        type SendRow = (String, String, Option<String>, Option<String>, i64);
        let rows: Vec<SendRow> = sqlx::query_as(
            "SELECT s.job_id, s.mailbox, s.outcome, m.host, s.token FROM sends s LEFT JOIN deliver_members m ON m.id = s.owner WHERE s.message_id = ANY($1) ORDER BY s.job_id, s.started_at",
        )
        .bind(&twice)
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
        println!(
            "  SENT TWICE: {} messages; their sends: {rows:?}",
            twice.len()
        );
    }
    if std::env::var_os("MAILPIPE_BENCH_DEBUG").is_some() {
        let mut per: std::collections::BTreeMap<&str, (usize, chrono::DateTime<chrono::Utc>)> =
            std::collections::BTreeMap::new();
        for m in &accepted {
            let e = per.entry(m.mailbox.as_str()).or_insert((0, m.received_at));
            e.0 += 1;
            e.1 = e.1.max(m.received_at);
        }
        for (mb, (count, last_at)) in per {
            println!(
                "    {mb}: {count} sent, last {:.2} s after the first",
                (last_at - first).num_milliseconds() as f64 / 1e3
            );
        }
    }
    // Handovers during the run (each change of owner raises a lease's token).
    let handovers: i64 = store
        .lease_owners()
        .await
        .map(|o| o.iter().map(|(_, _, token)| token - 1).sum())
        .unwrap_or(-1);
    println!(
        "  {processes} process{}: {rate:>6.1} msg/s of {:.0}/s, {} accepted for {n}, refused for rate/connections/quota: {refused}, lease handovers {handovers}",
        if processes == 1 { "  " } else { "es" },
        mailboxes as f64 * limits.messages as f64 / window.as_secs_f64(),
        accepted.len(),
    );
    for (shutdown, task) in running {
        shutdown.cancel();
        task.await
            .expect("deliver task")
            .expect("deliver stops cleanly");
    }
    h.finish().await;
    rate
}

/// Scenario 2 at 10, 1,000 and 10,000 mailboxes.
fn scheduler_scenario(quick: bool) {
    println!(
        "\n2. Exchange's limits, pure scheduler: PoolSchedule on a virtual clock, no network. Each mailbox: 30 msgs / 60 s,\n   \
         10,000 recipients / 24 h, 3 connections, own tenant (10,000 external / 24 h). Backlog always full, 1 external\n   \
         recipient each, send time triangular on 150..400 ms. sustained fraction = the pool's long-run rate\n   \
         (per mailbox: completions between two completions 30 apart, i.e. the same slot's successive uses,\n   \
         after the first window's burst) / its summed capacity (30 per 60 s per mailbox); target >= 0.99. The\n   \
         bound is what an exact sliding-window log can reach: a slot is reused one window after its send\n   \
         completed, so W/(W + mean send time); \"of the bound\" = sustained fraction / bound, target >= 0.99.\n   \
         run = completions in [60 s, end) / capacity over that time: with the whole pool starting in phase,\n   \
         the 0.46% lag only costs a whole window after ~3.6 h, so over minutes it reads 1.0. max per 60 s window = most sends of one mailbox in any 60 s, counted at start /\n   \
         at completion (limit 30). ns/pick = wall time per PoolSchedule::pick call (including calls that\n   \
         answer WaitUntil), timed around each call; ns/settle likewise for PoolSchedule::settle, which\n   \
         re-queues the mailbox. Both are O(log n) here: pick searches its class's queues and stops at\n   \
         the first mailbox (the run's 1 external recipient never binds the tenant windows)."
    );
    let minutes = if quick { 5 } else { 30 };
    for mailboxes in [10, 1_000, 10_000] {
        scheduler(mailboxes, minutes);
    }
}
