//! The host's clocks. Every timer, timeout and timestamp in mesh-net goes
//! through this module, never through `tokio::time` or `SystemTime`
//! directly, so that the simulator can give each host a clock of its own.
//!
//! In production these are tokio's monotonic clock and the system wall
//! clock. Under `--cfg madsim` each host's clock can run fast or slow
//! (drift) and its wall clock can be off (skew), set by the harness through
//! [`ClockSim`]: election timeouts, heartbeats, RPC deadlines and anything
//! stamped with wall time then behave as on a real host with a bad
//! oscillator or a stepped NTP clock. Protocol safety must not depend on
//! clocks agreeing: reads are confirmed with a quorum round, never served
//! on a time-based lease.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

#[cfg(madsim)]
pub use self::sim::{ClockSim, Instant};
#[cfg(not(madsim))]
pub use tokio::time::Instant;

/// Sleeps for `duration` as measured by this host's clock.
pub fn sleep(duration: Duration) -> tokio::time::Sleep {
    #[cfg(madsim)]
    let duration = ClockSim::true_span(duration);
    tokio::time::sleep(duration)
}

/// Sleeps until `deadline` on this host's clock.
pub fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    sleep(deadline.saturating_duration_since(Instant::now()))
}

/// Bounds `future` by `duration` on this host's clock.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future: Box::pin(future),
        sleep: Box::pin(sleep(duration)),
    }
}

/// This host's wall-clock time (skewed in the simulator).
pub fn wall_now() -> SystemTime {
    #[cfg(madsim)]
    {
        ClockSim::wall_now()
    }
    #[cfg(not(madsim))]
    {
        SystemTime::now()
    }
}

