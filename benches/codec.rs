//! Micro-benchmarks of the hot path's pure parts: the frame scanner that
//! moves messages between buffers (both directions, as pgbench's traffic
//! looks), and the prepared-statement rewriting of Parse and Bind.
//!
//! `cargo bench --bench codec`; the load benchmark (benches/load.sh) is the
//! one that says how pgdyno compares with PgBouncer.

use std::collections::HashMap;
use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgdyno::prepared::{self, Statement};
use pgdyno::protocol::frame::{Scanner, Step, Visit};

/// Sees what the relay sees whole (the state-driving messages) and
/// forwards everything.
struct Forward {
    whole: &'static [u8],
}

impl Visit for Forward {
    fn wants_body(&self, tag: u8, _len: usize) -> bool {
        self.whole.contains(&tag)
    }

    fn visit(&mut self, _tag: u8, body: &[u8], _out: &mut BytesMut) -> Step {
        black_box(body);
        Step::Forward
    }
}

const CLIENT_WHOLE: &[u8] = b"QPBDCSHX";
const BACKEND_WHOLE: &[u8] = b"ZSEK123tn";

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// pgbench -S in the simple protocol: Query, then RowDescription,
/// DataRow, CommandComplete, ReadyForQuery.
fn select_round_trip() -> (BytesMut, BytesMut) {
    let mut request = BytesMut::new();
    message(
        &mut request,
        b'Q',
        b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;\0",
    );
    let mut response = BytesMut::new();
    let mut row_description = BytesMut::new();
    row_description.put_i16(1);
    row_description.put_slice(b"abalance\0");
    row_description.put_slice(&[0; 18]);
    message(&mut response, b'T', &row_description);
    message(&mut response, b'D', b"\x00\x01\x00\x00\x00\x010");
    message(&mut response, b'C', b"SELECT 1\0");
    message(&mut response, b'Z', b"I");
    (request, response)
}

fn translate(input: &BytesMut, whole: &'static [u8], out: &mut BytesMut) {
    let mut input = input.clone();
    out.clear();
    let mut scanner = Scanner::default();
    let need = scanner
        .translate(&mut input, out, usize::MAX / 2, &mut Forward { whole })
        .unwrap();
    black_box(need);
}

fn frames(c: &mut Criterion) {
    let (request, response) = select_round_trip();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("client_query", |b| {
        b.iter(|| translate(&request, CLIENT_WHOLE, &mut out))
    });
    group.bench_function("backend_select_result", |b| {
        b.iter(|| translate(&response, BACKEND_WHOLE, &mut out))
    });
    let mut rows = BytesMut::new();
    for _ in 0..1000 {
        message(&mut rows, b'D', &[7; 100]);
    }
    message(&mut rows, b'Z', b"I");
    group.throughput(Throughput::Bytes(rows.len() as u64));
    group.bench_function("backend_1000_datarows", |b| {
        b.iter(|| translate(&rows, BACKEND_WHOLE, &mut out))
    });
    group.finish();
}

fn rewriting(c: &mut Criterion) {
    let query = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let mut parse = BytesMut::new();
    parse.put_slice(b"P_0\0");
    parse.put_slice(query);
    parse.put_u8(0);
    parse.put_i16(1);
    parse.put_i32(23);
    let mut bind = BytesMut::new();
    bind.put_slice(b"\0P_0\0");
    bind.put_slice(&[0, 0, 0, 1, 0, 0, 0, 5]);
    bind.put_slice(b"48213");
    bind.put_slice(&[0, 0]);

    let mut group = c.benchmark_group("prepared");
    group.bench_function("parse_to_statement", |b| {
        b.iter(|| {
            let p = prepared::parse_body(black_box(&parse)).unwrap();
            black_box(Statement::new(p.query, p.types))
        })
    });
    let p = prepared::parse_body(&parse).unwrap();
    let mut statements = HashMap::new();
    statements.insert(p.name.to_vec(), Statement::new(p.query, p.types));
    let mut out = BytesMut::with_capacity(1024);
    group.bench_function("bind_rewrite", |b| {
        b.iter(|| {
            out.clear();
            let name = prepared::bind_statement(black_box(&bind)).unwrap();
            let statement = &statements[name];
            prepared::write_bind(&mut out, &bind, &statement.server_name);
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, frames, rewriting);
criterion_main!(benches);
