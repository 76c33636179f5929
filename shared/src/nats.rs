//! The NATS side both services share: connecting, and the stream and consumer definitions of
//! `nats/`, compiled in so that services and operators read one source.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, consumer, stream};
use async_nats::rustls;
use async_nats::rustls::pki_types::pem::PemObject as _;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::{Client, ConnectOptions, Subscriber};

use secrecy::ExposeSecret as _;

use crate::config::{NatsAuth, NatsConfig, NatsTlsConfig, redact_url_password};

/// `nats/stream-orders.json`: the work-queue stream of orders.
pub const ORDERS_STREAM_JSON: &str = include_str!("../../nats/stream-orders.json");
/// `nats/consumer-workers.json`: the pull consumer all workers share.
pub const WORKERS_CONSUMER_JSON: &str = include_str!("../../nats/consumer-workers.json");
/// `nats/stream-orders-dlq.json`: orders that can never be written.
pub const DEAD_LETTER_STREAM_JSON: &str = include_str!("../../nats/stream-orders-dlq.json");

/// How long a background answer (a ping's, a status request's) or a stopping service's
/// unsubscribe may wait to be handed to the NATS client. The client queues commands while
/// nats-server is away, and once that queue is full (2,048) a send waits until the server is
/// back; a stopping service must not wait with it.
pub const HAND_OVER_WITHIN: Duration = Duration::from_secs(2);

/// Unsubscribes at shutdown, giving up after [`HAND_OVER_WITHIN`]: a subscription the server
/// was not told about ends with the connection anyway.
pub async fn unsubscribe(subscriber: &mut Subscriber) {
    match tokio::time::timeout(HAND_OVER_WITHIN, subscriber.unsubscribe()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "unsubscribe failed"),
        Err(_) => tracing::debug!("unsubscribe not handed over in time; nats-server is away"),
    }
}

/// How often [`run_while_client_lives`] checks the client: a check is one PING.
const CLIENT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs `service`, stopping it through `stop` (as SIGTERM would) if the client's connection
/// task ends; then fails, so the process exits non-zero and its supervisor restarts it.
///
/// async-nats 0.51 lets that task end: it panics on some malformed messages (a header value
/// with a lone CR, nats-io/nats.rs#1612), which the server forwards as any client sent them.
/// After that every command of the client fails and it never reconnects, while its
/// connection state still says "connected". Only a new process gets a working client.
pub async fn run_while_client_lives(
    client: Client,
    stop: tokio_util::sync::CancellationToken,
    service: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let watch = async {
        loop {
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(CLIENT_CHECK_EVERY) => {}
            }
            // A disconnected client's flush waits or fails otherwise; only a command channel
            // with no task at its end fails to send.
            let flushed = tokio::select! {
                () = stop.cancelled() => return false,
                flushed = client.flush() => flushed,
            };
            if let Err(error) = flushed
                && error.kind() == async_nats::client::FlushErrorKind::SendError
            {
                tracing::error!("the NATS client's connection task has ended; stopping");
                stop.cancel();
                return true;
            }
        }
    };
    let service = async {
        let result = service.await;
        stop.cancel();
        result
    };
    let (result, client_died) = tokio::join!(service, watch);
    result?;
    if client_died {
        anyhow::bail!(
            "the NATS client stopped working (its connection task ended, likely on a malformed \
             message); exiting so that this process is restarted"
        );
    }
    Ok(())
}

