//! Configuration of both services: compiled-in defaults < optional TOML file < environment,
//! extracted into typed structs and checked once at start-up.
//!
//! The defaults and the documentation of every setting live in `shared/config.default.toml`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::domain::Country;

/// The compiled-in defaults, also the reference for every setting.
pub const DEFAULTS_TOML: &str = include_str!("../config.default.toml");

/// Names the optional TOML file layered over the defaults.
pub const CONFIG_FILE_ENV: &str = "FINALPRICE_CONFIG_FILE";

/// The largest batch a worker may commit: 4 bound columns per row must stay under SQLite's
/// 32 766 bind parameters (PostgreSQL allows 65 535).
pub const MAX_BATCH_SIZE: usize = 8000;

/// Why the configuration could not be loaded; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read or has the wrong type (figment names key and source).
    #[error("configuration: {0}")]
    Extract(#[from] Box<figment::Error>),
    /// A value has the right type but is outside what the services can work with.
    #[error("configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    /// A file a setting names cannot be read.
    #[error("configuration: {setting} ({}): {}: {source}", env_var(setting), path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything both services read at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub db: DbConfig,
    pub http: HttpConfig,
    pub worker: WorkerConfig,
    pub orders: OrdersConfig,
    pub log: LogConfig,
}

/// How to reach nats-server and how the order stream is sized.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server, or several separated by commas (see [`NatsConfig::servers`]). May hold a
    /// password: never printed whole (see the `Debug` impl).
    pub url: String,
    /// The name this process logs in as with a password, and the name of its inboxes (see
    /// [`crate::nats::inbox_prefix`]) with any login but a token: nkey, creds and no-auth users
    /// have permissions of their own too.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub user: Option<String>,
    /// How this process proves who it is: resolved from the credential settings below, their
    /// files read, when the configuration loads.
    #[serde(skip)]
    pub auth: NatsAuth,
    // The credential settings as given, read only by `NatsConfig::resolve_auth`: `auth` is
    // what is used, and the secrets are moved there.
    #[serde(default, deserialize_with = "empty_as_none")]
    password: Option<SecretString>,
    #[serde(default, deserialize_with = "empty_as_none")]
    password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "empty_as_none")]
    token: Option<SecretString>,
    #[serde(default, deserialize_with = "empty_as_none")]
    token_file: Option<PathBuf>,
    /// An nkey seed file (`SU…`).
    #[serde(default, deserialize_with = "empty_as_none")]
    nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed).
    #[serde(default, deserialize_with = "empty_as_none")]
    creds_file: Option<PathBuf>,
    /// Empty means "the service's own name".
    pub client_name: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often the client pings its server; three unanswered pings drop the connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the front may try to get an order's PubAck, retries included; zero means "by
    /// topology" (see [`NatsConfig::publish_bound`]).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// The most orders a front gathers into one message; 1 sends each alone.
    pub envelope_max_orders: usize,
    /// The largest envelope in bytes; 0 = by the order stream's message size limit.
    pub envelope_max_bytes: usize,
    /// Envelopes one front may have awaiting their PubAck at once.
    pub envelopes_in_flight: usize,
    /// 0 keeps the value of `nats/stream-orders.json`.
    pub stream_max_messages: i64,
    /// 0 keeps the value of `nats/stream-orders.json`.
    pub stream_max_bytes: i64,
    /// 0 keeps the value of `nats/stream-orders.json`.
    pub stream_replicas: usize,
    /// Zero keeps the value of `nats/consumer-workers.json`.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// TLS towards nats-server (`[nats.tls]`).
    #[serde(default)]
    pub tls: NatsTlsConfig,
}

/// TLS towards nats-server. The files are read when the client is set up
/// (`nats::connect`), which names the setting of any that cannot be used.
///
/// There is no `server_name`: async-nats 0.51 checks the server's certificate against the host
/// of the URL it dials (`nats.url`) and offers no way to name another; a rustls config of our
/// own (`tls_client_config`) does not change that name either.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM certificates of the CAs to trust, instead of the system's.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub ca_file: Option<PathBuf>,
    /// The client's certificate (PEM), for servers that verify clients; with `key_file`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); with `cert_file`.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub key_file: Option<PathBuf>,
    /// TLS even when the URL says `nats://` and the server does not ask for it.
    #[serde(default)]
    pub required: bool,
}

impl NatsTlsConfig {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.required
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }
}

/// An empty value as no value: `FINALPRICE_NATS__TLS__CA_FILE=` or `FINALPRICE_NATS__PASSWORD=`
/// in an env file or a compose `${VAR:-}` means "none", not a file named "" or an empty password.
fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    let value: Option<String> = Option::deserialize(deserializer)?;
    Ok(value.filter(|value| !value.is_empty()).map(T::from))
}

/// How a service logs in to nats-server (TLS client certificates are in `nats.tls`). One way
/// at most: settings naming two are refused when the configuration loads.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    /// No credentials (a server without authorization, or one with a `no_auth_user`).
    #[default]
    None,
    /// `nats.user` with `nats.password` or the contents of `nats.password_file`.
    UserPassword {
        user: String,
        password: SecretString,
    },
    /// `nats.token` or the contents of `nats.token_file`.
    Token(SecretString),
    /// The seed (`SU…`) in `nats.nkey_seed_file`.
    NkeySeed(SecretString),
    /// The contents of `nats.creds_file`: a user JWT and its nkey seed.
    Creds(SecretString),
}

