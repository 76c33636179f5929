//! The front's lifecycle: connect and bind in [`Application::build`], serve in
//! [`Application::run_until_stopped`] until the shutdown token fires, then stop accepting and
//! let the requests in flight finish (bounded by `http.shutdown_grace`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use finalprice_shared::config::{Config, NatsConfig};
use finalprice_shared::{nats, presence};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{self, Activity};
use crate::envelope::Limits;
use crate::i18n::Locales;
use crate::inbox::Inbox;
use crate::limits::ClientLimiter;
use crate::lookups::Lookups;
use crate::metrics::FrontMetrics;
use crate::queue::{OrderQueue, Timeouts};
use crate::routes::{self, AppState};

/// A front, connected to NATS and bound to its port, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    /// `/metrics` and `/healthz` off the shoppers' port, when `http.admin_addr` is set.
    admin: Option<TcpListener>,
    state: Arc<AppState>,
    /// Subscribed in `build`, so `status` sees the front as soon as it serves.
    pings: async_nats::Subscriber,
}

impl Application {
    /// The NATS client every part of the front shares.
    pub fn nats_client(&self) -> &async_nats::Client {
        self.state.queue.client()
    }

    /// Connects to NATS (in the background if it is down: the front then answers 503), makes
    /// sure the order stream exists (as it is: workers keep it as defined), starts the reply
    /// inbox, and binds the listen address last, so a socket sharing the port (SO_REUSEPORT)
    /// never receives connections it cannot serve.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let client = nats::connect(&config.nats, "finalprice-front").await?;
        // Before the stream check below, whose round trip then covers it (see the worker).
        let pings = presence::subscribe(&client)
            .await
            .context("cannot subscribe to pings")?;
        let js = nats::jetstream(client.clone(), &config.nats);
        // The publish bound follows the stream's real replica count (0 configured keeps it).
        let definition = nats::orders_stream_config(&config.nats)?;
        let mut max_message = definition.max_message_size;
        // Created when missing, never changed: the front's NATS user may not (see
        // `nats::orders_stream_or_create`).
        let replicas = match nats::orders_stream_or_create(&js, &config.nats).await {
            Ok(stream) => {
                // The stream as it is, which an older installation may have made otherwise.
                max_message = stream.cached_info().config.max_message_size;
                stream.cached_info().config.num_replicas
            }
            Err(error) => {
                tracing::warn!(error = %error, "order stream not ready yet; retrying in the background");
                tokio::spawn(ensure_stream_later(js.clone(), config.nats.clone()));
                if config.nats.stream_replicas == 0 {
                    // Unknown yet: the longer bound, so an election is waited out.
                    usize::MAX
                } else {
                    config.nats.stream_replicas
                }
            }
        };
        let publish_bound = config.nats.publish_bound(replicas);
        tracing::info!(?publish_bound, "publishing orders");
        let inbox = Inbox::start(&client)
            .await
            .context("cannot subscribe the reply inbox")?;
        let timeouts = Timeouts {
            publish: publish_bound,
            reply: config.http.reply_timeout,
            status: config.http.status_timeout,
        };
        let limits = envelope_limits(&config.nats, max_message, client.server_info().max_payload);
        tracing::info!(?limits, "gathering orders into envelopes");
        let metrics = Arc::new(FrontMetrics::default());
        metrics.set_max_in_flight(config.http.max_in_flight);
        let queue = OrderQueue::new(
            client,
            js,
            definition.name,
            inbox,
            timeouts,
            limits,
            Arc::clone(&metrics),
        )
        .await
        .context("invalid stream name in nats/stream-orders.json")?;
        let state = Arc::new(AppState {
            queue,
            http: config.http.clone(),
            country: config.default_country(),
            in_flight: Arc::new(Semaphore::new(config.http.max_in_flight)),
            limiter: ClientLimiter::start(&config.http),
            lookups: Lookups::new(&config.http),
            metrics,
            locales: Locales::load()?,
        });
        // Before the shoppers' port, which is bound last (see above).
        let admin = match config.http.admin_addr {
            Some(addr) => Some(
                finalprice_shared::metrics::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (http.admin_addr)"))?,
            ),
            None => None,
        };
        let listener = bind(config.http.addr)
            .with_context(|| format!("cannot listen on {}", config.http.addr))?;
        Ok(Self {
            listener,
            admin,
            state,
            pings,
        })
    }

    /// The bound address (port 0 in the configuration becomes a real port here).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the admin listener serves `GET /metrics`; `None` when `http.admin_addr` is not set
    /// and `/metrics` is on [`Application::local_addr`].
    pub fn admin_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// Serves until `shutdown` fires; then closes the listener at once and waits for the
    /// connections in flight to finish their current request.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            admin,
            state,
            pings,
        } = self;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(state.http.header_read_timeout)
            .max_buf_size(state.http.max_header_bytes)
            .max_headers(state.http.max_headers)
            // Also keeps hyper from reading ahead for an EOF while a request is handled, which
            // would take a second 8 KiB read buffer per waiting request (the first is still
            // held by the request's headers and body): ~40 MB at 10,000 waiting shoppers.
            // A shopper who leaves mid-wait is noticed when the answer is written instead.
            // Parking idle connections relies on it too (see `connection`).
            .half_close(true)
            .keep_alive(true);
        let builder = Arc::new(builder);
        // A permit per connection, taken before accepting: past the cap, new connections wait
        // in the listen backlog while those held are served.
        let connections = Arc::new(Semaphore::new(state.http.max_connections));
        let tasks = TaskTracker::new();
        tracing::info!(addr = %listener.local_addr()?, "front listening");
        let admin = match admin {
            Some(admin) => {
                tracing::info!(addr = %admin.local_addr()?, "front metrics on /metrics");
                let metrics = Arc::clone(&state.metrics);
                Some(tokio::spawn(finalprice_shared::metrics::serve_with(
                    admin,
                    move || finalprice_shared::metrics::encode(metrics.registry()),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let pings = tokio::spawn(presence::answer_pings(
            state.queue.client().clone(),
            pings,
            presence::this_process("finalprice-front"),
            shutdown.clone(),
        ));
        let watch = tokio::spawn({
            let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
            async move {
                let client = state.queue.client().clone();
                tokio::join!(
                    state
                        .queue
                        .envelopes()
                        .watch_workers(client, shutdown.clone()),
                    state.queue.watch_stream(shutdown),
                );
            }
        });
        let serve = |socket: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit| {
            let _ = socket.set_nodelay(true);
            let activity = Arc::new(Activity::default());
            let service = service_fn({
                let state = Arc::clone(&state);
                let activity = Arc::clone(&activity);
                move |request| {
                    let state = Arc::clone(&state);
                    let open = activity.request_started();
                    // Boxed: hyper keeps a slot the size of this future in every connection;
                    // unboxed it is ~4.5 KB (the whole order path's state), boxed a pointer,
                    // and the state is allocated only while a request runs.
                    Box::pin(async move {
                        let answer = routes::handle(state, peer.ip(), request).await;
                        drop(open);
                        Ok::<_, Infallible>(answer)
                    })
                }
            });
            let (builder, shutdown, state) =
                (Arc::clone(&builder), shutdown.clone(), Arc::clone(&state));
            tasks.spawn(async move {
                connection::serve(
                    socket,
                    service,
                    activity,
                    &builder,
                    connection::Timeouts {
                        head: state.http.header_read_timeout,
                        write: state.http.write_timeout,
                    },
                    &shutdown,
                    &state.metrics,
                )
                .await;
                drop(permit);
            });
        };
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&connections).acquire_owned() => permit?,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => serve(socket, peer, permit),
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        // Connections the kernel already completed are clients that sent their request: serve
        // them rather than reset them when the socket closes.
        while let Ok(permit) = Arc::clone(&connections).try_acquire_owned()
            && let Some((socket, peer)) = accept_waiting(&listener)
        {
            serve(socket, peer, permit);
        }
        // Then close the socket: with SO_REUSEPORT, new connections go to the other fronts.
        drop(listener);
        tracing::info!("stopping: finishing requests in flight");
        tasks.close();
        if tokio::time::timeout(state.http.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace ran out with requests still open");
        }
        let _ = pings.await;
        let _ = watch.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let client = state.queue.client().clone();
        if let Err(error) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
            tracing::debug!(%error, "final flush timed out");
        }
        tracing::info!("front stopped");
        Ok(())
    }
}

/// A connection the kernel has completed, taken by an `accept` of our own: tokio's `accept`
/// answers from the readiness it has seen, which can lag behind the backlog.
fn accept_waiting(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    let (socket, peer) = socket2::SockRef::from(listener).accept().ok()?;
    socket.set_nonblocking(true).ok()?;
    let stream = TcpStream::from_std(socket.into()).ok()?;
    Some((stream, peer.as_socket()?))
}

/// A listener several processes can share (SO_REUSEPORT): fronts scale on one host and one port.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Keeps trying to find or create the stream until JetStream answers (nats-server down, or a
/// cluster still electing its leaders); `/readyz` says 503 meanwhile.
async fn ensure_stream_later(js: jetstream::Context, config: NatsConfig) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    match nats::until_set_up("order stream", || {
        nats::orders_stream_or_create(&js, &config)
    })
    .await
    {
        Ok(_) => tracing::info!("order stream ready"),
        // A definition that does not parse was already refused by `build`.
        Err(error) => tracing::error!(%error, "order stream cannot be set up"),
    }
}

/// Room left in a message for its headers (message id, inbox, trace context, the envelope's
/// count), which the stream's and the server's size limits count too.
const HEADER_ROOM: usize = 1024;

/// The envelopes' bounds: as configured, and never larger than the order stream
/// (`max_message`, -1 for no limit) or the server (`max_payload`) takes.
fn envelope_limits(nats: &NatsConfig, max_message: i32, max_payload: usize) -> Limits {
    let stream_limit = usize::try_from(max_message).unwrap_or(usize::MAX);
    let taken = stream_limit.min(max_payload).saturating_sub(HEADER_ROOM);
    let max_bytes = match nats.envelope_max_bytes {
        0 => taken,
        configured => configured.min(taken),
    };
    Limits {
        max_orders: nats.envelope_max_orders,
        max_bytes,
        in_flight: nats.envelopes_in_flight,
    }
}
