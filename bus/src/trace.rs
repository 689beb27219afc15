//! W3C trace context carried in NATS headers, so one plan's work can be followed across the
//! agents' logs (and in an OpenTelemetry collector when one is configured): a handler runs
//! inside the context of the message it handles, and what it publishes carries that trace on.

use std::{fmt, future::Future};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the context (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A trace id and the id of the span within it that did the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl TraceContext {
    /// A new trace, started where work enters the crew (a submitted goal, a decision).
    pub fn root() -> Self {
        Self {
            trace_id: uuid::Uuid::new_v4().as_u128(),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// The next step of the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Reads a `traceparent` header; anything malformed, or the all-zero ids the standard
    /// forbids, reads as no context.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |text: &str| text.bytes().all(|byte| byte.is_ascii_hexdigit());
        if !(hex(version) && hex(trace) && hex(span) && flags.len() == 2 && hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The context a handler of a message works in: the next step of the message's trace (a
    /// new trace for a message without one), and, when spans go to an OpenTelemetry
    /// collector, the handler's `span` there, linked to the message's sender.
    pub fn for_handler(parent: Option<Self>, span: &tracing::Span) -> Self {
        let context = match parent {
            Some(parent) => {
                // Refused only when no span is exported: there is nothing to link then.
                let _ = span.set_parent(parent.as_remote_parent());
                parent.child()
            }
            None => Self::root(),
        };
        context.of_span(span)
    }

    /// The OpenTelemetry context that has this one as its remote parent.
    fn as_remote_parent(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        ))
    }

    /// The context of `span` when spans go to an OpenTelemetry collector (so what the span
    /// publishes names it as the parent there); this one otherwise.
    fn of_span(self, span: &tracing::Span) -> Self {
        let context = span.context();
        let exported = context.span().span_context().clone();
        if !exported.is_valid() {
            return self;
        }
        Self {
            trace_id: u128::from_be_bytes(exported.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(exported.span_id().to_bytes()),
            sampled: exported.is_sampled(),
        }
    }

    /// The trace id as the 32 hex digits logs and trace viewers show.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The context of the task running now, if it runs inside one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|context| *context).ok()
    }

    /// Runs `work` inside this context: what it publishes carries the trace on.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

fn new_span_id() -> u64 {
    // The low half of a random UUID; zero is not a valid span id.
    (uuid::Uuid::new_v4().as_u128() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_a_child_keeps_the_trace() {
        let root = TraceContext::root();
        let parsed = TraceContext::parse(&root.to_string()).expect("its own header parses");
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn the_standards_example_parses_and_malformed_headers_do_not() {
        let context =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .expect("the W3C example");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_scope_is_the_current_context_inside_and_only_there() {
        let context = TraceContext::root();
        assert_eq!(TraceContext::current(), None);
        let inside = context.scope(async { TraceContext::current() }).await;
        assert_eq!(inside, Some(context));
    }
}