/// Secrets print as `[REDACTED]` by their type; only the URLs need help. Destructured without
/// `..`, so that a field added later must be placed here before this compiles.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            url,
            user,
            auth,
            password,
            password_file,
            token,
            token_file,
            nkey_seed_file,
            creds_file,
            client_name,
            connect_timeout,
            request_timeout,
            ping_interval,
            publish_timeout,
            envelope_max_orders,
            envelope_max_bytes,
            envelopes_in_flight,
            stream_max_messages,
            stream_max_bytes,
            stream_replicas,
            ack_wait,
            tls,
        } = self;
        f.debug_struct("NatsConfig")
            .field("url", &redact_url_password(url))
            .field("user", user)
            .field("auth", auth)
            // Moved into `auth` at load; shown in case a hand-built configuration holds them.
            .field("password", password)
            .field("password_file", password_file)
            .field("token", token)
            .field("token_file", token_file)
            .field("nkey_seed_file", nkey_seed_file)
            .field("creds_file", creds_file)
            .field("client_name", client_name)
            .field("connect_timeout", connect_timeout)
            .field("request_timeout", request_timeout)
            .field("ping_interval", ping_interval)
            .field("publish_timeout", publish_timeout)
            .field("envelope_max_orders", envelope_max_orders)
            .field("envelope_max_bytes", envelope_max_bytes)
            .field("envelopes_in_flight", envelopes_in_flight)
            .field("stream_max_messages", stream_max_messages)
            .field("stream_max_bytes", stream_max_bytes)
            .field("stream_replicas", stream_replicas)
            .field("ack_wait", ack_wait)
            .field("tls", tls)
            .finish()
    }
}

/// The publish bound when `nats.publish_timeout` is left to the topology and the stream is
/// replicated: a stream leader that dies is replaced after its followers wait 4–9 s (nats-server's
/// election timeout), and a publish retried within this bound lands on the new leader.
pub const REPLICATED_PUBLISH_BOUND: Duration = Duration::from_secs(12);

impl NatsConfig {
    /// The servers `url` lists, each trimmed; a comma-separated list names a cluster's nodes.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .collect()
    }

    /// How long the front tries to get an order's PubAck before it answers 503, for a stream
    /// of `replicas`: `publish_timeout` when set, otherwise by topology — `request_timeout` on
    /// an unreplicated stream (a single node has no election to wait out, and a node that is
    /// down stays down for longer than a shopper should wait; quick failures are still tried
    /// again within it), [`REPLICATED_PUBLISH_BOUND`] on a replicated one.
    pub fn publish_bound(&self, replicas: usize) -> Duration {
        if !self.publish_timeout.is_zero() {
            self.publish_timeout
        } else if replicas > 1 {
            REPLICATED_PUBLISH_BOUND.max(self.request_timeout)
        } else {
            self.request_timeout
        }
    }

    /// The publish bound for the replicas this configuration asks for; with none asked (an
    /// existing stream keeps its count), for the largest the bound may have to cover.
    pub fn longest_publish_bound(&self) -> Duration {
        self.publish_bound(if self.stream_replicas == 0 {
            usize::MAX
        } else {
            self.stream_replicas
        })
    }
}

/// The environment variable of `setting`: `nats.password_file` →
/// `FINALPRICE_NATS__PASSWORD_FILE`.
fn env_var(setting: &str) -> String {
    format!("FINALPRICE_{}", setting.replace('.', "__").to_uppercase())
}

/// The contents of the file `setting` names, less trailing whitespace: the newline an editor or
/// `echo` leaves is no part of a secret.
fn read_secret(setting: &'static str, path: &Path) -> Result<SecretString, ConfigError> {
    let contents = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        setting,
        path: path.to_owned(),
        source,
    })?;
    Ok(contents.trim_end().into())
}

/// A secret given inline (`nats.password`) or by a file to read (`nats.password_file`).
enum Source {
    Value(&'static str, SecretString),
    File(&'static str, PathBuf),
}

impl Source {
    /// The one of `value` (setting `value_setting`) and `file` given; both is refused, as
    /// which of the two is meant cannot be told.
    fn one_of(
        value_setting: &'static str,
        value: Option<SecretString>,
        file_setting: &'static str,
        file: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                key: value_setting,
                problem: format!("and {file_setting} are both set: give the secret one way"),
            }),
            (Some(value), None) => Ok(Some(Self::Value(value_setting, value))),
            (None, Some(file)) => Ok(Some(Self::File(file_setting, file.to_owned()))),
            (None, None) => Ok(None),
        }
    }

    fn setting(&self) -> &'static str {
        match self {
            Self::Value(setting, _) | Self::File(setting, _) => setting,
        }
    }

    fn read(self) -> Result<SecretString, ConfigError> {
        match self {
            Self::Value(_, value) => Ok(value),
            Self::File(setting, path) => read_secret(setting, &path),
        }
    }
}

