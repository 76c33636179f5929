//! DESIGN.md §2 under the faults a flash sale meets, injected for real: database connections
//! killed, nats-server killed and restarted, a poison order, one key submitted many times at
//! once, a full stream, an overloaded front. Each load scenario ends on three numbers that
//! must be zero: accepted but not a row at that moment, acknowledged but never a row, and
//! orders stored twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use finalprice_testkit::Backend;
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use finalprice_testkit::load::few;

use crate::helpers::{eventually, order_id_from_location, spawn_app, spawn_app_with};

#[tokio::test]
async fn orders_survive_database_connections_killed_again_and_again() {
    let app = spawn_app_with(Backend::Postgres, |config| {
        config.worker.retry_delay = Duration::from_millis(50);
        config.worker.retry_max_delay = Duration::from_millis(400);
    })
    .await;
    let mut app = app;
    // Each commit takes 50 ms, so the kills below land inside statements, not only between
    // them (the pool tests a connection before handing it out).
    app.execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$; \
         CREATE TRIGGER slow_insert BEFORE INSERT ON orders \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();",
    )
    .await;
    app.start_worker().await;

    // The services' pool names itself "finalprice"; the test's own connection is spared.
    let killer = async {
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            app.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'finalprice' AND pid <> pg_backend_pid()",
            )
            .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let (tally, ()) = tokio::join!(app.burst(300, 32, 9_100_000_000), killer);

    assert_eq!(tally.acknowledged().count(), 300, "{tally:?}");
    app.assert_guarantees(&tally, Duration::from_secs(20)).await;
    assert!(
        app.worker_stats().snapshot().batches_failed > 0,
        "the fault was injected: some batch must have failed"
    );
    app.stop().await;
}

#[tokio::test]
async fn orders_acknowledged_before_nats_crashed_are_committed_after_it_restarts() {
    // No worker yet, so the acknowledged orders are still in the stream when it crashes.
    let mut app = spawn_app_with(Backend::Postgres, |config| {
        config.http.reply_timeout = Duration::from_millis(100);
    })
    .await;

    let before = app.burst(100, 16, 9_200_000_000).await;
    assert_eq!(
        before.pending.len(),
        100,
        "durable, not committed: {before:?}"
    );
    assert_eq!(app.queued().await, 100, "all of them wait in the stream");
    app.kill_nats().await;
    let during = app.burst(20, 8, 9_210_000_000).await;
    app.nats
        .restart()
        .expect("nats-server restarts on the same store");
    // Reconnection is automatic; give the clients a moment, then load again.
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.get("/readyz").await.status() == 200
        })
        .await,
        "the front reconnects by itself"
    );
    app.start_worker().await;
    let after = app.burst(100, 16, 9_220_000_000).await;

    assert_eq!(
        during.unavailable, 20,
        "while NATS is down every order gets a 503: {during:?}"
    );
    for tally in [&before, &during, &after] {
        app.assert_guarantees(tally, Duration::from_secs(30)).await;
    }
    assert_eq!(after.acknowledged().count(), 100, "{after:?}");
    assert_eq!(
        app.row_count().await,
        200,
        "the 100 from before the crash and the 100 after, and not one of the 20 refused during it"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_submitted_many_times_at_once_is_one_order() {
    let app = spawn_app(Backend::Postgres).await;
    let key = Uuid::now_v7();
    let body = format!("name=Anna&phone=89991234567&key={key}");

    let answers = join_all((0..20).map(|_| app.post_form(&body))).await;

    for answer in &answers {
        assert_eq!(answer.status(), 303);
        assert_eq!(
            order_id_from_location(answer),
            key,
            "every answer names the same order"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.row(key).await.is_some()
        })
        .await
    );
    assert_eq!(app.row_count().await, 1, "one row");
    app.stop().await;
}

