//! `just bench`: the hot paths of one order, timed alone — form decoding and validation, the
//! wire message both ways, and building one batch's INSERT.

use std::hint::black_box;

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use finalprice_front::form::OrderForm;
use finalprice_shared::domain::{Country, CustomerName, PhoneNumber};
use finalprice_shared::messages::{self, NewOrder};
use finalprice_worker::process::insert_statement;
use sea_orm::DbBackend;
use uuid::Uuid;

const FORM: &[u8] = b"name=%D0%90%D0%BD%D0%BD%D0%B0+%D0%9F%D0%B5%D1%82%D1%80%D0%BE%D0%B2%D0%B0&phone=8+%28999%29+123-45-67&key=01a1fd7a-4ee6-7162-bd2e-79eb3a3f3ae4";

fn order(i: u64) -> NewOrder {
    NewOrder {
        id: Uuid::now_v7(),
        name: CustomerName::parse("Анна Петрова").expect("valid"),
        phone: PhoneNumber::parse_e164(&format!("+7999{i:07}")).expect("valid"),
        created_at: Utc::now(),
    }
}

fn form_decoding_and_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("front");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode and validate a form", |b| {
        b.iter(|| {
            let form: OrderForm = serde_urlencoded::from_bytes(black_box(FORM)).expect("decodes");
            form.parse(Country::Russia).expect("valid")
        });
    });
    group.bench_function("validate a name", |b| {
        b.iter(|| CustomerName::parse(black_box("  Анна   Мария Петрова ")));
    });
    group.bench_function("validate a phone", |b| {
        b.iter(|| PhoneNumber::parse(black_box("8 (999) 123-45-67"), Country::Russia));
    });
    group.finish();
}

fn wire_messages(c: &mut Criterion) {
    let order = order(1);
    let encoded = messages::encode(&order);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode an order", |b| {
        b.iter(|| messages::encode(black_box(&order)))
    });
    group.bench_function("decode (and re-validate) an order", |b| {
        b.iter(|| messages::decode::<NewOrder>(black_box(&encoded)).expect("decodes"));
    });
    group.finish();
}

fn batch_building(c: &mut Criterion) {
    let mut group = c.benchmark_group("worker");
    for (backend, label) in [
        (DbBackend::Postgres, "PostgreSQL arrays"),
        (DbBackend::Sqlite, "SQLite VALUES"),
    ] {
        for size in [1usize, 64, 256] {
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(
                format!("build the INSERT of a batch of {size} ({label})"),
                |b| {
                    b.iter_batched(
                        || (0..size as u64).map(order).collect::<Vec<_>>(),
                        |batch| {
                            let batch: Vec<&NewOrder> = batch.iter().collect();
                            insert_statement(backend, &batch)
                        },
                        BatchSize::SmallInput,
                    );
                },
            );
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    form_decoding_and_validation,
    wire_messages,
    batch_building
);
criterion_main!(benches);
