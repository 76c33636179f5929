//! The shopper's pages as the front serves them: every outcome in Russian and in English, the
//! language chosen by `Accept-Language` or by the shopper, hostile input escaped, the page
//! light and its static files cacheable for good.

use std::time::Duration;

use finalprice_testkit::Backend;
use futures_util::future::join_all;
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, order_id_from_location, spawn_app, spawn_app_with};

/// Russian (no header), English by the browser, English picked against a Russian browser.
const ENGLISH_BROWSER: &str = "en-GB,en;q=0.9,ru;q=0.5";

async fn page(app: &TestApp, path: &str, accept_language: Option<&str>) -> (u16, String) {
    let mut request = app.http.get(app.url(path));
    if let Some(languages) = accept_language {
        request = request.header("accept-language", languages);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("page"))
}

async fn post(app: &TestApp, body: &str, accept_language: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(languages) = accept_language {
        request = request.header("accept-language", languages);
    }
    request.send().await.expect("answered")
}

fn assert_lang(html: &str, lang: &str) {
    assert!(
        html.contains(&format!("<html lang=\"{lang}\">")),
        "not a {lang} page: {html}"
    );
}

#[tokio::test]
async fn the_form_is_russian_by_default_and_english_when_the_browser_prefers_or_the_shopper_picks_it()
 {
    let app = spawn_app(Backend::Sqlite).await;
    let cases = [
        ("/", None, "ru", "Оформить заказ", "/?lang=en"),
        (
            "/",
            Some("de-DE,de;q=0.9"),
            "ru",
            "Оформить заказ",
            "/?lang=en",
        ),
        (
            "/",
            Some(ENGLISH_BROWSER),
            "en",
            "Place an order",
            "/?lang=ru",
        ),
        ("/?lang=en", None, "en", "Place an order", "/?lang=ru"),
        (
            "/?lang=ru",
            Some(ENGLISH_BROWSER),
            "ru",
            "Оформить заказ",
            "/?lang=en",
        ),
        ("/?lang=xx", None, "ru", "Оформить заказ", "/?lang=en"),
    ];
    for (path, accept, lang, heading, switch) in cases {
        let (status, html) = page(&app, path, accept).await;
        assert_eq!(status, 200);
        assert_lang(&html, lang);
        assert!(html.contains(&format!("<h1>{heading}</h1>")), "{html}");
        assert!(
            html.contains(&format!("href=\"{switch}\"")),
            "{path} {accept:?}: {html}"
        );
        assert!(
            html.contains(&format!("name=\"lang\" value=\"{lang}\"")),
            "the form carries its language to the answer"
        );
        // Accessible by construction: every input has its label, the phone is a phone.
        for id in ["name", "phone"] {
            assert!(html.contains(&format!("<label for=\"{id}\">")), "{html}");
            assert!(html.contains(&format!("id=\"{id}\"")), "{html}");
        }
        assert!(html.contains("type=\"tel\"") && html.contains("autocomplete=\"tel\""));
        assert!(html.contains("autocomplete=\"name\""));
        assert!(!html.contains("<script"), "no script on any page");
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_input_comes_back_escaped_marked_and_in_the_shoppers_language() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = Uuid::now_v7();
    let hostile = "name=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E&phone=%3Cimg+src%3Dx%3E";
    for (lang_field, accept, lang, name_error, phone_error) in [
        (
            "",
            None,
            "ru",
            "Имя может содержать только буквы",
            "Номер телефона может",
        ),
        (
            "&lang=en",
            None,
            "en",
            "A name may contain only letters",
            "A phone number may",
        ),
        (
            "",
            Some(ENGLISH_BROWSER),
            "en",
            "A name may contain",
            "A phone number may",
        ),
        (
            "&lang=ru",
            Some(ENGLISH_BROWSER),
            "ru",
            "Имя может",
            "Номер телефона",
        ),
    ] {
        let response = post(&app, &format!("{hostile}&key={key}{lang_field}"), accept).await;
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = response.text().await.expect("page");
        assert_lang(&html, lang);
        assert!(!html.contains("<script>alert"), "escaped: {html}");
        assert!(!html.contains("<img src"), "escaped: {html}");
        assert!(
            html.contains("value=\"&#34;&#62;&#60;script&#62;alert(1)&#60;/script&#62;\""),
            "the name is kept, escaped: {html}"
        );
        assert!(html.contains("value=\"&#60;img src=x&#62;\""), "{html}");
        assert!(html.contains(&format!("value=\"{key}\"")), "same key");
        assert!(html.contains(name_error), "{html}");
        assert!(html.contains(phone_error), "{html}");
        assert!(html.contains("aria-invalid=\"true\" aria-describedby=\"name-error\""));
        assert!(html.contains("aria-describedby=\"phone-error phone-hint\""));
        assert!(html.contains("id=\"name-error\"") && html.contains("id=\"phone-error\""));
        assert_eq!(
            html.matches("autofocus").count(),
            1,
            "the first field to fix has the focus"
        );
        assert!(html.contains("role=\"alert\""), "the summary is announced");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_order_pages_speak_both_languages_and_keep_a_picked_one() {
    let app = spawn_app(Backend::Sqlite).await;

    // Picked against the browser: the redirect and every link carry it.
    let picked = post(&app, "name=Anna&phone=89991234567&lang=en", None).await;
    assert_eq!(picked.status(), 303);
    let location = picked.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(location.ends_with("?lang=en"), "{location}");
    let (status, html) = page(&app, &location, None).await;
    assert_eq!(status, 200);
    assert_lang(&html, "en");
    assert!(html.contains("<h1>Your order is accepted</h1>"), "{html}");
    assert!(
        html.contains("href=\"/?lang=en\""),
        "place another order, in English"
    );
    assert!(!html.contains("89991234567"), "the phone is masked");
    assert!(!html.contains("http-equiv=\"refresh\""), "a final answer");

    // The browser's own language: no query needed, the Location is the plain order page.
    let negotiated = post(
        &app,
        "name=Anna&phone=89991234568&lang=en",
        Some(ENGLISH_BROWSER),
    )
    .await;
    let id = order_id_from_location(&negotiated);
    let (_, html) = page(&app, &format!("/orders/{id}"), Some(ENGLISH_BROWSER)).await;
    assert!(html.contains("<h1>Your order is accepted</h1>"), "{html}");
    let (_, html) = page(&app, &format!("/orders/{id}"), None).await;
    assert_lang(&html, "ru");
    assert!(html.contains("<h1>Ваш заказ принят</h1>"), "{html}");
    assert!(
        html.contains(&format!("href=\"/orders/{id}?lang=en\"")),
        "{html}"
    );
    let number = html
        .split("<strong class=\"number\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("an order number");
    assert_eq!(number.len(), 8, "short: {number}");

    // Unknown orders and pages.
    for (path, accept, lang, heading) in [
        (
            format!("/orders/{}", Uuid::now_v7()),
            None,
            "ru",
            "Заказ не найден",
        ),
        (
            format!("/orders/{}", Uuid::now_v7()),
            Some(ENGLISH_BROWSER),
            "en",
            "Order not found",
        ),
        (
            "/orders/not-an-id?lang=en".to_owned(),
            None,
            "en",
            "Order not found",
        ),
        (
            "/nothing-here".to_owned(),
            None,
            "ru",
            "Страница не найдена",
        ),
        (
            "/nothing-here".to_owned(),
            Some(ENGLISH_BROWSER),
            "en",
            "Page not found",
        ),
    ] {
        let (status, html) = page(&app, &path, accept).await;
        assert_eq!(status, 404, "{path}");
        assert_lang(&html, lang);
        assert!(
            html.contains(&format!("<h1>{heading}</h1>")),
            "{path}: {html}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn being_saved_refreshes_itself_in_both_languages() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.reply_timeout = Duration::from_millis(300);
    })
    .await;
    // No worker: the order is durable in the stream, nobody commits it.
    let response = post(&app, "name=Anna&phone=89991234567", None).await;
    let id = order_id_from_location(&response);
    for (accept, lang, heading) in [
        (None, "ru", "Заказ сохраняется"),
        (Some(ENGLISH_BROWSER), "en", "Your order is being saved"),
    ] {
        let (status, html) = page(&app, &format!("/orders/{id}"), accept).await;
        assert_eq!(status, 200);
        assert_lang(&html, lang);
        assert!(html.contains(&format!("<h1>{heading}</h1>")), "{html}");
        assert!(
            html.contains("<meta http-equiv=\"refresh\" content=\"2\">"),
            "{html}"
        );
        // The shopper can stop the reloading (WCAG 2.2.1) and check by hand instead.
        let stop = format!("/orders/{id}?refresh=off");
        assert!(html.contains(&format!("href=\"{stop}\"")), "{html}");
        let (status, stopped) = page(&app, &stop, accept).await;
        assert_eq!(status, 200);
        assert!(
            stopped.contains(&format!("<h1>{heading}</h1>")),
            "{stopped}"
        );
        assert!(!stopped.contains("http-equiv"), "no reload: {stopped}");
        assert!(stopped.contains(&format!("href=\"{stop}\"")), "check again");
    }
    let (_, picked) = page(&app, &format!("/orders/{id}?lang=en"), None).await;
    assert!(
        picked.contains(&format!("href=\"/orders/{id}?lang=en&#38;refresh=off\"")),
        "the stop link keeps a picked language: {picked}"
    );
    app.stop().await;
}

#[tokio::test]
async fn busy_answers_say_when_to_come_back_and_keep_the_input() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_in_flight = 1;
        config.http.reply_timeout = Duration::from_secs(3);
        config.http.retry_after = Duration::from_secs(7);
    })
    .await;
    // No worker: the one slot is held by an order waiting for its confirmation.
    let held = post(&app, "name=Anna&phone=89990000001", None);
    let busy = async {
        let slot_taken = eventually(Duration::from_secs(10), || async {
            app.queued().await == 1
        });
        assert!(slot_taken.await, "the held order reached the queue");
        join_all([
            post(&app, "name=%3Cb%3EMary&phone=89990000002&lang=en", None),
            post(&app, "name=Мария&phone=89990000003", None),
        ])
        .await
    };
    let (held, busy) = tokio::join!(held, busy);
    assert_eq!(held.status(), 303);
    for (response, lang, notice, name) in busy
        .into_iter()
        .zip([
            ("en", "in 7 seconds", "&#60;b&#62;Mary"),
            ("ru", "через 7 секунд", "Мария"),
        ])
        .map(|(response, (lang, notice, name))| (response, lang, notice, name))
    {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "7");
        let html = response.text().await.expect("page");
        assert_lang(&html, lang);
        assert!(html.contains(notice), "{html}");
        assert!(
            html.contains(&format!("value=\"{name}\"")),
            "input kept: {html}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn with_the_queue_down_the_form_says_when_to_try_again_in_either_language() {
    let mut app = spawn_app(Backend::Sqlite).await;
    app.nats.kill();
    for (body, accept, notice) in [
        ("name=Anna&phone=89991234567", None, "через 2 секунды"),
        (
            "name=Anna&phone=89991234567",
            Some(ENGLISH_BROWSER),
            "in 2 seconds",
        ),
    ] {
        let response = post(&app, body, accept).await;
        assert_eq!(response.status(), 503);
        let html = response.text().await.expect("page");
        assert!(html.contains(notice), "{html}");
        assert!(html.contains("value=\"89991234567\""), "{html}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_page_is_light_and_its_static_files_are_hashed_and_kept_for_a_year() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.get("/").await;
    assert_eq!(
        response.headers()["cache-control"],
        "private, no-cache",
        "Back shows the same form (same key); a new visit gets a new one"
    );
    let html = response.text().await.expect("page");
    let linked: Vec<&str> = html
        .split("href=\"/static/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(linked.len(), 2, "stylesheet and icon: {html}");
    let mut total = html.len();
    for name in linked {
        let (stem, rest) = name.split_once('.').expect("name.hash.ext");
        let (hash, extension) = rest.split_once('.').expect("name.hash.ext");
        assert_eq!(hash.len(), 16, "{name}");
        let response = app.get(&format!("/static/{name}")).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        total += response.bytes().await.expect("file").len();
        let plain = app.get(&format!("/static/{stem}.{extension}")).await;
        assert_eq!(plain.status(), 200);
        assert_eq!(plain.headers()["cache-control"], "public, no-cache");
        let wrong = app
            .get(&format!("/static/{stem}.0000000000000000.{extension}"))
            .await;
        assert_eq!(wrong.status(), 404);
    }
    assert!(total < 30 * 1024, "the whole page is {total} bytes");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no other hosts"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    let order = post(&app, "name=Anna&phone=89991234567", None).await;
    let invalid = post(&app, "name=&phone=1", None).await;
    let location = order.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let mut answers = vec![
        ("POST 303".to_owned(), order),
        ("POST 422".to_owned(), invalid),
    ];
    for path in [
        "/",
        &location,
        "/orders/x",
        "/nothing",
        "/healthz",
        "/static/style.css",
    ] {
        answers.push((path.to_owned(), app.get(path).await));
    }
    for (path, response) in &answers {
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().expect("ASCII");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            !csp.contains("script-src") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(headers.contains_key("referrer-policy"), "{path}");
    }
    app.stop().await;
}