impl NatsConfig {
    /// Sets [`NatsConfig::auth`] from the credential settings, reading the file of the one
    /// given, so that a file that cannot be read stops the start naming its setting rather
    /// than every reconnect failing. Settings naming two ways to log in are refused: the old
    /// client sent them all and the server chose.
    fn resolve_auth(&mut self) -> Result<(), ConfigError> {
        let password = Source::one_of(
            "nats.password",
            self.password.take(),
            "nats.password_file",
            self.password_file.as_deref(),
        )?;
        let token = Source::one_of(
            "nats.token",
            self.token.take(),
            "nats.token_file",
            self.token_file.as_deref(),
        )?;
        let given: Vec<&'static str> = [
            password.as_ref().map(Source::setting),
            token.as_ref().map(Source::setting),
            self.nkey_seed_file.as_ref().map(|_| "nats.nkey_seed_file"),
            self.creds_file.as_ref().map(|_| "nats.creds_file"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let [first, second, ..] = given[..] {
            return Err(ConfigError::Invalid {
                key: first,
                problem: format!(
                    "and {second} are both set: a client logs in to nats-server one way"
                ),
            });
        }
        self.auth = if let Some(password) = password {
            let Some(user) = self.user.clone() else {
                return Err(ConfigError::Invalid {
                    key: "nats.user",
                    problem: format!("is not set, but {} is", password.setting()),
                });
            };
            NatsAuth::UserPassword {
                user,
                password: password.read()?,
            }
        } else if let Some(token) = token {
            // nats-server's token authorization has no users: a user name beside a token
            // would look like part of the login and only rename the inboxes.
            if self.user.is_some() {
                return Err(ConfigError::Invalid {
                    key: token.setting(),
                    problem: "and nats.user are both set: a token logs in without a user name"
                        .into(),
                });
            }
            NatsAuth::Token(token.read()?)
        } else if let Some(path) = &self.nkey_seed_file {
            let seed = read_secret("nats.nkey_seed_file", path)?;
            NatsAuth::NkeySeed(seed.expose_secret().trim().into())
        } else if let Some(path) = &self.creds_file {
            let creds = read_secret("nats.creds_file", path)?;
            // Parsed now so that a file of the wrong kind is named here, not at each connect.
            if let Err(error) = async_nats::ConnectOptions::with_credentials(creds.expose_secret())
            {
                return Err(ConfigError::Invalid {
                    key: "nats.creds_file",
                    problem: format!("{}: {error}", path.display()),
                });
            }
            NatsAuth::Creds(creds)
        } else {
            NatsAuth::None
        };
        Ok(())
    }

    /// Logs in as `user` with `password`: what `nats.user` and `nats.password` give, for a
    /// configuration changed after it was loaded (tests).
    pub fn log_in_with_password(&mut self, user: &str, password: &str) {
        self.user = Some(user.to_owned());
        self.auth = NatsAuth::UserPassword {
            user: user.to_owned(),
            password: password.into(),
        };
    }
}

/// The worker's database.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// May hold a password: never printed whole (see the `Debug` impl).
    pub url: String,
    /// The password for a URL without one: the contents of `db.password_file`, read when the
    /// configuration loads.
    #[serde(skip)]
    pub password: Option<SecretString>,
    #[serde(default, deserialize_with = "empty_as_none")]
    password_file: Option<PathBuf>,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// As for [`NatsConfig`]: the password is a `SecretString`, the URL alone needs redacting.
impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            url,
            password,
            password_file,
            max_connections,
            connect_timeout,
            acquire_timeout,
        } = self;
        f.debug_struct("DbConfig")
            .field("url", &redact_url_password(url))
            .field("password", password)
            .field("password_file", password_file)
            .field("max_connections", max_connections)
            .field("connect_timeout", connect_timeout)
            .field("acquire_timeout", acquire_timeout)
            .finish()
    }
}

/// The front's HTTP side and its bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// A second listener for `/metrics` (and `/healthz`), kept off the shoppers' port; absent,
    /// `/metrics` is served on `addr` as DESIGN.md lists it. Port 0 = any free port.
    #[serde(default)]
    pub admin_addr: Option<SocketAddr>,
    #[serde(with = "humantime_serde")]
    pub reply_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub status_timeout: Duration,
    pub max_body_bytes: usize,
    /// Request line and headers; hyper's floor is 8192.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_in_flight: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long an answer may wait for the client to take more of it.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Orders per second per client; 0 = no limit.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// `GET /orders/{id}` lookups that ask the workers at once; past it, 503.
    pub max_lookups_in_flight: usize,
    /// Lookups per second per client; 0 = no limit.
    pub lookup_rate_per_second: u32,
    pub lookup_rate_burst: u32,
    /// Empty = the peer address identifies the client. Otherwise the last address of the
    /// header's last line, the one the proxy in front of us added (`X-Forwarded-For`,
    /// `X-Real-IP`).
    pub client_ip_header: String,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// How the worker batches, retries and stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// The delivery on which an order the database refuses, or a message that is no valid
    /// order, is dead-lettered.
    pub dead_letter_after: i64,
    /// How long one batch's statement may take before it is given up and retried later.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// The worker's `/metrics` listener; port 0 = any free port.
    pub metrics_addr: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// Rules of the order form that depend on the shop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    pub default_country: Country,
}