/// This host's wall-clock time in whole seconds since the Unix epoch (0
/// before it), as commands carry it.
pub fn wall_unix_secs() -> u64 {
    wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A future bounded by a deadline; nameable, unlike madsim's `timeout`.
pub struct Timeout<T> {
    future: Pin<Box<T>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The deadline of a [`Timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl<T: Future> Future for Timeout<T> {
    type Output = Result<T::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The inner future is polled first: a result that is ready at the
        // deadline wins, as in tokio.
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(madsim)]
mod sim {
    use std::collections::BTreeMap;
    use std::ops::{Add, AddAssign, Sub, SubAssign};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use tokio::madsim::plugin::{self, Simulator};
    use tokio::madsim::rand::GlobalRng;
    use tokio::madsim::task::NodeId;
    use tokio::madsim::time::TimeHandle;
    use tokio::madsim::Config;

    /// A rate of exactly one local second per true second, in parts per
    /// million.
    const EXACT_PPM: u64 = 1_000_000;

    /// Local clocks start a day in, so `Instant - Duration` (openraft uses
    /// it for "long ago") cannot underflow early in a run.
    const ORIGIN: Duration = Duration::from_secs(86_400);

    /// One host's oscillator: piecewise linear in true time, re-anchored
    /// whenever its rate changes so local time never jumps.
    #[derive(Debug, Clone, Copy)]
    struct HostClock {
        anchor_true: Duration,
        anchor_local: Duration,
        rate_ppm: u64,
        /// Wall-clock error on top of the drift, in nanoseconds.
        wall_offset_ns: i64,
    }

    impl HostClock {
        const EXACT: HostClock = HostClock {
            anchor_true: Duration::ZERO,
            anchor_local: Duration::ZERO,
            rate_ppm: EXACT_PPM,
            wall_offset_ns: 0,
        };

        fn local_at(&self, now: Duration) -> Duration {
            self.anchor_local
                + scale(
                    now.saturating_sub(self.anchor_true),
                    self.rate_ppm,
                    EXACT_PPM,
                )
        }
    }

    fn scale(d: Duration, mul: u64, div: u64) -> Duration {
        let nanos = d.as_nanos() * u128::from(mul) / u128::from(div.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// madsim plugin holding every host's clock. The simulation driver
    /// registers it (`Runtime::add_simulator::<ClockSim>()`) and sets
    /// faults through [`ClockSim::set_rate`] and
    /// [`ClockSim::set_wall_offset`]; hosts without faults keep true time.
    pub struct ClockSim {
        hosts: Mutex<BTreeMap<NodeId, HostClock>>,
    }

    impl Simulator for ClockSim {
        fn new(_rand: &GlobalRng, _time: &TimeHandle, _config: &Config) -> Self {
            Self {
                hosts: Mutex::new(BTreeMap::new()),
            }
        }
    }

    fn true_now() -> Duration {
        TimeHandle::current().elapsed()
    }

    impl ClockSim {
        fn current() -> Arc<ClockSim> {
            plugin::simulator::<ClockSim>()
        }

        fn host(&self, node: NodeId) -> HostClock {
            let hosts = self.hosts.lock().expect("clock lock");
            hosts.get(&node).copied().unwrap_or(HostClock::EXACT)
        }

        /// From now on, host `node`'s clock advances `rate_ppm` millionths
        /// of a second per true second (1_000_000 is exact; 1_500_000 runs
        /// 50% fast). Local time does not jump.
        pub fn set_rate(&self, node: NodeId, rate_ppm: u64) {
            let now = true_now();
            let mut hosts = self.hosts.lock().expect("clock lock");
            let clock = hosts.entry(node).or_insert(HostClock::EXACT);
            clock.anchor_local = clock.local_at(now);
            clock.anchor_true = now;
            clock.rate_ppm = rate_ppm.max(1);
        }

        /// Steps host `node`'s wall clock to `offset_ns` from true wall time
        /// (plus whatever its drift has accumulated), as an NTP step would.
        pub fn set_wall_offset(&self, node: NodeId, offset_ns: i64) {
            let mut hosts = self.hosts.lock().expect("clock lock");
            hosts.entry(node).or_insert(HostClock::EXACT).wall_offset_ns = offset_ns;
        }

        /// The current host's monotonic time.
        fn local_now() -> Duration {
            Self::current().host(plugin::node()).local_at(true_now())
        }

        /// The true duration of `local` on the current host's clock.
        pub(super) fn true_span(local: Duration) -> Duration {
            let rate = Self::current().host(plugin::node()).rate_ppm;
            scale(local, EXACT_PPM, rate)
        }

        /// The current host's wall clock: true wall time, plus the drift
        /// accumulated by its oscillator, plus its offset.
        pub(super) fn wall_now() -> SystemTime {
            let clock = Self::current().host(plugin::node());
            let now = true_now();
            let error_ns = clock.local_at(now).as_nanos() as i128 - now.as_nanos() as i128
                + i128::from(clock.wall_offset_ns);
            let wall = SystemTime::now();
            let magnitude =
                Duration::from_nanos(u64::try_from(error_ns.unsigned_abs()).unwrap_or(u64::MAX));
            if error_ns >= 0 {
                wall + magnitude
            } else {
                wall.checked_sub(magnitude)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            }
        }
    }

    /// A reading of the current host's monotonic clock.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Instant(Duration);

    impl Instant {
        /// The current host's time now.
        pub fn now() -> Self {
            Self(ORIGIN + ClockSim::local_now())
        }

        /// Host time passed since `self`.
        pub fn elapsed(&self) -> Duration {
            Self::now().saturating_duration_since(*self)
        }

        /// `self - earlier`, or zero if `earlier` is later.
        pub fn saturating_duration_since(&self, earlier: Self) -> Duration {
            self.0.saturating_sub(earlier.0)
        }
    }

    impl Add<Duration> for Instant {
        type Output = Self;
        fn add(self, d: Duration) -> Self {
            Self(self.0.saturating_add(d))
        }
    }

    impl AddAssign<Duration> for Instant {
        fn add_assign(&mut self, d: Duration) {
            *self = *self + d;
        }
    }

    impl Sub<Duration> for Instant {
        type Output = Self;
        fn sub(self, d: Duration) -> Self {
            Self(self.0.saturating_sub(d))
        }
    }

    impl SubAssign<Duration> for Instant {
        fn sub_assign(&mut self, d: Duration) {
            *self = *self - d;
        }
    }

    impl Sub<Instant> for Instant {
        type Output = Duration;
        fn sub(self, earlier: Instant) -> Duration {
            self.saturating_duration_since(earlier)
        }
    }

    impl openraft::Instant for Instant {
        fn now() -> Self {
            Instant::now()
        }
    }
}