/// Why the NATS side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A definition in `nats/` does not parse: a build of a broken checkout.
    #[error("definition {file} does not parse")]
    Definition {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read the NATS credentials")]
    Credentials(#[source] std::io::Error),
    /// A `nats.tls` setting that cannot be used, found before any connection is tried.
    #[error("{setting} ({}): {problem}", env_name(setting))]
    TlsSetting {
        setting: &'static str,
        problem: String,
    },
    /// The TLS handshake failed: waiting does not fix that, a setting does.
    #[error(
        "TLS with nats-server at {url} failed: {why}; check {check} ({})",
        env_name(check)
    )]
    TlsRefused {
        url: String,
        why: &'static str,
        check: &'static str,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot connect to nats-server at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot create or update stream {name}")]
    Stream {
        name: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot create or update consumer {name}")]
    Consumer {
        name: String,
        #[source]
        source: async_nats::Error,
    },
}

/// Parses one of the compiled-in `nats/` definitions (NATS API JSON).
fn definition<T: serde::de::DeserializeOwned>(
    file: &'static str,
    json: &str,
) -> Result<T, SetupError> {
    serde_json::from_str(json).map_err(|source| SetupError::Definition { file, source })
}

/// The `ORDERS` stream as `nats/stream-orders.json` defines it, with the configured overrides.
pub fn orders_stream_config(config: &NatsConfig) -> Result<stream::Config, SetupError> {
    let mut stream: stream::Config = definition("nats/stream-orders.json", ORDERS_STREAM_JSON)?;
    if config.stream_max_messages > 0 {
        stream.max_messages = config.stream_max_messages;
    }
    if config.stream_max_bytes > 0 {
        stream.max_bytes = config.stream_max_bytes;
    }
    if config.stream_replicas > 0 {
        stream.num_replicas = config.stream_replicas;
    }
    Ok(stream)
}

/// The `workers` consumer as `nats/consumer-workers.json` defines it, with the configured
/// overrides.
pub fn workers_consumer_config(config: &NatsConfig) -> Result<consumer::pull::Config, SetupError> {
    let mut consumer: consumer::pull::Config =
        definition("nats/consumer-workers.json", WORKERS_CONSUMER_JSON)?;
    if !config.ack_wait.is_zero() {
        consumer.ack_wait = config.ack_wait;
    }
    Ok(consumer)
}

/// The dead-letter stream as `nats/stream-orders-dlq.json` defines it (replicas as configured).
pub fn dead_letter_stream_config(config: &NatsConfig) -> Result<stream::Config, SetupError> {
    let mut stream: stream::Config =
        definition("nats/stream-orders-dlq.json", DEAD_LETTER_STREAM_JSON)?;
    if config.stream_replicas > 0 {
        stream.num_replicas = config.stream_replicas;
    }
    Ok(stream)
}

/// Connects with the settings both services share, to any of the servers `url` lists. The
/// connection is made in the background and retried forever, so a service starts (and answers
/// 503) while nats-server is down.
///
/// With TLS in play, one attempt is made first in the foreground: a certificate refused on
/// either side fails here, naming the setting to check. In the background async-nats reports
/// only "IO error" for it, again and again, and the service would answer 503 for ever.
pub async fn connect(config: &NatsConfig, default_name: &str) -> Result<Client, SetupError> {
    let servers = config.servers();
    if config.tls.is_set() || servers.iter().any(|server| server.starts_with("tls://")) {
        match reconnecting(options(config, default_name).await?)
            .connect(servers.clone())
            .await
        {
            Ok(client) => return Ok(client),
            Err(source) => match classify(redact_url_password(&config.url), source, config) {
                refused @ SetupError::TlsRefused { .. } => return Err(refused),
                other => {
                    let error = anyhow::Error::new(other);
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "nats-server not reachable yet; connecting in the background"
                    );
                }
            },
        }
    }
    reconnecting(options(config, default_name).await?)
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|source| SetupError::Connect {
            url: redact_url_password(&config.url),
            source,
        })
}

/// Reconnects for ever, quickly, and logs the connection's events.
fn reconnecting(options: ConnectOptions) -> ConnectOptions {
    options
        .max_reconnects(None)
        // Reconnect quickly: a restarted nats-server should be used again within a second, and
        // a dropped connection to a live one (a load balancer's reset) at once, since fronts
        // hold orders back while disconnected.
        .reconnect_delay_callback(|attempts| {
            let waits = (attempts as u64).saturating_sub(1);
            Duration::from_millis(waits.saturating_mul(100).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to nats-server"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from nats-server"),
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "slow consumer: a subscription dropped messages")
                }
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
}

/// Connects to `server` alone, once, without retrying: for looking at one node of a cluster.
pub async fn connect_to_one(config: &NatsConfig, server: &str) -> Result<Client, SetupError> {
    options(config, "finalprice-status")
        .await?
        .max_reconnects(Some(0))
        .connect(server)
        .await
        .map_err(|source| classify(redact_url_password(server), source, config))
}

