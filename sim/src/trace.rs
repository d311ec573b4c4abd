//! The run's trace: every tracing event of every host, stamped with
//! simulated time, folded into one hash. The same seed must give the same
//! hash; `--trace` prints the lines.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// FNV-1a, 64 bit.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = hash;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The shared trace state.
#[derive(Debug)]
pub struct Trace {
    /// Hash of every line so far.
    pub hash: u64,
    /// Number of lines.
    pub lines: u64,
    /// Print lines to stderr.
    pub print: bool,
}

/// A handle to the trace.
pub type TraceHandle = Arc<Mutex<Trace>>;

/// A new, empty trace.
pub fn new_trace(print: bool) -> TraceHandle {
    Arc::new(Mutex::new(Trace {
        hash: FNV_OFFSET,
        lines: 0,
        print,
    }))
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

struct SpanFields(String);

/// The tracing layer that feeds a [`Trace`].
pub struct TraceLayer {
    trace: TraceHandle,
}

impl TraceLayer {
    /// A layer feeding `trace`.
    pub fn new(trace: TraceHandle) -> Self {
        Self { trace }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(SpanFields(format!("{}{}", span.name(), fields.0)));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = String::new();
        // Simulated time since the run began.
        let t = madsim::time::TimeHandle::try_current().map_or(Default::default(), |h| h.elapsed());
        let _ = write!(line, "{:>6}.{:06} ", t.as_secs(), t.subsec_micros());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    let _ = write!(line, "[{}] ", f.0);
                }
            }
        }
        let meta = event.metadata();
        let _ = write!(line, "{} {}:", meta.level(), meta.target());
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        line.push_str(&fields.0);
        let mut trace = self.trace.lock().expect("trace lock");
        trace.hash = fnv1a(trace.hash, line.as_bytes());
        trace.lines += 1;
        if trace.print {
            eprintln!("{line}");
        }
    }
}