/// Log output, and which spans are exported when OTLP export is on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `RUST_LOG` syntax, for the exported spans (and the events recorded in them) alone:
    /// quieting the logs must never switch tracing off.
    pub trace_filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Whether `key` (a variable's name after `FINALPRICE_`) is one Kubernetes adds for a Service
/// named `finalprice-…` (`FINALPRICE_FRONT_SERVICE_HOST`, `FINALPRICE_FRONT_PORT_8080_TCP_ADDR`,
/// …) rather than a setting. Every setting is in a section (`HTTP__ADDR`), so a name without
/// `__` never is one; any other such name is still refused, as a misspelt setting
/// (`FINALPRICE_HTTP_ADDR`) must be.
fn is_service_link(key: &str) -> bool {
    static LINK: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)^(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)$",
        )
        .expect("a valid pattern")
    });
    !key.contains("__") && LINK.is_match(key)
}

impl Config {
    /// Loads the configuration from the defaults, the file named by `FINALPRICE_CONFIG_FILE`
    /// and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        Self::from_figment(&Self::figment(file.as_deref()))
    }

    /// The layered sources, without extracting them; tests build on this.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::raw().only(&["NATS_URL"]).map(|_| "nats.url".into()))
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "db.url".into()))
            .merge(
                Env::prefixed("FINALPRICE_")
                    .ignore(&["CONFIG_FILE"])
                    .filter(|key| !is_service_link(key.as_str()))
                    .split("__"),
            )
    }

    /// Extracts and checks a configuration from any set of sources.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        config.nats.resolve_auth()?;
        if let Some(path) = &config.db.password_file {
            config.db.password = Some(read_secret("db.password_file", path)?);
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                problem: problem.into(),
            }
        }
        let servers = self.nats.servers();
        if servers.is_empty() {
            return Err(invalid("nats.url", "names no server"));
        }
        for server in servers {
            let scheme_known = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| server.starts_with(scheme))
                || !server.contains("://");
            if !scheme_known || server.parse::<async_nats::ServerAddr>().is_err() {
                return Err(invalid(
                    "nats.url",
                    format!(
                        "`{}` is not a nats:// (or tls://, ws://) URL; several are separated by commas",
                        redact_url_password(server)
                    ),
                ));
            }
        }
        if self.nats.request_timeout.is_zero() {
            return Err(invalid("nats.request_timeout", "must be above 0"));
        }
        if self.nats.ping_interval.is_zero() {
            return Err(invalid("nats.ping_interval", "must be above 0"));
        }
        if !(1..=crate::messages::MAX_ENVELOPE_ORDERS).contains(&self.nats.envelope_max_orders) {
            return Err(invalid(
                "nats.envelope_max_orders",
                "must be 1 to 1024 (1 sends every order alone; workers read at most 1024)",
            ));
        }
        if !(1..=1024).contains(&self.nats.envelopes_in_flight) {
            return Err(invalid("nats.envelopes_in_flight", "must be 1 to 1024"));
        }
        if !self.nats.publish_timeout.is_zero()
            && self.nats.publish_timeout < self.nats.request_timeout
        {
            return Err(invalid(
                "nats.publish_timeout",
                "must be 0s (by topology) or at least nats.request_timeout",
            ));
        }
        if self.nats.stream_max_messages < 0 || self.nats.stream_max_bytes < 0 {
            return Err(invalid(
                "nats.stream_max_messages",
                "and nats.stream_max_bytes must be 0 (keep the definition) or positive",
            ));
        }
        if !(self.db.url.starts_with("postgres://")
            || self.db.url.starts_with("postgresql://")
            || self.db.url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "db.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.db.max_connections == 0 {
            return Err(invalid("db.max_connections", "must be at least 1"));
        }
        if self.http.reply_timeout.is_zero() {
            return Err(invalid("http.reply_timeout", "must be above 0"));
        }
        if self.http.status_timeout.is_zero() {
            return Err(invalid("http.status_timeout", "must be above 0"));
        }
        if self.http.max_body_bytes < 256 {
            return Err(invalid(
                "http.max_body_bytes",
                "must be at least 256 bytes (a filled form is about 200)",
            ));
        }
        if self.http.max_header_bytes < 8192 {
            return Err(invalid("http.max_header_bytes", "must be at least 8192"));
        }
        if self.http.max_headers < 8 {
            return Err(invalid("http.max_headers", "must be at least 8"));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if self.http.max_in_flight == 0 {
            return Err(invalid("http.max_in_flight", "must be at least 1"));
        }
        if self.http.header_read_timeout.is_zero() {
            return Err(invalid("http.header_read_timeout", "must be above 0"));
        }
        if self.http.write_timeout.is_zero() {
            return Err(invalid("http.write_timeout", "must be above 0"));
        }
        if self.http.retry_after.as_secs() == 0 {
            return Err(invalid(
                "http.retry_after",
                "must be at least 1s (Retry-After counts whole seconds)",
            ));
        }
        if self.http.max_lookups_in_flight == 0 {
            return Err(invalid("http.max_lookups_in_flight", "must be at least 1"));
        }
        if self.http.lookup_rate_per_second > 0 && self.http.lookup_rate_burst == 0 {
            return Err(invalid(
                "http.lookup_rate_burst",
                "must be at least 1 when http.lookup_rate_per_second is set",
            ));
        }
        if self.http.rate_limit_per_second > 0 && self.http.rate_limit_burst == 0 {
            return Err(invalid(
                "http.rate_limit_burst",
                "must be at least 1 when http.rate_limit_per_second is set",
            ));
        }
        if !self.http.client_ip_header.is_empty()
            && http_header_name_invalid(&self.http.client_ip_header)
        {
            return Err(invalid(
                "http.client_ip_header",
                "is not a valid header name",
            ));
        }
        // A front stopping mid-election must still answer what it holds: a request may take the
        // publish bound and then the reply wait.
        let longest_request = self.nats.longest_publish_bound() + self.http.reply_timeout;
        if self.http.shutdown_grace < longest_request {
            return Err(invalid(
                "http.shutdown_grace",
                format!(
                    "must be at least the publish bound plus http.reply_timeout ({}s here; the \
                     publish bound of a replicated stream is {}s unless nats.publish_timeout \
                     sets it)",
                    longest_request.as_secs_f64(),
                    REPLICATED_PUBLISH_BOUND.as_secs()
                ),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.worker.batch_size) {
            return Err(invalid(
                "worker.batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        if self.worker.dead_letter_after < 1 {
            return Err(invalid("worker.dead_letter_after", "must be at least 1"));
        }
        if self.worker.commit_timeout.is_zero() {
            return Err(invalid("worker.commit_timeout", "must be above 0"));
        }
        // A batch still waiting on its statement when ack_wait ends is delivered to another
        // worker as well: twice the work on a database that is already slow.
        if !self.nats.ack_wait.is_zero() && self.worker.commit_timeout >= self.nats.ack_wait {
            return Err(invalid(
                "worker.commit_timeout",
                "must be under nats.ack_wait",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1"));
        }
        if self.log.trace_filter.trim().is_empty() {
            return Err(invalid(
                "log.trace_filter",
                "names no directive (OTEL_TRACES_SAMPLER=always_off exports no spans)",
            ));
        }
        if let Err(error) = crate::telemetry::trace_filter(&self.log.trace_filter) {
            return Err(invalid(
                "log.trace_filter",
                format!("is not a filter: {error}"),
            ));
        }
        if self.worker.retry_delay.is_zero()
            || self.worker.retry_max_delay < self.worker.retry_delay
        {
            return Err(invalid(
                "worker.retry_delay",
                "must be above 0 and at most worker.retry_max_delay",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The country whose national phone numbers the form accepts.
    pub fn default_country(&self) -> Country {
        self.orders.default_country
    }
}

impl DbConfig {
    /// Whether the database is SQLite (one writer at a time) rather than PostgreSQL.
    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }
}

/// RFC 9110 token characters only.
fn http_header_name_invalid(name: &str) -> bool {
    !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`, for logs and `Debug`; each
/// URL of a comma-separated list alike.
pub fn redact_url_password(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(redact_one_url_password)
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one_url_password(url)
}

fn redact_one_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;
    use secrecy::ExposeSecret;

    fn load_with(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(&Figment::from(Toml::string(DEFAULTS_TOML)).merge(Toml::string(toml)))
    }

    #[test]
    fn defaults_load_and_match_the_contract() {
        let config = load_with("").expect("defaults are valid");
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.http.addr.to_string(), "127.0.0.1:8080");
        assert!(
            config.db.is_sqlite(),
            "the embedded default is a SQLite file"
        );
        assert_eq!(config.default_country(), Country::Russia);
        assert_eq!(config.log.format, LogFormat::Pretty);
        assert!(
            config.log.trace_filter.contains("finalprice_front=info"),
            "our spans are exported at info whatever RUST_LOG says"
        );
    }

    #[test]
    fn a_file_layer_overrides_defaults_and_durations_read_humanly() {
        let config = load_with(
            "[http]\nreply_timeout = \"250ms\"\n[worker]\nbatch_size = 100\nbatch_linger = \"0s\"",
        )
        .expect("valid");
        assert_eq!(config.http.reply_timeout, Duration::from_millis(250));
        assert_eq!(config.worker.batch_size, 100);
        assert!(config.worker.batch_linger.is_zero());
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&str, &str)] = &[
            ("[worker]\nbatch_size = 0", "worker.batch_size"),
            ("[worker]\nbatch_size = 9000", "worker.batch_size"),
            ("[db]\nurl = \"mysql://x\"", "db.url"),
            ("[http]\nretry_after = \"200ms\"", "http.retry_after"),
            ("[http]\nreply_timeout = \"soon\"", "reply_timeout"),
            ("[http]\naddr = \"not an address\"", "addr"),
            ("[http]\nadmin_addr = \"localhost\"", "admin_addr"),
            ("[http]\nbogus = 1", "bogus"),
            ("[worker]\ncommit_timeout = \"0s\"", "worker.commit_timeout"),
            ("[nats]\nurl = \"http://x:4222\"", "nats.url"),
            ("[nats]\nurl = \"nats://a:4222,mysql://b\"", "nats.url"),
            ("[nats]\nurl = \" , \"", "nats.url"),
            ("[nats]\npublish_timeout = \"1s\"", "nats.publish_timeout"),
            ("[http]\nshutdown_grace = \"16s\"", "http.shutdown_grace"),
            ("[log]\ntrace_filter = \" \"", "log.trace_filter"),
            (
                "[log]\ntrace_filter = \"finalprice_front=loud\"",
                "log.trace_filter",
            ),
            (
                "[nats]\nack_wait = \"5s\"\n[worker]\ncommit_timeout = \"5s\"",
                "worker.commit_timeout",
            ),
        ];
        for (toml, key) in cases {
            let error = load_with(toml).expect_err(toml).to_string();
            assert!(
                error.to_lowercase().contains(key),
                "error for {toml:?} should name {key}: {error}"
            );
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_names_from_the_contract_are_read() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("NATS_URL", "nats://10.0.0.1:4222");
            jail.set_env("DATABASE_URL", "postgres://fp:pw@db/fp");
            jail.set_env("FINALPRICE_HTTP__ADDR", "0.0.0.0:9000");
            jail.set_env("FINALPRICE_WORKER__BATCH_SIZE", "64");
            // RUST_LOG's syntax, commas and all, read as one string.
            jail.set_env(
                "FINALPRICE_LOG__TRACE_FILTER",
                "warn,finalprice_front=debug,finalprice_worker=info",
            );
            jail.set_env(CONFIG_FILE_ENV, "ignored-by-the-env-layer.toml");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
            assert_eq!(config.db.url, "postgres://fp:pw@db/fp");
            assert_eq!(config.http.addr.to_string(), "0.0.0.0:9000");
            assert_eq!(config.worker.batch_size, 64);
            assert_eq!(
                config.log.trace_filter,
                "warn,finalprice_front=debug,finalprice_worker=info"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn kubernetes_service_links_are_not_settings_but_a_misspelt_setting_is_refused() {
        // What Kubernetes adds to every pod for Services named finalprice-front and finalprice.
        let links = [
            ("FINALPRICE_FRONT_SERVICE_HOST", "10.96.0.12"),
            ("FINALPRICE_FRONT_SERVICE_PORT", "8080"),
            ("FINALPRICE_FRONT_SERVICE_PORT_HTTP", "8080"),
            ("FINALPRICE_FRONT_PORT", "tcp://10.96.0.12:8080"),
            ("FINALPRICE_FRONT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("FINALPRICE_FRONT_PORT_8080_TCP_PROTO", "tcp"),
            ("FINALPRICE_FRONT_PORT_8080_TCP_PORT", "8080"),
            ("FINALPRICE_FRONT_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("FINALPRICE_SERVICE_HOST", "10.96.0.13"),
            ("FINALPRICE_PORT", "tcp://10.96.0.13:80"),
        ];
        figment::Jail::expect_with(|jail| {
            for (key, value) in links {
                jail.set_env(key, value);
            }
            jail.set_env("FINALPRICE_HTTP__ADDR", "0.0.0.0:8080");
            let config = Config::from_figment(&Config::figment(None)).expect("starts");
            assert_eq!(config.http.addr.to_string(), "0.0.0.0:8080");
            jail.set_env("FINALPRICE_HTTP_ADDR", "0.0.0.0:9000");
            let refused = Config::from_figment(&Config::figment(None)).expect_err("misspelt");
            assert!(refused.to_string().contains("http_addr"), "{refused}");
            Ok(())
        });
        assert!(!is_service_link("HTTP__SERVICE_HOST"));
        assert!(!is_service_link("NATS_URL"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn the_admin_address_is_absent_unless_set() {
        let config = load_with("").expect("valid");
        assert_eq!(
            config.http.admin_addr, None,
            "/metrics stays on the front's port by default (DESIGN.md)"
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("FINALPRICE_HTTP__ADMIN_ADDR", "0.0.0.0:9464");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert_eq!(
                config.http.admin_addr,
                Some(SocketAddr::from(([0, 0, 0, 0], 9464)))
            );
            Ok(())
        });
    }

    #[test]
    fn a_list_of_servers_is_read_as_a_cluster() {
        let config = load_with("[nats]\nurl = \"nats://a:4222, nats://b:4222,tls://c:4222\"")
            .expect("valid");
        assert_eq!(
            config.nats.servers(),
            ["nats://a:4222", "nats://b:4222", "tls://c:4222"]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn nats_tls_is_off_by_default_and_read_from_the_environment() {
        let config = load_with("").expect("valid");
        assert!(!config.nats.tls.is_set(), "{:?}", config.nats.tls);
        figment::Jail::expect_with(|jail| {
            jail.set_env("FINALPRICE_NATS__TLS__CA_FILE", "/etc/nats/ca.pem");
            jail.set_env("FINALPRICE_NATS__TLS__CERT_FILE", "/etc/nats/client.pem");
            jail.set_env("FINALPRICE_NATS__TLS__KEY_FILE", "/etc/nats/client-key.pem");
            jail.set_env("FINALPRICE_NATS__TLS__REQUIRED", "true");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            let tls = &config.nats.tls;
            assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/nats/ca.pem")));
            assert_eq!(
                tls.cert_file.as_deref(),
                Some(Path::new("/etc/nats/client.pem"))
            );
            assert_eq!(
                tls.key_file.as_deref(),
                Some(Path::new("/etc/nats/client-key.pem"))
            );
            assert!(tls.required);
            // Paths, shown so that an operator sees which files a process uses.
            assert!(format!("{config:?}").contains("/etc/nats/ca.pem"));

            // An env file's `KEY=` means none, not a file named "".
            jail.set_env("FINALPRICE_NATS__TLS__CA_FILE", "");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert_eq!(config.nats.tls.ca_file, None);

            jail.set_env("FINALPRICE_NATS__TLS__CAFILE", "/etc/nats/ca.pem");
            let refused = Config::from_figment(&Config::figment(None)).expect_err("misspelt");
            assert!(refused.to_string().contains("cafile"), "{refused}");
            Ok(())
        });
    }

    #[test]
    fn the_publish_bound_follows_the_topology_unless_set() {
        let config = load_with("").expect("valid");
        assert_eq!(config.nats.publish_bound(1), config.nats.request_timeout);
        assert_eq!(config.nats.publish_bound(3), REPLICATED_PUBLISH_BOUND);
        let set =
            load_with("[nats]\nstream_replicas = 3\npublish_timeout = \"4s\"").expect("valid");
        assert_eq!(set.nats.publish_bound(1), Duration::from_secs(4));
        assert_eq!(set.nats.publish_bound(3), Duration::from_secs(4));
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let error = Config::from_figment(&Config::figment(Some(Path::new("/nonexistent/fp.toml"))))
            .expect_err("missing file");
        assert!(error.to_string().contains("fp.toml"), "{error}");
    }

    #[test]
    fn later_layers_win() {
        let figment = Config::figment(None).merge(Serialized::default("worker.concurrency", 9));
        assert_eq!(
            Config::from_figment(&figment)
                .expect("valid")
                .worker
                .concurrency,
            9
        );
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let config = load_with("[db]\nurl = \"postgres://fp:s3cret@db:5432/fp\"").expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://fp:***@db:5432/fp"), "{shown}");
        let servers = redact_url_password("nats://a:one@n1:4222,nats://b:two@n2:4222");
        assert_eq!(servers, "nats://a:***@n1:4222,nats://b:***@n2:4222");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn no_secret_shows_in_the_debug_of_a_whole_configuration() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("db-password", "db-s3cret\n")?;
            jail.set_env("NATS_URL", "nats://fp:url-s3cret@n1:4222,nats://n2:4222");
            jail.set_env("DATABASE_URL", "postgres://fp:dburl-s3cret@db/fp");
            jail.set_env("FINALPRICE_DB__PASSWORD_FILE", "db-password");
            jail.set_env("FINALPRICE_NATS__USER", "front");
            jail.set_env("FINALPRICE_NATS__PASSWORD", "nats-s3cret");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            let shown = format!("{config:?}");
            for secret in ["url-s3cret", "dburl-s3cret", "db-s3cret", "nats-s3cret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            // What an operator needs to see is still there.
            for visible in [
                "nats://fp:***@n1:4222,nats://n2:4222",
                "postgres://fp:***@db/fp",
                "db-password",
                "\"front\"",
                "REDACTED",
            ] {
                assert!(shown.contains(visible), "{visible} not in {shown}");
            }

            jail.set_env("FINALPRICE_NATS__USER", "");
            jail.set_env("FINALPRICE_NATS__PASSWORD", "");
            jail.set_env("FINALPRICE_NATS__TOKEN", "t0ken-s3cret");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert!(matches!(config.nats.auth, NatsAuth::Token(_)));
            let shown = format!("{config:?}");
            assert!(!shown.contains("t0ken-s3cret"), "{shown}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn credential_files_are_read_at_load_less_their_trailing_newline() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("nats-password", "pass word\n")?;
            jail.create_file("db-password", "db pass\r\n")?;
            jail.set_env("FINALPRICE_NATS__USER", "worker");
            jail.set_env("FINALPRICE_NATS__PASSWORD_FILE", "nats-password");
            jail.set_env("FINALPRICE_DB__PASSWORD_FILE", "db-password");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            match &config.nats.auth {
                NatsAuth::UserPassword { user, password } => {
                    assert_eq!(user, "worker");
                    assert_eq!(password.expose_secret(), "pass word");
                }
                other => panic!("{other:?}"),
            }
            let db_password = config.db.password.as_ref().map(ExposeSecret::expose_secret);
            assert_eq!(db_password, Some("db pass"));

            jail.create_file("token", "t0ken\n")?;
            jail.set_env("FINALPRICE_NATS__USER", "");
            jail.set_env("FINALPRICE_NATS__PASSWORD_FILE", "");
            jail.set_env("FINALPRICE_NATS__TOKEN_FILE", "token");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            match &config.nats.auth {
                NatsAuth::Token(token) => assert_eq!(token.expose_secret(), "t0ken"),
                other => panic!("{other:?}"),
            }

            jail.create_file("seed", "  SUAEXAMPLE\n")?;
            jail.set_env("FINALPRICE_NATS__TOKEN_FILE", "");
            jail.set_env("FINALPRICE_NATS__NKEY_SEED_FILE", "seed");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            match &config.nats.auth {
                NatsAuth::NkeySeed(seed) => assert_eq!(seed.expose_secret(), "SUAEXAMPLE"),
                other => panic!("{other:?}"),
            }

            jail.create_file("not.creds", "no JWT here\n")?;
            jail.set_env("FINALPRICE_NATS__NKEY_SEED_FILE", "");
            jail.set_env("FINALPRICE_NATS__CREDS_FILE", "not.creds");
            let refused = Config::from_figment(&Config::figment(None)).expect_err("no creds");
            assert!(
                refused
                    .to_string()
                    .contains("`nats.creds_file` not.creds: "),
                "{refused}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_credential_file_that_cannot_be_read_stops_the_start_naming_setting_and_variable() {
        for (setting, variable) in [
            ("nats.password_file", "FINALPRICE_NATS__PASSWORD_FILE"),
            ("nats.token_file", "FINALPRICE_NATS__TOKEN_FILE"),
            ("nats.nkey_seed_file", "FINALPRICE_NATS__NKEY_SEED_FILE"),
            ("nats.creds_file", "FINALPRICE_NATS__CREDS_FILE"),
            ("db.password_file", "FINALPRICE_DB__PASSWORD_FILE"),
        ] {
            figment::Jail::expect_with(|jail| {
                if setting == "nats.password_file" {
                    jail.set_env("FINALPRICE_NATS__USER", "front");
                }
                jail.set_env(variable, "/nonexistent/secret");
                let refused = Config::from_figment(&Config::figment(None)).expect_err(setting);
                assert!(
                    refused.to_string().starts_with(&format!(
                        "configuration: {setting} ({variable}): /nonexistent/secret: No such \
                         file or directory"
                    )),
                    "{refused}"
                );
                Ok(())
            });
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn settings_naming_two_logins_are_refused_naming_both() {
        /// `FINALPRICE_NATS__<key>` values, and the two settings the refusal must name.
        type Case = (&'static [(&'static str, &'static str)], [&'static str; 2]);
        let cases: &[Case] = &[
            (
                &[("USER", "front"), ("TOKEN", "t")],
                ["nats.token", "nats.user"],
            ),
            (
                &[("USER", "front"), ("TOKEN_FILE", "/t")],
                ["nats.token_file", "nats.user"],
            ),
            (
                &[("USER", "front"), ("PASSWORD", "p"), ("TOKEN", "t")],
                ["nats.password", "nats.token"],
            ),
            (
                &[
                    ("USER", "front"),
                    ("PASSWORD", "p"),
                    ("PASSWORD_FILE", "/p"),
                ],
                ["nats.password", "nats.password_file"],
            ),
            (
                &[("TOKEN", "t"), ("TOKEN_FILE", "/t")],
                ["nats.token", "nats.token_file"],
            ),
            (
                &[("NKEY_SEED_FILE", "/s"), ("CREDS_FILE", "/c")],
                ["nats.nkey_seed_file", "nats.creds_file"],
            ),
            (
                &[
                    ("USER", "front"),
                    ("PASSWORD_FILE", "/p"),
                    ("CREDS_FILE", "/c"),
                ],
                ["nats.password_file", "nats.creds_file"],
            ),
            (&[("PASSWORD", "p")], ["nats.user", "nats.password"]),
        ];
        for (settings, named) in cases {
            figment::Jail::expect_with(|jail| {
                for (key, value) in *settings {
                    jail.set_env(format!("FINALPRICE_NATS__{key}"), value);
                }
                let refused = Config::from_figment(&Config::figment(None))
                    .expect_err(&format!("{settings:?}"))
                    .to_string();
                for setting in named {
                    assert!(refused.contains(setting), "{settings:?}: {refused}");
                }
                Ok(())
            });
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn an_empty_value_is_no_value() {
        let config = load_with("").expect("defaults");
        assert!(matches!(config.nats.auth, NatsAuth::None));
        assert_eq!(config.nats.user, None);
        assert!(config.db.password.is_none());
        figment::Jail::expect_with(|jail| {
            // An env file's `KEY=` beside a real login: not a second one, nor an empty secret.
            for key in [
                "FINALPRICE_NATS__PASSWORD",
                "FINALPRICE_NATS__TOKEN",
                "FINALPRICE_NATS__TOKEN_FILE",
                "FINALPRICE_NATS__NKEY_SEED_FILE",
                "FINALPRICE_NATS__CREDS_FILE",
                "FINALPRICE_DB__PASSWORD_FILE",
            ] {
                jail.set_env(key, "");
            }
            jail.set_env("FINALPRICE_NATS__USER", "front");
            jail.set_env("FINALPRICE_NATS__PASSWORD_FILE", "");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert!(matches!(config.nats.auth, NatsAuth::None), "{config:?}");
            assert_eq!(config.nats.user.as_deref(), Some("front"));
            assert!(config.db.password.is_none());

            jail.set_env("FINALPRICE_NATS__USER", "");
            let config = Config::from_figment(&Config::figment(None)).expect("valid");
            assert_eq!(config.nats.user, None);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_user_alone_or_beside_an_nkey_names_the_inboxes_and_is_accepted() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("seed", "SUAEXAMPLE\n")?;
            jail.set_env("FINALPRICE_NATS__USER", "front");
            let config = Config::from_figment(&Config::figment(None)).expect("a user alone");
            assert!(matches!(config.nats.auth, NatsAuth::None));
            jail.set_env("FINALPRICE_NATS__NKEY_SEED_FILE", "seed");
            let config = Config::from_figment(&Config::figment(None)).expect("user and nkey");
            assert!(matches!(config.nats.auth, NatsAuth::NkeySeed(_)));
            assert_eq!(config.nats.user.as_deref(), Some("front"));
            Ok(())
        });
    }
}