/// What a failed first connection says: a certificate refused on either side becomes
/// [`SetupError::TlsRefused`], naming the setting to check; anything else (a server down, a
/// time-out) stays [`SetupError::Connect`].
///
/// async-nats 0.51 does not report a failed handshake as `ConnectErrorKind::Tls` (that kind is
/// for its own set-up of rustls) but as `Io`, with rustls' error inside the `io::Error`.
fn classify(url: String, source: async_nats::ConnectError, config: &NatsConfig) -> SetupError {
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    let (why, check) = match (source.kind(), tls_error(&source)) {
        (
            _,
            Some(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )),
        ) => (
            "the server's certificate does not name the host of the URL",
            "nats.url",
        ),
        (_, Some(rustls::Error::InvalidCertificate(_))) => (
            "this client does not trust the server's certificate",
            "nats.tls.ca_file",
        ),
        // What rustls makes of a plain server's answer to its hello: TLS was asked for by
        // this client, through `required` or a tls:// URL.
        (_, Some(rustls::Error::InvalidMessage(_))) => (
            "the server does not speak TLS",
            if config.tls.required {
                "nats.tls.required"
            } else {
                "nats.url"
            },
        ),
        (_, Some(rustls::Error::AlertReceived(_))) => (
            "the server refused this client's certificate, or its absence",
            "nats.tls.cert_file",
        ),
        (_, Some(_)) | (async_nats::ConnectErrorKind::Tls, None) => {
            ("TLS could not be set up", "nats.tls.ca_file")
        }
        _ => return SetupError::Connect { url, source },
    };
    SetupError::TlsRefused {
        url,
        why,
        check,
        source,
    }
}

/// The rustls error in `error`'s chain. An `io::Error` holding one does not give it as its
/// `source()`, so each link is also looked into.
fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        next = error.source();
    }
    None
}

/// The environment variable of `setting`: `nats.tls.ca_file` → `FINALPRICE_NATS__TLS__CA_FILE`;
/// `nats.url` → `NATS_URL`, the name the deployments use (the other works too).
fn env_name(setting: &str) -> String {
    if setting == "nats.url" {
        return "NATS_URL".to_owned();
    }
    format!("FINALPRICE_{}", setting.replace('.', "__").to_uppercase())
}

/// Credentials, name and time bounds from `config`.
async fn options(config: &NatsConfig, default_name: &str) -> Result<ConnectOptions, SetupError> {
    let name = if config.client_name.is_empty() {
        default_name
    } else {
        &config.client_name
    };
    // The one place a secret leaves its `SecretString`: async-nats keeps its own copy.
    let options = match &config.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => ConnectOptions::new()
            .user_and_password(user.clone(), password.expose_secret().to_owned()),
        NatsAuth::Token(token) => ConnectOptions::new().token(token.expose_secret().to_owned()),
        NatsAuth::NkeySeed(seed) => ConnectOptions::with_nkey(seed.expose_secret().to_owned()),
        NatsAuth::Creds(creds) => ConnectOptions::with_credentials(creds.expose_secret())
            .map_err(SetupError::Credentials)?,
    };
    Ok(tls_options(options, &config.tls)?
        .custom_inbox_prefix(inbox_prefix(config))
        .name(name)
        .ping_interval(config.ping_interval)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout)))
}

/// The `nats.tls` settings. Their files are read here, so that one that cannot be used stops
/// the service at start naming the setting: async-nats reads them only once a server asks for
/// TLS, and then reports "TLS error" without the path, on every reconnect.
fn tls_options(
    mut options: ConnectOptions,
    tls: &NatsTlsConfig,
) -> Result<ConnectOptions, SetupError> {
    if let Some(ca_file) = &tls.ca_file {
        certificates("nats.tls.ca_file", ca_file)?;
        options = options.add_root_certificates(ca_file.clone());
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            certificates("nats.tls.cert_file", cert_file)?;
            private_key("nats.tls.key_file", key_file)?;
            options = options.add_client_certificate(cert_file.clone(), key_file.clone());
        }
        (Some(_), None) => {
            return Err(SetupError::TlsSetting {
                setting: "nats.tls.key_file",
                problem: "not set, but nats.tls.cert_file is: set both or neither".into(),
            });
        }
        (None, Some(_)) => {
            return Err(SetupError::TlsSetting {
                setting: "nats.tls.cert_file",
                problem: "not set, but nats.tls.key_file is: set both or neither".into(),
            });
        }
        (None, None) => {}
    }
    Ok(options.require_tls(tls.required))
}

