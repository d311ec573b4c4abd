//! The run's trace: every tracing event of every host, stamped with
//! simulated time, folded into one hash. The same seed must give the same
//! hash; `--trace` prints the lines.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use mesh_core::hash::Fnv1a64;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The shared trace state.
#[derive(Debug)]
pub struct Trace {
    /// Hash of every line so far.
    hash: Fnv1a64,
    /// Number of lines.
    pub lines: u64,
    /// Print lines to stderr.
    pub print: bool,
}

impl Trace {
    /// FNV-1a of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }
}

/// A handle to the trace.
pub type TraceHandle = Arc<Mutex<Trace>>;

/// A new, empty trace.
pub fn new_trace(print: bool) -> TraceHandle {
    Arc::new(Mutex::new(Trace {
        hash: Fnv1a64::new(),
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
        trace.hash.bytes(line.as_bytes());
        trace.lines += 1;
        if trace.print {
            eprintln!("{line}");
        }
    }
}
