//! The shopper's page in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver), with JavaScript switched off, against the real front and worker processes.
//! Every page it reaches must fit 320 px and pass axe-core's WCAG 2.2 A/AA rules, and is kept
//! as a screenshot in `target/browser-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use finalprice_testkit::{Backend, NatsServer, Service, TestDb, free_port};
use hyper_util::client::legacy::connect::HttpConnector;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;

/// Width of a small phone: the page must be usable at 320 CSS pixels.
const PHONE_WIDTH: u32 = 320;

#[tokio::test]
async fn a_shopper_orders_in_russian_and_in_english_with_javascript_off() {
    let mut stack = Stack::new().await;
    let browser = Browser::start(&stack.url("")).await;
    let c = &browser.client;

    // Russian, the default: an invalid phone comes back marked, with the input kept.
    c.goto(&stack.url("/")).await.expect("open the form");
    assert_eq!(lang(c).await, "ru");
    assert_eq!(heading(c).await, "Оформить заказ");
    browser.shot("ru-1-form").await;
    fill(c, "Анна Петрова", "12-34").await;
    submit(c).await;
    let phone = c.find(Locator::Id("phone")).await.expect("phone field");
    assert_eq!(
        phone.attr("aria-invalid").await.ok().flatten().as_deref(),
        Some("true")
    );
    let described = phone
        .attr("aria-describedby")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    assert!(
        described.split(' ').any(|id| id == "phone-error"),
        "{described}"
    );
    let error = text(c, "#phone-error").await;
    assert!(error.contains("Номер телефона"), "{error}");
    assert_eq!(value(c, "name").await, "Анна Петрова", "the name is kept");
    assert_eq!(
        value(c, "phone").await,
        "12-34",
        "the phone as typed is kept"
    );
    let name = c.find(Locator::Id("name")).await.expect("name field");
    assert_eq!(
        name.attr("aria-invalid").await.ok().flatten(),
        None,
        "the name was fine"
    );
    let focused = c.active_element().await.expect("focus");
    assert_eq!(
        focused.attr("id").await.ok().flatten().as_deref(),
        Some("phone"),
        "focus on the field to fix"
    );
    browser.shot("ru-2-invalid-phone").await;

    // Corrected: the accepted page, with a short order number.
    set(c, "phone", "8 999 123-45-67").await;
    submit(c).await;
    let ru_order = wait_for_heading(c, "Ваш заказ принят").await;
    let number = text(c, ".number").await;
    assert_eq!(number.len(), 8, "a short order number: {number}");
    assert!(
        ru_order.ends_with(&number.to_lowercase()),
        "{ru_order} / {number}"
    );
    assert!(stack.committed(&ru_order).await, "accepted means a row");
    assert!(
        text(c, "main").await.contains("*"),
        "the phone is shown masked"
    );
    browser.shot("ru-3-accepted").await;

    // Reloading the accepted page is a GET: no second order.
    c.refresh().await.expect("reload");
    assert_eq!(heading(c).await, "Ваш заказ принят");
    assert_eq!(stack.rows().await, 1);

    // English, picked by the link on this page; the choice then sticks to every link, the 422
    // and the redirect, although the browser asks for Russian.
    find(c, "nav a[hreflang='en']")
        .await
        .click()
        .await
        .expect("switch to English");
    assert_eq!(
        wait_for_heading(c, "Your order is accepted").await,
        format!("{ru_order}?lang=en")
    );
    find(c, "main a")
        .await
        .click()
        .await
        .expect("place another order");
    assert_eq!(lang(c).await, "en");
    assert_eq!(heading(c).await, "Place an order");
    browser.shot("en-1-form").await;
    fill(c, "Anna Smith", "abc").await;
    submit(c).await;
    assert_eq!(lang(c).await, "en", "the 422 stays in English");
    let error = text(c, "#phone-error").await;
    assert!(error.contains("phone number"), "{error}");
    assert_eq!(value(c, "name").await, "Anna Smith");
    browser.shot("en-2-invalid-phone").await;
    set(c, "phone", "+44 20 7946 0958").await;
    submit(c).await;
    let en_order = wait_for_heading(c, "Your order is accepted").await;
    assert_eq!(lang(c).await, "en");
    assert!(stack.committed(&en_order).await);
    browser.shot("en-3-accepted").await;

    // Back to the form and the same form sent again: the same order, stored once.
    c.goto(&stack.url("/")).await.expect("form");
    fill(c, "Ольга", "+7 912 000-00-01").await;
    submit(c).await;
    let first = wait_for_heading(c, "Ваш заказ принят").await;
    c.back().await.expect("back to the form");
    if value(c, "name").await.is_empty() {
        // Browsers may or may not restore typed values; the hidden key is what must survive.
        fill(c, "Ольга", "+7 912 000-00-01").await;
    }
    submit(c).await;
    let again = wait_for_heading(c, "Ваш заказ принят").await;
    assert_eq!(first, again, "Back and resubmit names the same order");
    assert_eq!(
        stack.rows().await,
        3,
        "two languages and one resubmitted order"
    );

    // An order that is not there.
    c.goto(&stack.url("/orders/0195f000-0000-7000-8000-000000000000"))
        .await
        .expect("unknown order");
    assert_eq!(heading(c).await, "Заказ не найден");
    browser.shot("ru-4-not-found").await;
    c.goto(&stack.url("/orders/0195f000-0000-7000-8000-000000000000?lang=en"))
        .await
        .expect("unknown order");
    assert_eq!(heading(c).await, "Order not found");
    browser.shot("en-4-not-found").await;

    // No worker: "being saved", which refreshes itself until a worker commits the order.
    stack.worker = None;
    for (lang, name, phone, saving, accepted) in [
        (
            "ru",
            "Пётр",
            "+7 912 000-00-02",
            "Заказ сохраняется",
            "Ваш заказ принят",
        ),
        (
            "en",
            "Peter",
            "+7 912 000-00-03",
            "Your order is being saved",
            "Your order is accepted",
        ),
    ] {
        c.goto(&stack.url(&format!("/?lang={lang}")))
            .await
            .expect("form");
        fill(c, name, phone).await;
        submit(c).await;
        let order = wait_for_heading(c, saving).await;
        assert!(
            !stack.committed(&order).await,
            "not a row yet, and not called accepted"
        );
        browser.shot(&format!("{lang}-5-being-saved")).await;
        stack.worker = Some(stack.start_worker().await);
        assert_eq!(
            wait_for_heading(c, accepted).await,
            order,
            "the page refreshed itself"
        );
        stack.worker = None;
    }

    // NATS down: busy, try again in N seconds, the input kept; the same form later is one order.
    stack.worker = Some(stack.start_worker().await);
    for (lang, name, phone, retry, accepted) in [
        (
            "ru",
            "Мария",
            "+7 912 000-00-04",
            "через 5 секунд",
            "Ваш заказ принят",
        ),
        (
            "en",
            "Mary",
            "+7 912 000-00-05",
            "in 5 seconds",
            "Your order is accepted",
        ),
    ] {
        c.goto(&stack.url(&format!("/?lang={lang}")))
            .await
            .expect("form");
        stack.nats.kill();
        fill(c, name, phone).await;
        submit(c).await;
        let notice = text(c, ".notice").await;
        assert!(notice.contains(retry), "{notice}");
        assert_eq!(value(c, "name").await, name, "input kept");
        assert_eq!(value(c, "phone").await, phone, "input kept");
        browser.shot(&format!("{lang}-6-busy")).await;
        stack.nats.restart().expect("nats back");
        let rows = stack.rows().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            submit(c).await;
            if heading(c).await == accepted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never accepted after NATS came back"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let url = c.current_url().await.expect("url").to_string();
        assert!(stack.committed(&url).await);
        assert_eq!(
            stack.rows().await,
            rows + 1,
            "every retry was the same order"
        );
    }

    // An order the database can never take: "not saved, try again", input kept.
    stack
        .db
        .execute_unprepared("ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (name <> 'Яд')")
        .await
        .expect("constraint");
    for (lang, message) in [("ru", "не сохранён"), ("en", "not saved")] {
        c.goto(&stack.url(&format!("/?lang={lang}")))
            .await
            .expect("form");
        fill(c, "Яд", "+7 912 000-00-06").await;
        submit(c).await;
        let notice = text(c, ".notice").await;
        assert!(notice.contains(message), "{notice}");
        assert_eq!(value(c, "name").await, "Яд");
        browser.shot(&format!("{lang}-7-not-saved")).await;
    }
    // Once the cause is fixed, "Order" again is a new order (the rejected id is spent).
    stack
        .db
        .execute_unprepared("ALTER TABLE orders DROP CONSTRAINT no_poison")
        .await
        .expect("constraint dropped");
    submit(c).await;
    let order = wait_for_heading(c, "Your order is accepted").await;
    assert!(stack.committed(&order).await);

    browser.close().await;
}