#[tokio::test]
async fn a_poison_order_is_dead_lettered_its_shopper_told_and_the_others_committed() {
    let mut app = spawn_app_with(Backend::Postgres, |config| {
        config.worker.retry_delay = Duration::from_millis(20);
        config.worker.dead_letter_after = 3;
        config.http.reply_timeout = Duration::from_secs(5);
    })
    .await;
    // An order the database can never take: a rule its data breaks, whose message has two
    // lines (the dead letter's reason header must still hold it).
    app.execute(
        "CREATE FUNCTION no_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.name = 'Яд' THEN RAISE EXCEPTION USING ERRCODE = 'check_violation', \
         MESSAGE = E'no poison here\\nnot on any line'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER no_poison BEFORE INSERT ON orders \
         FOR EACH ROW EXECUTE FUNCTION no_poison();",
    )
    .await;
    app.start_worker().await;

    let poison_order = json!({ "name": "Яд", "phone": "89990000001" });
    let poison = app.post_json(&poison_order);
    let good = app.burst(30, 30, 9_300_000_000);
    let (poison, good) = tokio::join!(poison, good);

    assert_eq!(poison.status(), 500, "the shopper is told it was not saved");
    assert_eq!(good.accepted.len(), 30, "{good:?}");
    assert!(
        good.accepted_not_committed.is_empty(),
        "{}",
        few(&good.accepted_not_committed)
    );
    assert_eq!(app.row_count().await, 30);
    assert_eq!(
        app.queued().await,
        0,
        "the poison order left the work queue"
    );

    // The operator finds it, replays it too early, then fixes the cause and replays it again.
    let (js, mut dlq) = finalprice_worker::dead_letters::open(&app.config.nats)
        .await
        .expect("dead-letter stream");
    let letters = finalprice_worker::dead_letters::list(&mut dlq)
        .await
        .expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = &letters[0].reason;
    assert!(
        reason.contains("refused by the database") && reason.contains("here not on any line"),
        "{letters:?}"
    );
    assert_eq!(letters[0].deliveries, 3);
    let id = letters[0]
        .order_id
        .expect("the dead letter names its order");

    let replay_all = async |dlq: &mut async_nats::jetstream::stream::Stream| {
        finalprice_worker::dead_letters::replay(
            &js,
            dlq,
            &finalprice_worker::dead_letters::Selection::All,
        )
        .await
        .expect("replay")
    };
    assert_eq!(replay_all(&mut dlq).await, vec![letters[0].sequence]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut dlq = dlq.clone();
            async move {
                let letters = finalprice_worker::dead_letters::list(&mut dlq).await;
                !letters.expect("list").is_empty()
            }
        })
        .await,
        "dead-lettered again"
    );
    let again = finalprice_worker::dead_letters::list(&mut dlq)
        .await
        .expect("list");
    assert_eq!(again.len(), 1, "dead-lettered again: {again:?}");
    assert_eq!(
        again[0].order_id,
        Some(id),
        "still named, so it can be replayed"
    );

    app.execute("DROP TRIGGER no_poison ON orders").await;
    assert_eq!(replay_all(&mut dlq).await, vec![again[0].sequence]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.row(id).await.is_some()
        })
        .await,
        "the replayed order is committed"
    );
    assert!(
        finalprice_worker::dead_letters::list(&mut dlq)
            .await
            .expect("list")
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_full_stream_gets_503_with_retry_after_and_the_input_kept() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.nats.stream_max_messages = 3;
        config.http.reply_timeout = Duration::from_millis(200);
    })
    .await;

    for i in 0..3 {
        let answer = app
            .post_form(&format!("name=Anna&phone=8999000000{i}"))
            .await;
        assert_eq!(answer.status(), 303, "order {i} fits");
    }
    let full = app.post_form("name=Anna&phone=89990000009").await;

    assert_eq!(full.status(), 503);
    assert!(full.headers().contains_key("retry-after"));
    let html = full.text().await.expect("page");
    assert!(html.contains("value=\"89990000009\""), "input kept: {html}");
    assert_eq!(app.queued().await, 3);
    app.stop().await;
}

#[tokio::test]
async fn past_the_in_flight_bound_the_answer_is_a_fast_503() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_in_flight = 2;
        config.http.reply_timeout = Duration::from_secs(2);
    })
    .await;
    // No worker: each order holds its slot for the whole reply timeout.
    let bodies: Vec<String> = (0..2)
        .map(|i| format!("name=Anna&phone=8999000000{i}"))
        .collect();
    let held_answered = AtomicBool::new(false);
    let held = async {
        let answers = join_all(bodies.iter().map(|body| app.post_form(body))).await;
        held_answered.store(true, Ordering::SeqCst);
        answers
    };
    let extra = async {
        let both_held = eventually(Duration::from_secs(10), || async {
            app.queued().await == 2
        });
        assert!(both_held.await, "the two held orders reached the queue");
        let answer = app.post_form("name=Anna&phone=89990000009").await;
        (answer, held_answered.load(Ordering::SeqCst))
    };
    let (held, (extra, after_held)) = tokio::join!(held, extra);

    assert!(held.iter().all(|answer| answer.status() == 303));
    assert_eq!(extra.status(), 503);
    assert!(extra.headers().contains_key("retry-after"));
    assert!(
        !after_held,
        "a 503 for overload does not wait for a slot to free"
    );
    assert_eq!(
        app.queued().await,
        2,
        "the refused order never reached the queue"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_are_unaffected() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.rate_limit_per_second = 1;
        config.http.rate_limit_burst = 2;
        config.http.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    app.start_worker().await;
    let post = |client: &'static str, phone: &'static str| {
        app.http
            .post(app.url("/orders"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-for", client)
            .body(format!("name=Anna&phone={phone}"))
            .send()
    };

    assert_eq!(
        post("203.0.113.7", "89990000001")
            .await
            .expect("answer")
            .status(),
        303
    );
    assert_eq!(
        post("203.0.113.7", "89990000002")
            .await
            .expect("answer")
            .status(),
        303
    );
    // The client wrote an address of its own; the proxy appended the one it saw. And the
    // same from a proxy that adds a line of its own after the client's. Both at once, before
    // the bucket refills (one order a second).
    let second_line = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", "192.0.2.100")
        .header("x-forwarded-for", "203.0.113.7")
        .body("name=Anna&phone=89990000005")
        .send();
    let (limited, second_line) =
        tokio::join!(post("192.0.2.99, 203.0.113.7", "89990000003"), second_line);
    let (limited, second_line) = (limited.expect("answer"), second_line.expect("answer"));
    let other = post("198.51.100.1", "89990000004").await.expect("answer");

    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(
        limited
            .text()
            .await
            .expect("page")
            .contains("value=\"89990000003\""),
        "input kept"
    );
    assert_eq!(second_line.status(), 429, "the proxy's own line counts");
    assert_eq!(other.status(), 303, "another client has its own bucket");
    assert_eq!(app.row_count().await, 3, "the limited order was not taken");
    app.stop().await;
}
