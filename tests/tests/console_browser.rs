//! `sluice console` in a real browser: headless Chromium (Debian's
//! `chromium`; missing, the test fails saying so) drives the console of a
//! `sluice dev` cluster over the DevTools protocol. The pages load; a
//! produced message whose key, value and header carry markup and script
//! shows up in the DOM as text, and none of its script ran; creating a
//! topic from the page (after its confirmation step) creates it in the
//! cluster, and deleting it needs its name typed again. Messages are found
//! by tag and a subscription says why about one; a topic's settings and
//! partition count, a group's offsets (after a dry-run plan) and a
//! subscription's backlog are changed from the pages and checked in the
//! cluster.
//!
//! With `SLUICE_CONSOLE_SCREENSHOTS=DIR` the test also saves PNGs of the
//! main pages there (`docs/console/` holds the committed ones); it always
//! takes them and checks they are PNGs.

use serde_json::json;
use sluice_client::{Admin, Record};
use sluice_tests::browser::Browser;
use sluice_tests::cluster::binary;
use sluice_tests::dev::DevProcess;
use sluice_tests::etcd::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOPIC: &str = "browsed";
const CREATED: &str = "made-in-browser";
const SUBSCRIPTION: &str = "billing-sub";
const GROUP: &str = "console-group";
/// The value's markup would set `window.__pwned` if it ever ran.
const VALUE: &str = "console-marker-7f3a <script>window.__pwned=1</script>\
                     <img src=x onerror=\"window.__pwned=2\">";