/// nats-server, PostgreSQL, a worker and a front, as separate processes.
struct Stack {
    nats: NatsServer,
    _test_db: TestDb,
    db: DatabaseConnection,
    env: Vec<(&'static str, String)>,
    address: String,
    worker: Option<Service>,
    _front: Service,
}

impl Stack {
    async fn new() -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let test_db = TestDb::new(Backend::Postgres).await.expect("database");
        let db = test_db.connect().await.expect("connect");
        let port = free_port().expect("port");
        let env = vec![
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", test_db.url().to_owned()),
            ("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}")),
            ("FINALPRICE_HTTP__REPLY_TIMEOUT", "2s".into()),
            ("FINALPRICE_HTTP__RETRY_AFTER", "5s".into()),
            ("FINALPRICE_NATS__REQUEST_TIMEOUT", "1s".into()),
            ("FINALPRICE_WORKER__RETRY_DELAY", "50ms".into()),
            ("FINALPRICE_WORKER__DEAD_LETTER_AFTER", "2".into()),
        ];
        let mut stack = Self {
            nats,
            _test_db: test_db,
            db,
            address: format!("http://127.0.0.1:{port}"),
            worker: None,
            _front: Service::start("finalprice-front", &env).expect("front"),
            env,
        };
        stack.worker = Some(stack.start_worker().await);
        stack.wait_ready().await;
        stack
    }

    async fn start_worker(&self) -> Service {
        let worker = Service::start("finalprice-worker", &self.env).expect("worker");
        worker
            .wait_for_log("worker pulling orders", Duration::from_secs(20))
            .await
            .expect("worker ready");
        worker
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(answer) = http.get(self.url("/readyz")).send().await
                && answer.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("front not ready:\n{}", self._front.log());
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn rows(&self) -> u64 {
        finalprice_testkit::load::row_count(&self.db).await
    }

    /// Whether the order whose page is at `url` is a row.
    async fn committed(&self, url: &str) -> bool {
        let id = order_id(url);
        let sql = format!("SELECT 1 AS one FROM orders WHERE id = '{id}'");
        self.db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql,
            ))
            .await
            .expect("query")
            .is_some()
    }
}

