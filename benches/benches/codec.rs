//! The RPC path's byte handling: every Raft message, forwarded write and
//! read between agents and servers is one `wire` message (JSON) in one
//! `codec` frame (length, version, CRC-32). Measured at 128 B (a typical
//! KV value: the load) and 64 KiB (a large value; AppendEntries
//! batches and snapshot chunks are larger still, and scale from here).
//!
//! Baselines in the same run, so results read as ratios:
//! - `frame/*/memcpy`: copying the payload into a buffer, the floor any
//!   framing must pay; `frame/*/encode` over it is the cost of the header
//!   and the CRC.
//! - `wire/*/frame_only`: framing the same bytes the wire message carries
//!   as its value; `wire/*/encode` over it is the cost of JSON and base64.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_benches::{kv_set, value};
use mesh_core::codec::{decode_body, decode_len, encode_frame, FrameDecoder, LEN_PREFIX};
use mesh_core::wire::{self, Request};

const SIZES: [(&str, usize); 2] = [("128B", 128), ("64KiB", 64 << 10)];

/// Frame encode and decode: `encode_frame` into a reused buffer;
/// `decode_body` on a whole frame (the blocking reader's path, after
/// `decode_len`); `FrameDecoder` fed the frame as one chunk (the
/// incremental reader's path, which copies the payload out).
fn frame(c: &mut Criterion) {
    for (name, len) in SIZES {
        let mut g = c.benchmark_group(format!("frame/{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let payload = value(len, 1);
        let mut out = Vec::with_capacity(len + 64);
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                out.clear();
                out.extend_from_slice(&payload);
                out.len()
            })
        });
        g.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&payload, &mut out);
                out.len()
            })
        });
        let mut framed = Vec::new();
        encode_frame(&payload, &mut framed);
        g.bench_function("decode_body", |b| {
            b.iter(|| {
                let prefix = framed[..LEN_PREFIX].try_into().expect("4 bytes");
                let len = decode_len(prefix).expect("valid length");
                decode_body(&framed[LEN_PREFIX..LEN_PREFIX + len])
                    .expect("valid frame")
                    .len()
            })
        });
        g.bench_function("frame_decoder", |b| {
            let mut dec = FrameDecoder::new();
            b.iter(|| {
                dec.push(&framed);
                dec.next_frame().expect("valid frame").expect("whole frame")
            })
        });
        g.finish();
    }
}

/// A forwarded KV write, `Request::Write(KvSet)`, through the wire layer:
/// `wire::encode` (JSON, base64 value, then a frame) and `wire::decode` of
/// the frame's payload. `Request<serde_json::Value>` stands in for the
/// runtime's Raft payload type, which a `Write` does not carry.
fn wire_write(c: &mut Criterion) {
    for (name, len) in SIZES {
        let mut g = c.benchmark_group(format!("wire/write_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let v = value(len, 2);
        let req: Request<serde_json::Value> =
            Request::Write(kv_set("app/config/key".into(), v.clone()));
        let mut out = Vec::with_capacity(2 * len + 256);
        g.bench_function("frame_only", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&v, &mut out);
                out.len()
            })
        });
        g.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                wire::encode(&req, &mut out).expect("fits a frame");
                out.len()
            })
        });
        let mut framed = Vec::new();
        wire::encode(&req, &mut framed).expect("fits a frame");
        let payload = decode_body(&framed[LEN_PREFIX..])
            .expect("valid frame")
            .to_vec();
        g.bench_function("decode", |b| {
            b.iter(|| {
                let r: Request<serde_json::Value> = wire::decode(&payload).expect("valid message");
                r
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = frame, wire_write
}
criterion_main!(benches);