const KEY: &str = "<b onmouseover=\"window.__pwned=3\">key-9</b>";
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// `sluice console` as a child process; killed on drop.
struct ConsoleProcess(Child);

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_console(bootstrap: &str, port: u16) -> ConsoleProcess {
    let child = Command::new(binary("sluice"))
        .args(["--bootstrap", bootstrap, "console", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sluice console");
    let console = ConsoleProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sluice console did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    console
}

async fn produce(config: sluice_client::ClientConfig, record: Record) {
    let producer = sluice_client::Producer::new(sluice_client::ProducerConfig {
        client: config,
        ..Default::default()
    })
    .await
    .expect("producer");
    producer
        .enqueue(record)
        .await
        .expect("enqueue")
        .await
        .expect("acknowledged");
    producer.close().await.expect("close producer");
}

async fn produce_marked_message(admin_config: sluice_client::ClientConfig) {
    let admin = Admin::connect(admin_config.clone()).await.expect("admin");
    admin
        .create_topic(
            TOPIC,
            sluice_proto::v1::TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .await
        .expect("create topic");
    admin
        .wait_until_writable(TOPIC, Duration::from_secs(20))
        .await
        .expect("writable");
    let producer = sluice_client::Producer::new(sluice_client::ProducerConfig {
        client: admin_config,
        ..Default::default()
    })
    .await
    .expect("producer");
    let record = Record::new(TOPIC, VALUE)
        .with_key(KEY)
        .with_header("trace", &b"<i>header-5</i>"[..])
        .with_tag("vip");
    producer
        .enqueue(record)
        .await
        .expect("enqueue")
        .await
        .expect("acknowledged");
    producer.close().await.expect("close producer");
    admin
        .create_subscription(sluice_proto::v1::Subscription {
            topic: TOPIC.into(),
            name: SUBSCRIPTION.into(),
            r#type: sluice_proto::v1::SubscriptionType::Shared as i32,
            initial_position: sluice_proto::v1::InitialPosition::Earliest as i32,
            ..Default::default()
        })
        .await
        .expect("create subscription");
}

async fn save_screenshot(browser: &mut Browser, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
    if let Some(directory) = std::env::var_os("SLUICE_CONSOLE_SCREENSHOTS") {
        let path = std::path::Path::new(&directory).join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
    }
}

const BODY_TEXT: &str = "document.body.innerText.slice(0, 2000)";

async fn open(browser: &mut Browser, url: &str, ready: &str) {
    browser.navigate(url).await.expect("navigate");
    browser
        .wait_for(ready, BODY_TEXT, PAGE_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("{url}: {error:#}"));
}

/// True once the consumers page shows the group's lag of 1 record and the
/// subscription's backlog of 2.
fn lag_shown() -> String {
    format!(
        "(() => {{ const rows = Array.from(document.querySelectorAll('main table tbody tr'))\
           .map((row) => Array.from(row.children).map((cell) => cell.textContent)); \
           return rows.some((r) => r[0] === {group} && r[3] === '1') \
             && rows.some((r) => r[1] === {subscription} && r[3] === '2'); }})()",
        group = json!(GROUP),
        subscription = json!(SUBSCRIPTION)
    )
}

fn text_contains(selector: &str, text: &str) -> String {
    format!(
        "(document.querySelector({}) || {{}}).textContent?.includes({}) === true",
        json!(selector),
        json!(text)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    // Fails (never skips) when the browser is missing.
    let chromium = sluice_tests::browser::chromium_binary();
    assert!(chromium.is_ok(), "{:#}", chromium.unwrap_err());
    let root = tempfile::tempdir().expect("temp dir");
    let mut dev = DevProcess::spawn(
        &root.path().join("data"),
        DevProcess::free_ports(),
        "warn",
        Stdio::null(),
        Stdio::null(),
    );
    dev.wait_ready();
    produce_marked_message(dev.client_config()).await;
    // A group that consumed the marked message, then one more record: lag 1
    // for the group, a backlog of 2 for the subscription.
    dev.ok(&[
        "consume",
        TOPIC,
        "--group",
        GROUP,
        "--from-beginning",
        "--max-messages",
        "1",
    ]);
    produce(
        dev.client_config(),
        Record::new(TOPIC, "second").with_partition(0),
    )
    .await;
    let port = free_port();
    let _console = start_console(dev.bootstrap(), port);
    let base = format!("http://127.0.0.1:{port}/");
    let profile = root.path().join("chromium");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let mut browser = Browser::start(&profile).await.expect("start chromium");
    pages_load(&mut browser, &base).await;
    message_shown_as_text(&mut browser, &base).await;
    by_time(&mut browser, &base).await;
    refused_requests(port).await;
    create_and_delete_from_the_page(&mut browser, &base, dev.client_config()).await;
    live_refresh(&mut browser, &base, dev.client_config()).await;
    find_and_why(&mut browser, &base).await;
    alter_from_the_page(&mut browser, &base, dev.client_config()).await;
    reset_group_from_the_page(&mut browser, &base, dev.client_config()).await;
}

/// Cluster, topics, a topic, consumers (with lag): each page loads.
async fn pages_load(browser: &mut Browser, base: &str) {
    open(
        browser,
        &format!("{base}#cluster"),
        &text_contains("main", "dev-broker"),
    )
    .await;
    assert!(
        browser
            .evaluate(&text_contains("#cluster-cards", "dev-nameserver"))
            .await
            .unwrap()
            == json!(true),
        "the assigner is shown"
    );
    save_screenshot(browser, "cluster").await;

    open(
        browser,
        &format!("{base}#topics"),
        &text_contains("#topic-list", TOPIC),
    )
    .await;
    save_screenshot(browser, "topics").await;

    open(
        browser,
        &format!("{base}#topic/{TOPIC}"),
        &text_contains("h2", &format!("Topic {TOPIC}")),
    )
    .await;
    assert_eq!(
        browser
            .evaluate(&text_contains("main", "SEGMENT_STATE_OPEN"))
            .await
            .unwrap(),
        json!(true),
        "partitions and segments are shown"
    );
    save_screenshot(browser, "topic").await;
    open(browser, &format!("{base}#consumers"), &lag_shown()).await;
    save_screenshot(browser, "consumers").await;
}

/// The marked message in the browser: its markup shown as text, none run.
async fn message_shown_as_text(browser: &mut Browser, base: &str) {
    let browse = format!("{base}#browse?topic={TOPIC}&partition=0&offset=0");
    open(
        browser,
        &browse,
        &text_contains("#browse-results", "console-marker-7f3a"),
    )
    .await;
    save_screenshot(browser, "messages").await;
    for shown in [VALUE, KEY, "<i>header-5</i>", "vip"] {
        assert_eq!(
            browser
                .evaluate(&text_contains("#browse-results", shown))
                .await
                .unwrap(),
            json!(true),
            "{shown} is shown as text"
        );
    }
    let injected = browser
        .evaluate("[window.__pwned, document.querySelectorAll('#view script, #view img, #view b[onmouseover]').length]")
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!([null, 0]),
        "no markup of the message became elements, none of it ran"
    );
}

/// A record produced while a topic's page is open shows up there without
/// a reload (the page polls).
async fn live_refresh(browser: &mut Browser, base: &str, config: sluice_client::ClientConfig) {
    open(browser, &format!("{base}#topic/{TOPIC}"), &watermark_is(2)).await;
    browser
        .evaluate("window.__notReloaded = true; true")
        .await
        .unwrap();
    produce(config, Record::new(TOPIC, "third").with_partition(0)).await;
    browser
        .wait_for(&watermark_is(3), BODY_TEXT, PAGE_TIMEOUT)
        .await
        .expect("the high watermark refreshes");
    assert_eq!(
        browser
            .evaluate("window.__notReloaded === true")
            .await
            .unwrap(),
        json!(true),
        "refreshed in place, not reloaded"
    );
}

/// True when partition 0's row on a topic page shows high watermark `n`.
fn watermark_is(n: u64) -> String {
    format!(
        "(() => {{ const row = document.querySelector('main table tbody tr'); \
           return row !== null && row.children[0].textContent === '0' \
             && row.children[5].textContent === '{n}'; }})()"
    )
}

async fn create_and_delete_from_the_page(
    browser: &mut Browser,
    base: &str,
    config: sluice_client::ClientConfig,
) {
    let admin = Admin::connect(config).await.expect("admin");
    open(
        browser,
        &format!("{base}#topics"),
        &text_contains("#topic-list", TOPIC),
    )
    .await;
    let ask = format!(
        "document.getElementById('create-name').value = {}; \
         document.getElementById('create-partitions').value = '2'; \
         document.getElementById('create-ask').click(); true",
        json!(CREATED)
    );
    browser.evaluate(&ask).await.unwrap();
    let question = text_contains("#create-question", CREATED);
    browser
        .wait_for(&question, BODY_TEXT, PAGE_TIMEOUT)
        .await
        .unwrap();
    assert!(
        admin.describe_topic(CREATED).await.is_err(),
        "nothing is created before the confirmation"
    );
    browser
        .evaluate("document.getElementById('create-confirm').click(); true")
        .await
        .unwrap();
    let created = text_contains("#create-message", &format!("created {CREATED}"));
    browser
        .wait_for(&created, BODY_TEXT, PAGE_TIMEOUT)
        .await
        .unwrap();
    let description = admin
        .describe_topic(CREATED)
        .await
        .expect("created in the cluster");
    assert_eq!(description.partitions.len(), 2);

    open(
        browser,
        &format!("{base}#topic/{CREATED}"),
        "document.getElementById('delete-topic') !== null",
    )
    .await;
    let typed = |name: &str| {
        format!(
            "(() => {{ const input = document.getElementById('delete-confirm'); input.value = {}; \
             input.dispatchEvent(new Event('input')); \
             return document.getElementById('delete-topic').disabled; }})()",
            json!(name)
        )
    };
    assert_eq!(
        browser.evaluate(&typed("made-in-browse")).await.unwrap(),
        json!(true),
        "a wrong name keeps it disabled"
    );
    assert_eq!(
        browser.evaluate(&typed(CREATED)).await.unwrap(),
        json!(false)
    );
    browser
        .evaluate("document.getElementById('delete-topic').click(); true")
        .await
        .unwrap();
    let deleted = text_contains("#delete-message", &format!("deleted {CREATED}"));
    browser
        .wait_for(&deleted, BODY_TEXT, PAGE_TIMEOUT)
        .await
        .unwrap();
    let deadline = Instant::now() + PAGE_TIMEOUT;
    while admin
        .list_topics(false)
        .await
        .expect("list")
        .iter()
        .any(|topic| topic.name == CREATED)
    {
        assert!(
            Instant::now() < deadline,
            "{CREATED} still listed after the delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser from a time: the start of time shows the message, an hour
/// ahead shows an empty page.
async fn by_time(browser: &mut Browser, base: &str) {
    let from_start = format!("{base}#browse?topic={TOPIC}&partition=0&time=0");
    open(
        browser,
        &from_start,
        &text_contains("#browse-results", "console-marker-7f3a"),
    )
    .await;
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 3_600_000;
    let ahead = format!("{base}#browse?topic={TOPIC}&partition=0&time={later}");
    open(
        browser,
        &ahead,
        &text_contains("#browse-results", "showing 2 to 2"),
    )
    .await;
    assert_eq!(
        browser
            .evaluate(&text_contains("#browse-results", "console-marker-7f3a"))
            .await
            .unwrap(),
        json!(false)
    );
}

/// The status line of a raw HTTP/1.1 request to the console.
async fn raw_status(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PAGE_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// What another web page (a form post, a rebound DNS name) could send is
/// refused, and the console goes on serving.
async fn refused_requests(port: u16) {
    let body = format!(r#"{{"name":"{CREATED}","partitions":1}}"#);
    let post = |host: &str, content_type: &str, origin: &str| {
        format!(
            "POST /api/actions/create-topic HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{origin}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let own = format!("127.0.0.1:{port}");
    let rebound = format!("attacker.example:{port}");
    for request in [
        post(&own, "text/plain", ""),
        post(&own, "application/x-www-form-urlencoded", ""),
        post(&rebound, "application/json", ""),
        post(
            &own,
            "application/json",
            "Origin: http://attacker.example\r\n",
        ),
    ] {
        let status = raw_status(port, &request).await;
        assert!(status.contains(" 403 "), "{status} for {request}");
    }
    let rebound_read =
        format!("GET /api/cluster HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n");
    assert!(raw_status(port, &rebound_read).await.contains(" 403 "));
    let own_read = format!("GET /api/cluster HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n");
    assert!(
        raw_status(port, &own_read).await.contains(" 200 "),
        "still serving"
    );
}

/// Sets the `value` of the input or select with `id` (and fires `input`).
fn set_value(id: &str, value: &str) -> String {
    format!(
        "(() => {{ const input = document.getElementById({}); input.value = {}; \
           input.dispatchEvent(new Event('input')); return true; }})()",
        json!(id),
        json!(value)
    )
}

/// Clicks the element with `id`, then waits for `selector` to hold `text`.
async fn click_until(browser: &mut Browser, id: &str, selector: &str, text: &str) {
    let click = format!("document.getElementById({}).click(); true", json!(id));
    browser.evaluate(&click).await.expect("click");
    browser
        .wait_for(&text_contains(selector, text), BODY_TEXT, PAGE_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("after clicking {id}: {error:#}"));
}

/// Asks and confirms the action whose elements start with `id`, then
/// waits for its message to say `done`.
async fn ask_and_confirm(browser: &mut Browser, id: &str, question: &str, done: &str) {
    click_until(
        browser,
        &format!("{id}-ask"),
        &format!("#{id}-question"),
        question,
    )
    .await;
    click_until(
        browser,
        &format!("{id}-confirm"),
        &format!("#{id}-message"),
        done,
    )
    .await;
}

/// Finding by tag lists the marked message with its partition; `why` for
/// the subscription answers what it did with offset 0.
async fn find_and_why(browser: &mut Browser, base: &str) {
    let find = format!("{base}#browse?topic={TOPIC}&tag=vip");
    open(
        browser,
        &find,
        &text_contains("#find-summary", "1 message(s) with tag"),
    )
    .await;
    assert_eq!(
        browser
            .evaluate(&text_contains("#browse-results", "console-marker-7f3a"))
            .await
            .unwrap(),
        json!(true),
        "the tagged message is found"
    );
    let missing = format!("{base}#browse?topic={TOPIC}&tag=no-such-tag");
    open(
        browser,
        &missing,
        &text_contains("#find-summary", "0 message(s)"),
    )
    .await;
    let why =
        format!("{base}#browse?topic={TOPIC}&partition=0&offset=0&subscription={SUBSCRIPTION}");
    open(
        browser,
        &why,
        &text_contains("#browse-results", "console-marker-7f3a"),
    )
    .await;
    browser
        .evaluate("document.querySelector('#browse-results button.why').click(); true")
        .await
        .unwrap();
    let answered =
        "(() => { const answer = document.querySelector('#browse-results .why-answer'); \
                    return answer !== null && answer.querySelector('strong') !== null; })()";
    browser
        .wait_for(answered, BODY_TEXT, PAGE_TIMEOUT)
        .await
        .expect("why answers with a state");
    save_screenshot(browser, "why").await;
}

/// A topic's retention and partition count changed from its page, and a
/// subscription's backlog skipped: each seen in the cluster.
async fn alter_from_the_page(
    browser: &mut Browser,
    base: &str,
    config: sluice_client::ClientConfig,
) {
    let admin = Admin::connect(config).await.expect("admin");
    open(browser, &format!("{base}#topic/{TOPIC}"), &watermark_is(3)).await;
    browser
        .evaluate(&set_value("alter-retention_ms", "0"))
        .await
        .unwrap();
    click_until(browser, "alter-ask", "#alter-question", "retention_ms to 0").await;
    click_until(
        browser,
        "alter-confirm",
        "#alter-message",
        "must be a whole number from 1",
    )
    .await;
    browser
        .evaluate(&set_value("alter-retention_ms", "3600000"))
        .await
        .unwrap();
    ask_and_confirm(
        browser,
        "alter",
        "retention_ms to 3600000",
        "settings changed",
    )
    .await;
    let config = admin.describe_topic(TOPIC).await.expect("describe").topic;
    let retention = config
        .and_then(|topic| topic.config)
        .map(|config| config.retention_ms);
    assert_eq!(
        retention,
        Some(3_600_000),
        "the retention reached the cluster"
    );

    browser
        .evaluate(&set_value("grow-partitions", "2"))
        .await
        .unwrap();
    ask_and_confirm(browser, "grow", "order is not kept", "now 2 partitions").await;
    let partitions = admin
        .describe_topic(TOPIC)
        .await
        .expect("describe")
        .partitions
        .len();
    assert_eq!(partitions, 2, "the partition was added");

    browser
        .evaluate(&set_value("skip-name", SUBSCRIPTION))
        .await
        .unwrap();
    browser
        .evaluate(&set_value("skip-count", "1"))
        .await
        .unwrap();
    ask_and_confirm(browser, "skip", "Skip the next 1 message(s)", "skipped 1").await;
}

/// A group's offsets reset to the earliest: the dry run shows the plan and
/// commits nothing; applying it commits offset 0.
async fn reset_group_from_the_page(
    browser: &mut Browser,
    base: &str,
    config: sluice_client::ClientConfig,
) {
    let admin = Admin::connect(config).await.expect("admin");
    let committed = |description: sluice_proto::v1::DescribeGroupResponse| {
        description
            .lag
            .iter()
            .find(|lag| lag.topic == TOPIC && lag.partition == 0)
            .map(|lag| lag.committed_offset)
    };
    let before = committed(admin.describe_group(GROUP).await.expect("describe group"));
    assert_eq!(before, Some(1), "the group consumed one record");
    open(
        browser,
        &format!("{base}#consumers"),
        &lag_shown_for_group(),
    )
    .await;
    browser
        .evaluate(&set_value("reset-group", GROUP))
        .await
        .unwrap();
    browser
        .evaluate(&set_value("reset-topic", TOPIC))
        .await
        .unwrap();
    browser
        .evaluate(&set_value("reset-to", "earliest"))
        .await
        .unwrap();
    click_until(browser, "reset-preview", "#reset-plan", "Dry run").await;
    let after_preview = committed(admin.describe_group(GROUP).await.expect("describe group"));
    assert_eq!(after_preview, Some(1), "a dry run commits nothing");
    ask_and_confirm(browser, "reset", "Commit these offsets", "offsets reset").await;
    let after = committed(admin.describe_group(GROUP).await.expect("describe group"));
    assert_eq!(after, Some(0), "the reset reached the group");
}

/// True once the consumers page lists the group.
fn lag_shown_for_group() -> String {
    format!(
        "Array.from(document.querySelectorAll('main table tbody tr')).some((row) => \
           row.children[0].textContent === {})",
        json!(GROUP)
    )
}