/// The contents of the file `setting` names.
fn pem_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|error| SetupError::TlsSetting {
        setting,
        problem: format!("{}: {error}", path.display()),
    })
}

/// Checks that the file `setting` names holds at least one PEM certificate.
fn certificates(setting: &'static str, path: &Path) -> Result<(), SetupError> {
    let pem = pem_file(setting, path)?;
    let problem = match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(found) if !found.is_empty() => return Ok(()),
        Ok(_) => format!("{}: holds no PEM certificate", path.display()),
        Err(error) => format!("{}: {error}", path.display()),
    };
    Err(SetupError::TlsSetting { setting, problem })
}

/// Checks that the file `setting` names holds a PEM private key.
fn private_key(setting: &'static str, path: &Path) -> Result<(), SetupError> {
    let pem = pem_file(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(drop)
        .map_err(|error| SetupError::TlsSetting {
            setting,
            problem: format!("{}: holds no PEM private key ({error})", path.display()),
        })
}

/// The root of every reply subject this process subscribes to: its fronts' confirmations and
/// status replies, JetStream's answers and pull deliveries. `_INBOX_<user>` when it logs in with
/// a user name, so that nats-server can give each user (`nats/nats-server-auth.conf`) its own
/// inboxes and let workers answer fronts there alone; `_INBOX`, the NATS default, otherwise.
/// Characters a subject token cannot hold become `_`.
pub fn inbox_prefix(config: &NatsConfig) -> String {
    let Some(user) = &config.user else {
        return "_INBOX".to_owned();
    };
    let user: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_INBOX_{user}")
}

/// A JetStream context whose API calls and PubAck waits are bounded by `request_timeout`.
pub fn jetstream(client: Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .build(client)
}

/// Makes the `ORDERS` stream exist as defined. Idempotent; several processes may race on it.
pub async fn ensure_orders_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<stream::Stream, SetupError> {
    ensure_stream(js, orders_stream_config(config)?, config.stream_replicas).await
}

/// The `ORDERS` stream as it is, created as defined only when there is none: for the fronts,
/// whose NATS user may create the stream (so that a front started before any worker takes
/// orders) but never change one, since lowering a limit drops queued orders. Bringing an existing
/// stream to the definition is the workers' job ([`ensure_orders_stream`]).
pub async fn orders_stream_or_create(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<stream::Stream, SetupError> {
    let definition = orders_stream_config(config)?;
    let name = definition.name.clone();
    let failed = |source: async_nats::Error| SetupError::Stream {
        name: name.clone(),
        source,
    };
    match js.get_stream(&name).await {
        Ok(existing) => return Ok(existing),
        Err(error)
            if matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) => {}
        Err(error) => return Err(failed(error.into())),
    }
    if let Err(error) = js.create_stream(definition).await {
        // Another process may have created it in between, perhaps otherwise (a worker with
        // other overrides): whatever exists now is the stream.
        tracing::debug!(%error, "order stream not created; looking again");
    }
    js.get_stream(&name)
        .await
        .map_err(|error| failed(error.into()))
}

/// Makes the `ORDERS_DLQ` stream exist as defined.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<stream::Stream, SetupError> {
    ensure_stream(
        js,
        dead_letter_stream_config(config)?,
        config.stream_replicas,
    )
    .await
}