/// The order id in an order page's URL.
fn order_id(url: &str) -> uuid::Uuid {
    let path = url.split('?').next().unwrap_or_default();
    let id = path
        .rsplit('/')
        .next()
        .unwrap_or_else(|| panic!("not an order page: {url}"));
    uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("not an order page: {url}"))
}

/// Headless Chromium under chromedriver, JavaScript off, phone-sized; and beside it a second
/// session with JavaScript on, where each page the shopper saw is checked for accessibility.
struct Browser {
    client: Client,
    /// axe-core needs timers, which do not run with JavaScript off: each page is copied here
    /// (same origin, so the same stylesheet) and checked.
    checker: Client,
    /// axe-core's source, run through the driver (the pages themselves run no script).
    axe: String,
    driver: Child,
    shots: PathBuf,
    _profiles: [tempfile::TempDir; 2],
}

impl Browser {
    /// `origin`: the front, whose 404 page the checker starts from.
    async fn start(origin: &str) -> Self {
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port().expect("port");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {chromedriver} ({error}): the browser test needs Debian's \
                     chromium and chromium-driver packages (`just test` installs them)"
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        let profiles = [
            tempfile::tempdir().expect("profile dir"),
            tempfile::tempdir().expect("profile dir"),
        ];
        let client = session(&url, &profiles[0], false).await;
        let checker = session(&url, &profiles[1], true).await;
        checker
            .goto(&format!("{origin}/nothing-here"))
            .await
            .expect("checker on the front's origin");
        let axe_path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("a11y/node_modules/axe-core/axe.min.js");
        let axe = std::fs::read_to_string(&axe_path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; install it with `npm ci --prefix e2e/a11y` (just test does)",
                axe_path.display()
            )
        });
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot folder");
        Self {
            client,
            checker,
            axe,
            driver,
            shots,
            _profiles: profiles,
        }
    }

    /// Keeps what the shopper sees now as `<name>.png`.
    /// Also checks the page fits the phone's width: nothing to scroll sideways. (The script
    /// is the driver's, run through DevTools; the page itself runs none.)
    async fn shot(&self, name: &str) {
        let width = self
            .client
            .execute("return document.documentElement.scrollWidth", vec![])
            .await
            .expect("measure the page");
        assert_eq!(
            width,
            json!(PHONE_WIDTH),
            "{name} scrolls sideways at {PHONE_WIDTH} px"
        );
        let violations = self.accessibility_violations().await;
        assert!(
            violations.is_empty(),
            "{name} fails WCAG checks: {violations:#?}"
        );
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// axe-core's WCAG 2.2 A and AA rules (labels, contrast, names, ids, language, landmarks…)
    /// on the page as it is now; each violation as "rule: how many elements — what it asks".
    async fn accessibility_violations(&self) -> Vec<String> {
        let html = self.client.source().await.expect("page source");
        // Without its self-refresh, or the copy would navigate away mid-check.
        let html = html.replace("http-equiv=\"refresh\"", "data-refresh=\"\"");
        self.checker
            .execute_async(
                "const [html, done] = arguments;
                 document.open(); document.write(html); document.close();
                 const ready = () => document.readyState === 'complete'
                     && [...document.styleSheets].every(sheet => sheet.cssRules.length > 0);
                 const wait = () => ready() ? done(true) : setTimeout(wait, 20);
                 wait();",
                vec![json!(html)],
            )
            .await
            .expect("the page copied into the checker, stylesheet loaded");
        self.checker
            .execute(&self.axe, vec![])
            .await
            .expect("axe-core loads");
        let result = self
            .checker
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { runOnly: { type: 'tag', values:
                     ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] } })
                   .then(r => done(r.violations.map(v =>
                       v.id + ': ' + v.nodes.length + ' — ' + v.help)))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            )
            .await
            .expect("axe-core runs");
        serde_json::from_value(result).expect("a list of violations")
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.checker.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A WebDriver session: a Russian, phone-sized Chromium, JavaScript on or off.
async fn session(driver: &str, profile: &tempfile::TempDir, javascript: bool) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
            ],
            // A phone's viewport: headless windows are never narrower than 500 pixels.
            "mobileEmulation": {
                // Without touch: chromedriver's clicks under touch emulation stall ~30 s each.
                "deviceMetrics": { "width": PHONE_WIDTH, "height": 720, "pixelRatio": 1.0, "touch": false },
            },
            "prefs": {
                // A Russian browser, so the default page is what Russian shoppers see.
                "intl.accept_languages": "ru-RU,ru",
                // The shopper's pages must work without JavaScript: off (2) for the shopper.
                "profile.managed_default_content_settings.javascript": if javascript { 1 } else { 2 },
            },
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(driver)
            .await
        {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no WebDriver session: {error}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// The element, waiting a little for a page that is still loading.
async fn find(c: &Client, css: &str) -> Element {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.find(Locator::Css(css)).await {
            Ok(element) => return element,
            Err(error) if Instant::now() > deadline => {
                panic!("{css}: {error}\n{}", c.source().await.unwrap_or_default())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.expect("text")
}

async fn heading(c: &Client) -> String {
    text(c, "h1").await
}

async fn lang(c: &Client) -> String {
    find(c, "html")
        .await
        .attr("lang")
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn value(c: &Client, id: &str) -> String {
    find(c, &format!("#{id}"))
        .await
        .prop("value")
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Replaces a field's text, as a shopper selecting it and typing anew.
async fn set(c: &Client, id: &str, text: &str) {
    let field = find(c, &format!("#{id}")).await;
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

async fn fill(c: &Client, name: &str, phone: &str) {
    set(c, "name", name).await;
    set(c, "phone", phone).await;
}

/// Presses the button and waits until the answer replaced the page (the old page's root goes
/// stale), whatever the answer's URL: a 422 comes back on the same one.
async fn submit(c: &Client) {
    let old = find(c, "html").await;
    find(c, "button[type=submit]")
        .await
        .click()
        .await
        .expect("press the button");
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.attr("lang").await.is_ok() {
        assert!(Instant::now() < deadline, "the form was not answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (through the page's own refreshes) until the heading reads `expected`; the URL then.
async fn wait_for_heading(c: &Client, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(h1) = c.find(Locator::Css("h1")).await
            && h1.text().await.is_ok_and(|text| text == expected)
        {
            return c.current_url().await.expect("url").to_string();
        }
        assert!(
            Instant::now() < deadline,
            "never saw {expected:?}:\n{}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