/// Creates the stream `definition` describes, or brings an existing one to it. With
/// `replicas` 0 (not configured) an existing stream keeps its replica count: an operator's
/// command run without `FINALPRICE_NATS__STREAM_REPLICAS` must not scale a cluster's R3 streams
/// down to the file's R1. Only "no such stream" leads to a creation; any other failure to look
/// (a time-out during an election) is an error, never a reason to assume the file's count.
async fn ensure_stream(
    js: &jetstream::Context,
    mut definition: stream::Config,
    replicas: usize,
) -> Result<stream::Stream, SetupError> {
    let name = definition.name.clone();
    let failed = |source: async_nats::Error| SetupError::Stream {
        name: name.clone(),
        source,
    };
    match js.get_stream(&name).await {
        Ok(existing) => {
            if replicas == 0 {
                definition.num_replicas = existing.cached_info().config.num_replicas;
            }
            js.update_stream(definition)
                .await
                .map_err(|error| failed(error.into()))?;
        }
        Err(error)
            if matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(definition)
                .await
                .map_err(|error| failed(error.into()))?;
        }
        Err(error) => return Err(failed(error.into())),
    }
    js.get_stream(&name)
        .await
        .map_err(|error| failed(error.into()))
}

/// First pause of [`until_set_up`]; it doubles up to [`SETUP_MAX_PAUSE`].
const SETUP_FIRST_PAUSE: Duration = Duration::from_millis(250);
const SETUP_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Runs `setup` (stream and consumer creation) until it succeeds, pausing longer after each
/// failure and saying so at warn level each time.
///
/// A cluster that is still forming, or electing a meta leader after losing one, answers the
/// JetStream API with time-outs or "temporarily unavailable" for seconds; a service started then
/// must wait for it rather than exit (or run half set up). A definition in `nats/` that does
/// not parse never gets better, so that error is returned at once.
pub async fn until_set_up<T, F, Fut>(what: &str, mut setup: F) -> Result<T, SetupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SetupError>>,
{
    let mut pause = SETUP_FIRST_PAUSE;
    for attempt in 1u32.. {
        match setup().await {
            Ok(done) => {
                if attempt > 1 {
                    tracing::info!(attempt, "{what}: ready");
                }
                return Ok(done);
            }
            Err(
                error @ (SetupError::Definition { .. }
                | SetupError::Credentials(_)
                | SetupError::TlsSetting { .. }
                | SetupError::TlsRefused { .. }),
            ) => {
                return Err(error);
            }
            Err(error) => {
                // `{:#}`: the error with each of its causes, on one line.
                let error = anyhow::Error::new(error);
                tracing::warn!(
                    attempt,
                    retry_in = ?pause,
                    error = format!("{error:#}"),
                    "{what}: JetStream not ready; retrying"
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SETUP_MAX_PAUSE);
    }
    unreachable!("the attempts are counted without end")
}

/// Makes the shared `workers` consumer exist as defined, on an existing stream.
pub async fn ensure_workers_consumer(
    stream: &stream::Stream,
    config: &NatsConfig,
) -> Result<consumer::PullConsumer, SetupError> {
    let definition = workers_consumer_config(config)?;
    let name = definition.durable_name.clone().unwrap_or_default();
    stream
        .create_consumer(definition)
        .await
        .map_err(|source| SetupError::Consumer {
            name,
            source: source.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_definitions_in_nats_parse_into_what_the_design_needs() {
        let config = Config::from_figment(&Config::figment(None)).expect("defaults");
        let stream = orders_stream_config(&config.nats).expect("stream definition");
        assert_eq!(stream.name, "ORDERS");
        assert_eq!(stream.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(stream.storage, stream::StorageType::File);
        assert_eq!(
            stream.discard,
            stream::DiscardPolicy::New,
            "full means refuse, not drop"
        );
        assert!(stream.max_messages > 0, "the stream is bounded");
        assert!(
            !stream.duplicate_window.is_zero(),
            "Nats-Msg-Id dedupe is on"
        );
        assert_eq!(stream.subjects, vec!["orders.*".to_owned()]);

        let consumer = workers_consumer_config(&config.nats).expect("consumer definition");
        assert_eq!(consumer.durable_name.as_deref(), Some("workers"));
        assert_eq!(consumer.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(
            consumer.max_deliver, -1,
            "the worker dead-letters, never the server"
        );

        let dlq = dead_letter_stream_config(&config.nats).expect("DLQ definition");
        assert_eq!(dlq.name, "ORDERS_DLQ");
        assert_eq!(dlq.retention, stream::RetentionPolicy::Limits);
        assert!(
            !dlq.subjects.iter().any(|s| s.starts_with("orders.")),
            "the DLQ must not capture the order subjects"
        );
    }

    #[test]
    fn each_user_takes_its_replies_under_its_own_inbox_prefix() {
        let mut config = Config::from_figment(&Config::figment(None)).expect("defaults");
        assert_eq!(
            inbox_prefix(&config.nats),
            "_INBOX",
            "no login: the NATS default"
        );
        config.nats.user = Some("front".into());
        assert_eq!(inbox_prefix(&config.nats), "_INBOX_front");
        config.nats.user = Some("front.eu *>".into());
        assert_eq!(
            inbox_prefix(&config.nats),
            "_INBOX_front_eu___",
            "one subject token, no wildcard"
        );
    }

    /// A directory of its own under the system's temporary one, removed by the caller.
    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fp-nats-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    /// A PEM block of any label: the parser checks the armour and the base64, not the DER.
    const KEY_PEM: &str =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";

    async fn tls_setup_error(tls: NatsTlsConfig) -> String {
        let mut config = Config::from_figment(&Config::figment(None)).expect("defaults");
        config.nats.tls = tls;
        match options(&config.nats, "test").await {
            Ok(_) => panic!("{:?} accepted", config.nats.tls),
            Err(error) => error.to_string(),
        }
    }

    #[tokio::test]
    async fn an_unusable_tls_file_is_refused_naming_its_setting_and_variable() {
        let dir = scratch();
        let missing = dir.join("ca.pem");
        let error = tls_setup_error(NatsTlsConfig {
            ca_file: Some(missing.clone()),
            ..NatsTlsConfig::default()
        })
        .await;
        assert!(
            error.starts_with(&format!(
                "nats.tls.ca_file (FINALPRICE_NATS__TLS__CA_FILE): {}: No such file or directory",
                missing.display()
            )),
            "{error}"
        );

        let key_only = dir.join("key.pem");
        std::fs::write(&key_only, KEY_PEM).expect("write");
        let error = tls_setup_error(NatsTlsConfig {
            ca_file: Some(key_only.clone()),
            ..NatsTlsConfig::default()
        })
        .await;
        assert_eq!(
            error,
            format!(
                "nats.tls.ca_file (FINALPRICE_NATS__TLS__CA_FILE): {}: holds no PEM certificate",
                key_only.display()
            )
        );

        let error = tls_setup_error(NatsTlsConfig {
            cert_file: Some(key_only.clone()),
            key_file: Some(key_only.clone()),
            ..NatsTlsConfig::default()
        })
        .await;
        assert!(
            error.starts_with("nats.tls.cert_file (FINALPRICE_NATS__TLS__CERT_FILE): "),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[tokio::test]
    async fn a_client_certificate_needs_its_key_and_a_key_its_certificate() {
        let error = tls_setup_error(NatsTlsConfig {
            cert_file: Some("/etc/client.pem".into()),
            ..NatsTlsConfig::default()
        })
        .await;
        assert!(
            error.starts_with("nats.tls.key_file (FINALPRICE_NATS__TLS__KEY_FILE): not set"),
            "{error}"
        );
        let error = tls_setup_error(NatsTlsConfig {
            key_file: Some("/etc/client-key.pem".into()),
            ..NatsTlsConfig::default()
        })
        .await;
        assert!(
            error.starts_with("nats.tls.cert_file (FINALPRICE_NATS__TLS__CERT_FILE): not set"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn without_tls_settings_nothing_is_read() {
        let config = Config::from_figment(&Config::figment(None)).expect("defaults");
        options(&config.nats, "test")
            .await
            .expect("no TLS files to read");
    }

    #[test]
    fn configured_overrides_replace_the_definition() {
        let mut config = Config::from_figment(&Config::figment(None)).expect("defaults");
        config.nats.stream_max_messages = 10;
        config.nats.stream_replicas = 3;
        config.nats.ack_wait = Duration::from_secs(2);
        let stream = orders_stream_config(&config.nats).expect("stream definition");
        assert_eq!(stream.max_messages, 10);
        assert_eq!(stream.num_replicas, 3);
        let consumer = workers_consumer_config(&config.nats).expect("consumer definition");
        assert_eq!(consumer.ack_wait, Duration::from_secs(2));
    }
}
